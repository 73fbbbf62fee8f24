/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The ABI between proc_image's BPF programs, proc_image and controller.
 *
 * Included by every bpf/<collector>.bpf.c and turned into Rust by bindgen
 * (build.rs -> src/bpf_intf.rs), so each struct is defined exactly once.
 * Only fixed-width types: the layout must be the same for the BPF target and
 * the host. The _Static_asserts are checked by both compilations.
 */
#ifndef PROC_IMAGE_H
#define PROC_IMAGE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define PI_COMM_LEN 16

/* Collectors, in the order of their bit in the masks of the control map. */
enum pi_collector {
	PI_KEYTIME = 0,
	PI_LOCK = 1,
	PI_RESOURCE = 2,
	PI_SYSCALL = 3,
	PI_SCHEDULE = 4,
	PI_FUTEX = 5,
	PI_COLLECTOR_COUNT,
};

/* ------------------------------------------------------------------ */
/* Target selection, written by proc_image into every active collector. */

enum pi_target_mode {
	TARGET_SYSTEM = 0, /* every task */
	TARGET_THREAD = 1, /* one thread: pid */
	TARGET_TGID = 2,   /* every thread of a thread group: tgid */
	TARGET_IDLE = 3,   /* the idle task (pid 0) of one CPU: cpu */
	TARGET_CGROUP = 4, /* every task in a cgroup v2 or below it: cgroup_id at cgroup_level */
};

struct target_filter {
	__u32 mode;       /* enum pi_target_mode */
	__u32 pid;        /* TARGET_THREAD */
	__u32 tgid;       /* TARGET_TGID */
	__u32 cpu;        /* TARGET_IDLE */
	/*
	 * Start time of the thread (TARGET_THREAD) or of the group leader
	 * (TARGET_TGID) in clock ticks since boot, as /proc/PID/stat field 22
	 * shows it; 0 = not checked. Guards against a recycled pid.
	 */
	__u64 start_ticks;
	__u64 ns_per_tick; /* 1e9 / sysconf(_SC_CLK_TCK) */
	/* Bumped at every activation: per-task state of an older one is ignored. */
	__u32 generation;
	/* Never a target: proc_image's own thread group (0 with controller -m). */
	__u32 exclude_tgid;
	/* TARGET_CGROUP: the cgroup's id (its inode on cgroup2) and depth below the root */
	__u64 cgroup_id;
	__u32 cgroup_level;
	__u32 _pad;
};
_Static_assert(sizeof(struct target_filter) == 56, "target_filter layout");

/* ------------------------------------------------------------------ */
/* Every ring-buffer record starts with this header. */

struct event_hdr {
	__u64 ts_ns;     /* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u32 pid;       /* thread id */
	__u32 tgid;      /* thread-group id */
	__u8 comm[PI_COMM_LEN];
	__u8 collector;  /* enum pi_collector */
	__u8 kind;       /* collector-specific record kind */
	__u16 cpu;       /* CPU the record was taken on */
	__u32 _pad;
	__u64 cgroup_id; /* the task's cgroup v2 (its kernfs id); 0 without one */
};
_Static_assert(sizeof(struct event_hdr) == 48, "event_hdr layout");

/*
 * Health counters of one collector, one slot per CPU (summed by proc_image).
 * Nothing is dropped without being counted here.
 */
struct collector_stats {
	__u64 events;         /* records submitted to the ring buffer */
	__u64 ringbuf_drops;  /* records lost: ring buffer full */
	__u64 map_full;       /* aggregation entries lost: map full */
	__u64 no_task_state;  /* task storage could not be had */
};

/* ------------------------------------------------------------------ */
/* keytime */

enum keytime_kind {
	KEYTIME_FORK = 1,
	KEYTIME_VFORK = 2,
	KEYTIME_PTHREAD_CREATE = 3,
	KEYTIME_EXECVE = 4,
	KEYTIME_EXIT = 5,
	KEYTIME_ON_CPU = 6,
	KEYTIME_OFF_CPU = 7,
	/* a thread the kernel made for the process (io_uring worker, vhost): hdr is the parent */
	KEYTIME_KERNEL_WORKER = 8,
	/* a child a target created has ended: hdr is the parent as it was at the creation */
	KEYTIME_CHILD_EXIT = 9,
	/* an execve / execveat of a target that returned an error */
	KEYTIME_EXEC_FAILED = 10,
	/* off_cpu at level 2 of a stretch >= stack_min_us: with its kernel and user stacks */
	KEYTIME_OFF_CPU_STACK = 11,
	/*
	 * level 2: who woke the thread (struct keytime_waker_event), sent just
	 * before the KEYTIME_OFF_CPU_STACK record of the stretch it ended
	 */
	KEYTIME_WAKER = 12,
};

