//! A collector the kernel refuses: with -a (or no collector named) it is
//! reported in one line with the verifier's reason and the others run; named
//! explicitly, it is an error. The refusal is real: PROC_IMAGE_TEST_REFUSE
//! points the collector's tp_btf programs at a tracepoint of one argument
//! (as an old kernel's sched_switch lacks prev_state), and the kernel's
//! verifier rejects their reads of the arguments that are not there.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;

fn refuse_schedule() {
    // every test of this file wants the same value: no race between them
    std::env::set_var("PROC_IMAGE_TEST_REFUSE", "schedule");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn all_collectors_run_without_the_one_refused() {
    need_root();
    refuse_schedule();
    let port = free_port();
    let pi = ProcImage::start(
        "partial",
        &["-a", "--metrics", &format!("127.0.0.1:{port}")],
    );
    let err = pi.stderr_text();
    // one line for the refusal, with the verifier's own words
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("not loaded")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(
            "proc_image: schedule not loaded: the kernel's verifier refused program handle__"
        ) && lines[0].contains("invalid bpf_context access"),
        "{err}"
    );
    assert!(
        err.contains("loaded keytime, lock, resource, syscall, futex; ready"),
        "{err}"
    );
    // each collector's state, and why the refused one is not loaded
    let status = pi.control_ok(&["--status"]);
    for want in [
        "ready; loaded keytime, lock, resource, syscall, futex\n",
        "  schedule  not loaded: refused by the kernel",
        "  keytime   loaded, inactive",
        "note: schedule: the kernel's verifier refused program handle__",
    ] {
        assert!(status.contains(want), "no {want:?} in\n{status}");
    }
    let metrics = scrape(port);
    for (c, v) in [
        ("keytime", 1),
        ("lock", 1),
        ("resource", 1),
        ("syscall", 1),
        ("schedule", 0),
        ("futex", 1),
    ] {
        let line = format!("proc_image_collector_loaded{{collector=\"{c}\"}} {v}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }

    // the others run: keytime sees the workload's exit
    let mut w = Workload::start(&[
        "lifecycle",
        "--forks",
        "1",
        "--vforks",
        "0",
        "--threads",
        "1",
    ]);
    let pid = w.pid() as u64;
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k", "-s"]);
    w.go();
    assert_eq!(w.wait().code(), Some(7));
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid
            && r["exit_code"] == 7),
        "no exit record:\n{}",
        pi.stderr_text()
    );
    // asking for the refused one is an error naming it
    let out = pi.controller(&["-a", "-S"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("schedule collector is not loaded"), "{said}");
    let recs = pi.finish();
    assert!(recs
        .iter()
        .any(|r| r["collector"] == "syscall" && r["pid"] == pid));
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_refused_collector_named_explicitly_is_an_error() {
    need_root();
    refuse_schedule();
    let pin = pin_dir("refused");
    let out = Command::new(PROC_IMAGE)
        .args(["-k", "-S", "-o", "none", "--pin-dir"])
        .arg(&pin)
        .output()
        .expect("run proc_image");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("proc_image: error: the schedule collector did not load: the kernel's verifier refused program handle__")
            && err.contains("invalid bpf_context access"),
        "{err}"
    );
    assert!(!pin.exists(), "pins left in {}", pin.display());
}
