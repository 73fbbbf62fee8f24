//! --trace-out end to end: the Chrome Trace Event JSON of a workload of
//! known behaviour holds exactly its lifecycle, with well-formed tracks,
//! and the file is complete however proc_image ends.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn trace_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pi_trace_{test}_{}.json", std::process::id()))
}

/// Parse the file: it must be one complete JSON array.
#[track_caller]
fn parse(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let _ = std::fs::remove_file(path);
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(events)) => events,
        other => panic!(
            "not a complete JSON array ({:?}); ends with {:?}",
            other.err(),
            &text[text.len().saturating_sub(200)..]
        ),
    }
}

fn ns(v: &Value) -> u64 {
    (v.as_f64().unwrap() * 1000.0).round() as u64
}

/// Tracks are well formed: per thread (pid, tid), "X" slices in file order
/// start no earlier than the previous one ended; instants per thread and
/// counter samples per (pid, name) are in time order.
#[track_caller]
fn check_tracks(events: &[Value]) {
    let mut slice_end: HashMap<(u64, u64), u64> = HashMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for e in events {
        let ph = e["ph"].as_str().unwrap();
        let (pid, tid) = (e["pid"].as_u64().unwrap(), e["tid"].as_u64().unwrap_or(0));
        match ph {
            "X" => {
                let (ts, dur) = (ns(&e["ts"]), ns(&e["dur"]));
                assert!(dur > 0, "{e}");
                let end = slice_end.entry((pid, tid)).or_insert(0);
                // 1 ns slack: timestamps are printed in microseconds
                assert!(ts + 1 >= *end, "overlapping slices on {pid}/{tid}: {e}");
                *end = ts + dur;
            }
            "i" | "C" => {
                let key = if ph == "i" {
                    format!("i/{pid}/{tid}")
                } else {
                    format!("C/{pid}/{}", e["name"])
                };
                let ts = ns(&e["ts"]);
                let prev = last.entry(key).or_insert(0);
                assert!(ts >= *prev, "out of order on its track: {e}");
                *prev = ts;
            }
            "M" | "b" | "e" | "s" | "f" => {}
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn trace_of_a_known_workload() {
    need_root();
    let path = trace_path("known");
    let pi = ProcImage::start("trace", &["-a", "--trace-out", path.to_str().unwrap()]);
    let mut w = Workload::start(&[
        "lifecycle",
        "--forks",
        "3",
        "--vforks",
        "2",
        "--threads",
        "4",
        "--sleep-ms",
        "200",
        "--exit-code",
        "7",
    ]);
    let pid = u64::from(w.pid());
    // its C library mapped, or lock would be left out (no pthread library)
    w.wait_truth("ready", Duration::from_secs(10));
    pi.control_ok(&["-a", "-P", &pid.to_string()]);
    w.go();
    assert_eq!(w.wait().code(), Some(7));
    pi.expect_target_gone(Duration::from_secs(10));
    let recs = pi.finish();
    let events = parse(&path);
    check_tracks(&events);
    let children = w.truth("children");
    let exec = w.truth("exec");

    // the lifecycle instants are exactly the records' lifecycle events...
    let lifecycle = [
        "fork",
        "vfork",
        "pthread_create",
        "execve",
        "execve_failed",
        "exit",
        "child_exit",
    ];
    let mut from_trace: Vec<(String, u64, u64, u64)> = events
        .iter()
        .filter(|e| e["ph"] == "i" && e["cat"] == "lifecycle")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["pid"].as_u64().unwrap(),
                e["tid"].as_u64().unwrap(),
                ns(&e["ts"]),
            )
        })
        .collect();
    let mut from_records: Vec<(String, u64, u64, u64)> = recs
        .iter()
        .filter(|r| {
            r["collector"] == "keytime" && lifecycle.contains(&r["event"].as_str().unwrap())
        })
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                u64_of(r, "tgid"),
                u64_of(r, "pid"),
                u64_of(r, "ts_ns"),
            )
        })
        .collect();
    from_trace.sort();
    from_records.sort();
    assert_eq!(from_trace.len(), from_records.len());
    for (t, r) in from_trace.iter().zip(&from_records) {
        assert_eq!((&t.0, t.1, t.2), (&r.0, r.1, r.2));
        assert!(t.3.abs_diff(r.3) <= 1, "{t:?} vs {r:?}");
    }
    // ...and those are what the workload did, from its pid
    let children_of = |name: &str| {
        sorted(
            events
                .iter()
                .filter(|e| e["ph"] == "i" && e["name"] == name && e["pid"] == pid)
                .map(|e| {
                    assert_eq!(e["tid"], pid, "{e}");
                    e["args"]["child_pid"].as_u64().unwrap()
                })
                .collect(),
        )
    };
    assert_eq!(children_of("fork"), ids(&children["forks"]));
    assert_eq!(children_of("vfork"), ids(&children["vforks"]));
    assert_eq!(children_of("pthread_create"), ids(&children["threads"]));
    let on_track = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["ph"] == "i" && e["name"] == name && e["pid"] == pid)
            .collect()
    };
    let execs = on_track("execve");
    assert_eq!(execs.len(), 1);
    assert_eq!(execs[0]["args"]["argv"], exec["argv"]);
    let exits: Vec<u64> = sorted(
        on_track("exit")
            .iter()
            .map(|e| e["tid"].as_u64().unwrap())
            .collect(),
    );
    let mut want = ids(&children["threads"]);
    want.push(pid);
    assert_eq!(exits, sorted(want));

    // the syscalls of the records' sequences that returned are async slices,
    // each once, and a thread's never overlap
    let mut from_records: Vec<(u64, String, u64, u64)> = recs
        .iter()
        .filter(|r| r["event"] == "syscalls" && r["tgid"] == pid)
        .flat_map(|r| {
            let names = r["sequence"].as_array().unwrap().clone();
            let spans = r["sequence_spans"].as_array().unwrap().clone();
            let tid = u64_of(r, "pid");
            names.into_iter().zip(spans).map(move |(n, s)| {
                (
                    tid,
                    n.as_str().unwrap().to_string(),
                    s[0].as_u64().unwrap(),
                    s[1].as_u64().unwrap(),
                )
            })
        })
        .filter(|s| s.3 > 0)
        .collect();
    from_records.sort();
    from_records.dedup();
    assert!(
        !from_records.is_empty(),
        "no syscall sequence for the workload"
    );
    let mut from_trace: Vec<(u64, String, u64, u64)> = Vec::new();
    for b in events
        .iter()
        .filter(|e| e["cat"] == "syscall" && e["ph"] == "b" && e["pid"] == pid)
    {
        let e = events
            .iter()
            .find(|e| e["cat"] == "syscall" && e["ph"] == "e" && e["id"] == b["id"])
            .unwrap_or_else(|| panic!("no end for {b}"));
        let (start, end) = (ns(&b["ts"]), ns(&e["ts"]));
        from_trace.push((
            b["tid"].as_u64().unwrap(),
            b["name"].as_str().unwrap().to_string(),
            start,
            end - start,
        ));
    }
    from_trace.sort();
    assert_eq!(from_trace.len(), from_records.len());
    for (t, r) in from_trace.iter().zip(&from_records) {
        assert_eq!((t.0, &t.1), (r.0, &r.1));
        // the trace's microseconds, back in ns
        assert!(
            t.2.abs_diff(r.2) <= 1 && t.3.abs_diff(r.3) <= 2,
            "{t:?} vs {r:?}"
        );
    }
    let mut by_time = from_records.clone();
    by_time.sort_by_key(|s| (s.0, s.2));
    for pair in by_time.windows(2).filter(|p| p[0].0 == p[1].0) {
        assert!(pair[0].2 + pair[0].3 <= pair[1].2, "{pair:?}");
    }

    // the 200 ms nanosleep is an "off-CPU: sleep" slice on the main thread
    let (start, end) = (
        u64_of(&exec, "sleep_start_ns"),
        u64_of(&exec, "sleep_end_ns"),
    );
    let asleep: u64 = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == pid && e["tid"] == pid)
        .filter(|e| e["name"] == "off-CPU: sleep")
        .filter(|e| ns(&e["ts"]) < end && ns(&e["ts"]) + ns(&e["dur"]) > start)
        .map(|e| ns(&e["dur"]))
        .sum();
    let truth = end - start;
    assert!(
        asleep * 100 >= truth * 95 && asleep <= truth + 20_000_000,
        "off-CPU sleep slices {asleep} ns for a sleep of {truth} ns"
    );
    assert!(events
        .iter()
        .any(|e| e["ph"] == "X" && e["name"] == "on-CPU" && e["pid"] == pid));
    // tracks are named by comm, grouped by process
    assert!(events.iter().any(|e| e["ph"] == "M"
        && e["name"] == "process_name"
        && e["pid"] == pid
        && e["args"]["name"] == "proc_image_work"));
    for tid in ids(&children["threads"]) {
        assert!(
            events.iter().any(|e| e["ph"] == "M"
                && e["name"] == "thread_name"
                && e["pid"] == pid
                && e["tid"] == tid),
            "thread {tid} has a named track"
        );
    }
    // the syscall and schedule collectors' per-interval figures are counters
    assert!(events
        .iter()
        .any(|e| e["ph"] == "C" && e["name"] == "syscalls/s" && e["pid"] == pid));
    assert!(events
        .iter()
        .any(|e| e["ph"] == "C" && e["name"] == "run-queue latency avg (us)"));
}

