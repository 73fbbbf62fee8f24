//! schedule: run-queue latency (runnable -> running) of the target per
//! interval, beside the whole system's in the same interval, with log2
//! histograms; and per target thread its waits and scheduling class
//! (`schedule_thread`). For the idle task of a CPU the target is that CPU's
//! run queue. BPF side: bpf/schedule.bpf.c (aggregated in the kernel).

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle};
use serde::Serialize;
use serde_json::json;

use super::latency::{self, Figures};
use super::{
    attach_all, hash_entries, load_skel_variants, read_stats, wait_for_programs_in_flight,
    Activation, Collector, CollectorKind, LoadOptions, MIN_RINGBUF,
};
use crate::bpf_intf::{self, c_str, decode, schedule_config, schedule_slot, schedule_thread};
use crate::kernel_btf::{self, Variant};
use crate::output::Output;
use crate::record::families::Fam;
use crate::record::{self, write_json_of, MetricsOut, Record, TraceOut};
use crate::sys;
use crate::target::Target;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/schedule.skel.rs"));
}
use skel::{ScheduleSkel, ScheduleSkelBuilder};

const NAME: &str = "schedule";
/// Per-thread records per interval in text output (whole system, a cgroup, a CPU).
const DEFAULT_TEXT_TOP: usize = 20;

/// One thread's run-queue waits over one interval (`schedule_thread`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleThread {
    pub interval_ns: u64,
    pub count: u64,
    pub avg_ns: u64,
    pub max_ns: u64,
    pub min_ns: u64,
    pub sum_ns: u64,
    /// the kernel's task->prio: 0..99 real-time, 100..139 nice -20..19, -1 deadline
    pub prio: i32,
    pub nice: i32,
    pub policy: &'static str,
    pub exited: bool,
}

/// The threads not listed (beyond --top), summed (`schedule_thread_rest`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleThreadRest {
    pub interval_ns: u64,
    pub threads: usize,
    pub count: u64,
    pub sum_ns: u64,
}

/// The name of a scheduling policy (task->policy).
pub fn policy_name(policy: u32) -> &'static str {
    match policy {
        0 => "normal",
        1 => "fifo",
        2 => "rr",
        3 => "batch",
        5 => "idle",
        6 => "deadline",
        7 => "ext",
        _ => "unknown",
    }
}

/// A thread: its pid and when it began.
type ThreadKey = (u32, u64);

