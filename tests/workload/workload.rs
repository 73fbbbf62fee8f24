//! A workload of known behaviour for proc_image's tests, demo and benchmarks.
//! It prints what it did ("the truth") as JSON lines on stdout.
//!
//!   proc_image_workload lifecycle [--forks N] [--vforks N] [--threads N]
//!                                 [--sleep-ms MS] [--busy-ms MS] [--exit-code C]
//!                                 [--linger-ms MS]
//!       waits for a line on stdin, then forks N children (child i exits with
//!       10+i), vforks N times, starts N threads, sleeps MS in one nanosleep,
//!       spins MS, and execs itself as `proc_image_workload exit C`; with
//!       --linger-ms, first MS of the spin pattern (syscalls, wakeups and
//!       pthread mutex/rwlock/spinlock calls, with a failing trylock, and a
//!       1 ms futex wait, for the metrics test to scrape).
//!   proc_image_workload futex [--lock pthread|std] [--rounds N] [--batch N]
//!                             [--hold-ms MS] [--solo-ops N]
//!       after a line on stdin: N uncontended lock/unlock pairs (thread
//!       fx-solo), then N rounds of one contended wait each (threads
//!       fx-holder / fx-waiter, new ones every --batch rounds); see
//!       futex_workload
//!   proc_image_workload exit C        exits with C
//!   proc_image_workload spin          2 ms busy / 3 ms asleep, until killed
//!   proc_image_workload stress [--forks-per-sec N] [--syscalls-per-sec N] [--secs S]
//!       fork+exit and getppid at those rates for S seconds (a flood for
//!       bench/stress.sh), then prints what it did
//!   proc_image_workload syscalls [--getppid N] [--writes N] [--sleep-ms MS]
//!       waits for a line on stdin, then makes exactly N getppid, N write to
//!       /dev/null, one nanosleep of MS, then getpid, getuid, getgid and
//!       _exit (exit_group): nothing else
//!   proc_image_workload syscall-threads [--threads N] [--getppid K] [--ia32-getpid M] [--secs S]
//!                                       [--distinct D]
//!       starts N threads that block in a read; prints their tids; waits for a
//!       line on stdin; then each thread makes D distinct syscalls once each
//!       (x86_64 only; every argument -1 or 0: all fail, none of the others),
//!       and exactly K getppid (and M ia32 getpid through int 0x80, on
//!       x86_64) spread over S seconds, pacing itself with clock_nanosleep,
//!       and blocks in a read for good: while traced it makes only these
//!       syscalls. Prints each thread's counts and the CLOCK_MONOTONIC time
//!       all were done, then waits to be killed
//!   proc_image_workload sched-classes [--secs S] [--cpu C]
//!       starts 4 spinners on CPU C (default 1), one of them at nice 5, one
//!       SCHED_BATCH, and a thread that sleeps 1 ms at a time there too, all
//!       blocked in a read; prints their tids; waits for a line on stdin;
//!       then they run S seconds while a thread starts a short-lived
//!       spinner there every 100 ms, then all block in a read for good and
//!       it prints the CLOCK_MONOTONIC time they were done
//!   proc_image_workload thread-churn [--per-sec N] [--secs S]
//!       starts N short-lived threads a second for S seconds, one after
//!       another, each making three getppid; then prints how many
//!   proc_image_workload pid-reuse [--getppid K]
//!       names itself "reuse-parent", waits for a line on stdin, forks a
//!       child that makes K getppid and exits, then forks another with the
//!       same pid (clone3 set_tid) that makes 2K getppid and execs
//!       `proc_image_workload reused-pid --getppid 3K`; prints the pid
//!   proc_image_workload runqueue [--sleeps N] [--secs S]
//!       a sleeper and a busy thread, both on CPU 0; the sleeper blocks in a
//!       read; prints their tids; after a line on stdin the sleeper sleeps
//!       N times over S seconds while the other spins, then both block in a
//!       read for good and it prints "done" (the sleeper's switch-ins while
//!       traced are its schedstat count's growth)
//!   proc_image_workload pingpong [--secs S] [--sleeps N] [--sleep-ms MS]
//!       threads "ping" and "pong" bounce a byte over two pipes for S
//!       seconds (many short stretches), while a thread "sleeper" sleeps MS
//!       N times; prints their tids, waits for a line on stdin, and at the
//!       end each thread's /proc schedstat growth over its work (run ns,
//!       timeslices), the round trips and each sleep's CLOCK_MONOTONIC span
//!   proc_image_workload sched [--busy-threads N] [--secs S]
//!       N threads spinning and one thread sleeping 2 ms at a time, all
//!       pinned to CPU 0, for S seconds; prints their tids first
//!   proc_image_workload resource [--burn-ms MS] [--alloc-mib N] [--io-mib N]
//!                                [--pause-ms MS] [--dir DIR]
//!       waits for a line on stdin, then: burns MS of CPU time, allocates and
//!       touches N MiB, writes N MiB to a file under DIR and reads it back,
//!       pausing MS between phases. After each phase it prints a mark with
//!       the CLOCK_MONOTONIC time it ended and /proc/self/{stat,status,io}
//!       read right then (the truth for tests/resource.rs)
//!   proc_image_workload locks [--fork] [--exec | --exec-from-thread | --exec-into PROGRAM]
//!       prints its lock addresses, waits for a line on stdin, then: two
//!       threads take one mutex in turn, each holding it 20 ms (the second
//!       asks while the first holds it); two readers hold a rwlock 20 ms
//!       while a writer asks for it, then the writer holds it 20 ms; one
//!       spinlock hold of 5 ms; a trylock that fails with EBUSY and a 5 ms
//!       timedlock that fails with ETIMEDOUT; a recursive
//!       mutex taken 3 deep; an rwlock read hold released by another thread,
//!       then write-locked. Prints what
//!       it measured. --fork: a forked child then takes a mutex of its own 5
//!       times. --exec: first re-exec itself into `locks` (from a second
//!       thread with --exec-from-thread) at the first line, which prints its
//!       addresses and locks at a second line;
//!       --exec-into: exec PROGRAM (no arguments) after the go line.
//!   proc_image_workload soak [--threads N] [--secs S] [--churn-ms MS]
//!       waits for a line on stdin, then for S seconds runs N threads, half
//!       of them busy (bursts of getppid between 2 ms of computing), half
//!       mostly asleep (10 getppid every 200 ms), and every MS a short-lived
//!       thread (500 getppid, 1 ms busy, a 10 ms sleep); prints each thread's
//!       tid, getppid count and on-CPU ns (its schedstat just before it
//!       ends), then exits
//!   proc_image_workload lock-storm [--threads N] [--pairs M] [--pause-ms P] [--read]
//!       prints its mutex, waits for a line on stdin, then N threads each
//!       make M lock/unlock pairs of that one mutex (--read: read locks of
//!       one rwlock, and the last pair a write lock), pausing P ms after
//!       every 10 (default 0); then the main thread makes one pair alone;
//!       prints their tids and how long it took
//!   proc_image_workload lock-leader-exit [--threads N] [--pairs M] [--main-pairs K] [--exit-first] [--second-go]
//!       prints its mutex, waits for a line on stdin, starts N threads and
//!       takes the mutex K (20) times itself (10 ms apart), then the main
//!       thread exits alone (as pthread_exit() does); each thread makes M pairs, 20 ms
//!       pause every 10, says when it saw the main thread gone, and waits
//!       for the others before it ends. --exit-first: the main thread
//!       starts the threads and exits first; the go line starts them.
//!       --second-go: the go line starts the threads, which wait (and so
//!       does the main thread's exit) for a second line
//!   proc_image_workload lock-anchors-go [--pairs M] [--hold-ms H]
//!       the main thread and one more (the two threads lock's probes are
//!       attached to) end while a later thread waits in pthread_mutex_lock()
//!       for a fourth one, which holds the mutex until H ms (5000) after
//!       the main thread's exit; the waiter then makes M (100) pairs, and
//!       the process ends 2 s after the release
//!   proc_image_workload lock-robust
//!       a robust mutex whose owner thread ends holding it; the main thread
//!       then takes it (EOWNERDEAD), makes it consistent, releases it and
//!       takes it once more
//!   proc_image_workload steady [--busy-secs S] [--sleep-secs S]
//!       prints its pid, waits for a line on stdin, then starts a thread
//!       that spins S seconds (CPU-bound) and one that sleeps S seconds in
//!       one nanosleep (saying so first); the busy thread prints its run time from
//!       /proc/thread-self/schedstat when it stops, the sleeper when it
//!       slept (CLOCK_MONOTONIC)
//!   proc_image_workload exit-group [--threads N]
//!       starts N threads that spin (on every CPU there is), waits until all
//!       have run, then exit_group()s with 3 while they spin
//!   proc_image_workload exec-thread
//!       starts a thread, prints its tid, waits for a line on stdin; the
//!       thread (not the leader) then execs `proc_image_workload spin`
//!   proc_image_workload io-uring
//!       waits for a line on stdin, then sets up an io_uring with a
//!       submission-queue polling thread (a thread the kernel makes for the
//!       process), prints whether it could, and exits after 300 ms
//!   proc_image_workload exec-fail
//!       waits for a line on stdin, execve()s a path that does not exist
//!       (ENOENT), then execs `/bin/sh -c 'exec proc_image_workload exit 4'`
//!       with PATH = two empty directories, then this binary's: a shell's
//!       PATH search (dash tries each directory: two more ENOENTs)
//!   proc_image_workload oom
//!       waits for a line on stdin, then allocates and touches memory 1 MiB
//!       at a time (up to 8 GiB): run it in a memory-limited cgroup
//!   proc_image_workload noop-hooks syscalls|sched|resource|keytime
//!       attach BPF programs that do nothing to sys_enter/sys_exit (or
//!       sched_switch/sched_wakeup, or keytime's hooks) until stdin closes:
//!       the benchmark floor
//!   proc_image_workload ref-hooks syscount|runqlat|runqlat-ts|least-syscall|least-keytime
//!       attach the benchmark reference (bpf/bench_ref.bpf.c: syscount -L or
//!       runqlat done the classic way, hash maps keyed by tid; runqlat-ts:
//!       runqlat with its start times in task storage; least-*: the least
//!       job of syscall or keytime, its clock reads and per-task state only)
//!       until stdin closes; each line read is the tgid least-keytime follows
//!   proc_image_workload bpf-stats-on
//!       keep the kernel's BPF run-time stats on (BPF_ENABLE_STATS) until
//!       stdin closes
//!   proc_image_workload bpf-stats-of [--uprobes] PID...
//!       prints {"runs": R, "run_ns": T}: the kernel's run count and run time
//!       summed over the BPF programs those processes hold (their fdinfo);
//!       --uprobes: only their uprobe programs (of the kprobe type)
//!   proc_image_workload bench-syscalls N | bench-pipe N | bench-forks N | bench-mutex N
//!                       | bench-futex N [--wait]
//!       times N operations, prints {"ns_per_op": X}; with --wait it first
//!       waits for a line on stdin (so a benchmark can activate on its pid)

