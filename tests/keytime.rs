//! keytime end to end: a real proc_image, controller and a workload whose
//! every fork, vfork, thread, exec, sleep and exit is known.

mod common;

use std::time::Duration;

use common::sched::*;
use common::*;
use serde_json::Value;

fn events<'a>(recs: &'a [Value], event: &str, tgid: u64) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["collector"] == "keytime" && r["event"] == event && r["tgid"] == tgid)
        .collect()
}

/// The lifecycle workload's `children`: one `child_exit` each, of the right
/// kind and status (fork children exit 10 + i, the others 0), from `pid`.
#[track_caller]
fn check_child_exits(recs: &[Value], pid: u64, children: &Value) {
    let exits = events(recs, "child_exit", pid);
    let mut want: Vec<(u64, &str, u64)> = Vec::new();
    for (i, c) in ids_in_order(&children["forks"]).into_iter().enumerate() {
        want.push((c, "fork", 10 + i as u64));
    }
    for c in ids_in_order(&children["vforks"]) {
        want.push((c, "vfork", 0));
    }
    for c in ids_in_order(&children["threads"]) {
        want.push((c, "pthread_create", 0));
    }
    want.sort();
    let mut got: Vec<(u64, &str, u64)> = exits
        .iter()
        .map(|r| {
            (
                u64_of(r, "child_pid"),
                r["kind"].as_str().unwrap_or("?"),
                u64_of(r, "exit_code"),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, want, "child_exit records: {exits:?}");
    for r in &exits {
        assert_eq!(
            (r["pid"].as_u64(), r["signal"].as_u64()),
            (Some(pid), Some(0)),
            "{r}"
        );
        let thread = r["kind"] == "pthread_create";
        assert_eq!(r["child_tgid"] == pid, thread, "{r}");
        // each thread sleeps 20 ms before it returns
        assert!(!thread || u64_of(r, "lifetime_ns") >= 20_000_000, "{r}");
        assert!(u64_of(r, "lifetime_ns") > 0, "{r}");
    }
}

fn ids_in_order(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

/// PROC_IMAGE_FORCE_COMPAT=1: the older program forms (kernel_btf.rs).
const COMPAT: &[(&str, &str)] = &[("PROC_IMAGE_FORCE_COMPAT", "1")];

/// One tick at the lowest HZ kernels are built with (100): the scheduler's
/// account of a running thread may lag that much.
const TICK_MAX_NS: u64 = 10_000_000;

/// proc_image, with the older program forms if `env` is COMPAT (and then it
/// must say that it loaded them).
#[track_caller]
fn start(test: &str, args: &[&str], env: &[(&str, &str)]) -> ProcImage {
    let pi = ProcImage::start_env(test, args, env);
    if !env.is_empty() && args.contains(&"-k") {
        let text = pi.stderr_text();
        assert!(
            text.contains("older form handle__sched_switch_compat")
                && text.contains("older form handle__sched_process_exit_compat"),
            "{text}"
        );
    }
    pi
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn lifecycle_of_a_thread_group() {
    lifecycle(&[]);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn lifecycle_with_the_older_program_forms() {
    lifecycle(COMPAT);
}

fn lifecycle(env: &[(&str, &str)]) {
    need_root();
    // one pin directory per test: the two forms run side by side
    let name = if env.is_empty() {
        "lifecycle"
    } else {
        "lifecycle_compat"
    };
    let pi = start(name, &["-k"], env);
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
    let pid = w.pid() as u64;
    // every stretch streamed: a busy loop that others preempt often (a
    // loaded CI machine) runs in stretches below the default 50 us
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k", "--stretch-min-us", "0"]);
    w.go();
    let status = w.wait();
    assert_eq!(status.code(), Some(7));
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid),
        "no exit record:\n{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    let children = w.truth("children");
    let exec = w.truth("exec");

    // exactly the forks, vforks and threads the workload made, from its pid
    let child_pids = |event: &str| {
        sorted(
            events(&recs, event, pid)
                .iter()
                .map(|r| u64_of(r, "child_pid"))
                .collect(),
        )
    };
    assert_eq!(child_pids("fork"), ids(&children["forks"]));
    assert_eq!(child_pids("vfork"), ids(&children["vforks"]));
    assert_eq!(child_pids("pthread_create"), ids(&children["threads"]));
    for r in events(&recs, "pthread_create", pid) {
        assert_eq!(r["child_tgid"], pid, "a thread stays in the group: {r}");
    }
    for r in events(&recs, "fork", pid)
        .iter()
        .chain(&events(&recs, "vfork", pid))
    {
        assert_eq!(
            r["child_tgid"], r["child_pid"],
            "a child process leads its own group: {r}"
        );
        assert_eq!(r["pid"], pid);
    }

    // every child's end, though no fork or vfork child is a target
    check_child_exits(&recs, pid, &children);

    // the exec of a known binary with known argv
    let execs = events(&recs, "execve", pid);
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(execs[0]["filename"], exec["filename"]);
    assert_eq!(execs[0]["argv"], exec["argv"]);
    assert_eq!(execs[0]["pid"], pid);

    // threads exit 0; the process exits 7 (after the exec, same pid)
    let exits = events(&recs, "exit", pid);
    let thread_exits: Vec<u64> = sorted(
        exits
            .iter()
            .filter(|r| r["pid"] != pid)
            .map(|r| u64_of(r, "pid"))
            .collect(),
    );
    assert_eq!(thread_exits, ids(&children["threads"]));
    let main_exit: Vec<&&Value> = exits.iter().filter(|r| r["pid"] == pid).collect();
    assert_eq!(main_exit.len(), 1, "{main_exit:?}");
    assert_eq!(main_exit[0]["exit_code"], 7);
    assert_eq!(main_exit[0]["signal"], 0);
    assert_eq!(main_exit[0]["group_dead"], true);
    assert_eq!(
        main_exit[0]["comm"], "proc_image_work",
        "comm after exec is the new image's"
    );

    // the 200 ms nanosleep: off-CPU of the main thread, reason sleep
    let (start, end) = (
        u64_of(&exec, "sleep_start_ns"),
        u64_of(&exec, "sleep_end_ns"),
    );
    let asleep: u64 = events(&recs, "off_cpu", pid)
        .iter()
        .filter(|r| r["pid"] == pid && r["reason"] == "sleep")
        .filter(|r| {
            let ts = u64_of(r, "ts_ns");
            ts > start && ts - u64_of(r, "duration_ns") < end
        })
        .map(|r| u64_of(r, "duration_ns"))
        .sum();
    let truth = end - start;
    assert!(
        asleep * 100 >= truth * 95 && asleep <= truth + 20_000_000,
        "off-CPU sleep {asleep} ns during a sleep of {truth} ns"
    );
    let named = events(&recs, "off_cpu", pid).iter().any(|r| {
        r["reason"] == "sleep"
            && r["blocked_in"]
                .as_str()
                .is_some_and(|f| f.contains("nanosleep"))
    });
    assert!(named, "the sleep is named by its kernel function");

    // the busy loop: on-CPU intervals, each timestamp at its end, in order per thread
    let on: Vec<&Value> = events(&recs, "on_cpu", pid)
        .into_iter()
        .filter(|r| r["pid"] == pid)
        .collect();
    let busy: u64 = on
        .iter()
        .filter(|r| {
            u64_of(r, "ts_ns") > end
                && u64_of(r, "ts_ns") - u64_of(r, "duration_ns") < u64_of(&exec, "busy_end_ns")
        })
        .map(|r| u64_of(r, "duration_ns"))
        .sum();
    let busy_cpu = u64_of(&exec, "busy_cpu_ns");
    assert!(
        busy >= busy_cpu * 95 / 100,
        "busy loop of {busy_cpu} ns CPU shows {busy} ns on CPU (sleep end {end}, busy end {}); \
         the thread's on_cpu records: {:?}; off_cpu: {:?}; lost: {:?}",
        u64_of(&exec, "busy_end_ns"),
        on.iter()
            .map(|r| (u64_of(r, "ts_ns"), u64_of(r, "duration_ns")))
            .collect::<Vec<_>>(),
        events(&recs, "off_cpu", pid)
            .iter()
            .filter(|r| r["pid"] == pid)
            .map(|r| (
                u64_of(r, "ts_ns"),
                u64_of(r, "duration_ns"),
                r["reason"].clone()
            ))
            .collect::<Vec<_>>(),
        recs.iter()
            .filter(|r| r["event"] == "lost")
            .collect::<Vec<_>>()
    );
    let ts: Vec<u64> = on.iter().map(|r| u64_of(r, "ts_ns")).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn level_zero_has_lifecycle_only() {
    need_root();
    let pi = ProcImage::start("level0", &["-k"]);
    let mut w = Workload::start(&[
        "lifecycle",
        "--forks",
        "2",
        "--vforks",
        "0",
        "--threads",
        "1",
        "--sleep-ms",
        "50",
        "--exit-code",
        "3",
    ]);
    let pid = w.pid() as u64;
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k", "0"]);
    w.go();
    assert_eq!(w.wait().code(), Some(3));
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid)
    );
    let recs = pi.finish();
    assert_eq!(events(&recs, "fork", pid).len(), 2);
    assert_eq!(events(&recs, "pthread_create", pid).len(), 1);
    assert!(events(&recs, "on_cpu", pid).is_empty() && events(&recs, "off_cpu", pid).is_empty());
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn one_thread_only() {
    need_root();
    let pi = ProcImage::start("thread", &["-k"]);
    let mut w = Workload::start(&[
        "lifecycle",
        "--forks",
        "1",
        "--vforks",
        "0",
        "--threads",
        "2",
        "--sleep-ms",
        "50",
        "--exit-code",
        "0",
    ]);
    let pid = w.pid() as u64;
    pi.control_ok(&["-a", "-p", &pid.to_string()]);
    w.go();
    w.wait();
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid)
    );
    // proc_image notices the end on its own (its liveness check)
    assert!(pi.wait_for(Duration::from_secs(10), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    let keytime: Vec<&Value> = recs
        .iter()
        .filter(|r| r["collector"] == "keytime")
        .collect();
    assert!(
        keytime.iter().all(|r| r["pid"] == pid),
        "only the one thread is traced"
    );
    assert_eq!(events(&recs, "pthread_create", pid).len(), 2);
    // its fork child and both threads end: none is a target, each is reported
    check_child_exits(&recs, pid, &w.truth("children"));
    assert!(recs.iter().any(|r| r["event"] == "target_gone"));
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn idle_task_of_one_cpu() {
    need_root();
    let pi = ProcImage::start("idle", &["-k"]);
    // the CPU that idles most now: tests beside this one may keep another busy
    let idle_of = || -> Vec<u64> {
        std::fs::read_to_string("/proc/stat")
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .map(|l| l.split_whitespace().nth(4).unwrap().parse().unwrap())
            .collect()
    };
    let before = idle_of();
    std::thread::sleep(Duration::from_millis(300));
    let cpu = idle_of()
        .iter()
        .zip(&before)
        .enumerate()
        .max_by_key(|(_, (after, before))| *after - *before)
        .map(|(i, _)| i)
        .unwrap();
    // every stretch: on a busy host an idle stretch may be short
    pi.control_ok(&[
        "-a",
        "-p",
        "0",
        "-c",
        &cpu.to_string(),
        "-k",
        "--stretch-min-us",
        "0",
    ]);
    assert!(pi.wait_for(Duration::from_secs(30), |r| r["event"] == "on_cpu"));
    let recs = pi.finish();
    // its time per interval too (the last one comes with the end), its alone
    let sums: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "cpu_summary")
        .collect();
    assert!(!sums.is_empty());
    for r in &sums {
        assert_eq!(
            (r["pid"].as_u64(), r["cpu"].as_u64()),
            (Some(0), Some(cpu as u64)),
            "{r}"
        );
        let both = u64_of(r, "on_cpu_ns") + u64_of(r, "off_cpu_ns");
        assert!(
            both <= u64_of(r, "interval_ns") + TICK_MAX_NS,
            "more than its interval: {r}"
        );
    }
    let cpu_events: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "on_cpu" || r["event"] == "off_cpu")
        .collect();
    assert!(!cpu_events.is_empty());
    for r in cpu_events {
        assert_eq!(
            (r["pid"].as_u64(), r["cpu"].as_u64()),
            (Some(0), Some(cpu as u64)),
            "{r}"
        );
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_streams_lifecycle_and_summarizes_cpu() {
    need_root();
    let pi = ProcImage::start("system", &["-k", "--interval", "200"]);
    pi.control_ok(&["-a", "-k"]);
    let mut w = Workload::start(&[
        "lifecycle",
        "--forks",
        "2",
        "--vforks",
        "1",
        "--threads",
        "1",
        "--sleep-ms",
        "100",
        "--busy-ms",
        "300",
        "--exit-code",
        "5",
    ]);
    let pid = w.pid() as u64;
    w.go();
    w.wait();
    let busy_cpu = u64_of(&w.truth("exec"), "busy_cpu_ns");
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid)
    );
    // the next interval's summary includes the workload's busy loop
    assert!(
        pi.wait_for(Duration::from_secs(5), |r| r["event"] == "cpu_summary"
            && r["pid"] == pid)
    );
    let recs = pi.finish();
    assert_eq!(events(&recs, "fork", pid).len(), 2);
    assert_eq!(events(&recs, "vfork", pid).len(), 1);
    check_child_exits(&recs, pid, &w.truth("children"));
    assert!(
        recs.iter()
            .all(|r| r["event"] != "on_cpu" && r["event"] != "off_cpu"),
        "no per-interval stream"
    );
    let on_cpu: u64 = recs
        .iter()
        .filter(|r| r["event"] == "cpu_summary" && r["pid"] == pid)
        .map(|r| u64_of(r, "on_cpu_ns"))
        .sum();
    // the sums cover the thread's whole life, a little more than its busy
    // loop; a slice lost while proc_image swaps and drains the summary maps
    // (see drain_summaries) would show as less
    assert!(
        on_cpu >= busy_cpu * 99 / 100,
        "a busy loop of {busy_cpu} ns CPU summed to {on_cpu} ns on CPU"
    );
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn deactivate_stops_output_and_finish_removes_pins() {
    need_root();
    let pi = ProcImage::start("deactivate", &["-k"]);
    let w = Workload::start(&["spin"]);
    let pid = w.pid() as u64;
    pi.control_ok(&["-a", "-p", &pid.to_string()]);
    assert!(
        pi.wait_for(Duration::from_secs(5), |r| r["event"] == "off_cpu"
            && r["pid"] == pid)
    );
    pi.control_ok(&["-d"]);
    let count = || pi.records().iter().filter(|r| r["pid"] == pid).count();
    std::thread::sleep(Duration::from_millis(200));
    let after_ack = count();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(count(), after_ack, "records after controller -d");
    assert!(pi.controller(&["--status"]).status.success());
    // and it can be activated again
    pi.control_ok(&["-a", "-p", &pid.to_string(), "-k"]);
    assert!(
        pi.wait_for(Duration::from_secs(5), |r| r["pid"] == pid
            && u64_of(r, "ts_ns") > 0)
            && wait_until(Duration::from_secs(5), || count() > after_ack)
    );
    pi.finish();
}

/// cpu_summary records of one thread, in order.
fn summaries(recs: &[Value], pid: u64) -> Vec<&Value> {
    let mut v: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "cpu_summary" && r["pid"] == pid)
        .collect();
    v.sort_by_key(|r| u64_of(r, "ts_ns"));
    v
}

/// Whole system, default interval: a CPU-bound thread and a thread in one
/// 10 s sleep show, interval by interval, what they did in that interval.
fn whole_system_intervals(test: &str, env: &[(&str, &str)]) {
    need_root();
    let pi = start(test, &["-k"], env);
    let mut w = Workload::start(&["steady", "--busy-secs", "4", "--sleep-secs", "10"]);
    pi.control_ok(&["-a", "-k"]);
    w.go();
    let busy_end = w.wait_truth("busy_end", Duration::from_secs(30));
    let slept = w.wait_truth("slept", Duration::from_secs(30));
    let busy_start = w.truth("busy_start");
    w.wait();
    let (busy, sleeper) = (u64_of(&busy_end, "tid"), u64_of(&slept, "tid"));
    // the interval that holds the end of both threads
    // (a hang detector: the output of a whole busy host is large)
    assert!(
        pi.wait_for_new(Duration::from_secs(30), |r| r["event"] == "cpu_summary"
            && u64_of(r, "ts_ns") > u64_of(&slept, "end_ns") + 50_000_000)
    );
    let pi_err = pi.stderr_text();
    let recs = pi.finish();

    // the busy thread: never more than its interval, every interval it spun
    // through shows it, and the sum is the scheduler's own figure
    let on = summaries(&recs, busy);
    for r in &on {
        assert!(
            u64_of(r, "on_cpu_ns") <= u64_of(r, "interval_ns") + TICK_MAX_NS,
            "more on-CPU than the interval: {r}"
        );
    }
    let (start, end) = (u64_of(&busy_start, "ns"), u64_of(&busy_end, "ns"));
    let inside: Vec<&&Value> = on
        .iter()
        .filter(|r| {
            u64_of(r, "ts_ns") - u64_of(r, "interval_ns") > start && u64_of(r, "ts_ns") < end
        })
        .collect();
    let spans: Vec<(i64, u64, u64)> = on
        .iter()
        .map(|r| {
            let ts = u64_of(r, "ts_ns");
            (
                ts as i64 - start as i64,
                u64_of(r, "interval_ns"),
                u64_of(r, "on_cpu_ns"),
            )
        })
        .collect();
    // several intervals (fewer full ones if proc_image was held up: it
    // closes late on a loaded host, the figures stay right)
    assert!(
        on.len() >= 2,
        "a 4 s spin ({} ns) spans intervals: (close - start, interval, on-CPU) {spans:?}",
        end - start
    );
    for r in &inside {
        assert!(
            u64_of(r, "on_cpu_ns") > 0,
            "an interval the thread spun through: {r}"
        );
    }
    let sum: u64 = on.iter().map(|r| u64_of(r, "on_cpu_ns")).sum();
    let truth = u64_of(&busy_end, "run_ns");
    assert!(
        sum.abs_diff(truth) <= truth / 100,
        "on-CPU summed over intervals {sum} ns, /proc/.../schedstat {truth} ns"
    );

    // the sleeper: its 10 s nanosleep cut at every close
    let off = summaries(&recs, sleeper);
    for r in &off {
        assert!(
            u64_of(r, "off_cpu_ns") <= u64_of(r, "interval_ns"),
            "more off-CPU than the interval: {r}"
        );
    }
    let (start, end) = (u64_of(&slept, "start_ns"), u64_of(&slept, "end_ns"));
    let asleep: Vec<&&Value> = off
        .iter()
        .filter(|r| {
            u64_of(r, "ts_ns") - u64_of(r, "interval_ns") > start && u64_of(r, "ts_ns") < end
        })
        .collect();
    assert!(
        off.len() >= 3 && !asleep.is_empty(),
        "a 10 s sleep spans intervals: {off:?}"
    );
    for r in &asleep {
        let slept_ns = r["off_cpu_by_reason_ns"]["sleep"].as_u64().unwrap_or(0);
        assert!(
            slept_ns * 100 >= u64_of(r, "interval_ns") * 99,
            "an interval it slept through shows its sleep: {r}"
        );
    }
    // (its wait for a CPU before the sleep is off-CPU too, as `preempted`)
    let total: u64 = off
        .iter()
        .map(|r| r["off_cpu_by_reason_ns"]["sleep"].as_u64().unwrap_or(0))
        .sum();
    // the thread is on a CPU for a moment at each end of its sleep
    assert!(
        total >= (end - start) * 99 / 100 && total <= end - start + 50_000_000,
        "a sleep of {} ns summed to {total} ns asleep: (close - start, interval, off-CPU) {:?}; closes {:?}; its other records {:?}; proc_image: {}",
        end - start,
        off.iter()
            .map(|r| (
                u64_of(r, "ts_ns") as i64 - start as i64,
                u64_of(r, "interval_ns"),
                u64_of(r, "off_cpu_ns")
            ))
            .collect::<Vec<_>>(),
        recs.iter().filter(|r| r["event"] == "cpu_summary").map(|r| u64_of(r, "ts_ns") as i64 - start as i64).collect::<std::collections::BTreeSet<_>>(),
        recs.iter().filter(|r| r["pid"] == sleeper && r["event"] != "cpu_summary").collect::<Vec<_>>(),
        pi_err,
    );
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_intervals_hold_what_happened_in_them() {
    whole_system_intervals("ws_intervals", &[]);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_intervals_with_the_older_program_forms() {
    whole_system_intervals("ws_intervals_compat", COMPAT);
}

/// exit_group() with threads spinning on every CPU: one group_dead per process.
fn group_dead_once(test: &str, env: &[(&str, &str)]) {
    need_root();
    const RUNS: usize = 10;
    let pi = start(test, &["-k"], env);
    pi.control_ok(&["-a", "-k", "0"]);
    let mut pids = Vec::new();
    for _ in 0..RUNS {
        let mut w = Workload::start(&["exit-group", "--threads", "6"]);
        assert_eq!(w.wait().code(), Some(3));
        pids.push(w.pid() as u64);
    }
    let exits = |recs: &[Value], pid: u64| -> Vec<Value> {
        events(recs, "exit", pid).into_iter().cloned().collect()
    };
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pids[RUNS - 1])
    );
    let recs = pi.finish();
    // (should one fail: whether proc_image counted records it lost)
    let lost: Vec<&Value> = recs.iter().filter(|r| r["event"] == "lost").collect();
    for pid in pids {
        let exits = exits(&recs, pid);
        assert_eq!(
            exits.len(),
            7,
            "six threads and the leader exit: {exits:?}\nlost: {lost:?}"
        );
        let dead: Vec<&Value> = exits.iter().filter(|r| r["group_dead"] == true).collect();
        assert_eq!(
            dead.len(),
            1,
            "group_dead once for process {pid}: {exits:?}"
        );
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn exit_group_says_group_dead_once() {
    group_dead_once("group_dead", &[]);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn exit_group_says_group_dead_once_with_the_older_program_forms() {
    group_dead_once("group_dead_compat", COMPAT);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_thread_that_execs_is_followed_as_the_leader() {
    need_root();
    let pi = ProcImage::start("exec_thread", &["-k"]);
    let mut w = Workload::start(&["exec-thread"]);
    let thread = w.wait_truth("thread", Duration::from_secs(5));
    let (tid, pid) = (u64_of(&thread, "tid"), u64_of(&thread, "pid"));
    assert_ne!(tid, pid);
    pi.control_ok(&["-a", "-p", &tid.to_string(), "-k"]);
    w.go();
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "execve"
            && r["old_pid"] == tid),
        "{}",
        pi.stderr_text()
    );
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_moved"));
    // the new image (`spin`) goes on being traced, under the leader's pid,
    // over several liveness checks
    std::thread::sleep(Duration::from_millis(1500));
    let recs = pi.records();
    let exec_ts = recs
        .iter()
        .find(|r| r["event"] == "execve")
        .map(|r| u64_of(r, "ts_ns"))
        .unwrap();
    let later = |event: &str| {
        recs.iter()
            .filter(|r| {
                r["event"] == event
                    && r["pid"] == pid
                    && u64_of(r, "ts_ns") > exec_ts + 1_000_000_000
            })
            .count()
    };
    assert!(later("on_cpu") > 0 && later("off_cpu") > 0, "{recs:?}");
    assert!(recs.iter().all(|r| r["event"] != "target_gone"));
    drop(w);
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn io_uring_workers_are_kernel_workers() {
    need_root();
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() != "0")
    {
        eprintln!("SKIPPED: io_uring is disabled here");
        return;
    }
    let pi = ProcImage::start("io_uring", &["-k"]);
    let mut w = Workload::start(&["io-uring"]);
    let pid = w.pid() as u64;
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k", "0"]);
    w.go();
    w.wait();
    assert_eq!(w.truth("io_uring")["ok"], true, "io_uring_setup failed");
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid)
    );
    // the SQPOLL thread ends with the ring, as the process exits
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "child_exit"
            && r["tgid"] == pid
            && r["kind"] == "kernel_worker"),
        "{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    let workers = events(&recs, "kernel_worker", pid);
    assert_eq!(workers.len(), 1, "the SQPOLL thread: {recs:?}");
    assert_eq!(workers[0]["child_tgid"], pid);
    let ends = events(&recs, "child_exit", pid);
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["child_pid"], workers[0]["child_pid"]);
    assert!(events(&recs, "pthread_create", pid).is_empty());
}

/// schedule through the older program forms is held to the kernel's own
/// account as the newer ones are (tests/schedule.rs): each thread's waits,
/// preemptions included, against its schedstat.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn schedule_with_the_older_program_forms() {
    need_root();
    let pi = start("schedule_compat", &["-S"], COMPAT);
    assert!(pi
        .stderr_text()
        .contains("older form handle__sched_switch_compat"));
    let mut w = Workload::start(&["sched-classes", "--secs", "4"]);
    let pid = w.pid() as u64;
    let before = class_threads(&w);
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-S"]);
    run_to_end(&pi, &mut w);
    let after: Vec<(u64, u64)> = before.iter().map(|(_, t, _)| schedstat(pid, *t)).collect();
    let recs = pi.finish();
    for ((role, tid, (delay0, waits0)), (delay1, waits1)) in before.iter().zip(&after) {
        let mine: Vec<&Value> = recs
            .iter()
            .filter(|r| r["event"] == "schedule_thread" && r["pid"] == *tid)
            .collect();
        let mine: Vec<&&Value> = mine.iter().collect();
        waits_match_schedstat(
            &format!("{role} {tid}"),
            &mine,
            (delay1 - delay0, waits1 - waits0),
        );
    }
}

