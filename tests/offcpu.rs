//! keytime -k 2: off-CPU stacks, end to end. The `offcpu` workload has one
//! thread that sleeps in `offcpu_nanosleep_here`, one that reads a pipe in
//! `offcpu_pipe_read_here` and one that takes a pthread mutex the main
//! thread holds in `offcpu_mutex_lock_here`, 20 ms at a time, over several
//! reporting intervals (default interval), and says how often each blocked.
//!
//! The workload and Debian's glibc are built without frame pointers (the
//! distribution's and cargo's defaults): the user stacks are right only if
//! they are unwound with .eh_frame through the libc wrapper to the
//! workload's own function and its caller.

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

/// The user frames' (function, module), innermost first.
fn user_frames(r: &Value) -> Vec<(&str, &str)> {
    frames(r)
        .iter()
        .filter(|f| f["module"] != "kernel")
        .map(|f| {
            (
                f["fn"].as_str().unwrap_or(""),
                f["module"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

/// The user stack has `func` (in the workload's binary) and, right after
/// it, its caller, named, in the workload's binary too.
#[track_caller]
fn has_function_and_caller(r: &Value, func: &str) {
    let user = user_frames(r);
    let at = user
        .iter()
        .position(|(f, _)| f.ends_with(func))
        .unwrap_or_else(|| panic!("no {func} in the user stack: {r}"));
    assert!(user[at].1.ends_with("proc_image_workload"), "{r}");
    let (caller, module) = user.get(at + 1).unwrap_or_else(|| panic!("no caller: {r}"));
    assert!(
        caller.contains("proc_image_workload::") && module.ends_with("proc_image_workload"),
        "the caller of {func} is not named: {r}"
    );
    assert!(r.get("unwind").is_none(), "{r}");
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
    let (pi, w) = run_with(test, &["-k"], secs, flags);
    (pi.finish(), w)
}

/// `run`, with these proc_image arguments, leaving proc_image running.
fn run_with(test: &str, pi_args: &[&str], secs: &str, flags: &[&str]) -> (ProcImage, Workload) {
    let pi = ProcImage::start(test, pi_args);
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
    (pi, w)
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn level2_stacks_name_where_threads_block() {
    need_root();
    let dir = std::env::temp_dir().join("proc_image_offcpu_level2");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let folded = dir.join("off.folded");
    let folded_arg = folded.to_str().unwrap();
    let svg = dir.join("off.svg");
    let (pi, w) = run_with(
        "offcpu_level2",
        &[
            "-k",
            "--folded",
            folded_arg,
            "--flamegraph",
            svg.to_str().unwrap(),
        ],
        "4",
        &["-k", "2"],
    );
    // the target's exit ended the activation: the file is written already
    let written = wait_until(Duration::from_secs(10), || {
        std::fs::metadata(&folded).is_ok_and(|m| m.len() > 0)
    });
    assert!(written, "--folded not written at the deactivation");
    let recs = pi.finish();
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let reader = u64_of(&w.truth("reader"), "tid");
    let slept = u64_of(&w.truth("slept"), "count");
    let read = u64_of(&w.truth("read"), "count");
    assert!(
        slept > 50 && read > 50,
        "workload blocked {slept} / {read} times"
    );

    // a stack exactly for the stretches of 1 ms (the default) and longer,
    // but the first: a new thread's wait for its first run follows no
    // switch-out, so it has no user stack to show (under load it can last
    // milliseconds); and but one whose switch-in the kernel did not trace
    // (this VM has a few in ten seconds): placed after the fact, stackless
    for tid in [sleeper, reader] {
        for r in off_cpu_of(&recs, tid).into_iter().skip(1) {
            let long = u64_of(r, "duration_ns") >= 1_000_000;
            let unseen = r["switch_in_unseen"] == true;
            assert_eq!(r.get("stack").is_some(), long && !unseen, "{r}");
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
        has_function_and_caller(r, "offcpu_nanosleep_here");
        // its caller was inlined into the loop: named, at its own line
        let frames = frames(r);
        let at = frames
            .iter()
            .position(|f| {
                f["fn"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("offcpu_nanosleep_here"))
            })
            .unwrap();
        let (inlined, outer) = (&frames[at + 1], &frames[at + 2]);
        assert!(
            inlined["fn"]
                .as_str()
                .unwrap()
                .ends_with("offcpu_sleep_inlined")
                && inlined["inlined"] == true
                && inlined["line"].as_u64().is_some(),
            "{r}"
        );
        assert!(
            outer["fn"]
                .as_str()
                .unwrap()
                .ends_with("offcpu_sleeper_loop")
                && outer.get("inlined").is_none()
                && outer["line"] != inlined["line"],
            "{r}"
        );
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
        has_function_and_caller(r, "offcpu_pipe_read_here");
    }
    // the contended pthread mutex: a futex wait in the kernel, glibc's lock
    // path (no frame pointers) in user space, then the workload's function
    let locker = u64_of(&w.truth("locker"), "tid");
    let locked = u64_of(&w.truth("locked"), "count");
    // (the workload's own reports take stdout's lock, which another of its
    // threads may hold: a wait there is not the mutex under test)
    let waits: Vec<&Value> = with(locker, "futex_wait")
        .into_iter()
        .filter(|r| r["reason"] != "preempted")
        .filter(|r| {
            !user_frames(r)
                .iter()
                .any(|(f, _)| f.contains("proc_image_workload::say"))
        })
        .collect();
    assert!(
        waits.len() as u64 >= locked / 2,
        "{} of {locked} lock waits have futex_wait in their stack",
        waits.len()
    );
    for r in &waits {
        let user = user_frames(r);
        assert!(
            user.iter()
                .any(|(f, m)| f.contains("pthread_mutex_lock") && m.contains("libc")),
            "{r}"
        );
        has_function_and_caller(r, "offcpu_mutex_lock_here");
    }
    // every frame is named: kernel frames from kallsyms, user ones with an offset
    for r in sleeps.iter().chain(&reads) {
        for f in frames(r) {
            assert!(!f["fn"].as_str().unwrap().is_empty(), "{r}");
        }
    }

    // --folded: the same stacks, root first, weighted by their off-CPU ns
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(&folded).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&folded).unwrap();
    let lines: Vec<(&str, u64)> = text
        .lines()
        .map(|l| {
            let (stack, ns) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            (stack, ns.parse().unwrap_or_else(|_| panic!("{l:?}")))
        })
        .collect();
    let weight_of = |kfn: &str| -> u64 {
        lines
            .iter()
            .filter(|(s, _)| s.split(';').any(|f| f.contains(kfn) && f.ends_with("_[k]")))
            .map(|(_, ns)| ns)
            .sum()
    };
    let ns_of = |rs: &[&Value]| rs.iter().map(|r| u64_of(r, "duration_ns")).sum::<u64>();
    // every thread's (the main thread sleeps between its writes too)
    let tgid = u64::from(w.pid());
    let all = |kfn: &str| -> Vec<&Value> {
        recs.iter()
            .filter(|r| r["event"] == "off_cpu" && r["tgid"] == tgid)
            .filter(|r| kernel_fns(r).iter().any(|f| f.contains(kfn)))
            .collect()
    };
    assert_eq!(
        weight_of("hrtimer_nanosleep"),
        ns_of(&all("hrtimer_nanosleep"))
    );
    assert_eq!(weight_of("pipe_read"), ns_of(&all("pipe_read")));
    // each slept at least 20 ms
    assert!(ns_of(&sleeps) >= sleeps.len() as u64 * 20_000_000);
    for (stack, _) in lines
        .iter()
        .filter(|(s, _)| s.contains("hrtimer_nanosleep"))
    {
        let f: Vec<&str> = stack.split(';').collect();
        assert_eq!(
            f[0], "proc_image_work",
            "the thread's comm is the root: {stack}"
        );
        // user frames before kernel frames, the syscall entry first of these
        let k = f.iter().position(|x| x.ends_with("_[k]")).unwrap();
        assert!(f[k].starts_with("entry_SYSCALL"), "{stack}");
        assert!(f[k..].iter().all(|x| x.ends_with("_[k]")), "{stack}");
        assert!(f[k - 1].contains("nanosleep"), "{stack}");
        assert!(
            f.iter().any(|x| x.ends_with("offcpu_nanosleep_here"))
                || f.iter().any(|x| x.ends_with("::sleep")),
            "{stack}"
        );
    }
    // --flamegraph: an SVG with those frames, 0600
    let meta = std::fs::symlink_metadata(&svg).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<?xml") && svg_text.trim_end().ends_with("</svg>"));
    // (inferno colors by the _[k] mark and drops it from the name)
    for name in [
        "hrtimer_nanosleep",
        "pipe_read",
        "proc_image_work",
        "offcpu_nanosleep_here",
        "offcpu_pipe_read_here",
    ] {
        assert!(svg_text.contains(name), "{name} not in the flame graph");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn folded_refuses_a_symlink() {
    need_root();
    let dir = std::env::temp_dir().join("proc_image_offcpu_symlink");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(dir.join("victim"), &link).unwrap();
    let out = std::process::Command::new(PROC_IMAGE)
        .args(["-k", "--folded", link.to_str().unwrap(), "--pin-dir"])
        .arg(pin_dir("offcpu_symlink"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("symbolic link") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!dir.join("victim").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn stack_min_us_and_level1_leave_stacks_out() {
    need_root();
    // 20 ms blocks, under a 50 ms threshold: no stacks, the same records
    let (recs, w) = run("offcpu_min", "3", &["-k", "2", "--stack-min-us", "50000"]);
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let offs = off_cpu_of(&recs, sleeper);
    assert!(offs.len() > 20, "{} off_cpu records", offs.len());
    for r in &offs {
        // (a switch-in the kernel did not trace leaves its stretch stackless)
        let long = u64_of(r, "duration_ns") >= 50_000_000 && r["switch_in_unseen"] != true;
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

/// The records of a process that has ended before proc_image decodes them
/// still get named frames: proc_image is stopped (SIGSTOP) while the
/// workload blocks, exits and is reaped, so every record waits in the ring
/// buffer until the process is gone.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn stacks_of_a_process_that_has_ended_are_named() {
    need_root();
    let pi = ProcImage::start("offcpu_ended", &["-k"]);
    let mut w = Workload::start(&["offcpu", "--secs", "1"]);
    w.wait_truth("ready", Duration::from_secs(10));
    let pid = w.pid().to_string();
    pi.control_ok(&["-a", "-P", &pid, "-k", "2"]);
    let pi_pid = pi.child.id() as i32;
    unsafe { libc::kill(pi_pid, libc::SIGSTOP) };
    w.go();
    let done = w.wait().success();
    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
    unsafe { libc::kill(pi_pid, libc::SIGCONT) };
    assert!(done && gone, "the workload should have ended");
    let tgid = u64::from(w.pid());
    pi.wait_for(Duration::from_secs(20), |r| {
        r["event"] == "exit" && r["tgid"] == tgid && r["group_dead"] == true
    });
    let recs = pi.finish();
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let sleeps: Vec<&Value> = off_cpu_of(&recs, sleeper)
        .into_iter()
        .filter(|r| r.get("stack").is_some())
        .collect();
    assert!(sleeps.len() > 20, "{} sleeps with stacks", sleeps.len());
    for r in &sleeps {
        has_function_and_caller(r, "offcpu_nanosleep_here");
    }
}
