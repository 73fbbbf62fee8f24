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

/*
 * The syscall the task running on this CPU is in: written at entry, taken
 * at exit. A syscall without a context switch (most of them) costs no more
 * than this per-CPU slot (no task storage, no hash). A task switched out in
 * a syscall (it blocks, or is preempted) has it moved to its task storage
 * first, so the slot only ever holds the running task's syscall, and a task
 * that resumes elsewhere finds it there.
 */
struct cpu_slot {
	__u64 task;	/* the task_struct in the syscall; 0 = none */
	__u64 enter_ns;
	__u32 id;	/* | SYSCALL_ID_IA32 */
	__u32 generation;
	__u32 of_target; /* decided at entry, so the exit need not ask again */
	__u32 _pad;
	/*
	 * The key of the last target thread that returned here, as its task
	 * storage has it: its next syscall here needs no storage lookup. Valid
	 * while the task and its start time are the same (a non-leader exec,
	 * which changes the key, takes the leader's start time).
	 */
	__u64 key_task;
	__u64 key_task_start;
	struct syscall_thread_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_slot);
} cpu_slots SEC(".maps");

/* A task's syscall moved off its CPU, and the key of its entry; freed with the task. */
struct in_flight {
	__u64 enter_ns; /* 0 = no syscall moved here */
	__u64 thread_start; /* syscall_thread_key.start_ns; 0 = not set yet */
	__u32 id;	    /* | SYSCALL_ID_IA32 */
	__u32 generation;
	__u32 of_target;
	__u32 in_seq; /* the target's syscall is already in the sequence (without its duration) */
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

/* allocated as threads appear: an entry is ~3.3 KiB */
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
	/* proc_image leaves an entry alone until it has its start time */
	t->tgid = task->tgid;
	t->task_start_ns = task->start_boottime;
	t->cgroup_id = cgroup_id_of(task);
	bpf_probe_read_kernel_str(t->comm, sizeof(t->comm), task->comm);
	return t;
}

static __always_inline void count_in(struct syscall_count *c, __u32 interval)
{
	__u32 i = interval & 1;

	if (c->interval[i] != interval) {
		c->interval[i] = interval;
		c->count[i] = 0;
	}
	c->count[i]++;
}

/* Where an id's counts start looking for a place in a thread's entry. */
static __always_inline __u32 count_home(__u32 id)
{
	return (id * 0x9e3779b1U) >> (32 - SYSCALL_COUNT_SLOTS_LOG2);
}

/* A count that found no place in the thread's entry: the `counts` map. */
static __always_inline void count_in_map(struct syscall_thread_key *tk, __u32 id, __u32 interval)
{
	struct syscall_count_key key = { .pid = tk->pid, .id = id, .start_ns = tk->start_ns };
	struct syscall_count *c, fresh = {};

	c = lookup_or_init(&counts, &key, &fresh);
	if (c)
		count_in(c, interval);
}

/* Count a syscall: in the thread's entry if it has room for the id, else in `counts`. */
static __always_inline void count_syscall(struct syscall_thread *t,
					  struct syscall_thread_key *tk, __u32 id,
					  __u32 interval)
{
	__u32 home = count_home(id), j;
	struct syscall_count *c;

	if (t) {
#pragma unroll
		for (int p = 0; p < SYSCALL_COUNT_PROBES; p++) {
			j = (home + p) & (SYSCALL_COUNT_SLOTS - 1);
			c = &t->counts[j];
			/* only this thread writes its entry's ids: no race */
			if (c->id_plus_one == 0)
				c->id_plus_one = id + 1;
			if (c->id_plus_one == id + 1) {
				count_in(c, interval);
				return;
			}
		}
	}
	count_in_map(tk, id, interval);
}

static __always_inline struct cpu_slot *this_cpu_slot(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&cpu_slots, &zero);
}

/* A target thread's task storage, which holds the key of its entry. */
static __always_inline struct in_flight *thread_key(struct task_struct *task,
						    struct syscall_thread_key *key)
{
	struct in_flight *f;

	f = bpf_task_storage_get(&in_flight, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!f) {
		STAT_INC(no_task_state);
		return NULL;
	}
	if (!f->thread_start)
		f->thread_start = task->start_boottime;
	key->pid = task->pid;
	key->start_ns = f->thread_start;
	return f;
}

static __always_inline void seq_append(struct syscall_thread *t, __u32 id, __u64 enter_ns,
				       __u64 dur_ns)
{
	__u32 idx = t->seq_total & (SYSCALL_SEQ_RING - 1);

	t->seq[idx] = id;
	t->seq_enter_ns[idx] = enter_ns;
	t->seq_dur_ns[idx] = dur_ns;
	t->seq_total++;
}

/*
 * A target's syscall that has not returned goes into the sequence now, its
 * duration 0 (exit and exit_group never return; a blocked one shows while
 * it waits). True if it did.
 */
