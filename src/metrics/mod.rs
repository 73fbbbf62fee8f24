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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use serde_json::Value;

use crate::bpf_intf::LAT_HIST_BUCKETS;
use crate::output::{Record, Sink};
use crate::sys;
use crate::target::Target;

mod http;
pub use http::{exposition, parse_addr, start, OPENMETRICS_TYPE};

/// How long the series of a thread that exited (or left the top N), or of
/// an earlier target, stay exported: long enough for a scraper to see
/// their last value.
pub const LINGER_NS: u64 = 60_000_000_000;
/// How often the labelled set is re-ranked and old series are removed.
const REBALANCE_NS: u64 = 1_000_000_000;
const BUCKETS: usize = LAT_HIST_BUCKETS as usize;
const OTHER: &str = "other";

/// Every metric family: its name (after `proc_image_`, before the unit
/// suffix), unit, type and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fam {
    LifecycleEvents,
    OnCpu,
    OffCpu,
    ThreadSyscalls,
    Syscalls,
    SyscallLatency,
    SchedLatency,
    CpuUsage,
    ThreadCpuUsage,
    CpuSeconds,
    MemoryRss,
    MemoryUsage,
    IoRead,
    IoWrite,
    LockWait,
    LockHold,
    LockFailures,
    Records,
    RingbufDrops,
    LostEvents,
    CollectorLoaded,
    CollectorActive,
    TargetInfo,
    Series,
    BuildInfo,
}

struct Desc {
    name: &'static str,
    unit: Option<Unit>,
    kind: MetricType,
    help: &'static str,
}

impl Fam {
    fn desc(self) -> Desc {
        use MetricType::{Counter, Gauge, Histogram};
        let d = |name, unit, kind, help| Desc {
            name,
            unit,
            kind,
            help,
        };
        match self {
            Fam::LifecycleEvents => d("lifecycle_events", None, Counter, "fork, vfork, pthread_create, execve, execve_failed, exit and child_exit events, by thread (pid = the thread that made the call or exited; for child_exit, the child's creator)"),
            Fam::OnCpu => d("on_cpu", Some(Unit::Seconds), Counter, "Time on CPU, by thread"),
            Fam::OffCpu => d("off_cpu", Some(Unit::Seconds), Counter, "Time off CPU, by thread and reason"),
            Fam::ThreadSyscalls => d("thread_syscalls", None, Counter, "System calls, by thread"),
            Fam::Syscalls => d("syscalls", None, Counter, "System calls of the target, by syscall name"),
            Fam::SyscallLatency => d("syscall_latency", Some(Unit::Seconds), Histogram, "System call latency, of the target (scope=target) and of every task (scope=system)"),
            Fam::SchedLatency => d("sched_latency", Some(Unit::Seconds), Histogram, "Run-queue latency (runnable to running), of the target (scope=target) and of every task (scope=system)"),
            Fam::CpuUsage => d("cpu_usage", Some(Unit::Other("ratio".into())), Gauge, "CPU used by a process in the last interval, in CPUs (1 = one CPU busy)"),
            Fam::ThreadCpuUsage => d("thread_cpu_usage", Some(Unit::Other("ratio".into())), Gauge, "CPU used by a thread in the last interval, in CPUs"),
            Fam::CpuSeconds => d("cpu", Some(Unit::Seconds), Counter, "CPU time of a process"),
            Fam::MemoryRss => d("memory_rss", Some(Unit::Bytes), Gauge, "Resident set size of a process"),
            Fam::MemoryUsage => d("memory_usage", Some(Unit::Other("ratio".into())), Gauge, "Resident set size of a process over the memory of the host"),
            Fam::IoRead => d("io_read", Some(Unit::Bytes), Counter, "Bytes read by a process from storage"),
            Fam::IoWrite => d("io_write", Some(Unit::Bytes), Counter, "Bytes written by a process to storage"),
            Fam::LockWait => d("lock_wait", Some(Unit::Seconds), Histogram, "Time from requesting a user-space lock to getting it, by lock type"),
            Fam::LockHold => d("lock_hold", Some(Unit::Seconds), Histogram, "Time a user-space lock was held, by lock type"),
            Fam::LockFailures => d("lock_failures", None, Counter, "Lock calls that failed (trylock busy, timeout, error), by lock type"),
            Fam::Records => d("records", None, Counter, "Records produced, by collector"),
            Fam::RingbufDrops => d("ringbuf_drops", None, Counter, "Records the kernel side could not send because the ring buffer was full, by collector"),
            Fam::LostEvents => d("lost_events", None, Counter, "Events the kernel side could not account, by collector and reason (map_full, no_task_state)"),
            Fam::CollectorLoaded => d("collector_loaded", None, Gauge, "1 for each collector this proc_image loaded, 0 for one the kernel refused"),
            Fam::CollectorActive => d("collector_active", None, Gauge, "1 for each collector currently collecting"),
            Fam::TargetInfo => d("target_info", None, Gauge, "1 for the current target, 0 for recent ones"),
            Fam::Series => d("metric_series", None, Gauge, "Series this exporter serves (bounded by --metrics-top)"),
            Fam::BuildInfo => d("build_info", None, Gauge, "proc_image's version"),
        }
    }
}

