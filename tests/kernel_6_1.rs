//! proc_image on Debian 12's kernel (6.1), booted under QEMU by
//! scripts/qemu-kernel-test.sh: one proc_image in the guest loads every
//! collector and traces known workloads; the guest's raw output (records,
//! the workloads' own account and /proc figures read inside the guest) is
//! checked here. 6.1 is older than the machine's kernel in the ways the code
//! cares about: `mm->rss_stat` is the pre-6.2 `struct mm_rss_stat`, and
//! sched_process_exit fires after exit_mm().
//!
//! The guest boots once; each test checks one collector of that one run.
//! PROC_IMAGE_QEMU_ARCH=aarch64 runs the same checks on Debian's arm64 6.1
//! (scripts/qemu-aarch64-test.sh; about 10 times slower, not in CI).

mod common;

use std::collections::HashMap;

use common::qemu::*;
use common::*;
use serde_json::Value;

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn every_collector_loads_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    let uname = g.text("uname");
    assert!(uname.starts_with("6.1."), "the guest ran {uname}");
    let err = g.text("proc_image.err");
    assert!(
        err.contains("loaded keytime, lock, resource, syscall, schedule, futex; ready"),
        "{err}"
    );
    let ctl = g.text("controller");
    assert!(
        ctl.contains("ready; loaded keytime, lock, resource, syscall, schedule, futex\n"),
        "controller --status:\n{ctl}"
    );
    assert!(!ctl.contains("\nexit "), "a controller call failed:\n{ctl}");
    assert_eq!(g.phase("proc_image").1, Some(0), "proc_image's exit\n{err}");
    // nothing lost, nothing undecodable
    assert!(
        !g.records().iter().any(|r| r["event"] == "lost"),
        "records were lost"
    );
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn keytime_lifecycle_is_exact_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    let (pid, exit) = g.phase("lifecycle");
    assert_eq!(exit, Some(7));
    let recs = g.records();
    let children = g.truth("lifecycle.truth", "children");
    let exec = g.truth("lifecycle.truth", "exec");
    let child_pids = |event: &str| {
        sorted(
            of(&recs, "keytime", event, pid)
                .iter()
                .map(|r| u64_of(r, "child_pid"))
                .collect(),
        )
    };
    assert_eq!(child_pids("fork"), ids(&children["forks"]));
    assert_eq!(child_pids("vfork"), ids(&children["vforks"]));
    assert_eq!(child_pids("pthread_create"), ids(&children["threads"]));

    // one child_exit per child (none of the processes is a target), with its status
    let mut ends: Vec<(u64, String, u64)> = of(&recs, "keytime", "child_exit", pid)
        .iter()
        .map(|r| {
            (
                u64_of(r, "child_pid"),
                r["kind"].to_string(),
                u64_of(r, "exit_code"),
            )
        })
        .collect();
    ends.sort();
    let mut want = Vec::new();
    for (kind, list) in [
        ("fork", "forks"),
        ("vfork", "vforks"),
        ("pthread_create", "threads"),
    ] {
        for (i, c) in children[list].as_array().unwrap().iter().enumerate() {
            let code = if kind == "fork" { 10 + i as u64 } else { 0 };
            want.push((c.as_u64().unwrap(), format!("\"{kind}\""), code));
        }
    }
    want.sort();
    assert_eq!(ends, want);

    let execs = of(&recs, "keytime", "execve", pid);
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(execs[0]["filename"], exec["filename"]);
    assert_eq!(execs[0]["argv"], exec["argv"]);

    // the threads exit 0, the process 7 (after its exec)
    let exits = of(&recs, "keytime", "exit", pid);
    let thread_exits = sorted(
        exits
            .iter()
            .filter(|r| r["pid"] != pid)
            .map(|r| u64_of(r, "pid"))
            .collect(),
    );
    assert_eq!(thread_exits, ids(&children["threads"]));
    let main: Vec<&&Value> = exits.iter().filter(|r| r["pid"] == pid).collect();
    assert_eq!(main.len(), 1, "{main:?}");
    assert_eq!(main[0]["exit_code"], 7);
    assert_eq!(main[0]["signal"], 0);
    assert_eq!(main[0]["group_dead"], true);

    // the 200 ms nanosleep is off-CPU time of the main thread, reason sleep
    let (start, end) = (
        u64_of(&exec, "sleep_start_ns"),
        u64_of(&exec, "sleep_end_ns"),
    );
    let asleep: u64 = of(&recs, "keytime", "off_cpu", pid)
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
        asleep * 100 >= truth * 95 && asleep <= truth + 50_000_000,
        "off-CPU sleep {asleep} ns during a sleep of {truth} ns"
    );
    // and the busy loop after it is on-CPU time
    let busy: u64 = of(&recs, "keytime", "on_cpu", pid)
        .iter()
        .filter(|r| r["pid"] == pid)
        .filter(|r| {
            let ts = u64_of(r, "ts_ns");
            ts > end && ts - u64_of(r, "duration_ns") < u64_of(&exec, "busy_end_ns")
        })
        .map(|r| u64_of(r, "duration_ns"))
        .sum();
    let spun = u64_of(&exec, "busy_cpu_ns");
    assert!(
        busy * 100 >= spun * 95,
        "on-CPU {busy} ns over a spin of {spun} ns of CPU"
    );
}