/* keytime levels (controller -k LEVEL) */
enum keytime_level {
	KEYTIME_LEVEL_LIFECYCLE = 0, /* fork/vfork/pthread_create/execve/exit */
	KEYTIME_LEVEL_ALL = 1,       /* ... and every on-CPU / off-CPU interval */
	KEYTIME_LEVEL_STACKS = 2,    /* ... and long off-CPU stretches' kernel and user stacks */
};

/*
 * Why a task left the CPU, from sched_switch's preempt flag and prev_state.
 * proc_image refines SLEEP/UNINTERRUPTIBLE into LOCK or DISK from the
 * kernel stack it blocked in.
 */
enum offcpu_reason {
	OFFCPU_PREEMPTED = 0,       /* still runnable: preempted, or switched out at return to user */
	OFFCPU_SLEEP = 1,           /* TASK_INTERRUPTIBLE */
	OFFCPU_UNINTERRUPTIBLE = 2, /* TASK_UNINTERRUPTIBLE (D) */
	OFFCPU_IDLE = 3,            /* TASK_IDLE: a kernel thread with nothing to do */
	OFFCPU_STOPPED = 4,         /* SIGSTOP */
	OFFCPU_TRACED = 5,          /* ptrace stop */
	OFFCPU_PARKED = 6,          /* parked kthread */
	OFFCPU_DEAD = 7,            /* exited */
	OFFCPU_LOCK = 8,            /* a lock: rtlock wait, or a futex/mutex/rwsem in the stack */
	OFFCPU_DISK = 9,            /* block I/O in the stack */
	OFFCPU_OTHER = 10,
	OFFCPU_REASON_COUNT = 11,
};

#define KEYTIME_STACK_DEPTH 16
/* level 2 stacks: frames kept of each, innermost first */
#define KEYTIME_KSTACK_DEPTH 32
#define KEYTIME_FILENAME_LEN 256
#define KEYTIME_ARGS_LEN 1024

struct keytime_config {
	struct target_filter target;
	__u32 level;  /* enum keytime_level */
	/* TARGET_SYSTEM: on/off-CPU sums go into summary_a (0) or summary_b (1) */
	__u32 summary_slot;
	/*
	 * Off-CPU intervals at least this long carry the kernel stack they
	 * blocked in. Unwinding costs microseconds: shorter waits (a pipe
	 * ping-pong) would pay more for the stack than they last.
	 */
	__u64 stack_min_ns;
	/*
	 * When the activation began: a stretch in progress then is reported
	 * from this time (CLOCK_MONOTONIC ns).
	 */
	__u64 activated_ns;
	/*
	 * TARGET_SYSTEM: when the interval each summary slot holds began. A
	 * stretch that crosses the start of the current slot's interval is
	 * split there; proc_image writes the new slot's start before it flips
	 * summary_slot to it.
	 */
	__u64 slot_start_ns[2];
	__u32 nr_cpus; /* possible CPUs: the close pass walks their idle tasks */
	/*
	 * 1 from a close until the closed interval's map is drained: until
	 * then a part of a stretch before the close can still go into it.
	 */
	__u32 closing_open;
	/*
	 * oom:mark_victim passes only a pid (older kernels): an exit reads
	 * signal->oom_mm, which mark_oom_victim() sets just before it, instead.
	 */
	__u32 oom_from_mm;
	__u32 _pad;
	/* level 2: off-CPU stretches at least this long carry both stacks */
	__u64 offcpu_stack_min_ns;
	/*
	 * Targeted modes: a stretch at least this long is streamed as its own
	 * on_cpu / off_cpu record (0: every one); every stretch is summed.
	 */
	__u64 stretch_min_ns;
};

/* fork, vfork, pthread_create, kernel_worker: hdr is the parent */
struct keytime_clone_event {
	struct event_hdr hdr;
	__u64 clone_flags;
	__u32 child_pid;
	__u32 child_tgid;
};

struct keytime_exec_event {
	struct event_hdr hdr;
	__u32 old_pid;   /* differs from hdr.pid when a non-leader thread exec'd */
	__u32 args_len;  /* bytes used in args: NUL-separated argv */
	__u8 args_truncated;
	__u8 _pad[7];
	__u8 filename[KEYTIME_FILENAME_LEN];
	__u8 args[KEYTIME_ARGS_LEN];
};

struct keytime_exit_event {
	struct event_hdr hdr;
	__u32 exit_code;  /* task->exit_code: wait(2) status */
	__u8 group_dead;  /* the last thread of the group */
	__u8 oom_kill;    /* the OOM killer chose the process (oom:mark_victim) */
	/* killed by a signal whose sending was seen (signal:signal_generate): killer_* are set */
	__u8 killed;
	__u8 killer_kernel; /* the kernel raised it (a fault, the OOM killer), not kill(2) / tgkill(2) */
	__u32 killer_pid;   /* the task the signal was generated in */
	__u32 killer_tgid;
	__u8 killer_comm[PI_COMM_LEN];
};

