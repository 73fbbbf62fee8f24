//! A target that lives for a minute of reporting intervals at the default
//! interval, with busy threads, idle threads and threads that come and go:
//! keytime, syscall, schedule and resource active on it together. Every
//! count must be exact and nothing lost, and proc_image must not grow.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECS: u64 = 60;

/// Note a failed check and go on: one run of a minute shows every failure.
macro_rules! check {
    ($failures:ident, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            $failures.push(format!($($msg)+));
        }
    };
}

macro_rules! check_eq {
    ($failures:ident, $left:expr, $right:expr, $what:expr) => {{
        let (l, r) = ($left, $right);
        check!($failures, l == r, "{}: {} recorded, {} true", $what, l, r);
    }};
}

const THREADS: u64 = 8;

/// proc_image's resident set in KiB, from /proc/PID/status.
fn vmrss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn of<'a>(recs: &'a [Value], collector: &str, event: &str) -> impl Iterator<Item = &'a Value> {
    let (collector, event) = (collector.to_string(), event.to_string());
    recs.iter()
        .filter(move |r| r["collector"] == collector.as_str() && r["event"] == event.as_str())
}

/// The getppid count in a record's `top` list (per-thread records).
fn top_getppid(r: &Value) -> u64 {
    r["top"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == "getppid")
        .map(|t| u64_of(t, "count"))
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_minute_of_intervals_is_exact_and_flat() {
    need_root();
    let pi = ProcImage::start("soak", &[]);
    let mut w = Workload::start(&[
        "soak",
        "--threads",
        &THREADS.to_string(),
        "--secs",
        &SECS.to_string(),
    ]);
    let pid = w.pid().to_string();
    pi.control_ok(&["-a", "-P", &pid, "-k", "-s", "-S", "-r"]);
    w.go();

    // proc_image's memory once a second while the target runs
    let started = Instant::now();
    let mut rss: Vec<(Duration, u64)> = Vec::new();
    while w.child.try_wait().unwrap().is_none() {
        if let Some(kib) = vmrss_kib(pi.child.id()) {
            rss.push((started.elapsed(), kib));
        }
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            started.elapsed() < Duration::from_secs(SECS * 3),
            "the soak workload did not end"
        );
    }
    assert!(w.wait().success());
    let truth = w.truth("soak");
    pi.expect_target_gone(Duration::from_secs(10));
    let recs = pi.finish();
    let mut failures: Vec<String> = Vec::new();
    let tgid = w.pid() as u64;

    // nothing lost, anywhere
    let lost: Vec<&Value> = recs.iter().filter(|r| r["event"] == "lost").collect();
    check!(failures, lost.is_empty(), "losses: {lost:?}");

    // syscall: getppid by name over every interval, exactly the workload's count
    let by_name: u64 = of(&recs, "syscall", "syscalls_total")
        .filter(|r| r["tgid"] == tgid)
        .map(|r| r["by_name"]["getppid"].as_u64().unwrap_or(0))
        .sum();
    check_eq!(
        failures,
        by_name,
        u64_of(&truth, "getppid"),
        "syscalls_total.by_name.getppid"
    );

    // ... and per thread, every thread, busy, idle or short-lived
    // one syscalls_total per reporting interval, back to back over the
    // target's whole life (a busy host may stretch an interval a little)
    let totals: Vec<&Value> = of(&recs, "syscall", "syscalls_total")
        .filter(|r| r["tgid"] == tgid)
        .collect();
    let intervals = totals.len() as u64;
    let covered: u64 = totals.iter().map(|r| u64_of(r, "interval_ns")).sum();
    check!(
        failures,
        covered >= (SECS - 2) * 1_000_000_000,
        "{intervals} syscall intervals cover {covered} ns of {SECS} s"
    );
    let mut per_thread: HashMap<u64, u64> = HashMap::new();
    let mut intervals_seen: HashMap<u64, usize> = HashMap::new();
    for r in of(&recs, "syscall", "syscalls").filter(|r| r["tgid"] == tgid) {
        *per_thread.entry(u64_of(r, "pid")).or_default() += top_getppid(r);
        *intervals_seen.entry(u64_of(r, "pid")).or_default() += 1;
    }
    let threads = truth["threads"].as_array().unwrap();
    assert_eq!(threads.len() as u64, u64_of(&truth, "threads_created"));
    for t in threads {
        let tid = u64_of(t, "tid");
        // per thread, `top` lists 3 syscalls: exact where getppid leads in
        // every interval (a short-lived thread's last one may hold a single
        // getppid among its exit's syscalls; by_name above counts those)
        if t["kind"] != "short" {
            check_eq!(
                failures,
                per_thread.get(&tid).copied().unwrap_or(0),
                u64_of(t, "getppid"),
                format!("getppid of thread {tid} ({})", t["kind"])
            );
        }
        // a busy thread makes syscalls in every interval of its life
        if t["kind"] == "busy" {
            let seen = intervals_seen.get(&tid).copied().unwrap_or(0) as u64;
            check!(
                failures,
                seen + 2 >= intervals,
                "busy thread {tid} has syscalls records in {seen} intervals of {intervals}"
            );
        }
    }

    // keytime: every thread's creation and exit, the process's end once
    let created = of(&recs, "keytime", "pthread_create")
        .filter(|r| r["tgid"] == tgid)
        .count() as u64;
    check_eq!(
        failures,
        created,
        u64_of(&truth, "threads_created"),
        "pthread_create records"
    );
    let exits: Vec<&Value> = of(&recs, "keytime", "exit")
        .filter(|r| r["tgid"] == tgid)
        .collect();
    check_eq!(
        failures,
        exits.len() as u64,
        created + 1,
        "exit records (threads + main)"
    );
    check_eq!(
        failures,
        exits.iter().filter(|r| r["group_dead"] == true).count(),
        1,
        "group_dead exactly once"
    );

    // keytime's per-interval on-CPU sums (cpu_summary: every stretch,
    // short ones too) and resource's cumulative figure add up to the
    // scheduler's own account, read by each thread just before it ended
    let mut on_cpu: HashMap<u64, (u64, u64)> = HashMap::new();
    for r in of(&recs, "keytime", "cpu_summary").filter(|r| r["tgid"] == tgid) {
        let e = on_cpu.entry(u64_of(r, "pid")).or_default();
        e.0 += u64_of(r, "on_cpu_ns");
        e.1 += 1;
    }
    let mut res_cpu: HashMap<u64, u64> = HashMap::new();
    for r in of(&recs, "resource", "resource").filter(|r| r["tgid"] == tgid) {
        let e = res_cpu.entry(u64_of(r, "pid")).or_default();
        *e = (*e).max(u64_of(r, "cpu_ns_total"));
    }
    for t in threads.iter().filter(|t| t["kind"] != "short") {
        let tid = u64_of(t, "tid");
        let run = u64_of(t, "run_ns");
        // after its last read of schedstat a thread still runs a little: 5 ms
        let near = |x: u64| x + run / 100 >= run && x <= run + run / 100 + 5_000_000;
        let (kt, intervals) = on_cpu.get(&tid).copied().unwrap_or((0, 0));
        check!(
            failures,
            near(kt),
            "thread {tid}: keytime on-CPU {kt} ns in {intervals} cpu_summary records, schedstat {run} ns"
        );
        let rc = res_cpu.get(&tid).copied().unwrap_or(0);
        check!(
            failures,
            near(rc),
            "thread {tid}: resource cpu_ns_total {rc} ns, schedstat {run} ns"
        );
    }

    // schedule: a figure in every interval of the target's life
    let sched = of(&recs, "schedule", "schedule").count() as u64;
    check!(
        failures,
        sched >= intervals,
        "schedule records in {sched} intervals of {intervals}"
    );
    let rq: u64 = of(&recs, "schedule", "schedule")
        .map(|r| u64_of(r, "count"))
        .sum();
    check!(failures, rq > 0, "no run-queue latency recorded");

    // proc_image's memory is flat once it has settled (10 s)
    let settled: Vec<u64> = rss
        .iter()
        .filter(|(t, _)| *t >= Duration::from_secs(10))
        .map(|(_, kib)| *kib)
        .collect();
    check!(failures, settled.len() > 10, "too few RSS samples: {rss:?}");
    let (first, max) = (settled[0], *settled.iter().max().unwrap());
    check!(
        failures,
        max <= first + first / 20 + 1024,
        "proc_image grew from {first} KiB to {max} KiB after the first 10 s: {rss:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