/// A missing path, then busybox sh's PATH search past two directories
/// without the program: three ENOENTs from the execve exit tracepoint.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn keytime_failed_execs_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    let (pid, exit) = g.phase("exec_fail");
    assert_eq!(exit, Some(4));
    let recs = g.records();
    let truth = g.truth("exec_fail.truth", "exec_fail");
    let dirs: Vec<&str> = truth["path"].as_str().unwrap().split(':').collect();
    let failed: Vec<(String, String)> = of(&recs, "keytime", "execve_failed", pid)
        .iter()
        .map(|r| {
            (
                r["filename"].as_str().unwrap().into(),
                r["error"].as_str().unwrap().into(),
            )
        })
        .collect();
    let enoent = |f: String| (f, "ENOENT".to_string());
    assert_eq!(
        failed,
        vec![
            enoent(truth["missing"].as_str().unwrap().into()),
            enoent(format!("{}/proc_image_workload", dirs[0])),
            enoent(format!("{}/proc_image_workload", dirs[1])),
        ]
    );
    assert_eq!(of(&recs, "keytime", "execve", pid).len(), 2);
}

/// A workload in a 32 MiB memory cgroup, OOM-killed: its exit says so.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn keytime_oom_kill_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    let (pid, exit) = g.phase("oom");
    assert_eq!(
        exit,
        Some(128 + 9),
        "the shell's status of a SIGKILLed workload"
    );
    let recs = g.records();
    let exits = of(&recs, "keytime", "exit", pid);
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0]["signal"], 9, "{exits:?}");
    assert_eq!(exits[0]["oom_kill"], true, "{exits:?}");
    assert_eq!(exits[0]["killed_by"]["kernel"], true, "{exits:?}");
}