/* child_exit: a task a target created (hdr: its creator), ended */
struct keytime_child_exit_event {
	struct event_hdr hdr;
	__u64 lifetime_ns; /* from its creation (task->start_time) to its exit */
	__u32 child_pid;
	__u32 child_tgid;
	__u8 child_comm[PI_COMM_LEN]; /* at its exit (after any exec) */
	__u32 exit_code;  /* wait(2) status */
	__u8 kind;        /* KEYTIME_FORK, _VFORK, _PTHREAD_CREATE, _KERNEL_WORKER */
	__u8 _pad[3];
};

/* argv pieces of a failed exec: each read whole up to this, the last cut */
#define KEYTIME_ARG_PIECE 256
#define KEYTIME_MAX_ARGS 32

/* execve_failed */
struct keytime_exec_failed_event {
	struct event_hdr hdr;
	__s32 ret;       /* -errno */
	__u32 args_len;  /* bytes used in args (at most KEYTIME_ARGS_LEN): NUL-separated argv */
	__u8 args_truncated;
	__u8 execveat;   /* 1: execveat(2), 0: execve(2) */
	__u8 _pad[6];
	__u8 filename[KEYTIME_FILENAME_LEN];
	/* a piece's worth of slack: every read is in bounds for the verifier */
	__u8 args[KEYTIME_ARGS_LEN + KEYTIME_ARG_PIECE];
};

/* on_cpu, off_cpu: one interval that has just ended */
struct keytime_cpu_event {
	struct event_hdr hdr;
	__u64 duration_ns;
	__u32 reason;      /* off_cpu: enum offcpu_reason */
	__u32 prev_state;  /* off_cpu: raw task state when it left */
	__u32 stack_len;   /* off_cpu: bytes used in kstack */
	__u32 flags;       /* KEYTIME_CPU_F_* */
	__u64 kstack[KEYTIME_STACK_DEPTH];
};

/* keytime_cpu_event.flags: the switch-in this stretch ends at (off_cpu) or
 * starts at (on_cpu) was not traced; its time is the scheduler's stamp of
 * the arrival (see unseen_switch_in in keytime.bpf.c) */
#define KEYTIME_CPU_F_UNSEEN_SWITCH_IN 1

/*
 * off_cpu with stacks (level 2). The kernel stack is the one the task is
 * switching back in from. Only the task itself can read its user stack, so
 * at every switch-out its user registers and the top of its user stack
 * (from sp up, KEYTIME_USTACK_BYTES at most) are copied; proc_image unwinds
 * them with the binaries' .eh_frame (a C library without frame pointers
 * included), as perf --call-graph dwarf does. The record is followed by
 * ustack_bytes bytes of that copy: whole pages, from the one sp is in, so
 * the stack proper starts ustack_start bytes in.
 */
#define KEYTIME_USTACK_BYTES 8192 /* at least this much past sp, where mapped */
#define KEYTIME_USTACK_PAGES 3    /* (sp's offset in its page + 8192) / 4096, rounded up */

struct user_regs_sample {
	__u64 ip;
	__u64 sp;
	__u64 fp; /* rbp; x29 on arm64 */
	__u64 lr; /* arm64: x30; 0 on x86_64 */
};

struct keytime_offcpu_stack_event {
	struct event_hdr hdr;
	__u64 duration_ns;
	__u32 reason;       /* enum offcpu_reason */
	__u32 prev_state;
	__u32 kstack_len;   /* bytes used in kstack */
	__u32 ustack_bytes; /* bytes of user stack pages that follow the record */
	__u32 ustack_start; /* where sp is in them */
	__u32 flags;        /* KEYTIME_STACK_F_* */
	__u64 kstack[KEYTIME_KSTACK_DEPTH];
	struct user_regs_sample regs; /* all 0: no user context (a kernel thread) */
};

/* keytime_offcpu_stack_event.flags: a thread woke it, but the record that
 * said which was dropped (ring buffer full) */
#define KEYTIME_STACK_F_WAKER_LOST 1

/* level 2: frames kept of a waker's kernel stack, innermost first */
#define KEYTIME_WAKER_KSTACK_DEPTH 32

/*
 * Who woke a target thread from task context (bpf/waker.bpf.h): hdr is the
 * woken thread, at the end of its stretch (the same ts_ns as the
 * KEYTIME_OFF_CPU_STACK record that follows it); the stacks are the
 * waker's at the wakeup, its user stack copied as at a switch-out (regs,
 * then ustack_bytes bytes of stack pages following the record, sp at
 * ustack_start in them).
 */
