// SPDX-License-Identifier: GPL-2.0
/*
 * schedule: run-queue latency, the time from becoming runnable (a wakeup,
 * a new task's first wakeup, or a preemption that leaves the task runnable)
 * to running on a CPU. Figures per interval for the target and for the
 * whole system side by side, in per-CPU arrays (latency.bpf.h); nothing per
 * event goes through the ring buffer.
 */
#include "common.bpf.h"

/* Written by proc_image (struct schedule_config). */
struct schedule_config cfg;

#include "latency.bpf.h"
#include "compat.bpf.h"

struct runnable {
	__u64 since_ns; /* 0 = not waiting for a CPU (as far as we saw) */
	__u32 generation;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct runnable);
} runnable SEC(".maps");

static __always_inline void mark_runnable(struct task_struct *task, __u64 now)
{
	struct runnable *r;

	/* idle tasks are what runs when nothing waits */
	if (task->pid == 0)
		return;
	r = bpf_task_storage_get(&runnable, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!r) {
		STAT_INC(no_task_state);
		return;
	}
	r->since_ns = now;
	r->generation = cfg.target.generation;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(handle__sched_wakeup, struct task_struct *p)
{
	mark_runnable(p, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(handle__sched_wakeup_new, struct task_struct *p)
{
	mark_runnable(p, bpf_ktime_get_ns());
	return 0;
}

static __always_inline int on_sched_switch(bool preempt, struct task_struct *prev,
					   struct task_struct *next, unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns(), lat;
	__u32 interval = cfg.interval;
	struct runnable *r;

	/*
	 * switched out while still runnable: it waits for a CPU from now. A
	 * preempted task stays queued even if it was setting up to sleep
	 * (state already not running): it is runnable too.
	 */
	if (preempt || prev_state == 0)
		mark_runnable(prev, now);

	if (next->pid == 0)
		return 0;
	r = bpf_task_storage_get(&runnable, next, 0, 0);
	if (!r || !r->since_ns)
		return 0;
	lat = now - r->since_ns;
	r->since_ns = 0;
	if (r->generation != cfg.target.generation)
		return 0;
	latency_add(interval, LAT_SYSTEM, lat);
	if (is_target(&cfg.target, next))
		latency_add(interval, LAT_TARGET, lat);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	return on_sched_switch(preempt, prev, next, prev_state);
}

/*
 * Before 5.18 sched_switch has no prev_state: read it from the task (racy,
 * see compat.bpf.h). Loaded instead of the above on such kernels.
 */
SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch_compat, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	return on_sched_switch(preempt, prev, next, task_state_now(prev));
}
