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
 * A target's children are marked in task storage when created, so their
 * ends are reported (child_exit) whether they are targets or not. A failed
 * exec returns from the syscall, unlike a successful one: the per-syscall
 * tracepoints of execve / execveat (which run for those syscalls only)
 * catch it. The last signal sent to a target process and an OOM kill are
 * kept in its leader's task storage, for its threads' exit records.
 *
 * On/off-CPU stretches are summed per thread per reporting interval into
 * summary_a/summary_b, which proc_image swaps and drains every interval,
 * cutting the stretches still open at the close (handle__iter_task). The
 * whole system (TARGET_SYSTEM) sums into them at every switch; targeted
 * modes sum into the task's own storage, which the close pass reports, and
 * stream a stretch as its own record when it lasts cfg.stretch_min_ns: a
 * thread switching 100k times a second would otherwise flood.
 * Where a hook's arguments changed between kernels, a program comes in a
 * newer and an older (_compat) form; proc_image loads the one this kernel
 * takes (src/kernel_btf.rs).
 */
#include "common.bpf.h"
#include "compat.bpf.h"

/* Written by proc_image at activation (struct keytime_config). */
struct keytime_config cfg;

#ifndef PF_KTHREAD
#define PF_KTHREAD 0x00200000
#endif

/*
 * Per-task stretch bookkeeping, freed with the task. Stamps are taken and
 * moved with atomic exchanges: the close pass (handle__iter_task, on
 * proc_image's CPU) and the task's own switch (on its CPU) may meet.
 */
struct cpu_state {
	__u32 generation;    /* cfg.target.generation it was written under */
	__u32 reason;        /* why it went off-CPU */
	__u64 on_since;      /* 0 = not known to be on a CPU */
	__u64 off_since;     /* 0 = not known to be off */
	__u64 runtime_base;  /* TARGET_SYSTEM: se.sum_exec_runtime summed so far */
	__u32 prev_state;
	__u32 stranger;      /* the generation under which its switches found it not the target */
	/*
	 * Targeted modes: running totals since the activation, written only by
	 * the task's own switches (a task switches on one CPU at a time), so
	 * plain adds; the close pass reads them and reports what grew since it
	 * last looked (the rep_* below). on_ns is timed for idle tasks only:
	 * other tasks' on-CPU time is the scheduler's se.sum_exec_runtime.
	 * What a switch touches comes first: one cache line (the whole
	 * system's switches stay in it) and the off_ns entry of its reason.
	 */
	__u64 switches;
	__u64 preemptions;
	__u64 on_ns;
	__u64 off_ns[OFFCPU_REASON_COUNT];
	/* what the close passes and the final flush reported, under `lock` */
	struct bpf_spin_lock lock;
	__u32 flushed;       /* its last switch reported it: nothing more to say */
	__u64 rep_runtime;
	__u64 rep_off_ns[OFFCPU_REASON_COUNT];
	__u64 rep_switches;
	__u64 rep_preemptions;
	/*
	 * The totals up to a close, cut by the task's first switch after it
	 * (its stretch then spans the close), so that what it does between the
	 * close and the pass reaching it counts in the next interval.
	 */
	__u64 snap_close;    /* the close they are cut at; written last */
	__u64 snap_runtime;  /* se.sum_exec_runtime (idle: on_ns) up to it */
	__u64 snap_switches;
	__u64 snap_preemptions;
	__u64 snap_off_ns[OFFCPU_REASON_COUNT];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct cpu_state);
} cpu_states SEC(".maps");

/*
 * Level 2: the record of a target thread's last switch-out, built in place.
 * Only the task itself can read its user stack, so its user registers and
 * the top of its stack are copied at every switch-out; the switch-in adds
 * the kernel stack and sends the record if the stretch was long enough.
 */
struct offcpu_stack_record {
	struct keytime_offcpu_stack_event ev;
	__u8 ustack[KEYTIME_USTACK_PAGES * 4096];
};

struct user_stack {
	struct offcpu_stack_record rec;
	__u32 generation; /* cfg.target.generation it was taken under */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct user_stack);
} user_stacks SEC(".maps");

/*
 * Level 2: who last woke a target thread from task context, and the
 * waker's stacks then, on the woken thread until its switch-in says
 * whether its stretch is long enough to be emitted with stacks.
 */
struct waker_slot {
	struct keytime_waker_event ev; /* built in place, sent as is */
	__u8 ustack[KEYTIME_USTACK_PAGES * 4096];
	__u32 generation; /* cfg.target.generation it was taken under */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct waker_slot);
} wakers SEC(".maps");

/*
 * The idle tasks (pid 0, one per CPU) are kept by CPU: the close pass
 * walks the CPUs for them, since the task iterator does not visit them.
 */
#define MAX_CPUS 1024 /* a power of two: indexes are masked with it */
#define COMPAT_IDLE_CPUS 64 /* idle tasks closed per pass without bpf_loop */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_CPUS);
	__type(key, __u32);
	__type(value, struct cpu_state);
} idle_states SEC(".maps");

/*
 * Which CPUs run a task other than their idle one, as the last pass saw:
 * busy_pass[cpu] == pass_seq while the pass is under way.
 */
__u32 busy_pass[MAX_CPUS];
__u32 pass_seq = 1;

#include "switch_clock.bpf.h"

/* Kernels before 6.16: whether a thread group's death was reported, on its leader. */
struct group_state {
	__u64 dead_reported; /* 64 bits: compare-and-swap without ALU32 */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct group_state);
} group_states SEC(".maps");


/* A target's child, marked at its creation (freed with the task). */
struct child_state {
	__u32 generation;   /* cfg.target.generation at the creation */
	__u8 kind;          /* KEYTIME_FORK, ... */
	__u8 _pad[3];
	__u32 parent_pid;   /* the creator, as it was then: it may end first */
	__u32 parent_tgid;
	__u8 parent_comm[PI_COMM_LEN];
	__u64 parent_cgroup;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct child_state);
} children SEC(".maps");

/*
 * What may end a target process, on its group leader (which outlives its
 * threads until reaped): the last signal generated for it, and an OOM kill.
 */
struct exit_cause {
	__u32 generation;
	__u32 sig;
	__u32 sender_pid;
	__u32 sender_tgid;
	__u8 sender_comm[PI_COMM_LEN];
	__u8 sender_kernel;
	__u8 oom;
	__u8 _pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct exit_cause);
} exit_causes SEC(".maps");

/* An exec in progress of a target thread, by pid: its arguments, read if it fails. */
struct exec_call {
	__u64 filename;  /* user pointers */
	__u64 argv;
	__u32 generation;
	__u32 execveat;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct exec_call);
} exec_calls SEC(".maps");

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

/* include/linux/sched.h: macros, so not in vmlinux.h */
#define PF_IO_WORKER 0x00000010   /* an io_uring worker */
#define PF_USER_WORKER 0x00004000 /* a kernel thread of a user process (vhost), 6.4+ */

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


/* Targeted modes: nothing summed or reported yet; the scheduler's account starts at `runtime`. */
static __always_inline void reset_totals(struct cpu_state *st, __u64 runtime)
{
	/* field by field: the spin lock may not be written */
	for (int i = 0; i < OFFCPU_REASON_COUNT; i++) {
		st->off_ns[i] = 0;
		st->rep_off_ns[i] = 0;
	}
	st->on_ns = 0;
	st->switches = 0;
	st->preemptions = 0;
	st->flushed = 0;
	st->rep_runtime = runtime;
	st->rep_switches = 0;
	st->rep_preemptions = 0;
	st->snap_close = 0;
}

/*
 * First sight of `task` in this activation: nothing of it was seen since
 * the programs were attached, so the stretch it is in began before the
 * activation and is counted from it.
 */
