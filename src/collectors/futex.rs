//! futex: every contended futex wait of the target (pthread, musl, Rust std,
//! any runtime: the fast path of a lock never enters the kernel, so a futex
//! wait syscall is a contended wait), the thread whose futex wake woke it,
//! and figures per futex address and interval. BPF side: bpf/futex.bpf.c,
//! on the per-syscall tracepoints of the futex syscalls and sched_waking.
//!
//! This module owns the records (`FutexWait`, `FutexSummary`), how they
//! become metrics (`MetricState`) and trace events (`trace_events`).

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle, TracepointCategory};
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    hash_entries, load_skel, read_stats, wait_for_programs_in_flight, Activation, Collector,
    CollectorKind, Decoder, LoadOptions,
};
use crate::bpf_intf::{
    self, c_str, collector_stats, decode, futex_addr_key, futex_config, futex_figures, futex_part,
    futex_part_key, futex_wait_event, FUTEX_K_CMP_REQUEUE, FUTEX_K_CMP_REQUEUE_PI,
    FUTEX_K_FUTEX_REQUEUE, FUTEX_K_FUTEX_WAIT, FUTEX_K_FUTEX_WAKE, FUTEX_K_LOCK_PI,
    FUTEX_K_LOCK_PI2, FUTEX_K_REQUEUE, FUTEX_K_UNLOCK_PI, FUTEX_K_WAIT, FUTEX_K_WAITV,
    FUTEX_K_WAIT_BITSET, FUTEX_K_WAIT_REQUEUE_PI, FUTEX_K_WAKE, FUTEX_K_WAKE_BITSET,
    FUTEX_K_WAKE_OP, FUTEX_RECORD_WAIT, FUTEX_WAITER, FUTEX_WAKER,
};
use crate::output::{Output, Record};
use crate::sys;
use crate::target::Target;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/futex.skel.rs"));
}
use skel::{FutexSkel, FutexSkelBuilder};

pub const NAME: &str = "futex";
/// Waiters and wakers listed per address.
const TOP: usize = 3;
/// Addresses listed per interval in text output (JSON: all, or --top).
const DEFAULT_TEXT_TOP: usize = 20;

// ---------------------------------------------------------------------
// Records

/// The thread whose futex wake woke a wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waker {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
}

/// `futex_wait`: one contended wait of a target thread (the record's task).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FutexWait {
    /// the futex word's user address, hex
    pub uaddr: String,
    pub op: &'static str,
    pub wait_ns: u64,
    pub ret: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub woken_by: Option<Waker>,
    /// from the waker's wake to this thread's return from the syscall
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_latency_ns: Option<u64>,
}

/// A thread among an address's waiters or wakers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Party {
    pub pid: u32,
    pub comm: String,
    pub count: u64,
}

/// `futex_summary`: one futex address of one process over an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FutexSummary {
    pub uaddr: String,
    pub interval_ns: u64,
    pub waits: u64,
    pub wait_total_ns: u64,
    pub wait_max_ns: u64,
    pub wakes: u64,
    pub wake_calls: u64,
    pub waiters_max: u64,
    pub top_waiters: Vec<Party>,
    pub top_wakers: Vec<Party>,
}

pub fn op_name(op: u8) -> &'static str {
    match u32::from(op) {
        FUTEX_K_WAIT => "wait",
        FUTEX_K_WAIT_BITSET => "wait_bitset",
        FUTEX_K_LOCK_PI => "lock_pi",
        FUTEX_K_LOCK_PI2 => "lock_pi2",
        FUTEX_K_WAIT_REQUEUE_PI => "wait_requeue_pi",
        FUTEX_K_WAITV => "waitv",
        FUTEX_K_FUTEX_WAIT => "futex_wait",
        FUTEX_K_WAKE => "wake",
        FUTEX_K_WAKE_BITSET => "wake_bitset",
        FUTEX_K_WAKE_OP => "wake_op",
        FUTEX_K_REQUEUE => "requeue",
        FUTEX_K_CMP_REQUEUE => "cmp_requeue",
        FUTEX_K_CMP_REQUEUE_PI => "cmp_requeue_pi",
        FUTEX_K_UNLOCK_PI => "unlock_pi",
        FUTEX_K_FUTEX_WAKE => "futex_wake",
        FUTEX_K_FUTEX_REQUEUE => "futex_requeue",
        _ => "other",
    }
}

