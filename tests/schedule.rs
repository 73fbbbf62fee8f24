//! schedule end to end: two CPU-bound threads and a sleeper on one CPU.
//! The busy threads wait for each other's slice; the sleeper is woken and
//! runs almost at once.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Count-weighted average latency over the target's records.
fn avg(recs: &[&Value]) -> u64 {
    let count: u64 = recs.iter().map(|r| u64_of(r, "count")).sum();
    let sum: u64 = recs
        .iter()
        .map(|r| u64_of(r, "avg_ns") * u64_of(r, "count"))
        .sum();
    assert!(count > 0, "no scheduling seen");
    sum / count
}

/// The scheduler's base slice, from debugfs (mounted here if needed).
fn base_slice_ns() -> Option<u64> {
    let path = "/sys/kernel/debug/sched/base_slice_ns";
    if std::fs::metadata(path).is_err() {
        let _ = std::process::Command::new("mount")
            .args(["-t", "debugfs", "none", "/sys/kernel/debug"])
            .status();
    }
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn busy_threads_wait_a_slice_and_the_sleeper_does_not() {
    need_root();
    let pi = ProcImage::start("schedule", &["-S"]);
    let w = Workload::start(&["sched", "--busy-threads", "2", "--secs", "5"]);
    let threads = w.wait_truth("threads", Duration::from_secs(5));
    let busy = threads["busy"][0].as_u64().unwrap();
    let sleeper = threads["sleeper"].as_u64().unwrap();

    pi.control_ok(&["-a", "-p", &busy.to_string(), "-S", "-i", "500"]);
    assert!(
        pi.wait_for(Duration::from_secs(5), |r| r["collector"] == "schedule"
            && r["pid"] == busy
            && u64_of(r, "count") > 0)
    );
    std::thread::sleep(Duration::from_millis(1000));
    pi.control_ok(&["-a", "-p", &sleeper.to_string(), "-S", "-i", "500"]);
    assert!(
        pi.wait_for(Duration::from_secs(5), |r| r["collector"] == "schedule"
            && r["pid"] == sleeper
            && u64_of(r, "count") > 0)
    );
    std::thread::sleep(Duration::from_millis(1000));
    let recs = pi.finish();

    let of = |pid: u64| -> Vec<&Value> {
        recs.iter()
            .filter(|r| r["collector"] == "schedule" && r["pid"] == pid && u64_of(r, "count") > 0)
            .collect()
    };
    let (busy_recs, sleeper_recs) = (of(busy), of(sleeper));
    let (busy_avg, sleeper_avg) = (avg(&busy_recs), avg(&sleeper_recs));
    eprintln!(
        "busy thread avg {busy_avg} ns, sleeper avg {sleeper_avg} ns, base slice {:?}",
        base_slice_ns()
    );
    assert!(
        busy_avg > 10 * sleeper_avg,
        "busy {busy_avg} ns vs sleeper {sleeper_avg} ns"
    );
    if let Some(slice) = base_slice_ns() {
        assert!(
            busy_avg >= slice / 2,
            "busy threads waited {busy_avg} ns, less than half a slice ({slice} ns)"
        );
    }

    // the target is a subset of the system in every interval
    for r in busy_recs.iter().chain(&sleeper_recs) {
        assert!(u64_of(r, "sys_count") >= u64_of(r, "count"), "{r}");
        assert!(u64_of(r, "sys_min_ns") <= u64_of(r, "min_ns"), "{r}");
        assert!(u64_of(r, "sys_max_ns") >= u64_of(r, "max_ns"), "{r}");
        let hist: u64 = r["hist"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| u64_of(b, "count"))
            .sum();
        assert_eq!(hist, u64_of(r, "count"), "{r}");
    }
}

/// Times thread `tid` was switched in so far (/proc schedstat's third field).
fn switch_ins(pid: u64, tid: u64) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).unwrap();
    text.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Every time a sleeper competing for its CPU runs again it had become
/// runnable (woken, or preempted: also while it was setting up to sleep),
/// so its run-queue waits over several intervals are exactly its
/// switch-ins, as the kernel's own schedstat counts them.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn every_switch_in_is_one_run_queue_wait() {
    need_root();
    let pi = ProcImage::start("runqueue", &["-S"]);
    let mut w = Workload::start(&["runqueue", "--sleeps", "2000", "--secs", "5"]);
    let pid = w.pid() as u64;
    let threads = w.wait_truth("threads", Duration::from_secs(10));
    let sleeper = u64_of(&threads, "sleeper");
    // blocked in a read: nothing pending before the activation
    let before = switch_ins(pid, sleeper);
    pi.control_ok(&["-a", "-p", &sleeper.to_string(), "-S"]);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(60));
    let done_ns = u64_of(&done, "done_ns");
    // the second report after it went back to its read has every wait
    assert!(wait_until(Duration::from_secs(10), || {
        pi.records()
            .iter()
            .filter(|r| r["event"] == "schedule" && u64_of(r, "ts_ns") > done_ns)
            .count()
            >= 2
    }));
    let after = switch_ins(pid, sleeper);
    let recs = pi.finish();
    let mine: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "schedule" && r["pid"] == sleeper)
        .collect();
    let waits: u64 = mine.iter().map(|r| u64_of(r, "count")).sum();
    let intervals = mine.iter().filter(|r| u64_of(r, "count") > 0).count();
    assert!(after - before >= 2000, "{before} -> {after}");
    assert_eq!(waits, after - before, "over {intervals} intervals");
    assert!(intervals >= 3, "5 s of sleeps in {intervals} intervals");
}
