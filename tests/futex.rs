//! futex end to end, against workloads whose contention is known: rounds in
//! which a holder thread keeps a mutex (the C library's, or Rust's
//! std::sync::Mutex) until the waiter sleeps in its futex wait and at least
//! 50 ms, then releases it. Each round is exactly one contended wait of the
//! waiter, ended by the holder's wake; the workload reports the times that
//! bound it. A thread that locks and unlocks alone never enters the kernel.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The workload's rounds, from its truth lines.
fn rounds(w: &Workload) -> Vec<Value> {
    w.truth("futex_done"); // all of them are out
    w.truths("futex_round")
}

fn futex_waits(recs: &[Value], tgid: u64) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["collector"] == "futex" && r["event"] == "futex_wait" && r["tgid"] == tgid)
        .collect()
}

/// Every round is one futex_wait of its waiter on the mutex, within the
/// bounds the workload measured, woken by its holder; nothing else waits on
/// the mutex, and the thread that locked alone never waited at all.
#[track_caller]
fn check_rounds(recs: &[Value], w: &Workload, tgid: u64) {
    let rounds = rounds(w);
    assert!(!rounds.is_empty());
    let uaddr = rounds[0]["uaddr"].as_str().unwrap().to_string();
    let waits = futex_waits(recs, tgid);
    let on_mutex: Vec<&&Value> = waits.iter().filter(|r| r["uaddr"] == uaddr).collect();
    assert_eq!(
        on_mutex.len(),
        rounds.len(),
        "one contended wait per round on {uaddr}: {on_mutex:#?}"
    );
    for round in &rounds {
        let (waiter, holder) = (u64_of(round, "waiter"), u64_of(round, "holder"));
        let (request, blocked, release, acquire) = (
            u64_of(round, "request_ns"),
            u64_of(round, "blocked_ns"),
            u64_of(round, "release_ns"),
            u64_of(round, "acquire_ns"),
        );
        let mine: Vec<&&&Value> = on_mutex
            .iter()
            .filter(|r| r["pid"] == waiter && (release..=acquire).contains(&u64_of(r, "ts_ns")))
            .collect();
        assert_eq!(mine.len(), 1, "round {round}: {mine:?}");
        let r = mine[0];
        let wait = u64_of(r, "wait_ns");
        // entered before the holder saw it asleep, returned after the release
        assert!(
            wait >= release - blocked && wait <= acquire - request,
            "round {round}: wait {wait} ns out of its bounds"
        );
        assert!(
            ["wait", "wait_bitset"].contains(&r["op"].as_str().unwrap()),
            "{r}"
        );
        assert_eq!((r["ret"].as_i64(), r.get("error")), (Some(0), None), "{r}");
        assert_eq!(r["comm"], "fx-waiter");
        assert_eq!(r["woken_by"]["pid"], holder, "{r}");
        assert_eq!(r["woken_by"]["tgid"], tgid, "{r}");
        assert_eq!(r["woken_by"]["comm"], "fx-holder", "{r}");
        assert!(u64_of(r, "wake_latency_ns") <= wait);
    }
    // a wait that timed out: its error, and no waker (a timer ended it)
    let timeout = w.truth("futex_timeout");
    let (start, end) = (u64_of(&timeout, "start_ns"), u64_of(&timeout, "end_ns"));
    let timed_out: Vec<&&Value> = waits
        .iter()
        .filter(|r| r["pid"] == timeout["tid"] && (start..=end).contains(&u64_of(r, "ts_ns")))
        .collect();
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    let t = timed_out[0];
    assert_eq!(
        (t["error"].as_str(), t["ret"].as_i64()),
        (Some("ETIMEDOUT"), Some(-i64::from(libc::ETIMEDOUT))),
        "{t}"
    );
    assert!(t.get("woken_by").is_none(), "{t}");
    assert!(u64_of(t, "wait_ns") >= 20_000_000 && u64_of(t, "wait_ns") <= end - start);

    // uncontended locking never waits
    let solo = u64_of(&w.truth("futex_solo"), "tid");
    assert!(u64_of(&w.truth("futex_solo"), "ops") > 0);
    let solo_waits: Vec<&&Value> = waits.iter().filter(|r| r["pid"] == solo).collect();
    assert!(solo_waits.is_empty(), "{solo_waits:?}");

    // the summaries add up to the rounds, over several intervals
    let sums: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "futex_summary" && r["tgid"] == tgid && r["uaddr"] == uaddr)
        .collect();
    assert!(sums.len() >= 3, "{} intervals", sums.len());
    let total = |k: &str| sums.iter().map(|s| u64_of(s, k)).sum::<u64>();
    assert_eq!(total("waits"), rounds.len() as u64);
    assert_eq!(total("wakes"), rounds.len() as u64);
    // each round: the holder's unlock, and the waiter's (it cannot know it was the last)
    assert_eq!(total("wake_calls"), 2 * rounds.len() as u64);
    let waited: u64 = on_mutex.iter().map(|r| u64_of(r, "wait_ns")).sum();
    assert_eq!(total("wait_total_ns"), waited);
    let waiters: HashSet<u64> = rounds.iter().map(|r| u64_of(r, "waiter")).collect();
    let holders: HashSet<u64> = rounds.iter().map(|r| u64_of(r, "holder")).collect();
    for s in &sums {
        assert_eq!(u64_of(s, "waiters_max"), 1, "{s}");
        let top_w: u64 = s["top_waiters"]
            .as_array()
            .unwrap()
            .iter()
            .inspect(|p| assert!(waiters.contains(&u64_of(p, "pid")), "{s}"))
            .map(|p| u64_of(p, "count"))
            .sum();
        let top_k: u64 = s["top_wakers"]
            .as_array()
            .unwrap()
            .iter()
            .inspect(|p| {
                assert!(
                    holders.contains(&u64_of(p, "pid")) && p["comm"] == "fx-holder",
                    "{s}"
                )
            })
            .map(|p| u64_of(p, "count"))
            .sum();
        // a batch's pair of threads per interval, at most three batches
        assert!(
            top_w <= u64_of(s, "waits") && top_k <= u64_of(s, "wakes"),
            "{s}"
        );
    }
}

