// SPDX-License-Identifier: GPL-2.0
/*
 * keytime: the target's life from creation to termination.
 *
 * Lifecycle points come from scheduler tracepoints, not from uprobes on the C
 * library, so a fork is seen whatever made the call: task_newtask carries the
 * clone flags (fork / vfork / thread), sched_process_exec the new image,
 * sched_process_exit the exit status. sched_switch gives every on-CPU and
 * off-CPU interval and why the task left the CPU.
 *
 * Targeted modes stream one record per interval. TARGET_SYSTEM would flood,
 * so there intervals are summed per thread into summary_a/summary_b, which
 * proc_image swaps and drains every reporting interval.
 */
#include "common.bpf.h"

/* Written by proc_image at activation (struct keytime_config). */
struct keytime_config cfg;

/* Per-task interval bookkeeping, freed with the task. */
struct cpu_state {
	__u32 generation;  /* cfg.target.generation it was written under */
	__u32 reason;      /* why it went off-CPU */
	__u64 on_since;    /* 0 = not known to be on a CPU */
	__u64 off_since;   /* 0 = not known to be off */
	__u32 prev_state;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cpu_state);
} cpu_states SEC(".maps");

#define SUMMARY_MAX_THREADS 32768

struct summary_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SUMMARY_MAX_THREADS);
	__type(key, struct keytime_summary_key);
	__type(value, struct keytime_summary);
};
struct summary_map summary_a SEC(".maps");
struct summary_map summary_b SEC(".maps");

/* Scratch for a summary entry: too large for the BPF stack with the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct keytime_summary);
} summary_zero SEC(".maps");

/* uapi/linux/sched.h: macros, so not in vmlinux.h */
#define CLONE_VFORK 0x00004000
#define CLONE_THREAD 0x00010000

/* Raw task states (include/linux/sched.h); stable ABI of sched_switch. */
#define S_INTERRUPTIBLE 0x0001
#define S_UNINTERRUPTIBLE 0x0002
#define S_STOPPED 0x0004
#define S_TRACED 0x0008
#define S_EXIT_DEAD 0x0010
#define S_EXIT_ZOMBIE 0x0020
#define S_PARKED 0x0040
#define S_DEAD 0x0080
#define S_NOLOAD 0x0400
#define S_RTLOCK_WAIT 0x1000

static __always_inline __u32 offcpu_reason(bool preempt, __u32 state)
{
	/*
	 * Runnable when switched out: preempted in the kernel (preempt set) or
	 * at return to user space (preempt clear, state TASK_RUNNING).
	 */
	if (preempt || state == 0)
		return OFFCPU_PREEMPTED;
	if (state & (S_DEAD | S_EXIT_DEAD | S_EXIT_ZOMBIE))
		return OFFCPU_DEAD;
	if (state & S_RTLOCK_WAIT)
		return OFFCPU_LOCK;
	if (state & S_PARKED)
		return OFFCPU_PARKED;
	if (state & S_TRACED)
		return OFFCPU_TRACED;
	if (state & S_STOPPED)
		return OFFCPU_STOPPED;
	if ((state & (S_UNINTERRUPTIBLE | S_NOLOAD)) == (S_UNINTERRUPTIBLE | S_NOLOAD))
		return OFFCPU_IDLE;
	if (state & S_UNINTERRUPTIBLE)
		return OFFCPU_UNINTERRUPTIBLE;
	if (state & S_INTERRUPTIBLE)
		return OFFCPU_SLEEP;
	return OFFCPU_OTHER;
}

static __always_inline struct cpu_state *task_cpu_state(struct task_struct *task)
{
	struct cpu_state *st;

	st = bpf_task_storage_get(&cpu_states, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st) {
		STAT_INC(no_task_state);
		return NULL;
	}
	if (st->generation != cfg.target.generation) {
		/* left over from an earlier activation: start afresh */
		st->generation = cfg.target.generation;
		st->on_since = 0;
		st->off_since = 0;
	}
	return st;
}

/* ---------------------------------------------------------------- */
/* Lifecycle */

SEC("tp_btf/task_newtask")
int BPF_PROG(handle__task_newtask, struct task_struct *task, __u64 clone_flags)
{
	struct task_struct *parent = bpf_get_current_task_btf();
	struct keytime_clone_event *e;
	__u8 kind;

	if (!is_target(&cfg.target, parent))
		return 0;

	if (clone_flags & CLONE_THREAD)
		kind = KEYTIME_PTHREAD_CREATE;
	else if (clone_flags & CLONE_VFORK)
		kind = KEYTIME_VFORK;
	else
		kind = KEYTIME_FORK;

	e = reserve_record(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, parent, PI_KEYTIME, kind, bpf_ktime_get_ns());
	e->clone_flags = clone_flags;
	e->child_pid = task->pid;
	e->child_tgid = task->tgid;
	submit_record(e);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle__sched_process_exec, struct task_struct *task, pid_t old_pid,
	     struct linux_binprm *bprm)
{
	struct keytime_exec_event *e;
	unsigned long arg_start, arg_end, len;

	if (!is_target(&cfg.target, task))
		return 0;

