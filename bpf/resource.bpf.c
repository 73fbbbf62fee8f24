// SPDX-License-Identifier: GPL-2.0
/*
 * resource: on-CPU time, memory (RSS) and I/O bytes of the target's threads.
 *
 * All three are counters the kernel already keeps in the task: the
 * scheduler's own run-time account (se.sum_exec_runtime, what
 * /proc/PID/schedstat shows, updated at every switch and tick), the mm's
 * RSS counters and task->ioac. So nothing runs per context switch: when
 * proc_image closes an interval it runs a task iterator (handle__iter_task)
 * that samples every live target thread, and a thread that exits leaves
 * its last figures in `exits` (sched_process_exit) for proc_image to take.
 * A thread on a CPU right now has its run accounted up to its last tick
 * (at most 1/HZ behind); the counter is cumulative, so that lag is never
 * lost, only reported one interval later.
 *
 * The idle task of a CPU is no task the iterator visits, and the scheduler
 * keeps no run time for it: proc_image reads that CPU's idle time from
 * /proc/stat instead (see collectors/resource.rs).
 */
#include "common.bpf.h"

/* Written by proc_image (struct resource_config). */
struct resource_config cfg;

/* the task's CPU: in thread_info since 5.16 (x86), in the task before */
struct task_struct___cpu_old {
	unsigned int cpu;
} __attribute__((preserve_access_index));

static __always_inline __u32 task_cpu_of(struct task_struct *task)
{
	if (bpf_core_field_exists(task->thread_info.cpu))
		return BPF_CORE_READ(task, thread_info.cpu);
	return BPF_CORE_READ((struct task_struct___cpu_old *)task, cpu);
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

/* 6.2+, spelled out: the vmlinux header may be of either layout (arm64's is 6.1) */
struct mm_struct___new {
	struct percpu_counter rss_stat[NR_MM_COUNTERS];
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
			__v = BPF_CORE_READ((struct mm_struct___new *)(mm),          \
					    rss_stat[member].count);                 \
		__v > 0 ? (__u64)__v : 0;                                            \
	})

static __always_inline void fill_sample(struct resource_sample *s, struct task_struct *task,
					__u8 kind)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);

	fill_hdr(&s->hdr, task, PI_RESOURCE, kind, bpf_ktime_get_ns());
	s->on_cpu_ns = BPF_CORE_READ(task, se.sum_exec_runtime);
	s->rss_pages = 0;
	/* kernel threads, and a thread past exit_mm(), have no mm */
	if (mm)
		s->rss_pages = MM_COUNTER(mm, MM_FILEPAGES) + MM_COUNTER(mm, MM_ANONPAGES) +
			       MM_COUNTER(mm, MM_SHMEMPAGES);
	s->rchar = 0;
	s->wchar = 0;
	s->last_cpu = task_cpu_of(task);
	s->_pad = 0;
	if (bpf_core_field_exists(task->ioac)) {
		s->rchar = BPF_CORE_READ(task, ioac.rchar);
		s->wchar = BPF_CORE_READ(task, ioac.wchar);
	}
}

/* Since 6.16 this fires before exit_mm(): the RSS is still there to read. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__sched_process_exit, struct task_struct *p)
{
	struct resource_sample s;
	__u32 pid;

	if (!is_target(&cfg.target, p))
		return 0;
	fill_sample(&s, p, RESOURCE_EXIT);
	pid = p->pid;
	if (bpf_map_update_elem(&exits, &pid, &s, BPF_ANY))
		STAT_INC(map_full);
	return 0;
}

/*
 * Run by proc_image at activation (the figures its intervals start from)
 * and at the close of every interval: one sample per live target thread,
 * written to the iterator's output.
 */
SEC("iter/task")
int handle__iter_task(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct resource_sample s;

	/* exited threads left their figures in `exits` */
	if (!task || !task->pid || task->exit_state || !is_target(&cfg.target, task))
		return 0;
	fill_sample(&s, task, RESOURCE_LIVE);
	bpf_seq_write(ctx->meta->seq, &s, sizeof(s));
	return 0;
}
