// SPDX-License-Identifier: GPL-2.0
/*
 * syscall: the target's syscalls, aggregated in the kernel. Per syscall
 * nothing goes through the ring buffer: latency figures build up in per-CPU
 * arrays (target and whole system, see latency.bpf.h), per-thread figures
 * and the last SYSCALL_SEQ_RING syscall numbers in `threads`, per-thread
 * counts by syscall in `counts`. proc_image reads them once per interval.
 *
 * Nothing is reset before it is read: every per-interval figure lives in
 * one of two slots by interval parity, and one program run reads
 * cfg.interval once, so all its figures land in the same interval. proc_image
 * bumps the interval, waits for the programs in flight (an RCU grace
 * period), and only then reads last interval's slots; BPF starts a slot
 * afresh only two intervals later. A thread's entry is marked when it exits
 * and deleted by proc_image once its last figures are read.
 *
 * The whole system's latency needs every task's syscalls timed, so while
 * active the hooks run for every syscall; the target's extra work happens
 * only on a match.
 */
#include "common.bpf.h"

/* Written by proc_image (struct syscall_config). */
struct syscall_config cfg;

#include "latency.bpf.h"

/* The syscall a task is in, and the key of its entry; freed with the task. */
struct in_flight {
	__u64 enter_ns; /* 0 = not in a syscall we saw enter */
	__u64 thread_start; /* syscall_thread_key.start_ns; 0 = not set yet */
	__u32 id;	    /* | SYSCALL_ID_IA32 */
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

/*
 * An exited thread's entries stay until the report after its exit's
 * interval: under churn (thousands of threads a second, ~10 distinct
 * syscalls each) the counts of two intervals' threads must fit. Entries
 * are allocated as used, so the room costs nothing until needed.
 */
#define MAX_THREADS 16384
#define MAX_COUNTS (1 << 18)

/* allocated as threads appear: an entry is over 1 KiB */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct syscall_thread_key);
	__type(value, struct syscall_thread);
} threads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_COUNTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
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

/* The interval, read once per program run (the compiler may not re-read it). */
static __always_inline __u32 this_interval(void)
{
	return *(volatile __u32 *)&cfg.interval;
}

/* Is the task in an ia32 syscall (x86_64's TS_COMPAT, as in_ia32_syscall())? */
static __always_inline bool in_ia32(struct task_struct *task)
{
#ifdef __TARGET_ARCH_x86
	if (bpf_core_field_exists(task->thread_info.status))
		return task->thread_info.status & 0x0002 /* TS_COMPAT */;
#endif
	return false;
}

static __always_inline struct syscall_thread *thread_entry(struct task_struct *task,
							   struct syscall_thread_key *key)
{
	struct syscall_thread *t;
	__u32 zero = 0;

	t = bpf_map_lookup_elem(&threads, key);
	if (t)
		return t;
	t = bpf_map_lookup_elem(&thread_zero, &zero);
	if (!t)
		return NULL;
	/* only this thread inserts its own entry */
	if (bpf_map_update_elem(&threads, key, t, BPF_NOEXIST)) {
		STAT_INC(map_full);
		return NULL;
	}
	t = bpf_map_lookup_elem(&threads, key);
	if (!t)
		return NULL;
	t->tgid = task->tgid;
	t->task_start_ns = task->start_boottime;
	t->cgroup_id = cgroup_id_of(task);
	bpf_probe_read_kernel_str(t->comm, sizeof(t->comm), task->comm);
	return t;
}

