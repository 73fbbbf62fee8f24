// SPDX-License-Identifier: GPL-2.0
/*
 * syscall: the target's syscalls, aggregated in the kernel. Per syscall
 * nothing goes through the ring buffer: latency figures build up in per-CPU
 * arrays (target and whole system, see latency.bpf.h), each target
 * thread's figures, its counts by syscall and its last SYSCALL_SEQ_RING
 * syscalls in its task storage (`live`; counts that find no room there in
 * `counts`). proc_image reads them once per interval: the live threads'
 * through a task iterator, which writes out those that made syscalls in
 * the interval; an exited thread's figures move to `threads` at its exit.
 *
 * Nothing is reset before it is read: every per-interval figure lives in
 * one of two slots by interval parity, and one program run reads
 * cfg.interval once, so all its figures land in the same interval. proc_image
 * bumps the interval, waits for the programs in flight (an RCU grace
 * period), and only then reads last interval's slots; BPF starts a slot
 * afresh only two intervals later. An exited thread's entry in `threads` is
 * deleted by proc_image once its last figures are read.
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
	 * A task known not to be the target, by the address of its registers
	 * on its kernel stack (the tracepoint's `regs`, one per live task):
	 * its next syscalls here need not ask which task runs (a helper call)
	 * nor match it against the target. Valid until the next switch here,
	 * under the same activation, while no task has exited or exec'd
	 * anywhere (identity_changes): a dead task's stack can go to a new
	 * task, and an exec can make a thread the target (a pid filter).
	 */
	__u64 other_regs;
	__u64 other_task;
	__u64 other_changes;
	__u32 other_generation;
	__u32 _pad2;
};

/* Tasks that exited or exec'd since proc_image loaded: see cpu_slot.other_regs. */
__u64 identity_changes;

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
 * A target thread's figures, from its first syscall under an activation
 * to its exit: one storage lookup per syscall, where a hash keyed by the
 * thread costs a hash and a bucket walk (~13 ns an event here, measured).
 * ~3.3 KiB a thread, freed with the task.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscall_live);
} live SEC(".maps");

/*
 * An exited thread's entries stay until the report after its exit's
 * interval: under churn (thousands of threads a second, ~10 distinct
 * syscalls each) the counts of two intervals' threads must fit. Entries
 * are allocated as used, so the room costs nothing until needed.
 */
#define MAX_THREADS 16384
#define MAX_COUNTS (1 << 18)

/* exited threads' figures, by key: an entry is ~3.3 KiB */
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
	count_in_map(tk, id, interval);
}

static __always_inline struct cpu_slot *this_cpu_slot(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&cpu_slots, &zero);
}

/* The key of a target thread's entry, kept in its in_flight storage (see the exec). */
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

/*
 * A target thread's figures, made at its first syscall under this
 * activation (generation); those left from an earlier one go first: their
 * sequence is not this activation's.
 */