static __always_inline void start_from_activation(struct task_struct *task, struct cpu_state *st,
						  bool running, __u32 reason, __u32 state, __u64 now)
{
	__u64 from = cfg.activated_ns, rt = task->se.sum_exec_runtime;
	__u64 ran = now > from ? now - from : 0;

	st->generation = cfg.target.generation;
	st->prev_state = state;
	st->reason = reason;
	if (running) {
		st->on_since = from;
		st->off_since = 0;
		/* the scheduler's account at the activation is gone: time the part since */
		st->runtime_base = rt > ran ? rt - ran : 0;
	} else {
		st->on_since = 0;
		st->off_since = from;
		st->runtime_base = rt;
	}
	/* the idle tasks' on-CPU time is timed (on_ns), from 0 */
	reset_totals(st, task->pid ? st->runtime_base : 0);
}

/*
 * First sight of `task` at a switch under this activation. The switch's
 * filter (may_be_target) compared ids only: a task with the target's id but
 * not its start time (a recycled id) is a stranger, said so once per
 * activation. Else why it left the CPU before the activation is not known.
 * False for a stranger. Out of line, like everything a switch rarely does:
 * the code a switch runs stays short and together (inlined, it was spread
 * among what a switch seldom runs: ~10 ns a switch of a target, measured).
 */
static __noinline bool first_sight(struct task_struct *task, struct cpu_state *st, bool running,
				   __u64 now)
{
	const struct target_filter *t = &cfg.target;

	if (st->stranger == t->generation)
		return false;
	if (!start_matches(t, t->mode == TARGET_TGID ? task->group_leader : task)) {
		st->stranger = t->generation;
		return false;
	}
	start_from_activation(task, st, running, OFFCPU_OTHER, 0, now);
	return true;
}

static __always_inline struct cpu_state *task_cpu_state(struct task_struct *task, bool running,
							__u64 now)
{
	struct cpu_state *st;
	__u32 cpu;

	if (task->pid == 0) {
		cpu = bpf_get_smp_processor_id();
		st = bpf_map_lookup_elem(&idle_states, &cpu);
	} else {
		st = bpf_task_storage_get(&cpu_states, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	}
	if (!st) {
		STAT_INC(no_task_state);
		return NULL;
	}
	if (st->generation != cfg.target.generation && !first_sight(task, st, running, now))
		return NULL;
	return st;
}

/* ---------------------------------------------------------------- */
/* Lifecycle */

/* A new task waits for a CPU from its creation. */
static __always_inline void start_new_task(struct task_struct *task, __u64 now)
{
	struct cpu_state *st;

	st = bpf_task_storage_get(&cpu_states, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st) {
		STAT_INC(no_task_state);
		return;
	}
	st->generation = cfg.target.generation;
	st->reason = OFFCPU_PREEMPTED;
	st->prev_state = 0;
	st->on_since = 0;
	st->off_since = now;
	st->runtime_base = 0;
	reset_totals(st, 0);
}

/* `task` was created by a target: its end will be a child_exit record. */
static __always_inline void mark_child(struct task_struct *task, struct task_struct *parent,
				       __u8 kind)
{
	struct child_state *c;

	c = bpf_task_storage_get(&children, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!c) {
		STAT_INC(no_task_state);
		return;
	}
	c->generation = cfg.target.generation;
	c->kind = kind;
	c->parent_pid = parent->pid;
	c->parent_tgid = parent->tgid;
	bpf_probe_read_kernel_str(c->parent_comm, sizeof(c->parent_comm), parent->comm);
	c->parent_cgroup = cgroup_id_of(parent);
}

SEC("tp_btf/task_newtask")
int BPF_PROG(handle__task_newtask, struct task_struct *task, __u64 clone_flags)
{
	struct task_struct *parent = bpf_get_current_task_btf();
	struct keytime_clone_event *e;
	__u64 now;
	__u8 kind;

	if (cfg.level >= KEYTIME_LEVEL_ALL && is_target(&cfg.target, task))
		start_new_task(task, bpf_ktime_get_ns());
	if (!is_target(&cfg.target, parent))
		return 0;
	now = bpf_ktime_get_ns();

	if (task->flags & (PF_IO_WORKER | PF_USER_WORKER))
		kind = KEYTIME_KERNEL_WORKER;
	else if (clone_flags & CLONE_THREAD)
		kind = KEYTIME_PTHREAD_CREATE;
	else if (clone_flags & CLONE_VFORK)
		kind = KEYTIME_VFORK;
	else
		kind = KEYTIME_FORK;

	mark_child(task, parent, kind);
	e = reserve_record(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, parent, PI_KEYTIME, kind, now);
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

	/*
	 * The thread traced alone (-p) exec'd from a non-leader: it goes on as
	 * its group's leader, under the leader's pid and start time.
	 */
	if (cfg.target.mode == TARGET_THREAD && old_pid == cfg.target.pid &&
	    task->pid != old_pid) {
		cfg.target.pid = task->pid;
		if (cfg.target.ns_per_tick)
			cfg.target.start_ticks = task->start_boottime / cfg.target.ns_per_tick;
	}
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

/* A marked child of a target has ended (it need not be a target itself). */
static __always_inline void report_child_exit(struct task_struct *task)
{
	struct keytime_child_exit_event *e;
	struct child_state *c;
	__u64 born, now;

	c = bpf_task_storage_get(&children, task, 0, 0);
	if (!c || c->generation != cfg.target.generation)
		return;
	now = bpf_ktime_get_ns();
	e = reserve_record(sizeof(*e));
	if (!e)
		return;
	/* the record is the creator's, as fork's was */
	e->hdr.ts_ns = now;
	e->hdr.pid = c->parent_pid;
	e->hdr.tgid = c->parent_tgid;
	__builtin_memcpy(e->hdr.comm, c->parent_comm, sizeof(e->hdr.comm));
	e->hdr.collector = PI_KEYTIME;
	e->hdr.kind = KEYTIME_CHILD_EXIT;
	e->hdr.cpu = bpf_get_smp_processor_id();
	e->hdr._pad = 0;
	e->hdr.cgroup_id = c->parent_cgroup;
	/* task->start_time: CLOCK_MONOTONIC at the creation, bpf_ktime_get_ns's clock */
	born = task->start_time;
	e->lifetime_ns = now > born ? now - born : 0;
	e->child_pid = task->pid;
	e->child_tgid = task->tgid;
	bpf_probe_read_kernel_str(e->child_comm, sizeof(e->child_comm), task->comm);
	e->exit_code = task->exit_code;
	e->kind = c->kind;
	e->_pad[0] = e->_pad[1] = e->_pad[2] = 0;
	submit_record(e);
	/* said once, even if the storage outlives this exit */
	c->generation = 0;
}

static __always_inline int report_exit(struct task_struct *task, bool group_dead)
{
	struct keytime_exit_event *e;
	struct exit_cause *why;
	__u32 sig = task->exit_code & 0x7f;

	e = reserve_record(sizeof(*e));
	if (!e)
		return 0;
	fill_hdr(&e->hdr, task, PI_KEYTIME, KEYTIME_EXIT, bpf_ktime_get_ns());
	e->exit_code = task->exit_code;
	e->group_dead = group_dead;
	e->oom_kill = 0;
	e->killed = 0;
	e->killer_kernel = 0;
	e->killer_pid = 0;
	e->killer_tgid = 0;
	__builtin_memset(e->killer_comm, 0, sizeof(e->killer_comm));
	why = bpf_task_storage_get(&exit_causes, task->group_leader, 0, 0);
	if (why && why->generation == cfg.target.generation) {
		e->oom_kill = why->oom;
		/* the signal it died of is the last one of its number sent to it */
		if (sig && why->sig == sig) {
			e->killed = 1;
			e->killer_kernel = why->sender_kernel;
			e->killer_pid = why->sender_pid;
			e->killer_tgid = why->sender_tgid;
			__builtin_memcpy(e->killer_comm, why->sender_comm, sizeof(e->killer_comm));
		}
	}
	if (cfg.oom_from_mm && BPF_CORE_READ(task, signal, oom_mm))
		e->oom_kill = 1;
	submit_record(e);
	return 0;
}

/* 6.16+: do_exit() says whether this thread was the group's last. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *task, bool group_dead)
{
	report_child_exit(task);
	if (!is_target(&cfg.target, task))
		return 0;
	return report_exit(task, group_dead);
}

/*
 * Before 6.16 (or forced): do_exit() has counted this thread out of
 * signal->live before the tracepoint. When exit_group() kills threads on
 * several CPUs, more than one may find it at zero: the first of those to
 * claim the group, on its leader, reports its death.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit_compat, struct task_struct *task)
{
	struct group_state *g;
	bool dead;

	report_child_exit(task);
	if (!is_target(&cfg.target, task))
		return 0;
	dead = BPF_CORE_READ(task, signal, live.counter) == 0;
	if (dead) {
		g = bpf_task_storage_get(&group_states, task->group_leader, 0,
					 BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (g)
			dead = __sync_val_compare_and_swap(&g->dead_reported, 0, 1) == 0;
		else
			STAT_INC(no_task_state); /* may then be said twice */
	}
	return report_exit(task, dead);
}