struct keytime_waker_event {
	struct event_hdr hdr;
	__u64 wake_ns;     /* when it was woken (CLOCK_MONOTONIC ns) */
	__u32 waker_pid;
	__u32 waker_tgid;
	__u8 waker_comm[PI_COMM_LEN];
	__u32 kstack_len;   /* bytes used in kstack */
	__u32 ustack_bytes; /* bytes of user stack pages that follow the record */
	__u32 ustack_start; /* where sp is in them */
	__u32 _pad;
	__u64 kstack[KEYTIME_WAKER_KSTACK_DEPTH];
	struct user_regs_sample regs; /* all 0: a kernel thread */
};

/*
 * TARGET_SYSTEM: per-thread sums of one reporting interval. on_cpu_ns is the
 * scheduler's own account (se.sum_exec_runtime, as /proc/PID/schedstat);
 * the idle tasks, which the scheduler does not account, are timed.
 */
struct keytime_summary_key {
	__u32 pid;
	__u32 cpu; /* the CPU of an idle task (pid 0); 0 for every other task */
};

struct keytime_summary {
	__u32 tgid;
	__u32 _pad;
	__u8 comm[PI_COMM_LEN];
	__u64 on_cpu_ns;
	__u64 switches_out;
	__u64 preemptions;
	__u64 off_cpu_ns[OFFCPU_REASON_COUNT];
	/*
	 * Of the on/off-CPU time here, what belongs to an earlier interval
	 * already reported (a stretch the close pass did not reach in time).
	 */
	__u64 carried_ns;
	__u64 cgroup_id; /* the thread's cgroup v2 when its entry was made */
};

/* ------------------------------------------------------------------ */
/*
 * Latency figures of one reporting interval, kept per CPU by syscall and
 * schedule for the target and for the whole system side by side. A per-CPU
 * array holds LAT_SLOTS of them: index (interval & 1) * 2 + enum lat_scope.
 * proc_image moves BPF on to the other pair, waits until no program can
 * still be adding to last interval's pair (an RCU grace period), then reads
 * and clears it: nothing is cleared that was not read.
 */
#define LAT_HIST_BUCKETS 32 /* bucket i counts [2^i, 2^(i+1)) ns; the last is open */
#define LAT_SLOTS 4

enum lat_scope {
	LAT_SYSTEM = 0,
	LAT_TARGET = 1,
};

struct latency_stats {
	__u64 count;
	__u64 sum_ns;
	__u64 min_ns;
	__u64 max_ns;
	__u64 hist[LAT_HIST_BUCKETS];
};

/* ------------------------------------------------------------------ */
/* syscall */

#define SYSCALL_SEQ_MAX 50  /* longest sequence controller -s may ask for */
#define SYSCALL_SEQ_DEFAULT 10 /* controller -s without N */
#define SYSCALL_SEQ_RING 64 /* a power of two >= SYSCALL_SEQ_MAX: the index is a mask */
/*
 * Set in a syscall id for an ia32 (compat) syscall on x86_64: the rest is its
 * number in the ia32 table, not the x86_64 one.
 */
#define SYSCALL_ID_IA32 0x8000
/*
 * A thread's counts by syscall live in its own entry for the first ids that
 * find a free place among SYSCALL_COUNT_PROBES from the id's home slot (a
 * Fibonacci hash: low syscall numbers are dense, and a plain id % slots put
 * a program's start-up syscalls on the home of its busiest one), the rest in
 * the `counts` map, a second lookup per syscall. 64 slots keep the entry in
 * the same 4 KiB allocation and hold a typical thread's 20-40 syscalls.
 */
#define SYSCALL_COUNT_SLOTS_LOG2 6
#define SYSCALL_COUNT_SLOTS (1 << SYSCALL_COUNT_SLOTS_LOG2)
#define SYSCALL_COUNT_PROBES 8

struct syscall_config {
	struct target_filter target;
	__u32 interval; /* bumped by proc_image at every report */
	__u32 _pad;
};

/*
 * A thread's figures of one interval. BPF writes the slot of its interval's
 * parity (starting it afresh when it still holds an older interval);
 * proc_image reads last interval's once no program can still be writing it.
 */
struct syscall_slot {
	__u32 interval; /* the interval count..max_ns belong to */
	__u32 _pad;
	__u64 count;
	__u64 sum_ns;
	__u64 min_ns;
	__u64 max_ns;
};

/*
 * A thread is its pid and when it began (boot-time ns; when a non-leader
 * thread execs and takes the leader's pid, the time of that exec): a
 * reused pid is a new key, never an old thread's figures.
 */
struct syscall_thread_key {
	__u32 pid;
	__u32 _pad;
	__u64 start_ns;
};

