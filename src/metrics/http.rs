//! The /metrics server of the exporter: binds --metrics ADDR, and on its
//! own thread answers each scrape with an exposition of the shared
//! `Snapshot`, in the Prometheus text format or OpenMetrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use prometheus_client::collector::Collector as PromCollector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::{Exporter, MetricsSink, Snapshot};

/// What prometheus-client encodes at each scrape: a clone of the snapshot,
/// taken under the lock and encoded after it is released.
#[derive(Debug)]
struct View(Arc<Mutex<Snapshot>>);

impl PromCollector for View {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        let snap = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        snap.encode(encoder)
    }
}

pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `shared`: OpenMetrics or the Prometheus text format.
pub fn exposition(shared: &Arc<Mutex<Snapshot>>, openmetrics: bool) -> Result<String> {
    let mut registry = Registry::with_prefix("proc_image");
    registry.register_collector(Box::new(View(shared.clone())));
    let mut body = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, &registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)
    }
    .map_err(|_| anyhow::anyhow!("encode metrics"))?;
    Ok(body)
}

/// `PORT`, `:PORT` (loopback) or `HOST:PORT`.
pub fn parse_addr(s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    let spec = match s.strip_prefix(':').unwrap_or(s) {
        port if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("127.0.0.1:{port}")
        }
        _ => s.to_string(),
    };
    spec.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .with_context(|| {
            format!("--metrics {s}: give PORT or HOST:PORT (e.g. 9464 or 127.0.0.1:9464)")
        })
}

/// Bind --metrics ADDR (before anything else is set up, so a taken port is
/// refused at once) and start serving; returns the record sink.
pub fn start(addr: &str, top: usize) -> Result<MetricsSink> {
    let addr = parse_addr(addr)?;
    let listener = TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (the port is taken: choose another with --metrics)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot serve metrics on {addr}: {e}{hint}")
    })?;
    let exporter = Exporter::new(top);
    let shared = exporter.shared();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(listener, shared))
        .context("start the metrics thread")?;
    Ok(MetricsSink { exporter })
}

fn serve(listener: TcpListener, shared: Arc<Mutex<Snapshot>>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // one scrape at a time; a slow client cannot hold the thread long
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = answer(&mut conn, &shared);
    }
}

/// The request line and the Accept header of one HTTP request.
pub fn parse_request(head: &str) -> Option<(String, String, String)> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Some((method, path, accept))
}

fn answer(conn: &mut TcpStream, shared: &Arc<Mutex<Snapshot>>) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 16 * 1024 {
            bail!("bad request");
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let request = parse_request(&head);
    let head_only = request.as_ref().is_some_and(|r| r.0 == "HEAD");
    let (status, ctype, body) = match request {
        Some((m, _, _)) if m != "GET" && m != "HEAD" => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
        Some((_, path, accept)) if path.split('?').next() == Some("/metrics") => {
            let om = accept.contains("application/openmetrics-text");
            let body = exposition(shared, om)?;
            let ctype = if om {
                OPENMETRICS_TYPE
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            ("200 OK", ctype, body)
        }
        Some((_, path, _)) if path == "/" => (
            "200 OK",
            "text/html",
            "<html><body><a href=\"/metrics\">proc_image metrics</a></body></html>\n".into(),
        ),
        Some(_) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        None => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{exporter, S};
    use crate::output::Record;

    #[test]
    fn exposition_in_both_formats() {
        let mut e = exporter();
        e.apply(
            &Record::new(S, "keytime", "on_cpu")
                .task(11, 10, "a \"quoted\" comm")
                .field("duration_ns", S),
            S,
        );
        let text = exposition(&e.shared, false).unwrap();
        assert!(text.contains("# TYPE proc_image_on_cpu_seconds_total counter"));
        assert!(text.contains(r#"comm="a \"quoted\" comm""#), "{text}");
        assert!(!text.contains("# EOF"));
        let om = exposition(&e.shared, true).unwrap();
        assert!(om.contains("# TYPE proc_image_on_cpu_seconds counter"));
        assert!(om.contains("# UNIT proc_image_on_cpu_seconds seconds"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn addresses_and_requests() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(parse_addr("nonsense").is_err());
        assert!(parse_addr("99999").is_err());
        let (m, p, a) = parse_request(
            "GET /metrics HTTP/1.1\r\nHost: x\r\naccept: application/openmetrics-text\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (m.as_str(), p.as_str(), a.as_str()),
            ("GET", "/metrics", "application/openmetrics-text")
        );
    }
}