use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use proc_image::sys::{clock_ns, monotonic_ns};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let num = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| die(&format!("{name} needs a number")))
            })
            .unwrap_or(default)
    };
    let count = || -> u64 {
        args.get(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die("give a count"))
    };
    if mode.starts_with("bench-") && args.iter().any(|a| a == "--wait") {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    match mode {
        "lifecycle" => lifecycle(
            num("--forks", 3),
            num("--vforks", 2),
            num("--threads", 2),
            num("--sleep-ms", 200),
            num("--busy-ms", 50),
            num("--exit-code", 7) as i32,
            num("--linger-ms", 0),
        ),
        "syscalls" => known_syscalls(num("--getppid", 10_000), num("--writes", 500), num("--sleep-ms", 50)),
        "syscall-threads" => syscall_threads(
            num("--threads", 4),
            num("--getppid", 100_000),
            num("--ia32-getpid", 0),
            num("--secs", 5),
            failing_syscalls(num("--distinct", 0)),
        ),
        "sched-classes" => sched_classes(num("--secs", 4), num("--cpu", 1)),
        "thread-churn" => thread_churn(num("--per-sec", 3000), num("--secs", 7)),
        "pid-reuse" => pid_reuse(num("--getppid", 1000)),
        "reused-pid" => reused_pid(num("--getppid", 1000)),
        "sched" => sched(num("--busy-threads", 2), num("--secs", 4)),
        "runqueue" => runqueue(num("--sleeps", 1000), num("--secs", 5)),
        "resource" => resource(
            num("--burn-ms", 1000),
            num("--alloc-mib", 200),
            num("--io-mib", 50),
            num("--pause-ms", 700),
            args.iter()
                .position(|a| a == "--dir")
                .and_then(|i| args.get(i + 1))
                .map(std::path::PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        ),
        "locks" => locks(&args),
        "lock-storm" => lock_storm(
            num("--threads", 4),
            num("--pairs", 10_000),
            num("--pause-ms", 0),
            args.iter().any(|a| a == "--read"),
        ),
        "lock-leader-exit" => lock_leader_exit(
            num("--threads", 4),
            num("--pairs", 300),
            num("--main-pairs", 20),
            args.iter().any(|a| a == "--exit-first"),
            args.iter().any(|a| a == "--second-go"),
        ),
        "lock-robust" => lock_robust(),
        "futex" => futex_workload(&args),
        "offcpu" => offcpu(
            num("--secs", 4),
            args.iter().any(|a| a == "--spin"),
            args.iter().any(|a| a == "--peer"),
        ),
        "pingpong" => pingpong(num("--secs", 4), num("--sleeps", 50), num("--sleep-ms", 30)),
        "steady" => steady(num("--busy-secs", 5), num("--sleep-secs", 10)),
        "exit-group" => exit_group(num("--threads", 4)),
        "exec-thread" => exec_thread(num("--getppid", 0)),
        "io-uring" => io_uring(),
        "exec-fail" => exec_fail(),
        "oom" => oom(),
        "lock-anchors-go" => lock_anchors_go(num("--pairs", 100), num("--hold-ms", 5000)),
        "noop-hooks" => noop_hooks(args.get(1).map(String::as_str).unwrap_or("")),
        "ref-hooks" => ref_hooks(args.get(1).map(String::as_str).unwrap_or("")),
        "bpf-stats-on" => bpf_stats_on(),
        "bpf-stats-of" => bpf_stats_of(&args[1..]),
        "exit" => std::process::exit(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(0)),
        "spin" => loop {
            busy(Duration::from_millis(2));
            std::thread::sleep(Duration::from_millis(3));
        },
        "soak" => soak(num("--threads", 8), num("--secs", 60), num("--churn-ms", 250)),
        "stress" => stress(
            num("--forks-per-sec", 1000),
            num("--syscalls-per-sec", 1_000_000),
            num("--secs", 30),
        ),
        "bench-syscalls" => bench(count(), || unsafe {
            libc::getppid();
        }),
        "bench-pipe" => bench_pipe(count()),
        // one op = a 1 ms nanosleep: every stretch long enough for -k 2's stacks
        "bench-sleep" => bench(count(), || unsafe {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            libc::nanosleep(&ts, std::ptr::null_mut());
        }),
        "bench-mutex" => {
            let m = Locks::new();
            bench(count(), || unsafe {
                libc::pthread_mutex_lock(m.mutex.get());
                libc::pthread_mutex_unlock(m.mutex.get());
            })
        }
        "bench-futex" => bench_futex(count()),
        "bench-forks" => bench(count(), || unsafe {
            match libc::fork() {
                0 => libc::_exit(0),
                pid => {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }),
        _ => die("usage: proc_image_workload lifecycle|exit|spin|bench-syscalls|bench-pipe|bench-forks ..."),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("proc_image_workload: {msg}");
    std::process::exit(2)
}

fn say(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn busy(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
    }
}

mod noop {
    include!(concat!(env!("OUT_DIR"), "/noop.skel.rs"));
}

fn noop_hooks(which: &str) {
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    let mut storage = std::mem::MaybeUninit::uninit();
    let skel = noop::NoopSkelBuilder::default()
        .open(&mut storage)
        .and_then(|s| s.load())
        .unwrap_or_else(|e| die(&format!("load noop programs: {e}")));
    let p = &skel.progs;
    let progs = match which {
        "syscalls" => vec![&p.noop__sys_enter, &p.noop__sys_exit],
        "sched" => vec![&p.noop__sched_switch, &p.noop__sched_wakeup],
        "resource" => vec![&p.noop__sched_switch, &p.noop__sched_process_exit],
        "keytime" => vec![
            &p.noop__task_newtask,
            &p.noop__sched_process_exec,
            &p.noop__sched_process_exit,
            &p.noop__sched_switch,
            &p.noop__signal_generate,
        ],
        _ => die("noop-hooks syscalls|sched|resource|keytime"),
    };
    let _links: Vec<libbpf_rs::Link> = progs
        .iter()
        .map(|p| p.attach().unwrap_or_else(|e| die(&format!("attach: {e}"))))
        .collect();
    say(json!({"event": "ready"}));
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
}

mod bench_ref {
    include!(concat!(env!("OUT_DIR"), "/bench_ref.skel.rs"));
}

fn ref_hooks(which: &str) {
    use libbpf_rs::skel::{OpenSkel, SkelBuilder};
    let mut storage = std::mem::MaybeUninit::uninit();
    let mut skel = bench_ref::BenchRefSkelBuilder::default()
        .open(&mut storage)
        .and_then(|s| s.load())
        .unwrap_or_else(|e| die(&format!("load the reference programs: {e}")));
    let p = &skel.progs;
    let progs = match which {
        "syscount" => vec![&p.ref__sys_enter, &p.ref__sys_exit],
        "runqlat" => vec![
            &p.ref__sched_wakeup,
            &p.ref__sched_wakeup_new,
            &p.ref__sched_switch,
        ],
        "runqlat-ts" => vec![
            &p.ref_ts__sched_wakeup,
            &p.ref_ts__sched_wakeup_new,
            &p.ref_ts__sched_switch,
        ],
        "least-syscall" => vec![&p.least__sys_enter, &p.least__sys_exit],
        "least-keytime" => vec![&p.least__sched_switch],
        _ => die("ref-hooks syscount|runqlat|runqlat-ts|least-syscall|least-keytime"),
    };
    let _links: Vec<libbpf_rs::Link> = progs
        .into_iter()
        .map(|p| p.attach().unwrap_or_else(|e| die(&format!("attach: {e}"))))
        .collect();
    say(json!({"event": "ready"}));
    // every line a target's tgid, for least-keytime's filter, until stdin closes
    for line in std::io::stdin().lines().map_while(Result::ok) {
        if let Ok(tgid) = line.trim().parse::<u32>() {
            if let Some(data) = skel.maps.data_data.as_deref_mut() {
                data.least_tgid = tgid;
            }
        }
    }
}

fn bpf_stats_on() {
    let _on = proc_image::bpf_stats::enable().unwrap_or_else(|e| die(&format!("{e:#}")));
    say(json!({"event": "ready"}));
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
}

fn bpf_stats_of(args: &[String]) {
    use std::os::fd::AsRawFd;
    let uprobes_only = args.iter().any(|a| a == "--uprobes");
    let mut ids: Vec<u32> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok())
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let (mut runs, mut run_ns) = (0u64, 0u64);
    for id in ids {
        let Ok(fd) = libbpf_rs::Program::fd_from_id(id) else {
            continue;
        };
        let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of_val(&info) as u32;
        // SAFETY: a zeroed bpf_prog_info of `len` bytes, no arrays asked for
        let rc = unsafe {
            libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len)
        };
        let kprobe = info.type_ == libbpf_rs::libbpf_sys::BPF_PROG_TYPE_KPROBE;
        if rc == 0 && (kprobe || !uprobes_only) {
            runs += info.run_cnt;
            run_ns += info.run_time_ns;
        }
    }
    say(json!({"runs": runs, "run_ns": run_ns}));
}

fn known_syscalls(getppid: u64, writes: u64, sleep_ms: u64) {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap_or_else(|_| die("open /dev/null"));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    unsafe {
        for _ in 0..getppid {
            libc::getppid();
        }
        for _ in 0..writes {
            libc::write(fd, b"x".as_ptr().cast(), 1);
        }
        let ts = libc::timespec {
            tv_sec: (sleep_ms / 1000) as i64,
            tv_nsec: ((sleep_ms % 1000) * 1_000_000) as i64,
        };
        libc::nanosleep(&ts, std::ptr::null_mut());
        libc::getpid();
        libc::getuid();
        libc::getgid();
        libc::_exit(0);
    }
}

/// What /proc says about this process right now.
fn proc_self() -> serde_json::Value {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/self/{f}")).unwrap_or_default();
    let stat = read("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap_or(0) + 1..]
        .split_whitespace()
        .collect();
    // after the comm, field 3 is at index 0: utime is field 14, stime 15
    let tick = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = read("status");
    let vmrss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
    // last: this read's own bytes are not in the rchar it shows
    let io = read("io");
    let io_field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    // on-CPU ns as the scheduler counts it (sum_exec_runtime)
    let run_ns = read("schedstat")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok());
    json!({"cpu_ticks": tick(14) + tick(15), "run_ns": run_ns,
           "ticks_per_sec": unsafe { libc::sysconf(libc::_SC_CLK_TCK) },
           "vmrss_kib": vmrss, "rchar": io_field("rchar:"), "wchar": io_field("wchar:")})
}

/// The end of a phase that began at `start_ns`: its time and /proc figures.
fn mark(event: &str, start_ns: u64, pause: Duration) {
    let end_ns = monotonic_ns();
    let mut v = proc_self();
    v["event"] = event.into();
    v["phase_start_ns"] = start_ns.into();
    v["ts_ns"] = end_ns.into();
    v["pause_ms"] = (pause.as_millis() as u64).into();
    say(v);
    std::thread::sleep(pause);
}

fn resource(burn_ms: u64, alloc_mib: u64, io_mib: u64, pause_ms: u64, dir: std::path::PathBuf) {
    use std::io::{Read, Write};
    const MIB: usize = 1 << 20;
    let pause = Duration::from_millis(pause_ms);
    say(json!({"event": "ready", "pid": std::process::id()}));
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    mark("start", monotonic_ns(), pause);

    // CPU time, not wall time: on a busy machine the burn lasts longer
    let start = monotonic_ns();
    let cpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    while clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0 < burn_ms * 1_000_000 {
        busy(Duration::from_millis(1));
    }
    mark("burned", start, pause);

    let start = monotonic_ns();
    // every byte written: every page is touched, none left to the zero page
    let mem = std::hint::black_box(vec![0x5au8; alloc_mib as usize * MIB]);
    mark("allocated", start, pause);

    let path = dir.join(format!("proc_image_resource_{}", std::process::id()));
    let start = monotonic_ns();
    let chunk = vec![0xa5u8; MIB];
    {
        let mut f = std::fs::File::create(&path)
            .unwrap_or_else(|e| die(&format!("create {}: {e}", path.display())));
        for _ in 0..io_mib {
            f.write_all(&chunk)
                .unwrap_or_else(|e| die(&format!("write: {e}")));
        }
    }
    mark("written", start, pause);

    let start = monotonic_ns();
    let mut buf = vec![0u8; MIB];
    let mut total = 0u64;
    {
        let mut f = std::fs::File::open(&path).unwrap_or_else(|e| die(&format!("open: {e}")));
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => die(&format!("read: {e}")),
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    if total != io_mib * MIB as u64 {
        die(&format!("read back {total} bytes"));
    }
    mark("read", start, pause);
    drop(mem);
}

fn pin_to_cpu0() {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn sched(busy_threads: u64, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for _ in 0..busy_threads {
        let tx = tx.clone();
        handles.push(std::thread::spawn(move || {
            pin_to_cpu0();
            tx.send(("busy", unsafe { libc::gettid() })).unwrap();
            while Instant::now() < end {
                busy(Duration::from_millis(10));
            }
        }));
    }
    handles.push(std::thread::spawn(move || {
        pin_to_cpu0();
        tx.send(("sleeper", unsafe { libc::gettid() })).unwrap();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(2));
        }
    }));
    let tids: Vec<(&str, i32)> = rx.iter().take(busy_threads as usize + 1).collect();
    let busy_tids: Vec<i32> = tids.iter().filter(|t| t.0 == "busy").map(|t| t.1).collect();
    let sleeper = tids.iter().find(|t| t.0 == "sleeper").map(|t| t.1);
    say(json!({"event": "threads", "busy": busy_tids, "sleeper": sleeper}));
    for h in handles {
        let _ = h.join();
    }
}

fn lifecycle(
    forks: u64,
    vforks: u64,
    threads: u64,
    sleep_ms: u64,
    busy_ms: u64,
    exit_code: i32,
    linger_ms: u64,
) {
    let pid = std::process::id();
    say(json!({"event": "ready", "pid": pid}));
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);

    let mut fork_pids = Vec::new();
    for i in 0..forks {
        // SAFETY: the child only calls _exit.
        match unsafe { libc::fork() } {
            -1 => die("fork failed"),
            0 => unsafe { libc::_exit(10 + i as i32) },
            child => {
                unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
                fork_pids.push(child);
            }
        }
    }
    let mut vfork_pids = Vec::new();
    for _ in 0..vforks {
        // SAFETY: the child shares our memory and only calls _exit.
        #[allow(deprecated)]
        match unsafe { libc::vfork() } {
            -1 => die("vfork failed"),
            0 => unsafe { libc::_exit(0) },
            child => {
                unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
                vfork_pids.push(child);
            }
        }
    }
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                unsafe { libc::gettid() }
            })
        })
        .collect();
    let tids: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    say(json!({"event": "children", "forks": fork_pids, "vforks": vfork_pids, "threads": tids}));

    let start = monotonic_ns();
    std::thread::sleep(Duration::from_millis(sleep_ms));
    let end = monotonic_ns();
    let cpu_before = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    busy(Duration::from_millis(busy_ms));
    // CPU time, not wall time: tests run side by side on few cores
    let busy_cpu_ns = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu_before;
    let linger_end = Instant::now() + Duration::from_millis(linger_ms);
    let l = Locks::new();
    while Instant::now() < linger_end {
        busy(Duration::from_millis(2));
        // one of each pthread lock kind, and a trylock that fails (EBUSY):
        // data for the dashboards' lock panels
        unsafe {
            libc::pthread_mutex_lock(l.mutex.get());
            libc::pthread_mutex_trylock(l.mutex.get());
            libc::pthread_mutex_unlock(l.mutex.get());
            libc::pthread_rwlock_rdlock(l.rwlock.get());
            libc::pthread_rwlock_unlock(l.rwlock.get());
            libc::pthread_rwlock_wrlock(l.rwlock.get());
            libc::pthread_rwlock_unlock(l.rwlock.get());
            pthread_spin_lock(l.spin.get());
            pthread_spin_unlock(l.spin.get());
        }
        futex_wait_for_dashboards();
        std::thread::sleep(Duration::from_millis(3));
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| die("no /proc/self/exe"));
    let argv = [
        "proc_image_workload".to_string(),
        "exit".into(),
        exit_code.to_string(),
    ];
    say(
        json!({"event": "exec", "sleep_start_ns": start, "sleep_end_ns": end,
               "busy_end_ns": monotonic_ns(), "busy_cpu_ns": busy_cpu_ns,
               "filename": exe, "argv": argv, "exit_code": exit_code}),
    );
    let err = std::process::Command::new(&exe)
        .arg0(&argv[0])
        .args(&argv[1..])
        .exec();
    die(&format!("exec {}: {err}", exe.display()));
}

