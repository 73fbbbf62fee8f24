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
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

/// What came back from the guest: each file of its /tmp/out, as lines.
struct Guest {
    files: HashMap<String, Vec<String>>,
}

impl Guest {
    fn lines(&self, name: &str) -> &[String] {
        self.files
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("the guest sent no {name}"))
    }

    fn text(&self, name: &str) -> String {
        self.lines(name).join("\n")
    }

    fn json(&self, name: &str) -> Vec<Value> {
        self.lines(name)
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {l}"))
            })
            .collect()
    }

    fn records(&self) -> Vec<Value> {
        self.json("records")
    }

    /// The workload's own account: its line with this "event".
    fn truth(&self, file: &str, event: &str) -> Value {
        self.json(file)
            .into_iter()
            .find(|v| v["event"] == event)
            .unwrap_or_else(|| panic!("{file}: no {event}"))
    }

    /// The pid of a phase's workload, and its exit status.
    fn phase(&self, name: &str) -> (u64, Option<i64>) {
        let ph: Vec<Value> = self
            .json("phases")
            .into_iter()
            .filter(|p| p["phase"] == name)
            .collect();
        assert!(!ph.is_empty(), "no phase {name}");
        let pid = ph[0]["pid"].as_u64().unwrap_or(0);
        (pid, ph.iter().find_map(|p| p["exit"].as_i64()))
    }
}

fn parse(results: &str) -> Guest {
    let mut files: HashMap<String, Vec<String>> = HashMap::new();
    let mut cur: Option<String> = None;
    for line in results.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(name) = line.strip_prefix("@@ ") {
            cur = Some(name.to_string());
            files.entry(name.to_string()).or_default();
        } else if let Some(c) = &cur {
            if !line.is_empty() {
                files.get_mut(c).unwrap().push(line.to_string());
            }
        }
    }
    Guest { files }
}

/// Boot the guest once for every test of this file. None: it cannot run
/// here (no qemu, no kernel package) outside CI.
fn guest() -> Option<&'static Guest> {
    static GUEST: OnceLock<Result<Guest, String>> = OnceLock::new();
    let g = GUEST.get_or_init(|| {
        let arch = if arm64_guest() { "aarch64" } else { "x86_64" };
        let out = std::env::temp_dir().join(format!("pi_qemu_{arch}_{}", std::process::id()));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/qemu-kernel-test.sh");
        let run = Command::new(script)
            .args(["--arch", arch, "--out"])
            .arg(&out)
            .output()
            .map_err(|e| format!("run {script}: {e}"))?;
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        eprint!("{stderr}");
        match run.status.code() {
            Some(0) => {}
            Some(2) => return Err(format!("SKIP {}", stderr.trim())),
            _ => return Err(format!("the guest run failed ({}):\n{stderr}", run.status)),
        }
        let results =
            std::fs::read_to_string(out.join("results.txt")).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&out);
        Ok(parse(&results))
    });
    match g {
        Ok(g) => Some(g),
        Err(why) if why.starts_with("SKIP") => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("the QEMU kernel test must run in CI: {why}");
            }
            eprintln!("SKIPPED: {why}");
            None
        }
        Err(why) => panic!("{why}"),
    }
}

fn of<'a>(recs: &'a [Value], collector: &str, event: &str, tgid: u64) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["collector"] == collector && r["event"] == event && r["tgid"] == tgid)
        .collect()
}

#[track_caller]
fn within(what: &str, got: f64, want: f64, pct: f64) {
    let diff = (got - want).abs();
    assert!(
        diff <= want.abs() * pct / 100.0,
        "{what}: got {got}, want {want} within {pct}% (off by {:.2}%)",
        100.0 * diff / want.abs()
    );
}

/// A hold the probes measured against the workload's own measure of it. The
/// probes' traps (~10 us natively) cost up to a millisecond under TCG on
/// x86, several on arm64 (emulated ~10x slower): the hold they see is the
/// workload's, and at most that much longer.
#[track_caller]
fn probed_hold(what: &str, got: u64, want: u64) {
    let traps = if arm64_guest() { 10_000_000 } else { 2_000_000 };
    assert!(
        got * 100 >= want * 95 && got <= want + traps,
        "{what}: {got} ns, the workload held it {want} ns"
    );
}

fn arm64_guest() -> bool {
    std::env::var("PROC_IMAGE_QEMU_ARCH").is_ok_and(|a| a == "aarch64")
}

