//! The kernel's own account of run-queue waits (/proc schedstat), and the
//! sched-classes workload run to its end: the truth schedule's records
//! are held to.

use std::time::Duration;

use serde_json::Value;

use super::{u64_of, wait_until, ProcImage, Workload};

/// (run-queue wait ns, waits) of thread `tid` so far, from the kernel's
/// /proc schedstat (2nd and 3rd fields).
pub fn schedstat(pid: u64, tid: u64) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap();
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    (f[1], f[2])
}

/// Our count of waits against the kernel's: never more, and fewer only by
/// the few wakeups the kernel does not let BPF see: a wakeup from an
/// interrupt that came in while this CPU ran the same wakeup program skips
/// it (bpftool prog show: recursion_misses), seen with other BPF users busy
/// on the machine.
pub fn close_to(ours: u64, kernel: u64) -> bool {
    ours <= kernel && ours + 3 + kernel / 200 >= kernel
}

/// The sched-classes workload's threads by role, and their schedstat now.
pub fn class_threads(w: &Workload) -> Vec<(String, u64, (u64, u64))> {
    let truth = w.wait_truth("threads", Duration::from_secs(10));
    let pid = w.pid() as u64;
    truth["tids"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(role, tid)| {
            let tid = tid.as_u64().unwrap();
            (role.clone(), tid, schedstat(pid, tid))
        })
        .collect()
}

/// Run the workload (already activated on) to its end, and wait until two
/// reports have closed after it: every wait of its threads is reported.
pub fn run_to_end(pi: &ProcImage, w: &mut Workload) -> u64 {
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(60));
    two_reports_after(pi, u64_of(&done, "done_ns"));
    u64_of(&done, "churned")
}

/// Wait until two schedule reports have closed after `done_ns`: every wait
/// before it is in them.
pub fn two_reports_after(pi: &ProcImage, done_ns: u64) {
    assert!(wait_until(Duration::from_secs(10), || {
        pi.records()
            .iter()
            .filter(|r| r["event"] == "schedule" && u64_of(r, "ts_ns") > done_ns)
            .count()
            >= 2
    }));
}

/// A thread's schedule_thread records (`mine`) against the kernel's
/// schedstat over the same time (`kernel`: run_delay ns, waits): every
/// wait counted, and their time close to the kernel's.
pub fn waits_match_schedstat(role: &str, mine: &[&&Value], kernel: (u64, u64)) {
    let (kernel_ns, kernel_waits) = kernel;
    let waits: u64 = mine.iter().map(|r| u64_of(r, "count")).sum();
    let wait_ns: u64 = mine.iter().map(|r| u64_of(r, "sum_ns")).sum();
    eprintln!("{role}: {waits} waits {wait_ns} ns; schedstat {kernel_waits} waits {kernel_ns} ns");
    assert!(
        close_to(waits, kernel_waits),
        "{role}: {waits} vs {kernel_waits}"
    );
    // the wakeup tracepoint fires just after the enqueue schedstat times
    // from: a few microseconds a wait
    let slack = kernel_ns / 20 + kernel_waits * 20_000;
    assert!(
        wait_ns.abs_diff(kernel_ns) <= slack,
        "{role}: {wait_ns} vs {kernel_ns}"
    );
}