/// The name of the errno a futex wait returned (negated).
pub fn errno_name(e: i64) -> String {
    match i32::try_from(e).unwrap_or(0) {
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::EINTR => "EINTR".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EDEADLK => "EDEADLK".into(),
        libc::EPERM => "EPERM".into(),
        libc::ESRCH => "ESRCH".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EOWNERDEAD => "EOWNERDEAD".into(),
        // the kernel's own, seen at the syscall's exit when a signal
        // interrupts the wait; the kernel then restarts it or returns EINTR
        512 => "ERESTARTSYS".into(),
        513 => "ERESTARTNOINTR".into(),
        514 => "ERESTARTNOHAND".into(),
        516 => "ERESTART_RESTARTBLOCK".into(),
        other => format!("errno {other}"),
    }
}

pub fn wait_of(e: &futex_wait_event) -> FutexWait {
    let woken_by = (e.waker_pid != 0).then(|| Waker {
        pid: e.waker_pid,
        tgid: e.waker_tgid,
        comm: c_str(&e.waker_comm),
    });
    FutexWait {
        uaddr: format!("{:#x}", e.uaddr),
        op: op_name(e.op),
        wait_ns: e.wait_ns,
        ret: e.ret,
        error: (e.ret < 0).then(|| errno_name(-e.ret)),
        wake_latency_ns: (e.waker_pid != 0 && e.wake_ns != 0)
            .then(|| e.hdr.ts_ns.saturating_sub(e.wake_ns)),
        woken_by,
    }
}

/// The ring-buffer record as an output record.
pub fn wait_record(e: &futex_wait_event, system: bool) -> Result<Record> {
    if u32::from(e.hdr.kind) != FUTEX_RECORD_WAIT {
        bail!("unknown futex record kind {}", e.hdr.kind);
    }
    let rec = Record::new(e.hdr.ts_ns, NAME, "futex_wait")
        .task(e.hdr.pid, e.hdr.tgid, c_str(&e.hdr.comm))
        .fields_of(&wait_of(e));
    Ok(if system {
        rec.cgroup(e.hdr.cgroup_id)
    } else {
        rec
    })
}

pub fn summary_record(now: u64, tgid: u32, s: &FutexSummary) -> Record {
    Record::new(now, NAME, "futex_summary")
        .task(0, tgid, "")
        .fields_of(s)
}

/// The `TOP` threads of a list by count (ties by pid).
fn top(mut parties: Vec<Party>) -> Vec<Party> {
    parties.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
    parties.truncate(TOP);
    parties
}

// ---------------------------------------------------------------------
// The collector

pub struct Futex {
    skel: FutexSkel<'static>,
    links: Vec<Link>,
    /// what the current (or last) activation traces; None once flushed
    target: Option<Target>,
    /// the decoder adds the cgroup to whole-system records
    system: Rc<Cell<bool>>,
    top: Option<usize>,
    interval_start_ns: u64,
}

/// The hooks that exist only on newer kernels: futex_waitv (5.16), futex_wait,
/// futex_wake and futex_requeue (6.7). Without the syscall nothing can wait
/// through it, so a missing one is skipped.
const OPTIONAL: &[&str] = &["futex_waitv", "futex_wait", "futex_wake", "futex_requeue"];

/// Does this kernel have tracepoint syscalls/NAME? None: tracefs is not
/// where we can look (then attaching says).
fn has_syscall_tracepoint(name: &str) -> Option<bool> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|root| std::path::Path::new(root).join("events/syscalls"))
        .find(|dir| dir.is_dir())
        .map(|dir| dir.join(name).is_dir())
}

