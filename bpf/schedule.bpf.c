// SPDX-License-Identifier: GPL-2.0
/*
 * schedule: run-queue latency, the time from becoming runnable (a wakeup,
 * a new task's first wakeup, or a preemption that leaves the task runnable)
 * to running on a CPU. Figures per interval for the target and for the
 * whole system side by side, in per-CPU arrays (latency.bpf.h), and per
 * target thread in the task's own storage (`runnable`), which the wait's
 * timestamp already needs: a thread's figures cost no map lookup of their
 * own. Nothing per event goes through the ring buffer.
 *
 * Per-thread figures live in two slots by interval parity, like syscall's:
 * proc_image bumps the interval, waits for the programs in flight, then
 * runs the task iterator (handle__iter_task), which writes each target
 * thread's figures out. A thread's storage goes with the task; its last
 * switch-out (dead) copies it into `exits` first, for proc_image to read
 * and delete.
 *
 * For the idle task of CPU N (-p 0 -c N) the target is that CPU's run
 * queue: every task's wait that ends on CPU N.
 */
#include "common.bpf.h"

/* Written by proc_image (struct schedule_config). */
struct schedule_config cfg;

#include "latency.bpf.h"
#include "compat.bpf.h"
#include "switch_clock.bpf.h"

struct runnable {
	__u64 since_ns; /* 0 = not waiting for a CPU (as far as we saw) */
	__u32 generation;
	__u32 exited; /* its figures went to `exits` (it is dead) */
	/* as of its last counted switch-in */
	__s32 prio;
	__s32 static_prio;
	__u32 policy;
	__u32 _pad;
	struct schedule_slot slot[2]; /* by interval & 1 */
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
struct spilled_wait {
	__u64 since_ns;
	__u32 generation;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct spilled_wait);
} runnable_spill SEC(".maps");

__s64 spilled;

/*
 * Dead target threads' last figures, until proc_image has read them: under
 * churn (thousands of threads a second) two intervals' worth must fit.
 * Allocated as used; a full map is counted (map_full).
 */
#define MAX_EXITS 16384

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EXITS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct schedule_thread_key);
	__type(value, struct schedule_thread);
} exits SEC(".maps");

#define TASK_DEAD_STATE 0x80 /* TASK_DEAD: its last switch-out */

/* The interval, read once per program run (the compiler may not re-read it). */
static __always_inline __u32 this_interval(void)
{
	return *(volatile __u32 *)&cfg.interval;
}

/* Is a wait of `next`, ending on this CPU now, the target's? */
static __always_inline bool wait_of_target(struct task_struct *next)
{
	/* the idle task of a CPU stands for that CPU's run queue */
	if (cfg.target.mode == TARGET_IDLE)
		return bpf_get_smp_processor_id() == cfg.target.cpu;
	return is_target(&cfg.target, next);
}

/* Add one wait to the thread's figures of `interval`. */
static __always_inline void thread_add(struct runnable *r, struct task_struct *t,
				       __u32 interval, __u64 lat)
{
	struct schedule_slot *s = &r->slot[interval & 1];

	if (s->interval != interval) {
		/* read by proc_image two intervals ago: start afresh */
		s->interval = interval;
		s->count = 0;
		s->sum_ns = 0;
		s->min_ns = lat;
		s->max_ns = 0;
	}
	s->count++;
	s->sum_ns += lat;
	if (lat < s->min_ns)
		s->min_ns = lat;
	if (lat > s->max_ns)
		s->max_ns = lat;
	/* its class as it runs now; written only when changed (rarely) */
	if (r->prio != t->prio || r->static_prio != t->static_prio || r->policy != t->policy) {
		r->prio = t->prio;
		r->static_prio = t->static_prio;
		r->policy = t->policy;
	}
}

/* Does a slot hold figures proc_image has yet to read (this or last interval)? */
static __always_inline bool slot_pending(struct schedule_slot *s, __u32 interval)
{
	return s->count && (s->interval == interval || s->interval == interval - 1);
}

static __always_inline void fill_thread(struct schedule_thread *out, struct task_struct *task,
					struct runnable *r, __u8 kind)
{
	fill_hdr(&out->hdr, task, PI_SCHEDULE, kind, bpf_ktime_get_ns());
	out->task_start_ns = task->start_boottime;
	out->exit_interval = 0;
	if (r && r->slot[0].count + r->slot[1].count) {
		out->prio = r->prio;
		out->nice = r->static_prio - 120;
		out->policy = r->policy;
		out->slot[0] = r->slot[0];
		out->slot[1] = r->slot[1];
	} else {
		/* no wait counted: its class now */
		out->prio = task->prio;
		out->nice = task->static_prio - 120;
		out->policy = task->policy;
	}
}

