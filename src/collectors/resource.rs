//! resource: per interval, each target thread's CPU %, memory (RSS in KiB
//! and % of RAM), read/write rates and the CPU it last ran on; a total for a
//! thread group (-P); for the whole system the busiest threads and a system
//! total; for the idle task of a CPU, that CPU's idle time as its CPU %.
//! BPF side: bpf/resource.bpf.c. Each interval proc_image runs the task
//! iterator, which writes one cumulative sample per live target thread, and
//! takes the samples exited threads left in `exits`; the figures of an
//! interval are the differences from the thread's previous sample.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle};

use super::{
    attach_all, load_skel, read_stats, Activation, Collector, CollectorKind, LoadOptions,
    MIN_RINGBUF,
};
use crate::bpf_intf::{self, c_str, resource_config, resource_sample, RESOURCE_EXIT};
use crate::output::Output;
use crate::sys;
use crate::target::Target;

mod records;
pub use records::*;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/resource.skel.rs"));
}
use skel::{ResourceSkel, ResourceSkelBuilder};

const NAME: &str = "resource";
/// Whole system: threads listed per interval (unless --top), busiest first.
const DEFAULT_SYSTEM_TOP: usize = 20;

/// The cumulative counters of one thread, as BPF samples them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub on_cpu_ns: u64,
    pub rchar: u64,
    pub wchar: u64,
}

impl Counters {
    fn of(s: &resource_sample) -> Self {
        Counters {
            on_cpu_ns: s.on_cpu_ns,
            rchar: s.rchar,
            wchar: s.wchar,
        }
    }

    /// What happened between `earlier` and `self`; a counter never goes back,
    /// so a smaller value (a recycled pid) counts as nothing.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            on_cpu_ns: self.on_cpu_ns.saturating_sub(earlier.on_cpu_ns),
            rchar: self.rchar.saturating_sub(earlier.rchar),
            wchar: self.wchar.saturating_sub(earlier.wchar),
        }
    }

    fn add(&mut self, d: &Counters) {
        self.on_cpu_ns += d.on_cpu_ns;
        self.rchar += d.rchar;
        self.wchar += d.wchar;
    }
}

/// A thread proc_image has a sample of.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// at the activation (or zero for a thread born after it)
    base: Counters,
    last: Counters,
    /// when `last` was taken (bpf_ktime_get_ns)
    last_ns: u64,
}

/// One thread (or a total) over one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// when the figures were taken (CLOCK_MONOTONIC)
    pub ts_ns: u64,
    /// the span `delta` covers: from the thread's previous sample to this one
    pub window_ns: u64,
    /// in the window
    pub delta: Counters,
    /// since the activation
    pub total: Counters,
    pub rss_kib: u64,
    pub exited: bool,
    /// the thread's cgroup v2 (0 for totals)
    pub cgroup_id: u64,
    /// the CPU it runs on or last ran on (None for totals)
    pub cpu: Option<u32>,
}

/// The sum of `threads`, taken at the latest of their samples over the
/// longest of their windows (`now` and `interval_ns` when there are none). Threads of one process share its memory: RSS is
/// counted once per thread group (its largest sample in the interval).
pub fn total_of(
    threads: &[Figures],
    pid: u32,
    tgid: u32,
    total: Counters,
    now: u64,
    interval_ns: u64,
) -> Figures {
    let mut delta = Counters::default();
    let mut rss: HashMap<u32, u64> = HashMap::new();
    for t in threads {
        delta.add(&t.delta);
        let r = rss.entry(t.tgid).or_default();
        *r = (*r).max(t.rss_kib);
    }
    Figures {
        pid,
        tgid,
        comm: String::new(),
        ts_ns: threads.iter().map(|t| t.ts_ns).max().unwrap_or(now),
        window_ns: threads
            .iter()
            .map(|t| t.window_ns)
            .max()
            .unwrap_or(interval_ns),
        delta,
        total,
        rss_kib: rss.values().sum(),
        exited: false,
        cgroup_id: 0,
        cpu: None,
    }
}

/// MemTotal from /proc/meminfo text, in KiB.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The idle time of `cpu` in ns from /proc/stat text: its `cpuN` line's
/// 4th value, in clock ticks.
pub fn parse_cpu_idle_ns(stat: &str, cpu: u32, ns_per_tick: u64) -> Option<u64> {
    let name = format!("cpu{cpu}");
    let mut fields = stat
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut f| (f.next() == Some(name.as_str())).then_some(f))?;
    fields.nth(3)?.parse::<u64>().ok().map(|t| t * ns_per_tick)
}