/// Activated while one thread spins and another sleeps: the stretch each is
/// in counts from the activation, the sleep with its reason.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn stretches_in_progress_count_from_the_activation() {
    need_root();
    let pi = ProcImage::start("in_progress", &["-k"]);
    let mut w = Workload::start(&["steady", "--busy-secs", "3", "--sleep-secs", "3"]);
    let pid = w.pid();
    w.go();
    let sleeping = w.wait_truth("sleeping", Duration::from_secs(5));
    let busy = u64_of(&w.wait_truth("busy_start", Duration::from_secs(5)), "tid");
    let sleeper = u64_of(&sleeping, "tid");
    std::thread::sleep(Duration::from_millis(300));
    let before = proc_image::sys::monotonic_ns();
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k"]);
    let after = proc_image::sys::monotonic_ns();
    let slept = w.wait_truth("slept", Duration::from_secs(10));
    w.wait();
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid)
    );
    let recs = pi.finish();
    let first = |tid: u64| -> Value {
        let mut v: Vec<&Value> = recs
            .iter()
            .filter(|r| (r["event"] == "on_cpu" || r["event"] == "off_cpu") && r["pid"] == tid)
            .collect();
        v.sort_by_key(|r| u64_of(r, "ts_ns"));
        v.first()
            .map(|r| (*r).clone())
            .expect("records of the thread")
    };
    for tid in [busy, sleeper] {
        let r = first(tid);
        let began = u64_of(&r, "ts_ns") - u64_of(&r, "duration_ns");
        assert!(
            (before..=after).contains(&began),
            "the first stretch of {tid} began at {began}, the activation at {before}..{after}: {r}"
        );
    }
    let r = first(sleeper);
    assert_eq!(r["event"], "off_cpu");
    assert_eq!(
        r["reason"], "sleep",
        "the state it slept in at the activation: {r}"
    );
    assert!(u64_of(&r, "ts_ns") >= u64_of(&slept, "end_ns") - 20_000_000);
}