/// A is at or before B, in interval numbers that wrap.
fn not_after(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

/// One thread's figures of interval `closed`, gathered from BPF.
#[derive(Debug, Clone)]
pub struct Gathered {
    pub key: ThreadKey,
    pub sample: schedule_thread,
    pub slot: schedule_slot,
    pub exited: bool,
}

/// The figures of interval `closed` from the live threads' samples (the
/// iterator's) and the dead threads' (`exits`). A thread in both (it died
/// while the iterator ran) counts once. Figures always stay in their own
/// interval: a dead thread neither source had when its interval closed (it
/// had left the task list before the iterator came, and switched out for
/// the last time after `exits` was read) is that interval's
/// `missed_threads`, never added to a later one.
pub fn gather(closed: u32, live: &[schedule_thread], exits: &[schedule_thread]) -> Vec<Gathered> {
    let pick = |s: &schedule_thread, interval: u32| {
        let slot = s.slot[(interval & 1) as usize];
        if slot.interval == interval && slot.count > 0 {
            slot
        } else {
            schedule_slot::default()
        }
    };
    let mut out: Vec<Gathered> = Vec::new();
    // a thread that died while the iterator ran is in both, with the same
    // (frozen) figures; a non-leader thread that exec'd took its dead
    // leader's pid and start time: the same key, other figures
    let mut seen: HashMap<(ThreadKey, u64, u64), usize> = HashMap::new();
    for (s, exited) in live
        .iter()
        .map(|s| (s, false))
        .chain(exits.iter().map(|s| (s, true)))
    {
        let key = (s.hdr.pid, s.task_start_ns);
        let slot = pick(s, closed);
        if let Some(&i) = seen.get(&(key, slot.count, slot.sum_ns)) {
            out[i].exited |= exited;
            continue;
        }
        seen.insert((key, slot.count, slot.sum_ns), out.len());
        out.push(Gathered {
            key,
            sample: *s,
            slot,
            exited,
        });
    }
    out
}

pub struct Schedule {
    skel: ScheduleSkel<'static>,
    links: Vec<Link>,
    /// sched_switch passes prev_state: its newer program is the one loaded
    switch_newer: bool,
    /// what the current (or last) activation traces; None once flushed
    target: Option<Target>,
    interval_start_ns: u64,
    /// the task iterator: kept until the last interval is flushed
    iter: Option<Link>,
    top_threads: Option<usize>,
}

impl Schedule {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        // aggregates in maps: its ring buffer stays at the minimum
        let switch = Variant {
            newer: "handle__sched_switch",
            older: "handle__sched_switch_compat",
            use_newer: kernel_btf::features().sched_switch_prev_state,
        };
        let skel =
            load_skel_variants(ScheduleSkelBuilder::default(), NAME, MIN_RINGBUF, &[switch])?;
        Ok(Schedule {
            skel,
            switch_newer: switch.use_newer,
            links: Vec::new(),
            target: None,
            interval_start_ns: 0,
            iter: None,
            top_threads: opts.top.or((!opts.json).then_some(DEFAULT_TEXT_TOP)),
        })
    }

    /// The live target threads' samples (the iterator) and the dead ones'
    /// (`exits`; those whose last figures are read now are deleted).
    fn samples(&self, closed: u32) -> Result<(Vec<schedule_thread>, Vec<schedule_thread>)> {
        let link = self
            .iter
            .as_ref()
            .ok_or_else(|| anyhow!("schedule: the task iterator is not attached"))?;
        let live = parse_threads(&super::read_task_iter(link, "schedule")?);
        let mut exits = Vec::new();
        let mut done = Vec::new();
        let map = &self.skel.maps.exits;
        for (k, v) in &hash_entries(map)? {
            let Ok(t) = decode::<schedule_thread>(v) else {
                continue;
            };
            if not_after(t.exit_interval, closed) {
                done.push(k.to_vec());
            }
            exits.push(*t);
        }
        super::delete_keys(map, &done);
        Ok((live, exits))
    }

    fn config(&mut self) -> Result<&mut skel::types::schedule_config> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cfg)
            .ok_or_else(|| anyhow!("schedule: .bss is not mapped"))
    }

    fn report(&mut self, target: Target, out: &mut Output) -> Result<()> {
        let old = self.config()?.interval;
        // SAFETY: a u32 in the mapped .bss, which BPF only reads
        unsafe { std::ptr::write_volatile(&mut self.config()?.interval, old.wrapping_add(1)) };
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        self.interval_start_ns = now;
        wait_for_programs_in_flight();
        let lat = latency::take(&self.skel.maps.latencies, old)?;
        let (live, exits) = self.samples(old)?;
        let mut threads = gather(old, &live, &exits);
        let (pid, tgid) = match target {
            Target::Thread { pid, tgid, .. } => (pid, tgid),
            Target::Group { tgid, .. } => (tgid, tgid),
            Target::System | Target::Idle { .. } | Target::Cgroup { .. } => (0, 0),
        };
        // waits of the target no thread's figures hold: a thread the task
        // iterator cannot visit, task storage that could not be had
        let by_threads: u64 = threads.iter().map(|t| t.slot.count).sum();
        let interval = Interval {
            interval_ns,
            threads: threads.iter().filter(|t| t.slot.count > 0).count(),
            missed_threads: lat.target.count.saturating_sub(by_threads),
            latency: Figures::of(&lat),
        };
        out.emit(&Record::new(now, Event::Schedule(Box::new(interval))).task(pid, tgid, ""));

        // most waiting first; a thread or group lists every thread, the
        // wider targets the threads that waited, at most --top of them
        threads.sort_by_key(|t| (std::cmp::Reverse(t.slot.sum_ns), t.key));
        let listed = match target {
            Target::Thread { .. } | Target::Group { .. } => threads.len(),
            _ => {
                threads.retain(|t| t.slot.count > 0);
                self.top_threads.unwrap_or(usize::MAX).min(threads.len())
            }
        };
        for t in &threads[..listed] {
            let s = &t.sample;
            let body = ScheduleThread {
                interval_ns,
                count: t.slot.count,
                avg_ns: t.slot.sum_ns.checked_div(t.slot.count).unwrap_or(0),
                max_ns: t.slot.max_ns,
                min_ns: t.slot.min_ns,
                sum_ns: t.slot.sum_ns,
                prio: s.prio,
                nice: s.nice,
                policy: policy_name(s.policy),
                exited: t.exited,
            };
            let rec = Record::new(now, Event::ScheduleThread(body)).task(
                s.hdr.pid,
                s.hdr.tgid,
                c_str(&s.hdr.comm),
            );
            out.emit(&match target {
                Target::System => rec.cgroup(s.hdr.cgroup_id),
                _ => rec,
            });
        }
        if listed < threads.len() {
            let rest = &threads[listed..];
            let body = ScheduleThreadRest {
                interval_ns,
                threads: rest.len(),
                count: rest.iter().map(|t| t.slot.count).sum(),
                sum_ns: rest.iter().map(|t| t.slot.sum_ns).sum(),
            };
            out.emit(&Record::new(now, Event::ScheduleThreadRest(body)));
        }
        Ok(())
    }

    fn clear_exits(&self) {
        let map = &self.skel.maps.exits;
        let keys: Vec<Vec<u8>> = map.keys().collect();
        for k in keys {
            let _ = map.delete(&k);
        }
    }
}