/*
 * Counts of one syscall by one thread, by interval & 1 like syscall_slot.
 * In a thread's entry the id is beside its counts: one 32-byte place to
 * read and write per syscall, not an id array and a count array.
 */
struct syscall_count {
	__u32 id_plus_one; /* in a thread's entry: the syscall's id + 1 (0: free); in `counts` 0 */
	__u32 interval[2];
	__u32 _pad;
	__u64 count[2];
};

/* One target thread: its figures per interval and its last syscalls. */
struct syscall_thread {
	__u32 tgid;
	__u32 exited;        /* it exited (or exec'd into another pid) ... */
	__u32 exit_interval; /* ... during this interval: its last figures */
	__u32 _pad;
	__u64 task_start_ns; /* task->start_boottime, to tell from /proc whether it lives */
	__u64 cgroup_id;     /* its cgroup v2, refreshed once per interval */
	__u8 comm[PI_COMM_LEN];
	struct syscall_slot slot[2]; /* by interval & 1 */
	__u64 seq_total; /* syscalls put in seq since tracing began; seq is a ring */
	__u16 seq[SYSCALL_SEQ_RING];
	/*
	 * beside seq: when each was entered, and how long it took (0: not
	 * returned). A syscall goes in when it returns, or before: when the
	 * thread is switched out in it, or exits in it (exit, exit_group).
	 */
	__u64 seq_enter_ns[SYSCALL_SEQ_RING];
	__u64 seq_dur_ns[SYSCALL_SEQ_RING];
	/* counts by syscall, open addressing from the id's home (syscall.bpf.c) */
	struct syscall_count counts[SYSCALL_COUNT_SLOTS];
};

/*
 * A live target thread's figures, in its task storage: the key its entry
 * takes in `threads` when it exits, the activation they belong to, the
 * figures. The task iterator writes it out as is once per interval.
 */
struct syscall_live {
	struct syscall_thread_key key;
	__u32 generation;
	__u32 exited; /* its figures are in `threads` (t.exited is set before the copy) */
	struct syscall_thread t;
};

struct syscall_count_key {
	__u32 pid;
	__u32 id; /* | SYSCALL_ID_IA32 */
	__u64 start_ns; /* as in syscall_thread_key */
};

/* ------------------------------------------------------------------ */
/* schedule */

struct schedule_config {
	struct target_filter target;
	__u32 interval; /* bumped by proc_image at every report */
	__u32 _pad;
};

/*
 * One thread's run-queue waits in one interval. BPF writes the slot of its
 * interval's parity (starting it afresh when it holds an older interval);
 * proc_image reads last interval's once no program can still write it.
 */
struct schedule_slot {
	__u32 interval; /* the interval count..max_ns belong to */
	__u32 _pad;
	__u64 count;
	__u64 sum_ns;
	__u64 min_ns;
	__u64 max_ns;
};

enum schedule_kind {
	SCHEDULE_LIVE = 1, /* from the task iterator: a live thread */
	SCHEDULE_EXIT = 2, /* from `exits`: taken at the thread's last switch-out */
};

/*
 * A target thread's waits of the last two intervals and its scheduling
 * class as of its last switch-in (or the iterator's visit, without one).
 * The task iterator writes one per live target thread when proc_image
 * closes an interval; a thread's last switch-out (it is dead) leaves one in
 * the `exits` map, under a schedule_thread_key.
 */
struct schedule_thread {
	struct event_hdr hdr;
	__u64 task_start_ns; /* task->start_boottime: with hdr.pid, which thread */
	__s32 prio;          /* task->prio: 0..99 real-time, 100..139 nice -20..19, -1 deadline */
	__s32 nice;          /* static_prio - 120 */
	__u32 policy;        /* SCHED_NORMAL (0), FIFO, RR, BATCH, (4 unused), IDLE, DEADLINE, EXT */
	__u32 exit_interval; /* SCHEDULE_EXIT: the interval of its last switch-out */
	struct schedule_slot slot[2]; /* by interval & 1 */
};

struct schedule_thread_key {
	__u32 pid;
	__u32 _pad;
	__u64 start_ns; /* task->start_boottime */
};

/* ------------------------------------------------------------------ */
/* resource */

struct resource_config {
	struct target_filter target;
};

/*
 * One thread's cumulative figures at hdr.ts_ns. Written by the task
 * iterator for every live target thread when proc_image closes an interval,
 * and into the `exits` map when a target thread exits (hdr.kind says which).
 * For the idle task of a CPU (TARGET_IDLE) proc_image makes one itself, with
 * that CPU's idle time as on_cpu_ns.
 */
enum resource_kind {
	RESOURCE_LIVE = 1,
	RESOURCE_EXIT = 2,
};