/* A dead thread's last switch-out: keep its unread figures for proc_image. */
static __always_inline void thread_dead(struct task_struct *task, __u32 interval)
{
	struct runnable *r = bpf_task_storage_get(&runnable, task, 0, 0);
	struct schedule_thread_key key = {};
	struct schedule_thread out = {};

	if (!r || r->exited)
		return;
	r->exited = 1;
	if (!slot_pending(&r->slot[0], interval) && !slot_pending(&r->slot[1], interval))
		return;
	fill_thread(&out, task, r, SCHEDULE_EXIT);
	out.exit_interval = interval;
	key.pid = task->pid;
	key.start_ns = task->start_boottime;
	if (bpf_map_update_elem(&exits, &key, &out, BPF_ANY))
		STAT_INC(map_full);
}

static __always_inline void mark_runnable(struct task_struct *task, __u64 now)
{
	struct runnable *r;

	/* idle tasks are what runs when nothing waits */
	if (task->pid == 0)
		return;
	r = bpf_task_storage_get(&runnable, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!r) {
		struct spilled_wait spill = { .since_ns = now, .generation = cfg.target.generation };
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

/*
 * A wakeup's time is the scheduler's clock at the enqueue (no clocksource
 * read, see switch_clock.bpf.h); the end of the wait, at sched_switch, is
 * read from the clocksource: the scheduler may have skipped its clock
 * update there, and that delay is part of the wait.
 */
SEC("tp_btf/sched_wakeup")
int BPF_PROG(handle__sched_wakeup, struct task_struct *p)
{
	mark_runnable(p, wakeup_time(p));
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(handle__sched_wakeup_new, struct task_struct *p)
{
	mark_runnable(p, wakeup_time(p));
	return 0;
}

static __always_inline int on_sched_switch(bool preempt, struct task_struct *prev,
					   struct task_struct *next, unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns(), lat;
	__u32 interval = this_interval(), bucket;
	struct runnable *r;

	/* this CPU's offset from the scheduler's clock, for wakeup_time */
	switch_clock_feed(prev, now);

	/*
	 * switched out while still runnable: it waits for a CPU from now. A
	 * preempted task stays queued even if it was setting up to sleep
	 * (state already not running): it is runnable too.
	 */
	if (preempt || prev_state == 0)
		mark_runnable(prev, now);
	else if (prev_state & TASK_DEAD_STATE)
		thread_dead(prev, interval);

	if (next->pid == 0)
		return 0;
	r = bpf_task_storage_get(&runnable, next, 0, 0);
	if (r && r->since_ns) {
		/* a wakeup stamped from the scheduler's clock: its offset is the least seen */
		lat = elapsed(r->since_ns, now);
		r->since_ns = 0;
		if (r->generation != cfg.target.generation)
			return 0;
	} else if (spilled > 0) {
		__u32 pid = next->pid;
		struct spilled_wait *s = bpf_map_lookup_elem(&runnable_spill, &pid);
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
		/* not in an interrupt now: the thread's storage can be made */
		r = bpf_task_storage_get(&runnable, next, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	} else {
		return 0;
	}
	bucket = lat_bucket(lat);
	latency_add(interval, LAT_SYSTEM, lat, bucket);
	if (!wait_of_target(next))
		return 0;
	latency_add(interval, LAT_TARGET, lat, bucket);
	if (r)
		thread_add(r, next, interval, lat);
	else
		STAT_INC(no_task_state);
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

/*
 * Run by proc_image when it closes an interval (after moving BPF on to the
 * next one): one schedule_thread per live target thread; for the whole
 * system, a cgroup or a CPU's run queue only the threads that waited.
 */
SEC("iter/task")
int handle__iter_task(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct schedule_thread out = {};
	__u32 closed = this_interval() - 1;
	struct runnable *r;
	bool listed;

	if (!task || !task->pid)
		return 0;
	r = bpf_task_storage_get(&runnable, task, 0, 0);
	/* a dead thread's figures are in `exits`; a zombie without any has none */
	if (r ? r->exited : task->exit_state != 0)
		return 0;
	switch (cfg.target.mode) {
	case TARGET_THREAD:
	case TARGET_TGID:
		listed = is_target(&cfg.target, task);
		break;
	default:
		listed = r && r->slot[closed & 1].interval == closed && r->slot[closed & 1].count;
	}
	if (!listed)
		return 0;
	fill_thread(&out, task, r, SCHEDULE_LIVE);
	bpf_seq_write(ctx->meta->seq, &out, sizeof(out));
	return 0;
}