impl Futex {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let skel = load_skel(FutexSkelBuilder::default(), NAME, opts.ringbuf_bytes)?;
        Ok(Futex {
            skel,
            links: Vec::new(),
            target: None,
            system: Rc::new(Cell::new(false)),
            top: opts.top.or((!opts.json).then_some(DEFAULT_TEXT_TOP)),
            interval_start_ns: 0,
        })
    }

    fn config(&mut self) -> Result<&mut skel::types::futex_config> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cfg)
            .ok_or_else(|| anyhow!("futex: .bss is not mapped"))
    }

    fn attach(&mut self) -> Result<Vec<Link>> {
        let p = &self.skel.progs;
        let mut links = Vec::new();
        let hooks = [
            ("futex", &p.handle__enter_futex, &p.handle__exit_futex),
            (
                "futex_waitv",
                &p.handle__enter_futex_waitv,
                &p.handle__exit_futex_waitv,
            ),
            (
                "futex_wait",
                &p.handle__enter_futex_wait,
                &p.handle__exit_futex_wait,
            ),
            (
                "futex_wake",
                &p.handle__enter_futex_wake,
                &p.handle__exit_futex_wake,
            ),
            (
                "futex_requeue",
                &p.handle__enter_futex_requeue,
                &p.handle__exit_futex_requeue,
            ),
        ];
        // the waker's side first, so that no wait is seen without it
        links.push(
            p.handle__sched_waking
                .attach()
                .context("attach futex/sched_waking")?,
        );
        for (syscall, enter, exit) in hooks {
            let enter_tp = format!("sys_enter_{syscall}");
            if OPTIONAL.contains(&syscall) && has_syscall_tracepoint(&enter_tp) == Some(false) {
                continue;
            }
            // the exit first: a syscall whose entry was seen has its exit seen
            for (tp, prog) in [(format!("sys_exit_{syscall}"), exit), (enter_tp, enter)] {
                links.push(
                    prog.attach_tracepoint(TracepointCategory::Syscalls, &tp)
                        .with_context(|| format!("attach futex/syscalls/{tp}"))?,
                );
            }
        }
        Ok(links)
    }

    fn clear_maps(&self) {
        for map in [
            &self.skel.maps.futexes as &dyn MapCore,
            &self.skel.maps.parts,
            &self.skel.maps.waiting,
        ] {
            let keys: Vec<Vec<u8>> = map.keys().collect();
            for k in keys {
                let _ = map.delete(&k);
            }
        }
    }

    /// Close the interval: read and delete last interval's entries.
    fn report(&mut self, out: &mut Output) -> Result<()> {
        let old = self.config()?.interval;
        // SAFETY: a u32 in the mapped .bss, which BPF only reads
        unsafe { std::ptr::write_volatile(&mut self.config()?.interval, old.wrapping_add(1)) };
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        self.interval_start_ns = now;
        // from here no program adds to interval `old`'s slot: read it whole
        wait_for_programs_in_flight();
        let slot = old & 1;

        let mut sums: Vec<((u32, u64), futex_figures)> = Vec::new();
        for (k, v) in hash_entries(&self.skel.maps.futexes)? {
            let (Ok(key), Ok(f)) = (decode::<futex_addr_key>(&k), decode::<futex_figures>(&v))
            else {
                continue;
            };
            if key.slot == slot {
                sums.push(((key.tgid, key.uaddr), *f));
                let _ = self.skel.maps.futexes.delete(&k);
            }
        }
        type Parties = (Vec<Party>, Vec<Party>);
        let mut by_addr: HashMap<(u32, u64), Parties> = HashMap::new();
        for (k, v) in hash_entries(&self.skel.maps.parts)? {
            let (Ok(key), Ok(p)) = (decode::<futex_part_key>(&k), decode::<futex_part>(&v)) else {
                continue;
            };
            if u32::from(key.slot) != slot {
                continue;
            }
            let party = Party {
                pid: key.pid,
                comm: c_str(&p.comm),
                count: p.count,
            };
            let entry = by_addr.entry((key.tgid, key.uaddr)).or_default();
            match u32::from(key.role) {
                FUTEX_WAITER => entry.0.push(party),
                FUTEX_WAKER => entry.1.push(party),
                _ => {}
            }
            let _ = self.skel.maps.parts.delete(&k);
        }

        // the most contended first: by time waited, then waits
        sums.sort_by(|a, b| {
            (b.1.wait_total_ns, b.1.waits, b.1.wake_calls)
                .cmp(&(a.1.wait_total_ns, a.1.waits, a.1.wake_calls))
                .then(a.0.cmp(&b.0))
        });
        let shown = self.top.unwrap_or(usize::MAX).min(sums.len());
        for ((tgid, uaddr), f) in &sums[..shown] {
            let (waiters, wakers) = by_addr.remove(&(*tgid, *uaddr)).unwrap_or_default();
            let s = FutexSummary {
                uaddr: format!("{uaddr:#x}"),
                interval_ns,
                waits: f.waits,
                wait_total_ns: f.wait_total_ns,
                wait_max_ns: f.wait_max_ns,
                wakes: f.wakes,
                wake_calls: f.wake_calls,
                waiters_max: f.waiters_max,
                top_waiters: top(waiters),
                top_wakers: top(wakers),
            };
            out.emit(&summary_record(now, *tgid, &s));
        }
        Ok(())
    }
}