static __always_inline bool seq_pending(struct task_struct *task, __u32 id, __u64 enter_ns)
{
	struct syscall_thread_key key = {};
	struct syscall_thread *t;

	if (!thread_key(task, &key))
		return false;
	t = thread_entry(task, &key);
	if (!t)
		return false;
	seq_append(t, id, enter_ns, 0);
	return true;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(handle__sys_enter, struct pt_regs *regs, long id)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct cpu_slot *s = this_cpu_slot();

	if (!s)
		return 0;
	s->enter_ns = bpf_ktime_get_ns();
	s->id = id;
	s->generation = cfg.target.generation;
	s->of_target = id >= 0 && is_target(&cfg.target, task);
	if (s->of_target && in_ia32(task))
		s->id |= SYSCALL_ID_IA32;
	s->task = (__u64)task;
	return 0;
}

/* Switched out in a syscall: it waits in the task's storage for its exit. */
SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev)
{
	struct cpu_slot *s = this_cpu_slot();
	struct in_flight *f;
	bool in_syscall;

	if (!s)
		return 0;
	/*
	 * Emptied at every switch: a syscall found here at exit was entered
	 * by the task running now, since it was switched in.
	 */
	in_syscall = s->task == (__u64)prev;
	s->task = 0;
	if (!in_syscall)
		return 0;
	f = bpf_task_storage_get(&in_flight, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!f) {
		STAT_INC(no_task_state);
		return 0;
	}
	f->enter_ns = s->enter_ns;
	f->id = s->id;
	f->generation = s->generation;
	f->of_target = s->of_target;
	f->in_seq = f->of_target && f->generation == cfg.target.generation &&
		    seq_pending(prev, f->id, f->enter_ns);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(handle__sys_exit, struct pt_regs *regs, long ret)
{
	__u32 interval = this_interval(), id, generation, of_target, in_seq = 0, idx, bucket;
	struct cpu_slot *s = this_cpu_slot();
	struct syscall_thread_key key = {};
	struct task_struct *task;
	struct syscall_thread *t;
	struct syscall_slot *sl;
	struct in_flight *f;
	__u64 enter, lat;

	if (!s)
		return 0;
	/* the current task's, see handle__sched_switch: no need to ask which task runs */
	if (s->task) {
		lat = bpf_ktime_get_ns();
		s->task = 0;
		enter = s->enter_ns;
		id = s->id;
		generation = s->generation;
		of_target = s->of_target;
	} else {
		/* switched out since its entry (or entered before we were attached) */
		task = bpf_get_current_task_btf();
		f = bpf_task_storage_get(&in_flight, task, 0, 0);
		if (!f || !f->enter_ns)
			return 0;
		lat = bpf_ktime_get_ns();
		enter = f->enter_ns;
		f->enter_ns = 0;
		id = f->id;
		generation = f->generation;
		of_target = f->of_target;
		in_seq = f->in_seq;
	}
	lat -= enter;
	/* entered under an earlier activation: its timing is not ours */
	if (generation != cfg.target.generation)
		return 0;

	bucket = lat_bucket(lat);
	latency_add(interval, LAT_SYSTEM, lat, bucket);
	if (!of_target)
		return 0;
	latency_add(interval, LAT_TARGET, lat, bucket);

	task = bpf_get_current_task_btf();
	if (s->key_task == (__u64)task && s->key_task_start == task->start_boottime) {
		key = s->key;
	} else {
		if (!thread_key(task, &key))
			return 0;
		s->key_task = (__u64)task;
		s->key_task_start = task->start_boottime;
		s->key = key;
	}
	/* created here too: after a non-leader exec the thread has a new key */
	t = thread_entry(task, &key);
	if (t) {
		sl = &t->slot[interval & 1];
		if (sl->interval != interval) {
			/* read by proc_image two intervals ago: start afresh */
			sl->interval = interval;
			sl->count = 0;
			sl->sum_ns = 0;
			sl->min_ns = 0;
			sl->max_ns = 0;
			/* once per interval: follow a rename (prctl PR_SET_NAME), a move */
			bpf_probe_read_kernel_str(t->comm, sizeof(t->comm), task->comm);
			t->cgroup_id = cgroup_id_of(task);
		}
		sl->count++;
		sl->sum_ns += lat;
		if (sl->count == 1 || lat < sl->min_ns)
			sl->min_ns = lat;
		if (lat > sl->max_ns)
			sl->max_ns = lat;
		if (!in_seq) {
			seq_append(t, id, enter, lat);
		} else {
			/* its entry went in when it was switched out: the newest (one syscall at a time) */
			idx = (t->seq_total - 1) & (SYSCALL_SEQ_RING - 1);
			if (t->seq_enter_ns[idx] == enter)
				t->seq_dur_ns[idx] = lat;
		}
	}
	count_syscall(t, &key, id, interval);
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
	struct cpu_slot *s = this_cpu_slot();
	struct in_flight *f;

	/* exit and exit_group never return: the sequence ends with them */
	if (s && s->task == (__u64)task) {
		s->task = 0;
		if (s->of_target && s->generation == cfg.target.generation)
			seq_pending(task, s->id, s->enter_ns);
	}
	f = bpf_task_storage_get(&in_flight, task, 0, 0);
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