/// --cgroup: the children of a process in the cgroup, each reported when it ends.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn child_exits_in_a_cgroup() {
    need_root();
    let mount = proc_image::sys::cgroup2_mount().expect("a cgroup v2 hierarchy");
    let rel = format!("pi_test_child_exit_{}", std::process::id());
    let cg = TestCgroup(mount.join(&rel));
    std::fs::create_dir_all(&cg.0).expect("create a cgroup");
    let pi = ProcImage::start("child_exit_cgroup", &["-k"]);
    let mut w = Workload::start(&[
        "lifecycle",
        "--forks",
        "3",
        "--vforks",
        "2",
        "--threads",
        "4",
        "--sleep-ms",
        "10",
        "--exit-code",
        "7",
    ]);
    let pid = w.pid() as u64;
    std::fs::write(cg.0.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    pi.control_ok(&["-a", "--cgroup", &rel, "-k", "0"]);
    w.go();
    assert_eq!(w.wait().code(), Some(7));
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid
            && r["group_dead"] == true),
        "{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    check_child_exits(&recs, pid, &w.truth("children"));
}

/// A failed exec of a missing path, then `sh -c` whose PATH has two
/// directories without the program before the right one: three
/// `execve_failed` ENOENTs, exactly (none unless --exec-failures asked for
/// them), and the two execs that succeed only as `execve`.
fn failed_execs(test: &str, target: &str, asked: bool) {
    need_root();
    let pi = ProcImage::start(test, &["-k"]);
    let mut w = Workload::start(&["exec-fail"]);
    let pid = w.pid() as u64;
    let pid_arg = pid.to_string();
    let mut args = match target {
        "-P" => vec!["-a", "-P", &pid_arg, "-k", "0"],
        _ => vec!["-a", "-k", "0"],
    };
    if asked {
        args.push("--exec-failures");
    }
    pi.control_ok(&args);
    w.go();
    assert_eq!(w.wait().code(), Some(4));
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid),
        "{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    let truth = w.truth("exec_fail");
    let missing = truth["missing"].as_str().unwrap();
    let _ = std::fs::remove_dir_all(std::path::Path::new(missing).parent().unwrap());
    assert_eq!(truth["errno"], libc::ENOENT);
    let dirs: Vec<&str> = truth["path"].as_str().unwrap().split(':').collect();

    let in_dir = |d: &str| format!("{d}/proc_image_workload");
    // the two that succeed: the shell, then the program in the third directory
    let ok: Vec<&str> = events(&recs, "execve", pid)
        .iter()
        .map(|r| r["filename"].as_str().unwrap())
        .collect();
    assert_eq!(ok, vec!["/bin/sh".to_string(), in_dir(dirs[2])], "{recs:?}");
    let failed = events(&recs, "execve_failed", pid);
    if !asked {
        assert!(failed.is_empty(), "{failed:?}");
        return;
    }
    let got: Vec<(&str, &str, i64)> = failed
        .iter()
        .map(|r| {
            (
                r["filename"].as_str().unwrap(),
                r["error"].as_str().unwrap(),
                r["ret"].as_i64().unwrap(),
            )
        })
        .collect();
    let (a, b) = (in_dir(dirs[0]), in_dir(dirs[1]));
    let want = vec![
        (missing, "ENOENT", -2),
        (a.as_str(), "ENOENT", -2),
        (b.as_str(), "ENOENT", -2),
    ];
    assert_eq!(got, want, "{failed:?}");
    assert_eq!(
        failed[0]["argv"],
        serde_json::json!(["no_such_program", "--flag"])
    );
    assert_eq!(
        failed[1]["argv"],
        serde_json::json!(["proc_image_workload", "exit", "4"])
    );
    assert!(failed
        .iter()
        .all(|r| r["syscall"] == "execve" && r["pid"] == pid));
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn failed_execs_and_a_path_search_are_counted_exactly() {
    failed_execs("exec_failed", "-P", true);
}