/* ---------------------------------------------------------------- */
/* Who ended it: signals and OOM kills of a target process */

/* A signal or OOM kill for `task` ends the target, or its process, if it is fatal. */
static __always_inline bool ends_target(struct task_struct *task)
{
	/* -p: a fatal signal to any thread of its process ends it too */
	if (cfg.target.mode == TARGET_THREAD)
		return task->tgid == cfg.target.tgid;
	return is_target(&cfg.target, task);
}

static __always_inline struct exit_cause *exit_cause_of(struct task_struct *task)
{
	struct exit_cause *why;

	why = bpf_task_storage_get(&exit_causes, task->group_leader, 0,
				   BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!why) {
		STAT_INC(no_task_state);
		return NULL;
	}
	if (why->generation != cfg.target.generation) {
		__builtin_memset(why, 0, sizeof(*why));
		why->generation = cfg.target.generation;
	}
	return why;
}

/* include/linux/signal.h, include/uapi/asm-generic/siginfo.h: macros, so not in vmlinux.h */
#define SEND_SIG_PRIV 1
#define SI_USER 0
#define SI_KERNEL 0x80
#define TRACE_SIGNAL_DELIVERED 0
#define TRACE_SIGNAL_LOSE_INFO 4

/*
 * Every signal that is queued for a target process (most are not fatal;
 * the exit tells which was, by its number). The sender is the task it is
 * generated in: kill(2)'s caller, or for one the kernel raises (a fault,
 * the OOM killer) the task the kernel was running for.
 */
SEC("tp_btf/signal_generate")
int BPF_PROG(handle__signal_generate, int sig, struct kernel_siginfo *info,
	     struct task_struct *task, int group, int result)
{
	struct task_struct *sender = bpf_get_current_task_btf();
	struct exit_cause *why;
	int code = SI_USER;

	if (result != TRACE_SIGNAL_DELIVERED && result != TRACE_SIGNAL_LOSE_INFO)
		return 0;
	if (!ends_target(task))
		return 0;
	why = exit_cause_of(task);
	if (!why)
		return 0;
	/* SEND_SIG_NOINFO (0) is kill(2)-like; SEND_SIG_PRIV (1) the kernel's */
	if ((unsigned long)info == SEND_SIG_PRIV)
		code = SI_KERNEL;
	else if ((unsigned long)info > SEND_SIG_PRIV)
		code = BPF_CORE_READ(info, si_code);
	why->sig = sig;
	why->sender_pid = sender->pid;
	why->sender_tgid = sender->tgid;
	bpf_probe_read_kernel_str(why->sender_comm, sizeof(why->sender_comm), sender->comm);
	/* si_code > 0 or SI_KERNEL: raised by the kernel; <= 0: sent by a task */
	why->sender_kernel = code > 0;
	return 0;
}

/* The OOM killer chose `task`'s process. */
SEC("tp_btf/mark_victim")
int BPF_PROG(handle__mark_victim, struct task_struct *task, __u32 uid)
{
	struct exit_cause *why;

	if (!ends_target(task))
		return 0;
	why = exit_cause_of(task);
	if (why)
		why->oom = 1;
	return 0;
}

/*
 * Older kernels pass only the victim's pid: not attached; the exit reads
 * signal->oom_mm instead (cfg.oom_from_mm).
 */
SEC("tp_btf/mark_victim")
int BPF_PROG(handle__mark_victim_compat, int pid)
{
	return 0;
}

/* ---------------------------------------------------------------- */
/* Failed execs */

/* A target thread enters execve / execveat: keep where its arguments are. */
static __always_inline int exec_enter(__u64 filename, __u64 argv, __u32 at)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct exec_call call = {
		.filename = filename,
		.argv = argv,
		.generation = cfg.target.generation,
		.execveat = at,
	};
	__u32 pid = task->pid;

	if (!is_target(&cfg.target, task))
		return 0;
	if (bpf_map_update_elem(&exec_calls, &pid, &call, BPF_ANY))
		STAT_INC(map_full);
	return 0;
}

/*
 * The exec returned: 0 is a new image (sched_process_exec reported it),
 * an error leaves the caller's memory as it was, so its arguments are read
 * now, only for the failures.
 */
