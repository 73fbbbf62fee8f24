// SPDX-License-Identifier: GPL-2.0
/*
 * resource: on-CPU time, memory (RSS) and I/O bytes of the target's threads.
 *
 * sched_switch keeps only what has to be caught as it happens: each target
 * thread's on-CPU time, from its switch-in time (kept per CPU while it
 * runs) to its switch-out, summed in task storage. The levels and counters
 * the kernel already keeps (the mm's RSS counters, task->ioac) are read
 * from the task itself when proc_image closes an interval, by a task
 * iterator (handle__iter_task) that also counts the current run of a
 * thread that is on a CPU right now, so a busy loop that never switches
 * out is seen. A thread that exits leaves its last figures in `exits`
 * (sched_process_exit), for proc_image to take.
 */
#include "common.bpf.h"

/* Written by proc_image (struct resource_config). */
struct resource_config cfg;

/* A target thread's on-CPU time in runs that have ended. */
struct run_time {
	__u64 on_cpu_ns;
	__u32 generation; /* the activation on_cpu_ns belongs to */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct run_time);
} runs SEC(".maps");

/*
 * The target thread running on each CPU, if any, and since when. Kept per
 * CPU rather than in the thread's task storage so that a switch-in costs a
 * per-CPU slot and a switch-out checks the slot instead of the filter.
 */
struct current_run {
	__u64 task; /* its task_struct; 0 = no target thread runs here */
	__u64 start_ns;
	__u32 pid;  /* with `task`: not a later task at the same address */
	__u32 generation;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct current_run);
} current_runs SEC(".maps");

static __always_inline bool runs_here(struct current_run *c, struct task_struct *task)
{
	return c && c->task == (__u64)task && c->pid == task->pid &&
	       c->generation == cfg.target.generation;
}

/* The thread's sums, started afresh for a new activation. */
static __always_inline struct run_time *run_time_of(struct task_struct *task, __u64 flags)
{
	struct run_time *r = bpf_task_storage_get(&runs, task, 0, flags);

	if (!r) {
		if (flags)
			STAT_INC(no_task_state);
		return NULL;
	}
	if (r->generation != cfg.target.generation) {
		r->generation = cfg.target.generation;
		r->on_cpu_ns = 0;
	}
	return r;
}

/* Last figures of target threads that exited; proc_image takes them out. */
#define MAX_EXITS 8192

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_EXITS);
	__type(key, __u32);
	__type(value, struct resource_sample);
} exits SEC(".maps");

/*
 * mm->rss_stat before 6.2: a `struct mm_rss_stat` holding an array of
 * atomic counters. Since 6.2 it is `struct percpu_counter
 * rss_stat[NR_MM_COUNTERS]` (vmlinux.h's layout) and struct mm_rss_stat is
 * gone, so whether the kernel has that type tells the layouts apart (this
 * clang has no bpf_core_type_matches()).
 */
struct mm_rss_stat___old {
	atomic_long_t count[NR_MM_COUNTERS];
} __attribute__((preserve_access_index));

struct mm_struct___old {
	struct mm_rss_stat___old rss_stat;
} __attribute__((preserve_access_index));

/*
 * One RSS counter, as get_mm_counter() reads it: the shared count only
 * (percpu_counter_read_positive), never negative. Each CPU may hold up to
 * a batch (32 pages or more) not folded in yet; VmRSS adds those since 6.16
 * but BPF cannot reach them here (per-CPU offsets need a kallsyms entry for
 * this_cpu_off, which a kernel without KALLSYMS_ALL lacks). A literal
 * `member`: a CO-RE array index must be a constant.
 */
#define MM_COUNTER(mm, member)                                                       \
	({                                                                           \
		long __v;                                                            \
		if (bpf_core_type_exists(struct mm_rss_stat___old))                  \
			__v = BPF_CORE_READ((struct mm_struct___old *)(mm),          \
					    rss_stat.count[member].counter);         \
		else                                                                 \
			__v = BPF_CORE_READ(mm, rss_stat[member].count);             \
		__v > 0 ? (__u64)__v : 0;                                            \
	})