struct resource_sample {
	struct event_hdr hdr;
	__u64 on_cpu_ns; /* task->se.sum_exec_runtime: on-CPU time since the thread began */
	__u64 rss_pages; /* MM_FILEPAGES + MM_ANONPAGES + MM_SHMEMPAGES of its mm; 0 without one */
	__u64 rchar;     /* task->ioac: bytes moved by read/write syscalls since the thread began */
	__u64 wchar;
	__u32 last_cpu;  /* the CPU it runs on, or last ran on */
	__u32 _pad;
};

/* ------------------------------------------------------------------ */
/*
 * lock: pthread mutex / rwlock / spinlock intervals, from uprobes on the C
 * library the target maps (attached to the target's process only).
 */

enum lock_type {
	LOCK_MUTEX = 0,
	LOCK_RWLOCK_READ = 1,
	LOCK_RWLOCK_WRITE = 2,
	LOCK_SPINLOCK = 3,
	LOCK_RWLOCK = 4, /* pthread_rwlock_unlock: read or write side */
};

/* How a lock was asked for. */
enum lock_op {
	LOCK_OP_LOCK = 0,  /* blocks until acquired */
	LOCK_OP_TRY = 1,   /* trylock: fails with EBUSY at once */
	LOCK_OP_TIMED = 2, /* timedlock / clocklock: may fail with ETIMEDOUT */
};

/*
 * The attach cookie of a uprobe: type | op << 8 | probe << 16 | seq << 32.
 * probe numbers the probe (function, entry or return) within one set; seq
 * numbers the sets proc_image attached, in order (see "anchors" in
 * lock.bpf.c): the kernel runs the newest set first.
 */
#define LOCK_COOKIE(type, op) ((type) | ((op) << 8))
#define LOCK_COOKIE_PROBE_SHIFT 16
#define LOCK_COOKIE_SEQ_SHIFT 32

enum lock_kind {
	LOCK_RELEASED = 1,  /* one acquisition, from request to release */
	LOCK_FAILED = 2,    /* a try/timed lock that returned an error */
	LOCK_UNMATCHED = 3, /* an unlock of a lock this thread has no recorded hold on */
	LOCK_EXEC = 4,      /* the target exec'd: its probes must follow the new image */
	LOCK_ANCHOR_EXIT = 5, /* a thread the probes are attached to exited (aux: its tid) */
	LOCK_NEW_THREAD = 6,  /* the target started a thread (aux: its tid) while anchors are wanted */
};

/* lock_event.flags */
#define LOCK_F_CONTENDED 1 /* the lock was held by another acquisition when asked for */
/* LOCK_ANCHOR_EXIT: the thread ended alone (no exit_group, no fatal signal)
 * and others of its process live on, still calling the probed functions */
#define LOCK_F_OTHERS_LIVE 2

/* Recursive holds of one lock by one thread kept with their times. */
#define LOCK_HOLD_DEPTH 4

/* Threads of the target the probe sets are attached to (perf event pids). */
#define LOCK_ANCHORS 4

struct lock_config {
	struct target_filter target; /* tgid is set for TARGET_THREAD too */
	__u32 anchors[LOCK_ANCHORS]; /* tids; 0 = free slot */
	__u32 want_threads;          /* 1: report the target's new threads */
	__u32 _pad;
};

struct lock_event {
	struct event_hdr hdr;  /* the releasing (or failing) thread */
	__u64 lock_addr;
	__u64 request_ns;      /* entry of the lock call */
	__u64 acquire_ns;      /* its return (acquired, or failed) */
	__u64 release_ns;      /* entry of the unlock call; 0 if failed */
	__s32 ret;             /* the lock call's return: 0 or an errno */
	__u32 aux;             /* LOCK_EXEC: old pid; LOCK_UNMATCHED: readers left;
				  LOCK_ANCHOR_EXIT, LOCK_NEW_THREAD: the tid */
	__u8 lock_type;        /* enum lock_type */
	__u8 op;               /* enum lock_op */
	__u8 flags;            /* LOCK_F_* */
	__u8 _pad[5];
};
_Static_assert(sizeof(struct lock_event) == 96, "lock_event layout");

/* ------------------------------------------------------------------ */
/*
 * futex: contended futex waits (the fast path of a lock never enters the
 * kernel, so every futex wait syscall is a contended one), who woke them,
 * and per address and interval figures. From the per-syscall tracepoints
 * syscalls/sys_{enter,exit}_futex* and sched_waking: no uprobes.
 */