/// The idle task of `cpu` as a sample: the CPU's idle time as its on-CPU
/// time, no memory, no I/O. The kernel keeps no run time for idle tasks;
/// /proc/stat's idle is get_idle_time(), which on a tickless (NO_HZ)
/// kernel adds the idle stretch in progress, so the figure is current when
/// read, not when the CPU next wakes up (kernel_cpustat's CPUTIME_IDLE
/// lags by that stretch). It counts in clock ticks (10 ms at USER_HZ 100):
/// BPF could read tick_sched to the ns, but a per-CPU kernel variable is
/// reachable only through kallsyms, which lacks it without KALLSYMS_ALL.
fn idle_sample(cpu: u32) -> Result<resource_sample> {
    let stat = std::fs::read_to_string("/proc/stat").context("resource: read /proc/stat")?;
    let ts_ns = sys::monotonic_ns();
    let ns_per_tick = 1_000_000_000 / sys::clock_ticks_per_sec();
    let idle = parse_cpu_idle_ns(&stat, cpu, ns_per_tick)
        .ok_or_else(|| anyhow!("resource: no cpu{cpu} idle time in /proc/stat (offline?)"))?;
    let mut s = resource_sample::default();
    s.hdr.ts_ns = ts_ns;
    s.hdr.cpu = cpu as u16;
    let comm = format!("swapper/{cpu}");
    let n = comm.len().min(s.hdr.comm.len() - 1);
    s.hdr.comm[..n].copy_from_slice(&comm.as_bytes()[..n]);
    s.on_cpu_ns = idle;
    s.last_cpu = cpu;
    Ok(s)
}

/// Split an iterator's output into samples (copied: the buffer is not aligned).
pub fn parse_samples(bytes: &[u8]) -> Vec<resource_sample> {
    crate::bpf_intf::records_of(bytes)
}

/// The threads sampled so far in this activation, and the group's (or
/// system's) totals since it began.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: HashMap<u32, Seen>,
    pub total: Counters,
}

impl Tracker {
    /// The samples taken at the activation are every thread's starting point.
    pub fn start(&mut self, samples: &[resource_sample]) {
        self.seen.clear();
        self.total = Counters::default();
        for s in samples {
            let c = Counters::of(s);
            self.seen.insert(
                s.hdr.pid,
                Seen {
                    base: c,
                    last: c,
                    last_ns: s.hdr.ts_ns,
                },
            );
        }
    }

    /// Turn this interval's samples into figures, and remember them.
    /// A thread first seen now was born after `interval_start_ns`.
    pub fn figures(
        &mut self,
        samples: &[resource_sample],
        page_kib: u64,
        interval_start_ns: u64,
    ) -> Vec<Figures> {
        let mut latest: HashMap<u32, &resource_sample> = HashMap::new();
        for s in samples {
            // an exit sample is later than a live one of the same thread
            let keep = latest
                .get(&s.hdr.pid)
                .is_none_or(|old| s.hdr.kind == RESOURCE_EXIT as u8 || old.hdr.ts_ns < s.hdr.ts_ns);
            if keep {
                latest.insert(s.hdr.pid, s);
            }
        }
        let mut seen = HashMap::new();
        let mut figures = Vec::new();
        for (pid, s) in latest {
            let now = Counters::of(s);
            // a thread born after the activation started from zero
            let before = self.seen.get(&pid).copied().unwrap_or(Seen {
                base: Counters::default(),
                last: Counters::default(),
                last_ns: interval_start_ns,
            });
            let exited = s.hdr.kind == RESOURCE_EXIT as u8;
            figures.push(Figures {
                pid,
                tgid: s.hdr.tgid,
                comm: c_str(&s.hdr.comm),
                ts_ns: s.hdr.ts_ns,
                window_ns: s.hdr.ts_ns.saturating_sub(before.last_ns),
                delta: now.since(&before.last),
                total: now.since(&before.base),
                rss_kib: s.rss_pages * page_kib,
                exited,
                cgroup_id: s.hdr.cgroup_id,
                cpu: Some(s.last_cpu),
            });
            if !exited {
                seen.insert(
                    pid,
                    Seen {
                        base: before.base,
                        last: now,
                        last_ns: s.hdr.ts_ns,
                    },
                );
            }
        }
        // threads not sampled this time (exited ones, or no longer targets) are forgotten
        self.seen = seen;
        for f in &figures {
            self.total.add(&f.delta);
        }
        figures
    }
}

pub struct Resource {
    skel: ResourceSkel<'static>,
    links: Vec<Link>,
    /// the task iterator: kept until the last interval is flushed
    iter: Option<Link>,
    /// what the current (or last) activation traces; None once flushed
    target: Option<Target>,
    top: usize,
    page_kib: u64,
    mem_total_kib: u64,
    tracker: Tracker,
    interval_start_ns: u64,
}