/// The syscall tracepoints failed execs need slow every syscall on the
/// host: without --exec-failures they are not attached, and say nothing.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn failed_execs_are_not_traced_unless_asked() {
    failed_execs("exec_failed_unasked", "-P", false);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn failed_execs_in_whole_system_mode() {
    failed_execs("exec_failed_system", "", true);
}

/// `kill -9` from a helper process whose pid is known: every thread's exit
/// names it, with -P and with -p of a thread that is not the leader.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_kill_names_its_sender() {
    need_root();
    let pi = ProcImage::start("killed_by", &["-k"]);
    for per_thread in [false, true] {
        let mut w = Workload::start(&["sched", "--busy-threads", "1", "--secs", "60"]);
        let pid = w.pid() as u64;
        let threads = w.wait_truth("threads", Duration::from_secs(5));
        let sleeper = threads["sleeper"].as_u64().unwrap();
        if per_thread {
            pi.control_ok(&["-a", "-p", &sleeper.to_string(), "-k", "0"]);
        } else {
            pi.control_ok(&["-a", "-P", &pid.to_string(), "-k", "0"]);
        }
        // a signal it survives, from this test, comes first
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        let mut kill = std::process::Command::new("/usr/bin/kill")
            .args(["-9", &pid.to_string()])
            .spawn()
            .expect("run kill");
        let killer = kill.id() as u64;
        assert!(kill.wait().unwrap().success());
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&w.wait()),
            Some(9)
        );
        assert!(
            pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
                && r["pid"] == sleeper),
            "{}",
            pi.stderr_text()
        );
        let recs = pi.records();
        let exits = events(&recs, "exit", pid);
        // -P: the leader and its two threads; -p: the one thread
        assert_eq!(exits.len(), if per_thread { 1 } else { 3 }, "{exits:?}");
        for r in exits {
            assert_eq!(
                (r["signal"].as_u64(), r["exit_code"].as_u64()),
                (Some(9), Some(0)),
                "{r}"
            );
            assert_eq!(
                r["killed_by"],
                serde_json::json!({"pid": killer, "tgid": killer, "comm": "kill"}),
                "{r}"
            );
            assert!(r.get("oom_kill").is_none(), "{r}");
        }
    }
    pi.finish();
}