/// The trace is complete after SIGINT, SIGTERM and controller -f.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn trace_is_complete_however_proc_image_ends() {
    need_root();
    for how in ["SIGINT", "SIGTERM", "controller -f"] {
        let path = trace_path(&how.replace(' ', "_"));
        let mut pi = ProcImage::start(
            &format!("trace_end_{}", how.len()),
            &["-k", "-o", "none", "--trace-out", path.to_str().unwrap()],
        );
        let w = Workload::start(&["spin"]);
        pi.control_ok(&["-a", "-P", &w.pid().to_string()]);
        // something written and flushed
        assert!(wait_until(Duration::from_secs(10), || std::fs::metadata(
            &path
        )
        .is_ok_and(|m| m.len() > 1000)));
        match how {
            "controller -f" => {
                pi.control_ok(&["-f"]);
            }
            signal => {
                let sig = if signal == "SIGINT" {
                    libc::SIGINT
                } else {
                    libc::SIGTERM
                };
                unsafe { libc::kill(pi.child.id() as i32, sig) };
            }
        }
        let st = pi.wait_exit(Duration::from_secs(10));
        assert!(st.success(), "{how}: {st}\n{}", pi.stderr_text());
        assert!(!pi.pin_dir.exists(), "{how}: pins left");
        let events = parse(&path);
        check_tracks(&events);
        assert!(
            events.iter().filter(|e| e["ph"] == "X").count() > 10,
            "{how}: on/off-CPU slices"
        );
    }
}