/// The syscall records of a `syscalls` workload run: exactly `getppid`
/// getppid, 500 write, then nanosleep, getpid, getuid, getgid (exit_group
/// never returns, so it is not counted), over however many intervals.
fn check_known_syscalls(g: &Guest, phase: &str, getppid: u64) {
    let (pid, exit) = g.phase(phase);
    assert_eq!(exit, Some(0));
    let recs = g.records();
    let want = getppid + 500 + 4;
    let totals = of(&recs, "syscall", "syscalls_total", pid);
    let total: u64 = totals.iter().map(|r| u64_of(r, "count")).sum();
    assert_eq!(
        total,
        want,
        "the target's totals over {} intervals",
        totals.len()
    );
    let threads = of(&recs, "syscall", "syscalls", pid);
    assert!(!threads.is_empty(), "no syscall records");
    let count: u64 = threads.iter().map(|r| u64_of(r, "count")).sum();
    assert_eq!(
        count,
        want,
        "the thread's records over {} intervals",
        totals.len()
    );
    let mut by_name: HashMap<String, u64> = HashMap::new();
    for t in &totals {
        for (name, n) in t["by_name"].as_object().unwrap() {
            *by_name.entry(name.clone()).or_default() += n.as_u64().unwrap();
        }
    }
    assert_eq!(by_name.get("getppid"), Some(&getppid), "{by_name:?}");
    assert_eq!(by_name.get("write"), Some(&500), "{by_name:?}");
    for name in ["getpid", "getuid", "getgid"] {
        assert_eq!(by_name.get(name), Some(&1), "{name}: {by_name:?}");
    }
    assert_eq!(by_name.values().sum::<u64>(), want, "{by_name:?}");
    let last = threads
        .iter()
        .rev()
        .find(|r| u64_of(r, "count") > 0)
        .unwrap();
    let seq: Vec<&str> = last["sequence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        seq[seq.len() - 6..],
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
    assert!(
        u64_of(last, "max_ns") >= 50_000_000,
        "the 50 ms sleep: {last}"
    );
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn syscall_counts_are_exact_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    check_known_syscalls(g, "syscalls", 10_000);
}

/// The same over several default (1 s) intervals.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn syscall_counts_are_exact_over_intervals_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    check_known_syscalls(g, "syscalls_intervals", 100_000);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn resource_rss_agrees_with_proc_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    check_resource(g);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn lock_records_of_the_lock_workload_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    let (pid, exit) = g.phase("locks");
    assert_eq!(exit, Some(0));
    let recs = g.records();
    let locks = g.truth("locks.truth", "locks");
    let done = g.truth("locks.truth", "done");
    let at = |event: &str, lock: &str| -> Vec<&Value> {
        of(&recs, "lock", event, pid)
            .into_iter()
            .filter(|r| r["lock_addr"] == locks[lock])
            .collect()
    };
    let holds = |rs: &[&Value]| sorted(rs.iter().map(|r| u64_of(r, "hold_ns")).collect());

    // mutex: two 20 ms holds, the second acquisition waited for the first
    let mutex = at("lock", "mutex");
    assert_eq!(mutex.len(), 2, "{mutex:?}");
    for (got, want) in holds(&mutex).iter().zip(ids(&done["mutex"]["hold_ns"])) {
        probed_hold("mutex hold", *got, want);
    }
    assert_eq!(
        mutex.iter().filter(|r| r["contended"] == true).count(),
        1,
        "{mutex:?}"
    );
    // rwlock: two read holds, one write hold that waited
    let rw = at("lock", "rwlock");
    let kinds = |k: &str| rw.iter().filter(|r| r["lock_type"] == k).count();
    assert_eq!(
        (kinds("rwlock_read"), kinds("rwlock_write")),
        (2, 1),
        "{rw:?}"
    );
    // spinlock: one hold of about 5 ms
    let spin = at("lock", "spinlock");
    assert_eq!(spin.len(), 1, "{spin:?}");
    probed_hold(
        "spin hold",
        u64_of(spin[0], "hold_ns"),
        u64_of(&done["spinlock"], "hold_ns"),
    );
    // a trylock that failed with EBUSY and a timedlock with ETIMEDOUT
    let failed = at("lock_failed", "trylock_mutex");
    let errors = {
        let mut e: Vec<&str> = failed
            .iter()
            .map(|r| r["error"].as_str().unwrap())
            .collect();
        e.sort();
        e
    };
    assert_eq!(errors, ["EBUSY", "ETIMEDOUT"], "{failed:?}");
    // recursive: three holds, innermost released first
    assert_eq!(at("lock", "recursive_mutex").len(), 3);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn futex_waits_of_the_futex_workload_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    let (pid, exit) = g.phase("futex");
    assert_eq!(exit, Some(0));
    let recs = g.records();
    let rounds: Vec<Value> = g
        .json("futex.truth")
        .into_iter()
        .filter(|v| v["event"] == "futex_round")
        .collect();
    assert_eq!(rounds.len(), 20);
    // one contended wait per round on the mutex, woken by that round's holder
    // (6.1 has no futex_wait/futex_wake syscalls: their hooks are skipped)
    let waits: Vec<&Value> = of(&recs, "futex", "futex_wait", pid)
        .into_iter()
        .filter(|r| r["uaddr"] == rounds[0]["uaddr"])
        .collect();
    assert_eq!(waits.len(), rounds.len(), "{waits:?}");
    for round in &rounds {
        let (release, acquire) = (u64_of(round, "release_ns"), u64_of(round, "acquire_ns"));
        let mine: Vec<&&Value> = waits
            .iter()
            .filter(|r| {
                r["pid"] == round["waiter"] && (release..=acquire).contains(&u64_of(r, "ts_ns"))
            })
            .collect();
        assert_eq!(mine.len(), 1, "{round}");
        assert_eq!(mine[0]["woken_by"]["pid"], round["holder"], "{}", mine[0]);
        let wait = u64_of(mine[0], "wait_ns");
        assert!(wait >= release - u64_of(round, "blocked_ns"));
        assert!(wait <= acquire - u64_of(round, "request_ns"));
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn schedule_figures_on_6_1() {
    need_root();
    let Some(g) = guest("6.1") else { return };
    let threads = g.truth("sched.truth", "threads");
    let busy = threads["busy"][0].as_u64().unwrap();
    let sleeper = threads["sleeper"].as_u64().unwrap();
    let recs = g.records();
    let of_thread = |pid: u64| -> Vec<&Value> {
        recs.iter()
            .filter(|r| r["event"] == "schedule" && r["pid"] == pid && u64_of(r, "count") > 0)
            .collect()
    };
    let avg = |rs: &[&Value]| -> u64 {
        let count: u64 = rs.iter().map(|r| u64_of(r, "count")).sum();
        assert!(count > 0, "no scheduling seen");
        rs.iter().map(|r| u64_of(r, "sum_ns")).sum::<u64>() / count
    };
    let (b, s) = (of_thread(busy), of_thread(sleeper));
    let (busy_avg, sleeper_avg) = (avg(&b), avg(&s));
    eprintln!("6.1 guest: busy thread waits {busy_avg} ns, the sleeper {sleeper_avg} ns");
    // two spinning threads pinned to one CPU wait for each other's slice;
    // the sleeper, pinned there too, is woken ahead of them (TCG blurs the
    // figures, so a wide margin)
    assert!(
        busy_avg > 3 * sleeper_avg,
        "busy {busy_avg} ns vs sleeper {sleeper_avg} ns"
    );
    for r in b.iter().chain(&s) {
        assert!(u64_of(r, "sys_count") >= u64_of(r, "count"), "{r}");
        assert!(u64_of(r, "sys_max_ns") >= u64_of(r, "max_ns"), "{r}");
        assert!(u64_of(r, "sys_min_ns") <= u64_of(r, "min_ns"), "{r}");
        let hist: u64 = r["hist"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| u64_of(x, "count"))
            .sum();
        assert_eq!(hist, u64_of(r, "count"), "{r}");
        assert_eq!(
            u64_of(r, "avg_ns"),
            u64_of(r, "sum_ns") / u64_of(r, "count"),
            "{r}"
        );
    }
    // per thread (task storage read by a task iterator, 6.1's layouts): the
    // thread's own record of each interval has the target's figures
    for r in b.iter().chain(&s) {
        let thread: Vec<&Value> = recs
            .iter()
            .filter(|t| t["event"] == "schedule_thread" && t["ts_ns"] == r["ts_ns"])
            .collect();
        assert_eq!(thread.len(), 1, "{r}");
        assert_eq!(thread[0]["pid"], r["pid"]);
        assert_eq!(u64_of(thread[0], "count"), u64_of(r, "count"), "{r}");
        assert_eq!(u64_of(thread[0], "sum_ns"), u64_of(r, "sum_ns"), "{r}");
        assert_eq!(thread[0]["policy"], "normal");
        assert_eq!(thread[0]["nice"], 0);
    }
}