impl Collector for Futex {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Futex
    }

    fn check_target(&self, target: &Target) -> Result<()> {
        if let Target::Idle { .. } = target {
            bail!("futex does not trace {target}: an idle task makes no futex calls");
        }
        Ok(())
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.check_target(&act.target)?;
        self.deactivate();
        self.clear_maps();
        let cfg = futex_config {
            target: act.filter(),
            interval: self.config()?.interval,
            _pad: 0,
            min_ns: u64::from(act.futex_min_us) * 1000,
        };
        bpf_intf::copy_into(self.config()?, &cfg);
        self.interval_start_ns = sys::monotonic_ns();
        self.system.set(act.target == Target::System);
        self.links = self.attach()?;
        self.target = Some(act.target);
        Ok(())
    }

    fn deactivate(&mut self) {
        self.links.clear();
    }

    fn describe(&self, act: &Activation) -> String {
        format!(
            "futex on {}: contended waits of at least {} us and who woke them, per address each interval",
            act.target, act.futex_min_us
        )
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("futex ring buffer")
    }

    fn decoder(&self) -> Decoder {
        let system = self.system.clone();
        Box::new(move |data| {
            let e = decode::<futex_wait_event>(data)?;
            wait_record(e, system.get()).map(Some)
        })
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        match self.target {
            Some(_) => self.report(out),
            None => Ok(()),
        }
    }

    fn flush(&mut self, out: &mut Output) -> Result<()> {
        self.on_interval(out)?;
        self.target = None;
        Ok(())
    }

    fn stats(&self) -> Result<collector_stats> {
        read_stats(&self.skel.maps.stats)
    }
}

// ---------------------------------------------------------------------
// Metrics: a wait histogram per target, and the most contended addresses
// (bounded like the per-thread series: the rest sum under uaddr="other").

use crate::metrics::{Fam, Labels, Update, LINGER_NS};

/// The address series the exporter keeps: at most `cap` labelled, chosen by
/// wait time each rebalance; one that leaves lingers LINGER_NS, then goes.
#[derive(Debug)]
pub struct MetricState {
    cap: usize,
    /// (tgid, uaddr) -> when it left the labelled set (None: labelled)
    labelled: HashMap<(u32, String), Option<u64>>,
    activity: HashMap<(u32, String), u64>,
    next_rebalance_ns: u64,
}

const REBALANCE_NS: u64 = 1_000_000_000;

impl MetricState {
    pub fn new(cap: usize) -> Self {
        MetricState {
            cap,
            labelled: HashMap::new(),
            activity: HashMap::new(),
            next_rebalance_ns: 0,
        }
    }

    fn admit(&mut self, key: &(u32, String)) -> bool {
        if self.labelled.get(key) == Some(&None) {
            return true;
        }
        // new, or lingering: in while there is room
        if self.labelled_now() < self.cap {
            self.labelled.insert(key.clone(), None);
            return true;
        }
        false
    }

    fn labelled_now(&self) -> usize {
        self.labelled.values().filter(|s| s.is_none()).count()
    }

    /// Re-rank; the label sets whose series must go now.
    fn rebalance(&mut self, now: u64, target: &str) -> Vec<Labels> {
        let mut ranked: Vec<((u32, String), u64)> = self.activity.drain().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<(u32, String)> = ranked.into_iter().take(self.cap).map(|r| r.0).collect();
        for (key, state) in self.labelled.iter_mut() {
            if state.is_none() && !want.contains(key) {
                *state = Some(now);
            }
        }
        for key in want {
            if self.labelled_now() < self.cap || self.labelled.get(&key) == Some(&None) {
                self.labelled.insert(key, None);
            }
        }
        // lingering ones go after LINGER_NS, and at most `cap` linger: the oldest go first
        let mut lingering: Vec<(u64, (u32, String))> = self
            .labelled
            .iter()
            .filter_map(|(k, s)| s.map(|since| (since, k.clone())))
            .collect();
        lingering.sort();
        let excess = lingering.len().saturating_sub(self.cap);
        let gone: Vec<(u32, String)> = lingering
            .into_iter()
            .enumerate()
            .filter(|(i, (since, _))| *i < excess || now.saturating_sub(*since) >= LINGER_NS)
            .map(|(_, (_, k))| k)
            .collect();
        gone.iter()
            .map(|k| {
                self.labelled.remove(k);
                addr_labels(target, &k.0.to_string(), &k.1)
            })
            .collect()
    }