static __always_inline void fill_sample(struct resource_sample *s, struct task_struct *task,
					__u8 kind, __u64 now, __u64 on_cpu_ns)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);

	fill_hdr(&s->hdr, task, PI_RESOURCE, kind, now);
	s->on_cpu_ns = on_cpu_ns;
	s->rss_pages = 0;
	/* kernel threads, and a thread past exit_mm(), have no mm */
	if (mm)
		s->rss_pages = MM_COUNTER(mm, MM_FILEPAGES) + MM_COUNTER(mm, MM_ANONPAGES) +
			       MM_COUNTER(mm, MM_SHMEMPAGES);
	s->rchar = 0;
	s->wchar = 0;
	if (bpf_core_field_exists(task->ioac)) {
		s->rchar = BPF_CORE_READ(task, ioac.rchar);
		s->wchar = BPF_CORE_READ(task, ioac.wchar);
	}
}

/* On-CPU time up to `now`, counting the run in progress (`c`, if its). */
static __always_inline __u64 on_cpu_until(struct task_struct *task, struct run_time *r,
					  struct current_run *c, __u64 now)
{
	__u64 sum = r ? r->on_cpu_ns : 0, start;

	if (runs_here(c, task)) {
		start = c->start_ns;
		if (now > start)
			sum += now - start;
	}
	return sum;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	struct current_run *c;
	struct run_time *r;
	__u32 zero = 0;
	__u64 now = 0;

	c = bpf_map_lookup_elem(&current_runs, &zero);
	if (!c)
		return 0;
	if (c->task == (__u64)prev) {
		if (runs_here(c, prev)) {
			now = bpf_ktime_get_ns();
			/* no new state for a task that is past its exit */
			r = run_time_of(prev, prev->exit_state ? 0 : BPF_LOCAL_STORAGE_GET_F_CREATE);
			if (r)
				r->on_cpu_ns += now - c->start_ns;
		}
		c->task = 0;
	}
	if (next->pid && is_target(&cfg.target, next)) {
		c->task = (__u64)next;
		c->pid = next->pid;
		c->generation = cfg.target.generation;
		c->start_ns = now ?: bpf_ktime_get_ns();
	}
	return 0;
}

/* Since 6.16 this fires before exit_mm(): the RSS is still there to read. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *p)
{
	struct resource_sample s;
	__u32 pid, zero = 0;
	__u64 now;

	if (!is_target(&cfg.target, p))
		return 0;
	now = bpf_ktime_get_ns();
	/* p is running: its run is in this CPU's slot */
	fill_sample(&s, p, RESOURCE_EXIT, now,
		    on_cpu_until(p, run_time_of(p, 0), bpf_map_lookup_elem(&current_runs, &zero),
				 now));
	pid = p->pid;
	if (bpf_map_update_elem(&exits, &pid, &s, BPF_ANY))
		STAT_INC(map_full);
	return 0;
}

/*
 * Run by proc_image at activation (to start the sums of threads already
 * running) and at the close of every interval: one sample per live target
 * thread, written to the iterator's output.
 */
SEC("iter/task")
int handle__iter_task(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct resource_sample s;
	struct current_run *c;
	struct run_time *r;
	__u32 zero = 0;
	__u64 now;

	/* exited threads left their figures in `exits` */
	if (!task || !task->pid || task->exit_state || !is_target(&cfg.target, task))
		return 0;
	now = bpf_ktime_get_ns();
	c = bpf_map_lookup_percpu_elem(&current_runs, &zero, task->thread_info.cpu);
	r = bpf_task_storage_get(&runs, task, 0, 0);
	if (!r || r->generation != cfg.target.generation) {
		/*
		 * First seen by this activation: one on a CPU now was switched
		 * in before it began, so its run counts from now.
		 */
		r = run_time_of(task, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!r)
			return 0;
		if (task->on_cpu && c && !runs_here(c, task)) {
			c->task = (__u64)task;
			c->pid = task->pid;
			c->generation = cfg.target.generation;
			c->start_ns = now;
		}
	}
	fill_sample(&s, task, RESOURCE_LIVE, now, on_cpu_until(task, r, c, now));
	bpf_seq_write(ctx->meta->seq, &s, sizeof(s));
	return 0;
}