/// Run `op` `per_sec` times a second (in 1 ms batches) until `end`; returns the count.
fn paced(per_sec: u64, end: Instant, mut op: impl FnMut()) -> u64 {
    let per_ms = per_sec.div_ceil(1000).max(1);
    let start = Instant::now();
    let mut done = 0u64;
    while Instant::now() < end {
        for _ in 0..per_ms {
            op();
        }
        done += per_ms;
        // ahead of schedule: wait for the next millisecond
        let due = start + Duration::from_micros(done * 1_000_000 / per_sec);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    done
}

fn stress(forks_per_sec: u64, syscalls_per_sec: u64, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let forker = std::thread::spawn(move || {
        if forks_per_sec == 0 {
            return 0;
        }
        paced(forks_per_sec, end, || unsafe {
            match libc::fork() {
                0 => libc::_exit(0),
                -1 => {}
                pid => {
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        })
    });
    let syscalls = paced(syscalls_per_sec, end, || unsafe {
        libc::getppid();
    });
    let forks = forker.join().unwrap();
    say(json!({"event": "stress", "forks": forks, "syscalls": syscalls, "secs": secs}));
}

fn bench(n: u64, mut op: impl FnMut()) {
    let start = Instant::now();
    for _ in 0..n {
        op();
    }
    say(json!({"ns_per_op": start.elapsed().as_nanos() as f64 / n as f64}));
}

/// Two processes bounce one byte over two pipes; one op = one round trip.
/// Both run on CPU 0, so a round trip is two context switches, not two
/// cross-CPU wakeups whose cost depends on idle states.
fn bench_pipe(n: u64) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    unsafe {
        libc::pipe(a.as_mut_ptr());
        libc::pipe(b.as_mut_ptr());
    }
    let mut byte = [0u8; 1];
    let child = unsafe { libc::fork() };
    if child == 0 {
        for _ in 0..n {
            unsafe {
                libc::read(a[0], byte.as_mut_ptr().cast(), 1);
                libc::write(b[1], byte.as_ptr().cast(), 1);
            }
        }
        unsafe { libc::_exit(0) };
    }
    bench(n, || unsafe {
        libc::write(a[1], byte.as_ptr().cast(), 1);
        libc::read(b[0], byte.as_mut_ptr().cast(), 1);
    });
    unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
}

// glibc has them; the libc crate does not declare them for Linux
extern "C" {
    fn pthread_spin_init(lock: *mut i32, pshared: libc::c_int) -> libc::c_int;
    fn pthread_spin_lock(lock: *mut i32) -> libc::c_int;
    fn pthread_spin_unlock(lock: *mut i32) -> libc::c_int;
}

/// pthread locks at fixed addresses, shared by the threads of `locks`.
struct Locks {
    mutex: std::cell::UnsafeCell<libc::pthread_mutex_t>,
    rwlock: std::cell::UnsafeCell<libc::pthread_rwlock_t>,
    spin: std::cell::UnsafeCell<i32>,
    busy: std::cell::UnsafeCell<libc::pthread_mutex_t>,
    recursive: std::cell::UnsafeCell<libc::pthread_mutex_t>,
    handed: std::cell::UnsafeCell<libc::pthread_rwlock_t>,
}

// SAFETY: only touched through the pthread functions, which synchronize.
unsafe impl Sync for Locks {}

impl Locks {
    fn new() -> &'static Locks {
        let l: &'static Locks = Box::leak(Box::new(Locks {
            mutex: libc::PTHREAD_MUTEX_INITIALIZER.into(),
            rwlock: libc::PTHREAD_RWLOCK_INITIALIZER.into(),
            spin: 0.into(),
            busy: libc::PTHREAD_MUTEX_INITIALIZER.into(),
            recursive: libc::PTHREAD_MUTEX_INITIALIZER.into(),
            handed: libc::PTHREAD_RWLOCK_INITIALIZER.into(),
        }));
        unsafe {
            pthread_spin_init(l.spin.get(), 0);
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_settype(&mut attr, libc::PTHREAD_MUTEX_RECURSIVE);
            libc::pthread_mutex_init(l.recursive.get(), &attr);
        }
        l
    }
}

fn addr<T>(p: *mut T) -> String {
    format!("{:#x}", p as usize)
}

/// Hold a lock for `ms` after `take` took it (it returns the time it did,
/// stamped before anything else it does while holding it); (acquired,
/// released) times.
fn held(ms: u64, take: impl FnOnce() -> u64, give: impl FnOnce()) -> (u64, u64) {
    let acquired = take();
    std::thread::sleep(Duration::from_millis(ms));
    let released = monotonic_ns();
    give();
    (acquired, released)
}