static __always_inline void count_syscall(struct syscall_thread_key *tk, __u32 id, __u32 interval)
{
	struct syscall_count_key key = { .pid = tk->pid, .id = id, .start_ns = tk->start_ns };
	struct syscall_count *c, fresh = {};
	__u32 i = interval & 1;

	c = bpf_map_lookup_elem(&counts, &key);
	if (!c) {
		bpf_map_update_elem(&counts, &key, &fresh, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&counts, &key);
		if (!c) {
			STAT_INC(map_full);
			return;
		}
	}
	if (c->interval[i] != interval) {
		c->interval[i] = interval;
		c->count[i] = 0;
	}
	c->count[i]++;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(handle__sys_enter, struct pt_regs *regs, long id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct syscall_thread_key key = {};
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
	if (in_ia32(task))
		f->id |= SYSCALL_ID_IA32;
	if (!f->thread_start)
		f->thread_start = task->start_boottime;
	key.pid = task->pid;
	key.start_ns = f->thread_start;
	t = thread_entry(task, &key);
	if (!t)
		return 0;
	idx = t->seq_total & (SYSCALL_SEQ_RING - 1);
	t->seq[idx] = f->id;
	t->seq_enter_ns[idx] = f->enter_ns;
	t->seq_dur_ns[idx] = 0;
	t->seq_total++;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(handle__sys_exit, struct pt_regs *regs, long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 interval = this_interval(), idx;
	struct syscall_thread_key key = {};
	struct syscall_thread *t;
	struct syscall_slot *s;
	struct in_flight *f;
	__u64 enter, lat;

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

	key.pid = task->pid;
	key.start_ns = f->thread_start;
	/* created here too: after a non-leader exec the thread has a new key */
	t = thread_entry(task, &key);
	if (t) {
		s = &t->slot[interval & 1];
		if (s->interval != interval) {
			/* read by proc_image two intervals ago: start afresh */
			s->interval = interval;
			s->count = 0;
			s->sum_ns = 0;
			s->min_ns = 0;
			s->max_ns = 0;
			/* once per interval: follow a rename (prctl PR_SET_NAME), a move */
			bpf_probe_read_kernel_str(t->comm, sizeof(t->comm), task->comm);
			t->cgroup_id = cgroup_id_of(task);
		}
		s->count++;
		s->sum_ns += lat;
		if (s->count == 1 || lat < s->min_ns)
			s->min_ns = lat;
		if (lat > s->max_ns)
			s->max_ns = lat;
		/* the newest entry of the sequence is this syscall (a thread is in one at a time) */
		idx = (t->seq_total - 1) & (SYSCALL_SEQ_RING - 1);
		if (t->seq_enter_ns[idx] == enter)
			t->seq_dur_ns[idx] = lat;
	}
	count_syscall(&key, f->id, interval);
	return 0;
}

/* The entry's last figures are complete: proc_image deletes it once read. */
static __always_inline void mark_exited(__u32 pid, __u64 start_ns)
{
	struct syscall_thread_key key = { .pid = pid, .start_ns = start_ns };
	struct syscall_thread *t = bpf_map_lookup_elem(&threads, &key);

	if (!t)
		return;
	t->exit_interval = this_interval();
	t->exited = 1;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *task)
{
	struct in_flight *f = bpf_task_storage_get(&in_flight, task, 0, 0);

	if (f && f->thread_start)
		mark_exited(task->pid, f->thread_start);
	return 0;
}

/*
 * exec: the entry takes the new comm. A non-leader thread that execs takes
 * the leader's pid (and start time): its old entry ends here, and its next
 * syscalls go to a new one keyed by the time of the exec.
 */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle__sched_process_exec, struct task_struct *task, pid_t old_pid)
{
	struct in_flight *f = bpf_task_storage_get(&in_flight, task, 0, 0);
	struct syscall_thread_key key = {};
	struct syscall_thread *t;

	if (!f || !f->thread_start)
		return 0;
	if (task->pid != old_pid) {
		mark_exited(old_pid, f->thread_start);
		f->thread_start = bpf_ktime_get_boot_ns();
		return 0;
	}
	key.pid = task->pid;
	key.start_ns = f->thread_start;
	t = bpf_map_lookup_elem(&threads, &key);
	if (t)
		bpf_probe_read_kernel_str(t->comm, sizeof(t->comm), task->comm);
	return 0;
}