    /// The metric updates of one futex record.
    pub fn updates(&mut self, rec: &Record, target: &str, now: u64) -> Vec<(Fam, Labels, Update)> {
        let mut out = Vec::new();
        if now >= self.next_rebalance_ns {
            if self.next_rebalance_ns != 0 {
                for labels in self.rebalance(now, target) {
                    for fam in [Fam::FutexWaits, Fam::FutexWaitTime] {
                        out.push((fam, labels.clone(), Update::Remove));
                    }
                }
            }
            self.next_rebalance_ns = now + REBALANCE_NS;
        }
        let u64_of = |name: &str| rec.get(name).and_then(Value::as_u64).unwrap_or(0);
        match rec.event {
            "futex_wait" => {
                let l = vec![("target", target.to_string())];
                out.push((Fam::FutexWait, l, Update::Observe(u64_of("wait_ns"))));
            }
            "futex_summary" => {
                let uaddr = rec.get("uaddr").and_then(Value::as_str).unwrap_or("");
                let key = (rec.tgid, uaddr.to_string());
                let wait_ns = u64_of("wait_total_ns");
                *self.activity.entry(key.clone()).or_default() += wait_ns.max(1);
                let l = if self.admit(&key) {
                    addr_labels(target, &rec.tgid.to_string(), uaddr)
                } else {
                    addr_labels(target, "other", "other")
                };
                out.push((
                    Fam::FutexWaits,
                    l.clone(),
                    Update::Add(u64_of("waits") as f64),
                ));
                out.push((Fam::FutexWaitTime, l, Update::Add(wait_ns as f64 / 1e9)));
            }
            _ => {}
        }
        out
    }
}

fn addr_labels(target: &str, tgid: &str, uaddr: &str) -> Labels {
    vec![
        ("target", target.to_string()),
        ("tgid", tgid.to_string()),
        ("uaddr", uaddr.to_string()),
    ]
}

// ---------------------------------------------------------------------
// Trace: a `futex wait` slice on the waiter's track; when the waker is
// known, a `futex wake` slice on the waker's and a flow arrow between them.

/// One trace event to write, or a slice the writer clips on its track.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceItem {
    /// [start, end] ns on thread (tgid, pid)
    Slice {
        tgid: u32,
        pid: u32,
        name: &'static str,
        start_ns: u64,
        end_ns: u64,
        args: Value,
    },
    /// a flow event ("s" or "f"), bound to the enclosing slice at ts_ns
    Flow {
        ph: &'static str,
        id: u64,
        tgid: u32,
        pid: u32,
        ts_ns: u64,
    },
    /// a thread's name, for a waker not otherwise seen
    ThreadName { tgid: u32, pid: u32, comm: String },
}

/// The trace events of a futex_wait record. `flow_id` is unique per call.
pub fn trace_events(rec: &Record, flow_id: u64) -> Vec<TraceItem> {
    if rec.event != "futex_wait" {
        return Vec::new();
    }
    let wait_ns = rec.get("wait_ns").and_then(Value::as_u64).unwrap_or(0);
    let end = rec.ts_ns;
    let start = end.saturating_sub(wait_ns);
    let args: serde_json::Map<String, Value> = ["uaddr", "op", "ret", "error", "woken_by"]
        .iter()
        .filter_map(|&n| rec.get(n).map(|v| (n.to_string(), v.clone())))
        .collect();
    let mut items = vec![TraceItem::Slice {
        tgid: rec.tgid,
        pid: rec.pid,
        name: "futex wait",
        start_ns: start,
        end_ns: end,
        args: Value::Object(args),
    }];
    let (Some(w), Some(lat)) = (
        rec.get("woken_by"),
        rec.get("wake_latency_ns").and_then(Value::as_u64),
    ) else {
        return items;
    };
    let (Some(pid), Some(tgid)) = (
        w["pid"].as_u64().map(|v| v as u32),
        w["tgid"].as_u64().map(|v| v as u32),
    ) else {
        return items;
    };
    let wake = end.saturating_sub(lat).max(start);
    let comm = w["comm"].as_str().unwrap_or("").to_string();
    items.push(TraceItem::ThreadName { tgid, pid, comm });
    // 1 us around the wake, so that the flow's start has a slice to bind to
    items.push(TraceItem::Slice {
        tgid,
        pid,
        name: "futex wake",
        start_ns: wake.saturating_sub(500),
        end_ns: wake + 500,
        args: json!({"uaddr": rec.get("uaddr"), "woke": rec.pid}),
    });
    items.push(TraceItem::Flow {
        ph: "s",
        id: flow_id,
        tgid,
        pid,
        ts_ns: wake,
    });
    items.push(TraceItem::Flow {
        ph: "f",
        id: flow_id,
        tgid: rec.tgid,
        pid: rec.pid,
        ts_ns: wake.min(end.saturating_sub(1)),
    });
    items
}

