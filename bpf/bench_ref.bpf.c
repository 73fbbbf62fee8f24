// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark reference: the jobs of the syscall and schedule collectors done
 * the classic way, as libbpf-tools' syscount -L and runqlat do it: a start
 * timestamp in a hash map keyed by thread id, looked up and deleted at the
 * end of the interval, figures in hash maps. Whole system, no filter (the
 * tools' default). On the same tp_btf hooks as the collectors and the no-op
 * floor (noop.bpf.c), so that only the work differs; and runqlat once more
 * with the start time in task storage. Then the least job of syscall and
 * keytime: the clock reads and per-task state no way of doing their job
 * can go without, and nothing else, to tell what of a collector's cost is
 * its own. Written for bench/compare.sh (the workload's `ref-hooks` mode
 * attaches them).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_THREADS 10240
#define SLOTS 32

/* ---- syscount -L: count and total latency per syscall id ---- */

struct sys_start {
	__u64 ts;
	__u64 id;
};

struct sys_data {
	__u64 count;
	__u64 total_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct sys_start);
} sys_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct sys_data);
} sys_data SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(ref__sys_enter, struct pt_regs *regs, long id)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sys_start s = { .ts = bpf_ktime_get_ns(), .id = id };

	bpf_map_update_elem(&sys_start, &tid, &s, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(ref__sys_exit, struct pt_regs *regs, long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sys_data zero = {}, *d;
	struct sys_start *s;
	__u32 key;

	s = bpf_map_lookup_elem(&sys_start, &tid);
	if (!s)
		return 0;
	key = s->id;
	d = bpf_map_lookup_elem(&sys_data, &key);
	if (!d) {
		bpf_map_update_elem(&sys_data, &key, &zero, BPF_NOEXIST);
		d = bpf_map_lookup_elem(&sys_data, &key);
		if (!d)
			goto out;
	}
	__sync_fetch_and_add(&d->count, 1);
	__sync_fetch_and_add(&d->total_ns, bpf_ktime_get_ns() - s->ts);
out:
	bpf_map_delete_elem(&sys_start, &tid);
	return 0;
}

/* ---- runqlat: a log2 histogram of run-queue latency (us) ---- */

struct hist {
	__u32 slots[SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, __u64);
} rq_start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hist);
} rq_hists SEC(".maps");