/* How a futex wait (or wake) was asked for. */
enum futex_op_kind {
	FUTEX_K_OTHER = 0,
	/* waits */
	FUTEX_K_WAIT = 1,            /* futex(FUTEX_WAIT) */
	FUTEX_K_WAIT_BITSET = 2,     /* futex(FUTEX_WAIT_BITSET) */
	FUTEX_K_LOCK_PI = 3,         /* futex(FUTEX_LOCK_PI) */
	FUTEX_K_LOCK_PI2 = 4,        /* futex(FUTEX_LOCK_PI2) */
	FUTEX_K_WAIT_REQUEUE_PI = 5, /* futex(FUTEX_WAIT_REQUEUE_PI) */
	FUTEX_K_WAITV = 6,           /* futex_waitv(2) */
	FUTEX_K_FUTEX_WAIT = 7,      /* futex_wait(2), 6.7+ */
	/* wakes */
	FUTEX_K_WAKE = 16,
	FUTEX_K_WAKE_BITSET = 17,
	FUTEX_K_WAKE_OP = 18,
	FUTEX_K_REQUEUE = 19,
	FUTEX_K_CMP_REQUEUE = 20,
	FUTEX_K_CMP_REQUEUE_PI = 21,
	FUTEX_K_UNLOCK_PI = 22,
	FUTEX_K_FUTEX_WAKE = 23,     /* futex_wake(2), 6.7+ */
	FUTEX_K_FUTEX_REQUEUE = 24,  /* futex_requeue(2), 6.7+ */
};

struct futex_config {
	struct target_filter target;
	__u32 interval; /* bumped by proc_image at every report */
	__u32 _pad;
	__u64 min_ns;   /* futex_wait records only for waits at least this long */
};

/* One contended wait of a target thread, at its return (hdr: the waiter). */
struct futex_wait_event {
	struct event_hdr hdr;
	__u64 uaddr;       /* futex_waitv: the futex that woke it, else the first */
	__u64 wait_ns;     /* syscall entry to return */
	__u64 wake_ns;     /* when the waker woke it (CLOCK_MONOTONIC); 0 = not known */
	__s64 ret;         /* the syscall's return: 0, an index (waitv) or -errno */
	__u32 waker_pid;   /* 0 = not woken by a futex wake we saw */
	__u32 waker_tgid;
	__u8 waker_comm[PI_COMM_LEN];
	__u8 op;           /* enum futex_op_kind */
	__u8 _pad[7];
};
_Static_assert(sizeof(struct futex_wait_event) == 112, "futex_wait_event layout");

/*
 * Figures of one futex address of one process in one interval: written in
 * the slot of the interval's parity, read and deleted by proc_image once no
 * program can still be adding to it.
 */
struct futex_addr_key {
	__u64 uaddr;
	__u32 tgid;
	__u32 slot; /* interval & 1 */
};

struct futex_figures {
	__u64 waits;         /* contended waits of target threads that ended */
	__u64 wait_total_ns;
	__u64 wait_max_ns;
	__u64 wakes;         /* target waiters woken by a futex wake */
	__u64 wake_calls;    /* futex wake syscalls of target threads */
	__u64 waiters_max;   /* most target threads waiting at once */
};

enum futex_kind {
	FUTEX_RECORD_WAIT = 1, /* struct futex_wait_event */
};

enum futex_role {
	FUTEX_WAITER = 0,
	FUTEX_WAKER = 1,
};

/* Per thread of a futex_addr_key: its waits, or the waiters it woke. */
struct futex_part_key {
	__u64 uaddr;
	__u32 tgid;  /* the address's process (the waiter's) */
	__u32 pid;   /* the waiter, or the waker */
	__u8 slot;
	__u8 role;   /* enum futex_role */
	__u8 _pad[6];
};

struct futex_part {
	__u64 count;
	__u32 tgid;  /* the thread's own process (a waker may be another) */
	__u32 _pad;
	__u8 comm[PI_COMM_LEN];
};

/* ------------------------------------------------------------------ */
/*
 * Control: how controller asks and proc_image answers, through three maps
 * pinned in one directory. Every request is unique and answered once:
 *  - `control` (array, one CONTROL_STATE_SIZE slot): proc_image's state,
 *    written only by proc_image: owner, what is loaded, and one
 *    control_activation per collector.
 *  - `requests` (queue): controller pushes a control_request, proc_image pops
 *    it; a push and a pop are atomic, so no request is torn or overwritten.
 *  - `answers` (hash): proc_image puts a control_answer under the request's
 *    id; the controller that made the id reads it and deletes it.
 * The version changes whenever a layout here changes.
 */
#define CONTROL_MAGIC 0x474d4950 /* "PIMG" */
#define CONTROL_VERSION 6
#define CONTROL_SLOT_SIZE 1024  /* a request */
#define CONTROL_STATE_SIZE 4096 /* the state: it lists the BPF programs' stats */
#define CONTROL_MESSAGE_LEN 256
#define CONTROL_QUEUE_LEN 64    /* requests waiting at most */
#define CONTROL_ANSWERS_MAX 256 /* answers not yet collected at most */

