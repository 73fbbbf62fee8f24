//! The Prometheus exporter end to end: the real Prometheus scrapes a real
//! proc_image tracing a workload of known behaviour, then every PromQL
//! expression of the Grafana dashboards must return data; promtool accepts
//! the exposition; a taken port is refused in one line.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Debian's prometheus package (scripts/setup.sh installs it). Outside CI
/// a missing one skips the test loudly; in CI it fails.
fn need_prometheus() -> bool {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("prometheus is not installed (scripts/setup.sh installs it)");
        }
        eprintln!("SKIPPED: prometheus is not installed (run scripts/setup.sh)");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET: (status line, headers, body).
fn http_get(port: u16, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Prometheus on loopback scraping 127.0.0.1:`target` every second,
    /// its storage in a directory of its own.
    fn start(target: u16) -> Prometheus {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pi_prom_{}_{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: proc_image\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, port, dir };
        let ready = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/-/ready", None).0.contains("200")
        });
        assert!(ready, "prometheus did not start: {}", p.log());
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// An instant query: the result vector (status must be success).
    fn query(&self, promql: &str) -> Vec<Value> {
        let (status, _, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(promql)),
            None,
        );
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{status}: {e}: {body} for {promql}"));
        assert_eq!(v["status"], "success", "{promql}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    fn scalar(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every PromQL expression in a dashboard: panel targets, and template
/// variables' label_values(SELECTOR, LABEL) as count by (LABEL) (SELECTOR).
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    ("templating", t) => {
                        for var in t["list"].as_array().into_iter().flatten() {
                            let q = &var["query"];
                            let e = q.as_str().or_else(|| q["query"].as_str());
                            out.push(label_values_as_promql(e.expect("variable query")));
                        }
                    }
                    _ => expressions(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| expressions(x, out)),
        _ => {}
    }
}

