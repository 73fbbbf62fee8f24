//! The Prometheus exporter (`--metrics ADDR`): a record sink that turns the
//! collectors' records into metrics, and a small HTTP server on its own
//! thread that serves them at /metrics (http.rs).
//!
//! The main thread updates a `Snapshot` under a mutex, one short lock per
//! record; a scrape clones it under that lock and encodes the clone, so
//! encoding never holds up the collectors. Encoding is prometheus-client's:
//! the Prometheus text format 0.0.4, or OpenMetrics when the scraper's
//! Accept header asks for it.
//!
//! Series are bounded: per-thread metrics are labelled only for the
//! `--metrics-top` most active threads (the rest are summed under
//! pid="other"), and series of threads that exited or fell out of the top,
//! and of earlier targets, are removed after `LINGER`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::output::Sink;
use crate::record::Record;
use crate::sys;
use crate::target::Target;

mod bounded;
mod http;
mod snapshot;
#[cfg(test)]
mod tests;
mod updates;

pub use crate::record::families::{labelled, with_label, Fam, Labels, OTHER};
pub use crate::record::histogram::Log2Hist;
pub use bounded::Bounded;
pub use http::{exposition, parse_addr, start, OPENMETRICS_TYPE};
pub use snapshot::{Snapshot, Val};

/// How long the series of a thread that exited (or left the top N), or of
/// an earlier target, stay exported: long enough for a scraper to see
/// their last value.
pub const LINGER_NS: u64 = 60_000_000_000;
/// How often the labelled set is re-ranked and old series are removed.
const REBALANCE_NS: u64 = 1_000_000_000;

/// The record -> metrics mapping, with the bounded label sets. Lives on the
/// main thread; `shared` is what scrapes read.
pub struct Exporter {
    shared: Arc<Mutex<Snapshot>>,
    threads: Bounded,
    procs: Bounded,
    /// the target label of each active collector's activation
    targets: HashMap<&'static str, String>,
    /// the target label of the record being applied
    current: String,
    /// the cgroup of the record being applied (whole-system records carry it)
    current_cgroup: String,
    loaded: Vec<&'static str>,
    /// resource totals last seen per tgid, and when: counters grow by the
    /// difference
    last_totals: HashMap<u32, (Vec<u64>, u64)>,
    next_rebalance_ns: u64,
}

fn target_label(t: &Target) -> String {
    match *t {
        Target::System => "system".into(),
        Target::Thread { pid, .. } => format!("pid:{pid}"),
        Target::Group { tgid, .. } => format!("tgid:{tgid}"),
        Target::Idle { cpu } => format!("idle:cpu{cpu}"),
        Target::Cgroup { id, .. } => format!(
            "cgroup:{}",
            sys::cgroup_path(id).unwrap_or_else(|| id.to_string())
        ),
    }
}

impl Exporter {
    pub fn new(top: usize) -> Self {
        let mut snap = Snapshot::default();
        snap.set(
            Fam::BuildInfo,
            vec![("version", env!("CARGO_PKG_VERSION").into())],
            0,
            1.0,
        );
        Exporter {
            shared: Arc::new(Mutex::new(snap)),
            threads: Bounded::new(top),
            procs: Bounded::new(top),
            targets: HashMap::new(),
            current: "none".into(),
            current_cgroup: String::new(),
            loaded: Vec::new(),
            last_totals: HashMap::new(),
            next_rebalance_ns: 0,
        }
    }

