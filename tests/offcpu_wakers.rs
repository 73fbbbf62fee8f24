//! keytime -k 2: who woke a thread that was off the CPU (`woken_by`), end
//! to end. The `offcpu` workload's main thread ends the waits of two
//! threads ~20 ms at a time: a pipe read (its write) and a pthread mutex
//! (its unlock); a timer ends a third thread's nanosleeps; a child process
//! (`--peer`, not a target) writes a pipe a fourth thread reads. Over several
//! reporting intervals (the default, 1 s), the off_cpu records with stacks
//! must name the main thread for the first two, nobody for the third (even
//! when the timer interrupt finds a user task spinning on that CPU
//! (`--spin`: on x86_64 an interrupt from user mode stays on that task's
//! stack, the case bpf/waker.bpf.h's task-context rule must catch) and
//! the child for the fourth.
//!
//! The waker's user frames are not asserted by name: they are the
//! frame-pointer walk, which Debian's glibc (no frame pointers) cuts short.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn off_cpu_with_stack(recs: &[Value], tid: u64) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["collector"] == "keytime" && r["event"] == "off_cpu" && r["pid"] == tid)
        .filter(|r| r.get("stack").is_some())
        .collect()
}

/// Kernel function names of a stack, innermost first.
fn kernel_fns(stack: &Value) -> Vec<&str> {
    stack
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|f| f["module"] == "kernel")
        .filter_map(|f| f["fn"].as_str())
        .collect()
}

/// The records whose own kernel stack has a function containing `kfn`,
/// of stretches the thread slept through: one that was runnable all along
/// (`preempted`: woken before it could block, then waiting for a CPU, as
/// a loaded machine makes some) had no wakeup in it.
fn blocked_in<'a>(recs: &[&'a Value], kfn: &str) -> Vec<&'a Value> {
    recs.iter()
        .copied()
        .filter(|r| r["reason"] != "preempted")
        .filter(|r| kernel_fns(&r["stack"]).iter().any(|f| f.contains(kfn)))
        .collect()
}

/// The workload under `proc_image -k [extra]`, with `controller -k 2`, to its end.
fn run(test: &str, workload: &[&str], extra: &[&str]) -> (Vec<Value>, Workload) {
    let mut pi_args = vec!["-k"];
    pi_args.extend_from_slice(extra);
    let pi = ProcImage::start(test, &pi_args);
    let mut w = Workload::start(workload);
    w.wait_truth("ready", Duration::from_secs(10));
    let pid = w.pid().to_string();
    pi.control_ok(&["-a", "-P", &pid, "-k", "2"]);
    w.go();
    assert!(w.wait().success());
    let tgid = u64::from(w.pid());
    pi.wait_for(Duration::from_secs(20), |r| {
        r["event"] == "exit" && r["tgid"] == tgid && r["group_dead"] == true
    });
    let recs = pi.finish();
    // a waker said lost is a record proc_image counted as dropped
    let dropped: u64 = recs
        .iter()
        .filter(|r| r["event"] == "lost" && r["lost_collector"] == "keytime")
        .filter_map(|r| r["ringbuf_drops"].as_u64())
        .sum();
    let waker_lost = recs
        .iter()
        .filter(|r| r.get("waker_lost").is_some())
        .count();
    assert!(
        waker_lost as u64 <= dropped,
        "{waker_lost} wakers lost, {dropped} records dropped"
    );
    (recs, w)
}

