//! keytime -k 2: off-CPU stacks, end to end. The `offcpu` workload has one
//! thread that sleeps in `offcpu_nanosleep_here` and one that reads a pipe
//! in `offcpu_pipe_read_here`, 20 ms at a time, over several reporting
//! intervals (default interval), and says how often each blocked.
//!
//! User stacks are the frame-pointer walk: the workload and Debian's glibc
//! have no frame pointers, so the walk from inside the libc wrapper names
//! the wrapper (the saved instruction pointer) and then whatever the frame
//! pointer register happens to lead to; the workload's own function is not
//! asserted (DWARF unwinding is a later step, see README).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// The workload's off_cpu records of thread `tid`.
fn off_cpu_of(recs: &[Value], tid: u64) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["collector"] == "keytime" && r["event"] == "off_cpu" && r["pid"] == tid)
        .collect()
}

fn frames(r: &Value) -> &[Value] {
    r["stack"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Kernel function names of a record's stack, innermost first.
fn kernel_fns(r: &Value) -> Vec<&str> {
    frames(r)
        .iter()
        .filter(|f| f["module"] == "kernel")
        .filter_map(|f| f["fn"].as_str())
        .collect()
}

/// The innermost user frame: (function, module).
fn first_user(r: &Value) -> Option<(&str, &str)> {
    frames(r).iter().find(|f| f["module"] != "kernel").map(|f| {
        (
            f["fn"].as_str().unwrap_or(""),
            f["module"].as_str().unwrap_or(""),
        )
    })
}

/// Run the workload for `secs` under keytime with these controller flags.
fn run(test: &str, secs: &str, flags: &[&str]) -> (Vec<Value>, Workload) {
    let pi = ProcImage::start(test, &["-k"]);
    let mut w = Workload::start(&["offcpu", "--secs", secs]);
    w.wait_truth("ready", Duration::from_secs(10));
    let pid = w.pid().to_string();
    let mut args = vec!["-a", "-P", &pid];
    args.extend_from_slice(flags);
    pi.control_ok(&args);
    w.go();
    assert!(w.wait().success());
    let tgid = u64::from(w.pid());
    // the exit reaches proc_image after the last off_cpu records
    pi.wait_for(Duration::from_secs(20), |r| {
        r["event"] == "exit" && r["tgid"] == tgid && r["group_dead"] == true
    });
    (pi.finish(), w)
}

#[test]
fn level2_stacks_name_where_threads_block() {
    need_root();
    let (recs, w) = run("offcpu_level2", "4", &["-k", "2"]);
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let reader = u64_of(&w.truth("reader"), "tid");
    let slept = u64_of(&w.truth("slept"), "count");
    let read = u64_of(&w.truth("read"), "count");
    assert!(
        slept > 50 && read > 50,
        "workload blocked {slept} / {read} times"
    );

    // a stack exactly for the stretches of 1 ms (the default) and longer
    for tid in [sleeper, reader] {
        for r in off_cpu_of(&recs, tid) {
            let long = u64_of(r, "duration_ns") >= 1_000_000;
            assert_eq!(r.get("stack").is_some(), long, "{r}");
        }
    }

    let with = |tid: u64, kernel_fn: &str| -> Vec<&Value> {
        off_cpu_of(&recs, tid)
            .into_iter()
            .filter(|r| kernel_fns(r).iter().any(|f| f.contains(kernel_fn)))
            .collect()
    };
    // the sleeps: hrtimer_nanosleep in the kernel, the libc wrapper first in user space
    let sleeps = with(sleeper, "hrtimer_nanosleep");
    assert!(
        sleeps.len() as u64 >= slept / 2,
        "{} of {slept} sleeps have hrtimer_nanosleep in their stack",
        sleeps.len()
    );
    for r in &sleeps {
        let (f, module) = first_user(r).unwrap_or_else(|| panic!("no user frame: {r}"));
        assert!(f.contains("nanosleep") && module.contains("libc"), "{r}");
        assert!(u64_of(r, "duration_ns") >= 1_000_000);
    }
    // the pipe reads: pipe_read in the kernel, libc's read first in user space
    let reads = with(reader, "pipe_read");
    assert!(
        reads.len() as u64 >= read / 2,
        "{} of {read} reads have pipe_read in their stack",
        reads.len()
    );
    for r in &reads {
        assert!(kernel_fns(r).iter().any(|f| f.contains("vfs_read")), "{r}");
        let (f, module) = first_user(r).unwrap_or_else(|| panic!("no user frame: {r}"));
        assert!(f.contains("read") && module.contains("libc"), "{r}");
    }
    // every frame is named: kernel frames from kallsyms, user ones with an offset
    for r in sleeps.iter().chain(&reads) {
        for f in frames(r) {
            assert!(!f["fn"].as_str().unwrap().is_empty(), "{r}");
        }
    }
}

#[test]
fn stack_min_us_and_level1_leave_stacks_out() {
    need_root();
    // 20 ms blocks, under a 50 ms threshold: no stacks, the same records
    let (recs, w) = run("offcpu_min", "3", &["-k", "2", "--stack-min-us", "50000"]);
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let offs = off_cpu_of(&recs, sleeper);
    assert!(offs.len() > 20, "{} off_cpu records", offs.len());
    for r in &offs {
        let long = u64_of(r, "duration_ns") >= 50_000_000;
        assert_eq!(r.get("stack").is_some(), long, "{r}");
    }
    // blocked_in stays as at level 1
    assert!(offs
        .iter()
        .any(|r| r["blocked_in"] == "hrtimer_nanosleep" && r.get("stack").is_none()));

    let (recs, w) = run("offcpu_level1", "2", &["-k", "1"]);
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let offs = off_cpu_of(&recs, sleeper);
    assert!(offs.len() > 20 && offs.iter().all(|r| r.get("stack").is_none()));
}

#[test]
fn stack_min_us_needs_level2() {
    let out = std::process::Command::new(CONTROLLER)
        .args(["-a", "-k", "1", "--stack-min-us", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--stack-min-us goes with -k 2"), "{err}");
}
