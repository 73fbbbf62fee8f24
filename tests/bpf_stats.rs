//! proc_image --bpf-stats: each BPF program's runs and run time as the
//! kernel counts them, in controller --status, the exit summary and the
//! metrics; nothing of it without the flag; and the kernel stops counting
//! when proc_image is killed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;

const K: u64 = 20_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// A program's (runs, run ns) from a --bpf-stats table (status or exit
/// summary): "collector program runs run-time ms ns/run".
fn table_row(text: &str, collector: &str, program: &str) -> Option<(u64, f64)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 6 && f[0] == collector && f[1] == program && f[4] == "ms")
            .then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
    })
}

/// A counter of a {collector, program} series in a scrape.
fn metric(text: &str, name: &str, collector: &str, program: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series.starts_with(&format!("{name}{{"))
            && series.contains(&format!("collector=\"{collector}\""))
            && series.contains(&format!("program=\"{program}\"")))
        .then(|| value.parse().unwrap())
    })
}

/// The K getppid workload, traced by the syscall collector from before its
/// first syscall to its end.
fn traced_getppid_run(pi: &ProcImage) {
    let mut w = Workload::start(&["syscalls", "--getppid", &K.to_string(), "--writes", "0"]);
    pi.control_ok(&["-a", "-P", &w.pid().to_string(), "-s"]);
    w.go();
    assert!(w.wait().success());
    // the target's end stops the activation: every run it caused is counted
    pi.expect_target_gone(Duration::from_secs(10));
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn syscall_programs_runs_in_status_summary_and_metrics() {
    need_root();
    let port = free_port();
    let pi = ProcImage::start(
        "bpf_stats_on",
        &["-s", "--bpf-stats", "--metrics", &port.to_string()],
    );
    // listed from the start, not yet run
    let status = pi.control_ok(&["--status"]);
    assert_eq!(
        table_row(&status, "syscall", "handle__sys_enter"),
        Some((0, 0.0)),
        "{status}"
    );
    // four threads making K getppid each, spread over 4 s (several 1 s
    // intervals), blocked in a read before and after
    let mut w = Workload::start(&[
        "syscall-threads",
        "--threads",
        "4",
        "--getppid",
        &(K / 4).to_string(),
        "--secs",
        "4",
    ]);
    w.wait_truth("threads", Duration::from_secs(30));
    pi.control_ok(&["-a", "-P", &w.pid().to_string(), "-s"]);
    w.go();
    // --status is refreshed every interval: watch three refreshes (every
    // task's syscalls run the programs, so each shows more runs); they
    // only grow
    let mut seen: Vec<u64> = Vec::new();
    let reached = wait_until(Duration::from_secs(60), || {
        let st = pi.control_ok(&["--status"]);
        let runs = table_row(&st, "syscall", "handle__sys_enter").map_or(0, |r| r.0);
        if seen.last() != Some(&runs) {
            seen.push(runs);
        }
        seen.iter().filter(|&&r| r > 0).count() >= 3 && runs >= K
    });
    assert!(reached, "{seen:?}");
    w.wait_truth("done", Duration::from_secs(60));
    assert!(seen.windows(2).all(|p| p[0] <= p[1]), "{seen:?}");
    let _ = w.child.kill();
    pi.expect_target_gone(Duration::from_secs(10));

    // the hooks are the whole system's sys_enter/sys_exit: at least one run
    // of each per syscall of the target, K getppid among them
    let enough = |rows: [Option<(u64, f64)>; 2]| {
        rows.iter()
            .all(|r| r.is_some_and(|(runs, ms)| runs >= K && ms > 0.0))
            && rows.iter().map(|r| r.unwrap().0).sum::<u64>() >= 2 * K
    };
    // --status is refreshed every interval (1 s)
    let mut status = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = pi.control_ok(&["--status"]);
            enough([
                table_row(&status, "syscall", "handle__sys_enter"),
                table_row(&status, "syscall", "handle__sys_exit"),
            ])
        }),
        "{status}"
    );
    assert!(status.contains("--bpf-stats"), "{status}");

    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            text = scrape(port);
            let row = |prog| {
                let runs = metric(&text, "proc_image_bpf_runs_total", "syscall", prog)?;
                let secs = metric(&text, "proc_image_bpf_run_seconds_total", "syscall", prog)?;
                Some((runs as u64, secs * 1e3))
            };
            enough([row("handle__sys_enter"), row("handle__sys_exit")])
        }),
        "{text}"
    );
    assert!(text.contains("# TYPE proc_image_bpf_runs_total counter"));
    assert!(text.contains("# TYPE proc_image_bpf_run_seconds_total counter"));

    let before = table_row(&status, "syscall", "handle__sys_enter")
        .unwrap()
        .0;
    let stderr = {
        let mut pi = pi;
        pi.control_ok(&["-f"]);
        assert!(pi.wait_exit(Duration::from_secs(30)).success());
        pi.stderr_text()
    };
    let summary = stderr
        .split("BPF programs, runs and run time (--bpf-stats):")
        .nth(1)
        .unwrap_or_else(|| panic!("no --bpf-stats exit summary:\n{stderr}"));
    let enter = table_row(summary, "syscall", "handle__sys_enter");
    let exit = table_row(summary, "syscall", "handle__sys_exit");
    assert!(enough([enter, exit]), "{summary}");
    // counts only grow
    assert!(enter.unwrap().0 >= before, "{summary}");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn without_the_flag_nothing_of_it() {
    need_root();
    let port = free_port();
    let mut pi = ProcImage::start("bpf_stats_off", &["-s", "--metrics", &port.to_string()]);
    traced_getppid_run(&pi);
    let status = pi.control_ok(&["--status"]);
    assert!(!status.contains("bpf-stats"), "{status}");
    assert!(table_row(&status, "syscall", "handle__sys_enter").is_none());
    let text = scrape(port);
    assert!(text.contains("proc_image_records_total"), "{text}");
    assert!(!text.contains("proc_image_bpf_"), "{text}");
    pi.control_ok(&["-f"]);
    assert!(pi.wait_exit(Duration::from_secs(30)).success());
    let stderr = pi.stderr_text();
    assert!(stderr.contains("ended"), "{stderr}");
    assert!(!stderr.contains("bpf-stats"), "{stderr}");
}

