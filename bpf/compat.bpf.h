/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the older forms of programs (src/kernel_btf.rs picks them at load
 * time) read from the task where older kernels pass no argument.
 */
#ifndef COMPAT_BPF_H
#define COMPAT_BPF_H

/* task_struct's state before 5.14, when it was renamed __state */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

/*
 * The task's state right now. At sched_switch before 5.18 this is the
 * re-read that 5.18 removed: a wakeup racing with the switch may already
 * have made a sleeping task TASK_RUNNING, so a sleep can look like a
 * preemption.
 */
static __always_inline __u32 task_state_now(struct task_struct *task)
{
	if (bpf_core_field_exists(task->__state))
		return BPF_CORE_READ(task, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)task, state);
}

#endif /* COMPAT_BPF_H */