fn label_values_as_promql(e: &str) -> String {
    let inner = e
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("template query is not label_values(...): {e}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    format!("count by ({}) ({})", label.trim(), selector.trim())
}

/// The collector a metric comes from (None: the exporter's own health).
fn collector_of(metric: &str) -> Option<&'static str> {
    let name = metric.strip_prefix("proc_image_")?;
    let table: [(&str, &str); 15] = [
        ("lifecycle_events", "keytime"),
        ("on_cpu", "keytime"),
        ("off_cpu", "keytime"),
        ("thread_syscalls", "syscall"),
        ("syscalls", "syscall"),
        ("syscall_latency", "syscall"),
        ("sched_latency", "schedule"),
        ("cpu_usage", "resource"),
        ("thread_cpu_usage", "resource"),
        ("cpu_seconds", "resource"),
        ("memory_", "resource"),
        ("io_", "resource"),
        ("lock_", "lock"),
        ("futex_", "futex"),
        ("records", ""),
    ];
    table
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map(|(_, c)| *c)
        .filter(|c| !c.is_empty())
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("proc_image_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn dashboards() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "dashboards in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .collect()
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn dashboards_query_real_prometheus_scraping_proc_image() {
    need_root();
    if !need_prometheus() {
        return;
    }
    let mport = free_port();
    let addr = format!("127.0.0.1:{mport}");
    let pi = ProcImage::start(
        "metrics",
        &["-a", "--metrics", &addr, "--interval", "300", "--bpf-stats"],
    );
    let prom = Prometheus::start(mport);
    // scraping from before the workload starts: rate() sees all it does.
    // Scrapes that succeeded (up is 1): a scrape that timed out on a busy
    // machine has an `up` sample too, but no data
    const SCRAPES: &str = r#"sum_over_time(up{job="proc_image"}[10m])"#;
    let scraped = |n: f64| {
        wait_until(Duration::from_secs(30), || {
            prom.scalar(SCRAPES).unwrap_or(0.0) >= n
        })
    };
    assert!(scraped(1.0), "prometheus did not scrape: {}", prom.log());
    let mut w = Workload::start(&[
        "lifecycle",
        "--forks",
        "3",
        "--vforks",
        "2",
        "--threads",
        "2",
        "--sleep-ms",
        "300",
        "--busy-ms",
        "1000",
        "--exit-code",
        "0",
        "--linger-ms",
        "4000",
    ]);
    let pid = w.pid();
    // its C library mapped, or lock would be left out (no pthread library)
    w.wait_truth("ready", Duration::from_secs(10));
    let answer = pi.control_ok(&["-a", "-P", &pid.to_string()]);
    assert!(
        !answer.contains("; not "),
        "every collector traces it: {answer}"
    );
    w.go();
    assert_eq!(w.wait().code(), Some(0));
    pi.expect_target_gone(Duration::from_secs(10));

    // two scrapes after the last record
    let before = prom.scalar(SCRAPES).unwrap_or(0.0);
    assert!(
        scraped(before + 2.0),
        "prometheus did not scrape: {}",
        prom.log()
    );
    assert_eq!(prom.scalar(r#"up{job="proc_image"}"#), Some(1.0));

    // the workload's truth, through Prometheus
    let target = format!("tgid:{pid}");
    let forks = prom.scalar(&format!(
        r#"sum(proc_image_lifecycle_events_total{{target="{target}",event="fork"}})"#
    ));
    assert_eq!(forks, Some(3.0), "forks of the workload");
    let threads = prom.scalar(&format!(
        r#"sum(proc_image_lifecycle_events_total{{target="{target}",event="pthread_create",pid="{pid}"}})"#
    ));
    assert_eq!(threads, Some(2.0));

    let available: Vec<String> = prom
        .query("proc_image_collector_loaded == 1")
        .iter()
        .map(|s| s["metric"]["collector"].as_str().unwrap().to_string())
        .collect();
    assert!(available.contains(&"keytime".to_string()), "{available:?}");

    let mut checked = 0;
    let mut unchecked = Vec::new();
    for (path, dash) in dashboards() {
        let mut exprs = Vec::new();
        expressions(&dash, &mut exprs);
        assert!(!exprs.is_empty(), "{}", path.display());
        for expr in exprs {
            let missing: Vec<&str> = metric_names(&expr)
                .iter()
                .filter_map(|m| collector_of(m))
                .filter(|c| !available.iter().any(|a| a == c))
                .collect();
            if !missing.is_empty() {
                unchecked.push(format!("{expr} (needs {})", missing.join(", ")));
                continue;
            }
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m")
                .replace("$instance", &addr)
                .replace("$target", &target);
            let finite_in = |result: &[Value]| {
                result.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                })
            };
            let mut result = prom.query(&q);
            // Prometheus goes on scraping: give a scrape that landed late
            // on a loaded machine the time to show
            let finite = finite_in(&result)
                || wait_until(Duration::from_secs(10), || {
                    result = prom.query(&q);
                    finite_in(&result)
                });
            if !finite {
                // what there was to see: the samples Prometheus holds of
                // these metrics, the scrapes, the records proc_image wrote
                let held: Vec<String> = metric_names(&expr)
                    .iter()
                    .map(|m| {
                        let series = m.trim_end_matches("_bucket");
                        let q = format!(r#"count_over_time({m}{{target="{target}"}}[10m])"#);
                        format!("{series}: {:?}", prom.query(&q))
                    })
                    .collect();
                let mut by_collector = std::collections::BTreeMap::new();
                for r in pi.records() {
                    *by_collector
                        .entry(r["collector"].as_str().unwrap_or("-").to_string())
                        .or_insert(0) += 1;
                }
                panic!(
                    "{}: no data for\n  {q}\n  -> {result:?}\nsamples held: {held:?}\nscrapes: {:?} of {:?}\nrecords by collector: {by_collector:?}\nproc_image stderr:\n{}",
                    path.display(),
                    prom.scalar(SCRAPES),
                    prom.scalar(r#"count_over_time(up{job="proc_image"}[10m])"#),
                    pi.stderr_text()
                );
            }
            checked += 1;
        }
    }
    eprintln!("checked {checked} dashboard expressions");
    // every collector is in the build: an expression left unchecked is a
    // dashboard asking for a metric no collector exports
    assert!(
        unchecked.is_empty(),
        "expressions whose collector was not loaded:\n  {}",
        unchecked.join("\n  ")
    );
    assert!(checked >= 15, "only {checked} expressions checked");

    // promtool accepts the exposition; OpenMetrics where asked
    let (status, headers, body) = http_get(mport, "/metrics", None);
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, headers, om) = http_get(
        mport,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert!(
        headers.contains("application/openmetrics-text"),
        "{headers}"
    );
    assert!(om.ends_with("# EOF\n"));
    assert!(http_get(mport, "/nope", None).0.contains("404"));
    pi.finish();
}

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn metrics_port_taken_is_one_line_and_leaves_no_pins() {
    need_root();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let pins = pin_dir("port_taken");
    let out = Command::new(PROC_IMAGE)
        .args(["-k", "--metrics", &format!("127.0.0.1:{port}")])
        .arg("--pin-dir")
        .arg(&pins)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("cannot serve metrics") && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    assert!(!pins.exists(), "pins left in {}", pins.display());

    // a bad address too
    let out = Command::new(PROC_IMAGE)
        .args(["-k", "--metrics", "not-an-address"])
        .arg("--pin-dir")
        .arg(&pins)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        (out.status.code(), stderr.lines().count()),
        (Some(1), 1),
        "{stderr}"
    );
    assert!(!pins.exists());
}

/// Whole system on a busy host: only --metrics-top threads have series of
/// their own, the rest is "other", and the series count stays bounded.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn whole_system_series_are_bounded() {
    need_root();
    let mport = free_port();
    let pi = ProcImage::start(
        "metrics_top",
        &[
            "-k",
            "-o",
            "none",
            "--metrics",
            &mport.to_string(),
            "--metrics-top",
            "3",
            "--interval",
            "200",
        ],
    );
    pi.control_ok(&["-a", "-k"]);
    // a churn of short-lived processes on top of whatever the host runs
    let mut w = Workload::start(&[
        "stress",
        "--forks-per-sec",
        "200",
        "--syscalls-per-sec",
        "1000",
        "--secs",
        "3",
    ]);
    w.wait();
    std::thread::sleep(Duration::from_millis(600));
    let (_, _, body) = http_get(mport, "/metrics", None);
    let pids = |metric: &str| -> Vec<String> {
        let mut v: Vec<String> = body
            .lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.split("pid=\"").nth(1))
            .filter_map(|r| r.split('"').next())
            .map(str::to_string)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let on_cpu = pids("proc_image_on_cpu_seconds_total{");
    let events = pids("proc_image_lifecycle_events_total{");
    assert!(on_cpu.contains(&"other".to_string()), "{on_cpu:?}");
    // labelled now (3) + lingering (at most 3) + other
    assert!(on_cpu.len() <= 7, "{on_cpu:?}");
    assert!(events.len() <= 7, "~600 forks, {events:?}");
    let series: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("proc_image_metric_series "))
        .and_then(|v| v.trim().parse().ok())
        .expect("proc_image_metric_series");
    assert!(series < 200.0, "{series} series");
    pi.finish();
}

fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn vmrss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 100 clients that send half a request and wait neither delay a scrape
/// nor cost proc_image a thread each; they are dropped after the header
/// read timeout.
#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn stalled_clients_do_not_block_scrapes() {
    need_root();
    let port = free_port();
    let pi = ProcImage::start(
        "stalled",
        &["-k", "-o", "none", "--metrics", &port.to_string()],
    );
    let pid = pi.child.id();
    let (status, _, _) = http_get(port, "/metrics", None);
    assert!(status.contains("200"), "{status}");
    let (threads, rss) = (threads_of(pid), vmrss_kib(pid));

    let stalled: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // a scrape is answered within a second while they wait
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .expect("a scrape behind 100 stalled clients was not answered within 1 s");
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("proc_image_collector_loaded"), "{text}");
    assert_eq!(threads_of(pid), threads, "a thread per stalled client");
    let grown = vmrss_kib(pid).saturating_sub(rss);
    assert!(
        grown < 8 * 1024,
        "proc_image grew {grown} KiB for 100 clients"
    );

    // the stalled ones are dropped after the header read timeout
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    pi.finish();
}