/// A log2 latency histogram, the layout the BPF side keeps: bucket i counts
/// latencies in [2^i, 2^(i+1)) ns, the last bucket is open.
#[derive(Debug, Clone, PartialEq)]
pub struct Log2Hist {
    pub buckets: [u64; BUCKETS],
    pub sum_s: f64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist {
            buckets: [0; BUCKETS],
            sum_s: 0.0,
        }
    }
}

impl Log2Hist {
    pub fn observe_ns(&mut self, ns: u64) {
        let b = (63 - ns.max(1).leading_zeros()) as usize;
        self.buckets[b.min(BUCKETS - 1)] += 1;
        self.sum_s += ns as f64 / 1e9;
    }

    /// Add a record's `hist` ([{le_ns, count}], le_ns = 2^(i+1) or null for
    /// the open bucket) and its sum.
    pub fn add_json(&mut self, hist: &Value, sum_ns: u64) {
        for b in hist.as_array().into_iter().flatten() {
            let count = b["count"].as_u64().unwrap_or(0);
            let idx = match b["le_ns"].as_u64() {
                Some(le) if le >= 2 => (63 - le.leading_zeros()) as usize - 1,
                _ => BUCKETS - 1,
            };
            self.buckets[idx.min(BUCKETS - 1)] += count;
        }
        self.sum_s += sum_ns as f64 / 1e9;
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Prometheus buckets (upper bound in seconds, count in the bucket):
    /// bucket i holds whole nanoseconds up to 2^(i+1) - 1, so that is its
    /// inclusive bound `le`, exactly; the last is +Inf.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let le = if i + 1 == BUCKETS {
                    f64::INFINITY
                } else {
                    ((1u64 << (i + 1)) - 1) as f64 / 1e9
                };
                (le, n)
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Num(f64),
    Hist(Box<Log2Hist>),
}

pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
struct Series {
    val: Val,
    updated_ns: u64,
}

/// What a scrape encodes: every series of every family.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    series: BTreeMap<Fam, BTreeMap<Labels, Series>>,
}