/// Wait (5 s at most) until thread `tid` of this process is blocked in a
/// futex call: "B asks while A holds" then holds however late B runs (a
/// single-threaded emulator can run it tens of ms after A).
fn until_in_futex(tid: i32) {
    let path = format!("/proc/self/task/{tid}/syscall");
    let futex = libc::SYS_futex.to_string();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.split_whitespace().next() == Some(futex.as_str()) {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn locks(args: &[String]) {
    let flag = |f: &str| args.iter().any(|a| a == f);
    let into = args
        .iter()
        .position(|a| a == "--exec-into")
        .and_then(|i| args.get(i + 1));
    if flag("--exec") || flag("--exec-from-thread") || into.is_some() {
        say(json!({"event": "ready", "pid": std::process::id()}));
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        if let Some(program) = into {
            let err = std::process::Command::new(program).exec();
            die(&format!("exec {program}: {err}"));
        }
        let exe = std::env::current_exe().unwrap_or_else(|_| die("no /proc/self/exe"));
        let rest: Vec<String> = args[1..]
            .iter()
            .filter(|a| !a.starts_with("--exec"))
            .cloned()
            .collect();
        let run = move || {
            let err = std::process::Command::new(&exe)
                .arg("locks")
                .args(&rest)
                .exec();
            die(&format!("exec: {err}"));
        };
        if flag("--exec-from-thread") {
            let t = std::thread::spawn(run);
            let _ = t.join();
        } else {
            run();
        }
        return;
    }
    let l = Locks::new();
    say(json!({"event": "locks", "pid": std::process::id(),
               "mutex": addr(l.mutex.get()), "rwlock": addr(l.rwlock.get()),
               "spinlock": addr(l.spin.get()), "trylock_mutex": addr(l.busy.get()),
               "recursive_mutex": addr(l.recursive.get()), "handed_rwlock": addr(l.handed.get()),
               "pthread_mutex_lock": libc::pthread_mutex_lock as *const () as usize}));
    // after an exec, a second go line (stdin is kept across it): the
    // tracer says when its probes follow the exec, which under load can
    // take longer than any fixed wait
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let (mutex, rw, spin, busy) = (l.mutex.get(), l.rwlock.get(), l.spin.get(), l.busy.get());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let main_tid = unsafe { libc::gettid() };

    // mutex: A holds 20 ms after B asks; B asks while A holds, then holds 20 ms
    let a = std::thread::spawn(move || {
        held(
            20,
            || unsafe {
                libc::pthread_mutex_lock(l.mutex.get());
                let acquired = monotonic_ns();
                tx.send(()).unwrap();
                until_in_futex(main_tid);
                acquired
            },
            || unsafe {
                libc::pthread_mutex_unlock(l.mutex.get());
            },
        )
    });
    rx.recv().unwrap();
    let requested = monotonic_ns();
    let b = held(
        20,
        || unsafe {
            libc::pthread_mutex_lock(mutex);
            monotonic_ns()
        },
        || unsafe {
            libc::pthread_mutex_unlock(mutex);
        },
    );
    let a = a.join().unwrap();

    // rwlock: two readers hold 20 ms; the writer asks meanwhile
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                held(
                    20,
                    || unsafe {
                        libc::pthread_rwlock_rdlock(l.rwlock.get());
                        let acquired = monotonic_ns();
                        tx.send(()).unwrap();
                        until_in_futex(main_tid);
                        acquired
                    },
                    || unsafe {
                        libc::pthread_rwlock_unlock(l.rwlock.get());
                    },
                )
            })
        })
        .collect();
    rx.recv().unwrap();
    rx.recv().unwrap();
    let w = held(
        20,
        || unsafe {
            libc::pthread_rwlock_wrlock(rw);
            monotonic_ns()
        },
        || unsafe {
            libc::pthread_rwlock_unlock(rw);
        },
    );
    let r: Vec<(u64, u64)> = readers.into_iter().map(|t| t.join().unwrap()).collect();

    // spinlock: one hold of 5 ms
    let s = held(
        5,
        || unsafe {
            pthread_spin_lock(spin);
            monotonic_ns()
        },
        || unsafe {
            pthread_spin_unlock(spin);
        },
    );

    // trylock of a mutex another thread holds: EBUSY
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // holds it from before the trylock until after the timed lock, then 10 ms
    let holder = std::thread::spawn(move || unsafe {
        libc::pthread_mutex_lock(l.busy.get());
        let acquired = monotonic_ns();
        tx.send(()).unwrap();
        done_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(10));
        let released = monotonic_ns();
        libc::pthread_mutex_unlock(l.busy.get());
        (acquired, released)
    });
    rx.recv().unwrap();
    let ret = unsafe { libc::pthread_mutex_trylock(busy) };
    // and a timed lock that gives up after 5 ms: ETIMEDOUT
    let (timed_ret, timed_wait) = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
        ts.tv_nsec += 5_000_000;
        if ts.tv_nsec >= 1_000_000_000 {
            ts.tv_sec += 1;
            ts.tv_nsec -= 1_000_000_000;
        }
        let start = monotonic_ns();
        let r = libc::pthread_mutex_timedlock(busy, &ts);
        (r, monotonic_ns() - start)
    };
    done_tx.send(()).unwrap();
    let h = holder.join().unwrap();

    // a recursive mutex taken three deep, 2 ms between each step: holds of
    // about 10, 6 and 2 ms, the innermost released first
    let rec = l.recursive.get();
    let mut taken = Vec::new();
    for _ in 0..3 {
        unsafe { libc::pthread_mutex_lock(rec) };
        taken.push(monotonic_ns());
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut recursive_holds = Vec::new();
    for _ in 0..3 {
        let released = monotonic_ns();
        unsafe { libc::pthread_mutex_unlock(rec) };
        recursive_holds.push(released - taken.pop().unwrap());
        std::thread::sleep(Duration::from_millis(2));
    }

    // a read hold taken by one thread and released by another (glibc
    // allows it), then a write lock nobody contends
    let handed = l.handed.get();
    std::thread::spawn(move || unsafe {
        libc::pthread_rwlock_rdlock(l.handed.get());
    })
    .join()
    .unwrap();
    unsafe {
        libc::pthread_rwlock_unlock(handed);
        libc::pthread_rwlock_wrlock(handed);
        libc::pthread_rwlock_unlock(handed);
    }

    let hold = |(acq, rel): (u64, u64)| rel - acq;
    say(json!({"event": "done",
        "mutex": {"acquisitions": 2, "contended": 1, "hold_ns": [hold(a), hold(b)],
                  "first_release_ns": a.1, "second_request_ns": requested, "second_acquired_ns": b.0},
        "rwlock": {"read_acquisitions": 2, "write_acquisitions": 1,
                   "read_hold_ns": [hold(r[0]), hold(r[1])], "write_hold_ns": hold(w)},
        "spinlock": {"acquisitions": 1, "hold_ns": hold(s)},
        "trylock_mutex": {"acquisitions": 1, "failed": 2, "ret": ret, "hold_ns": hold(h),
                          "timedlock_ret": timed_ret, "timedlock_wait_ns": timed_wait},
        "recursive_mutex": {"acquisitions": 3, "hold_ns": recursive_holds},
        "handed_rwlock": {"read_acquisitions": 1, "released_by_another_thread": 1, "write_acquisitions": 1}}));

    if flag("--fork") {
        // SAFETY: the child uses only its own lock and async-signal-safe calls
        match unsafe { libc::fork() } {
            -1 => die("fork failed"),
            0 => unsafe {
                let mut m: libc::pthread_mutex_t = libc::PTHREAD_MUTEX_INITIALIZER;
                for _ in 0..5 {
                    libc::pthread_mutex_lock(&mut m);
                    libc::pthread_mutex_unlock(&mut m);
                }
                let line = format!(
                    "{{\"event\":\"child\",\"pid\":{},\"mutex\":\"{:#x}\",\"locks\":5}}\n",
                    libc::getpid(),
                    &mut m as *mut _ as usize
                );
                libc::write(1, line.as_ptr().cast(), line.len());
                // stay a while so the test can look at our memory
                let ts = libc::timespec {
                    tv_sec: 3,
                    tv_nsec: 0,
                };
                libc::nanosleep(&ts, std::ptr::null_mut());
                libc::_exit(0);
            },
            child => unsafe {
                libc::waitpid(child, std::ptr::null_mut(), 0);
            },
        }
    }
}

/// One soak thread's own account, taken just before it ends.
fn soak_thread(kind: &'static str, mut work: impl FnMut() -> bool) -> serde_json::Value {
    let mut getppid = 0u64;
    while work() {
        getppid += 1;
        unsafe {
            libc::getppid();
        }
    }
    let tid = unsafe { libc::gettid() };
    let run_ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
    json!({"tid": tid, "kind": kind, "getppid": getppid, "run_ns": run_ns})
}

/// A process that lives for many reporting intervals: busy threads, idle
/// threads and threads that come and go (tests/soak.rs, bench/soak.sh).
fn soak(threads: u64, secs: u64, churn_ms: u64) {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut handles: Vec<std::thread::JoinHandle<serde_json::Value>> = (0..threads)
        .map(|i| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                if i % 2 == 0 {
                    soak_thread("busy", || {
                        n += 1;
                        if n % 2000 == 0 {
                            busy(Duration::from_millis(2));
                        }
                        n % 2000 != 0 || Instant::now() < end
                    })
                } else {
                    soak_thread("idle", || {
                        n += 1;
                        if n % 10 == 0 {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        n % 10 != 0 || Instant::now() < end
                    })
                }
            })
        })
        .collect();
    while Instant::now() + Duration::from_millis(churn_ms) < end {
        std::thread::sleep(Duration::from_millis(churn_ms));
        handles.push(std::thread::spawn(|| {
            let mut n = 0u64;
            soak_thread("short", || {
                n += 1;
                if n == 500 {
                    busy(Duration::from_millis(1));
                    std::thread::sleep(Duration::from_millis(10));
                }
                n <= 500
            })
        }));
    }
    let done: Vec<serde_json::Value> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let getppid: u64 = done.iter().map(|t| t["getppid"].as_u64().unwrap()).sum();
    say(
        json!({"event": "soak", "threads_created": done.len(), "getppid": getppid, "threads": done}),
    );
}

/// One ia32 getpid through int 0x80 (its number in the ia32 table is 20,
/// writev's in the x86_64 one).
#[cfg(target_arch = "x86_64")]
fn ia32_getpid() {
    // SAFETY: getpid takes no arguments and touches no memory.
    unsafe {
        std::arch::asm!("int 0x80", inlateout("eax") 20 => _, options(nostack));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn ia32_getpid() {
    die("ia32 syscalls exist on x86_64 only")
}

/// Threads that make exactly the syscalls they count while traced.
/// Syscalls that fail harmlessly when every argument is -1 or 0 (a bad fd, a
/// null pointer, a zero length): more than a thread's syscall entry has
/// room for (64), and none that `syscall_threads` makes otherwise (nor
/// writev: ia32 getpid's number in the x86_64 table, which a test checks is
/// never counted).
#[cfg(target_arch = "x86_64")]
const FAILING_SYSCALLS: [libc::c_long; 75] = [
    3, 5, 8, 16, 17, 18, 19, 32, 33, 40, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 72,
    73, 74, 75, 77, 78, 81, 91, 93, 138, 187, 190, 193, 196, 199, 217, 221, 232, 233, 254, 255,
    257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 275, 276, 277, 278, 280, 281,
    285, 288, 292, 295, 296, 299, 301, 303, 304, 306, 307, 308,
];

/// The first `n` of FAILING_SYSCALLS.
fn failing_syscalls(n: u64) -> &'static [libc::c_long] {
    #[cfg(target_arch = "x86_64")]
    return FAILING_SYSCALLS
        .get(..n as usize)
        .unwrap_or_else(|| die(&format!("--distinct: at most {}", FAILING_SYSCALLS.len())));
    #[cfg(not(target_arch = "x86_64"))]
    match n {
        0 => &[],
        _ => die("--distinct: x86_64 only"),
    }
}

fn syscall_threads(
    threads: u64,
    getppid: u64,
    ia32: u64,
    secs: u64,
    distinct: &'static [libc::c_long],
) {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let pipe = || {
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            die("pipe");
        }
        fds
    };
    let (start, park) = (pipe(), pipe());
    // per thread: tid, getppid made, ia32 getpid made, clock_nanosleep made, done
    let slots: Arc<Vec<[AtomicU64; 5]>> = Arc::new(
        (0..threads)
            .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            .collect(),
    );
    for i in 0..threads as usize {
        let slots = slots.clone();
        std::thread::spawn(move || {
            let me = &slots[i];
            // SAFETY: gettid has no preconditions.
            me[0].store(unsafe { libc::gettid() } as u64, SeqCst);
            let mut byte = 0u8;
            // SAFETY: reads one byte into `byte`.
            unsafe { libc::read(start[0], (&mut byte as *mut u8).cast(), 1) };
            // from here: only these, then getppid, int 0x80 getpid and clock_nanosleep
            for &nr in distinct {
                // every argument a whole register (a variadic int may carry junk above)
                let zero: libc::c_long = 0;
                // SAFETY: each fails on the bad fd or null pointer before doing anything
                unsafe { libc::syscall(nr, -1 as libc::c_long, zero, zero, zero, zero, zero) };
            }
            let period = Duration::from_millis(10);
            let steps = (secs * 100).max(1);
            let begun = Instant::now();
            let (mut made, mut made32, mut sleeps) = (0u64, 0u64, 0u64);
            for step in 1..=steps {
                while made < getppid * step / steps {
                    // SAFETY: getppid has no preconditions.
                    unsafe { libc::getppid() };
                    made += 1;
                }
                while made32 < ia32 * step / steps {
                    ia32_getpid();
                    made32 += 1;
                }
                let due = begun + period * step as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    let ts = libc::timespec {
                        tv_sec: wait.as_secs() as i64,
                        tv_nsec: wait.subsec_nanos() as i64,
                    };
                    // SAFETY: relative sleep, no remainder asked for.
                    unsafe {
                        libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut())
                    };
                    sleeps += 1;
                }
            }
            me[1].store(made, SeqCst);
            me[2].store(made32, SeqCst);
            me[3].store(sleeps, SeqCst);
            me[4].store(1, SeqCst);
            // SAFETY: as above; never returns while the process lives.
            unsafe { libc::read(park[0], (&mut byte as *mut u8).cast(), 1) };
        });
    }
    while slots.iter().any(|s| s[0].load(SeqCst) == 0) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let tids: Vec<u64> = slots.iter().map(|s| s[0].load(SeqCst)).collect();
    // each is asleep in its read: entered before any tracing can begin
    for tid in &tids {
        while proc_image::sys::proc_stat(*tid as u32).is_none_or(|st| st.state != 'S') {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    say(json!({"event": "threads", "pid": std::process::id(), "tids": tids}));
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let go = vec![0u8; threads as usize];
    // SAFETY: writes one byte per thread (a pipe holds far more).
    unsafe { libc::write(start[1], go.as_ptr().cast(), go.len()) };
    while slots.iter().any(|s| s[4].load(SeqCst) == 0) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let done_ns = monotonic_ns();
    let per_thread: Vec<serde_json::Value> = slots
        .iter()
        .map(|s| {
            json!({"tid": s[0].load(SeqCst), "getppid": s[1].load(SeqCst),
                   "ia32_getpid": s[2].load(SeqCst), "clock_nanosleep": s[3].load(SeqCst),
                   "distinct": distinct.len()})
        })
        .collect();
    say(json!({"event": "done", "done_ns": done_ns, "threads": per_thread}));
    // until killed: an exit would end the workers' reads, one more syscall each
    loop {
        std::thread::park();
    }
}

/// Short-lived threads, one after another, `per_sec` a second.
fn thread_churn(per_sec: u64, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    let made = paced(per_sec, end, || {
        // three: more than any other syscall of a thread's start and end
        let _ = std::thread::spawn(|| unsafe {
            libc::getppid();
            libc::getppid();
            libc::getppid();
        })
        .join();
    });
    say(json!({"event": "churn", "threads": made}));
}

/// Fork a child with pid `pid` (any pid if 0) through clone3 set_tid.
fn fork_with_pid(pid: libc::pid_t) -> libc::pid_t {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tid = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid != 0 { tid.as_ptr() as u64 } else { 0 },
        set_tid_size: (pid != 0) as u64,
        ..Default::default()
    };
    // SAFETY: like fork(); the child only makes raw syscalls and execs or exits.
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        ) as libc::pid_t
    }
}