enum control_command {
	CONTROL_NONE = 0,
	CONTROL_ACTIVATE = 1,
	CONTROL_DEACTIVATE = 2,
	CONTROL_FINISH = 3,
};

/* The answer to one request. */
enum control_status {
	CONTROL_STATUS_DONE = 1,   /* applied: see message */
	CONTROL_STATUS_ERROR = 2,  /* refused, nothing changed: see message */
	CONTROL_STATUS_ENDING = 3, /* finishing */
};

struct control_header {
	__u32 magic;
	__u32 version;
};

/* What proc_image traces for one collector: the target of its last activation. */
struct control_activation {
	__u32 id;          /* unique per activation, never 0; 0 = not active */
	__u32 target_mode; /* enum pi_target_mode */
	__u32 pid;
	__u32 tgid;
	__u32 cpu;
	__u32 interval_ms;
	__u64 cgroup_id;   /* TARGET_CGROUP */
	__u64 since_ns;    /* CLOCK_REALTIME of the activation */
	__u64 records;     /* records written for it so far */
};

/*
 * --bpf-stats: one BPF program's runs and run time so far, as the kernel
 * counts them while BPF_ENABLE_STATS is on (bpf_prog_info run_cnt and
 * run_time_ns).
 */
#define CONTROL_PROGS_MAX 40
#define CONTROL_PROG_NAME_LEN 40 /* libbpf's name, longer than the kernel's 16 */

struct control_prog_stats {
	__u8 name[CONTROL_PROG_NAME_LEN];
	__u32 collector; /* enum pi_collector */
	__u32 _pad;
	__u64 runs;
	__u64 run_ns;
};
_Static_assert(sizeof(struct control_prog_stats) == 64, "control_prog_stats layout");

struct control_state {
	struct control_header hdr;
	__u32 owner_pid;         /* the proc_image that owns the pins */
	__u32 loaded_mask;       /* collectors loaded and verified */
	__u64 owner_start_ticks; /* owner's start time: tells a stale pin from a live one */
	__u32 ready;             /* 0 while loading */
	__u32 refused_mask;      /* collectors asked for (-a) that the kernel refused */
	struct control_activation active[PI_COLLECTOR_COUNT];
	__u8 message[CONTROL_MESSAGE_LEN]; /* what the loader could not load, or "ready" */
	__u32 bpf_stats;  /* 1: proc_image runs with --bpf-stats, progs[] are its programs */
	__u32 prog_count; /* entries of progs[] in use */
	struct control_prog_stats progs[CONTROL_PROGS_MAX];
};
_Static_assert(sizeof(struct control_state) <= CONTROL_STATE_SIZE, "control_state size");

/* control_request.flags */
#define CONTROL_F_MYPROC 1 /* trace proc_image's own threads too (controller -m) */
#define CONTROL_F_EXEC_FAILURES 2 /* keytime: execve_failed records (controller --exec-failures) */

struct control_request {
	struct control_header hdr;
	__u64 id;            /* unique: the key of its answer */
	__u32 command;       /* enum control_command */
	__u32 collectors;    /* mask of enum pi_collector bits; 0 = every loaded one (activate, deactivate) */
	__u32 target_mode;   /* enum pi_target_mode */
	__u32 pid;
	__u32 tgid;
	__u32 cpu;
	__u64 start_ticks;   /* see target_filter */
	__u64 cgroup_id;     /* TARGET_CGROUP */
	__u32 cgroup_level;  /* TARGET_CGROUP: its depth below the root */
	__u32 keytime_level;
	__u32 syscall_seq_len;
	__u32 interval_ms;   /* 0 = proc_image's default */
	__u32 requester_pid;
	__u32 flags;         /* CONTROL_F_* */
	/* deactivate: only these activations (0: whatever is active) */
	__u32 activation_ids[PI_COLLECTOR_COUNT];
	__u32 futex_min_us;  /* futex: futex_wait records only for waits this long */
	__u32 stack_min_us;  /* keytime level 2: stacks only for off-CPU stretches this long */
	__u32 stretch_min_us; /* keytime targeted: on_cpu / off_cpu records only for stretches this long */
};
_Static_assert(sizeof(struct control_request) <= CONTROL_SLOT_SIZE, "control_request size");

struct control_answer {
	__u32 status;        /* enum control_status */
	__u32 _pad;
	/* activate: the ids given to the collectors' new activations */
	__u32 activation_ids[PI_COLLECTOR_COUNT];
	__u32 _pad2;
	__u8 message[CONTROL_MESSAGE_LEN];
};

#endif /* PROC_IMAGE_H */
