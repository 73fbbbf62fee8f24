// SPDX-License-Identifier: GPL-2.0
/*
 * Benchmark floor: programs that do nothing, on the hooks the collectors
 * use, so a benchmark can tell the price of the hook itself from the price
 * of a collector's work (the workload's `noop-hooks` mode attaches them).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/sys_enter")
int BPF_PROG(noop__sys_enter) { return 0; }

SEC("tp_btf/sys_exit")
int BPF_PROG(noop__sys_exit) { return 0; }

SEC("tp_btf/sched_switch")
int BPF_PROG(noop__sched_switch) { return 0; }

SEC("tp_btf/sched_wakeup")
int BPF_PROG(noop__sched_wakeup) { return 0; }

SEC("tp_btf/sched_process_exit")
int BPF_PROG(noop__sched_process_exit) { return 0; }

/* keytime's other hooks (with sched_switch and sched_process_exit above) */
SEC("tp_btf/task_newtask")
int BPF_PROG(noop__task_newtask) { return 0; }

SEC("tp_btf/sched_process_exec")
int BPF_PROG(noop__sched_process_exec) { return 0; }

SEC("tp_btf/signal_generate")
int BPF_PROG(noop__signal_generate) { return 0; }