#[test]
fn every_collector_loads_on_6_1() {
    if !need_root() {
        return;
    }
    let Some(g) = guest() else { return };
    let uname = g.text("uname");
    assert!(uname.starts_with("6.1."), "the guest ran {uname}");
    let err = g.text("proc_image.err");
    assert!(
        err.contains("loaded keytime, lock, resource, syscall, schedule; ready"),
        "{err}"
    );
    let ctl = g.text("controller");
    assert!(
        ctl.contains("loaded keytime, lock, resource, syscall, schedule; active none"),
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
fn keytime_lifecycle_is_exact_on_6_1() {
    if !need_root() {
        return;
    }
    let Some(g) = guest() else { return };
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
fn syscall_counts_are_exact_on_6_1() {
    if !need_root() {
        return;
    }
    let Some(g) = guest() else { return };
    check_known_syscalls(g, "syscalls", 10_000);
}

/// The same over several default (1 s) intervals.
#[test]
#[ignore = "the syscall collector resets a thread's figures of the interval that just ended when the thread makes its next syscall, before proc_image reads them (bpf/syscall.bpf.c): a busy thread's records lose whole intervals"]
fn syscall_counts_are_exact_over_intervals_on_6_1() {
    if !need_root() {
        return;
    }
    let Some(g) = guest() else { return };
    check_known_syscalls(g, "syscalls_intervals", 100_000);
}

#[test]
fn resource_rss_agrees_with_proc_on_6_1() {
    if !need_root() {
        return;
    }
    let Some(g) = guest() else { return };
    let (pid, exit) = g.phase("resource");
    assert_eq!(exit, Some(0));
    let all = g.records();
    let recs: Vec<&Value> = all
        .iter()
        .filter(|r| r["event"] == "resource" && r["pid"] == pid)
        .collect();
    // an interval inside the pause after a mark carries the mark's figures
    let in_pause = |mark: &Value| -> &Value {
        let (at, pause) = (u64_of(mark, "ts_ns"), u64_of(mark, "pause_ms") * 1_000_000);
        recs.iter()
            .copied()
            .find(|r| {
                let end = u64_of(r, "ts_ns");
                end - u64_of(r, "interval_ns") >= at && end < at + pause
            })
            .unwrap_or_else(|| panic!("no interval inside the pause after {mark}"))
    };
    let mark = |m: &str| g.truth("resource.truth", m);
    let (start, burned, allocated, read) = (
        mark("start"),
        mark("burned"),
        mark("allocated"),
        mark("read"),
    );

    // RSS through the pre-6.2 struct mm_rss_stat against VmRSS, read in the guest
    for m in [&allocated, &read] {
        within(
            "RSS vs /proc/PID/status VmRSS",
            u64_of(in_pause(m), "rss_kib") as f64,
            u64_of(m, "vmrss_kib") as f64,
            5.0,
        );
    }
    within(
        "RSS rise over the 100 MiB allocation",
        (u64_of(in_pause(&allocated), "rss_kib") - u64_of(in_pause(&burned), "rss_kib")) as f64,
        100.0 * 1024.0,
        5.0,
    );
    // on-CPU time over the burn: the counter /proc/PID/schedstat shows
    within(
        "CPU over the burn vs /proc/PID/schedstat",
        (u64_of(in_pause(&burned), "cpu_ns_total") - u64_of(in_pause(&start), "cpu_ns_total"))
            as f64,
        (u64_of(&burned, "run_ns") - u64_of(&start, "run_ns")) as f64,
        5.0,
    );
    // the exit sample, taken at sched_process_exit: before 6.16 that fires
    // after exit_mm(), so it has no RSS, but CPU time and I/O up to the end
    let exited: Vec<&&Value> = recs.iter().filter(|r| r["exited"] == true).collect();
    assert_eq!(exited.len(), 1, "one exit sample: {exited:?}");
    assert_eq!(u64_of(exited[0], "rss_kib"), 0, "{}", exited[0]);
    for key in ["cpu_ns_total", "read_bytes_total", "write_bytes_total"] {
        assert!(
            u64_of(exited[0], key) >= u64_of(in_pause(&read), key),
            "{key} at exit: {}",
            exited[0]
        );
    }
    // the 20 MiB read back
    let rchar = (u64_of(&read, "rchar") - u64_of(&start, "rchar")) as f64;
    within(
        "bytes read vs /proc/PID/io rchar",
        (u64_of(in_pause(&read), "read_bytes_total") - u64_of(in_pause(&start), "read_bytes_total"))
            as f64,
        rchar,
        5.0,
    );
}

#[test]
fn lock_records_of_the_lock_workload_on_6_1() {
    if !need_root() {
        return;
    }
    let Some(g) = guest() else { return };
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
fn schedule_figures_on_6_1() {
    if !need_root() {
        return;
    }
    let Some(g) = guest() else { return };
    let threads = g.truth("sched.truth", "threads");
    let busy = threads["busy"][0].as_u64().unwrap();
    let sleeper = threads["sleeper"].as_u64().unwrap();
    let recs = g.records();
    let of_thread = |pid: u64| -> Vec<&Value> {
        recs.iter()
            .filter(|r| r["collector"] == "schedule" && r["pid"] == pid && u64_of(r, "count") > 0)
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
}
