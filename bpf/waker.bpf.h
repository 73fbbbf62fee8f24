/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Who woke a task: the one sched_waking tracker of the collectors that name
 * wakers (futex, keytime level 2). Including this header gives the
 * collector's object its own copy of the program; the collector defines,
 * before the include:
 *
 *   static __always_inline void *wakeup_wanted(struct task_struct *waker,
 *                                              struct task_struct *wakee);
 *	cheap checks first (the program runs for every wakeup in the system):
 *	NULL, or the collector's state for wakeup_seen
 *   static __always_inline void wakeup_seen(void *ctx, void *state,
 *                                           struct task_struct *waker,
 *                                           struct task_struct *wakee);
 *	`waker` (current) woke `wakee`, from task context
 *
 * The one rule: a wakeup done in interrupt context (a nanosleep's hrtimer,
 * an I/O completion, a softirq at irq exit) has no waker task; `current`
 * there is whatever the interrupt found.
 */
#ifndef WAKER_BPF_H
#define WAKER_BPF_H

/* preempt_count bits (include/linux/preempt.h): serving an interrupt */
#define PC_SOFTIRQ_OFFSET 0x00000100
#define PC_HARDIRQ_MASK 0x000f0000
#define PC_NMI_MASK 0x00f00000

/* x86_64 THREAD_SIZE without KASAN, for a task whose stack is not vmapped */
#define WAKER_THREAD_SIZE 16384

#if defined(__TARGET_ARCH_x86)
/* One slot per CPU to turn the address of a stack variable into a number. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} waker_sp SEC(".maps");
#endif

/*
 * Is this program running for `cur` itself, not for an interrupt?
 *
 * arm64 keeps the preempt count in the task. x86 keeps it in a per-CPU
 * variable that kallsyms does not list without KALLSYMS_ALL, so it asks
 * where the program's own stack is: x86_64 runs hard and soft interrupts
 * on the per-CPU IRQ stack, so the program's frame lies inside
 * cur->stack .. + THREAD_SIZE only in task context, or in an interrupt
 * that came from user mode (the CPU stays on the task stack then). That
 * one leaves an interrupt frame at the top of the stack, which has no
 * syscall or error code (orig_ax -1), where a syscall's has its number.
 * The address is turned into a number through a map slot: the verifier
 * lets a privileged program store a pointer there (allow_ptr_leaks).
 */
static __always_inline bool waker_in_task_context(struct task_struct *cur)
{
#if defined(__TARGET_ARCH_arm64)
	__u64 pc = BPF_CORE_READ(cur, thread_info.preempt_count);

	return !(pc & (PC_NMI_MASK | PC_HARDIRQ_MASK | PC_SOFTIRQ_OFFSET));
#elif defined(__TARGET_ARCH_x86)
	volatile __u64 mark = 0;
	__u64 base, size = WAKER_THREAD_SIZE, sp;
	struct vm_struct *vm = NULL;
	struct pt_regs *regs;
	__u32 zero = 0;
	__u64 *slot;

	slot = bpf_map_lookup_elem(&waker_sp, &zero);
	if (!slot)
		return false;
	*(volatile __u64 *)slot = (__u64)&mark;
	sp = *(volatile __u64 *)slot;
	base = (__u64)BPF_CORE_READ(cur, stack);
	/* vmapped stacks (VMAP_STACK) say their size, KASAN's double one too */
	if (bpf_core_field_exists(cur->stack_vm_area))
		vm = BPF_CORE_READ(cur, stack_vm_area);
	if (vm) {
		__u64 pages = BPF_CORE_READ(vm, nr_pages);

		if (pages && pages <= 16)
			size = pages * 4096;
	}
	if (sp - base >= size)
		return false; /* on the IRQ stack (or an exception stack) */
	/* bpf_task_pt_regs() is 5.15+; before, no FRED padding at the top either */
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_task_pt_regs))
		regs = (struct pt_regs *)bpf_task_pt_regs(cur);
	else
		regs = (struct pt_regs *)(base + size) - 1;
	if (!regs)
		return false;
	return BPF_CORE_READ(regs, orig_ax) != (unsigned long)-1;
#else
	return true;
#endif
}

SEC("tp_btf/sched_waking")
int BPF_PROG(handle__sched_waking, struct task_struct *p)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	void *state = wakeup_wanted(cur, p);

	if (!state || !waker_in_task_context(cur))
		return 0;
	wakeup_seen(ctx, state, cur, p);
	return 0;
}

#endif /* WAKER_BPF_H */
