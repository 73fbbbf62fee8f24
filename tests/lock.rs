//! lock end to end, against a workload whose locking is known: a contended
//! mutex (two 20 ms holds), a rwlock (two readers, then a waiting writer),
//! a 5 ms spinlock hold and a trylock that fails with EBUSY. The workload
//! measures its own holds and waits; the probes are checked in the
//! processes' memory (/proc/PID/mem), where an armed uprobe is an int3.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use common::*;
use serde_json::Value;

const INT3: u8 = 0xcc;

/// The kernel has one uprobe per probed instruction of a library, shared
/// by every set of probes on it. When one proc_image lets a set go, the
/// kernel takes that breakpoint out of every process no other set wants:
/// a traced process in a window without a live probed thread too, where
/// it would pass for a call missed. The tests that count those calls run
/// while no other lock test moves probes.
static LIBC_PROBES: RwLock<()> = RwLock::new(());

fn alone_with_libc_probes() -> RwLockWriteGuard<'static, ()> {
    LIBC_PROBES.write().unwrap_or_else(|e| e.into_inner())
}

fn beside_other_libc_probes() -> RwLockReadGuard<'static, ()> {
    LIBC_PROBES.read().unwrap_or_else(|e| e.into_inner())
}

/// The first byte of `addr` in process `pid`'s memory.
fn code_byte(pid: u64, addr: u64) -> Option<u8> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut b = [0u8];
    mem.read_exact_at(&mut b, addr).ok()?;
    Some(b[0])
}

fn addr_of(truth: &Value, lock: &str) -> String {
    truth[lock].as_str().unwrap().to_string()
}

fn of<'a>(recs: &'a [Value], event: &str, addr: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["collector"] == "lock" && r["event"] == event && r["lock_addr"] == addr)
        .collect()
}

#[track_caller]
fn within(got: u64, want: u64, pct: u64, what: &str) {
    let diff = got.abs_diff(want);
    assert!(
        diff * 100 <= want * pct,
        "{what}: {got} ns is not within {pct}% of {want} ns"
    );
}

fn u64s(v: &Value) -> Vec<u64> {
    let mut out: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    out.sort();
    out
}

fn hold_of(recs: &[&Value]) -> Vec<u64> {
    let mut out: Vec<u64> = recs.iter().map(|r| u64_of(r, "hold_ns")).collect();
    out.sort();
    out
}