static __always_inline int exec_exit(long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct keytime_exec_failed_event *e;
	const char *const *argv;
	struct exec_call *call;
	__u32 pid = task->pid;
	__u64 len = 0, off;
	const char *arg;
	long n;
	int i;

	call = bpf_map_lookup_elem(&exec_calls, &pid);
	if (!call)
		return 0;
	if (ret >= 0 || call->generation != cfg.target.generation)
		goto done;
	e = reserve_record(sizeof(*e));
	if (!e)
		goto done;
	fill_hdr(&e->hdr, task, PI_KEYTIME, KEYTIME_EXEC_FAILED, bpf_ktime_get_ns());
	e->ret = ret;
	e->execveat = call->execveat;
	e->args_truncated = 0;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	if (bpf_probe_read_user_str(e->filename, sizeof(e->filename), (void *)call->filename) < 0)
		e->filename[0] = 0;
	argv = (const char *const *)call->argv;
	for (i = 0; i < KEYTIME_MAX_ARGS; i++) {
		arg = NULL;
		if (!argv || bpf_probe_read_user(&arg, sizeof(arg), &argv[i]) || !arg)
			break;
		if (len >= KEYTIME_ARGS_LEN) {
			e->args_truncated = 1;
			break;
		}
		/*
		 * Masked where the verifier sees it (clang would drop a mask it
		 * can prove idle): older verifiers walk paths the check above
		 * rules out, and refuse an unbounded offset there.
		 */
		off = len;
		asm volatile("" : "+r"(off));
		off &= KEYTIME_ARGS_LEN - 1;
		n = bpf_probe_read_user_str(&e->args[off], KEYTIME_ARG_PIECE, arg);
		if (n <= 0)
			break;
		if (n == KEYTIME_ARG_PIECE)
			e->args_truncated = 1; /* perhaps cut */
		len += n;
	}
	if (i == KEYTIME_MAX_ARGS)
		e->args_truncated = 1;
	if (len > KEYTIME_ARGS_LEN) {
		len = KEYTIME_ARGS_LEN;
		e->args_truncated = 1;
	}
	e->args_len = len;
	submit_record(e);
done:
	bpf_map_delete_elem(&exec_calls, &pid);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int handle__sys_enter_execve(struct trace_event_raw_sys_enter *ctx)
{
	/* (filename, argv, envp) */
	return exec_enter(ctx->args[0], ctx->args[1], 0);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int handle__sys_enter_execveat(struct trace_event_raw_sys_enter *ctx)
{
	/* (dirfd, filename, argv, envp, flags) */
	return exec_enter(ctx->args[1], ctx->args[2], 1);
}

SEC("tracepoint/syscalls/sys_exit_execve")
int handle__sys_exit_execve(struct trace_event_raw_sys_exit *ctx)
{
	return exec_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int handle__sys_exit_execveat(struct trace_event_raw_sys_exit *ctx)
{
	return exec_exit(ctx->ret);
}

/* ---------------------------------------------------------------- */
/*
 * On-CPU / off-CPU, targeted: every stretch is summed into the task's
 * totals in cpu_states (the close pass reports what they grew by in each
 * interval, as the whole-system mode does), and one that lasts at least
 * cfg.stretch_min_ns is also streamed as its own record.
 */

/* blocked_in and the lock / disk refinement need the first frames past the scheduler's */
#define KEYTIME_BLOCKED_FRAMES 8

/* The compiler keeps the stores on either side in order (x86 keeps them so too). */
#define barrier() asm volatile("" ::: "memory")

/* `flags`: KEYTIME_CPU_F_* */
static __always_inline void emit_interval(struct task_struct *task, __u8 kind, __u64 now,
					  __u64 duration, struct cpu_state *st, __u32 flags)
{
	struct keytime_cpu_event *e;
	long n;

	e = reserve_record(sizeof(*e));
	if (!e)
		return;
	fill_hdr(&e->hdr, task, PI_KEYTIME, kind, now);
	e->duration_ns = duration;
	e->flags = flags;
	e->reason = 0;
	e->prev_state = 0;
	e->stack_len = 0;
	if (kind == KEYTIME_OFF_CPU) {
		e->reason = st->reason;
		e->prev_state = st->prev_state;
		/*
		 * Switching in, `task` has not run since it blocked: its saved
		 * kernel stack still names where (not if that switch-in was
		 * unseen). A preemption names nothing. The walk costs per
		 * frame: only the innermost ones are taken.
		 */
		if (!(flags & KEYTIME_CPU_F_UNSEEN_SWITCH_IN) && st->reason != OFFCPU_PREEMPTED &&
		    duration >= cfg.stack_min_ns) {
			n = bpf_get_task_stack(task, e->kstack,
					       KEYTIME_BLOCKED_FRAMES * sizeof(e->kstack[0]), 0);
			if (n > 0)
				e->stack_len = n;
		}
	}
	submit_record(e);
}

/* Out of line (see first_sight): a stretch's record is the exception. */
static __noinline void emit_on_cpu(struct task_struct *task, __u64 now, __u64 duration,
				   struct cpu_state *st, __u32 flags)
{
	emit_interval(task, KEYTIME_ON_CPU, now, duration, st, flags);
}

static __noinline void emit_off_cpu(struct task_struct *task, __u64 now, __u64 duration,
				    struct cpu_state *st, __u32 flags)
{
	emit_interval(task, KEYTIME_OFF_CPU, now, duration, st, flags);
}

/*
 * Level 2, stretch long enough: off_cpu with the kernel stack the task is
 * switching back in from and the user stack copied at its switch-out.
 */
static __always_inline void emit_offcpu_stacks(struct task_struct *task, __u64 now,
					       __u64 duration, struct cpu_state *st, __u32 flags)
{
	struct keytime_offcpu_stack_event *e;
	struct user_stack *us;
	__u32 bytes;
	long n;

	us = bpf_task_storage_get(&user_stacks, task, 0, 0);
	if (!us || us->generation != cfg.target.generation) {
		/* no switch-out seen under this activation: level 1's record */
		emit_off_cpu(task, now, duration, st, 0);
		return;
	}
	e = &us->rec.ev;
	fill_hdr(&e->hdr, task, PI_KEYTIME, KEYTIME_OFF_CPU_STACK, now);
	e->duration_ns = duration;
	e->reason = st->reason;
	e->prev_state = st->prev_state;
	e->flags = flags;
	e->kstack_len = 0;
	n = bpf_get_task_stack(task, e->kstack, sizeof(e->kstack), 0);
	if (n > 0)
		e->kstack_len = n;
	bytes = e->ustack_bytes;
	if (bytes > KEYTIME_USTACK_PAGES * 4096)
		bytes = KEYTIME_USTACK_PAGES * 4096;
	output_record(&us->rec, sizeof(*e) + bytes);
}

/*
 * Copy the top of the user stack: whole pages from the one sp is in, up to
 * KEYTIME_USTACK_BYTES past sp (a read must not cross into an unmapped
 * page above the stack's top, and constant-size reads at constant offsets
 * are what the verifier can bound). Returns the pages copied.
 */
static __always_inline __u32 copy_user_stack(__u8 *to, __u64 sp)
{
	__u64 base = sp & ~4095ULL, need = (sp & 4095) + KEYTIME_USTACK_BYTES;
	__u32 pages = 0;

#pragma unroll
	for (int i = 0; i < KEYTIME_USTACK_PAGES; i++) {
		if ((__u64)i * 4096 >= need)
			break;
		if (bpf_probe_read_user(to + i * 4096, 4096, (void *)(base + i * 4096)))
			break;
		pages++;
	}
	return pages;
}

/*
 * The user registers and the top of the user stack of `task`, which must
 * be `current` (only a task can read its own user memory). A kernel
 * thread has neither: all 0.
 */
static __always_inline void copy_user_context(struct task_struct *task,
					      struct user_regs_sample *r, __u8 *pages,
					      __u32 *bytes, __u32 *start)
{
	struct pt_regs *regs;

	*bytes = 0;
	*start = 0;
	__builtin_memset(r, 0, sizeof(*r));
	if (task->flags & PF_KTHREAD)
		return;
	regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return;
	r->ip = PT_REGS_IP_CORE(regs);
	r->sp = PT_REGS_SP_CORE(regs);
	r->fp = PT_REGS_FP_CORE(regs);
#if defined(__TARGET_ARCH_arm64)
	r->lr = BPF_CORE_READ(regs, regs[30]);
#endif
	*bytes = copy_user_stack(pages, r->sp) * 4096;
	*start = *bytes ? r->sp & 4095 : 0;
}

/* Level 2: keep the user registers and stack `prev` (current) leaves the CPU with. */
static __noinline void keep_user_stack(struct task_struct *prev)
{
	struct keytime_offcpu_stack_event *e;
	struct user_stack *us;

	us = bpf_task_storage_get(&user_stacks, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!us)
		return;
	us->generation = cfg.target.generation;
	e = &us->rec.ev;
	copy_user_context(prev, &e->regs, us->rec.ustack, &e->ustack_bytes, &e->ustack_start);
}

/* ---------------------------------------------------------------- */
/* Level 2: who woke a target thread (handle__sched_waking, attached at level 2 only) */

/*
 * A target thread is being woken: worth the waker's stacks only if its
 * stretch is long enough for stacks already (one that crosses the
 * threshold between its wakeup and its switch-in goes without a waker).
 */
static __always_inline void *wakeup_wanted(struct task_struct *cur, struct task_struct *p)
{
	struct cpu_state *st;

	if (cfg.level < KEYTIME_LEVEL_STACKS || cfg.target.mode == TARGET_SYSTEM)
		return NULL;
	if (!is_target(&cfg.target, p))
		return NULL;
	st = bpf_task_storage_get(&cpu_states, p, 0, 0);
	if (!st || st->generation != cfg.target.generation || !st->off_since)
		return NULL;
	if (elapsed(st->off_since, bpf_ktime_get_ns()) < cfg.offcpu_stack_min_ns)
		return NULL;
	return st;
}

static __always_inline void wakeup_seen(void *ctx, void *state, struct task_struct *cur,
					struct task_struct *p)
{
	struct keytime_waker_event *e;
	struct waker_slot *w;
	long n;

	w = bpf_task_storage_get(&wakers, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!w) {
		STAT_INC(no_task_state);
		return;
	}
	w->generation = cfg.target.generation;
	e = &w->ev;
	e->wake_ns = bpf_ktime_get_ns();
	e->waker_pid = cur->pid;
	e->waker_tgid = cur->tgid;
	bpf_probe_read_kernel_str(e->waker_comm, sizeof(e->waker_comm), cur->comm);
	n = bpf_get_stack(ctx, e->kstack, sizeof(e->kstack), 0);
	e->kstack_len = n > 0 ? n : 0;
	/* the waker is `current`: its user stack is copied as at a switch-out */
	copy_user_context(cur, &e->regs, w->ustack, &e->ustack_bytes, &e->ustack_start);
}

#include "waker.bpf.h"

/*
 * The waker of the stretch `task` is switching back in from, if it was
 * woken from task context during it: sent just before the stretch's
 * KEYTIME_OFF_CPU_STACK record (same CPU, so the ring keeps the order).
 * False if there was one and its record was dropped.
 */
static __always_inline bool emit_waker(struct task_struct *task, __u64 now, __u64 off_since)
{
	struct keytime_waker_event *e;
	struct waker_slot *w;
	__u32 bytes;
	bool sent;

	w = bpf_task_storage_get(&wakers, task, 0, 0);
	if (!w || !w->ev.waker_pid || w->generation != cfg.target.generation ||
	    w->ev.wake_ns < off_since)
		return true;
	e = &w->ev;
	fill_hdr(&e->hdr, task, PI_KEYTIME, KEYTIME_WAKER, now);
	bytes = e->ustack_bytes;
	if (bytes > KEYTIME_USTACK_PAGES * 4096)
		bytes = KEYTIME_USTACK_PAGES * 4096;
	sent = output_record(w, sizeof(*e) + bytes);
	e->waker_pid = 0; /* said once */
	return sent;
}

static __noinline void flush_task(struct task_struct *task, struct cpu_state *st, __u64 now);

static __always_inline __u32 current_slot(void)
{
	return *(volatile __u32 *)&cfg.summary_slot & 1;
}

/*
 * The first switch of a task after an interval's close (its stretch, from
 * `stamp`, spans the close) keeps its totals up to the close: the close
 * pass reports those, whenever it reaches the task. `running`: the stretch
 * is on-CPU (a switch-out) and has run since the close for `now - close`.
 */
static __noinline void cut_totals_at_close(struct task_struct *task, struct cpu_state *st,
					   __u64 stamp, __u64 now, bool running)
{
	__u64 close = cfg.slot_start_ns[current_slot()], runtime;
	__u32 reason = st->reason;

	/* read again: a close may have been published since the check inline */
	if (!stamp || stamp >= close || st->snap_close == close)
		return;
	for (int i = 0; i < OFFCPU_REASON_COUNT; i++)
		st->snap_off_ns[i] = st->off_ns[i];
	if (!running && reason < OFFCPU_REASON_COUNT)
		st->snap_off_ns[reason] += close - stamp;
	/* two loads the compiler must not merge: the verifier wants one pointer type per insn */
	if (task->pid) {
		runtime = task->se.sum_exec_runtime;
		asm volatile("" : "+r"(runtime));
		if (running)
			runtime = elapsed(elapsed(close, now), runtime);
	} else {
		runtime = st->on_ns;
		asm volatile("" : "+r"(runtime));
		runtime += running ? close - stamp : 0;
	}
	st->snap_runtime = runtime;
	st->snap_switches = st->switches;
	st->snap_preemptions = st->preemptions;
	barrier();
	st->snap_close = close;
}

/* The check inline, the cut (once an interval) out of line. */
static __always_inline void cut_at_close(struct task_struct *task, struct cpu_state *st,
					 __u64 stamp, __u64 now, bool running)
{
	__u64 close = cfg.slot_start_ns[current_slot()];

	if (stamp && stamp < close && st->snap_close != close)
		cut_totals_at_close(task, st, stamp, now, running);
}

/*
 * A task switching out whose switch-in was not seen: its last switch-out
 * was (`off`, its off-CPU stretch's start), and it is on a CPU again. Some
 * kernels skip the sched_switch tracepoint for a few switches: the test VM
 * runs a task of its own once a second whose switches away are never
 * traced (neither BPF nor the kernel's own trace event sees them). The
 * scheduler stamps every arrival on a CPU (sched_info.last_arrival, its
 * run queue's clock: this clock less the CPU's offset), which places the
 * switch-in. Its time, or 0 if no arrival fits after `off` and by `now`.
 */
static __always_inline __u64 unseen_switch_in(struct task_struct *task, __u64 off, __u64 now)
{
	struct switch_clock *c = this_switch_clock();
	__u64 arrival;

	if (!off || !c->valid || !bpf_core_field_exists(task->sched_info.last_arrival))
		return 0;
	arrival = BPF_CORE_READ(task, sched_info.last_arrival) + c->offset;
	return arrival > off && arrival <= now ? arrival : 0;
}

/* Level 2: the stretch's waker and its record with stacks, out of line. */
static __noinline void emit_with_stacks(struct task_struct *task, struct cpu_state *st,
					__u64 since, __u64 now, __u64 duration)
{
	__u32 flags = emit_waker(task, now, since) ? 0 : KEYTIME_STACK_F_WAKER_LOST;

	emit_offcpu_stacks(task, now, duration, st, flags);
}

/*
 * Targeted: the off-CPU stretch from `since` ends at `now`. `switching_in`:
 * `task` is switching in now (else its switch-in was unseen and is placed
 * after the fact: no waker, no stacks, its kernel stack is not where it
 * blocked any more).
 */
static __always_inline void end_offcpu(struct task_struct *task, struct cpu_state *st,
				       __u64 since, __u64 now, bool switching_in)
{
	__u64 duration = elapsed(since, now);
	__u32 reason = st->reason;

	/* placed after the fact, it may have ended before the close: then it
	 * is the closing interval's alone */
	if (switching_in || now >= cfg.slot_start_ns[current_slot()])
		cut_at_close(task, st, since, now, false);
	st->off_since = 0;
	barrier();
	if (reason < OFFCPU_REASON_COUNT)
		st->off_ns[reason] += duration;
	if (switching_in && cfg.level >= KEYTIME_LEVEL_STACKS &&
	    duration >= cfg.offcpu_stack_min_ns) {
		emit_with_stacks(task, st, since, now, duration);
	} else if (duration >= cfg.stretch_min_ns)
		emit_off_cpu(task, now, duration, st,
			     switching_in ? 0 : KEYTIME_CPU_F_UNSEEN_SWITCH_IN);
}

/*
 * `task` is switching out at `now` with no switch-in seen since its last
 * switch-out: end that off-CPU stretch at the unseen switch-in, and return
 * its time (the start of the on-CPU stretch ending now), or 0. Out of line:
 * rare, and the switch's own path stays as short as it was.
 */
static __noinline __u64 place_unseen_switch_in(struct task_struct *task, struct cpu_state *st,
					       __u64 now)
{
	__u64 arrived = unseen_switch_in(task, st->off_since, now);

	if (arrived)
		end_offcpu(task, st, st->off_since, arrived, false);
	return arrived;
}

static __always_inline void switch_out(void *ctx, struct task_struct *prev, bool preempt,
				       __u32 prev_state, __u64 now)
{
	struct cpu_state *st = task_cpu_state(prev, true, now);
	__u32 reason, flags = 0;
	__u64 since, ran;

	if (!st)
		return;
	if (cfg.level >= KEYTIME_LEVEL_STACKS)
		keep_user_stack(prev);
	since = st->on_since;
	if (!since) {
		since = place_unseen_switch_in(prev, st, now);
		if (since)
			flags = KEYTIME_CPU_F_UNSEEN_SWITCH_IN;
	}
	cut_at_close(prev, st, since, now, true);
	/* stamps before totals: the close pass reads them the other way round */
	st->on_since = 0;
	barrier();
	if (since) {
		ran = elapsed(since, now);
		/* the scheduler keeps no account of its idle tasks: time them */
		if (!prev->pid)
			st->on_ns += ran;
		if (ran >= cfg.stretch_min_ns)
			emit_on_cpu(prev, now, ran, st, flags);
	}
	reason = offcpu_reason(preempt, prev_state);
	st->prev_state = prev_state;
	st->reason = reason;
	st->switches++;
	if (reason == OFFCPU_PREEMPTED)
		st->preemptions++;
	/* an exited thread has no off-CPU stretch after its last switch */
	if (reason == OFFCPU_DEAD) {
		st->off_since = 0;
		flush_task(prev, st, now);
	} else {
		st->off_since = now;
	}
}

static __always_inline void switch_in(struct task_struct *next, __u64 now)
{
	struct cpu_state *st = task_cpu_state(next, false, now);
	__u64 since;

	if (!st)
		return;
	since = st->off_since;
	if (since)
		end_offcpu(next, st, since, now, true);
	st->on_since = now;
}

/* ---------------------------------------------------------------- */
/*
 * On-CPU / off-CPU, whole system: sums per thread per reporting interval.
 *
 * On-CPU time is the scheduler's own account (se.sum_exec_runtime): what
 * was not summed yet is claimed at every switch-out and, for a task still
 * running, by the close pass. Off-CPU stretches are timed; one still open
 * when an interval closes is cut at the close. So an interval holds what
 * happened in it, not the whole of stretches that ended in it.
 */

static __always_inline struct keytime_summary *summary_lookup(__u32 slot,
							      struct keytime_summary_key *key)
{
	/* two call sites, one map each: the verifier wants a known map per call */
	if (slot)
		return bpf_map_lookup_elem(&summary_b, key);
	return bpf_map_lookup_elem(&summary_a, key);
}

/* `task` NULL: the idle task of `cpu` (idle tasks all have pid 0: one entry per CPU) */
static __always_inline struct keytime_summary *summary_entry(__u32 slot, struct task_struct *task,
							     __u32 cpu)
{
	struct keytime_summary_key key = {};
	struct keytime_summary *s;
	__u32 zero = 0;

	if (task && task->pid)
		key.pid = task->pid;
	else
		key.cpu = cpu;
	s = summary_lookup(slot, &key);
	if (s)
		return s;
	s = bpf_map_lookup_elem(&summary_zero, &zero);
	if (!s)
		return NULL;
	__builtin_memset(s, 0, sizeof(*s));
	if (task) {
		s->tgid = task->tgid;
		bpf_probe_read_kernel_str(s->comm, sizeof(s->comm), task->comm);
		s->cgroup_id = cgroup_id_of(task);
	}
	if (slot)
		bpf_map_update_elem(&summary_b, &key, s, BPF_NOEXIST);
	else
		bpf_map_update_elem(&summary_a, &key, s, BPF_NOEXIST);
	s = summary_lookup(slot, &key);
	if (!s)
		STAT_INC(map_full);
	return s;
}

static __always_inline void sum_add(__u32 slot, struct task_struct *task, __u32 cpu, bool on,
				    __u32 reason, __u64 ns)
{
	bool carried = false;
	struct keytime_summary *s;

	if (!ns)
		return;
	/* the closed interval's map is drained already: count it here, and say so */
	if (slot != current_slot() && !cfg.closing_open) {
		slot = current_slot();
		carried = true;
	}
	s = summary_entry(slot, task, cpu);
	if (!s)
		return;
	if (carried)
		__sync_fetch_and_add(&s->carried_ns, ns);
	if (on)
		__sync_fetch_and_add(&s->on_cpu_ns, ns);
	else if (reason < OFFCPU_REASON_COUNT)
		__sync_fetch_and_add(&s->off_cpu_ns[reason], ns);
}

/*
 * A timed stretch [from, to): a part before the start of the current
 * interval belongs to the one being closed (the close pass has not reached
 * this task yet, or it would have moved `from` to the close).
 */
static __always_inline void sum_span(struct task_struct *task, __u32 cpu, bool on, __u32 reason,
				     __u64 from, __u64 to)
{
	__u32 slot = current_slot();
	__u64 start = cfg.slot_start_ns[slot], cut;

	if (from < start) {
		cut = to < start ? to : start;
		sum_add(slot ^ 1, task, cpu, on, reason, elapsed(from, cut));
		from = cut;
	}
	if (to > from)
		sum_add(slot, task, cpu, on, reason, to - from);
}

/* The part of the scheduler's account of the task not summed yet, now summed. */
static __always_inline __u64 claim_runtime(struct cpu_state *st, __u64 runtime)
{
	__u64 base;
	int i;

	for (i = 0; i < 3; i++) {
		base = st->runtime_base;
		if (runtime <= base)
			return 0;
		if (__sync_val_compare_and_swap(&st->runtime_base, base, runtime) == base)
			return runtime - base;
	}
	return 0;
}

/*
 * Whole system: `task` switches out with no switch-in seen since its last
 * switch-out (see unseen_switch_in): its off-CPU span ends at that
 * switch-in. Out of line: rare.
 */
static __noinline void sum_unseen_switch_in(struct task_struct *task, struct cpu_state *st,
					    __u32 cpu, __u64 now)
{
	__u64 off = st->off_since, arrived = unseen_switch_in(task, off, now);

	if (arrived && __sync_val_compare_and_swap(&st->off_since, off, 0) == off)
		sum_span(task, cpu, false, st->reason, off, arrived);
}

static __always_inline void summarize_out(struct task_struct *prev, bool preempt,
					  __u32 prev_state, __u64 now)
{
	__u32 cpu = bpf_get_smp_processor_id(), reason = offcpu_reason(preempt, prev_state);
	struct task_struct *task = prev->pid ? prev : NULL;
	struct keytime_summary *sum;
	struct cpu_state *st;
	__u64 since, ran, before, start;
	__u32 slot;

	st = task_cpu_state(prev, true, now);
	if (!st)
		return;
	since = __sync_lock_test_and_set(&st->on_since, 0);
	if (!since && task)
		sum_unseen_switch_in(task, st, cpu, now);
	if (task)
		ran = claim_runtime(st, prev->se.sum_exec_runtime);
	else
		/* the scheduler keeps no account of its idle tasks: time them */
		ran = since && now > since ? now - since : 0;
	slot = current_slot();
	start = cfg.slot_start_ns[slot];
	if (since && since < start && ran) {
		/* running since before the close, not reached by the close pass */
		before = start - since < ran ? start - since : ran;
		sum_add(slot ^ 1, task, cpu, true, 0, before);
		ran -= before;
	}
	/* one entry for the run and the switch */
	sum = summary_entry(slot, task, cpu);
	if (sum) {
		if (ran)
			__sync_fetch_and_add(&sum->on_cpu_ns, ran);
		__sync_fetch_and_add(&sum->switches_out, 1);
		if (reason == OFFCPU_PREEMPTED)
			__sync_fetch_and_add(&sum->preemptions, 1);
	}
	st->reason = reason;
	st->prev_state = prev_state;
	st->off_since = reason == OFFCPU_DEAD ? 0 : now;
}

static __always_inline void summarize_in(struct task_struct *next, __u64 now)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct cpu_state *st;
	__u64 since;

	st = task_cpu_state(next, false, now);
	if (!st)
		return;
	since = __sync_lock_test_and_set(&st->off_since, 0);
	if (since)
		sum_span(next->pid ? next : NULL, cpu, false, st->reason, since, now);
	st->on_since = now;
}

/*
 * The switch's filter: is_target without the start-time check of a thread
 * or thread-group target, which task_cpu_state makes at a task's first
 * sight (first_sight): the start time is two loads through pointers the
 * switch does not otherwise touch, ~9 ns a switch of a target (measured).
 */
static __noinline bool is_target_out_of_line(struct task_struct *task)
{
	return is_target(&cfg.target, task);
}

/*
 * Whether `prev` and `next` may be the target, by their ids (the start
 * time is checked at a task's first sight, see first_sight): the mode is
 * looked at once for both. An idle task or a cgroup: out of line, or the
 * compiler merges the compares into is_target's dispatch on the mode (~8
 * ns a switch of an untargeted task, measured).
 */
static __always_inline void may_be_target(const struct target_filter *t,
					  struct task_struct *prev, struct task_struct *next,
					  bool *out, bool *in)
{
	__u32 mode = t->mode;

	if (mode == TARGET_TGID) {
		*out = prev->tgid == t->tgid;
		*in = next->tgid == t->tgid;
	} else if (mode == TARGET_THREAD) {
		*out = prev->pid == t->pid;
		*in = next->pid == t->pid;
	} else {
		*out = is_target_out_of_line(prev);
		*in = is_target_out_of_line(next);
	}
}

/*
 * Targeted and whole-system switches are separate programs (proc_image
 * attaches the activation's): each holds only its own path, short and
 * together.
 */
static __always_inline void on_switch(void *ctx, bool preempt, struct task_struct *prev,
				      struct task_struct *next, __u32 prev_state)
{
	bool out, in;
	__u64 now;

	may_be_target(&cfg.target, prev, next, &out, &in);
	/* a switch between other tasks: not even a timestamp */
	if (!out && !in)
		return;
	now = switch_time(prev);
	if (out)
		switch_out(ctx, prev, preempt, prev_state, now);
	if (in)
		switch_in(next, now);
}

static __always_inline void on_switch_system(bool preempt, struct task_struct *prev,
					     struct task_struct *next, __u32 prev_state)
{
	__u64 now = switch_time(prev);

	summarize_out(prev, preempt, prev_state, now);
	summarize_in(next, now);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	on_switch(ctx, preempt, prev, next, prev_state);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch_system, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	on_switch_system(preempt, prev, next, prev_state);
	return 0;
}

/*
 * Before 5.18 (or forced): sched_switch has no prev_state, so it is read
 * from the task (racy, see compat.bpf.h).
 */
SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch_compat, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	on_switch(ctx, preempt, prev, next, task_state_now(prev));
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch_system_compat, bool preempt, struct task_struct *prev,
	     struct task_struct *next)
{
	on_switch_system(preempt, prev, next, task_state_now(prev));
	return 0;
}

/* ---------------------------------------------------------------- */
/*
 * On-CPU / off-CPU, targeted: the close pass, and a thread's last switch,
 * report what the task's totals grew by since they were last reported,
 * into the interval's summary map: the same cpu_summary records as the
 * whole system's, for the target's threads only.
 */

struct task_report {
	__u64 on;
	__u64 off[OFFCPU_REASON_COUNT];
	__u64 switches;
	__u64 preemptions;
};

/* What `total` has grown by since *reported, now reported. */
static __always_inline __u64 grown(__u64 *reported, __u64 total)
{
	__u64 was = *reported;

	if (total <= was)
		return 0;
	*reported = total;
	return total - was;
}

/*
 * The task's totals up to `close`, as the close pass finds them: cut by
 * the task itself if it has switched since (cut_at_close), else its running
 * totals with the open stretch cut at the close. `runtime`: its on-CPU
 * account up to the close (an idle task's, task NULL, is timed here). The
 * totals are read before the stamps, which its switches write the other way
 * round: a stretch that ends meanwhile is either cut here at the close from
 * its stamp or counted whole in the next interval, never both.
 */
static __always_inline void snapshot_totals(struct cpu_state *st, struct task_report *r)
{
	int i;

	barrier();
	for (i = 0; i < OFFCPU_REASON_COUNT; i++)
		r->off[i] = st->snap_off_ns[i];
	r->on = st->snap_runtime;
	r->switches = st->snap_switches;
	r->preemptions = st->snap_preemptions;
}

static __always_inline void totals_at(struct task_struct *task, struct cpu_state *st,
				      __u64 close, __u64 runtime, struct task_report *r)
{
	__u64 since;
	__u32 reason;
	int i;

	if (st->snap_close == close) {
		snapshot_totals(st, r);
		return;
	}
	for (i = 0; i < OFFCPU_REASON_COUNT; i++)
		r->off[i] = st->off_ns[i];
	r->on = runtime;
	if (!task)
		r->on = st->on_ns;
	r->switches = st->switches;
	r->preemptions = st->preemptions;
	barrier();
	since = st->off_since;
	reason = st->reason;
	if (since && since < close && reason < OFFCPU_REASON_COUNT)
		r->off[reason] += close - since;
	if (!task) {
		since = st->on_since;
		if (since && since < close)
			r->on += close - since;
	}
	/*
	 * A switch on another CPU may have cut the task at the close while
	 * these were read: it snapshots (and sets snap_close) before it moves
	 * a stamp or adds to a total, so what was read here may hold part of
	 * a stretch after the close, or miss one before it. Its snapshot is
	 * the consistent account.
	 */
	barrier();
	if (st->snap_close == close)
		snapshot_totals(st, r);
}

/* Report what the totals `r` add to what was reported, into `slot`'s summary. */
static __always_inline void report_totals(struct task_struct *task, __u32 cpu,
					  struct cpu_state *st, __u32 slot,
					  struct task_report *r, bool last)
{
	struct keytime_summary *s;
	int i;

	/* the pass and a last switch may meet: each part is reported once */
	bpf_spin_lock(&st->lock);
	if (st->flushed) {
		bpf_spin_unlock(&st->lock);
		return;
	}
	st->flushed = last;
	r->on = grown(&st->rep_runtime, r->on);
	for (i = 0; i < OFFCPU_REASON_COUNT; i++)
		r->off[i] = grown(&st->rep_off_ns[i], r->off[i]);
	r->switches = grown(&st->rep_switches, r->switches);
	r->preemptions = grown(&st->rep_preemptions, r->preemptions);
	bpf_spin_unlock(&st->lock);

	s = summary_entry(slot, task, cpu);
	if (!s)
		return;
	if (r->on)
		__sync_fetch_and_add(&s->on_cpu_ns, r->on);
	for (i = 0; i < OFFCPU_REASON_COUNT; i++)
		if (r->off[i])
			__sync_fetch_and_add(&s->off_cpu_ns[i], r->off[i]);
	if (r->switches)
		__sync_fetch_and_add(&s->switches_out, r->switches);
	if (r->preemptions)
		__sync_fetch_and_add(&s->preemptions, r->preemptions);
}

/*
 * A target thread's last switch: its last partial interval, exact (the
 * scheduler has just accounted it). The part up to a close whose pass has
 * not reached it yet (it exited in between) goes to that closing interval.
 */
static __noinline void flush_task(struct task_struct *task, struct cpu_state *st, __u64 now)
{
	__u32 slot = current_slot();
	struct task_report r;
	int i;

	if (st->snap_close == cfg.slot_start_ns[slot] && cfg.closing_open) {
		totals_at(task, st, st->snap_close, 0, &r);
		report_totals(task, 0, st, slot ^ 1, &r, false);
	}
	for (i = 0; i < OFFCPU_REASON_COUNT; i++)
		r.off[i] = st->off_ns[i];
	r.on = task->se.sum_exec_runtime;
	r.switches = st->switches;
	r.preemptions = st->preemptions;
	report_totals(task, 0, st, slot, &r, true);
}

/* At a close (targeted): a live target task's part of the closing interval. */
static __always_inline void report_at_close(struct task_struct *task, struct cpu_state *st)
{
	__u32 slot = current_slot();
	__u64 close = cfg.slot_start_ns[slot], now = bpf_ktime_get_ns();
	__u64 runtime = task->se.sum_exec_runtime, on = st->on_since, after;
	struct task_report r;

	/* running since before the close (else it would have cut): the time since is the next's */
	if (on) {
		after = now > close ? now - close : 0;
		runtime = runtime > after ? runtime - after : 0;
	}
	totals_at(task, st, close, runtime, &r);
	report_totals(task, 0, st, slot ^ 1, &r, false);
}

/* At a close, -p 0 -c N: the idle task of that CPU. */
static __always_inline void report_idle_at_close(struct cpu_state *st, __u32 cpu, __u32 slot)
{
	struct task_report r;

	totals_at(NULL, st, cfg.slot_start_ns[slot ^ 1], 0, &r);
	report_totals(NULL, cpu, st, slot, &r, false);
}

/* ---------------------------------------------------------------- */
/* The pass proc_image runs at the activation and at every interval's close */

/* Cut a stamp at `close`; true (and *since set) if this caller moved it. */
static __always_inline bool cut_stamp(__u64 *stamp, __u64 close, __u64 *since)
{
	__u64 s = *stamp;

	*since = s;
	return s && s < close && __sync_val_compare_and_swap(stamp, s, close) == s;
}

/* The idle task of `cpu` as the pass finds it (to be called at the pass's end). */
static __always_inline struct cpu_state *idle_state(__u32 cpu)
{
	struct cpu_state *st;
	bool running;

	st = bpf_map_lookup_elem(&idle_states, &cpu);
	if (!st)
		return NULL;
	if (st->generation != cfg.target.generation) {
		/* not switched since the activation: running if the pass saw no task on its CPU */
		running = busy_pass[cpu & (MAX_CPUS - 1)] != pass_seq;
		st->generation = cfg.target.generation;
		st->reason = OFFCPU_PREEMPTED;
		st->prev_state = 0;
		st->runtime_base = 0;
		st->on_since = running ? cfg.activated_ns : 0;
		st->off_since = running ? 0 : cfg.activated_ns;
		reset_totals(st, 0);
	}
	return st;
}

/* The idle task of one CPU (bpf_loop callback; `activation` as in handle__iter_task). */
static long close_idle(__u64 cpu, bool *activation)
{
	__u32 key = cpu, slot = current_slot(), closing = slot ^ 1;
	__u64 close = cfg.slot_start_ns[slot], since;
	struct cpu_state *st;

	if (key >= cfg.nr_cpus || key >= MAX_CPUS)
		return 1;
	st = idle_state(key);
	if (!st)
		return 1;
	if (*activation)
		return 0;
	if (cut_stamp(&st->on_since, close, &since))
		sum_add(closing, NULL, key, true, 0, close - since);
	if (cut_stamp(&st->off_since, close, &since))
		sum_add(closing, NULL, key, false, st->reason, close - since);
	return 0;
}

static __always_inline void close_task(struct task_struct *task, struct cpu_state *st)
{
	__u32 slot = current_slot(), closing = slot ^ 1;
	__u64 close = cfg.slot_start_ns[slot], since, now = bpf_ktime_get_ns();
	__u64 runtime = task->se.sum_exec_runtime;

	/*
	 * Running: its account up to the close (what it ran since the close,
	 * while this pass got to it, is left to the next interval); its stretch
	 * now counts from the close.
	 */
	if (st->on_since && now > close)
		runtime = runtime > now - close ? runtime - (now - close) : 0;
	cut_stamp(&st->on_since, close, &since);
	sum_add(closing, task, 0, true, 0, claim_runtime(st, runtime));
	/* off-CPU: the part of its stretch up to the close */
	if (cut_stamp(&st->off_since, close, &since))
		sum_add(closing, task, 0, false, st->reason, close - since);
}

/*
 * At the activation: every target task's stretch in progress starts now.
 * At an interval's close (TARGET_SYSTEM; proc_image has just pointed
 * summary_slot at the next interval): the closing interval gets every
 * task's part up to the close. The last call, with no task, does the idle
 * tasks.
 */
static __always_inline int iter_task(struct bpf_iter__task *ctx, bool has_loop)
{
	struct task_struct *task = ctx->task;
	__u32 closing = current_slot() ^ 1;
	struct cpu_state *st;
	bool running;
	__u32 state, cpu;
	/* no earlier interval: this is the activation's pass */
	bool activation = !cfg.slot_start_ns[closing];

	if (!task) {
		/* -p 0 -c N: the idle task, as the live tasks below */
		if (cfg.target.mode == TARGET_IDLE && !activation) {
			st = idle_state(cfg.target.cpu);
			if (st)
				report_idle_at_close(st, cfg.target.cpu, closing);
		}
		if (cfg.target.mode == TARGET_SYSTEM) {
			if (has_loop) {
				bpf_loop(MAX_CPUS, close_idle, &activation, 0);
			} else {
				/* before bpf_loop (5.17): the first CPUs in a bounded loop */
				for (__u32 c = 0; c < COMPAT_IDLE_CPUS; c++)
					if (close_idle(c, &activation))
						break;
			}
		}
		pass_seq++;
		return 0;
	}
	cpu = BPF_CORE_READ(task, thread_info.cpu);
	if (task->pid && BPF_CORE_READ(task, on_cpu) && cpu < MAX_CPUS)
		busy_pass[cpu & (MAX_CPUS - 1)] = pass_seq;
	if (task->exit_state || !task->pid || !is_target(&cfg.target, task))
		return 0;
	st = bpf_task_storage_get(&cpu_states, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st) {
		STAT_INC(no_task_state);
		return 0;
	}
	if (st->generation != cfg.target.generation) {
		running = BPF_CORE_READ(task, on_cpu);
		state = task_state_now(task);
		start_from_activation(task, st, running, offcpu_reason(false, state), state,
				      bpf_ktime_get_ns());
		if (activation)
			return 0;
	}
	if (activation)
		return 0;
	if (cfg.target.mode == TARGET_SYSTEM)
		close_task(task, st);
	else
		report_at_close(task, st);
	return 0;
}

SEC("iter/task")
int handle__iter_task(struct bpf_iter__task *ctx)
{
	return iter_task(ctx, true);
}

/*
 * The same pass for kernels without bpf_loop (before 5.17): idle tasks of
 * CPUs past COMPAT_IDLE_CPUS are not cut at a close (their time lands in
 * the interval their stretch ends in, counted as carried_ns).
 */
SEC("iter/task")
int handle__iter_task_compat(struct bpf_iter__task *ctx)
{
	return iter_task(ctx, false);
}
