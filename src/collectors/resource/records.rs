//! resource's records (a thread's interval, a total's), and what each adds
//! to the metrics and the trace.

use serde::Serialize;
use serde_json::{json, Value};

use super::Figures;
use crate::record::families::{labelled, Fam};
use crate::record::{self, value_of, MetricsOut, Record, TraceOut};

/// `part` of `whole` in percent, to 0.01.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 * 10_000.0 / whole as f64).round() / 100.0
}

/// Bytes per second over `interval_ns`.
pub fn per_second(bytes: u64, interval_ns: u64) -> u64 {
    if interval_ns == 0 {
        return 0;
    }
    (bytes as u128 * 1_000_000_000 / interval_ns as u128) as u64
}

impl Figures {
    fn usage(&self, mem_total_kib: u64) -> Usage {
        let window = self.window_ns;
        Usage {
            interval_ns: window,
            cpu_pct: percent(self.delta.on_cpu_ns, window),
            rss_kib: self.rss_kib,
            mem_pct: percent(self.rss_kib, mem_total_kib),
            read_bps: per_second(self.delta.rchar, window),
            write_bps: per_second(self.delta.wchar, window),
            cpu_ns_total: self.total.on_cpu_ns,
            read_bytes_total: self.total.rchar,
            write_bytes_total: self.total.wchar,
            exited: self.exited,
            cpu_ratio: ratio(self.delta.on_cpu_ns, window),
            mem_ratio: ratio(self.rss_kib, mem_total_kib),
        }
    }

    /// A thread's record.
    pub fn record(&self, mem_total_kib: u64) -> Record {
        Record::new(self.ts_ns, Event::Resource(self.usage(mem_total_kib))).task(
            self.pid,
            self.tgid,
            self.comm.clone(),
        )
    }

    /// A total's record, over `threads` threads.
    pub fn total_record(&self, mem_total_kib: u64, threads: usize) -> Record {
        let total = Total {
            usage: self.usage(mem_total_kib),
            threads,
        };
        Record::new(self.ts_ns, Event::ResourceTotal(total)).task(
            self.pid,
            self.tgid,
            self.comm.clone(),
        )
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    part as f64 / whole as f64
}

// ---------------------------------------------------------------------
// Records

/// The resource collector's records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// One thread's interval.
    Resource(Usage),
    /// A process's (or the system's) interval.
    ResourceTotal(Total),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub interval_ns: u64,
    /// CPU time over the interval, in percent to 0.01 (100 = one CPU)
    pub cpu_pct: f64,
    pub rss_kib: u64,
    /// RSS over the host's memory, in percent to 0.01
    pub mem_pct: f64,
    pub read_bps: u64,
    pub write_bps: u64,
    pub cpu_ns_total: u64,
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
    pub exited: bool,
    /// cpu_pct unrounded, as a ratio (the metrics')
    #[serde(skip)]
    pub cpu_ratio: f64,
    #[serde(skip)]
    pub mem_ratio: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Total {
    #[serde(flatten)]
    pub usage: Usage,
    pub threads: usize,
}

impl record::Event for Event {
    fn collector(&self) -> &'static str {
        "resource"
    }

    fn to_value(&self) -> Value {
        value_of(self)
    }

    fn name(&self) -> &'static str {
        match self {
            Event::Resource(_) => "resource",
            Event::ResourceTotal(_) => "resource_total",
        }
    }

    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
        match self {
            Event::Resource(u) => {
                let labels = m.thread(u.activity());
                if labelled(&labels) {
                    m.set(Fam::ThreadCpuUsage, labels, u.cpu_ratio);
                }
            }
            Event::ResourceTotal(Total { usage: u, .. }) => {
                let growth = m.growth(&[u.cpu_ns_total, u.read_bytes_total, u.write_bytes_total]);
                let (labels, own) = match m.process(u.activity()) {
                    Some(l) => (l, true),
                    None => (m.other_processes(), false),
                };
                m.add(Fam::CpuSeconds, labels.clone(), growth[0] / 1e9);
                m.add(Fam::IoRead, labels.clone(), growth[1]);
                m.add(Fam::IoWrite, labels.clone(), growth[2]);
                if own {
                    m.set(Fam::CpuUsage, labels.clone(), u.cpu_ratio);
                    m.set(Fam::MemoryRss, labels.clone(), u.rss_kib as f64 * 1024.0);
                    m.set(Fam::MemoryUsage, labels, u.mem_ratio);
                }
            }
        }
    }

    fn trace(&self, rec: &Record, t: &mut dyn TraceOut) {
        match self {
            Event::Resource(u) => t.counter(
                rec.tgid,
                "CPU % by thread",
                rec.ts_ns,
                json!({rec.pid.to_string(): u.cpu_pct}),
            ),
            Event::ResourceTotal(Total { usage: u, .. }) => {
                t.counter(rec.tgid, "CPU %", rec.ts_ns, json!({"cpu": u.cpu_pct}));
                t.counter(rec.tgid, "RSS (KiB)", rec.ts_ns, json!({"rss": u.rss_kib}));
                t.counter(
                    rec.tgid,
                    "I/O (bytes/s)",
                    rec.ts_ns,
                    json!({"read": u.read_bps as f64, "write": u.write_bps as f64}),
                );
            }
        }
    }
}

impl Usage {
    /// CPU ns in the interval: how busy, to rank threads for labels.
    fn activity(&self) -> u64 {
        (self.cpu_ratio * self.interval_ns as f64) as u64
    }
}