/// Every record's woken_by names `waker` (pid and comm) with some user
/// frames and a kernel stack from try_to_wake_up on; all but `others` of
/// them hold `waker_fn`. Up to `unwoken` records may name no waker: a
/// wait woken before the stack threshold (1 ms) carries none, however long
/// it then waits for a CPU (bpf/keytime.bpf.c, wakeup_wanted). A record
/// whose waker's was dropped (ring buffer full: a loaded host, a debug
/// build) says so, and proc_image counts the drop.
fn assert_woken_by(recs: &[&Value], waker: u64, waker_fn: &str, others: usize, unwoken: usize) {
    let mut without = Vec::new();
    let named: Vec<&&Value> = recs
        .iter()
        .filter(|r| r.get("woken_by").is_some())
        .collect();
    let unnamed: Vec<&&Value> = recs
        .iter()
        .filter(|r| r.get("woken_by").is_none() && r.get("waker_lost").is_none())
        .collect();
    assert!(
        unnamed.len() <= unwoken,
        "{} of {} records name no waker: {unnamed:?}",
        unnamed.len(),
        recs.len()
    );
    for r in named {
        let by = &r["woken_by"];
        assert_eq!(by["pid"], waker, "{r}");
        assert_eq!(by["tgid"], r["tgid"], "{r}");
        assert_eq!(by["comm"], r["comm"], "the main thread's comm: {r}");
        let k = kernel_fns(&by["stack"]);
        if !k.iter().any(|f| f.contains(waker_fn)) {
            without.push(r);
        }
        assert_eq!(k.first(), Some(&"try_to_wake_up"), "{r}");
        // unwound through libc to the workload's own code, named
        let user: Vec<&str> = by["stack"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["module"] != "kernel")
            .filter_map(|f| f["fn"].as_str())
            .collect();
        assert!(
            user.iter()
                .any(|f| f.starts_with("proc_image_workload::offcpu")),
            "the waker's user stack does not reach the workload's function: {r}"
        );
        // woken during the stretch, switched in after
        let lat = u64_of(r, "wake_latency_ns");
        assert!(lat < u64_of(r, "duration_ns"), "{r}");
    }
    assert!(without.len() <= others, "not in {waker_fn}: {without:?}");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn wakers_are_named_for_pipe_and_mutex_and_not_for_timers() {
    need_root();
    let dir = std::env::temp_dir().join("proc_image_offcpu_wakers");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let folded = dir.join("wake.folded");
    let trace = dir.join("wake.json");
    let (recs, w) = run(
        "offcpu_wakers",
        &["offcpu", "--secs", "4", "--peer"],
        &[
            "--folded",
            folded.to_str().unwrap(),
            "--trace-out",
            trace.to_str().unwrap(),
        ],
    );
    let main = u64_of(&w.truth("waker"), "tid");
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let reader = u64_of(&w.truth("reader"), "tid");
    let locker = u64_of(&w.truth("locker"), "tid");
    let held = u64_of(&w.truth("held"), "count");
    let locked = u64_of(&w.truth("locked"), "count");
    assert!(
        held > 100 && locked > 50,
        "main held the mutex {held} times, the locker took it {locked}"
    );

    // the pipe reads: woken by the main thread's write
    let reads = blocked_in(&off_cpu_with_stack(&recs, reader), "pipe_read");
    assert!(
        reads.len() as u64 >= held / 2,
        "{} of {held} reads blocked",
        reads.len()
    );
    // (the last read ends at the pipe's close)
    assert_woken_by(&reads, main, "pipe_write", 1, 0);
    // the mutex waits: woken by its unlock. Only those in the workload's
    // own lock call: the locker also waits for stdout's lock when it says
    // what it did (main may be printing too), and a wait woken before the
    // stack threshold has no waker however long it then waits for a CPU
    let locks: Vec<&Value> = blocked_in(&off_cpu_with_stack(&recs, locker), "futex_wait")
        .into_iter()
        .filter(|r| {
            r["stack"].as_array().unwrap().iter().any(|f| {
                f["fn"]
                    .as_str()
                    .is_some_and(|n| n.contains("offcpu_mutex_lock_here"))
            })
        })
        .collect();
    assert!(
        locks.len() as u64 >= locked / 2,
        "{} of {locked} lock waits",
        locks.len()
    );
    assert_woken_by(&locks, main, "futex_wake", 0, 0);
    // a waker in another process (not a target): its pid, tgid and comm
    let peer = u64_of(&w.truth("peer"), "pid");
    let peer_reader = u64_of(&w.truth("peer_reader"), "tid");
    let peer_read = u64_of(&w.truth("peer_read"), "count");
    let peer_reads = blocked_in(&off_cpu_with_stack(&recs, peer_reader), "pipe_read");
    assert!(
        peer_read > 50 && peer_reads.len() as u64 >= peer_read / 2,
        "{} of {peer_read} peer reads blocked",
        peer_reads.len()
    );
    for r in peer_reads.iter().filter(|r| r.get("waker_lost").is_none()) {
        let by = &r["woken_by"];
        assert_eq!(
            (&by["pid"], &by["tgid"]),
            (&peer.into(), &peer.into()),
            "{r}"
        );
        assert_eq!(by["comm"], "offcpu_peer", "{r}");
        let k = kernel_fns(&by["stack"]);
        assert!(
            k.iter()
                .any(|f| f.contains("pipe_write") || f.contains("pipe_release")),
            "{r}"
        );
    }
    // the nanosleeps (the sleeper's, the locker's pauses): a timer, nobody
    let mut sleeps = blocked_in(&off_cpu_with_stack(&recs, sleeper), "hrtimer_nanosleep");
    assert!(sleeps.len() > 50, "{} sleeps", sleeps.len());
    sleeps.extend(blocked_in(
        &off_cpu_with_stack(&recs, locker),
        "hrtimer_nanosleep",
    ));
    for r in &sleeps {
        assert!(r.get("woken_by").is_none(), "a timer's wakeup: {r}");
    }
    // level 2 only with stacks: records without a stack name no waker
    assert!(recs
        .iter()
        .filter(|r| r["event"] == "off_cpu" && r.get("stack").is_none())
        .all(|r| r.get("woken_by").is_none()));

    // --folded: offwaketime's form for the woken stretches, once each
    let text = std::fs::read_to_string(&folded).unwrap();
    let wake_lines: Vec<(&str, u64)> = text
        .lines()
        .filter(|l| l.contains(";--;"))
        .map(|l| {
            let (stack, ns) = l.rsplit_once(' ').unwrap();
            (stack, ns.parse().unwrap())
        })
        .collect();
    assert!(!wake_lines.is_empty(), "no wakeup stacks:\n{text}");
    let mut pipe_ns = 0;
    for (stack, ns) in &wake_lines {
        let (wakee, waker) = stack.split_once(";--;").unwrap();
        let wakee: Vec<&str> = wakee.split(';').collect();
        let waker: Vec<&str> = waker.split(';').collect();
        // the wakee's own stack, root first, its innermost kernel frame last
        assert_eq!(wakee[0], "proc_image_work", "{stack}");
        assert!(wakee.last().unwrap().ends_with("_[k]"), "{stack}");
        // the waker's, innermost first from the separator, its comm at the tip
        assert_eq!(waker[0], "try_to_wake_up_[k]", "{stack}");
        // (the workload's own wakeups; the test's write of `go` woke its main thread)
        if *waker.last().unwrap() != "proc_image_work" {
            continue;
        }
        if wakee.iter().any(|f| f.ends_with("pipe_read_[k]")) {
            // the wakee part ends in the function it blocked in
            assert!(wakee.last().unwrap().ends_with("pipe_read_[k]"), "{stack}");
            assert!(
                waker
                    .iter()
                    .any(|f| f.ends_with("pipe_write_[k]") || *f == "pipe_release_[k]"),
                "{stack}"
            );
            pipe_ns += ns;
        }
        if wakee.iter().any(|f| f.starts_with("futex_wait")) {
            assert!(waker.iter().any(|f| f.starts_with("futex_wake")), "{stack}");
        }
        assert!(!stack.contains("hrtimer_nanosleep"), "{stack}");
    }
    // weighted by the reads' off-CPU time (all of the main thread's wakeups)
    let woken_reads: u64 = recs
        .iter()
        .filter(|r| r["event"] == "off_cpu" && r["woken_by"]["comm"] == "proc_image_work")
        .filter(|r| {
            kernel_fns(&r["stack"])
                .iter()
                .any(|f| f.ends_with("pipe_read"))
        })
        .map(|r| u64_of(r, "duration_ns"))
        .sum();
    assert_eq!(pipe_ns, woken_reads);

    // --trace-out: a flow from the main thread's track to the reader's
    let trace: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = trace.as_array().unwrap();
    let flows = |ph: &str, tid: u64| {
        events
            .iter()
            .filter(|e| e["ph"] == ph && e["name"] == "wakeup" && e["tid"] == tid)
            .count()
    };
    let woken = |recs: &[&Value]| recs.iter().filter(|r| r.get("woken_by").is_some()).count();
    let reads_woken = woken(&reads);
    assert!(
        flows("s", main) >= reads_woken + woken(&locks),
        "wakeup flows"
    );
    // one flow ends on the reader's track per woken stretch of it: its pipe
    // reads, and any other wait (its last report may wait for stdout's lock)
    let reader_woken = recs
        .iter()
        .filter(|r| r["event"] == "off_cpu" && r["pid"] == reader)
        .filter(|r| r.get("woken_by").is_some())
        .count();
    assert!(
        reader_woken >= reads_woken,
        "{reader_woken} woken, {reads_woken} reads"
    );
    assert_eq!(flows("f", reader), reader_woken);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_timer_interrupt_over_a_spinning_user_task_names_no_waker() {
    need_root();
    let (recs, w) = run(
        "offcpu_wakers_spin",
        &["offcpu", "--secs", "3", "--spin"],
        &[],
    );
    let sleeper = u64_of(&w.truth("sleeper"), "tid");
    let spinner = u64_of(&w.truth("spinner"), "tid");
    let sleeps = blocked_in(&off_cpu_with_stack(&recs, sleeper), "hrtimer_nanosleep");
    assert!(sleeps.len() > 40, "{} sleeps", sleeps.len());
    for r in &sleeps {
        assert!(r.get("woken_by").is_none(), "the spinner named: {r}");
    }
    // the spinner did run on the sleeper's CPU when it woke: it was preempted then
    let preempted = recs
        .iter()
        .filter(|r| r["event"] == "off_cpu" && r["pid"] == spinner && r["reason"] == "preempted")
        .count();
    assert!(
        preempted > 10,
        "the spinner was preempted {preempted} times"
    );
    // the pipe's waker is still named
    let main = u64_of(&w.truth("waker"), "tid");
    let reader = u64_of(&w.truth("reader"), "tid");
    let reads = blocked_in(&off_cpu_with_stack(&recs, reader), "pipe_read");
    assert!(reads.len() > 40, "{} reads", reads.len());
    // (a reader held off a CPU by the spinner blocks late: the workload
    // writes once it has slept 2 ms, past the stack threshold)
    assert_woken_by(&reads, main, "pipe_write", 1, 0);
}

/// The names of the BPF programs proc_image (`pid`) has attached: its
/// link fds' programs (fdinfo), named by bpftool.
fn attached_programs(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        if !info.contains("link_type:") {
            continue;
        }
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .map(str::trim)
        else {
            continue;
        };
        let out = std::process::Command::new("bpftool")
            .args(["-j", "prog", "show", "id", id])
            .output()
            .expect("bpftool (scripts/setup.sh installs it)");
        let prog: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(name) = prog["name"].as_str() {
            names.push(name.to_string());
        }
    }
    names
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn only_level2_hooks_wakeups() {
    need_root();
    let pi = ProcImage::start("offcpu_wakers_levels", &["-k"]);
    let mut w = Workload::start(&["offcpu", "--secs", "2"]);
    w.wait_truth("ready", Duration::from_secs(10));
    let pid = w.pid().to_string();
    let waking = |names: &[String]| names.iter().any(|n| n.starts_with("handle__sched_w"));
    for level in ["0", "1"] {
        pi.control_ok(&["-a", "-P", &pid, "-k", level]);
        let names = attached_programs(pi.child.id());
        assert!(
            names.iter().any(|n| n.starts_with("handle__task_n")),
            "{names:?}"
        );
        assert!(!waking(&names), "-k {level}: {names:?}");
    }
    pi.control_ok(&["-a", "-P", &pid, "-k", "2"]);
    assert!(waking(&attached_programs(pi.child.id())));
    // and back to level 1 in the same run: the program is detached again
    pi.control_ok(&["-a", "-P", &pid, "-k", "1"]);
    assert!(!waking(&attached_programs(pi.child.id())));
    w.go();
    assert!(w.wait().success());
    let tgid = u64::from(w.pid());
    pi.wait_for(Duration::from_secs(20), |r| {
        r["event"] == "exit" && r["tgid"] == tgid && r["group_dead"] == true
    });
    let recs = pi.finish();
    let reader = u64_of(&w.truth("reader"), "tid");
    let offs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "off_cpu" && r["pid"] == reader)
        .collect();
    assert!(offs.len() > 20, "{} off_cpu records", offs.len());
    assert!(offs.iter().all(|r| r.get("woken_by").is_none()));
}
