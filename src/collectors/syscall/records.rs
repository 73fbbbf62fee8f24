//! syscall's records (a thread's interval, the threads not listed, the
//! target's total), and what each adds to the metrics and the trace.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::latency::{self, Figures, IntervalLatency};
use super::{syscall_name, TOP};
use crate::bpf_intf::{c_str, syscall_slot, syscall_thread, SYSCALL_SEQ_RING};
use crate::record::families::Fam;
use crate::record::{self, value_of, MetricsOut, Record, TraceOut};

#[allow(clippy::too_many_arguments)]
pub(super) fn thread_record(
    now: u64,
    interval_ns: u64,
    pid: u32,
    t: &syscall_thread,
    s: &syscall_slot,
    counts: &[(u32, u64)],
    seq_len: usize,
    lat: &IntervalLatency,
) -> Record {
    let thread = Thread {
        interval_ns,
        count: s.count,
        sequence: sequence(t, seq_len),
        sequence_spans: sequence_spans(t, seq_len),
        top: top_of(counts),
        avg_ns: s.sum_ns.checked_div(s.count).unwrap_or(0),
        max_ns: s.max_ns,
        min_ns: s.min_ns,
        sys_count: lat.system.count,
        sys_avg_ns: latency::avg_ns(&lat.system),
        sys_max_ns: lat.system.max_ns,
        sys_min_ns: lat.system.min_ns,
    };
    Record::new(now, Event::Syscalls(thread)).task(pid, t.tgid, c_str(&t.comm))
}

/// The last `n` syscalls of a thread, oldest first, by name.
pub fn sequence(t: &syscall_thread, n: usize) -> Vec<String> {
    let ring = SYSCALL_SEQ_RING as u64;
    let n = (n as u64).min(ring).min(t.seq_total);
    (t.seq_total - n..t.seq_total)
        .map(|i| syscall_name(t.seq[(i % ring) as usize].into()))
        .collect()
}

/// `[enter_ns, duration_ns]` of each syscall of `sequence(t, n)`; duration 0
/// for one that has not returned (or never does: exit, exit_group).
pub fn sequence_spans(t: &syscall_thread, n: usize) -> Vec<[u64; 2]> {
    let ring = SYSCALL_SEQ_RING as u64;
    let n = (n as u64).min(ring).min(t.seq_total);
    (t.seq_total - n..t.seq_total)
        .map(|i| (i % ring) as usize)
        .map(|i| [t.seq_enter_ns[i], t.seq_dur_ns[i]])
        .collect()
}

/// Counts by name, most frequent first (ties by name). A name can come
/// from two ids (a syscall and its ia32 twin): they add up.
fn named(counts: &[(u32, u64)]) -> Vec<(String, u64)> {
    let mut by_name: HashMap<String, u64> = HashMap::new();
    for &(id, n) in counts {
        *by_name.entry(syscall_name(id)).or_default() += n;
    }
    let mut named: Vec<(String, u64)> = by_name.into_iter().collect();
    named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    named
}

/// The TOP most frequent syscalls, most frequent first (ties by name).
pub fn top_of(counts: &[(u32, u64)]) -> Vec<NameCount> {
    named(counts)
        .into_iter()
        .take(TOP)
        .map(|(name, count)| NameCount { name, count })
        .collect()
}

/// Every syscall of the interval by name, most frequent first (the
/// exporter counts them all, not only the top three).
pub fn by_name_of(counts: &[(u32, u64)]) -> ByName {
    ByName(named(counts))
}

// ---------------------------------------------------------------------
// Records

/// The syscall collector's records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// One thread's interval.
    Syscalls(Thread),
    /// The threads not listed (--top), summed.
    SyscallsRest(Rest),
    /// The target's interval, its latency beside the system's.
    SyscallsTotal(Box<Total>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Thread {
    pub interval_ns: u64,
    pub count: u64,
    /// the last N syscalls, oldest first
    pub sequence: Vec<String>,
    /// [enter_ns, duration_ns] of each of `sequence` (0: not returned)
    pub sequence_spans: Vec<[u64; 2]>,
    pub top: Vec<NameCount>,
    pub avg_ns: u64,
    pub max_ns: u64,
    pub min_ns: u64,
    pub sys_count: u64,
    pub sys_avg_ns: u64,
    pub sys_max_ns: u64,
    pub sys_min_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Rest {
    pub interval_ns: u64,
    pub threads: usize,
    pub count: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Total {
    pub interval_ns: u64,
    pub threads: usize,
    #[serde(flatten)]
    pub latency: Figures,
    pub top: Vec<NameCount>,
    pub by_name: ByName,
    /// syscalls timed but in no thread's entry (a map was full)
    pub missed_threads: u64,
    /// syscalls timed but in no name's entry (a map was full)
    pub missed_names: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NameCount {
    pub name: String,
    pub count: u64,
}

/// Counts by syscall name, most frequent first; shown as a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ByName(pub Vec<(String, u64)>);

impl Serialize for ByName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl record::Event for Event {
    fn collector(&self) -> &'static str {
        "syscall"
    }

    fn to_value(&self) -> Value {
        value_of(self)
    }

    fn name(&self) -> &'static str {
        match self {
            Event::Syscalls(_) => "syscalls",
            Event::SyscallsRest(_) => "syscalls_rest",
            Event::SyscallsTotal(_) => "syscalls_total",
        }
    }

    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
        match self {
            Event::Syscalls(t) => {
                let labels = m.thread(t.count * 1000);
                m.add(Fam::ThreadSyscalls, labels, t.count as f64);
            }
            Event::SyscallsRest(r) => {
                let labels = m.other_threads();
                m.add(Fam::ThreadSyscalls, labels, r.count as f64);
            }
            Event::SyscallsTotal(t) => {
                for (name, n) in &t.by_name.0 {
                    let labels = vec![("target", m.target()), ("syscall", name.clone())];
                    m.add(Fam::Syscalls, labels, *n as f64);
                }
                t.latency.metrics(Fam::SyscallLatency, m);
            }
        }
    }

    fn trace(&self, rec: &Record, w: &mut dyn TraceOut) {
        match self {
            Event::Syscalls(t) => {
                w.syscalls(rec, &t.sequence, &t.sequence_spans);
                let secs = t.interval_ns.max(1) as f64 / 1e9;
                let rate = t.count as f64 / secs;
                w.counter(
                    rec.tgid,
                    "syscalls/s",
                    rec.ts_ns,
                    json!({rec.pid.to_string(): rate}),
                );
            }
            Event::SyscallsRest(_) => {}
            Event::SyscallsTotal(t) => t.latency.trace(rec, "syscall latency avg (us)", w),
        }
    }
}