/// Where the OOM test can limit memory: cgroup v2 with the memory
/// controller, else cgroup v1's memory hierarchy (hybrid hosts, such as
/// the one these tests were written on).
fn memory_cgroup_root() -> Option<(std::path::PathBuf, &'static str)> {
    if let Some(root) = proc_image::sys::cgroup2_mount() {
        let on = |f: &str| {
            std::fs::read_to_string(root.join(f))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        };
        if on("cgroup.controllers") && on("cgroup.subtree_control") {
            return Some((root, "memory.max"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "memory"))
        .map(|f| (std::path::PathBuf::from(f[1]), "memory.limit_in_bytes"))
}

/// A cgroup of this test's own, removed when dropped (after the workload
/// in it is gone).
struct TestCgroup(std::path::PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok() || !self.0.exists()
        });
    }
}

fn oom_killed(test: &str, env: &[(&str, &str)]) {
    need_root();
    let Some((root, limit)) = memory_cgroup_root() else {
        panic!("no memory cgroup (v2 memory controller or v1 memory hierarchy): the OOM kill cannot be tested");
    };
    let pi = start(test, &["-k"], env);
    let mut w = Workload::start(&["oom"]);
    let pid = w.pid() as u64;
    let cg = TestCgroup(root.join(format!("pi_test_{test}_{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).expect("create a memory cgroup");
    std::fs::write(cg.0.join(limit), "67108864").expect("limit the cgroup's memory to 64 MiB");
    // no swap to fall back on (v2; v1 here has none configured)
    let _ = std::fs::write(cg.0.join("memory.swap.max"), "0");
    std::fs::write(cg.0.join("cgroup.procs"), pid.to_string()).expect("move into the cgroup");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k", "0"]);
    w.go();
    let status = w.wait();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the workload was not OOM-killed: {status:?}"
    );
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid),
        "{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    let exits = events(&recs, "exit", pid);
    assert_eq!(exits.len(), 1, "{exits:?}");
    let r = exits[0];
    assert_eq!(
        (r["signal"].as_u64(), r["oom_kill"].as_bool()),
        (Some(9), Some(true)),
        "{r}"
    );
    // the kernel sent it, in the task whose allocation hit the limit: the workload's own
    assert_eq!(r["killed_by"]["kernel"], true, "{r}");
    assert_eq!(r["killed_by"]["tgid"], pid, "{r}");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn an_oom_kill_is_said() {
    oom_killed("oom", &[]);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn an_oom_kill_is_said_with_the_older_program_forms() {
    oom_killed("oom_compat", COMPAT);
}

/// The default --stretch-min-us: stretches shorter are summed, not streamed.
const STRETCH_MIN_NS: u64 = 50_000;

/// The time the machine's CPUs spent in interrupts or stolen by the
/// hypervisor so far (/proc/stat), in ns: the scheduler leaves it out of a
/// task's on-CPU account (its run queue's clock_task), not out of the
/// switches' times.
fn irq_and_steal_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let ticks = cpu[5] + cpu[6] + cpu[7]; // irq, softirq, steal
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    ticks * 1_000_000_000 / hz
}

/// The pingpong workload traced as a process at the default interval, to
/// its end: its tids, its account ("done"), every record, and the time the
/// machine spent in interrupts or stolen meanwhile (irq_and_steal_ns).
fn pingpong_run(test: &str, args: &[&str]) -> (Value, Value, Vec<Value>, u64) {
    need_root();
    let pi = start(test, &["-k"], &[]);
    let mut w = Workload::start(&[&["pingpong"], args].concat());
    let threads = w.wait_truth("threads", Duration::from_secs(10));
    let pid = u64_of(&threads, "pid");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k"]);
    let irq_steal = irq_and_steal_ns();
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(60));
    let irq_steal = irq_and_steal_ns() - irq_steal;
    assert!(w.wait().success());
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == pid),
        "no exit record:\n{}",
        pi.stderr_text()
    );
    // the last partial interval comes with the end of the activation
    (threads["tids"].clone(), done, pi.finish(), irq_steal)
}