static __always_inline struct syscall_live *live_figures(struct task_struct *task,
							 __u32 generation)
{
	struct syscall_live *l;

	l = bpf_task_storage_get(&live, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (l && l->key.start_ns && l->generation != generation) {
		bpf_task_storage_delete(&live, task);
		l = bpf_task_storage_get(&live, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	}
	if (!l) {
		STAT_INC(no_task_state);
		return NULL;
	}
	if (!l->key.start_ns) {
		if (!thread_key(task, &l->key))
			return NULL;
		l->generation = generation;
		l->t.tgid = task->tgid;
		l->t.task_start_ns = task->start_boottime;
		l->t.cgroup_id = cgroup_id_of(task);
		bpf_probe_read_kernel_str(l->t.comm, sizeof(l->t.comm), task->comm);
	}
	return l;
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
static __always_inline bool seq_pending(struct task_struct *task, __u32 generation, __u32 id,
					__u64 enter_ns)
{
	struct syscall_live *l = live_figures(task, generation);

	if (!l)
		return false;
	seq_append(&l->t, id, enter_ns, 0);
	return true;
}

/* An activation whose "not the target" can change with no exit, exec or switch: a cgroup's (a move). */
static __always_inline bool target_may_move(void)
{
	return cfg.target.mode == TARGET_CGROUP;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(handle__sys_enter, struct pt_regs *regs, long id)
{
	struct cpu_slot *s = this_cpu_slot();
	__u32 generation = cfg.target.generation;
	struct task_struct *task;

	if (!s)
		return 0;
	s->enter_ns = bpf_ktime_get_ns();
	s->id = id;
	s->generation = generation;
	if (s->other_regs == (__u64)regs && s->other_generation == generation &&
	    s->other_changes == *(volatile __u64 *)&identity_changes) {
		s->of_target = 0;
		s->task = s->other_task;
		return 0;
	}
	task = bpf_get_current_task_btf();
	s->of_target = id >= 0 && is_target(&cfg.target, task);
	if (s->of_target && in_ia32(task))
		s->id |= SYSCALL_ID_IA32;
	s->task = (__u64)task;
	/* read now or earlier alike: this task can't exit or exec meanwhile */
	if (!s->of_target && id >= 0 && !target_may_move()) {
		s->other_regs = (__u64)regs;
		s->other_task = (__u64)task;
		s->other_changes = *(volatile __u64 *)&identity_changes;
		s->other_generation = generation;
	}
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
	s->other_regs = 0;
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
		    seq_pending(prev, f->generation, f->id, f->enter_ns);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(handle__sys_exit, struct pt_regs *regs, long ret)
{
	__u32 interval = this_interval(), id, generation, of_target, in_seq = 0, idx, bucket;
	struct cpu_slot *s = this_cpu_slot();
	struct task_struct *task;
	struct syscall_thread *t;
	struct syscall_slot *sl;
	struct syscall_live *l;
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
	/* made here too: after a non-leader exec the thread has a new key */
	l = live_figures(task, generation);
	if (!l)
		return 0;
	t = &l->t;
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
	count_syscall(t, &l->key, id, interval);
	return 0;
}

/*
 * A thread's figures are complete (it exits, or takes another pid): they go
 * to `threads`, where proc_image reads them once more and deletes them.
 */
static __always_inline void end_live(struct task_struct *task)
{
	struct syscall_live *l = bpf_task_storage_get(&live, task, 0, 0);

	if (!l || l->exited || l->generation != cfg.target.generation)
		return;
	l->t.exit_interval = this_interval();
	l->t.exited = 1;
	if (bpf_map_update_elem(&threads, &l->key, &l->t, BPF_ANY))
		STAT_INC(map_full);
	/*
	 * The iterator passes over a thread marked exited: only once its
	 * figures are in `threads` (proc_image reads that after the iterator).
	 */
	l->exited = 1;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *task)
{
	struct cpu_slot *s = this_cpu_slot();

	/* its kernel stack may go to a new task: see cpu_slot.other_regs */
	__sync_fetch_and_add(&identity_changes, 1);
	/* exit and exit_group never return: the sequence ends with them */
	if (s && s->task == (__u64)task) {
		s->task = 0;
		if (s->of_target && s->generation == cfg.target.generation)
			seq_pending(task, s->generation, s->id, s->enter_ns);
	}
	end_live(task);
	return 0;
}

/*
 * exec: the figures take the new comm. A non-leader thread that execs takes
 * the leader's pid (and start time): its old figures end here, and its
 * next syscalls go to new ones keyed by the time of the exec.
 */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle__sched_process_exec, struct task_struct *task, pid_t old_pid)
{
	struct in_flight *f = bpf_task_storage_get(&in_flight, task, 0, 0);
	struct syscall_live *l;

	/* a non-leader's exec takes another pid: see cpu_slot.other_regs */
	__sync_fetch_and_add(&identity_changes, 1);
	if (!f || !f->thread_start)
		return 0;
	if (task->pid != old_pid) {
		end_live(task);
		bpf_task_storage_delete(&live, task);
		f->thread_start = bpf_ktime_get_boot_ns();
		return 0;
	}
	l = bpf_task_storage_get(&live, task, 0, 0);
	if (l)
		bpf_probe_read_kernel_str(l->t.comm, sizeof(l->t.comm), task->comm);
	return 0;
}

/*
 * Run by proc_image when it closes an interval (after moving BPF on to the
 * next one): the figures of each live target thread that made syscalls in
 * it. An exited thread's are in `threads` (one that exits while this runs
 * can be in both: proc_image counts it once); storage left from an earlier
 * activation is freed.
 */
SEC("iter/task")
int handle__iter_task(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	__u32 closed = this_interval() - 1;
	struct syscall_live *l;

	if (!task)
		return 0;
	l = bpf_task_storage_get(&live, task, 0, 0);
	if (!l || l->exited)
		return 0;
	if (l->generation != cfg.target.generation) {
		bpf_task_storage_delete(&live, task);
		return 0;
	}
	if (l->t.slot[closed & 1].interval == closed && l->t.slot[closed & 1].count)
		bpf_seq_write(ctx->meta->seq, l, sizeof(*l));
	return 0;
}