impl Resource {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        // samples come through the iterator and a map: the ring buffer stays at the minimum
        let skel = load_skel(ResourceSkelBuilder::default(), NAME, MIN_RINGBUF)?;
        let meminfo =
            std::fs::read_to_string("/proc/meminfo").context("resource: read /proc/meminfo")?;
        let mem_total_kib = parse_mem_total_kib(&meminfo)
            .ok_or_else(|| anyhow!("resource: no MemTotal in /proc/meminfo"))?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(Resource {
            skel,
            links: Vec::new(),
            iter: None,
            target: None,
            top: opts.top.unwrap_or(DEFAULT_SYSTEM_TOP),
            page_kib: if page > 0 { page as u64 / 1024 } else { 4 },
            mem_total_kib,
            tracker: Tracker::default(),
            interval_start_ns: 0,
        })
    }

    fn config(&mut self) -> Result<&mut skel::types::resource_config> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cfg)
            .ok_or_else(|| anyhow!("resource: .bss is not mapped"))
    }

    /// Every target thread's sample now: the live ones from the iterator,
    /// then those that exited since the last call (taken out of `exits`);
    /// for the idle task of a CPU, that CPU's idle time.
    fn samples(&self, target: Target) -> Result<Vec<resource_sample>> {
        if let Target::Idle { cpu } = target {
            return Ok(vec![idle_sample(cpu)?]);
        }
        let link = self
            .iter
            .as_ref()
            .ok_or_else(|| anyhow!("resource: the task iterator is not attached"))?;
        let mut samples = parse_samples(&super::read_task_iter(link, "resource")?);

        // taken out in batches (a pid exits once: nothing rewrites its
        // entry; one BPF adds meanwhile is taken now or next time)
        for (_, v) in &super::take_hash_entries(&self.skel.maps.exits)? {
            samples.extend(parse_samples(v));
        }
        Ok(samples)
    }

    fn report(&mut self, target: Target, out: &mut Output) -> Result<()> {
        // each thread's figures are stamped with the time of its sample and
        // cover the span since its previous one: proc_image may be late to
        // close an interval (a busy machine), the kernel's clock is not
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        let samples = self.samples(target)?;
        let mut figures = self
            .tracker
            .figures(&samples, self.page_kib, self.interval_start_ns);
        self.interval_start_ns = now;
        let mem = self.mem_total_kib;
        // busiest first; ties by pid so that the order is stable
        figures.sort_by(|a, b| {
            b.delta
                .on_cpu_ns
                .cmp(&a.delta.on_cpu_ns)
                .then((b.delta.rchar + b.delta.wchar).cmp(&(a.delta.rchar + a.delta.wchar)))
                .then(a.pid.cmp(&b.pid))
        });
        match target {
            Target::Thread { .. } | Target::Idle { .. } => {
                for f in &figures {
                    out.emit(&f.record(mem));
                }
            }
            Target::Group { tgid, .. } => {
                for f in &figures {
                    out.emit(&f.record(mem));
                }
                let total = total_of(&figures, tgid, tgid, self.tracker.total, now, interval_ns);
                out.emit(&total.total_record(mem, figures.len()));
            }
            Target::System | Target::Cgroup { .. } => {
                // only threads that did something, and at most `top` of them
                let active = figures
                    .iter()
                    .filter(|f| f.delta != Counters::default() || f.exited);
                for f in active.take(self.top) {
                    let rec = f.record(mem);
                    // the whole system: which container or service each thread is in
                    out.emit(&match target {
                        Target::System => rec.cgroup(f.cgroup_id),
                        _ => rec,
                    });
                }
                let total = total_of(&figures, 0, 0, self.tracker.total, now, interval_ns);
                out.emit(&total.total_record(mem, figures.len()));
            }
        }
        Ok(())
    }
}

impl Collector for Resource {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Resource
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.deactivate();
        self.iter = None;
        let exits = &self.skel.maps.exits;
        let keys: Vec<Vec<u8>> = exits.keys().collect();
        for k in keys {
            let _ = exits.delete(&k);
        }
        let cfg = resource_config {
            target: act.filter(),
        };
        bpf_intf::copy_into(self.config()?, &cfg);
        let p = &self.skel.progs;
        self.links = attach_all(&[("resource/sched_process_exit", &p.handle__sched_process_exit)])?;
        match p.handle__iter_task.attach() {
            Ok(link) => self.iter = Some(link),
            Err(e) => {
                self.links.clear();
                return Err(e).context("attach resource/iter_task");
            }
        }
        // the first pass: every target thread's counters now are where its
        // figures start
        self.interval_start_ns = sys::monotonic_ns();
        let samples = match self.samples(act.target) {
            Ok(s) => s,
            Err(e) => {
                self.deactivate();
                self.iter = None;
                return Err(e);
            }
        };
        self.tracker.start(&samples);
        self.target = Some(act.target);
        Ok(())
    }

    fn deactivate(&mut self) {
        // the iterator stays until flush() has read the last interval
        self.links.clear();
    }

    fn describe(&self, act: &Activation) -> String {
        let what = match act.target {
            Target::System => format!(" (the {} busiest threads and a total)", self.top),
            Target::Group { .. } => " (each thread and the total)".to_string(),
            Target::Idle { cpu } => format!(" (CPU {cpu}'s idle time as its CPU %)"),
            _ => String::new(),
        };
        format!(
            "resource on {}{what}: CPU %, RSS, read/write bytes per second every {} ms",
            act.target, act.interval_ms
        )
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("resource ring buffer")
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
