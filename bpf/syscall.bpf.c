// SPDX-License-Identifier: GPL-2.0
/*
 * syscall: the target's syscalls, aggregated in the kernel. Per syscall
 * nothing goes through the ring buffer: latency figures build up in per-CPU
 * arrays (target and whole system, see latency.bpf.h), per-thread figures
 * and the last SYSCALL_SEQ_RING syscall numbers in `threads`, per-thread
 * counts by syscall in `counts`. proc_image reads them once per interval.
 *
 * The whole system's latency needs every task's syscalls timed, so while
 * active the hooks run for every syscall; the target's extra work happens
 * only on a match.
 */
#include "common.bpf.h"

/* Written by proc_image (struct syscall_config). */
struct syscall_config cfg;

#include "latency.bpf.h"

/* The syscall a task is in, freed with the task. */
struct in_flight {
	__u64 enter_ns; /* 0 = not in a syscall we saw enter */
	__u32 id;
	__u32 generation;
	__u32 of_target; /* decided at entry, so the exit need not ask again */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct in_flight);
} in_flight SEC(".maps");

#define MAX_THREADS 16384
#define MAX_COUNTS 65536

/* allocated as threads appear: an entry is over 1 KiB */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct syscall_thread);
} threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_COUNTS);
	__type(key, struct syscall_count_key);
	__type(value, struct syscall_count);
} counts SEC(".maps");

/*
 * A zeroed `threads` entry to insert new ones from: too big for the BPF
 * stack or a memset. Never written.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct syscall_thread);
} thread_zero SEC(".maps");

static __always_inline struct syscall_thread *thread_entry(struct task_struct *task)
{
	__u32 pid = task->pid, zero = 0;
	struct syscall_thread *t;

	t = bpf_map_lookup_elem(&threads, &pid);
	if (t)
		return t;
	t = bpf_map_lookup_elem(&thread_zero, &zero);
	if (!t)
		return NULL;
	/* only this thread inserts its own entry */
	if (bpf_map_update_elem(&threads, &pid, t, BPF_NOEXIST)) {
		STAT_INC(map_full);
		return NULL;
	}
	t = bpf_map_lookup_elem(&threads, &pid);
	if (!t)
		return NULL;
	t->tgid = task->tgid;
	t->interval = cfg.interval;
	bpf_probe_read_kernel_str(t->comm, sizeof(t->comm), task->comm);
	return t;
}

static __always_inline void count_syscall(__u32 pid, __u32 id, __u32 interval)
{
	struct syscall_count_key key = { .pid = pid, .id = id };
	struct syscall_count *c, fresh = { .interval = interval };

	c = bpf_map_lookup_elem(&counts, &key);
	if (!c) {
		bpf_map_update_elem(&counts, &key, &fresh, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&counts, &key);
		if (!c) {
			STAT_INC(map_full);
			return;
		}
	}
	if (c->interval != interval) {
		c->interval = interval;
		c->count = 0;
	}
	c->count++;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(handle__sys_enter, struct pt_regs *regs, long id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct syscall_thread *t;
	struct in_flight *f;
	__u32 idx;

	f = bpf_task_storage_get(&in_flight, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!f) {
		STAT_INC(no_task_state);
		return 0;
	}
	f->enter_ns = bpf_ktime_get_ns();
	f->id = id;
	f->generation = cfg.target.generation;
	f->of_target = id >= 0 && is_target(&cfg.target, task);

	/* the sequence is taken at entry, so exit and exit_group end it */
	if (!f->of_target)
		return 0;
	t = thread_entry(task);
	if (!t)
		return 0;
	idx = t->seq_total & (SYSCALL_SEQ_RING - 1);
	t->seq[idx] = id;
	t->seq_enter_ns[idx] = f->enter_ns;
	t->seq_dur_ns[idx] = 0;
	t->seq_total++;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(handle__sys_exit, struct pt_regs *regs, long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 interval = cfg.interval, pid;
	struct syscall_thread *t;
	struct in_flight *f;
	__u64 enter, lat;
	__u32 idx;

	f = bpf_task_storage_get(&in_flight, task, 0, 0);
	if (!f || !f->enter_ns)
		return 0;
	enter = f->enter_ns;
	lat = bpf_ktime_get_ns() - enter;
	f->enter_ns = 0;
	/* entered under an earlier activation: its timing is not ours */
	if (f->generation != cfg.target.generation)
		return 0;

	latency_add(interval, LAT_SYSTEM, lat);
	if (!f->of_target)
		return 0;
	latency_add(interval, LAT_TARGET, lat);

	pid = task->pid;
	t = bpf_map_lookup_elem(&threads, &pid);
	if (t) {
		if (t->interval != interval) {
			t->interval = interval;
			t->count = 0;
			t->sum_ns = 0;
			t->min_ns = 0;
			t->max_ns = 0;
		}
		t->count++;
		t->sum_ns += lat;
		if (t->count == 1 || lat < t->min_ns)
			t->min_ns = lat;
		if (lat > t->max_ns)
			t->max_ns = lat;
		/* the newest entry of the sequence is this syscall (a thread is in one at a time) */
		idx = (t->seq_total - 1) & (SYSCALL_SEQ_RING - 1);
		if (t->seq_enter_ns[idx] == enter)
			t->seq_dur_ns[idx] = lat;
	}
	count_syscall(pid, f->id, interval);
	return 0;
}