/// prctl(PR_SET_NAME): the comm children inherit.
fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
}

/// Two processes, one after the other, with the same pid.
fn pid_reuse(k: u64) {
    set_comm("reuse-parent");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    let first = fork_with_pid(0);
    if first == 0 {
        for _ in 0..k {
            // SAFETY: no preconditions.
            unsafe { libc::getppid() };
        }
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) };
    }
    if first < 0 {
        die("fork");
    }
    // SAFETY: reaps the child, freeing its pid.
    unsafe { libc::waitpid(first, std::ptr::null_mut(), 0) };
    let exe = std::env::current_exe().unwrap_or_else(|_| die("current_exe"));
    let second = fork_with_pid(first);
    if second == 0 {
        for _ in 0..2 * k {
            // SAFETY: no preconditions.
            unsafe { libc::getppid() };
        }
        let err = std::process::Command::new(&exe)
            .args(["reused-pid", "--getppid", &(3 * k).to_string()])
            .exec();
        die(&format!("exec: {err}"));
    }
    if second < 0 {
        die(&format!(
            "clone3 set_tid {first}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut status = 0;
    // SAFETY: reaps the second child.
    unsafe { libc::waitpid(second, &mut status, 0) };
    say(json!({"event": "pid_reuse", "pid": first, "second": second, "status": status}));
}

fn reused_pid(k: u64) {
    for _ in 0..k {
        // SAFETY: no preconditions.
        unsafe { libc::getppid() };
    }
    // SAFETY: ends at once, without more syscalls than exit_group.
    unsafe { libc::_exit(0) };
}

/// A sleeper competing with a spinning thread for CPU 0, blocked before and
/// after: its every switch-in in between follows a wakeup or a preemption.
fn runqueue(sleeps: u64, secs: u64) {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
    use std::sync::Arc;
    let mut fds = [0i32; 2];
    let mut park = [0i32; 2];
    // SAFETY: each array has room for two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) | libc::pipe(park.as_mut_ptr()) } != 0 {
        die("pipe");
    }
    let done = Arc::new(AtomicBool::new(false));
    let sleeper_tid = Arc::new(AtomicI32::new(0));
    let (d, t) = (done.clone(), sleeper_tid.clone());
    std::thread::spawn(move || {
        pin_to_cpu0();
        // SAFETY: gettid has no preconditions.
        t.store(unsafe { libc::gettid() }, SeqCst);
        let mut byte = 0u8;
        // SAFETY: one byte into `byte`.
        unsafe { libc::read(fds[0], (&mut byte as *mut u8).cast(), 1) };
        let pause = Duration::from_micros(secs * 1_000_000 / sleeps.max(1));
        for _ in 0..sleeps {
            std::thread::sleep(pause);
        }
        d.store(true, SeqCst);
        // SAFETY: as above; never returns while the process lives.
        unsafe { libc::read(park[0], (&mut byte as *mut u8).cast(), 1) };
    });
    let (d, go_fd) = (done.clone(), fds[0]);
    let busy_tid = Arc::new(AtomicI32::new(0));
    let b = busy_tid.clone();
    std::thread::spawn(move || {
        pin_to_cpu0();
        // SAFETY: as above.
        b.store(unsafe { libc::gettid() }, SeqCst);
        let mut byte = 0u8;
        // SAFETY: as above: waits for the same go as the sleeper
        unsafe { libc::read(go_fd, (&mut byte as *mut u8).cast(), 1) };
        while !d.load(SeqCst) {
            busy(Duration::from_millis(1));
        }
        // SAFETY: as above.
        unsafe { libc::read(park[0], (&mut byte as *mut u8).cast(), 1) };
    });
    let tids = [sleeper_tid.as_ref(), busy_tid.as_ref()];
    while tids.iter().any(|t| t.load(SeqCst) == 0) {
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in tids {
        let tid = t.load(SeqCst) as u32;
        while proc_image::sys::proc_stat(tid).is_none_or(|st| st.state != 'S') {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    say(
        json!({"event": "threads", "sleeper": sleeper_tid.load(SeqCst), "busy": busy_tid.load(SeqCst)}),
    );
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: one byte for each of the two threads.
    unsafe { libc::write(fds[1], b"gg".as_ptr().cast(), 2) };
    while !done.load(SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // until the sleeper is back in its read
    let tid = sleeper_tid.load(SeqCst) as u32;
    while proc_image::sys::proc_stat(tid).is_none_or(|st| st.state != 'S') {
        std::thread::sleep(Duration::from_millis(1));
    }
    say(json!({"event": "done", "done_ns": monotonic_ns()}));
    loop {
        std::thread::park();
    }
}

fn wait_for_go() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

fn gettid() -> u32 {
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// N threads hammer one mutex: M lock/unlock pairs each.
fn lock_storm(threads: u64, pairs: u64, pause_ms: u64, read: bool) {
    let l = Locks::new();
    say(
        json!({"event": "ready", "pid": std::process::id(), "mutex": addr(l.mutex.get()),
               "rwlock": addr(l.rwlock.get())}),
    );
    wait_for_go();
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                for n in 0..pairs {
                    unsafe {
                        if read {
                            libc::pthread_rwlock_rdlock(l.rwlock.get());
                            libc::pthread_rwlock_unlock(l.rwlock.get());
                        } else {
                            libc::pthread_mutex_lock(l.mutex.get());
                            libc::pthread_mutex_unlock(l.mutex.get());
                        }
                    }
                    if pause_ms > 0 && n % 10 == 9 {
                        std::thread::sleep(Duration::from_millis(pause_ms));
                    }
                }
                gettid()
            })
        })
        .collect();
    let tids: Vec<u32> = workers.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed_ms = start.elapsed().as_millis() as u64;
    // one more pair, alone (a write lock after --read): nobody holds it now
    unsafe {
        if read {
            libc::pthread_rwlock_wrlock(l.rwlock.get());
            libc::pthread_rwlock_unlock(l.rwlock.get());
        } else {
            libc::pthread_mutex_lock(l.mutex.get());
            libc::pthread_mutex_unlock(l.mutex.get());
        }
    }
    say(
        json!({"event": "done", "tids": tids, "pairs": pairs, "elapsed_ms": elapsed_ms,
               "last_pair_by": gettid()}),
    );
}

/// Is the main thread of this process gone (a zombie after pthread_exit)?
fn main_thread_gone() -> bool {
    let pid = std::process::id();
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
}

/// The main thread exits with pthread_exit() while its threads go on.
/// --second-go: the threads are started at the first line and begin (and
/// the main thread heads for its exit) at a second one.
fn lock_leader_exit(threads: u64, pairs: u64, main_pairs: u64, exit_first: bool, second_go: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static GO: AtomicBool = AtomicBool::new(false);
    let l = Locks::new();
    say(
        json!({"event": "ready", "pid": std::process::id(), "mutex": addr(l.mutex.get()),
               "pthread_mutex_lock": libc::pthread_mutex_lock as *const () as usize}),
    );
    if !exit_first {
        wait_for_go();
        GO.store(!second_go, Ordering::SeqCst);
    }
    let barrier: &'static std::sync::Barrier =
        Box::leak(Box::new(std::sync::Barrier::new(threads as usize)));
    // std's Mutex is a futex of its own, not a pthread one: not probed
    let report: &'static std::sync::Mutex<Vec<serde_json::Value>> = Box::leak(Box::default());
    for i in 0..threads {
        std::thread::spawn(move || {
            // --exit-first: the first thread takes the go line, once the
            // main thread is gone
            if i == 0 && !GO.load(Ordering::SeqCst) {
                wait_for_go();
                GO.store(true, Ordering::SeqCst);
            }
            while !GO.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut after_main = 0u64;
            for n in 0..pairs {
                let gone = main_thread_gone();
                unsafe {
                    libc::pthread_mutex_lock(l.mutex.get());
                    libc::pthread_mutex_unlock(l.mutex.get());
                }
                after_main += u64::from(gone);
                if n % 10 == 9 {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            report.lock().unwrap().push(
                json!({"tid": gettid(), "pairs": pairs, "pairs_after_main_exit": after_main}),
            );
            // one reports, once every pair of every thread is done
            if barrier.wait().is_leader() {
                let workers = report.lock().unwrap().clone();
                say(json!({"event": "done", "main_pairs": main_pairs, "workers": workers}));
            }
        });
    }
    if second_go && !exit_first {
        say(json!({"event": "threads_started"}));
        wait_for_go();
        GO.store(true, Ordering::SeqCst);
    }
    for _ in 0..main_pairs {
        unsafe {
            libc::pthread_mutex_lock(l.mutex.get());
            libc::pthread_mutex_unlock(l.mutex.get());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    say(json!({"event": "main_exits", "tid": gettid()}));
    // what pthread_exit() does in the end; glibc's pthread_exit() itself
    // would unwind through Rust's main, which aborts
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("exit returned");
}

/// The threads the lock probes are attached to (the main thread and the
/// first one) end while another waits for the mutex a fourth one holds;
/// the sets of probes that saw its call go with them, so its return is
/// never seen. Its later pairs must all be.
fn lock_anchors_go(pairs: u64, hold_ms: u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRST_EXIT: AtomicBool = AtomicBool::new(false);
    static MAIN_EXITS: AtomicBool = AtomicBool::new(false);
    static RELEASE_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let l: &'static Locks = Locks::new();
    let first = std::thread::spawn(|| {
        while !FIRST_EXIT.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    say(json!({"event": "ready", "pid": std::process::id(), "mutex": addr(l.mutex.get())}));
    wait_for_go();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || unsafe {
        libc::pthread_mutex_lock(l.mutex.get());
        tx.send(gettid()).unwrap();
        // until the two anchors are gone, then long enough for proc_image
        // to move the probes and let the first two sets go (~85 ms per
        // uprobe; seconds on a loaded host)
        while !MAIN_EXITS.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(hold_ms));
        RELEASE_NS.store(monotonic_ns(), Ordering::SeqCst);
        libc::pthread_mutex_unlock(l.mutex.get());
        // the process lives on a while: time for proc_image to probe a
        // thread again even on a loaded host, and say what it missed
        std::thread::sleep(Duration::from_secs(2));
    });
    let holder = rx.recv().unwrap();
    std::thread::spawn(move || {
        let waiter = gettid();
        unsafe {
            libc::pthread_mutex_lock(l.mutex.get());
            libc::pthread_mutex_unlock(l.mutex.get());
            for _ in 0..pairs {
                libc::pthread_mutex_lock(l.mutex.get());
                libc::pthread_mutex_unlock(l.mutex.get());
            }
        }
        let release_ns = RELEASE_NS.load(Ordering::SeqCst);
        say(
            json!({"event": "done", "holder": holder, "waiter": waiter, "pairs": pairs,
                   "release_ns": release_ns}),
        );
    });
    // the waiter is in pthread_mutex_lock() by then
    std::thread::sleep(Duration::from_millis(200));
    FIRST_EXIT.store(true, Ordering::SeqCst);
    first.join().unwrap();
    say(json!({"event": "main_exits", "tid": gettid()}));
    MAIN_EXITS.store(true, Ordering::SeqCst);
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("exit returned");
}

/// A robust mutex whose owner ends holding it, then taken by the main
/// thread (EOWNERDEAD) and once more.
fn lock_robust() {
    let m: &'static Locks = Locks::new();
    unsafe {
        let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
        libc::pthread_mutexattr_init(&mut attr);
        libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
        libc::pthread_mutex_init(m.busy.get(), &attr);
    }
    say(json!({"event": "ready", "pid": std::process::id(), "mutex": addr(m.busy.get())}));
    wait_for_go();
    std::thread::spawn(move || unsafe {
        libc::pthread_mutex_lock(m.busy.get());
    })
    .join()
    .unwrap();
    let first = unsafe { libc::pthread_mutex_lock(m.busy.get()) };
    unsafe {
        libc::pthread_mutex_consistent(m.busy.get());
        libc::pthread_mutex_unlock(m.busy.get());
    }
    let second = unsafe { libc::pthread_mutex_lock(m.busy.get()) };
    unsafe { libc::pthread_mutex_unlock(m.busy.get()) };
    say(json!({"event": "done", "first_ret": first, "second_ret": second}));
}

fn wait_go() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// A CPU-bound thread and a sleeping one, side by side, for `secs`.
fn steady(busy_secs: u64, sleep_secs: u64) {
    say(json!({"event": "ready", "pid": std::process::id()}));
    wait_go();
    let spinner = std::thread::spawn(move || {
        let tid = unsafe { libc::gettid() };
        say(json!({"event": "busy_start", "tid": tid, "ns": monotonic_ns()}));
        busy(Duration::from_secs(busy_secs));
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let run_ns: u64 = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die("no /proc/thread-self/schedstat"));
        say(json!({"event": "busy_end", "tid": tid, "ns": monotonic_ns(), "run_ns": run_ns}));
    });
    let sleeper = std::thread::spawn(move || {
        let tid = unsafe { libc::gettid() };
        let start = monotonic_ns();
        say(json!({"event": "sleeping", "tid": tid, "ns": start}));
        std::thread::sleep(Duration::from_secs(sleep_secs));
        say(json!({"event": "slept", "tid": tid, "start_ns": start, "end_ns": monotonic_ns()}));
    });
    let _ = spinner.join();
    let _ = sleeper.join();
}

/// Threads that block in named functions of their own for `secs`, each
/// called from a named caller of its own: one sleeps 20 ms at a time in
/// `offcpu_nanosleep_here` (from `offcpu_sleeper_loop`), one reads a pipe
/// in `offcpu_pipe_read_here` (from `offcpu_reader_loop`) that the main
/// thread writes every ~20 ms, one takes a pthread mutex in
/// `offcpu_mutex_lock_here` (from `offcpu_locker_loop`) that the main
/// thread holds ~20 ms at a time. The main thread wakes the reader and the
/// locker (`waker`); a timer wakes the sleeper. `--spin`: a thread on the
/// sleeper's CPU spins in user space around each of its wakeups, so that
/// the timer interrupt finds a user task running there. `--peer`: a child
/// process (`offcpu_peer`) writes a second pipe every 20 ms, which a fourth
/// thread reads in `offcpu_peer_read_here`: a waker in another process.
/// Never inlined: the tests look for it in the waker's stack.
#[inline(never)]
fn offcpu(secs: u64, spin: bool, peer: bool) {
    say(json!({"event": "ready", "pid": std::process::id()}));
    offcpu_wait_go();
    say(json!({"event": "waker", "tid": unsafe { libc::gettid() }}));
    let end = Instant::now() + Duration::from_secs(secs);
    // forked before any other thread exists
    let peer = peer.then(|| offcpu_fork_peer(secs));
    // when the sleeper last went to sleep (monotonic ns)
    let asleep = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let asleep_s = asleep.clone();
    let sleeper = std::thread::spawn(move || {
        if spin {
            pin_to_cpu(0);
        }
        say(json!({"event": "sleeper", "tid": unsafe { libc::gettid() }}));
        let n = offcpu_sleeper_loop(end, &asleep_s);
        say(json!({"event": "slept", "count": n}));
    });
    let spinner = spin.then(|| {
        std::thread::spawn(move || {
            pin_to_cpu(0);
            say(json!({"event": "spinner", "tid": unsafe { libc::gettid() }}));
            offcpu_spin_around_wakeups(end, &asleep);
        })
    });
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        die("pipe");
    }
    let (reader_tx, reader_tid) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let tid = unsafe { libc::gettid() };
        say(json!({"event": "reader", "tid": tid}));
        reader_tx.send(tid as u32).unwrap();
        let n = offcpu_reader_loop(fds[0]);
        say(json!({"event": "read", "count": n}));
    });
    // a plain (non-PI, non-robust) process-private mutex, as most programs use
    let mutex = Box::leak(Box::new(OffcpuMutex(std::cell::UnsafeCell::new(
        libc::PTHREAD_MUTEX_INITIALIZER,
    ))));
    let m: &'static OffcpuMutex = mutex;
    // held by the main thread from the start, so the locker's first lock waits
    unsafe { libc::pthread_mutex_lock(m.0.get()) };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done_l = done.clone();
    let (locker_tx, locker_tid) = std::sync::mpsc::channel();
    let locker = std::thread::spawn(move || {
        let tid = unsafe { libc::gettid() };
        say(json!({"event": "locker", "tid": tid}));
        locker_tx.send(tid as u32).unwrap();
        let n = offcpu_locker_loop(m, &done_l);
        say(json!({"event": "locked", "count": n}));
    });
    let (reader_tid, locker_tid) = (reader_tid.recv().unwrap(), locker_tid.recv().unwrap());
    let mut held = 0u64;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
        let me = std::process::id();
        let seen = |tid, nr| asleep_in(me, tid, nr).then(Instant::now);
        let (read_seen, lock_seen) = (
            seen(reader_tid, libc::SYS_read),
            seen(locker_tid, libc::SYS_futex),
        );
        std::thread::sleep(Duration::from_millis(10));
        // a wait woken before proc_image's stack threshold (1 ms) names no
        // waker: a reader or locker that came back to its wait late (a
        // loaded host) waits 2 ms at least before it is woken
        until_asleep_2ms(me, reader_tid, libc::SYS_read, read_seen);
        until_asleep_2ms(me, locker_tid, libc::SYS_futex, lock_seen);
        // ends the locker's wait and the reader's, ~20 ms each
        unsafe { libc::pthread_mutex_unlock(m.0.get()) };
        unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
        held += 1;
        // let the locker have it, then hold it again
        std::thread::sleep(Duration::from_millis(2));
        unsafe { libc::pthread_mutex_lock(m.0.get()) };
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    unsafe { libc::pthread_mutex_unlock(m.0.get()) };
    unsafe { libc::close(fds[1]) };
    say(json!({"event": "held", "count": held}));
    if let Some((child, reader)) = peer {
        let _ = reader.join();
        let mut status = 0;
        unsafe { libc::waitpid(child, &mut status, 0) };
    }
    let _ = sleeper.join();
    let _ = reader.join();
    let _ = locker.join();
    if let Some(s) = spinner {
        let _ = s.join();
    }
}

/// Wait for "go" by polling stdin every ms: a read blocked on it would be
/// woken by the test's write, and naming that waker makes proc_image
/// symbolize the test binary's (large, debug) user frames on its main loop
/// at the start of the run. The pause is poll()'s, not a nanosleep: the
/// first stretch after the activation has no user stack (it began before),
/// and tests/offcpu.rs wants one on every nanosleep.
fn offcpu_wait_go() {
    // SAFETY: fcntl on our own stdin; a plain byte buffer for read
    unsafe {
        let flags = libc::fcntl(0, libc::F_GETFL);
        libc::fcntl(0, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut b = [0u8; 16];
    loop {
        let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), b.len()) };
        if n == 0 || (n > 0 && b[..n as usize].contains(&b'\n')) {
            return;
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
            die("read stdin");
        }
        unsafe { libc::poll(std::ptr::null_mut(), 0, 1) };
    }
}

/// The `--peer` child process, writing a pipe every 20 ms for `secs`, and
/// the thread of ours that reads it.
#[inline(never)]
fn offcpu_fork_peer(secs: u64) -> (libc::pid_t, std::thread::JoinHandle<()>) {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        die("pipe");
    }
    // the reader's tid, once it runs
    let (tid_rx, tid_tx) = pipe();
    let rounds = secs * 50;
    let parent = std::process::id();
    // SAFETY: forked while this process has one thread (no lock is held)
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            libc::prctl(libc::PR_SET_NAME, c"offcpu_peer".as_ptr());
            libc::close(fds[0]);
            let mut tid = [0u8; 4];
            if libc::read(tid_rx, tid.as_mut_ptr().cast(), 4) != 4 {
                libc::_exit(1);
            }
            let tid = u32::from_ne_bytes(tid);
            for _ in 0..rounds {
                // as the main thread's writes (see offcpu())
                std::thread::sleep(Duration::from_millis(10));
                let seen = asleep_in(parent, tid, libc::SYS_read).then(Instant::now);
                std::thread::sleep(Duration::from_millis(10));
                until_asleep_2ms(parent, tid, libc::SYS_read, seen);
                libc::write(fds[1], b"p".as_ptr().cast(), 1);
            }
            libc::_exit(0);
        }
    }
    if child < 0 {
        die("fork");
    }
    unsafe { libc::close(fds[1]) };
    say(json!({"event": "peer", "pid": child, "comm": "offcpu_peer"}));
    let reader = std::thread::spawn(move || {
        let tid = unsafe { libc::gettid() };
        say(json!({"event": "peer_reader", "tid": tid}));
        unsafe { libc::write(tid_tx, (tid as u32).to_ne_bytes().as_ptr().cast(), 4) };
        let mut n = 0u64;
        while offcpu_peer_read_here(fds[0]) > 0 {
            n += 1;
        }
        say(json!({"event": "peer_read", "count": n}));
    });
    (child, reader)
}