/// Check every figure of one `locks` run (`locks`: its addresses, `done`:
/// what it measured) against the records.
fn check_known_locking(recs: &[Value], locks: &Value, done: &Value, tgid: u64) {
    // mutex: two holds of 20 ms; the second locker waited for the first
    let mutex = of(recs, "lock", &addr_of(locks, "mutex"));
    assert_eq!(mutex.len(), 2, "mutex acquisitions: {mutex:?}");
    for (got, want) in hold_of(&mutex).iter().zip(u64s(&done["mutex"]["hold_ns"])) {
        within(*got, want, 10, "mutex hold");
        // a sleep never ends early; late, it is the workload's figure above
        assert!(*got >= 18_000_000, "mutex hold {got} ns < 20 ms - 10%");
    }
    let second: Vec<&&Value> = mutex.iter().filter(|r| r["contended"] == true).collect();
    assert_eq!(second.len(), 1, "one contended acquisition: {mutex:?}");
    // its wait is what the workload saw around its lock call (which also
    // holds any delay in getting a CPU back once the lock was free), and no
    // shorter than the rest of the first hold
    let m = &done["mutex"];
    let wait = u64_of(second[0], "wait_ns");
    let waited = u64_of(m, "second_acquired_ns") - u64_of(m, "second_request_ns");
    within(wait, waited, 10, "second locker's wait");
    let rest_of_hold = u64_of(m, "first_release_ns") - u64_of(m, "second_request_ns");
    assert!(
        wait + 1_000_000 >= rest_of_hold,
        "wait {wait} ns, but the lock was held {rest_of_hold} ns after the request"
    );

    // rwlock: two read holds, then the writer that waited for both
    let rw = addr_of(locks, "rwlock");
    let all: Vec<&Value> = of(recs, "lock", &rw);
    let reads: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|r| r["lock_type"] == "rwlock_read")
        .collect();
    let writes: Vec<&Value> = all
        .iter()
        .copied()
        .filter(|r| r["lock_type"] == "rwlock_write")
        .collect();
    assert_eq!((reads.len(), writes.len()), (2, 1), "rwlock: {all:?}");
    for (got, want) in hold_of(&reads)
        .iter()
        .zip(u64s(&done["rwlock"]["read_hold_ns"]))
    {
        within(*got, want, 10, "read hold");
    }
    within(
        u64_of(writes[0], "hold_ns"),
        u64_of(&done["rwlock"], "write_hold_ns"),
        10,
        "write hold",
    );
    assert_eq!(writes[0]["contended"], true);
    let last_read_release = reads.iter().map(|r| u64_of(r, "release_ns")).max().unwrap();
    assert!(
        u64_of(writes[0], "acquire_ns") >= last_read_release,
        "the writer waited for the readers"
    );

    // spinlock: one 5 ms hold
    let spin = of(recs, "lock", &addr_of(locks, "spinlock"));
    assert_eq!(spin.len(), 1, "spinlock: {spin:?}");
    within(
        u64_of(spin[0], "hold_ns"),
        u64_of(&done["spinlock"], "hold_ns"),
        10,
        "spin hold",
    );
    // a 5 ms sleep never ends early (late on a busy machine: the
    // workload's own figure above holds that)
    assert!(
        u64_of(spin[0], "hold_ns") >= 4_500_000,
        "spin hold < 5 ms - 10%"
    );

    // trylock: failed with EBUSY while the other thread held it
    let busy = addr_of(locks, "trylock_mutex");
    let failed = of(recs, "lock_failed", &busy);
    assert_eq!(failed.len(), 2, "failed try and timed lock: {failed:?}");
    let t = &done["trylock_mutex"];
    assert_eq!(u64_of(t, "ret"), 16);
    let tried = failed
        .iter()
        .find(|r| r["op"] == "trylock")
        .expect("trylock");
    assert_eq!(tried["ret"], 16);
    assert_eq!(tried["error"], "EBUSY");
    assert_eq!(tried["hold_ns"], 0);
    assert_eq!(tried["contended"], true);
    assert_eq!(u64_of(t, "timedlock_ret"), 110);
    let timed = failed
        .iter()
        .find(|r| r["op"] == "timedlock")
        .expect("timedlock");
    assert_eq!(timed["ret"], 110);
    assert_eq!(timed["error"], "ETIMEDOUT");
    within(
        u64_of(timed, "wait_ns"),
        u64_of(t, "timedlock_wait_ns"),
        10,
        "timed wait",
    );
    let held = of(recs, "lock", &busy);
    assert_eq!(held.len(), 1);
    within(
        u64_of(held[0], "hold_ns"),
        u64_of(&done["trylock_mutex"], "hold_ns"),
        10,
        "busy hold",
    );

    // recursive mutex: each unlock closed the innermost hold
    let rec = of(recs, "lock", &addr_of(locks, "recursive_mutex"));
    assert_eq!(rec.len(), 3, "recursive: {rec:?}");
    let want = u64s(&done["recursive_mutex"]["hold_ns"]);
    for (got, want) in hold_of(&rec).iter().zip(&want) {
        within(*got, *want, 10, "recursive hold");
    }
    // released innermost first: the records come out shortest first
    let in_order: Vec<u64> = rec.iter().map(|r| u64_of(r, "hold_ns")).collect();
    assert!(in_order.windows(2).all(|w| w[0] < w[1]), "{in_order:?}");
    assert!(
        rec.iter().all(|r| r["contended"] == false),
        "its holder is no contender"
    );

    // a read hold released by another thread is counted as such, and the
    // reader count it left is right: the write lock after it is uncontended
    let handed = addr_of(locks, "handed_rwlock");
    let unmatched = of(recs, "lock_unmatched", &handed);
    assert_eq!(unmatched.len(), 1, "{unmatched:?}");
    assert_eq!(unmatched[0]["lock_type"], "rwlock_read");
    assert_eq!(unmatched[0]["readers_left"], 0);
    let h = of(recs, "lock", &handed);
    assert_eq!(h.len(), 1, "only the write hold is a hold: {h:?}");
    assert_eq!(h[0]["lock_type"], "rwlock_write");
    assert_eq!(h[0]["contended"], false);

    // summaries add up to the same counts
    let sum = |addr: &str, field: &str| -> u64 {
        recs.iter()
            .filter(|r| r["event"] == "lock_summary" && r["lock_addr"] == addr)
            .map(|r| u64_of(r, field))
            .sum()
    };
    let mutex_addr = addr_of(locks, "mutex");
    assert_eq!(sum(&mutex_addr, "acquisitions"), 2);
    assert_eq!(sum(&mutex_addr, "contended"), 1);
    assert_eq!(sum(&rw, "acquisitions"), 3);
    assert_eq!(sum(&busy, "failed"), 2);
    assert_eq!(sum(&busy, "acquisitions"), 1);
    assert_eq!(sum(&addr_of(locks, "spinlock"), "acquisitions"), 1);
    for r in recs
        .iter()
        .filter(|r| r["collector"] == "lock" && r["event"] != "lock_summary")
    {
        assert_eq!(u64_of(r, "tgid"), tgid, "{r}");
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn known_locking_is_measured() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_known", &["-l"]);
    let mut w = Workload::start(&["locks"]);
    let locks = w.wait_truth("locks", Duration::from_secs(10));
    let pid = u64_of(&locks, "pid");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l", "-i", "500"]);
    // an armed uprobe is an int3 in the target's copy of the code
    let lock_fn = u64_of(&locks, "pthread_mutex_lock");
    assert_eq!(
        code_byte(pid, lock_fn),
        Some(INT3),
        "no probe in the target"
    );
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(20));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    check_known_locking(&recs, &locks, &done, pid);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_and_idle_targets_are_refused() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_refused", &["-l"]);
    for (args, end) in [
        (&["-a", "-l"][..], "the whole system"),
        (
            &["-a", "-p", "0", "-c", "0", "-l"],
            "the idle task of CPU 0",
        ),
    ] {
        let out = pi.controller(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains("lock needs -p TID or -P TGID") && err.trim().ends_with(end),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_forked_child_is_not_traced_and_keeps_no_probe() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_fork", &["-l"]);
    let mut w = Workload::start(&["locks", "--fork"]);
    let locks = w.wait_truth("locks", Duration::from_secs(10));
    let pid = u64_of(&locks, "pid");
    let lock_fn = u64_of(&locks, "pthread_mutex_lock");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    let child = w.wait_truth("child", Duration::from_secs(20));
    let child_pid = u64_of(&child, "pid");
    // fork copied the parent's armed page; the child's first call found no
    // consumer for its mm and the kernel took the breakpoint out
    assert_eq!(code_byte(pid, lock_fn), Some(INT3), "parent lost its probe");
    assert_ne!(
        code_byte(child_pid, lock_fn),
        Some(INT3),
        "probe left in the child"
    );
    assert!(code_byte(child_pid, lock_fn).is_some());

    // -d takes the probes out of the target too
    pi.control_ok(&["-d"]);
    assert!(
        wait_until(Duration::from_secs(8), || code_byte(pid, lock_fn)
            != Some(INT3)),
        "probe left in the target after -d"
    );
    let done = w.truth("done");
    assert!(w.wait().success());
    let recs = pi.finish();
    assert!(
        !recs
            .iter()
            .any(|r| r["tgid"] == child_pid || r["pid"] == child_pid),
        "records from the child"
    );
    // the parent's own locking, all done before the fork, is all there
    check_known_locking(&recs, &locks, &done, pid);
}

/// The target execs (from its leader, or from another thread) and the new
/// image's locking is measured like the first one's.
fn exec_case(test: &str, flag: &str, reattached: bool) {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start(test, &["-l"]);
    let mut w = Workload::start(&["locks", flag]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l", "-i", "500"]);
    // the first line: exec
    w.send_go();
    let locks = w.wait_truth("locks", Duration::from_secs(10));
    assert_eq!(u64_of(&locks, "pid"), pid, "exec keeps the pid");
    let lock_fn = u64_of(&locks, "pthread_mutex_lock");
    // proc_image says when its probes follow the exec (a reattachment
    // took over 0.5 s once, under a full parallel test run): then the
    // second line starts the locking
    assert!(
        pi.wait_for(Duration::from_secs(30), |r| r["event"]
            == "probes_follow_exec"),
        "{}",
        pi.stderr_text()
    );
    let armed = code_byte(pid, lock_fn) == Some(INT3);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(20));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    let follow: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "probes_follow_exec")
        .collect();
    assert_eq!(follow.len(), 1, "{follow:?}");
    assert_eq!(follow[0]["reattached"], reattached);
    assert!(armed, "no probe in the new image");
    check_known_locking(&recs, &locks, &done, pid);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn exec_by_the_leader_keeps_being_traced() {
    exec_case("lock_exec", "--exec", false);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn exec_from_another_thread_is_reattached() {
    exec_case("lock_exec_thread", "--exec-from-thread", true);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn one_thread_is_traced_alone() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_thread", &["-l"]);
    let mut w = Workload::start(&["locks"]);
    let locks = w.wait_truth("locks", Duration::from_secs(10));
    let pid = u64_of(&locks, "pid");
    // -p: the uprobes go on its process, BPF keeps this thread's calls
    pi.control_ok(&["-a", "-p", &pid.to_string(), "-l"]);
    w.go();
    w.wait_truth("done", Duration::from_secs(20));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    let mine: Vec<&Value> = recs
        .iter()
        .filter(|r| r["collector"] == "lock" && r["event"] != "lock_summary")
        .collect();
    assert!(
        mine.iter().all(|r| r["pid"] == pid),
        "other threads' records"
    );
    // the main thread is the mutex's second locker, the writer, the
    // spinlock holder and the failing try/timed locks: nothing of the others
    assert_eq!(of(&recs, "lock", &addr_of(&locks, "mutex")).len(), 1);
    let rw = of(&recs, "lock", &addr_of(&locks, "rwlock"));
    assert_eq!(rw.len(), 1);
    assert_eq!(rw[0]["lock_type"], "rwlock_write");
    assert_eq!(of(&recs, "lock", &addr_of(&locks, "spinlock")).len(), 1);
    assert_eq!(
        of(&recs, "lock_failed", &addr_of(&locks, "trylock_mutex")).len(),
        2
    );
    assert_eq!(
        of(&recs, "lock", &addr_of(&locks, "trylock_mutex")).len(),
        0
    );
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_static_program_is_refused_clearly() {
    need_root();
    let _probes = beside_other_libc_probes();
    use std::os::unix::process::CommandExt;
    let pi = ProcImage::start("lock_static", &["-l", "-k"]);
    // ldconfig is linked statically; PTRACE_TRACEME stops it right after
    // exec, so it stays there with no C library mapped
    let mut child = unsafe {
        std::process::Command::new("/sbin/ldconfig")
            .arg("-p")
            .stdout(std::process::Stdio::null())
            .pre_exec(|| {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                Ok(())
            })
            .spawn()
            .expect("spawn ldconfig")
    };
    let pid = child.id().to_string();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| m.contains("ldconfig"))
    }));
    let out = pi.controller(&["-a", "-P", &pid, "-l"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("statically linked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // without collector flags, lock is left out and the rest goes ahead
    let answer = pi.control_ok(&["-a", "-P", &pid]);
    assert!(answer.contains("activated keytime on"), "{answer}");
    assert!(
        answer.trim_end().ends_with("; not lock: cannot trace it"),
        "{answer}"
    );
    let _ = child.kill();
    let _ = child.wait();
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_deleted_libc_is_still_probed() {
    need_root();
    let _probes = beside_other_libc_probes();
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    // the workload runs on a copy of libc, deleted before tracing starts
    // (as after an upgrade of libc under a running process)
    let dir = std::env::temp_dir().join(format!("pi_lock_libc_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc_path = maps
        .lines()
        .filter_map(|l| l.split_ascii_whitespace().nth(5))
        .find(|p| p.ends_with("/libc.so.6"))
        .unwrap()
        .to_string();
    std::fs::copy(&libc_path, dir.join("libc.so.6")).unwrap();
    let mut child = Command::new(WORKLOAD)
        .arg("locks")
        .env("LD_LIBRARY_PATH", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let locks: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let pid = u64_of(&locks, "pid");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(
        maps.contains(&format!("{}/libc.so.6", dir.display())),
        "{maps}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let pi = ProcImage::start("lock_deleted", &["-l"]);
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let done: Value = lines
        .map_while(Result::ok)
        .find_map(|l| {
            serde_json::from_str::<Value>(&l)
                .ok()
                .filter(|v| v["event"] == "done")
        })
        .expect("done");
    assert!(child.wait().unwrap().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    check_known_locking(&recs, &locks, &done, pid);
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn exec_into_a_static_program_is_reported() {
    need_root();
    let _probes = beside_other_libc_probes();
    // a statically linked program that sleeps 2 s
    let dir = std::env::temp_dir().join(format!("pi_lock_static_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, bin) = (dir.join("sleeper.c"), dir.join("sleeper"));
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void) { sleep(2); return 0; }\n",
    )
    .unwrap();
    let built = std::process::Command::new("clang")
        .args(["-static", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run clang");
    assert!(built.success(), "clang -static failed");

    let pi = ProcImage::start("lock_exec_static", &["-l"]);
    let mut w = Workload::start(&["locks", "--exec-into", bin.to_str().unwrap()]);
    let pid = u64_of(&w.wait_truth("ready", Duration::from_secs(10)), "pid");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    assert!(
        pi.wait_for(Duration::from_secs(5), |r| r["event"]
            == "no_pthread_library"),
        "{}",
        pi.stderr_text()
    );
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let _ = std::fs::remove_dir_all(&dir);
    let recs = pi.finish();
    let gone = recs
        .iter()
        .find(|r| r["event"] == "no_pthread_library")
        .unwrap();
    assert!(gone["reason"]
        .as_str()
        .unwrap()
        .contains("statically linked"));
    assert!(recs
        .iter()
        .any(|r| r["event"] == "exec" && r["tgid"] == pid));
    assert!(!recs.iter().any(|r| r["event"] == "probes_follow_exec"));
}

/// The `lock` records of one lock, by the thread that took it.
fn acquisitions_by_thread(recs: &[Value], addr: &str) -> std::collections::BTreeMap<u64, u64> {
    let mut by = std::collections::BTreeMap::new();
    for r in of(recs, "lock", addr) {
        *by.entry(u64_of(r, "pid")).or_insert(0) += 1;
    }
    by
}

/// The perf events process `pid` holds open (one per uprobe it attached).
fn perf_events_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_str() == Some("anon_inode:[perf_event]"))
                .count()
        })
        .unwrap_or(0)
}

fn no_losses(recs: &[Value]) {
    let lost: Vec<&Value> = recs.iter().filter(|r| r["event"] == "lost").collect();
    assert!(lost.is_empty(), "{lost:?}");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn the_main_thread_exiting_leaves_the_probes_armed() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_leader_exit", &["-l"]);
    let mut w = Workload::start(&[
        "lock-leader-exit",
        "--threads",
        "4",
        "--pairs",
        "1000",
        "--second-go",
    ]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    let mutex = addr_of(&ready, "mutex");
    let lock_fn = u64_of(&ready, "pthread_mutex_lock");
    // the default interval: the workers go on for several
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    // one probe set, on the only thread there is
    let one_set = perf_events_of(pi.child.id());
    assert!(one_set > 0);
    w.send_go();
    w.wait_truth("threads_started", Duration::from_secs(10));
    // the threads started: a second set goes on one of them. Attaching ~30
    // uprobes takes 0.3-0.9 s when another proc_image detaches its own at
    // the same time (each waits for an RCU grace period); a main thread
    // that exits before the second set is in leaves the probes unarmed
    // meanwhile (calls_while_no_probed_thread_lives_are_counted_lost).
    // Here the main thread exits once the second set is armed.
    assert!(
        wait_until(Duration::from_secs(30), || perf_events_of(pi.child.id())
            >= 2 * one_set),
        "no second probe set:\n{}",
        pi.stderr_text()
    );
    w.go();
    let main = w.wait_truth("main_exits", Duration::from_secs(10));
    let main_tid = u64_of(&main, "tid");
    assert_eq!(main_tid, pid);
    // the workers still lock after the main thread is gone: the breakpoint
    // stays in the process (the kernel takes it out at the first hit that
    // no attached perf event's thread can claim)
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").unwrap().1.starts_with('Z'))
    }));
    // the leader's /proc/PID/mem has no mm now: read through a live thread
    let byte = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .find_map(|tid| {
            let mem = std::fs::File::open(format!("/proc/{pid}/task/{tid}/mem")).ok()?;
            let mut b = [0u8];
            mem.read_exact_at(&mut b, lock_fn).ok()?;
            Some(b[0])
        });
    assert_eq!(byte, Some(INT3), "probe gone after the main thread exited");
    let done = w.wait_truth("done", Duration::from_secs(60));
    assert!(w.wait().success());
    pi.expect_target_gone(Duration::from_secs(5));
    let recs = pi.finish();
    // every acquisition, per thread, as the workload counted them
    let by = acquisitions_by_thread(&recs, &mutex);
    let mut want = std::collections::BTreeMap::new();
    want.insert(pid, u64_of(&done, "main_pairs"));
    for wk in done["workers"].as_array().unwrap() {
        want.insert(u64_of(wk, "tid"), u64_of(wk, "pairs"));
        // most of them after the main thread was gone
        assert!(u64_of(wk, "pairs_after_main_exit") > 0, "{wk}");
    }
    assert_eq!(want.len(), 5);
    assert_eq!(by, want);
    no_losses(&recs);
    // the anchors' exits and new threads move the probes: proc_image acts
    // on those records and prints none
    let internal: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "probed_thread_exit" || r["event"] == "new_thread")
        .collect();
    assert!(internal.is_empty(), "{internal:?}");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn four_threads_of_10000_pairs_are_counted_exactly() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_storm", &["-l"]);
    let mut w = Workload::start(&[
        "lock-storm",
        "--threads",
        "4",
        "--pairs",
        "10000",
        "--pause-ms",
        "10",
    ]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    let mutex = addr_of(&ready, "mutex");
    // the default interval (1 s): the storm lasts several
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(120));
    assert!(w.wait().success());
    // a hang detector: proc_image writes 40,000 records first (a debug
    // build takes seconds); its stderr is cheaper to poll than its records
    assert!(
        wait_until(Duration::from_secs(60), || pi
            .stderr_text()
            .contains("has exited")),
        "{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    let mut by = acquisitions_by_thread(&recs, &mutex);
    // the main thread's last pair, alone: uncontended, so the reader and
    // writer counts that 4 threads on 2 CPUs updated at once came back to 0
    let last = u64_of(&done, "last_pair_by");
    assert_eq!(by.remove(&last), Some(1));
    let alone: Vec<&Value> = of(&recs, "lock", &mutex)
        .into_iter()
        .filter(|r| u64_of(r, "pid") == last)
        .collect();
    assert_eq!(
        alone[0]["contended"], false,
        "count left behind: {:?}",
        alone[0]
    );
    let want: std::collections::BTreeMap<u64, u64> = ids(&done["tids"])
        .into_iter()
        .map(|t| (t, 10_000))
        .collect();
    assert_eq!(by, want);
    assert!(of(&recs, "lock_failed", &mutex).is_empty());
    assert!(of(&recs, "lock_unmatched", &mutex).is_empty());
    no_losses(&recs);
    // the summaries say the same, over several intervals
    let sums: Vec<u64> = recs
        .iter()
        .filter(|r| r["event"] == "lock_summary" && r["lock_addr"] == mutex.as_str())
        .map(|r| u64_of(r, "acquisitions"))
        .collect();
    assert_eq!(sums.iter().sum::<u64>(), 40_001, "{sums:?}");
    // 1000 pauses of 10 ms per thread: it lasted several intervals (and
    // left a debug build's output time to keep up: proc_image's loop ticks
    // its intervals between ring-buffer sweeps)
    assert!(u64_of(&done, "elapsed_ms") >= 10_000, "{done}");
    assert!(
        sums.iter().filter(|&&n| n > 0).count() >= 3,
        "fewer than 3 intervals: {sums:?}"
    );
    // every hold closed: the last acquisitions were uncontended or waited
    // for a holder that was really there (no count left behind)
    let contended = recs
        .iter()
        .filter(|r| r["event"] == "lock" && r["lock_addr"] == mutex.as_str())
        .filter(|r| r["contended"] == true)
        .count();
    assert!(contended > 0, "4 threads on one mutex never contended");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn an_owner_dead_mutex_starts_over() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_robust", &["-l"]);
    let mut w = Workload::start(&["lock-robust"]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    let mutex = addr_of(&ready, "mutex");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(10));
    assert_eq!(u64_of(&done, "first_ret"), libc::EOWNERDEAD as u64);
    assert_eq!(u64_of(&done, "second_ret"), 0);
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    // the dead owner's hold never ends in a record; the main thread's two do
    let held = of(&recs, "lock", &mutex);
    assert_eq!(held.len(), 2, "{held:?}");
    assert_eq!(held[0]["ret"], libc::EOWNERDEAD);
    assert_eq!(held[0]["contended"], true, "the dead owner held it");
    // the dead owner's hold was dropped from the count: nobody held it
    assert_eq!(held[1]["ret"], 0);
    assert_eq!(held[1]["contended"], false, "{:?}", held[1]);
}

/// musl-gcc, or None (outside CI: the test is skipped loudly).
fn musl_gcc() -> Option<&'static str> {
    let found = std::process::Command::new("musl-gcc")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("musl-gcc is missing: scripts/setup.sh installs musl-tools");
        }
        eprintln!("SKIPPED: no musl-gcc (apt-get install musl-tools)");
        return None;
    }
    Some("musl-gcc")
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_musl_program_counts_its_calls_not_musl_s_inner_ones() {
    need_root();
    let _probes = beside_other_libc_probes();
    let Some(cc) = musl_gcc() else {
        return;
    };
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("pi_lock_musl_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("musl_locks");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workload/musl_locks.c");
    let built = Command::new(cc)
        .args(["-O2", "-pthread", "-o"])
        .arg(&bin)
        .arg(src)
        .status()
        .expect("run musl-gcc");
    assert!(built.success(), "musl-gcc failed");

    let pi = ProcImage::start("lock_musl", &["-l"]);
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let pid = u64_of(&ready, "pid");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // Debian's musl-gcc links to /usr/lib/x86_64-linux-musl/libc.so
    assert!(maps.contains("musl"), "not on musl: {maps}");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let done: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let _ = std::fs::remove_dir_all(&dir);
    let recs = pi.finish();

    // exactly its acquisitions, no failure musl's inner trylocks saw
    let mutex = addr_of(&ready, "mutex");
    assert_eq!(
        of(&recs, "lock", &mutex).len() as u64,
        u64_of(&done, "mutex_acquisitions")
    );
    assert!(of(&recs, "lock_failed", &mutex).is_empty());
    assert!(
        of(&recs, "lock", &mutex)
            .iter()
            .any(|r| r["contended"] == true),
        "two threads holding it 1 ms each never waited"
    );
    let rw = addr_of(&ready, "rwlock");
    let writes = of(&recs, "lock", &rw);
    assert_eq!(
        writes.len() as u64,
        u64_of(&done, "rwlock_write_acquisitions")
    );
    assert!(writes.iter().all(|r| r["lock_type"] == "rwlock_write"));
    assert!(of(&recs, "lock_failed", &rw).is_empty());
    // the one real failure is there, once
    let busy = addr_of(&ready, "busy");
    assert_eq!(u64_of(&done, "busy_trylock_ret"), 16);
    let failed = of(&recs, "lock_failed", &busy);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["op"], "trylock");
    assert_eq!(failed[0]["error"], "EBUSY");
    assert_eq!(of(&recs, "lock", &busy).len(), 1);
    assert!(recs
        .iter()
        .filter(|r| r["collector"] == "lock")
        .all(|r| r["event"] != "lock_unmatched" || r["lock_addr"] != mutex.as_str()));
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_static_musl_program_is_refused_in_one_line() {
    need_root();
    let _probes = beside_other_libc_probes();
    let Some(cc) = musl_gcc() else {
        return;
    };
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("pi_lock_musl_static_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("musl_locks_static");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workload/musl_locks.c");
    let built = Command::new(cc)
        .args(["-O2", "-static", "-pthread", "-o"])
        .arg(&bin)
        .arg(src)
        .status()
        .expect("run musl-gcc");
    assert!(built.success(), "musl-gcc -static failed");
    let pi = ProcImage::start("lock_musl_static", &["-l", "-k"]);
    // it waits for a line on stdin: no C library mapped, nothing to probe
    let mut child = Command::new(&bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let pid = u64_of(&ready, "pid").to_string();
    let out = pi.controller(&["-a", "-P", &pid, "-l"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("statically linked (glibc or musl)"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    pi.finish();
}

/// The main thread exits as soon as it has started its threads: before
/// proc_image could attach to one of them, probably. Calls in that window
/// cannot be seen; a `lost` record then says so and counts at least one per
/// probed function whose breakpoint they took out (maybe none: a call while
/// the new set is being attached leaves no trace). Without one, every call
/// was seen.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn calls_while_no_probed_thread_lives_are_counted_lost() {
    need_root();
    let _probes = alone_with_libc_probes();
    let pi = ProcImage::start("lock_unarmed", &["-l"]);
    let mut w = Workload::start(&[
        "lock-leader-exit",
        "--threads",
        "2",
        "--pairs",
        "1500",
        "--main-pairs",
        "0",
    ]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    let mutex = addr_of(&ready, "mutex");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(60));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let pi_stderr = pi.stderr_text();
    let recs = pi.finish();
    let want: u64 = done["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| u64_of(w, "pairs"))
        .sum();
    assert_eq!(want, 3000);
    let seen: u64 = acquisitions_by_thread(&recs, &mutex).values().sum();
    let lost: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "lost" && r["lost_collector"] == "lock")
        .collect();
    let at_least: u64 = lost
        .iter()
        .map(|r| u64_of(r, "unseen_lock_calls_at_least"))
        .sum();
    eprintln!("seen {seen} of {want}, lost records {lost:?}");
    eprintln!("{}", pi_stderr);
    if lost.is_empty() {
        assert_eq!(seen, want, "calls missed without a lost record");
    } else {
        // a lower bound: each unseen pair is two calls (lock, unlock)
        assert!(seen <= want);
        assert!(at_least <= 2 * (want - seen), "{lost:?}");
        for r in &lost {
            assert!(u64_of(r, "unprobed_to_ns") > u64_of(r, "unprobed_from_ns"));
        }
    }
    // a window lasts 0.1-0.6 s (one probe set's attach; more on a loaded
    // host), a worker 150 pauses of 20 ms at least: each one is seen once
    // probed again (a call whose return was never seen must not make all
    // its thread's later ones pass for inner calls)
    let by = acquisitions_by_thread(&recs, &mutex);
    for wk in done["workers"].as_array().unwrap() {
        let tid = u64_of(wk, "tid");
        assert!(
            by.get(&tid).is_some_and(|&n| n > 0),
            "worker {tid} never seen: {by:?}"
        );
    }
}

/// The two threads the probes are attached to end while a third waits in
/// pthread_mutex_lock() for a fourth one's hold: the sets that saw its call
/// are detached before it returns, so that return is never seen. It must
/// not make the waiter's later calls of that mutex pass for inner calls of
/// it: every later pair is a record (the waited one at most unmatched).
///
/// The scenario needs proc_image to have probed the remaining threads
/// before the holder lets go. On a loaded host moving the probes can take
/// seconds (each uprobe attach waits for an RCU grace period): then the
/// waiter's calls fall in a window without probes, which proc_image must
/// report (a `lost` record over the release), and the scenario is run
/// again with a longer hold.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_call_whose_return_is_never_seen_hides_no_later_call() {
    need_root();
    let _probes = alone_with_libc_probes();
    for hold_ms in [5_000, 15_000, 45_000] {
        match waiter_outlives_its_probes(hold_ms) {
            Ok(()) => return,
            Err(lost) => eprintln!(
                "the probes were moved after a {hold_ms} ms hold ended, as proc_image \
                 reported ({lost}): again with a longer hold"
            ),
        }
    }
    panic!("proc_image never moved the lock probes within a 45 s hold");
}

/// The same with no hold: the waiter's calls come while proc_image is
/// still moving the probes. The calls made while no probed thread lived
/// are not seen; proc_image must say so (a `lost` window over them), or
/// have seen them all.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn calls_while_the_probes_move_are_seen_or_reported() {
    need_root();
    let _probes = alone_with_libc_probes();
    if let Err(lost) = waiter_outlives_its_probes(0) {
        eprintln!("reported: {lost}");
    }
}

/// One run of the scenario above: Err(the lost record) when the holder let
/// go in a window without probes (and proc_image said so).
fn waiter_outlives_its_probes(hold_ms: u64) -> Result<(), String> {
    let pi = ProcImage::start(&format!("lock_anchors_go_{hold_ms}"), &["-l"]);
    let mut w = Workload::start(&[
        "lock-anchors-go",
        "--pairs",
        "100",
        "--hold-ms",
        &hold_ms.to_string(),
    ]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    let mutex = addr_of(&ready, "mutex");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(60 + hold_ms / 1000));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let pi_stderr = pi.stderr_text();
    let recs = pi.finish();
    let (holder, waiter) = (u64_of(&done, "holder"), u64_of(&done, "waiter"));
    let by = acquisitions_by_thread(&recs, &mutex);
    let lost: Vec<&Value> = recs.iter().filter(|r| r["event"] == "lost").collect();
    let seen = format!("{by:?}, lost {lost:?}, proc_image said: {pi_stderr}");
    let release_ns = u64_of(&done, "release_ns");
    let unprobed = lost.iter().filter(|r| r.get("unprobed_to_ns").is_some());
    if let Some(late) = unprobed
        .clone()
        .find(|r| u64_of(r, "unprobed_to_ns") > release_ns)
    {
        return Err(late.to_string());
    }
    // every window without probes ended before the release (the one while
    // the probes moved): nothing in it was called
    for r in unprobed {
        assert_eq!(u64_of(r, "unseen_lock_calls_at_least"), 0, "{seen}");
    }
    assert_eq!(by.get(&holder), Some(&1), "{seen}");
    // the later pairs, and the waited one unless its return was seen
    let unmatched = of(&recs, "lock_unmatched", &mutex)
        .iter()
        .filter(|r| u64_of(r, "pid") == waiter)
        .count() as u64;
    assert_eq!(by.get(&waiter), Some(&(101 - unmatched)), "{seen}");
    assert!(unmatched <= 1);
    Ok(())
}

/// Tracing starts after the main thread has exited: its /proc/TGID/maps and
/// map_files are empty then; the threads that run are probed all the same.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_process_whose_main_thread_exited_is_traced() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_after_exit", &["-l"]);
    let mut w = Workload::start(&[
        "lock-leader-exit",
        "--threads",
        "3",
        "--pairs",
        "100",
        "--main-pairs",
        "0",
        "--exit-first",
    ]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    let mutex = addr_of(&ready, "mutex");
    w.wait_truth("main_exits", Duration::from_secs(10));
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").unwrap().1.starts_with('Z'))
    }));
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(60));
    assert!(w.wait().success());
    assert!(pi.wait_for(Duration::from_secs(5), |r| r["event"] == "target_gone"));
    let recs = pi.finish();
    let want: std::collections::BTreeMap<u64, u64> = done["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (u64_of(w, "tid"), u64_of(w, "pairs")))
        .collect();
    assert_eq!(want.len(), 3);
    assert_eq!(acquisitions_by_thread(&recs, &mutex), want);
    no_losses(&recs);
}

/// 4 threads hold one rwlock for reading at once, on 2 CPUs: the reader
/// count goes up and down on both at the same time. Every acquisition is
/// counted, and once they are done a write lock finds it free.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn concurrent_readers_leave_an_exact_count() {
    need_root();
    let _probes = beside_other_libc_probes();
    let pi = ProcImage::start("lock_readers", &["-l"]);
    let mut w = Workload::start(&[
        "lock-storm",
        "--read",
        "--threads",
        "4",
        "--pairs",
        "5000",
        "--pause-ms",
        "1",
    ]);
    let ready = w.wait_truth("ready", Duration::from_secs(10));
    let pid = u64_of(&ready, "pid");
    let rw = addr_of(&ready, "rwlock");
    pi.control_ok(&["-a", "-P", &pid.to_string(), "-l"]);
    w.go();
    let done = w.wait_truth("done", Duration::from_secs(120));
    assert!(w.wait().success());
    assert!(
        wait_until(Duration::from_secs(60), || pi
            .stderr_text()
            .contains("has exited")),
        "{}",
        pi.stderr_text()
    );
    let recs = pi.finish();
    let all = of(&recs, "lock", &rw);
    let reads = all
        .iter()
        .filter(|r| r["lock_type"] == "rwlock_read")
        .count();
    assert_eq!(reads, 20_000);
    let writes: Vec<&&Value> = all
        .iter()
        .filter(|r| r["lock_type"] == "rwlock_write")
        .collect();
    assert_eq!(writes.len(), 1);
    assert_eq!(u64_of(writes[0], "pid"), u64_of(&done, "last_pair_by"));
    assert_eq!(
        writes[0]["contended"], false,
        "readers left behind: {:?}",
        writes[0]
    );
    assert!(of(&recs, "lock_unmatched", &rw).is_empty());
    no_losses(&recs);
}
