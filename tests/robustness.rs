//! Bad input, signals, stale pins, closed stdout: proc_image and controller
//! fail with one clear line and leave nothing behind.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A failure is one line on stderr, a non-zero exit, and no panic.
#[track_caller]
fn assert_one_line_error(out: &Output, needle: &str, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: not one line:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{what}: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{what}: expected {needle:?} in {stderr}"
    );
}

fn cpus() -> u32 {
    proc_image::sys::possible_cpus().unwrap()
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn controller_without_proc_image() {
    need_root();
    let out = controller(&pin_dir("nothing_here"), &["-a", "-k"]);
    assert_one_line_error(&out, "proc_image is not running", "no proc_image");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn bad_controller_input_changes_nothing() {
    need_root();
    let pi = ProcImage::start("badinput", &["-k"]);
    // a zombie: exited, not yet reaped
    let mut zombie = Command::new("true").spawn().unwrap();
    let zombie_pid = zombie.id().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let last_cpu = cpus().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["-a", "-p", "999999999"], "no thread with pid 999999999"),
        (&["-a", "-P", "999999999"], "no process with tgid 999999999"),
        (&["-a", "-p", "0", "-c", &last_cpu], "out of range"),
        (&["-a", "-p", "1", "-c", "0"], "only with -p 0"),
        (&["-a", "-p", &zombie_pid], "has already exited"),
        (&["-a", "-l"], "not loaded"),
        (&["-a", "-S"], "not loaded"),
        (&["-a", "-p", "1", "-P", "1"], "cannot be used with"),
        (&["-a", "-p", "-1"], "negative"),
        (&["-a", "-p", "abc"], "not a number"),
        (&["-a", "-t", "-5"], "negative"),
        (&["-a", "-s", "0"], "not in 1..=50"),
        (&["-a", "-s", "51"], "not in 1..=50"),
        (&["-a", "-s", "abc"], "invalid value"),
        (&["-a", "-k", "3"], "not in 0..=2"),
        (&["-a", "-d"], "cannot be used with"),
        (&["-d", "-p", "4"], "only with -a"),
        (&["-f", "-k"], "only with -a or -d"),
        (&["--bogus"], "unexpected argument"),
        (&[], "required"),
    ];
    for (args, needle) in cases {
        assert_one_line_error(
            &pi.controller(args),
            needle,
            &format!("controller {args:?}"),
        );
    }
    let _ = zombie.wait();
    let status = pi.control_ok(&["--status"]);
    assert!(
        !status.contains("active on") && status.contains("keytime   loaded, inactive"),
        "{status}"
    );
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn bad_proc_image_input() {
    need_root();
    for (args, needle) in [
        (&["--ringbuf-kib", "3"][..], "power of two"),
        (&["--interval", "5"], "not in 100..=60000"),
        (&["-t", "-5"], "negative"),
        (&["--bogus"], "unexpected argument"),
    ] {
        let out = Command::new(PROC_IMAGE).args(args).output().unwrap();
        assert_one_line_error(&out, needle, &format!("proc_image {args:?}"));
    }
    // bpffs path that is not bpffs
    let out = Command::new(PROC_IMAGE)
        .args(["--pin-dir", "/tmp/not-bpffs-pi"])
        .output()
        .unwrap();
    assert_one_line_error(&out, "not on a bpf filesystem", "pin dir off bpffs");
    assert!(
        !std::path::Path::new("/tmp/not-bpffs-pi").exists(),
        "created a directory off bpffs"
    );
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn unprivileged_users_are_refused() {
    need_root();
    for (bin, args) in [(PROC_IMAGE, &["-a"][..]), (CONTROLLER, &["-a", "-k"])] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin])
            .args(args)
            .output()
            .unwrap();
        assert_one_line_error(&out, "must run as root", bin);
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn second_instance_is_refused_and_stale_pins_are_replaced() {
    need_root();
    let mut first = ProcImage::start("second", &["-k"]);
    let out = Command::new(PROC_IMAGE)
        .args(["-k", "--pin-dir"])
        .arg(&first.pin_dir)
        .output()
        .unwrap();
    let owner = first.child.id().to_string();
    assert_one_line_error(
        &out,
        &format!("already running (pid {owner}"),
        "second proc_image",
    );

    // SIGKILL leaves the pin behind; the next proc_image says so and replaces it
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(first.pin_dir.join("control").exists());
    let out = controller(&first.pin_dir, &["-a", "-k"]);
    assert_one_line_error(&out, "is gone", "controller on a stale pin");
    let next = ProcImage::start("second", &["-k"]);
    assert!(
        next.stderr_text().contains("removing stale pin"),
        "{}",
        next.stderr_text()
    );
    next.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn signals_end_cleanly() {
    need_root();
    for (i, sig) in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        .enumerate()
    {
        let mut pi = ProcImage::start(&format!("signal{i}"), &["-k"]);
        pi.control_ok(&["-a", "-k"]);
        unsafe { libc::kill(pi.child.id() as i32, sig) };
        let st = pi.wait_exit(Duration::from_secs(10));
        assert!(st.success(), "signal {sig}: {st}\n{}", pi.stderr_text());
        assert!(!pi.pin_dir.exists(), "signal {sig}: pins left");
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn time_limit_ends_proc_image() {
    need_root();
    let mut pi = ProcImage::start("timelimit", &["-k", "-t", "1"]);
    let st = pi.wait_exit(Duration::from_secs(15));
    assert!(st.success() && !pi.pin_dir.exists(), "{}", pi.stderr_text());
    // controller's -t deactivates what it activated; proc_image stays
    let mut pi = ProcImage::start("ctltimelimit", &["-k"]);
    let out = pi.control_ok(&["-a", "-k", "0", "-t", "1"]);
    assert!(out.contains("deactivated keytime"), "{out}");
    assert!(
        pi.child.try_wait().unwrap().is_none(),
        "controller -t ended proc_image"
    );
    pi.control_ok(&["-f"]);
    let st = pi.wait_exit(Duration::from_secs(15));
    assert!(st.success() && !pi.pin_dir.exists(), "{}", pi.stderr_text());
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn closed_stdout_ends_cleanly() {
    need_root();
    // like `proc_image --json | head -n 5`
    let dir = pin_dir("head");
    let mut child = Command::new(PROC_IMAGE)
        .args(["--json", "-k", "--interval", "100", "--pin-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || dir
        .join("control")
        .exists()));
    std::thread::sleep(Duration::from_millis(300));
    let act = controller(&dir, &["-a", "-k"]);
    assert!(
        act.status.success(),
        "{}",
        String::from_utf8_lossy(&act.stderr)
    );
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(5)
        .map(|l| l.unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        serde_json::from_str::<serde_json::Value>(l).expect("whole JSON lines");
    }
    // the pipe is closed now
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            panic!("proc_image kept running with stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!dir.exists(), "pins left after closed stdout");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn controller_refuses_another_control_version() {
    need_root();
    use proc_image::bpf_intf::control_state;
    let dir = pin_dir("version");
    proc_image::control::prepare_pin_dir(&dir).unwrap();
    let ctl = proc_image::control::ControlMap::create(&dir).unwrap();
    let me = std::process::id();
    let mut state = control_state {
        hdr: proc_image::control::header(),
        owner_pid: me,
        owner_start_ticks: proc_image::sys::proc_stat(me).unwrap().start_ticks,
        loaded_mask: 1,
        ..Default::default()
    };
    state.hdr.version += 1;
    ctl.write_state(&state).unwrap();
    let out = controller(&dir, &["-a", "-k"]);
    assert_one_line_error(&out, "control version", "version mismatch");
    drop(ctl);
    assert!(!dir.exists());
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn pins_are_private() {
    need_root();
    use std::os::unix::fs::PermissionsExt;
    let pi = ProcImage::start("perms", &["-k"]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pi.pin_dir), 0o700);
    for pin in ["control", "requests", "answers"] {
        assert_eq!(mode(&pi.pin_dir.join(pin)), 0o600, "{pin}");
    }
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn read_only_bpffs_is_a_clear_error() {
    need_root();
    let mnt = std::path::PathBuf::from(format!("/tmp/pi_ro_bpffs_{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "-o", "ro", "bpf"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    let out = Command::new(PROC_IMAGE)
        .args(["-k", "--pin-dir"])
        .arg(mnt.join("pi"))
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = std::fs::remove_dir(&mnt);
    assert_one_line_error(&out, "Read-only file system", "read-only bpffs");
}

/// The host's mounts of tracing filesystems, as mountinfo lists them.
fn tracing_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" /sys/kernel/tracing ") || l.contains(" /sys/kernel/debug"))
        .map(|l| l.split(' ').skip(4).take(1).collect())
        .collect()
}

/// A fresh boot may have mounted neither tracefs nor debugfs: proc_image
/// mounts tracefs itself, and keytime's exec hooks and futex, which attach
/// by its event ids, work. Run in a mount namespace of its own where both
/// are unmounted (the host's mounts stay as they are).
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_missing_tracefs_is_mounted() {
    need_root();
    let host = tracing_mounts();
    // (exit 99 if tracefs still shows: proc_image "did not start")
    let unmount =
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; \
                   [ -d /sys/kernel/tracing/events ] && exit 99; exec \"$@\"";
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        unmount,
        "sh",
    ];
    let pi = ProcImage::start_under("no_tracefs", &wrapper, &["-k", "-M"]);
    let mut w = Workload::start(&["exec-thread"]);
    w.wait_truth("thread", Duration::from_secs(5));
    let pid = u64::from(w.pid());
    let answer = pi.control_ok(&["-a", "-P", &pid.to_string(), "-k", "-M"]);
    assert!(answer.contains("activated keytime, futex"), "{answer}");
    w.go();
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "execve"
            && r["tgid"] == pid),
        "no execve record:\n{}",
        pi.stderr_text()
    );
    drop(w);
    pi.finish();
    assert_eq!(tracing_mounts(), host, "the host's mounts changed");
}

/// A live pid whose start time differs (what a recycled pid looks like) is
/// not the process controller checked: proc_image refuses to trace it.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn recycled_pid_is_not_traced() {
    need_root();
    use proc_image::bpf_intf::{control_request, CONTROL_ACTIVATE};
    let pi = ProcImage::start("pidreuse", &["-k"]);
    let w = Workload::start(&["spin"]);
    let ctl = proc_image::control::ControlMap::open(&pi.pin_dir).unwrap();
    let me = w.pid();
    let real_start = proc_image::sys::proc_stat(me).unwrap().start_ticks;
    let target = proc_image::target::Target::Group {
        tgid: me,
        start_ticks: real_start + 1,
    };
    let mut req = control_request {
        hdr: proc_image::control::header(),
        id: proc_image::control::new_request_id(),
        command: CONTROL_ACTIVATE,
        keytime_level: 1,
        ..Default::default()
    };
    target.write_request(&mut req);
    ctl.push_request(&req).unwrap();
    let mut answer = None;
    assert!(wait_until(Duration::from_secs(3), || {
        answer = ctl.take_answer(req.id).unwrap();
        answer.is_some()
    }));
    let msg = proc_image::bpf_intf::c_str(&answer.unwrap().message);
    assert!(msg.contains("has exited"), "{msg}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        pi.records().iter().all(|r| r["tgid"] != me),
        "a process with another start time was traced"
    );
    drop(ctl);
    pi.finish();
}

/// stdout stalls for 5 s behind a tiny ring buffer: records are dropped in
/// the kernel and counted, proc_image's memory does not grow, and the loss
/// is reported in the output and at exit.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn slow_consumer_losses_are_counted() {
    need_root();
    let dir = pin_dir("slow");
    let mut child = Command::new(PROC_IMAGE)
        .args([
            "--json",
            "-k",
            "--ringbuf-kib",
            "4",
            "--interval",
            "200",
            "--pin-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || dir
        .join("control")
        .exists()));
    std::thread::sleep(Duration::from_millis(300));
    let w = Workload::start(&["spin"]);
    let act = controller(&dir, &["-a", "-P", &w.pid().to_string(), "-k"]);
    assert!(
        act.status.success(),
        "{}",
        String::from_utf8_lossy(&act.stderr)
    );
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    std::thread::sleep(Duration::from_secs(5));
    let during = rss();
    // now read everything
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(800));
    let fin = controller(&dir, &["-f"]);
    assert!(fin.status.success());
    let status = child.wait().unwrap();
    let lines = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let lost: u64 = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "lost")
        .map(|r| r["ringbuf_drops"].as_u64().unwrap())
        .sum();
    assert!(lost > 0, "no loss reported:\n{stderr}");
    assert!(stderr.contains("lost"), "{stderr}");
    assert!(
        during < before + 8 * 1024,
        "RSS grew from {before} to {during} KiB while stalled"
    );
}

