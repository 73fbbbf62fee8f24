//! Every metric family (name, unit, type and help) and the labels a
//! series is named by.

use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Every metric family: its name (after `proc_image_`, before the unit
/// suffix), unit, type and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fam {
    LifecycleEvents,
    OnCpu,
    OffCpu,
    OffcpuStacks,
    StackUnwindFailures,
    StackUnnamedFrames,
    ThreadSyscalls,
    Syscalls,
    SyscallLatency,
    SchedLatency,
    ThreadRunqWaits,
    ThreadRunqWait,
    CpuUsage,
    ThreadCpuUsage,
    CpuSeconds,
    MemoryRss,
    MemoryUsage,
    IoRead,
    IoWrite,
    LockWait,
    LockHold,
    LockFailures,
    FutexWait,
    FutexWaits,
    FutexWaitTime,
    Records,
    RingbufDrops,
    LostEvents,
    CollectorLoaded,
    CollectorActive,
    TargetInfo,
    Series,
    BuildInfo,
    BpfRuns,
    BpfRunSeconds,
}

pub(crate) struct Desc {
    pub(crate) name: &'static str,
    pub(crate) unit: Option<Unit>,
    pub(crate) kind: MetricType,
    pub(crate) help: &'static str,
}

impl Fam {
    pub(crate) fn desc(self) -> Desc {
        use MetricType::{Counter, Gauge, Histogram};
        let d = |name, unit, kind, help| Desc {
            name,
            unit,
            kind,
            help,
        };
        match self {
            Fam::LifecycleEvents => d("lifecycle_events", None, Counter, "fork, vfork, pthread_create, execve, execve_failed, exit and child_exit events, by thread (pid = the thread that made the call or exited; for child_exit, the child's creator)"),
            Fam::OnCpu => d("on_cpu", Some(Unit::Seconds), Counter, "Time on CPU, by thread"),
            Fam::OffCpu => d("off_cpu", Some(Unit::Seconds), Counter, "Time off CPU, by thread and reason"),
            Fam::OffcpuStacks => d("offcpu_stacks", None, Counter, "Off-CPU stretches recorded with their kernel and user stacks (keytime -k 2)"),
            Fam::StackUnwindFailures => d("offcpu_stack_unwind_failures", None, Counter, "Off-CPU user stacks that end before their outermost frame, by reason: no_stack (nothing could be copied), no_mappings (the process's mappings could not be read), truncated (an address outside every mapping, or the copied stack ran out)"),
            Fam::StackUnnamedFrames => d("offcpu_stack_unnamed_frames", None, Counter, "Frames of off-CPU stacks that could not be named (no symbol for the address)"),
            Fam::ThreadSyscalls => d("thread_syscalls", None, Counter, "System calls, by thread"),
            Fam::Syscalls => d("syscalls", None, Counter, "System calls of the target, by syscall name"),
            Fam::SyscallLatency => d("syscall_latency", Some(Unit::Seconds), Histogram, "System call latency, of the target (scope=target) and of every task (scope=system)"),
            Fam::SchedLatency => d("sched_latency", Some(Unit::Seconds), Histogram, "Run-queue latency (runnable to running), of the target (scope=target) and of every task (scope=system)"),
            Fam::ThreadRunqWaits => d("thread_runq_waits", None, Counter, "Run-queue waits (runnable to running), by thread"),
            Fam::ThreadRunqWait => d("thread_runq_wait", Some(Unit::Seconds), Counter, "Time waiting in a run queue for a CPU, by thread"),
            Fam::CpuUsage => d("cpu_usage", Some(Unit::Other("ratio".into())), Gauge, "CPU used by a process in the last interval, in CPUs (1 = one CPU busy)"),
            Fam::ThreadCpuUsage => d("thread_cpu_usage", Some(Unit::Other("ratio".into())), Gauge, "CPU used by a thread in the last interval, in CPUs"),
            Fam::CpuSeconds => d("cpu", Some(Unit::Seconds), Counter, "CPU time of a process"),
            Fam::MemoryRss => d("memory_rss", Some(Unit::Bytes), Gauge, "Resident set size of a process"),
            Fam::MemoryUsage => d("memory_usage", Some(Unit::Other("ratio".into())), Gauge, "Resident set size of a process over the memory of the host"),
            Fam::IoRead => d("io_read", Some(Unit::Bytes), Counter, "Bytes read by a process from storage"),
            Fam::IoWrite => d("io_write", Some(Unit::Bytes), Counter, "Bytes written by a process to storage"),
            Fam::LockWait => d("lock_wait", Some(Unit::Seconds), Histogram, "Time from requesting a user-space lock to getting it, by lock type"),
            Fam::LockHold => d("lock_hold", Some(Unit::Seconds), Histogram, "Time a user-space lock was held, by lock type"),
            Fam::LockFailures => d("lock_failures", None, Counter, "Lock calls that failed (trylock busy, timeout, error), by lock type"),
            Fam::FutexWait => d("futex_wait", Some(Unit::Seconds), Histogram, "Contended futex waits of the target (those of at least controller --futex-min-us), syscall entry to return"),
            Fam::FutexWaits => d("futex_waits", None, Counter, "Contended futex waits, by process and futex address (the most contended; the rest under uaddr=\"other\")"),
            Fam::FutexWaitTime => d("futex_wait_time", Some(Unit::Seconds), Counter, "Time spent in contended futex waits, by process and futex address (as futex_waits)"),
            Fam::Records => d("records", None, Counter, "Records produced, by collector"),
            Fam::RingbufDrops => d("ringbuf_drops", None, Counter, "Records the kernel side could not send because the ring buffer was full, by collector"),
            Fam::LostEvents => d("lost_events", None, Counter, "Events the kernel side could not account, by collector and reason (map_full, no_task_state)"),
            Fam::CollectorLoaded => d("collector_loaded", None, Gauge, "1 for each collector this proc_image loaded, 0 for one the kernel refused"),
            Fam::CollectorActive => d("collector_active", None, Gauge, "1 for each collector currently collecting"),
            Fam::TargetInfo => d("target_info", None, Gauge, "1 for the current target, 0 for recent ones"),
            Fam::Series => d("metric_series", None, Gauge, "Series this exporter serves (bounded by --metrics-top)"),
            Fam::BpfRuns => d("bpf_runs", None, Counter, "Runs of each BPF program, as the kernel counts them (--bpf-stats)"),
            Fam::BpfRunSeconds => d("bpf_run", Some(Unit::Seconds), Counter, "Run time of each BPF program, as the kernel counts it (--bpf-stats)"),
            Fam::BuildInfo => d("build_info", None, Gauge, "proc_image's version"),
        }
    }
}

/// A series' labels, in order.
pub type Labels = Vec<(&'static str, String)>;

/// The label value of what is summed, not labelled of its own.
pub const OTHER: &str = "other";

/// `labels` with one more.
pub fn with_label(mut labels: Labels, k: &'static str, v: &str) -> Labels {
    labels.push((k, v.to_string()));
    labels
}

/// Whether thread labels name a thread of its own (not the "other" sum).
pub fn labelled(labels: &Labels) -> bool {
    labels.iter().any(|(k, v)| *k == "pid" && v != OTHER)
}
