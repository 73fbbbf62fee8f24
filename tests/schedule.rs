//! schedule end to end: two CPU-bound threads and a sleeper on one CPU.
//! The busy threads wait for each other's slice; the sleeper is woken and
//! runs almost at once.

mod common;

use std::time::Duration;

use common::sched::*;
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
            .filter(|r| r["event"] == "schedule" && r["pid"] == pid && u64_of(r, "count") > 0)
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
    // the second report after it went back to its read has every wait
    two_reports_after(&pi, u64_of(&done, "done_ns"));
    let after = switch_ins(pid, sleeper);
    let recs = pi.finish();
    let mine: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "schedule" && r["pid"] == sleeper)
        .collect();
    let waits: u64 = mine.iter().map(|r| u64_of(r, "count")).sum();
    let intervals = mine.iter().filter(|r| u64_of(r, "count") > 0).count();
    assert!(after - before >= 2000, "{before} -> {after}");
    assert!(
        close_to(waits, after - before),
        "{waits} vs {} over {intervals} intervals",
        after - before
    );
    assert!(intervals >= 3, "5 s of sleeps in {intervals} intervals");
}

/// Four spinners (one at nice 5, one SCHED_BATCH) and a sleeper share CPU 1
/// with short-lived threads coming and going, over several intervals at the
/// default interval: each thread's records carry its class, its waits add
/// up to the kernel's own count (schedstat) exactly and their time to the
/// kernel's run_delay closely, and in every interval the target's totals
/// are the sum of its threads'.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn per_thread_waits_and_classes_match_schedstat() {
    need_root();
    let pi = ProcImage::start("sched_classes", &["-S"]);
    let mut w = Workload::start(&["sched-classes", "--secs", "4"]);
    let pid = w.pid() as u64;
    let before = class_threads(&w);
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-S"]);
    let churned = run_to_end(&pi, &mut w);
    let after: Vec<(u64, u64)> = before.iter().map(|(_, t, _)| schedstat(pid, *t)).collect();
    let recs = pi.finish();

    let threads: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "schedule_thread")
        .collect();
    for ((role, tid, (delay0, waits0)), (delay1, waits1)) in before.iter().zip(&after) {
        let mine: Vec<&&Value> = threads.iter().filter(|r| r["pid"] == *tid).collect();
        waits_match_schedstat(
            &format!("{role} {tid}"),
            &mine,
            (delay1 - delay0, waits1 - waits0),
        );
        let busy = mine.iter().filter(|r| u64_of(r, "count") > 0).count();
        assert!(busy >= 3, "{role}: 4 s of contention in {busy} intervals");
        let (nice, policy) = match role.as_str() {
            "nice5" => (5, "normal"),
            "batch" => (0, "batch"),
            _ => (0, "normal"),
        };
        for r in &mine {
            assert_eq!(
                (r["nice"].as_i64(), r["policy"].as_str()),
                (Some(nice), Some(policy)),
                "{r}"
            );
            assert_eq!(r["prio"].as_i64(), Some(120 + nice), "{r}");
        }
    }

    // the totals are the threads' sum in every interval
    let totals: Vec<&Value> = recs.iter().filter(|r| r["event"] == "schedule").collect();
    assert!(totals.len() >= 5, "{} intervals", totals.len());
    for t in &totals {
        let of_t = threads.iter().filter(|r| r["ts_ns"] == t["ts_ns"]);
        let (n, ns) = of_t.fold((0, 0), |(n, ns), r| {
            (n + u64_of(r, "count"), ns + u64_of(r, "sum_ns"))
        });
        assert_eq!((n, ns), (u64_of(t, "count"), u64_of(t, "sum_ns")), "{t}");
        assert_eq!(u64_of(t, "missed_threads"), 0, "{t}");
    }

    // every short-lived thread waited at least once, and was reported gone
    let roles: Vec<u64> = before.iter().map(|(_, t, _)| *t).collect();
    let gone: std::collections::HashSet<u64> = threads
        .iter()
        .filter(|r| r["exited"] == true)
        .map(|r| u64_of(r, "pid"))
        .filter(|t| !roles.contains(t))
        .collect();
    assert!(churned >= 20, "{churned}");
    assert_eq!(gone.len() as u64, churned);
}

