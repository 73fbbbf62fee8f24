//! The control model: one activation per collector with its own target,
//! deactivation per collector, controller -t in the foreground, proc_image
//! not tracing itself unless -m, and a request protocol concurrent
//! controllers cannot race.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(pi: &ProcImage) -> String {
    pi.control_ok(&["--status"])
}

/// The status line of one collector.
fn status_of(pi: &ProcImage, collector: &str) -> String {
    status(pi)
        .lines()
        .find(|l| l.trim_start().starts_with(collector))
        .unwrap_or_else(|| panic!("no {collector} line in {}", status(pi)))
        .to_string()
}

fn tgids_of(recs: &[Value], collector: &str, since: usize) -> Vec<u64> {
    let mut t: Vec<u64> = recs[since..]
        .iter()
        .filter(|r| r["collector"] == collector)
        .filter_map(|r| r["tgid"].as_u64())
        .collect();
    t.sort_unstable();
    t.dedup();
    t
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn each_collector_has_its_own_activation() {
    need_root();
    let pi = ProcImage::start("percollector", &["-k", "-s"]);
    let a = Workload::start(&["spin"]);
    let b = Workload::start(&["spin"]);
    let (pa, pb) = (a.pid().to_string(), b.pid().to_string());
    pi.control_ok(&["-a", "-P", &pa, "-k"]);
    pi.control_ok(&["-a", "-P", &pb, "-s"]);
    assert!(status_of(&pi, "keytime").contains(&format!("thread group {pa}")));
    assert!(status_of(&pi, "syscall").contains(&format!("thread group {pb}")));

    // both run side by side, each on its own target, over several intervals
    let from = pi.records().len();
    std::thread::sleep(Duration::from_millis(2500));
    let recs = pi.records();
    assert_eq!(tgids_of(&recs, "keytime", from), [a.pid() as u64]);
    assert_eq!(tgids_of(&recs, "syscall", from), [b.pid() as u64]);

    // -d -k stops keytime alone
    let out = pi.control_ok(&["-d", "-k"]);
    assert!(out.contains("deactivated keytime"), "{out}");
    assert!(status_of(&pi, "keytime").contains("inactive"));
    assert!(status_of(&pi, "syscall").contains("active on"));
    let from = pi.records().len();
    std::thread::sleep(Duration::from_millis(2500));
    let recs = pi.records();
    assert!(tgids_of(&recs, "keytime", from).is_empty());
    assert_eq!(tgids_of(&recs, "syscall", from), [b.pid() as u64]);
    let records: u64 = status_of(&pi, "syscall")
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a record count in the status");
    assert!(records > 0);

    // bare -d: everything
    let out = pi.control_ok(&["-d"]);
    assert!(out.contains("deactivated syscall"), "{out}");
    assert!(pi.control_ok(&["-d"]).contains("nothing was active"));
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn controller_time_limit_deactivates_what_it_activated() {
    need_root();
    let mut pi = ProcImage::start("ctltime", &["-k", "-r"]);
    let a = Workload::start(&["spin"]);
    let pa = a.pid().to_string();

    // the time runs out: keytime goes, proc_image and resource stay
    pi.control_ok(&["-a", "-P", &pa, "-r"]);
    let started = Instant::now();
    let out = pi.control_ok(&["-a", "-P", &pa, "-k", "-t", "2"]);
    assert!(started.elapsed() >= Duration::from_secs(2), "{out}");
    assert!(out.contains("activated keytime"), "{out}");
    assert!(out.contains("2 s are up: deactivated keytime"), "{out}");
    assert!(pi.child.try_wait().unwrap().is_none(), "proc_image ended");
    assert!(status_of(&pi, "keytime").contains("inactive"));
    assert!(status_of(&pi, "resource").contains("active on"));

    // a signal ends the wait at once
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let child = Command::new(CONTROLLER)
            .args(["-a", "-P", &pa, "-k", "-t", "600", "--pin-dir"])
            .arg(&pi.pin_dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || status_of(
            &pi, "keytime"
        )
        .contains("active on")));
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let text = stdout_of(&out);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("signal received: deactivated keytime"),
            "{text}"
        );
        assert!(status_of(&pi, "keytime").contains("inactive"));
    }

    // another activation replaced it meanwhile: left alone
    let child = Command::new(CONTROLLER)
        .args(["-a", "-P", &pa, "-k", "-t", "2", "--pin-dir"])
        .arg(&pi.pin_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || status_of(
        &pi, "keytime"
    )
    .contains("active on")));
    let b = Workload::start(&["spin"]);
    let pb = b.pid().to_string();
    pi.control_ok(&["-a", "-P", &pb, "-k"]);
    let text = stdout_of(&child.wait_with_output().unwrap());
    assert!(text.contains("left alone"), "{text}");
    assert!(status_of(&pi, "keytime").contains(&format!("thread group {pb}")));
    assert!(status_of(&pi, "resource").contains(&format!("thread group {pa}")));
    assert!(pi.child.try_wait().unwrap().is_none());
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn proc_image_does_not_trace_itself_unless_asked() {
    need_root();
    let pi = ProcImage::start("myproc", &["-s"]);
    let me = pi.child.id() as u64;
    pi.control_ok(&["-a", "-s"]);
    std::thread::sleep(Duration::from_millis(2500));
    let recs = pi.records();
    assert!(
        recs.iter().any(|r| r["event"] == "syscalls"),
        "no per-thread syscall records at all"
    );
    assert!(
        !recs
            .iter()
            .any(|r| r["event"] == "syscalls" && r["tgid"] == me),
        "proc_image traced itself without -m"
    );
    // with -m it sees its own polling
    pi.control_ok(&["-a", "-s", "-m"]);
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "syscalls"
            && r["tgid"] == me),
        "proc_image's own syscalls are missing with -m"
    );
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn racing_controllers_each_get_their_own_answer() {
    need_root();
    let pi = ProcImage::start("race", &["-r"]);
    let targets: Vec<Workload> = (0..8).map(|_| Workload::start(&["spin"])).collect();
    for round in 0..3 {
        let children: Vec<(u32, std::process::Child)> = targets
            .iter()
            .map(|w| {
                let child = Command::new(CONTROLLER)
                    .args(["-a", "-r", "-P", &w.pid().to_string(), "--pin-dir"])
                    .arg(&pi.pin_dir)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (w.pid(), child)
            })
            .collect();
        for (pid, child) in children {
            let out = child.wait_with_output().unwrap();
            let text = stdout_of(&out);
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                text.trim(),
                format!("activated resource on thread group {pid}"),
                "round {round}: a controller got another's answer"
            );
        }
    }
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_second_proc_image_is_refused_while_the_first_loads() {
    need_root();
    let dir = pin_dir("loading");
    let first = Command::new(PROC_IMAGE)
        .args(["--json", "-o", "none", "--pin-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the first is loading its collectors (a second or more) when this starts
    assert!(wait_until(Duration::from_secs(10), || dir
        .join("control")
        .exists()));
    let second = Command::new(PROC_IMAGE)
        .args(["-o", "none", "--pin-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("already running (pid {}", first.id())),
        "{err}"
    );
    // the first is unharmed and ends with its pins
    let ok = wait_until(Duration::from_secs(60), || {
        controller(&dir, &["--status"]).status.success()
            && stdout_of(&controller(&dir, &["--status"])).contains("ready")
    });
    assert!(ok, "the first proc_image lost its pins");
    assert!(controller(&dir, &["-f"]).status.success());
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(!dir.exists(), "pins left behind");
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn controller_in_another_pid_namespace_is_refused() {
    need_root();
    let pi = ProcImage::start("pidns", &["-k"]);
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(CONTROLLER)
        .args(["-a", "-k", "--pin-dir"])
        .arg(&pi.pin_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("pid namespace"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(status_of(&pi, "keytime").contains("inactive"));
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn trace_out_is_a_private_regular_file() {
    need_root();
    let dir = std::env::temp_dir().join(format!("pi_traceout_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, needle) in [
        (&link, "symbolic link"),
        (&fifo, "FIFO"),
        (&dir, "directory"),
    ] {
        let pins = pin_dir("traceout_bad");
        let started = Instant::now();
        let out = Command::new(PROC_IMAGE)
            .args(["-k", "--trace-out"])
            .arg(path)
            .arg("--pin-dir")
            .arg(&pins)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(started.elapsed() < Duration::from_secs(30), "it blocked");
        assert!(!pins.exists());
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

    // a new file, and an existing one, end up 0600
    let trace = dir.join("trace.json");
    std::fs::write(&trace, "old").unwrap();
    std::fs::set_permissions(&trace, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pi = ProcImage::start("traceout", &["-k", "--trace-out", trace.to_str().unwrap()]);
    pi.finish();
    let mode = std::fs::metadata(&trace).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A cgroup v2 of this test's own, removed when dropped.
struct TestCgroup {
    dir: std::path::PathBuf,
    rel: String,
}

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let mount = proc_image::sys::cgroup2_mount().expect("a cgroup v2 hierarchy");
        let rel = format!("pi_test_{name}_{}", std::process::id());
        let dir = mount.join(&rel);
        std::fs::create_dir_all(&dir).expect("create a cgroup");
        TestCgroup { dir, rel }
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .expect("move into the cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn a_cgroup_is_a_target_with_everything_that_enters_it() {
    need_root();
    let cg = TestCgroup::new("cg");
    let pi = ProcImage::start("cgroup", &["-k", "-s", "-l"]);
    let outside = Workload::start(&["spin"]);
    let mut inside = Workload::start(&[
        "lifecycle",
        "--forks",
        "3",
        "--vforks",
        "2",
        "--threads",
        "4",
    ]);
    let out = pi.control_ok(&["-a", "--cgroup", &cg.rel, "-k", "0", "-s"]);
    assert!(out.contains(&format!("on cgroup /{}", cg.rel)), "{out}");
    assert!(status_of(&pi, "keytime").contains(&format!("cgroup /{}", cg.rel)));

    // it enters the cgroup after the activation, then forks and starts threads there
    cg.enter(inside.pid());
    inside.go();
    assert!(inside.wait().code().is_some());
    let truth = inside.truth("children");
    assert!(
        pi.wait_for(Duration::from_secs(10), |r| r["event"] == "exit"
            && r["pid"] == inside.pid()
            && r["group_dead"] == true),
        "{}",
        pi.stderr_text()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let recs = pi.records();
    let of = |ev: &str| {
        recs.iter()
            .filter(|r| {
                r["collector"] == "keytime" && r["event"] == ev && r["tgid"] == inside.pid()
            })
            .count()
    };
    assert_eq!(of("fork"), 3);
    assert_eq!(of("vfork"), 2);
    assert_eq!(of("pthread_create"), 4);
    // the children were born in it: their exits are recorded too
    let children = ids(&truth["forks"]);
    for child in &children {
        assert!(
            recs.iter()
                .any(|r| r["event"] == "exit" && r["pid"] == *child),
            "child {child} born in the cgroup has no exit record"
        );
    }
    assert!(recs
        .iter()
        .any(|r| r["event"] == "syscalls" && r["tgid"] == inside.pid()));
    // nothing of the process outside it
    assert!(
        !recs.iter().any(|r| r["tgid"] == outside.pid()),
        "a process outside the cgroup was traced"
    );

    // lock cannot follow a cgroup: refused in one line, nothing changes
    let refused = pi.controller(&["-a", "--cgroup", &cg.rel, "-l"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("lock needs -p TID or -P TGID"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    assert!(status_of(&pi, "keytime").contains("active on"));

    // bad paths
    for (path, needle) in [
        ("pi_no_such_cgroup", "no cgroup"),
        ("../etc", "without . or .."),
    ] {
        let out = pi.controller(&["-a", "--cgroup", path, "-k"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{path}: {err}"
        );
    }

    // the cgroup removed: the activation ends with target_gone
    drop(outside);
    std::fs::remove_dir(&cg.dir).expect("remove the empty cgroup");
    pi.expect_target_gone(Duration::from_secs(10));
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_records_name_each_thread_s_cgroup() {
    need_root();
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    let cg = TestCgroup::new("attr");
    let id = std::fs::metadata(&cg.dir).unwrap().ino();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pi = ProcImage::start("cgattr", &["-s", "-r", "--metrics", &port.to_string()]);
    let w = Workload::start(&["spin"]);
    cg.enter(w.pid());
    pi.control_ok(&["-a", "-s", "-r"]);
    let named = |r: &Value| r["cgroup"] == format!("/{}", cg.rel).as_str() && r["cgroup_id"] == id;
    for event in ["syscalls", "resource"] {
        assert!(
            pi.wait_for(Duration::from_secs(10), |r| r["event"] == event
                && r["tgid"] == w.pid()
                && named(r)),
            "no {event} record of the workload with its cgroup"
        );
    }
    // every whole-system thread record carries one
    let recs = pi.records();
    assert!(recs
        .iter()
        .filter(|r| r["event"] == "syscalls")
        .all(|r| r["cgroup_id"].is_u64()));
    // and the metrics label the thread's series with it
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let label = format!("cgroup=\"/{}\"", cg.rel);
    assert!(
        text.lines()
            .any(|l| l.contains(&label) && l.contains(&format!("tgid=\"{}\"", w.pid()))),
        "no series labelled {label}"
    );
    drop(w);
    pi.finish();
}