fn contention(test: &str, lock: &str, trace: Option<&PathBuf>) -> (Vec<Value>, Workload) {
    let mut args = vec!["-M"];
    let trace_arg;
    if let Some(path) = trace {
        trace_arg = path.to_str().unwrap().to_string();
        args.extend(["--trace-out", &trace_arg]);
    }
    let pi = ProcImage::start(test, &args);
    let mut w = Workload::start(&["futex", "--lock", lock, "--rounds", "60", "--batch", "10"]);
    w.wait_truth("ready", Duration::from_secs(10));
    let pid = w.pid().to_string();
    pi.control_ok(&["-a", "-P", &pid, "-M"]);
    w.go();
    w.wait_truth("futex_done", Duration::from_secs(60));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(10), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    (recs, w)
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn pthread_mutex_contention_is_counted_and_its_holder_named() {
    need_root();
    let (recs, w) = contention("futex_pthread", "pthread", None);
    check_rounds(&recs, &w, u64::from(w.pid()));
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn std_mutex_contention_is_counted_and_traced_with_flows() {
    need_root();
    let path = std::env::temp_dir().join(format!("pi_futex_trace_{}.json", std::process::id()));
    let (recs, w) = contention("futex_std", "std", Some(&path));
    let tgid = u64::from(w.pid());
    check_rounds(&recs, &w, tgid);

    // the trace: a futex wait slice on each waiter's track, and a flow
    // from its holder's track into it
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let events: Vec<Value> = serde_json::from_str(&text).unwrap();
    let rounds = rounds(&w);
    let waiters: HashSet<u64> = rounds.iter().map(|r| u64_of(r, "waiter")).collect();
    let holders: HashSet<u64> = rounds.iter().map(|r| u64_of(r, "holder")).collect();
    let waits: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == "futex wait" && e["pid"] == tgid)
        .filter(|e| waiters.contains(&u64_of(e, "tid")))
        .collect();
    assert_eq!(waits.len(), rounds.len());
    let mut flows: HashMap<u64, (Option<u64>, Option<u64>)> = HashMap::new();
    for e in events.iter().filter(|e| e["cat"] == "futex") {
        let slot = flows.entry(e["id"].as_u64().unwrap_or(0)).or_default();
        match e["ph"].as_str() {
            Some("s") => slot.0 = Some(u64_of(e, "tid")),
            Some("f") => slot.1 = Some(u64_of(e, "tid")),
            _ => {}
        }
    }
    let holder_to_waiter = flows
        .values()
        .filter(|(s, f)| {
            s.is_some_and(|s| holders.contains(&s)) && f.is_some_and(|f| waiters.contains(&f))
        })
        .count();
    assert_eq!(holder_to_waiter, rounds.len(), "{flows:?}");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn the_whole_system_sees_both_workloads_at_once() {
    need_root();
    let pi = ProcImage::start("futex_system", &["-M"]);
    let mut a = Workload::start(&["futex", "--lock", "pthread", "--rounds", "60"]);
    let mut b = Workload::start(&["futex", "--lock", "std", "--rounds", "60"]);
    a.wait_truth("ready", Duration::from_secs(10));
    b.wait_truth("ready", Duration::from_secs(10));
    pi.control_ok(&["-a", "-M"]);
    a.go();
    b.go();
    a.wait_truth("futex_done", Duration::from_secs(60));
    b.wait_truth("futex_done", Duration::from_secs(60));
    assert!(a.wait().success() && b.wait().success());
    // the last interval's summaries
    std::thread::sleep(Duration::from_millis(1500));
    let recs = pi.finish();
    for w in [&a, &b] {
        check_rounds(&recs, w, u64::from(w.pid()));
        // whole-system records carry the thread's cgroup
        let r = futex_waits(&recs, u64::from(w.pid()))[0];
        assert!(
            r.get("cgroup_id").is_some() && r.get("cgroup").is_some(),
            "{r}"
        );
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn min_us_keeps_short_waits_out_of_records_but_in_the_summaries() {
    need_root();
    let pi = ProcImage::start("futex_min", &["-M"]);
    let mut w = Workload::start(&["futex", "--rounds", "30", "--hold-ms", "20"]);
    w.wait_truth("ready", Duration::from_secs(10));
    let pid = w.pid().to_string();
    // every round waits ~20 ms: none reaches 200 ms
    pi.control_ok(&["-a", "-P", &pid, "-M", "--futex-min-us", "200000"]);
    w.go();
    w.wait_truth("futex_done", Duration::from_secs(60));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(10), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    let rounds = rounds(&w);
    let uaddr = rounds[0]["uaddr"].as_str().unwrap();
    let tgid = u64::from(w.pid());
    assert!(futex_waits(&recs, tgid)
        .iter()
        .all(|r| r["uaddr"] != uaddr && u64_of(r, "wait_ns") >= 200_000_000));
    let waits: u64 = recs
        .iter()
        .filter(|r| r["event"] == "futex_summary" && r["tgid"] == tgid && r["uaddr"] == uaddr)
        .map(|r| u64_of(r, "waits"))
        .sum();
    assert_eq!(waits, rounds.len() as u64);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_lock_is_refused_and_points_to_futex() {
    need_root();
    let pi = ProcImage::start("futex_lock_refused", &["-l", "-M"]);
    let out = pi.controller(&["-a", "-l"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("-M") && err.contains("futex"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // an idle task makes no futex calls
    let out = pi.controller(&["-a", "-p", "0", "-c", "0", "-M"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("idle task"), "{err}");
    // and -M alone is taken for the whole system
    pi.control_ok(&["-a", "-M"]);
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn one_thread_alone_is_traced_with_p() {
    need_root();
    let pi = ProcImage::start("futex_thread", &["-M"]);
    let mut w = Workload::start(&["futex", "--rounds", "20", "--batch", "5"]);
    w.wait_truth("ready", Duration::from_secs(10));
    let pid = w.pid().to_string();
    // the main thread: it joins the others and parks at the end, no more
    pi.control_ok(&["-a", "-p", &pid, "-M"]);
    w.go();
    w.wait_truth("futex_done", Duration::from_secs(60));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(10), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    let tgid = u64::from(w.pid());
    let waits = futex_waits(&recs, tgid);
    assert!(waits.iter().all(|r| r["pid"] == tgid), "{waits:?}");
    assert!(
        waits.iter().any(|r| r["error"] == "ETIMEDOUT"),
        "the main thread's timed-out park: {waits:?}"
    );
    let mutex = &rounds(&w)[0]["uaddr"];
    assert!(waits.iter().all(|r| &r["uaddr"] != mutex), "{waits:?}");
    for s in recs.iter().filter(|r| r["event"] == "futex_summary") {
        assert!(&s["uaddr"] != mutex, "{s}");
        for p in s["top_waiters"].as_array().unwrap() {
            assert_eq!(p["pid"], tgid, "{s}");
        }
    }
}