static __always_inline void enqueue(__u32 pid)
{
	__u64 ts;

	if (!pid)
		return;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&rq_start, &pid, &ts, BPF_ANY);
}

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0;

	while (v > 1 && r < SLOTS - 1) {
		v >>= 1;
		r++;
	}
	return r;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(ref__sched_wakeup, struct task_struct *p)
{
	enqueue(p->pid);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(ref__sched_wakeup_new, struct task_struct *p)
{
	enqueue(p->pid);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(ref__sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	static const struct hist zero;
	__u32 pid = next->pid, key = 0;
	struct hist *h;
	__u64 *tsp;
	__s64 delta;

	/* preempted, still runnable: it waits for a CPU from now */
	if (prev->__state == 0)
		enqueue(prev->pid);
	tsp = bpf_map_lookup_elem(&rq_start, &pid);
	if (!tsp)
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	if (delta < 0)
		goto out;
	h = bpf_map_lookup_elem(&rq_hists, &key);
	if (!h) {
		bpf_map_update_elem(&rq_hists, &key, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&rq_hists, &key);
		if (!h)
			goto out;
	}
	__sync_fetch_and_add(&h->slots[log2_slot(delta / 1000) & (SLOTS - 1)], 1);
out:
	bpf_map_delete_elem(&rq_start, &pid);
	return 0;
}

/*
 * ---- runqlat with the start time in task storage instead of a hash ----
 * The same job, the way a newer tool would keep per-task state: no hash
 * insert and delete per wait. The histogram is the same.
 */

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} rq_start_ts SEC(".maps");

static __always_inline void enqueue_ts(struct task_struct *p)
{
	__u64 *ts;

	if (!p->pid)
		return;
	ts = bpf_task_storage_get(&rq_start_ts, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (ts)
		*ts = bpf_ktime_get_ns();
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(ref_ts__sched_wakeup, struct task_struct *p)
{
	enqueue_ts(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(ref_ts__sched_wakeup_new, struct task_struct *p)
{
	enqueue_ts(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(ref_ts__sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	static const struct hist zero;
	__u32 key = 0;
	struct hist *h;
	__u64 *tsp;
	__s64 delta;

	if (prev->__state == 0)
		enqueue_ts(prev);
	if (!next->pid)
		return 0;
	tsp = bpf_task_storage_get(&rq_start_ts, next, 0, 0);
	if (!tsp || !*tsp)
		return 0;
	delta = bpf_ktime_get_ns() - *tsp;
	*tsp = 0;
	if (delta < 0)
		return 0;
	h = bpf_map_lookup_elem(&rq_hists, &key);
	if (!h) {
		bpf_map_update_elem(&rq_hists, &key, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&rq_hists, &key);
		if (!h)
			return 0;
	}
	__sync_fetch_and_add(&h->slots[log2_slot(delta / 1000) & (SLOTS - 1)], 1);
	return 0;
}

/*
 * ---- the least job of syscall: every syscall timed ----
 * The system's latency, which syscall keeps beside its target's, needs a
 * clock read at every entry and exit. Here that and a per-CPU count and
 * sum, nothing more: no filter, no figures per thread or syscall, no care
 * for a syscall that blocks (its entry time is lost to the next entry).
 */
struct least_syscalls {
	__u64 enter_ns;
	__u64 count;
	__u64 sum_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct least_syscalls);
} least_syscalls SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(least__sys_enter)
{
	__u32 zero = 0;
	struct least_syscalls *s = bpf_map_lookup_elem(&least_syscalls, &zero);

	if (s)
		s->enter_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(least__sys_exit)
{
	__u32 zero = 0;
	struct least_syscalls *s = bpf_map_lookup_elem(&least_syscalls, &zero);

	if (!s || !s->enter_ns)
		return 0;
	s->count++;
	s->sum_ns += bpf_ktime_get_ns() - s->enter_ns;
	s->enter_ns = 0;
	return 0;
}

/*
 * ---- the least job of keytime (level 1): a target's on-CPU and off-CPU time ----
 * At a switch of the target (thread group least_tgid, which the workload
 * sets from its stdin), the scheduler's clock as the switch stamped it
 * (the run queue's, keytime's clock too: no clocksource read), and for
 * each of the two tasks that is the target its task storage: the stretch
 * that ends is summed, the next one starts. Nothing more: no reason, no
 * interval, no record, no conversion to CLOCK_MONOTONIC.
 */
__u32 least_tgid = 0xffffffff; /* none until set: 0 would be the idle tasks */

struct least_task {
	__u64 since;
	__u64 on_ns;
	__u64 off_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct least_task);
} least_tasks SEC(".maps");

static __always_inline void least_stretch(struct task_struct *task, __u64 now, bool was_on)
{
	struct least_task *t = bpf_task_storage_get(&least_tasks, task, 0,
						     BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!t)
		return;
	if (t->since && now > t->since) {
		if (was_on)
			t->on_ns += now - t->since;
		else
			t->off_ns += now - t->since;
	}
	t->since = now;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(least__sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 tgid = least_tgid;
	bool out = prev->tgid == tgid, in = next->tgid == tgid;
	__u64 now;

	if (!out && !in)
		return 0;
	if (bpf_core_field_exists(prev->se.cfs_rq))
		now = prev->se.cfs_rq->rq->clock;
	else
		now = bpf_ktime_get_ns();
	if (out)
		least_stretch(prev, now, true);
	if (in)
		least_stretch(next, now, false);
	return 0;
}