/// Write a futex record's trace events.
pub fn trace(w: &mut crate::trace::TraceWriter, rec: &Record) {
    if rec.event != "futex_wait" {
        return;
    }
    let id = w.next_id();
    for item in trace_events(rec, id) {
        match item {
            TraceItem::Slice {
                tgid,
                pid,
                name,
                start_ns,
                end_ns,
                args,
            } => {
                w.slice_between((tgid, pid), name, (start_ns, end_ns), &args);
            }
            TraceItem::Flow {
                ph,
                id,
                tgid,
                pid,
                ts_ns,
            } => w.flow(ph, id, (tgid, pid), "futex wake", ts_ns),
            TraceItem::ThreadName { tgid, pid, comm } => w.name_thread(tgid, pid, &comm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ret: i64, waker: u32) -> futex_wait_event {
        let mut e = futex_wait_event::default();
        e.hdr.kind = FUTEX_RECORD_WAIT as u8;
        e.hdr.ts_ns = 100_000_000;
        e.hdr.pid = 11;
        e.hdr.tgid = 10;
        e.hdr.comm[..4].copy_from_slice(b"wait");
        e.uaddr = 0x7f00_1000;
        e.wait_ns = 50_000_000;
        e.ret = ret;
        e.op = FUTEX_K_WAIT_BITSET as u8;
        if waker != 0 {
            e.waker_pid = waker;
            e.waker_tgid = 10;
            e.waker_comm[..4].copy_from_slice(b"hold");
            e.wake_ns = 99_990_000;
        }
        e
    }

    #[test]
    fn a_woken_wait_names_its_waker() {
        let rec = wait_record(&event(0, 12), false).unwrap();
        let v = rec.to_json();
        assert_eq!(v["event"], "futex_wait");
        assert_eq!(v["uaddr"], "0x7f001000");
        assert_eq!(v["op"], "wait_bitset");
        assert_eq!(v["wait_ns"], 50_000_000);
        assert_eq!(v["ret"], 0);
        assert!(v.get("error").is_none());
        assert_eq!(
            v["woken_by"],
            json!({"pid": 12, "tgid": 10, "comm": "hold"})
        );
        assert_eq!(v["wake_latency_ns"], 10_000);
        let keys: Vec<&str> = rec.fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "uaddr",
                "op",
                "wait_ns",
                "ret",
                "woken_by",
                "wake_latency_ns"
            ]
        );
    }

    #[test]
    fn a_failed_wait_names_its_error() {
        for (ret, name) in [
            (-libc::ETIMEDOUT, "ETIMEDOUT"),
            (-libc::EAGAIN, "EAGAIN"),
            (-libc::EINTR, "EINTR"),
        ] {
            let v = wait_record(&event(ret.into(), 0), false).unwrap().to_json();
            assert_eq!(v["error"], name);
            assert!(v.get("woken_by").is_none() && v.get("wake_latency_ns").is_none());
        }
        let mut bad = event(0, 0);
        bad.hdr.kind = 9;
        assert!(wait_record(&bad, false).is_err());
    }

    #[test]
    fn top_parties_by_count() {
        let p = |pid, count| Party {
            pid,
            comm: format!("t{pid}"),
            count,
        };
        let t = top(vec![p(1, 5), p(2, 9), p(3, 5), p(4, 1)]);
        let pids: Vec<u32> = t.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [2, 1, 3]);
    }

    #[test]
    fn metrics_bound_the_addresses() {
        let mut m = MetricState::new(2);
        let summary = |tgid, addr: &str, wait: u64| {
            Record::new(0, NAME, "futex_summary")
                .task(0, tgid, "")
                .field("uaddr", addr)
                .field("waits", 1)
                .field("wait_total_ns", wait)
        };
        let mut labels = Vec::new();
        for (i, addr) in ["0x1", "0x2", "0x3"].iter().enumerate() {
            let u = m.updates(&summary(10, addr, 100 * (i as u64 + 1)), "tgid:10", 1);
            labels.push(u[0].1.clone());
        }
        assert_eq!(labels[0][2].1, "0x1");
        assert_eq!(labels[1][2].1, "0x2");
        assert_eq!(labels[2][2].1, "other", "past the cap");
        // 0x3 becomes the busiest: it takes 0x1's place, which lingers, then goes
        m.updates(&summary(10, "0x3", 10_000), "tgid:10", 2 * REBALANCE_NS);
        let u = m.updates(&summary(10, "0x3", 10_000), "tgid:10", 3 * REBALANCE_NS);
        assert!(u.iter().all(|(_, _, u)| !matches!(u, Update::Remove)));
        let u = m.updates(
            &summary(10, "0x3", 1),
            "tgid:10",
            4 * REBALANCE_NS + LINGER_NS,
        );
        let removed: Vec<&Labels> = u
            .iter()
            .filter(|(_, _, u)| matches!(u, Update::Remove))
            .map(|(_, l, _)| l)
            .collect();
        assert!(!removed.is_empty());
        assert!(m.labelled.len() <= 2 + 2);
        // however many addresses come and go, at most cap labelled + cap lingering
        for round in 5..100u64 {
            for i in 0..10u64 {
                let addr = format!("{:#x}", round * 100 + i);
                m.updates(&summary(10, &addr, i + 1), "tgid:10", round * REBALANCE_NS);
            }
            assert!(m.labelled.len() <= 4, "{}", m.labelled.len());
        }
    }

    #[test]
    fn the_exporter_fills_the_wait_histogram_and_address_counters() {
        use crate::metrics::{Exporter, Val};
        let mut e = Exporter::new(50);
        e.loaded(&["futex"]);
        let target = Target::Group {
            tgid: 10,
            start_ticks: 1,
        };
        e.activated(&target, &["futex"], 1);
        e.apply(&wait_record(&event(0, 12), false).unwrap(), 1);
        let s = FutexSummary {
            uaddr: "0x7f001000".into(),
            interval_ns: 1_000_000_000,
            waits: 3,
            wait_total_ns: 150_000_000,
            wait_max_ns: 50_000_000,
            wakes: 3,
            wake_calls: 6,
            waiters_max: 1,
            top_waiters: Vec::new(),
            top_wakers: Vec::new(),
        };
        e.apply(&summary_record(1, 10, &s), 1);
        let snap = e.shared().lock().unwrap().clone();
        let Some(Val::Hist(h)) = snap.get(Fam::FutexWait, &[("target", "tgid:10")]) else {
            panic!("no futex wait histogram")
        };
        // 50 ms: bucket 25 holds [2^25, 2^26) ns
        assert_eq!((h.count(), h.buckets[25]), (1, 1));
        let l = [
            ("target", "tgid:10"),
            ("tgid", "10"),
            ("uaddr", "0x7f001000"),
        ];
        assert_eq!(snap.get(Fam::FutexWaits, &l), Some(&Val::Num(3.0)));
        assert_eq!(snap.get(Fam::FutexWaitTime, &l), Some(&Val::Num(0.15)));
    }

    #[test]
    fn a_woken_wait_is_a_slice_with_a_flow_from_its_waker() {
        let rec = wait_record(&event(0, 12), false).unwrap();
        let items = trace_events(&rec, 7);
        assert!(matches!(
            &items[0],
            TraceItem::Slice {
                pid: 11,
                start_ns: 50_000_000,
                end_ns: 100_000_000,
                ..
            }
        ));
        assert!(items.contains(&TraceItem::Flow {
            ph: "s",
            id: 7,
            tgid: 10,
            pid: 12,
            ts_ns: 99_990_000
        }));
        assert!(items.contains(&TraceItem::Flow {
            ph: "f",
            id: 7,
            tgid: 10,
            pid: 11,
            ts_ns: 99_990_000
        }));
        let alone = wait_record(&event(-(libc::ETIMEDOUT as i64), 0), false).unwrap();
        assert_eq!(trace_events(&alone, 8).len(), 1);
    }
}