/// The ids of the BPF programs a process holds (its prog and link fds).
fn prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The kernel's run count of those programs, summed.
fn runs_of(ids: &[u32]) -> u64 {
    ids.iter()
        .map(|&id| {
            let fd = libbpf_rs::Program::fd_from_id(id).expect("prog fd by id");
            let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
            let mut len = std::mem::size_of_val(&info) as u32;
            // SAFETY: a zeroed bpf_prog_info of `len` bytes, no arrays asked for
            let rc = unsafe {
                libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len)
            };
            assert_eq!(rc, 0, "bpf_prog_get_info_by_fd");
            info.run_cnt
        })
        .sum()
}

/// How many more runs `n` getppid of this process cause.
fn runs_caused(ids: &[u32], n: u32) -> u64 {
    let before = runs_of(ids);
    for _ in 0..n {
        // SAFETY: no arguments, no effects
        unsafe { libc::getppid() };
    }
    runs_of(ids) - before
}

fn sysctl() -> String {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn the_kernel_stops_counting_when_proc_image_is_killed() {
    need_root();
    // independent truth: no-op programs of our own on sys_enter/sys_exit,
    // whose run count grows only while the kernel's BPF stats are on
    let noop = Workload::start(&["noop-hooks", "syscalls"]);
    noop.wait_truth("ready", Duration::from_secs(30));
    let ids = prog_ids_of(noop.pid());
    assert!(ids.len() >= 2, "the no-op programs' ids: {ids:?}");
    let sysctl_before = sysctl();
    // someone else may have them on (the sysctl, or a BPF_ENABLE_STATS fd)
    assert!(
        wait_until(Duration::from_secs(60), || runs_caused(&ids, 1000) == 0),
        "the kernel's BPF stats are on already (kernel.bpf_stats_enabled = {sysctl_before}, or another holder of BPF_ENABLE_STATS): this test cannot tell"
    );

    let mut pi = ProcImage::start("bpf_stats_kill", &["-s", "--bpf-stats"]);
    let counted = runs_caused(&ids, 1000);
    assert!(counted >= 2000, "while proc_image runs: {counted} runs");
    // the sysctl is not proc_image's to write
    assert_eq!(sysctl(), sysctl_before);

    pi.child.kill().unwrap();
    pi.child.wait().unwrap();
    assert_eq!(runs_caused(&ids, 1000), 0, "still counting after SIGKILL");
    assert_eq!(sysctl(), sysctl_before);
    // a killed proc_image leaves its pins: not this test's subject
    let _ = std::fs::remove_dir_all(&pi.pin_dir);
}
