//! proc_image: a process-lifecycle profiler on eBPF. The two binaries
//! (src/bin/) are thin: `app` runs proc_image, `controller` drives it.

pub mod app;
pub mod bpf_intf;
pub mod bpf_stats;
pub mod cli;
pub mod collectors;
pub mod control;
pub mod folded;
pub mod kallsyms;
pub mod kernel_btf;
pub mod losses;
pub mod metrics;
pub mod output;
pub mod record;
pub mod sys;
pub mod target;
pub mod trace;
