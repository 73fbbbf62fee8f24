//! Helpers for the integration tests: a real proc_image, controller and the
//! test workload, each test with a pin directory of its own.
#![allow(dead_code)]

pub mod qemu;
pub mod sched;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PROC_IMAGE: &str = env!("CARGO_BIN_EXE_proc_image");
pub const CONTROLLER: &str = env!("CARGO_BIN_EXE_controller");
pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_proc_image_workload");

/// Tests that load BPF need root. They are marked
/// `#[ignore = "needs root ..."]`, so that `cargo test` run by a user shows
/// them as ignored, not passed; scripts/test.sh runs them as root with
/// `--include-ignored`. One that runs anyway without root fails: it was
/// asked for and cannot load BPF.
#[track_caller]
pub fn need_root() {
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test loads BPF and must run as root (scripts/test.sh does)");
    }
}

pub fn pin_dir(test: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/pi_test_{test}_{}", std::process::id()))
}

type Lines = Arc<Mutex<Vec<String>>>;

fn collect_lines(stream: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub struct ProcImage {
    pub child: Child,
    pub pin_dir: PathBuf,
    stdout: Lines,
    stderr: Lines,
    /// stdout's lines parsed so far: each is parsed once, outside the
    /// reader's lock, so that a test polling records() never slows the
    /// reader (a full pipe would stall proc_image itself)
    parsed: std::cell::RefCell<Vec<Value>>,
}

impl ProcImage {
    /// Start `proc_image --json ARGS` and wait until it says it is ready.
    #[track_caller]
    pub fn start(test: &str, args: &[&str]) -> ProcImage {
        Self::start_env(test, args, &[])
    }

    /// start, with these environment variables set for proc_image.
    #[track_caller]
    pub fn start_env(test: &str, args: &[&str], env: &[(&str, &str)]) -> ProcImage {
        let mut cmd = Command::new(PROC_IMAGE);
        cmd.envs(env.iter().copied());
        Self::start_command(test, cmd, args)
    }

    /// start, run by `wrapper`: its last argument is proc_image's path,
    /// and it must exec proc_image (whose pid it keeps).
    #[track_caller]
    pub fn start_under(test: &str, wrapper: &[&str], args: &[&str]) -> ProcImage {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(PROC_IMAGE);
        Self::start_command(test, cmd, args)
    }

    #[track_caller]
    fn start_command(test: &str, mut cmd: Command, args: &[&str]) -> ProcImage {
        let pin_dir = pin_dir(test);
        let mut child = cmd
            .arg("--json")
            .args(args)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proc_image");
        let stdout = collect_lines(child.stdout.take().unwrap());
        let stderr = collect_lines(child.stderr.take().unwrap());
        let mut p = ProcImage {
            child,
            pin_dir,
            stdout,
            stderr,
            parsed: Default::default(),
        };
        let ready = wait_until(Duration::from_secs(60), || {
            p.stderr_text().contains("ready") || p.child.try_wait().ok().flatten().is_some()
        });
        assert!(
            ready && p.stderr_text().contains("ready"),
            "proc_image did not start:\n{}",
            p.stderr_text()
        );
        p
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Every JSON record printed so far.
    pub fn records(&self) -> Vec<Value> {
        let mut parsed = self.parsed.borrow_mut();
        let new: Vec<String> = {
            let lines = self.stdout.lock().unwrap();
            lines[parsed.len().min(lines.len())..].to_vec()
        };
        for l in new {
            parsed.push(serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")));
        }
        parsed.clone()
    }

    pub fn controller(&self, args: &[&str]) -> Output {
        controller(&self.pin_dir, args)
    }

    /// controller ARGS must succeed.
    #[track_caller]
    pub fn control_ok(&self, args: &[&str]) -> String {
        let out = self.controller(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "controller {args:?} failed: {}\nproc_image stderr:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.stderr_text()
        );
        text
    }

    /// Wait for a record matching `pred`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> bool {
        wait_until(timeout, || self.records().iter().any(&pred))
    }

    /// Wait for the target's end (`target_gone`); fails with proc_image's stderr.
    #[track_caller]
    pub fn expect_target_gone(&self, timeout: Duration) {
        assert!(
            self.wait_for(timeout, |r| r["event"] == "target_gone"),
            "no target_gone:\n{}",
            self.stderr_text()
        );
    }

    /// wait_for, parsing each line once: for whole-system runs, whose
    /// output grows large (and must keep being read, or proc_image blocks).
    pub fn wait_for_new(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> bool {
        let mut seen = 0;
        wait_until(timeout, || {
            let lines = self.stdout.lock().unwrap()[seen..].to_vec();
            seen += lines.len();
            lines
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|r| pred(&r))
        })
    }

    /// Wait for proc_image to end by itself.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // let the readers take the last lines
                thread::sleep(Duration::from_millis(100));
                return st;
            }
            assert!(
                Instant::now() < end,
                "proc_image did not end:\n{}",
                self.stderr_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// controller -f, then proc_image must exit 0 with its pins gone.
    #[track_caller]
    pub fn finish(mut self) -> Vec<Value> {
        self.control_ok(&["-f"]);
        // a hang detector, not a timing: ending detaches every uprobe of a
        // lock activation, ~85 ms each one after another here, and much
        // slower when the CPUs are busy (RCU grace periods stretch)
        let st = self.wait_exit(Duration::from_secs(30));
        assert!(
            st.success(),
            "proc_image exited with {st}:\n{}",
            self.stderr_text()
        );
        assert!(
            !self.pin_dir.exists(),
            "pins left in {}",
            self.pin_dir.display()
        );
        self.records()
    }
}

impl Drop for ProcImage {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // every pin, not a list of them: a killed proc_image leaves all its own
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

pub fn controller(pin_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(CONTROLLER)
        .args(args)
        .arg("--pin-dir")
        .arg(pin_dir)
        .output()
        .expect("run controller")
}

/// The test workload, started and waiting for "go" on stdin.
pub struct Workload {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
}

impl Workload {
    pub fn start(args: &[&str]) -> Workload {
        let mut child = Command::new(WORKLOAD)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let stdin = child.stdin.take();
        let stdout = collect_lines(child.stdout.take().unwrap());
        Workload {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go once");
        stdin.write_all(b"go\n").unwrap();
    }

    /// A go line, keeping stdin open for another (go() closes it).
    pub fn send_go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// The workload's own account of what it did, by "event".
    pub fn truth(&self, event: &str) -> Value {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == event)
            .unwrap_or_else(|| panic!("workload did not report {event}"))
    }

    /// Every line of the workload's account with this "event", in order.
    pub fn truths(&self, event: &str) -> Vec<Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Wait until the workload has reported `event`.
    #[track_caller]
    pub fn wait_truth(&self, event: &str, timeout: Duration) -> Value {
        let seen = wait_until(timeout, || {
            self.stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&format!("\"event\":\"{event}\"")))
        });
        assert!(seen, "workload did not report {event}");
        self.truth(event)
    }

    pub fn wait(&mut self) -> ExitStatus {
        let st = self.child.wait().unwrap();
        thread::sleep(Duration::from_millis(50));
        st
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

pub fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

/// A JSON array of ids (the workload's truth), sorted.
pub fn ids(v: &Value) -> Vec<u64> {
    sorted(
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect(),
    )
}