    pub fn shared(&self) -> Arc<Mutex<Snapshot>> {
        self.shared.clone()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut snap = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut snap)
    }

    fn target(&self) -> String {
        self.current.clone()
    }

    /// target, tgid, pid, comm of a thread, or the "other" aggregate.
    fn thread_labels(&mut self, pid: u32, tgid: u32, comm: &str, activity: u64) -> Labels {
        self.threads.note(pid, activity);
        if !self.threads.admit(pid) {
            return self.other_labels();
        }
        let mut labels = vec![
            ("target", self.target()),
            ("tgid", tgid.to_string()),
            ("pid", pid.to_string()),
            ("comm", comm.to_string()),
        ];
        // the whole system: a thread's cgroup rides on its series, bounded as they are
        if self.target() == "system" {
            labels.push(("cgroup", self.current_cgroup.clone()));
        }
        labels
    }

    /// The series every thread not labelled of its own sums into (records
    /// of such threads, and the *_rest records of those not listed).
    fn other_labels(&self) -> Labels {
        let mut labels = vec![
            ("target", self.target()),
            ("tgid", OTHER.into()),
            ("pid", OTHER.into()),
            ("comm", OTHER.into()),
        ];
        if self.target() == "system" {
            labels.push(("cgroup", OTHER.into()));
        }
        labels
    }

    fn proc_labels(&mut self, tgid: u32, comm: &str, activity: u64) -> Option<Labels> {
        self.procs.note(tgid, activity);
        let target = ("target", self.target());
        self.procs.admit(tgid).then(|| {
            vec![
                target,
                ("tgid", tgid.to_string()),
                ("comm", comm.to_string()),
            ]
        })
    }

    /// Collectors asked for that the kernel refused: `collector_loaded` 0.
    pub fn refused(&mut self, collectors: &[&'static str]) {
        self.with(|s| {
            for &c in collectors {
                s.set(Fam::CollectorLoaded, vec![("collector", c.into())], 0, 0.0);
            }
        });
    }

    pub fn loaded(&mut self, collectors: &[&'static str]) {
        self.loaded = collectors.to_vec();
        self.with(|s| {
            for &c in collectors {
                s.set(Fam::CollectorLoaded, vec![("collector", c.into())], 0, 1.0);
                s.set(Fam::CollectorActive, vec![("collector", c.into())], 0, 0.0);
                s.add(Fam::Records, vec![("collector", c.into())], 0, 0.0);
                s.add(Fam::RingbufDrops, vec![("collector", c.into())], 0, 0.0);
                for reason in ["map_full", "no_task_state"] {
                    s.add(
                        Fam::LostEvents,
                        vec![("collector", c.into()), ("reason", reason.into())],
                        0,
                        0.0,
                    );
                }
            }
        });
    }

    pub fn activated(&mut self, target: &Target, collectors: &[&'static str], now: u64) {
        let label = target_label(target);
        for &c in collectors {
            self.targets.insert(c, label.clone());
        }
        let targets: Vec<String> = self.targets.values().cloned().collect();
        let active: Vec<&'static str> = self.targets.keys().copied().collect();
        let loaded = self.loaded.clone();
        self.with(|s| {
            for t in s
                .family(Fam::TargetInfo)
                .iter()
                .map(|(l, _)| (*l).clone())
                .collect::<Vec<_>>()
            {
                s.set(Fam::TargetInfo, t, now, 0.0);
            }
            for t in &targets {
                s.set(Fam::TargetInfo, vec![("target", t.clone())], now, 1.0);
            }
            // latency histograms exist from the start, so that a scraper's
            // rate() sees their first increments
            for (c, fam) in [
                ("schedule", Fam::SchedLatency),
                ("syscall", Fam::SyscallLatency),
            ] {
                if collectors.contains(&c) {
                    for scope in ["target", "system"] {
                        s.hist(
                            fam,
                            vec![("target", label.clone()), ("scope", scope.into())],
                            now,
                        );
                    }
                }
            }
            if collectors.contains(&"lock") {
                for lock_type in crate::bpf_intf::LOCK_HELD_TYPES {
                    for fam in [Fam::LockWait, Fam::LockHold] {
                        let l = vec![("target", label.clone()), ("lock_type", lock_type.into())];
                        s.hist(fam, l, now);
                    }
                }
            }
            for c in loaded {
                let on = active.contains(&c);
                s.set(
                    Fam::CollectorActive,
                    vec![("collector", c.into())],
                    0,
                    f64::from(u8::from(on)),
                );
            }
        });
    }

    /// Those collectors' activations ended.
    pub fn deactivated(&mut self, collectors: &[&'static str], now: u64) {
        let ended: Vec<String> = collectors
            .iter()
            .filter_map(|c| self.targets.remove(c))
            .collect();
        let still: Vec<String> = self.targets.values().cloned().collect();
        self.with(|s| {
            for t in ended.into_iter().filter(|t| !still.contains(t)) {
                s.set(Fam::TargetInfo, vec![("target", t)], now, 0.0);
            }
            for &c in collectors {
                s.set(Fam::CollectorActive, vec![("collector", c.into())], 0, 0.0);
            }
        });
        self.maintain(now);
    }

    /// Re-rank the labelled threads and processes; drop series of those
    /// removed and of earlier targets not updated for LINGER_NS.
    pub fn maintain_with(&mut self, now: u64, alive: impl Fn(u32) -> bool + Copy) {
        let gone_threads = self.threads.rebalance(now, alive);
        let gone_procs = self.procs.rebalance(now, alive);
        // processes that stopped reporting (gone, or a new target)
        self.last_totals
            .retain(|_, (_, seen)| now.saturating_sub(*seen) < 10 * REBALANCE_NS);
        let current: Vec<String> = self.targets.values().cloned().collect();
        let gone_t: Vec<String> = gone_threads.iter().map(u32::to_string).collect();
        let gone_p: Vec<String> = gone_procs.iter().map(u32::to_string).collect();
        self.with(|s| {
            s.retain(|fam, labels, series| {
                let label = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| v);
                if let Some(pid) = label("pid") {
                    if gone_t.contains(pid) {
                        return false;
                    }
                } else if let Some(tgid) = label("tgid") {
                    if gone_p.contains(tgid) {
                        return false;
                    }
                }
                match label("target") {
                    Some(t) if !current.contains(t) => {
                        now.saturating_sub(series.updated_ns) < LINGER_NS
                            || fam == Fam::TargetInfo && series.val == Val::Num(1.0)
                    }
                    _ => true,
                }
            });
        });
    }

    fn maintain(&mut self, now: u64) {
        self.maintain_with(now, |id| id == 0 || sys::proc_stat(id).is_some());
    }
}

/// The record sink of --metrics: the exporter, whose snapshot the server
/// thread reads.
pub struct MetricsSink {
    exporter: Exporter,
}

impl Sink for MetricsSink {
    fn loaded(&mut self, collectors: &[&'static str]) {
        self.exporter.loaded(collectors);
    }
    fn refused(&mut self, collectors: &[&'static str]) {
        self.exporter.refused(collectors);
    }
    fn activated(&mut self, target: &Target, collectors: &[&'static str]) {
        self.exporter
            .activated(target, collectors, sys::monotonic_ns());
    }
    fn record(&mut self, rec: &Record) {
        self.exporter.apply(rec, sys::monotonic_ns());
    }
    fn deactivated(&mut self, collectors: &[&'static str]) {
        self.exporter.deactivated(collectors, sys::monotonic_ns());
    }
}