#[inline(never)]
fn offcpu_peer_read_here(fd: i32) -> isize {
    let mut b = [0u8; 1];
    unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) }
}

/// A pthread mutex shared by the `offcpu` threads.
struct OffcpuMutex(std::cell::UnsafeCell<libc::pthread_mutex_t>);
// SAFETY: a pthread mutex is made to be used from several threads at once.
unsafe impl Sync for OffcpuMutex {}

#[inline(never)]
fn offcpu_sleeper_loop(end: Instant, asleep: &std::sync::atomic::AtomicU64) -> u64 {
    let mut n = 0u64;
    while Instant::now() < end {
        asleep.store(monotonic_ns(), std::sync::atomic::Ordering::SeqCst);
        offcpu_sleep_inlined(20);
        n += 1;
    }
    std::hint::black_box(n)
}

#[inline(never)]
fn offcpu_reader_loop(fd: i32) -> u64 {
    let mut n = 0u64;
    while offcpu_pipe_read_here(fd) > 0 {
        n += 1;
    }
    std::hint::black_box(n)
}

/// Take the mutex (it waits for the main thread), give it back, and come
/// back after the main thread has it again.
#[inline(never)]
fn offcpu_locker_loop(m: &OffcpuMutex, done: &std::sync::atomic::AtomicBool) -> u64 {
    let mut n = 0u64;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        offcpu_mutex_lock_here(m);
        unsafe { libc::pthread_mutex_unlock(m.0.get()) };
        n += 1;
        std::thread::sleep(Duration::from_millis(6));
    }
    std::hint::black_box(n)
}