impl Snapshot {
    pub fn get(&self, fam: Fam, labels: &[(&'static str, &str)]) -> Option<&Val> {
        let key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.series.get(&fam)?.get(&key).map(|s| &s.val)
    }

    pub fn len(&self) -> usize {
        self.series.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Series of `fam` as (labels, value).
    pub fn family(&self, fam: Fam) -> Vec<(&Labels, &Val)> {
        self.series
            .get(&fam)
            .map(|m| m.iter().map(|(l, s)| (l, &s.val)).collect())
            .unwrap_or_default()
    }

    fn entry(
        &mut self,
        fam: Fam,
        labels: Labels,
        now: u64,
        init: impl FnOnce() -> Val,
    ) -> &mut Val {
        let s = self
            .series
            .entry(fam)
            .or_default()
            .entry(labels)
            .or_insert_with(|| Series {
                val: init(),
                updated_ns: now,
            });
        s.updated_ns = now;
        &mut s.val
    }

    fn add(&mut self, fam: Fam, labels: Labels, now: u64, v: f64) {
        if let Val::Num(n) = self.entry(fam, labels, now, || Val::Num(0.0)) {
            *n += v;
        }
    }

    fn set(&mut self, fam: Fam, labels: Labels, now: u64, v: f64) {
        *self.entry(fam, labels, now, || Val::Num(0.0)) = Val::Num(v);
    }

    fn hist(&mut self, fam: Fam, labels: Labels, now: u64) -> &mut Log2Hist {
        let v = self.entry(fam, labels, now, || Val::Hist(Box::default()));
        if !matches!(v, Val::Hist(_)) {
            *v = Val::Hist(Box::default());
        }
        match v {
            Val::Hist(h) => h,
            Val::Num(_) => unreachable!("set to a histogram above"),
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(Fam, &Labels, &Series) -> bool) {
        for (fam, m) in self.series.iter_mut() {
            m.retain(|l, s| keep(*fam, l, s));
        }
        self.series.retain(|_, m| !m.is_empty());
    }

    /// Encode every family through prometheus-client.
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let total = self.len() + 1;
        for (fam, series) in self
            .series
            .iter()
            .map(|(f, m)| (*f, Some(m)))
            .chain([(Fam::Series, None)])
        {
            let d = fam.desc();
            let mut family = encoder.encode_descriptor(d.name, d.help, d.unit.as_ref(), d.kind)?;
            let Some(series) = series else {
                family.encode_gauge(&(total as u64))?;
                continue;
            };
            for (labels, s) in series {
                let mut m = family.encode_family(labels)?;
                match (&s.val, d.kind) {
                    (Val::Num(v), MetricType::Counter) => {
                        m.encode_counter::<NoLabelSet, f64, f64>(v, None)?
                    }
                    (Val::Num(v), _) => m.encode_gauge(v)?,
                    (Val::Hist(h), _) => m.encode_histogram::<NoLabelSet>(
                        h.sum_s,
                        h.count(),
                        &h.prometheus_buckets(),
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}

/// The ids (pids, or tgids) that get labels of their own: at most `cap`
/// at a time, chosen by activity; the rest are "other". An id that leaves
/// the set (or exits) lingers, still exported but no longer updated, and is
/// removed after LINGER_NS; at most `cap` ids linger.
#[derive(Debug)]
pub struct Bounded {
    cap: usize,
    labelled: HashMap<u32, ()>,
    lingering: HashMap<u32, u64>,
    activity: HashMap<u32, u64>,
}

impl Bounded {
    pub fn new(cap: usize) -> Self {
        Bounded {
            cap,
            labelled: HashMap::new(),
            lingering: HashMap::new(),
            activity: HashMap::new(),
        }
    }

    /// Whether `id` is labelled; admits it while there is room.
    pub fn admit(&mut self, id: u32) -> bool {
        if self.labelled.contains_key(&id) {
            return true;
        }
        if self.labelled.len() < self.cap {
            self.lingering.remove(&id);
            self.labelled.insert(id, ());
            return true;
        }
        false
    }

    pub fn note(&mut self, id: u32, amount: u64) {
        *self.activity.entry(id).or_default() += amount.max(1);
    }

    pub fn labelled_len(&self) -> usize {
        self.labelled.len()
    }

    /// Re-rank by the activity seen since the last call; returns the ids
    /// whose series must go now.
    pub fn rebalance(&mut self, now: u64, alive: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut ranked: Vec<(u32, u64)> = self.activity.drain().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<u32> = ranked.iter().take(self.cap).map(|r| r.0).collect();
        // the most active first; labelled ones keep the remaining places
        let mut keep: Vec<u32> = want.clone();
        let mut rest: Vec<u32> = self
            .labelled
            .keys()
            .copied()
            .filter(|id| !want.contains(id))
            .collect();
        rest.sort_unstable();
        keep.extend(rest);
        keep.retain(|&id| alive(id));
        keep.truncate(self.cap);
        for id in self.labelled.keys().copied().collect::<Vec<_>>() {
            if !keep.contains(&id) {
                self.labelled.remove(&id);
                self.lingering.insert(id, now);
            }
        }
        for id in keep {
            self.lingering.remove(&id);
            self.labelled.insert(id, ());
        }
        let mut gone: Vec<u32> = self
            .lingering
            .iter()
            .filter(|(_, &since)| now.saturating_sub(since) >= LINGER_NS)
            .map(|(&id, _)| id)
            .collect();
        // bound the lingering set too: the oldest go first
        let mut by_age: Vec<(u32, u64)> = self
            .lingering
            .iter()
            .filter(|(id, _)| !gone.contains(id))
            .map(|(&id, &t)| (id, t))
            .collect();
        by_age.sort_by_key(|&(id, t)| (t, id));
        let excess = by_age.len().saturating_sub(self.cap);
        gone.extend(by_age[..excess].iter().map(|r| r.0));
        for id in &gone {
            self.lingering.remove(id);
        }
        gone.sort_unstable();
        gone
    }
}

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
    last_totals: HashMap<u32, ([u64; 3], u64)>,
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

fn u64_of(rec: &Record, name: &str) -> u64 {
    match rec.get(name) {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .unwrap_or(0),
        _ => 0,
    }
}

fn f64_of(rec: &Record, name: &str) -> f64 {
    rec.get(name).and_then(Value::as_f64).unwrap_or(0.0)
}

fn str_of<'a>(rec: &'a Record, name: &str) -> &'a str {
    rec.get(name).and_then(Value::as_str).unwrap_or("")
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

    fn with_label(mut labels: Labels, k: &'static str, v: &str) -> Labels {
        labels.push((k, v.to_string()));
        labels
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

    /// Turn one record into metric updates.
    pub fn apply(&mut self, rec: &Record, now: u64) {
        if now >= self.next_rebalance_ns {
            if self.next_rebalance_ns != 0 {
                self.maintain(now);
            }
            self.next_rebalance_ns = now + REBALANCE_NS;
        }
        let collector = rec.collector;
        let (pid, tgid, comm) = (rec.pid, rec.tgid, rec.comm.as_str());
        self.current = self
            .targets
            .get(collector)
            .cloned()
            .unwrap_or_else(|| "none".into());
        self.current_cgroup = str_of(rec, "cgroup").to_string();
        let target = self.target();
        let mut updates: Vec<(Fam, Labels, Update)> = Vec::new();
        let mut put = |fam, labels, u| updates.push((fam, labels, u));
        if collector != "proc_image" {
            put(
                Fam::Records,
                vec![("collector", collector.into())],
                Update::Add(1.0),
            );
        }
        match (collector, rec.event) {
            (
                "keytime",
                ev @ ("fork" | "vfork" | "pthread_create" | "execve" | "exit" | "child_exit"
                | "execve_failed"),
            ) => {
                let l = self.thread_labels(pid, tgid, comm, 1_000_000);
                put(
                    Fam::LifecycleEvents,
                    Self::with_label(l, "event", ev),
                    Update::Add(1.0),
                );
            }
            ("keytime", "on_cpu") => {
                let ns = u64_of(rec, "duration_ns");
                let l = self.thread_labels(pid, tgid, comm, ns);
                put(Fam::OnCpu, l, Update::Add(ns as f64 / 1e9));
            }
            ("keytime", "off_cpu") => {
                let ns = u64_of(rec, "duration_ns");
                let l = self.thread_labels(pid, tgid, comm, 0);
                let reason = str_of(rec, "reason");
                put(
                    Fam::OffCpu,
                    Self::with_label(l, "reason", reason),
                    Update::Add(ns as f64 / 1e9),
                );
            }
            ("keytime", "cpu_summary") => {
                let on = u64_of(rec, "on_cpu_ns");
                let l = self.thread_labels(pid, tgid, comm, on);
                put(Fam::OnCpu, l.clone(), Update::Add(on as f64 / 1e9));
                if let Some(Value::Object(reasons)) = rec.get("off_cpu_by_reason_ns") {
                    for (reason, ns) in reasons {
                        let s = ns.as_u64().unwrap_or(0) as f64 / 1e9;
                        put(
                            Fam::OffCpu,
                            Self::with_label(l.clone(), "reason", reason),
                            Update::Add(s),
                        );
                    }
                }
            }
            ("keytime", "cpu_summary_rest") => {
                put(
                    Fam::OnCpu,
                    self.other_labels(),
                    Update::Add(u64_of(rec, "on_cpu_ns") as f64 / 1e9),
                );
            }
            ("syscall", "syscalls") => {
                let n = u64_of(rec, "count");
                let l = self.thread_labels(pid, tgid, comm, n * 1000);
                put(Fam::ThreadSyscalls, l, Update::Add(n as f64));
            }
            ("syscall", "syscalls_rest") => {
                put(
                    Fam::ThreadSyscalls,
                    self.other_labels(),
                    Update::Add(u64_of(rec, "count") as f64),
                );
            }
            ("syscall", "syscalls_total") => {
                if let Some(Value::Object(by_name)) = rec.get("by_name") {
                    for (name, n) in by_name {
                        let l = vec![("target", target.clone()), ("syscall", name.clone())];
                        put(Fam::Syscalls, l, Update::Add(n.as_f64().unwrap_or(0.0)));
                    }
                }
                Self::latency(rec, Fam::SyscallLatency, &target, &mut put);
            }
            ("schedule", "schedule") => Self::latency(rec, Fam::SchedLatency, &target, &mut put),
            ("resource", "resource") => {
                let cpu = f64_of(rec, "cpu_pct") / 100.0;
                let activity = (cpu * u64_of(rec, "interval_ns") as f64) as u64;
                let l = self.thread_labels(pid, tgid, comm, activity);
                if l[2].1 != OTHER {
                    put(Fam::ThreadCpuUsage, l, Update::Set(cpu));
                }
            }
            ("resource", "resource_total") => {
                let cpu = f64_of(rec, "cpu_pct") / 100.0;
                let activity = (cpu * u64_of(rec, "interval_ns") as f64) as u64;
                let totals = [
                    u64_of(rec, "cpu_ns_total"),
                    u64_of(rec, "read_bytes_total"),
                    u64_of(rec, "write_bytes_total"),
                ];
                let last = self
                    .last_totals
                    .insert(tgid, (totals, now))
                    .map_or([0; 3], |(t, _)| t);
                // a total that went down started again (a new activation)
                let delta: Vec<f64> = totals
                    .iter()
                    .zip(last)
                    .map(|(&t, l)| t.checked_sub(l).unwrap_or(t) as f64)
                    .collect();
                let l = self.proc_labels(tgid, comm, activity).unwrap_or_else(|| {
                    vec![
                        ("target", target.clone()),
                        ("tgid", OTHER.into()),
                        ("comm", OTHER.into()),
                    ]
                });
                put(Fam::CpuSeconds, l.clone(), Update::Add(delta[0] / 1e9));
                put(Fam::IoRead, l.clone(), Update::Add(delta[1]));
                put(Fam::IoWrite, l.clone(), Update::Add(delta[2]));
                if l[1].1 != OTHER {
                    put(Fam::CpuUsage, l.clone(), Update::Set(cpu));
                    put(
                        Fam::MemoryRss,
                        l.clone(),
                        Update::Set(u64_of(rec, "rss_kib") as f64 * 1024.0),
                    );
                    put(
                        Fam::MemoryUsage,
                        l,
                        Update::Set(f64_of(rec, "mem_pct") / 100.0),
                    );
                }
            }
            ("lock", "lock") => {
                let l = vec![
                    ("target", target.clone()),
                    ("lock_type", str_of(rec, "lock_type").to_string()),
                ];
                put(
                    Fam::LockWait,
                    l.clone(),
                    Update::Observe(u64_of(rec, "wait_ns")),
                );
                put(Fam::LockHold, l, Update::Observe(u64_of(rec, "hold_ns")));
            }
            ("lock", "lock_failed") => {
                let l = vec![
                    ("target", target.clone()),
                    ("lock_type", str_of(rec, "lock_type").to_string()),
                ];
                put(Fam::LockFailures, l, Update::Add(1.0));
            }
            ("proc_image", "lost") => {
                let c = str_of(rec, "lost_collector").to_string();
                put(
                    Fam::RingbufDrops,
                    vec![("collector", c.clone())],
                    Update::Add(u64_of(rec, "ringbuf_drops") as f64),
                );
                for reason in ["map_full", "no_task_state"] {
                    let l = vec![("collector", c.clone()), ("reason", reason.into())];
                    put(Fam::LostEvents, l, Update::Add(u64_of(rec, reason) as f64));
                }
            }
            _ => {}
        }
        self.with(|s| {
            for (fam, labels, u) in updates {
                match u {
                    Update::Add(v) => s.add(fam, labels, now, v),
                    Update::Set(v) => s.set(fam, labels, now, v),
                    Update::Observe(ns) => s.hist(fam, labels, now).observe_ns(ns),
                    Update::Hist(h, sum_ns) => s.hist(fam, labels, now).add_json(&h, sum_ns),
                }
            }
        });
    }

    /// A latency record (syscalls_total, schedule): target and system histograms.
    fn latency(rec: &Record, fam: Fam, target: &str, put: &mut impl FnMut(Fam, Labels, Update)) {
        for (scope, prefix) in [("target", ""), ("system", "sys_")] {
            let Some(hist) = rec.get(&format!("{prefix}hist")) else {
                continue;
            };
            let count = u64_of(rec, &format!("{prefix}count"));
            let sum = match rec.get(&format!("{prefix}sum_ns")) {
                Some(v) => v.as_u64().unwrap_or(0),
                None => u64_of(rec, &format!("{prefix}avg_ns")) * count,
            };
            let l = vec![("target", target.to_string()), ("scope", scope.into())];
            put(fam, l, Update::Hist(hist.clone(), sum));
        }
    }
}

enum Update {
    Add(f64),
    Set(f64),
    Observe(u64),
    Hist(Value, u64),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) const S: u64 = 1_000_000_000;

    fn num(e: &Exporter, fam: Fam, labels: &[(&'static str, &str)]) -> Option<f64> {
        match e.shared.lock().unwrap().get(fam, labels) {
            Some(Val::Num(v)) => Some(*v),
            _ => None,
        }
    }

    fn group() -> Target {
        Target::Group {
            tgid: 10,
            start_ticks: 1,
        }
    }

    fn thread(pid: u32) -> [(&'static str, String); 4] {
        [
            ("target", "tgid:10".into()),
            ("tgid", "10".into()),
            ("pid", pid.to_string()),
            ("comm", "work".into()),
        ]
    }

    fn labels<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        l.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    pub(super) fn exporter() -> Exporter {
        let mut e = Exporter::new(50);
        e.loaded(&["keytime", "syscall", "schedule", "resource", "lock"]);
        e.activated(
            &group(),
            &["keytime", "syscall", "schedule", "resource", "lock"],
            S,
        );
        e
    }

    #[test]
    fn keytime_records_become_counters() {
        let mut e = exporter();
        let rec = |ev| Record::new(S, "keytime", ev).task(11, 10, "work");
        e.apply(&rec("fork").field("child_pid", 12), S);
        e.apply(&rec("fork").field("child_pid", 13), S);
        e.apply(&rec("exit"), S);
        e.apply(&rec("on_cpu").field("duration_ns", 300_000_000u64), S);
        e.apply(
            &rec("off_cpu")
                .field("duration_ns", 2 * S)
                .field("reason", "sleep"),
            S,
        );
        let t11 = thread(11);
        let mut l = labels(&t11);
        l.push(("event", "fork"));
        assert_eq!(num(&e, Fam::LifecycleEvents, &l), Some(2.0));
        assert_eq!(num(&e, Fam::OnCpu, &labels(&thread(11))), Some(0.3));
        let mut l = labels(&t11);
        l.push(("reason", "sleep"));
        assert_eq!(num(&e, Fam::OffCpu, &l), Some(2.0));
        assert_eq!(
            num(&e, Fam::Records, &[("collector", "keytime")]),
            Some(5.0)
        );
        assert_eq!(
            num(&e, Fam::TargetInfo, &[("target", "tgid:10")]),
            Some(1.0)
        );
        assert_eq!(
            num(&e, Fam::CollectorActive, &[("collector", "syscall")]),
            Some(1.0)
        );
        e.deactivated(&["lock"], 2 * S);
        assert_eq!(
            num(&e, Fam::CollectorActive, &[("collector", "lock")]),
            Some(0.0)
        );
        assert_eq!(
            num(&e, Fam::TargetInfo, &[("target", "tgid:10")]),
            Some(1.0),
            "other collectors still trace it"
        );
    }

    #[test]
    fn latency_histograms_are_filled_exactly_from_log2_buckets() {
        let mut e = exporter();
        // 3 latencies in [64,128) ns, 1 in [1024,2048), 2 in the open bucket
        let rec = Record::new(S, "schedule", "schedule")
            .field("count", 6)
            .field("sum_ns", 5_000_000_000u64)
            .field("hist", json!([{"le_ns": 128, "count": 3}, {"le_ns": 2048, "count": 1}, {"le_ns": null, "count": 2}]))
            .field("sys_count", 1)
            .field("sys_avg_ns", 7)
            .field("sys_hist", json!([{"le_ns": 8, "count": 1}]));
        e.apply(&rec, S);
        e.apply(&rec, S);
        let snap = e.shared.lock().unwrap().clone();
        let Some(Val::Hist(h)) = snap.get(
            Fam::SchedLatency,
            &[("target", "tgid:10"), ("scope", "target")],
        ) else {
            panic!("no histogram")
        };
        assert_eq!(h.count(), 12);
        assert_eq!(h.sum_s, 10.0);
        let b = h.prometheus_buckets();
        assert_eq!(b.len(), BUCKETS);
        // bucket 6 = [64, 128): every whole ns up to 127
        assert_eq!(b[6], (127e-9, 6));
        assert_eq!(b[10], (2047e-9, 2));
        assert_eq!(b[BUCKETS - 1], (f64::INFINITY, 4));
        let Some(Val::Hist(sys)) = snap.get(
            Fam::SchedLatency,
            &[("target", "tgid:10"), ("scope", "system")],
        ) else {
            panic!("no system histogram")
        };
        // no sum field: avg * count
        assert_eq!((sys.count(), sys.buckets[2], sys.sum_s), (2, 2, 14e-9));
        // observe_ns puts a value where BPF's log2 would
        let mut h = Log2Hist::default();
        for ns in [0, 1, 2, 3, 127, 128, u64::MAX] {
            h.observe_ns(ns);
        }
        assert_eq!(&h.buckets[..8], &[2, 2, 0, 0, 0, 0, 1, 1]);
        assert_eq!(h.buckets[BUCKETS - 1], 1);
    }

    #[test]
    fn syscall_counts_by_name() {
        let mut e = exporter();
        let rec = Record::new(S, "syscall", "syscalls_total")
            .field("by_name", json!({"read": 5, "getppid": 10_000}))
            .field("count", 10_005)
            .field("hist", json!([]));
        e.apply(&rec, S);
        e.apply(&rec, S);
        assert_eq!(
            num(
                &e,
                Fam::Syscalls,
                &[("target", "tgid:10"), ("syscall", "getppid")]
            ),
            Some(20_000.0)
        );
        let t = Record::new(S, "syscall", "syscalls")
            .task(11, 10, "work")
            .field("count", 7);
        e.apply(&t, S);
        assert_eq!(
            num(&e, Fam::ThreadSyscalls, &labels(&thread(11))),
            Some(7.0)
        );
        // the threads a --top listing left out still count, under "other"
        let rest = Record::new(S, "syscall", "syscalls_rest")
            .field("threads", 40)
            .field("count", 900);
        e.apply(&rest, S);
        e.apply(&rest, S);
        assert_eq!(
            num(
                &e,
                Fam::ThreadSyscalls,
                &[
                    ("target", "tgid:10"),
                    ("tgid", OTHER),
                    ("pid", OTHER),
                    ("comm", OTHER)
                ]
            ),
            Some(1800.0)
        );
    }

    #[test]
    fn resource_records_map_to_cpu_memory_and_io() {
        let mut e = exporter();
        let total = |ts, cpu_total: u64, read: u64| {
            Record::new(ts, "resource", "resource_total")
                .task(10, 10, "work")
                .field("interval_ns", S)
                .field("cpu_pct", 150.0)
                .field("rss_kib", 2048)
                .field("mem_pct", 1.5)
                .field("read_bps", 100.0)
                .field("write_bps", 0.0)
                .field("cpu_ns_total", cpu_total)
                .field("read_bytes_total", read)
                .field("write_bytes_total", 0)
        };
        e.apply(&total(S, 2 * S, 4096), S);
        e.apply(&total(2 * S, 3 * S, 8192), 2 * S);
        let l = [("target", "tgid:10"), ("tgid", "10"), ("comm", "work")];
        assert_eq!(num(&e, Fam::CpuSeconds, &l), Some(3.0));
        assert_eq!(num(&e, Fam::IoRead, &l), Some(8192.0));
        assert_eq!(num(&e, Fam::IoWrite, &l), Some(0.0));
        assert_eq!(num(&e, Fam::CpuUsage, &l), Some(1.5));
        assert_eq!(num(&e, Fam::MemoryRss, &l), Some(2048.0 * 1024.0));
        assert_eq!(num(&e, Fam::MemoryUsage, &l), Some(0.015));
        let thread_rec = Record::new(S, "resource", "resource")
            .task(11, 10, "work")
            .field("interval_ns", S)
            .field("cpu_pct", 50.0);
        e.apply(&thread_rec, S);
        assert_eq!(
            num(&e, Fam::ThreadCpuUsage, &labels(&thread(11))),
            Some(0.5)
        );
    }

    #[test]
    fn lock_records_fill_wait_and_hold_histograms() {
        let mut e = exporter();
        let rec = |ev, wait: u64, hold: u64| {
            Record::new(S, "lock", ev)
                .task(11, 10, "work")
                .field("lock_type", "mutex")
                .field("lock_addr", "0x7f00")
                .field("wait_ns", wait)
                .field("hold_ns", hold)
                .field("ret", 0)
        };
        e.apply(&rec("lock", 1000, 5_000_000), S);
        e.apply(&rec("lock", 3000, 100), S);
        e.apply(&rec("lock_failed", 0, 0), S);
        e.apply(&Record::new(S, "lock", "lock_summary"), S);
        let snap = e.shared.lock().unwrap().clone();
        let l = [("target", "tgid:10"), ("lock_type", "mutex")];
        let (Some(Val::Hist(w)), Some(Val::Hist(h))) =
            (snap.get(Fam::LockWait, &l), snap.get(Fam::LockHold, &l))
        else {
            panic!("no lock histograms")
        };
        assert_eq!((w.count(), w.buckets[9], w.buckets[11]), (2, 1, 1));
        assert_eq!((h.count(), h.sum_s), (2, 0.0050001));
        assert_eq!(num(&e, Fam::LockFailures, &l), Some(1.0));
    }

    #[test]
    fn lost_records_are_health_counters() {
        let mut e = exporter();
        let rec = Record::new(S, "proc_image", "lost")
            .field("lost_collector", "keytime")
            .field("ringbuf_drops", 12)
            .field("map_full", 3)
            .field("no_task_state", 0);
        e.apply(&rec, S);
        assert_eq!(
            num(&e, Fam::RingbufDrops, &[("collector", "keytime")]),
            Some(12.0)
        );
        assert_eq!(
            num(
                &e,
                Fam::LostEvents,
                &[("collector", "keytime"), ("reason", "map_full")]
            ),
            Some(3.0)
        );
        assert_eq!(
            num(&e, Fam::Records, &[("collector", "proc_image")]),
            None,
            "the tool's own records are not counted as collected"
        );
    }

    #[test]
    fn only_the_top_threads_are_labelled_and_series_stay_bounded() {
        let cap = 3;
        let mut e = Exporter::new(cap);
        e.activated(&Target::System, &["keytime"], 0);
        // 100 rounds of 1 s on a busy host: 20 long-lived threads (thread i
        // runs i ms a round) and 20 new short-lived ones every round
        let mut peak = 0;
        for round in 1..=100u64 {
            let now = round * S;
            for i in 1..=20u32 {
                for (pid, on) in [
                    (i, u64::from(i) * 1_000_000),
                    (round as u32 * 100 + i, 1000),
                ] {
                    let rec = Record::new(now, "keytime", "cpu_summary")
                        .task(pid, pid, format!("t{pid}"))
                        .field("on_cpu_ns", on)
                        .field("off_cpu_by_reason_ns", json!({"sleep": 5}));
                    e.apply(&rec, now);
                }
            }
            // short-lived threads of earlier rounds have exited
            let limit = round as u32 * 100;
            e.maintain_with(now, |id| id <= 20 || id > limit);
            peak = peak.max(e.shared.lock().unwrap().len());
            assert!(e.threads.labelled_len() <= cap);
        }
        // per thread: on_cpu and off_cpu{sleep}; labelled + lingering <= 2 cap,
        // plus "other"; plus build_info, target_info, records{keytime}
        assert!(
            peak <= (2 * cap + 1) * 2 + 3,
            "{peak} series for a cap of {cap}"
        );
        let snap = e.shared.lock().unwrap().clone();
        let comms: Vec<String> = snap
            .family(Fam::OnCpu)
            .iter()
            .filter_map(|(l, _)| l.iter().find(|(k, _)| *k == "comm").map(|(_, v)| v.clone()))
            .collect();
        assert_eq!(comms.len(), cap + 1, "{comms:?}");
        for c in ["t20", "t19", "t18", "other"] {
            assert!(comms.iter().any(|x| x == c), "{c} not in {comms:?}");
        }
        // nothing is lost by aggregation: the series sum to all CPU time
        let total: f64 = snap
            .family(Fam::OnCpu)
            .iter()
            .map(|(_, v)| match v {
                Val::Num(n) => *n,
                _ => 0.0,
            })
            .sum();
        // (less the series removed: t1..t3, labelled in the first round only)
        let want = 100.0 * (210.0 * 1e-3 + 20.0 * 1e-6);
        assert!(
            total <= want + 1e-9 && total > want * 0.99,
            "{total} of {want}"
        );
    }

    #[test]
    fn exited_threads_and_old_targets_are_removed_after_linger() {
        let mut e = Exporter::new(10);
        e.activated(&group(), &["keytime", "schedule"], S);
        let rec = Record::new(S, "keytime", "exit").task(11, 10, "work");
        e.apply(&rec, S);
        let t11 = thread(11);
        let mut l = labels(&t11);
        l.push(("event", "exit"));
        e.maintain_with(2 * S, |id| id != 11);
        assert!(num(&e, Fam::LifecycleEvents, &l).is_some(), "kept a while");
        e.maintain_with(2 * S + LINGER_NS, |id| id != 11);
        assert!(num(&e, Fam::LifecycleEvents, &l).is_none(), "removed");

        // a new target: the old one's series go after LINGER_NS
        let sched = Record::new(3 * S, "schedule", "schedule").field("hist", json!([]));
        e.apply(&sched, 3 * S);
        e.deactivated(&["keytime", "schedule"], 4 * S);
        e.activated(&Target::System, &["schedule"], 4 * S);
        let old = [("target", "tgid:10"), ("scope", "target")];
        e.maintain_with(5 * S, |_| true);
        assert!(e
            .shared
            .lock()
            .unwrap()
            .get(Fam::SchedLatency, &old)
            .is_some());
        e.maintain_with(4 * S + LINGER_NS, |_| true);
        assert!(e
            .shared
            .lock()
            .unwrap()
            .get(Fam::SchedLatency, &old)
            .is_none());
        assert_eq!(num(&e, Fam::TargetInfo, &[("target", "tgid:10")]), None);
        assert_eq!(num(&e, Fam::TargetInfo, &[("target", "system")]), Some(1.0));
    }
}