/// Split an iterator's output into samples (copied: the buffer is not aligned).
pub fn parse_threads(bytes: &[u8]) -> Vec<schedule_thread> {
    crate::bpf_intf::records_of(bytes)
}

/// The schedule collector's records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The target's run-queue latency in one interval, beside the system's.
    Schedule(Box<Interval>),
    /// One thread's waits in the interval, with its class.
    ScheduleThread(ScheduleThread),
    /// The threads not listed (beyond --top), summed.
    ScheduleThreadRest(ScheduleThreadRest),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Interval {
    pub interval_ns: u64,
    /// target threads that waited
    pub threads: usize,
    /// waits of the target no thread's figures hold
    pub missed_threads: u64,
    #[serde(flatten)]
    pub latency: Figures,
}

impl record::Event for Event {
    fn collector(&self) -> &'static str {
        "schedule"
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        write_json_of(self, out)
    }

    fn name(&self) -> &'static str {
        match self {
            Event::Schedule(_) => "schedule",
            Event::ScheduleThread(_) => "schedule_thread",
            Event::ScheduleThreadRest(_) => "schedule_thread_rest",
        }
    }

    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
        match self {
            Event::Schedule(i) => i.latency.metrics(Fam::SchedLatency, m),
            Event::ScheduleThread(t) => {
                let labels = m.thread(t.sum_ns);
                m.add(Fam::ThreadRunqWaits, labels.clone(), t.count as f64);
                m.add(Fam::ThreadRunqWait, labels, t.sum_ns as f64 / 1e9);
            }
            Event::ScheduleThreadRest(r) => {
                let labels = m.other_threads();
                m.add(Fam::ThreadRunqWaits, labels.clone(), r.count as f64);
                m.add(Fam::ThreadRunqWait, labels, r.sum_ns as f64 / 1e9);
            }
        }
    }

    fn trace(&self, rec: &Record, t: &mut dyn TraceOut) {
        match self {
            Event::Schedule(i) => i.latency.trace(rec, "run-queue latency avg (us)", t),
            Event::ScheduleThread(th) => {
                let ms_per_s = th.sum_ns as f64 / 1e6 / (th.interval_ns.max(1) as f64 / 1e9);
                t.counter(
                    rec.tgid,
                    "run-queue wait (ms/s) by thread",
                    rec.ts_ns,
                    json!({rec.pid.to_string(): ms_per_s}),
                );
            }
            Event::ScheduleThreadRest(_) => {}
        }
    }
}

impl Collector for Schedule {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Schedule
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.deactivate();
        latency::clear(&self.skel.maps.latencies)?;
        // wakeups an earlier activation kept aside (see runnable_spill)
        let spill = &self.skel.maps.runnable_spill;
        let keys: Vec<Vec<u8>> = libbpf_rs::MapCore::keys(spill).collect();
        for k in keys {
            let _ = libbpf_rs::MapCore::delete(spill, &k);
        }
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            bss.spilled = 0;
        }
        self.clear_exits();
        // two intervals on: a thread's slots of an earlier activation are stale
        let cfg = schedule_config {
            target: act.filter(),
            interval: self.config()?.interval.wrapping_add(2),
            _pad: 0,
        };
        bpf_intf::copy_into(self.config()?, &cfg);
        self.interval_start_ns = sys::monotonic_ns();
        let p = &self.skel.progs;
        self.links = attach_all(&[
            ("schedule/sched_wakeup", &p.handle__sched_wakeup),
            ("schedule/sched_wakeup_new", &p.handle__sched_wakeup_new),
            (
                "schedule/sched_switch",
                if self.switch_newer {
                    &p.handle__sched_switch
                } else {
                    &p.handle__sched_switch_compat
                },
            ),
        ])?;
        match self.skel.progs.handle__iter_task.attach() {
            Ok(link) => self.iter = Some(link),
            Err(e) => {
                self.links.clear();
                return Err(e).context("attach schedule/iter_task");
            }
        }
        self.target = Some(act.target);
        Ok(())
    }

    fn deactivate(&mut self) {
        // the iterator stays until flush() has read the last interval
        self.links.clear();
    }

    fn describe(&self, act: &Activation) -> String {
        format!(
            "schedule on {}: run-queue latency beside the whole system's, and per thread, per interval",
            act.target
        )
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("schedule ring buffer")
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        match self.target {
            Some(target) => self.report(target, out),
            None => Ok(()),
        }
    }

    fn flush(&mut self, out: &mut Output) -> Result<()> {
        let result = self.on_interval(out);
        self.iter = None;
        self.target = None;
        result
    }

    fn stats(&self) -> Result<crate::losses::Losses> {
        read_stats(&self.skel.maps.stats)
    }

    fn object(&self) -> &libbpf_rs::Object {
        libbpf_rs::skel::Skel::object(&self.skel)
    }
}

#[cfg(test)]
mod tests;
