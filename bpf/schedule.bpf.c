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

/*
 * A wakeup that cannot have task storage: a task's first storage cannot be
 * made while another program on this CPU holds the task-storage lock, which
 * happens when the wakeup comes from an interrupt that arrived inside such a
 * program (keytime's, syscall's, this collector's own). Its time waits here,
 * by pid, until the task runs. `spilled` counts the entries, so the
 * switch path looks here only while there are any.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct runnable);
} runnable_spill SEC(".maps");

__s64 spilled;

static __always_inline void mark_runnable(struct task_struct *task, __u64 now)
{
	struct runnable *r;

	/* idle tasks are what runs when nothing waits */
	if (task->pid == 0)
		return;
	r = bpf_task_storage_get(&runnable, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!r) {
		struct runnable spill = { .since_ns = now, .generation = cfg.target.generation };
		__u32 pid = task->pid;

		if (bpf_map_update_elem(&runnable_spill, &pid, &spill, BPF_NOEXIST) == 0)
			__sync_fetch_and_add(&spilled, 1);
		else if (bpf_map_update_elem(&runnable_spill, &pid, &spill, BPF_EXIST))
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
	if (r && r->since_ns) {
		lat = now - r->since_ns;
		r->since_ns = 0;
		if (r->generation != cfg.target.generation)
			return 0;
	} else if (spilled > 0) {
		__u32 pid = next->pid;
		struct runnable *s = bpf_map_lookup_elem(&runnable_spill, &pid);
		__u64 since;
		__u32 gen;

		if (!s)
			return 0;
		since = s->since_ns;
		gen = s->generation;
		if (bpf_map_delete_elem(&runnable_spill, &pid) == 0)
			__sync_fetch_and_add(&spilled, -1);
		if (gen != cfg.target.generation || !since || since > now)
			return 0;
		lat = now - since;
	} else {
		return 0;
	}
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
