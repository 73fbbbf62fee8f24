//! syscall end to end: a workload that makes a known list of syscalls and
//! nothing else, checked against itself and against strace -c.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const GETPPID: u64 = 10_000;
const WRITES: u64 = 500;
const SLEEP_MS: u64 = 50;

fn workload_args() -> Vec<String> {
    [
        "syscalls",
        "--getppid",
        &GETPPID.to_string(),
        "--writes",
        &WRITES.to_string(),
        "--sleep-ms",
        &SLEEP_MS.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn top_counts(rec: &Value) -> HashMap<String, u64> {
    rec["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                t["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn known_syscalls_are_counted_exactly() {
    if !need_root() {
        return;
    }
    let pi = ProcImage::start("syscall", &["-s"]);
    let args = workload_args();
    let mut w = Workload::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = w.pid() as u64;
    // one long interval: the whole run lands in one report, flushed when the target exits
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-s", "10", "-i", "60000"]);
    let went = proc_image::sys::monotonic_ns();
    w.go();
    assert!(w.wait().success());
    let ended = proc_image::sys::monotonic_ns();
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "syscalls"
            && r["pid"] == pid),
        "no syscall record:\n{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    let thread: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "syscalls" && r["pid"] == pid)
        .collect();
    assert_eq!(thread.len(), 1, "{thread:?}");
    let t = thread[0];

    // exactly what the workload made: getppid, write, nanosleep, getpid, getuid, getgid
    // (exit_group never returns, so it is in the sequence but not counted)
    assert_eq!(u64_of(t, "count"), GETPPID + WRITES + 4, "{t}");
    let top = t["top"].as_array().unwrap();
    assert_eq!(
        (top[0]["name"].as_str(), top[0]["count"].as_u64()),
        (Some("getppid"), Some(GETPPID))
    );
    assert_eq!(
        (top[1]["name"].as_str(), top[1]["count"].as_u64()),
        (Some("write"), Some(WRITES))
    );
    assert_eq!(top[2]["count"], 1);

    // the sleep is the slowest syscall
    let max = u64_of(t, "max_ns");
    assert!(
        max >= SLEEP_MS * 1_000_000,
        "max {max} ns < the {SLEEP_MS} ms sleep"
    );
    assert!(u64_of(t, "min_ns") <= u64_of(t, "avg_ns") && u64_of(t, "avg_ns") <= max);

    // the sequence ends with the known final syscalls, in order
    let seq: Vec<&str> = t["sequence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(seq.len(), 10);
    assert_eq!(
        &seq[4..],
        [
            "write",
            "clock_nanosleep",
            "getpid",
            "getuid",
            "getgid",
            "exit_group"
        ],
        "{seq:?}"
    );

    // each syscall of the sequence as a span: in order, not overlapping,
    // inside the run as this test's clock saw it; the sleep lasts as long as
    // the slowest syscall, exit_group never returns
    let spans: Vec<(u64, u64)> = t["sequence_spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
        .collect();
    assert_eq!(spans.len(), seq.len());
    for pair in spans.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{spans:?}");
    }
    assert!(spans[0].0 >= went && spans[9].0 <= ended, "{spans:?}");
    assert_eq!(spans[5].1, max, "the clock_nanosleep span");
    assert_eq!(spans[9].1, 0, "exit_group returned?");
    assert!(spans[..9].iter().all(|s| s.1 > 0), "{spans:?}");

    // the target is a subset of the system in the same interval
    assert!(u64_of(t, "sys_count") >= u64_of(t, "count"));
    assert!(u64_of(t, "sys_max_ns") >= max);
    assert!(u64_of(t, "sys_min_ns") <= u64_of(t, "min_ns"));

    // and the target's total agrees with its one thread
    let total = recs
        .iter()
        .find(|r| {
            r["event"] == "syscalls_total" && r["tgid"] == pid && r["count"].as_u64() > Some(0)
        })
        .expect("total record");
    assert_eq!(u64_of(total, "count"), u64_of(t, "count"));
    assert_eq!(top_counts(total), top_counts(t));
    let hist_sum: u64 = total["hist"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(hist_sum, u64_of(total, "count"));
}

/// strace -c -f on the same workload counts the same syscalls.
#[test]
fn counts_agree_with_strace() {
    if !need_root() {
        return;
    }
    let pi = ProcImage::start("strace", &["-s"]);
    let args = workload_args();
    let mut w = Workload::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let pid = w.pid() as u64;
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-s", "-i", "60000"]);
    w.go();
    assert!(w.wait().success());
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "syscalls"
            && r["pid"] == pid)
    );
    let recs = pi.finish();
    let ours = top_counts(
        recs.iter()
            .find(|r| r["event"] == "syscalls" && r["pid"] == pid)
            .unwrap(),
    );

    let out_file = std::env::temp_dir().join(format!("pi_strace_{}", std::process::id()));
    let mut strace = Command::new("strace")
        .args(["-f", "-c", "-o"])
        .arg(&out_file)
        .arg(WORKLOAD)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("strace (apt-get install strace)");
    std::io::Write::write_all(strace.stdin.as_mut().unwrap(), b"go\n").unwrap();
    assert!(strace.wait().unwrap().success());
    let table = std::fs::read_to_string(&out_file).unwrap();
    let _ = std::fs::remove_file(&out_file);
    // "  % time  seconds  usecs/call  calls  errors syscall": calls is the
    // 4th column, the name the last
    let calls = |name: &str| -> u64 {
        table
            .lines()
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.last() == Some(&name)).then(|| cols[3].parse().unwrap())
            })
            .next()
            .unwrap_or(0)
    };
    for name in ["getppid", "write"] {
        assert_eq!(
            ours.get(name).copied(),
            Some(calls(name)),
            "{name}: strace says\n{table}"
        );
    }
}