	e = reserve_record(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, task, PI_KEYTIME, KEYTIME_EXECVE, bpf_ktime_get_ns());
	e->old_pid = old_pid;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), bprm->filename);

	/* argv of the new image: NUL-separated strings at mm->arg_start */
	arg_start = task->mm->arg_start;
	arg_end = task->mm->arg_end;
	len = arg_end > arg_start ? arg_end - arg_start : 0;
	e->args_truncated = len > sizeof(e->args);
	if (len > sizeof(e->args))
		len = sizeof(e->args);
	if (bpf_probe_read_user(e->args, len, (void *)arg_start))
		len = 0;
	e->args_len = len;
	submit_record(e);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *task)
{
	struct keytime_exit_event *e;

	if (!is_target(&cfg.target, task))
		return 0;

	e = reserve_record(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, task, PI_KEYTIME, KEYTIME_EXIT, bpf_ktime_get_ns());
	e->exit_code = task->exit_code;
	/* do_exit() has already counted this thread out of signal->live */
	e->group_dead = task->signal->live.counter == 0;
	submit_record(e);
	return 0;
}

/* ---------------------------------------------------------------- */
/* On-CPU / off-CPU, targeted: one record per interval */

static __always_inline void emit_interval(struct task_struct *task, __u8 kind, __u64 now,
					  __u64 duration, struct cpu_state *st)
{
	struct keytime_cpu_event *e;
	long n;

	e = reserve_record(sizeof(*e));
	if (!e)
		return;
	fill_hdr(&e->hdr, task, PI_KEYTIME, kind, now);
	e->duration_ns = duration;
	e->_pad = 0;
	e->reason = 0;
	e->prev_state = 0;
	e->stack_len = 0;
	if (kind == KEYTIME_OFF_CPU) {
		e->reason = st->reason;
		e->prev_state = st->prev_state;
		/*
		 * Switching in, `task` has not run since it blocked: its saved
		 * kernel stack still names where. A preemption names nothing.
		 */
		if (st->reason != OFFCPU_PREEMPTED && duration >= cfg.stack_min_ns) {
			n = bpf_get_task_stack(task, e->kstack, sizeof(e->kstack), 0);
			if (n > 0)
				e->stack_len = n;
		}
	}
	submit_record(e);
}

static __always_inline void switch_out(struct task_struct *prev, bool preempt,
				       __u32 prev_state, __u64 now)
{
	struct cpu_state *st = task_cpu_state(prev);

	if (!st)
		return;
	if (st->on_since)
		emit_interval(prev, KEYTIME_ON_CPU, now, now - st->on_since, st);
	st->on_since = 0;
	st->off_since = now;
	st->prev_state = prev_state;
	st->reason = offcpu_reason(preempt, prev_state);
}

static __always_inline void switch_in(struct task_struct *next, __u64 now)
{
	struct cpu_state *st = task_cpu_state(next);

	if (!st)
		return;
	if (st->off_since)
		emit_interval(next, KEYTIME_OFF_CPU, now, now - st->off_since, st);
	st->off_since = 0;
	st->on_since = now;
}

/* ---------------------------------------------------------------- */
/* On-CPU / off-CPU, whole system: sums per thread per interval */

static __always_inline struct keytime_summary *summary_lookup(struct keytime_summary_key *key)
{
	/* two call sites, one map each: the verifier wants a known map per call */
	if (cfg.summary_slot)
		return bpf_map_lookup_elem(&summary_b, key);
	return bpf_map_lookup_elem(&summary_a, key);
}

static __always_inline struct keytime_summary *summary_entry(struct task_struct *task)
{
	/* idle tasks all have pid 0: keep one entry per CPU for them */
	struct keytime_summary_key key = {
		.pid = task->pid,
		.cpu = task->pid ? 0 : bpf_get_smp_processor_id(),
	};
	struct keytime_summary *s;
	__u32 zero = 0;

	s = summary_lookup(&key);
	if (s)
		return s;
	s = bpf_map_lookup_elem(&summary_zero, &zero);
	if (!s)
		return NULL;
	__builtin_memset(s, 0, sizeof(*s));
	s->tgid = task->tgid;
	bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), task->comm);
	if (cfg.summary_slot)
		bpf_map_update_elem(&summary_b, &key, s, BPF_NOEXIST);
	else
		bpf_map_update_elem(&summary_a, &key, s, BPF_NOEXIST);
	s = summary_lookup(&key);
	if (!s)
		STAT_INC(map_full);
	return s;
}

static __always_inline void summarize_switch(struct task_struct *prev, struct task_struct *next,
					     bool preempt, __u32 prev_state, __u64 now)
{
	struct keytime_summary *sum;
	struct cpu_state *st;
	__u32 reason;

	st = task_cpu_state(prev);
	if (st) {
		reason = offcpu_reason(preempt, prev_state);
		sum = summary_entry(prev);
		if (sum) {
			if (st->on_since)
				sum->on_cpu_ns += now - st->on_since;
			sum->switches_out++;
			if (reason == OFFCPU_PREEMPTED)
				sum->preemptions++;
		}
		st->on_since = 0;
		st->off_since = now;
		st->reason = reason;
	}

	st = task_cpu_state(next);
	if (st) {
		if (st->off_since) {
			sum = summary_entry(next);
			if (sum && st->reason < OFFCPU_REASON_COUNT)
				sum->off_cpu_ns[st->reason] += now - st->off_since;
		}
		st->off_since = 0;
		st->on_since = now;
	}
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	__u64 now = bpf_ktime_get_ns();

	if (cfg.target.mode == TARGET_SYSTEM) {
		summarize_switch(prev, next, preempt, prev_state, now);
		return 0;
	}
	if (is_target(&cfg.target, prev))
		switch_out(prev, preempt, prev_state, now);
	if (is_target(&cfg.target, next))
		switch_in(next, now);
	return 0;
}
