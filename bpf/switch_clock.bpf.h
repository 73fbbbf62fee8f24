/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The scheduler's clock, as CLOCK_MONOTONIC, without reading a clocksource
 * (bpf_ktime_get_ns does, through an indirect call: on the test VM as much
 * as the rest of a context switch's work for keytime).
 *
 * The scheduler reads sched_clock into its run queue's rq->clock
 * (update_rq_clock) before it enqueues a woken task and before it picks
 * the next one in __schedule, which keeps the value of a wakeup just before
 * it when that wakeup asked it to skip the update (an idle CPU woken from
 * another one: the time it takes to leave idle then counts as the woken
 * task's run, in se.sum_exec_runtime too). Records carry CLOCK_MONOTONIC:
 * each CPU keeps the offset from sched_clock, sampled against
 * bpf_ktime_get_ns every SWITCH_CLOCK_PERIOD_NS of its clock at a context
 * switch. A sample at a switch whose clock lags is too large, so the offset
 * is the least sample of the last SWITCH_CLOCK_WINDOW (the two clocks drift
 * apart only by NTP's slew, parts per million).
 *
 * Used by keytime (every switch of a target) and schedule (a wakeup's time).
 */
#ifndef SWITCH_CLOCK_BPF_H
#define SWITCH_CLOCK_BPF_H

#define SWITCH_CLOCK_PERIOD_NS 200000ULL
#define SWITCH_CLOCK_WINDOW 8
#define SWITCH_CLOCK_CPUS 1024 /* a power of two: indexes are masked with it */

struct switch_clock {
	__u64 rq;	   /* this CPU's run queue (its address), as a switch saw it */
	__u64 next_sample; /* rq->clock at which to sample again */
	__u64 next_mono;   /* the same, in CLOCK_MONOTONIC */
	__s64 offset;	   /* CLOCK_MONOTONIC - sched_clock, in use */
	__s64 window_min;  /* the least sample of the window being taken */
	__u32 samples;	   /* in that window */
	__u32 valid;	   /* offset holds a sample */
} __attribute__((aligned(64))); /* a cache line per CPU: written at samples only */

struct switch_clock switch_clocks[SWITCH_CLOCK_CPUS];

/*
 * The run queue `task` is on, NULL if not known. Its sched_entity's cfs_rq
 * is on that run queue whatever its class (set_task_rq sets it for every
 * task, the idle tasks included). That pointer exists with group
 * scheduling (CONFIG_FAIR_GROUP_SCHED, in every distribution kernel); the
 * `runqueues` per-CPU variable needs CONFIG_KALLSYMS_ALL, which many
 * kernels lack. A pointer the kernel had not set reads as 0.
 */
static __always_inline struct rq *rq_of(struct task_struct *task)
{
	struct cfs_rq *cfs;

	if (!bpf_core_field_exists(task->se.cfs_rq) || !bpf_core_field_exists(struct cfs_rq, rq))
		return NULL;
	cfs = task->se.cfs_rq;
	return cfs->rq;
}

/*
 * `to - from`, or 0 if `to` is not later: times from this clock on two CPUs
 * (each with its own offset), or one of them and a clocksource read, can be
 * out of order by a little.
 */
static __always_inline __u64 elapsed(__u64 from, __u64 to)
{
	return to > from ? to - from : 0;
}

static __always_inline struct switch_clock *this_switch_clock(void)
{
	return &switch_clocks[bpf_get_smp_processor_id() & (SWITCH_CLOCK_CPUS - 1)];
}

/* A sample at a switch on this CPU, whose run queue `rq` has `clock`. Out of line: rare. */
static __noinline void switch_clock_sample(struct switch_clock *c, struct rq *rq, __u64 clock,
						__u64 mono)
{
	__s64 sample = (__s64)(mono - clock);

	c->rq = (__u64)rq;
	if (!c->samples || sample < c->window_min)
		c->window_min = sample;
	if (!c->valid || sample < c->offset)
		c->offset = sample;
	c->valid = 1;
	if (++c->samples >= SWITCH_CLOCK_WINDOW) {
		/* a fresh window: the offset follows the clocks' drift either way */
		c->offset = c->window_min;
		c->samples = 0;
	}
	c->next_sample = clock + SWITCH_CLOCK_PERIOD_NS;
	c->next_mono = mono + SWITCH_CLOCK_PERIOD_NS;
}

/* next_sample is 0 until the first sample (then `valid` is set too) */
static __always_inline bool switch_clock_due(struct switch_clock *c, __u64 clock)
{
	return clock >= c->next_sample;
}

/*
 * At a switch that has read the clocksource anyway (`mono`): sample the
 * offset when due (the run queue's clock is read only then).
 */
static __always_inline void switch_clock_feed(struct task_struct *prev, __u64 mono)
{
	struct switch_clock *c = this_switch_clock();
	struct rq *rq;
	__u64 clock;

	if (mono < c->next_mono && c->valid)
		return;
	rq = rq_of(prev);
	clock = rq ? rq->clock : 0;
	if (clock)
		switch_clock_sample(c, rq, clock, mono);
}

/*
 * The time of the switch `prev` is leaving this CPU in, as the scheduler
 * stamps it: what keytime times stretches with, so that on-CPU (the
 * scheduler's account) and off-CPU times add up as the scheduler counts.
 */
static __always_inline __u64 switch_time(struct task_struct *prev)
{
	struct rq *rq = rq_of(prev);
	struct switch_clock *c;
	__u64 clock;

	clock = rq ? rq->clock : 0;
	if (!clock)
		return bpf_ktime_get_ns();
	c = this_switch_clock();
	if (switch_clock_due(c, clock))
		switch_clock_sample(c, rq, clock, bpf_ktime_get_ns());
	return clock + c->offset;
}

/*
 * The time of a wakeup of `task` (sched_wakeup, sched_wakeup_new), which
 * the scheduler has just stamped on the run queue it enqueues the task on
 * (update_rq_clock right before, on every path), as CLOCK_MONOTONIC: from
 * this CPU's offset if that is this CPU's run queue, else (a wakeup onto
 * another CPU's: where sched_clock is not stable, CPUs' clocks differ by up
 * to a tick), or before this CPU has an offset, bpf_ktime_get_ns.
 */
static __always_inline __u64 wakeup_time(struct task_struct *task)
{
	struct switch_clock *c = this_switch_clock();
	struct rq *rq = rq_of(task);

	if (!rq || !c->valid || (__u64)rq != c->rq)
		return bpf_ktime_get_ns();
	return rq->clock + c->offset;
}

#endif /* SWITCH_CLOCK_BPF_H */