/// The streamed stretches of thread `tid`: (event, duration_ns, record).
fn stretches(recs: &[Value], tid: u64) -> Vec<&Value> {
    recs.iter()
        .filter(|r| (r["event"] == "on_cpu" || r["event"] == "off_cpu") && r["pid"] == tid)
        .collect()
}

/// Two threads bouncing a byte switch ~100k times a second, over several
/// 1 s intervals: each interval's cpu_summary holds all of it (on-CPU
/// summed to the scheduler's own schedstat figure, every switch counted,
/// on + off filling the interval), while only stretches of at least
/// --stretch-min-us are streamed.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn targeted_summaries_hold_every_short_stretch() {
    let (tids, done, recs, irq_steal) = pingpong_run("pingpong", &["--secs", "6", "--sleeps", "0"]);
    assert!(u64_of(&done["ping"], "round_trips") > 1000, "{done}");
    for name in ["ping", "pong"] {
        let tid = u64_of(&tids, name);
        let sums = summaries(&recs, tid);
        let view: Vec<(u64, u64, u64)> = sums
            .iter()
            .map(|r| {
                (
                    u64_of(r, "interval_ns"),
                    u64_of(r, "on_cpu_ns"),
                    u64_of(r, "off_cpu_ns"),
                )
            })
            .collect();
        // (fewer, longer ones if proc_image was held up on a loaded host)
        assert!(
            sums.len() >= 3,
            "{name}: a 6 s run spans intervals: {view:?}"
        );
        // on-CPU: the scheduler's own account, to 1%
        let on: u64 = sums.iter().map(|r| u64_of(r, "on_cpu_ns")).sum();
        let truth = u64_of(&done[name], "run_ns");
        assert!(
            on.abs_diff(truth) <= truth / 100,
            "{name}: on-CPU summed over intervals {on} ns, schedstat {truth} ns: {view:?}"
        );
        // every switch: schedstat counts the timeslices it ran
        let switches: u64 = sums.iter().map(|r| u64_of(r, "switches")).sum();
        let slices = u64_of(&done[name], "slices");
        assert!(
            slices > 1000 && switches.abs_diff(slices) <= (slices / 100).max(10),
            "{name}: {switches} switches summed, schedstat {slices} timeslices"
        );
        // alive through every interval but its last: on + off fill it, but
        // for the IRQ and steal time the scheduler's clock leaves out of
        // on-CPU time (a few % on a loaded VM; the machine's whole share
        // over the run, from /proc/stat, bounds it). Switches are timed with
        // the scheduler's clock, which its on-CPU account is kept with, so
        // the two meet at each switch: what is left is the per-CPU offsets
        // to CLOCK_MONOTONIC, which differ by a fraction of a microsecond
        // between the CPUs a stretch starts and ends on (timed with
        // bpf_ktime_get_ns in sched_switch instead, on + off were ~4% over
        // at 57k switches/s, ~0.7 us a switch, counted in both)
        for r in &sums[..sums.len() - 1] {
            let both = u64_of(r, "on_cpu_ns") + u64_of(r, "off_cpu_ns");
            let interval = u64_of(r, "interval_ns");
            let switch_overlap = u64_of(r, "switches") * 250;
            assert!(
                both <= interval + 2 * TICK_MAX_NS + switch_overlap
                    && both + irq_steal >= interval / 100 * 95,
                "{name}: on + off {both} ns in an interval ({irq_steal} ns of IRQ and steal \
                 time in the run): {r}"
            );
        }
        // streamed: only stretches from the threshold, and fewer than the switches
        let streamed = stretches(&recs, tid);
        for r in &streamed {
            assert!(u64_of(r, "duration_ns") >= STRETCH_MIN_NS, "{r}");
        }
        assert!(streamed.len() as u64 <= 2 * switches, "{name}");
    }
}