/// Spin in user space from 3 ms before to 3 ms after each expected wakeup
/// of the sleeper (its 20 ms sleeps), sleeping in between.
#[inline(never)]
fn offcpu_spin_around_wakeups(end: Instant, asleep: &std::sync::atomic::AtomicU64) {
    while Instant::now() < end {
        let since = asleep.load(std::sync::atomic::Ordering::SeqCst);
        let wake = since + 20_000_000;
        let now = monotonic_ns();
        if since == 0 || now > wake + 3_000_000 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        if now + 3_000_000 < wake {
            std::thread::sleep(Duration::from_nanos(wake - 3_000_000 - now));
        }
        while monotonic_ns() < wake + 3_000_000 {
            std::hint::spin_loop();
        }
    }
}

/// Always inlined into offcpu_sleeper_loop: its debug information names
/// it all the same, and so must the stacks.
#[inline(always)]
fn offcpu_sleep_inlined(ms: i64) {
    offcpu_nanosleep_here(ms);
    // used after the call: it is not the last thing the loop does there
    std::hint::black_box(ms);
}

#[inline(never)]
fn offcpu_nanosleep_here(ms: i64) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: ms * 1_000_000,
    };
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

#[inline(never)]
fn offcpu_pipe_read_here(fd: i32) -> isize {
    let mut b = [0u8; 1];
    unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) }
}

#[inline(never)]
fn offcpu_mutex_lock_here(m: &OffcpuMutex) {
    let ret = unsafe { libc::pthread_mutex_lock(m.0.get()) };
    // used after the call: no tail call, so this frame stays on the stack
    std::hint::black_box(ret);
}

/// exit_group() while `threads` threads spin on the CPUs.
fn exit_group(threads: u64) {
    let running = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..threads {
        let running = running.clone();
        std::thread::spawn(move || {
            running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            loop {
                busy(Duration::from_millis(1));
            }
        });
    }
    while running.load(std::sync::atomic::Ordering::SeqCst) < threads {
        std::thread::yield_now();
    }
    busy(Duration::from_millis(20));
    unsafe { libc::_exit(3) };
}

/// A thread other than the leader execs.
fn exec_thread(getppid: u64) {
    let t = std::thread::spawn(move || {
        say(
            json!({"event": "thread", "tid": unsafe { libc::gettid() }, "pid": std::process::id()}),
        );
        wait_go();
        let exe = std::env::current_exe().unwrap_or_else(|_| die("no /proc/self/exe"));
        let mut cmd = std::process::Command::new(exe);
        cmd.arg0("proc_image_workload");
        // the new image: `getppid` calls and an exit, or a spin that goes on
        if getppid > 0 {
            cmd.args(["bench-syscalls", &getppid.to_string()]);
        } else {
            cmd.arg("spin");
        }
        let err = cmd.exec();
        die(&format!("exec: {err}"));
    });
    let _ = t.join();
}

/// An io_uring whose submission queue a kernel thread of this process polls.
fn io_uring() {
    const IORING_SETUP_SQPOLL: u32 = 1 << 1;
    wait_go();
    // struct io_uring_params: 120 bytes, flags is the third u32
    let mut params = [0u32; 30];
    params[2] = IORING_SETUP_SQPOLL;
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    say(json!({"event": "io_uring", "ok": fd >= 0}));
    std::thread::sleep(Duration::from_millis(300));
}

// ---------------------------------------------------------------------
// futex: contention of known shape, through the C library's mutex or Rust's
// std::sync::Mutex (which calls futex itself).

/// One futex wait (for the futex dashboard's panels, from a single
/// thread): parking with a timeout and nobody to unpark waits in
/// futex(FUTEX_WAIT_BITSET) until the timeout.
fn futex_wait_for_dashboards() {
    std::thread::park_timeout(Duration::from_millis(1));
}

/// A mutex the futex workload contends on: a pthread one, or Rust's own.
enum FutexLock {
    Pthread(std::cell::UnsafeCell<libc::pthread_mutex_t>),
    Std(std::sync::Mutex<()>),
}

// SAFETY: the pthread mutex is only touched through pthread calls.
unsafe impl Sync for FutexLock {}

impl FutexLock {
    fn new(kind: &str) -> &'static FutexLock {
        Box::leak(Box::new(match kind {
            "pthread" => FutexLock::Pthread(libc::PTHREAD_MUTEX_INITIALIZER.into()),
            "std" => FutexLock::Std(std::sync::Mutex::new(())),
            other => die(&format!("--lock pthread|std, not {other}")),
        }))
    }

    /// Take it, run `f` holding it, release it.
    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        match self {
            FutexLock::Pthread(m) => unsafe {
                libc::pthread_mutex_lock(m.get());
                let r = f();
                libc::pthread_mutex_unlock(m.get());
                r
            },
            FutexLock::Std(m) => {
                let g = m.lock().unwrap_or_else(|e| e.into_inner());
                let r = f();
                drop(g);
                r
            }
        }
    }
}

/// Is thread `tid` of this process asleep in futex(2)? Then (its futex
/// address): /proc/self/task/TID/syscall names the syscall and its
/// arguments, stat says it sleeps (a futex wait sleeps only once queued,
/// after the kernel compared the futex word, so no EAGAIN can follow).
fn asleep_in_futex(tid: u32) -> Option<u64> {
    let sc = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let mut f = sc.split_whitespace();
    if f.next()?.parse::<i64>().ok()? != libc::SYS_futex {
        return None;
    }
    let uaddr = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state == "S").then_some(uaddr)
}

/// Is thread `tid` of process `pid` asleep in syscall `nr`?
fn asleep_in(pid: u32, tid: u32, nr: i64) -> bool {
    let task = format!("/proc/{pid}/task/{tid}");
    let in_nr = std::fs::read_to_string(format!("{task}/syscall"))
        .is_ok_and(|sc| sc.split_whitespace().next() == Some(&nr.to_string()));
    let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    in_nr && state == Some("S")
}

/// Wait until thread `tid` of process `pid` has slept in syscall `nr` for
/// 2 ms at least: seen asleep in it that far apart (the first time at
/// `since`, if given), a wait only the caller ends. Gives up after 2 s.
fn until_asleep_2ms(pid: u32, tid: u32, nr: i64, mut since: Option<Instant>) {
    let give_up = Instant::now() + Duration::from_secs(2);
    while Instant::now() < give_up {
        if !asleep_in(pid, tid, nr) {
            since = None;
        } else if since.is_some_and(|t| t.elapsed() >= Duration::from_millis(2)) {
            return;
        } else if since.is_none() {
            since = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pipe() -> (i32, i32) {
    let mut fds = [0; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        die("pipe");
    }
    (fds[0], fds[1])
}

fn put_byte(fd: i32) {
    if unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) } != 1 {
        die("pipe write");
    }
}

fn take_byte(fd: i32) {
    let mut b = [0u8];
    if unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } != 1 {
        die("pipe read");
    }
}

/// `futex`: after "go", `--solo-ops` uncontended lock/unlock pairs on a lock
/// of its own by thread fx-solo (no futex call at all), then `--rounds`
/// rounds in batches of `--batch`, each batch by a new pair of threads
/// fx-holder and fx-waiter: the holder takes the lock and tells the waiter
/// (through a pipe, not a futex), which asks for it; the holder releases it
/// `--hold-ms` after taking it, but never before the waiter sleeps in its
/// futex wait. So each round is exactly one contended wait of the waiter,
/// ended by the holder's unlock; the waiter's own unlock finds nobody
/// waiting. Every round is reported: tids, futex address, and the times
/// that bound the wait (request <= entry <= blocked, release <= return <= acquire).
/// Last, the main thread parks 20 ms with nobody to unpark it (futex_timeout).
fn futex_workload(args: &[String]) {
    let opt = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| die(&format!("{name} needs a number")))
            })
            .unwrap_or(default)
    };
    let kind = args
        .iter()
        .position(|a| a == "--lock")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("pthread");
    let (rounds, batch, hold_ms, solo_ops) = (
        opt("--rounds", 60),
        opt("--batch", 10).max(1),
        opt("--hold-ms", 50),
        opt("--solo-ops", 100_000),
    );
    say(json!({"event": "ready", "pid": std::process::id()}));
    wait_for_go();

    let solo_lock = FutexLock::new(kind);
    let solo = std::thread::Builder::new()
        .name("fx-solo".into())
        .spawn(move || {
            for _ in 0..solo_ops {
                solo_lock.with(|| ());
            }
            gettid()
        })
        .unwrap_or_else(|e| die(&format!("spawn: {e}")));
    let solo_tid = solo.join().unwrap_or_else(|_| die("fx-solo panicked"));
    say(json!({"event": "futex_solo", "tid": solo_tid, "ops": solo_ops}));

    let lock = FutexLock::new(kind);
    let mut done = 0;
    while done < rounds {
        let n = batch.min(rounds - done);
        let (held_r, held_w) = pipe();
        let (done_r, done_w) = pipe();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name("fx-waiter".into())
            .spawn(move || {
                let _ = tid_tx.send(gettid());
                let mut times = Vec::new();
                for _ in 0..n {
                    take_byte(held_r);
                    let request = monotonic_ns();
                    let acquire = lock.with(monotonic_ns);
                    times.push((request, acquire));
                    put_byte(done_w);
                }
                times
            })
            .unwrap_or_else(|e| die(&format!("spawn: {e}")));
        let waiter_tid: u32 = tid_rx.recv().unwrap_or_else(|_| die("no waiter tid"));
        let holder = std::thread::Builder::new()
            .name("fx-holder".into())
            .spawn(move || {
                let mut times = Vec::new();
                for _ in 0..n {
                    let t = lock.with(|| {
                        let taken = Instant::now();
                        put_byte(held_w);
                        let uaddr = loop {
                            if let Some(a) = asleep_in_futex(waiter_tid) {
                                break a;
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        };
                        let blocked = monotonic_ns();
                        let hold = Duration::from_millis(hold_ms);
                        if let Some(rest) = hold.checked_sub(taken.elapsed()) {
                            std::thread::sleep(rest);
                        }
                        (uaddr, blocked, monotonic_ns())
                    });
                    times.push(t);
                    take_byte(done_r);
                }
                (gettid(), times)
            })
            .unwrap_or_else(|e| die(&format!("spawn: {e}")));
        let (holder_tid, held) = holder.join().unwrap_or_else(|_| die("holder panicked"));
        let waited = waiter.join().unwrap_or_else(|_| die("waiter panicked"));
        for fd in [held_r, held_w, done_r, done_w] {
            unsafe { libc::close(fd) };
        }
        for (i, ((uaddr, blocked, release), (request, acquire))) in
            held.into_iter().zip(waited).enumerate()
        {
            say(
                json!({"event": "futex_round", "lock": kind, "round": done + i as u64,
                       "holder": holder_tid, "waiter": waiter_tid,
                       "uaddr": format!("{uaddr:#x}"), "request_ns": request,
                       "blocked_ns": blocked, "release_ns": release, "acquire_ns": acquire}),
            );
        }
        done += n;
    }
    // a wait nobody ends: a futex wait that times out (ETIMEDOUT), ended
    // by a timer interrupt, not by a waker
    let before = monotonic_ns();
    std::thread::park_timeout(Duration::from_millis(20));
    say(
        json!({"event": "futex_timeout", "tid": gettid(), "start_ns": before, "end_ns": monotonic_ns()}),
    );
    say(json!({"event": "futex_done", "rounds": rounds}));
}