/// `-p 0 -c N` is CPU N's run queue: threads pinned to CPU 1 show there with
/// every wait the kernel counted, and never on CPU 0's.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn idle_task_stands_for_its_cpus_run_queue() {
    need_root();
    let pi = ProcImage::start("sched_idle", &["-S"]);
    let mut w = Workload::start(&["sched-classes", "--secs", "3"]);
    let pid = w.pid() as u64;
    let before = class_threads(&w);
    pi.control_ok(&["-a", "-p", "0", "-c", "1", "-S"]);
    run_to_end(&pi, &mut w);
    let recs = pi.records();
    for (role, tid, (_, waits0)) in &before {
        let waits: u64 = recs
            .iter()
            .filter(|r| r["event"] == "schedule_thread" && r["pid"] == *tid)
            .map(|r| u64_of(r, "count"))
            .sum();
        let kernel = schedstat(pid, *tid).1 - waits0;
        assert!(
            close_to(waits, kernel),
            "{role} {tid} on CPU 1: {waits} vs {kernel}"
        );
    }
    let cpu1: Vec<&Value> = recs.iter().filter(|r| r["event"] == "schedule").collect();
    assert!(cpu1.iter().all(|r| r["pid"] == 0));
    let busy: Vec<&&Value> = cpu1.iter().filter(|r| u64_of(r, "count") > 0).collect();
    assert!(busy.len() >= 3, "{} busy intervals", busy.len());
    assert!(busy
        .iter()
        .all(|r| u64_of(r, "avg_ns") > 0 && u64_of(r, "max_ns") > 0));

    // the same threads on CPU 0's run queue: never (started untraced: a
    // thread's first run may be anywhere before it pins itself)
    pi.control_ok(&["-d"]);
    let mut w0 = Workload::start(&["sched-classes", "--secs", "2"]);
    let tids: Vec<u64> = class_threads(&w0).iter().map(|(_, t, _)| *t).collect();
    pi.control_ok(&["-a", "-p", "0", "-c", "0", "-S"]);
    let from = proc_image::sys::monotonic_ns();
    run_to_end(&pi, &mut w0);
    let recs = pi.finish();
    let cpu0: Vec<&Value> = recs.iter().filter(|r| u64_of(r, "ts_ns") > from).collect();
    assert!(cpu0.iter().any(|r| r["event"] == "schedule_thread"));
    assert!(!cpu0
        .iter()
        .any(|r| r["event"] == "schedule_thread" && tids.contains(&u64_of(r, "pid"))));
    drop(w);
}

/// The whole system: the workload's threads are among the listed ones, with
/// their class and every wait the kernel counted; no wait is counted twice
/// (the threads' waits never exceed the interval's total, and what they
/// miss is `missed_threads`); with --top, the rest are summed.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_lists_each_threads_waits() {
    need_root();
    let pi = ProcImage::start("sched_system", &["-S"]);
    let mut w = Workload::start(&["sched-classes", "--secs", "3"]);
    let pid = w.pid() as u64;
    let before = class_threads(&w);
    pi.control_ok(&["-a", "-S"]);
    run_to_end(&pi, &mut w);
    let recs = pi.finish();
    let threads: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "schedule_thread")
        .collect();
    for (role, tid, (_, waits0)) in &before {
        let mine: Vec<&&Value> = threads.iter().filter(|r| r["pid"] == *tid).collect();
        let waits: u64 = mine.iter().map(|r| u64_of(r, "count")).sum();
        let kernel = schedstat(pid, *tid).1 - waits0;
        assert!(close_to(waits, kernel), "{role} {tid}: {waits} vs {kernel}");
        let want = if role == "batch" { "batch" } else { "normal" };
        assert!(
            mine.iter().all(|r| r["policy"] == want && r["tgid"] == pid),
            "{role}"
        );
        assert!(mine.iter().all(|r| r["cgroup"].is_string()), "{role}");
    }
    for t in recs.iter().filter(|r| r["event"] == "schedule") {
        let n: u64 = threads
            .iter()
            .filter(|r| r["ts_ns"] == t["ts_ns"])
            .map(|r| u64_of(r, "count"))
            .sum();
        assert_eq!(n + u64_of(t, "missed_threads"), u64_of(t, "count"), "{t}");
    }
}

/// --top N lists the N most waiting threads and sums the others.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn top_threads_and_the_rest_add_up() {
    need_root();
    let pi = ProcImage::start("sched_top", &["-S", "--top", "2"]);
    let mut w = Workload::start(&["sched-classes", "--secs", "2"]);
    class_threads(&w);
    pi.control_ok(&["-a", "-S"]);
    run_to_end(&pi, &mut w);
    let recs = pi.finish();
    for t in recs.iter().filter(|r| r["event"] == "schedule") {
        let at: Vec<&Value> = recs
            .iter()
            .filter(|r| r["ts_ns"] == t["ts_ns"] && r["event"] != "schedule")
            .collect();
        let listed = at
            .iter()
            .filter(|r| r["event"] == "schedule_thread")
            .count();
        let rest: Vec<&&Value> = at
            .iter()
            .filter(|r| r["event"] == "schedule_thread_rest")
            .collect();
        assert!(listed <= 2, "{listed} listed");
        let n: u64 = at.iter().map(|r| u64_of(r, "count")).sum();
        assert_eq!(n + u64_of(t, "missed_threads"), u64_of(t, "count"), "{t}");
        if u64_of(t, "threads") > 2 {
            assert_eq!(rest.len(), 1);
            assert_eq!(u64_of(rest[0], "threads") + 2, u64_of(t, "threads"));
        }
    }
}
