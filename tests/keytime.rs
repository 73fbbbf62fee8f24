//! keytime end to end: a real proc_image, controller and a workload whose
//! every fork, vfork, thread, exec, sleep and exit is known.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn events<'a>(recs: &'a [Value], event: &str, tgid: u64) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["collector"] == "keytime" && r["event"] == event && r["tgid"] == tgid)
        .collect()
}

#[test]
fn lifecycle_of_a_thread_group() {
    if !need_root() {
        return;
    }
    let pi = ProcImage::start("lifecycle", &["-k"]);
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
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-k"]);
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
        "busy loop of {busy_cpu} ns CPU shows {busy} ns on CPU"
    );
    let ts: Vec<u64> = on.iter().map(|r| u64_of(r, "ts_ns")).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn level_zero_has_lifecycle_only() {
    if !need_root() {
        return;
    }
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
fn one_thread_only() {
    if !need_root() {
        return;
    }
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
    assert!(recs.iter().any(|r| r["event"] == "target_gone"));
}

#[test]
fn idle_task_of_one_cpu() {
    if !need_root() {
        return;
    }
    let pi = ProcImage::start("idle", &["-k"]);
    pi.control_ok(&["-a", "-p", "0", "-c", "0", "-k"]);
    assert!(pi.wait_for(Duration::from_secs(10), |r| r["event"] == "on_cpu"));
    let recs = pi.finish();
    let cpu_events: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "on_cpu" || r["event"] == "off_cpu")
        .collect();
    assert!(!cpu_events.is_empty());
    for r in cpu_events {
        assert_eq!(
            (r["pid"].as_u64(), r["cpu"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
    }
}

#[test]
fn whole_system_streams_lifecycle_and_summarizes_cpu() {
    if !need_root() {
        return;
    }
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
fn deactivate_stops_output_and_finish_removes_pins() {
    if !need_root() {
        return;
    }
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
