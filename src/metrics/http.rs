//! The /metrics server of the exporter: binds --metrics ADDR, and on its
//! own thread answers each scrape with an exposition of the shared
//! `Snapshot`, in the Prometheus text format or OpenMetrics.
//!
//! HTTP is hyper's (a maintained server that enforces a header read
//! timeout) on a single-threaded tokio runtime: a client that opens a
//! connection and sends half a request costs one small task until the
//! timeout, and connections beyond a bound are closed at once, so stalled
//! clients can neither delay a scrape nor grow proc_image.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
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

/// A stalled client gets this long to send its request head, then is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once rather than queued,
/// so clients that open connections and send nothing cannot delay a scrape.
const MAX_CONNECTIONS: usize = 256;
/// A connection is dropped after this long, whatever it is doing.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// Bind --metrics ADDR (before anything else is set up, so a taken port is
/// refused at once) and start serving; returns the record sink.
pub fn start(addr: &str, top: usize) -> Result<MetricsSink> {
    let addr = parse_addr(addr)?;
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (the port is taken: choose another with --metrics)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot serve metrics on {addr}: {e}{hint}")
    })?;
    listener
        .set_nonblocking(true)
        .context("set up the metrics listener")?;
    // one thread runs every connection: a stalled client costs a task, not a thread
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("start the metrics runtime")?;
    let exporter = Exporter::new(top);
    let shared = exporter.shared();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(serve(listener, shared)))
        .context("start the metrics thread")?;
    Ok(MetricsSink { exporter })
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Mutex<Snapshot>>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        eprintln!("proc_image: metrics: cannot use the listener");
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // out of file descriptors, say: let some connections end first
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

type Reply = hyper::Response<http_body_util::Full<hyper::body::Bytes>>;

fn reply(status: hyper::StatusCode, ctype: &str, body: String, head_only: bool) -> Reply {
    let len = body.len();
    let body = if head_only { String::new() } else { body };
    let mut r = hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        h.insert(hyper::header::CONTENT_TYPE, v);
    }
    h.insert(hyper::header::CONTENT_LENGTH, len.into());
    r
}

/// /metrics in the format the Accept header asks for; / points to it.
fn respond<B>(req: &hyper::Request<B>, shared: &Arc<Mutex<Snapshot>>) -> Reply {
    use hyper::{Method, StatusCode};
    let head_only = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head_only {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
            false,
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            let om = accept.contains("application/openmetrics-text");
            let ctype = if om {
                OPENMETRICS_TYPE
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            match exposition(shared, om) {
                Ok(body) => reply(StatusCode::OK, ctype, body, head_only),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e:#}\n"),
                    head_only,
                ),
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/html",
            "<html><body><a href=\"/metrics\">proc_image metrics</a></body></html>\n".into(),
            head_only,
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".into(),
            head_only,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::keytime::{Event, Summary};
    use crate::metrics::tests::{exporter, S};
    use crate::record::Record;

    #[test]
    fn exposition_in_both_formats() {
        let mut e = exporter();
        e.apply(
            &Record::new(
                S,
                Event::CpuSummary(Summary {
                    on_cpu_ns: S,
                    ..Default::default()
                }),
            )
            .task(11, 10, "a \"quoted\" comm"),
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
    fn addresses() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr(":9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(parse_addr("nonsense").is_err());
        assert!(parse_addr("99999").is_err());
    }
}