/// Two threads hand a turn to each other through one futex word; one op =
/// one handoff: a FUTEX_WAKE by one thread, and (nearly always) a
/// FUTEX_WAIT of the other that it ends. Contention at its most expensive,
/// for bench/futex.sh.
fn bench_futex(n: u64) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static TURN: AtomicU32 = AtomicU32::new(0);
    fn futex(op: i32, val: u32) {
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                TURN.as_ptr(),
                op | libc::FUTEX_PRIVATE_FLAG,
                val,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }
    // side `me` waits for its turn, then gives the turn to the other
    fn play(me: u32, n: u64) {
        for _ in 0..n {
            loop {
                let t = TURN.load(Ordering::Acquire);
                if t == me {
                    break;
                }
                futex(libc::FUTEX_WAIT, t);
            }
            TURN.store(1 - me, Ordering::Release);
            futex(libc::FUTEX_WAKE, 1);
        }
    }
    let start = Instant::now();
    let other = std::thread::spawn(move || play(1, n / 2));
    play(0, n / 2);
    let _ = other.join();
    say(json!({"ns_per_op": start.elapsed().as_nanos() as f64 / (n / 2 * 2).max(1) as f64}));
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Threads of known scheduling class contending for one CPU (see the usage).
fn sched_classes(secs: u64, cpu: u64) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::{Arc, Barrier};
    let cpu = cpu as usize;
    let mut go = [0i32; 2];
    let mut park = [0i32; 2];
    // SAFETY: each array has room for two descriptors.
    if unsafe { libc::pipe(go.as_mut_ptr()) | libc::pipe(park.as_mut_ptr()) } != 0 {
        die("pipe");
    }
    let (go_rd, park_rd) = (go[0], park[0]);
    let done = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(Barrier::new(6));
    let (tx, rx) = std::sync::mpsc::channel();
    // (role, setup): each thread sets its own class, on its own tid
    type Setup = fn(i32);
    let roles: [(&str, Setup); 5] = [
        ("normal", |_| {}),
        ("nice5", |tid| unsafe {
            // SAFETY: setpriority on a thread id changes only that thread
            libc::setpriority(libc::PRIO_PROCESS, tid as u32, 5);
        }),
        ("batch", |tid| unsafe {
            let p = libc::sched_param { sched_priority: 0 };
            // SAFETY: a valid sched_param for SCHED_BATCH
            libc::sched_setscheduler(tid, libc::SCHED_BATCH, &p);
        }),
        ("normal2", |_| {}),
        ("sleeper", |_| {}),
    ];
    for (role, setup) in roles {
        let (tx, done, finished) = (tx.clone(), done.clone(), finished.clone());
        std::thread::spawn(move || {
            pin_to_cpu(cpu);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            setup(tid);
            tx.send((role, tid)).unwrap();
            let mut byte = 0u8;
            // SAFETY: one byte into `byte`; the go pipe is never written: EOF
            unsafe { libc::read(go_rd, (&mut byte as *mut u8).cast(), 1) };
            while !done.load(SeqCst) {
                if role == "sleeper" {
                    std::thread::sleep(Duration::from_millis(1));
                } else {
                    busy(Duration::from_millis(1));
                }
            }
            finished.wait();
            // SAFETY: as above; never returns while the process lives
            unsafe { libc::read(park_rd, (&mut byte as *mut u8).cast(), 1) };
        });
    }
    let tids: serde_json::Map<String, serde_json::Value> = rx
        .iter()
        .take(5)
        .map(|(r, t)| (r.to_string(), t.into()))
        .collect();
    say(json!({"event": "threads", "tids": tids}));
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    // SAFETY: closing the write end wakes every reader of the go pipe
    unsafe { libc::close(go[1]) };
    let end = Instant::now() + Duration::from_secs(secs);
    let mut churned = 0u64;
    while Instant::now() < end {
        std::thread::spawn(move || {
            pin_to_cpu(cpu);
            busy(Duration::from_millis(5));
        })
        .join()
        .unwrap();
        churned += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    done.store(true, SeqCst);
    finished.wait();
    say(json!({"event": "done", "done_ns": monotonic_ns(), "churned": churned}));
    let mut byte = 0u8;
    // SAFETY: as above
    unsafe { libc::read(park_rd, (&mut byte as *mut u8).cast(), 1) };
}

/// Failed execs of known paths, then a shell's PATH search that succeeds.
fn exec_fail() {
    use std::ffi::CString;
    wait_go();
    let exe = std::env::current_exe().unwrap_or_else(|_| die("no /proc/self/exe"));
    let bin_dir = exe.parent().unwrap_or_else(|| die("exe has no directory"));
    let base = std::env::temp_dir().join(format!("pi_exec_fail_{}", std::process::id()));
    let dirs = [base.join("a"), base.join("b")];
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap_or_else(|e| die(&format!("mkdir: {e}")));
    }
    let missing = base.join("no_such_program");
    let cstr = |s: &str| CString::new(s).unwrap();
    let exec = |path: &CString, argv: &[CString], env: &[CString]| -> i32 {
        let mut av: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        av.push(std::ptr::null());
        let mut ev: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
        ev.push(std::ptr::null());
        // SAFETY: NUL-terminated strings and arrays that outlive the call
        unsafe { libc::execve(path.as_ptr(), av.as_ptr(), ev.as_ptr()) };
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    };
    let missing_s = missing.to_string_lossy().into_owned();
    let errno = exec(
        &cstr(&missing_s),
        &[cstr("no_such_program"), cstr("--flag")],
        &[],
    );
    let path = format!(
        "{}:{}:{}",
        dirs[0].display(),
        dirs[1].display(),
        bin_dir.display()
    );
    let script = "exec proc_image_workload exit 4";
    say(
        json!({"event": "exec_fail", "missing": missing_s, "errno": errno,
               "path": path, "script": script}),
    );
    let _ = std::fs::remove_dir_all(&base);
    let err = exec(
        &cstr("/bin/sh"),
        &[cstr("sh"), cstr("-c"), cstr(script)],
        &[cstr(&format!("PATH={path}"))],
    );
    die(&format!("exec /bin/sh: errno {err}"));
}

/// Allocate and touch memory until the OOM killer ends it.
fn oom() {
    say(json!({"event": "ready", "pid": std::process::id()}));
    wait_go();
    let mut hog: Vec<Vec<u8>> = Vec::new();
    for _ in 0..8192 {
        hog.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&hog);
    }
    say(json!({"event": "survived"}));
}

/// /proc/thread-self/schedstat: (ns on a CPU, timeslices run).
fn own_schedstat() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let f: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    match f[..] {
        [run, _, slices] => (run, slices),
        _ => die("no /proc/thread-self/schedstat"),
    }
}

/// Threads ping and pong bounce a byte for `secs` while a third sleeps
/// `sleep_ms` `sleeps` times (see the usage at the top).
fn pingpong(secs: u64, sleeps: u64, sleep_ms: u64) {
    let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
    if unsafe { libc::pipe(a.as_mut_ptr()) != 0 || libc::pipe(b.as_mut_ptr()) != 0 } {
        die("pipe");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let go = std::sync::Arc::new(std::sync::Barrier::new(4));
    // each thread: its tid, then (after the go) its schedstat growth
    let spawn = |name: &'static str, work: Box<dyn FnOnce() -> serde_json::Value + Send>| {
        let (tx, go) = (tx.clone(), go.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tx.send((name, gettid()));
                go.wait();
                let (run0, slices0) = own_schedstat();
                let mut done = work();
                let (run1, slices1) = own_schedstat();
                done["tid"] = gettid().into();
                done["run_ns"] = (run1 - run0).into();
                done["slices"] = (slices1 - slices0).into();
                done
            })
            .unwrap_or_else(|_| die("spawn"))
    };
    let ping = spawn(
        "ping",
        Box::new(move || {
            let end = Instant::now() + Duration::from_secs(secs);
            let mut byte = [1u8];
            let mut trips = 0u64;
            while Instant::now() < end {
                unsafe {
                    libc::write(a[1], byte.as_ptr().cast(), 1);
                    libc::read(b[0], byte.as_mut_ptr().cast(), 1);
                }
                trips += 1;
            }
            byte[0] = 0; // pong's signal to stop
            unsafe { libc::write(a[1], byte.as_ptr().cast(), 1) };
            json!({"round_trips": trips})
        }),
    );
    let pong = spawn(
        "pong",
        Box::new(move || {
            let mut byte = [0u8];
            loop {
                let n = unsafe { libc::read(a[0], byte.as_mut_ptr().cast(), 1) };
                if n != 1 || byte[0] == 0 {
                    break;
                }
                unsafe { libc::write(b[1], byte.as_ptr().cast(), 1) };
            }
            json!({})
        }),
    );
    let sleeper = spawn(
        "sleeper",
        Box::new(move || {
            let spans: Vec<(u64, u64)> = (0..sleeps)
                .map(|_| {
                    let start = monotonic_ns();
                    std::thread::sleep(Duration::from_millis(sleep_ms));
                    (start, monotonic_ns())
                })
                .collect();
            json!({"sleeps": spans})
        }),
    );
    let tids: std::collections::BTreeMap<&str, u32> = rx.iter().take(3).collect();
    say(json!({"event": "threads", "pid": std::process::id(), "tids": tids}));
    wait_go();
    go.wait();
    let mut done = json!({"event": "done"});
    for (name, t) in [("ping", ping), ("pong", pong), ("sleeper", sleeper)] {
        done[name] = t.join().unwrap_or_else(|_| die("join"));
    }
    say(done);
}