/// A thread that sleeps 30 ms at a time: each sleep is one streamed
/// off_cpu record, reason sleep, named by the kernel function it blocked
/// in, and all of them are in the thread's summaries too.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_sleep_loop_streams_each_sleep() {
    let (tids, done, recs, _) = pingpong_run(
        "sleeploop",
        &["--secs", "0", "--sleeps", "60", "--sleep-ms", "30"],
    );
    let tid = u64_of(&tids, "sleeper");
    let spans: Vec<(u64, u64)> = done["sleeper"]["sleeps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_u64().unwrap(), s[1].as_u64().unwrap()))
        .collect();
    assert_eq!(spans.len(), 60);
    let streamed = stretches(&recs, tid);
    for &(start, end) in &spans {
        let inside: Vec<&&Value> = streamed
            .iter()
            .filter(|r| r["event"] == "off_cpu")
            .filter(|r| (start..=end).contains(&u64_of(r, "ts_ns")))
            .filter(|r| u64_of(r, "duration_ns") >= 29_000_000)
            .collect();
        assert_eq!(
            inside.len(),
            1,
            "the sleep {start}..{end}: {inside:?}; the sleeper's records around it: {:?}",
            streamed
                .iter()
                .filter(|r| u64_of(r, "ts_ns").abs_diff(end) < 100_000_000)
                .map(|r| (
                    r["event"].clone(),
                    u64_of(r, "ts_ns"),
                    u64_of(r, "duration_ns"),
                    r["cpu"].clone()
                ))
                .collect::<Vec<_>>()
        );
        let r = inside[0];
        assert_eq!(r["reason"], "sleep", "{r}");
        assert!(u64_of(r, "duration_ns") <= end - start, "{r}");
        // named where it blocked, unless its switch-in was not traced (the
        // stack is read at the switch-in: see switch_in_unseen)
        assert!(
            r["switch_in_unseen"] == true
                || r["blocked_in"]
                    .as_str()
                    .is_some_and(|f| f.contains("nanosleep")),
            "{r}"
        );
    }
    // what is streamed is a part of what is summed
    let sums = summaries(&recs, tid);
    let summed_off: u64 = sums.iter().map(|r| u64_of(r, "off_cpu_ns")).sum();
    let streamed_off: u64 = streamed
        .iter()
        .filter(|r| r["event"] == "off_cpu")
        .map(|r| u64_of(r, "duration_ns"))
        .sum();
    let slept: u64 = sums
        .iter()
        .map(|r| r["off_cpu_by_reason_ns"]["sleep"].as_u64().unwrap_or(0))
        .sum();
    assert!(slept >= 60 * 30_000_000, "{sums:?}");
    assert!(streamed_off <= summed_off, "{streamed_off} > {summed_off}");
}