/// Whole-system collection under a fork and syscall flood (a short version
/// of bench/stress.sh): proc_image keeps up or counts what it drops, and
/// its memory does not grow with the number of tasks it has seen.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn flood_is_survived_with_bounded_memory() {
    need_root();
    let mut pi = ProcImage::start("flood", &["--interval", "200"]);
    pi.control_ok(&["-a"]);
    let vm = |field: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", pi.child.id()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let mut stress = Workload::start(&[
        "stress",
        "--forks-per-sec",
        "1000",
        "--syscalls-per-sec",
        "200000",
        "--secs",
        "4",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let rss_half = vm("VmRSS:");
    assert!(stress.wait().success());
    let done = stress.truth("stress");
    let rss_end = vm("VmRSS:");
    assert!(
        pi.child.try_wait().unwrap().is_none(),
        "proc_image died:\n{}",
        pi.stderr_text()
    );
    // twice the tasks seen, (almost) the same memory
    assert!(
        rss_end < rss_half + 4096,
        "RSS {rss_half} KiB -> {rss_end} KiB"
    );
    let stress_pid = stress.pid() as u64;
    let recs = pi.finish();
    let forks = recs
        .iter()
        .filter(|r| r["event"] == "fork" && r["tgid"] == stress_pid)
        .count() as u64;
    let lost: u64 = recs
        .iter()
        .filter(|r| r["event"] == "lost")
        .map(|r| u64_of(r, "ringbuf_drops") + u64_of(r, "map_full"))
        .sum();
    // every fork is either printed or counted as lost
    assert!(
        forks + lost >= u64_of(&done, "forks"),
        "{forks} fork records + {lost} lost < {} forks",
        u64_of(&done, "forks")
    );
}
