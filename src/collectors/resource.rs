//! resource: per interval, each target thread's CPU %, memory (RSS in KiB
//! and % of RAM) and read/write rates; a total for a thread group (-P); for
//! the whole system the busiest threads and a system total.
//! BPF side: bpf/resource.bpf.c. Each interval proc_image runs the task
//! iterator, which writes one cumulative sample per live target thread, and
//! takes the samples exited threads left in `exits`; the figures of an
//! interval are the differences from the thread's previous sample.

use std::collections::HashMap;
use std::io::Read;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Iter, Link, MapCore, MapFlags, MapHandle};

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

/// Split an iterator's output into samples (copied: the buffer is not aligned).
pub fn parse_samples(bytes: &[u8]) -> Vec<resource_sample> {
    bytes
        .chunks_exact(std::mem::size_of::<resource_sample>())
        .filter_map(|chunk| {
            let mut s = resource_sample::default();
            plain::copy_from_bytes(&mut s, chunk).ok()?;
            Some(s)
        })
        .collect()
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
    /// then those that exited since the last call (taken out of `exits`).
    fn samples(&self) -> Result<Vec<resource_sample>> {
        let link = self
            .iter
            .as_ref()
            .ok_or_else(|| anyhow!("resource: the task iterator is not attached"))?;
        let mut bytes = Vec::new();
        Iter::new(link)
            .context("resource: start the task iterator")?
            .read_to_end(&mut bytes)
            .context("resource: read the task iterator")?;
        let mut samples = parse_samples(&bytes);

        let exits = &self.skel.maps.exits;
        let keys: Vec<Vec<u8>> = exits.keys().collect();
        for k in keys {
            // hash maps take lookup-and-delete since 5.14; before, the two
            // (a pid exits once: nothing rewrites its entry in between)
            let v = exits.lookup_and_delete(&k).or_else(|_| {
                let v = exits.lookup(&k, MapFlags::ANY);
                let _ = exits.delete(&k);
                v
            });
            if let Ok(Some(v)) = v {
                samples.extend(parse_samples(&v));
            }
        }
        Ok(samples)
    }

    fn report(&mut self, target: Target, out: &mut Output) -> Result<()> {
        // each thread's figures are stamped with the time of its sample and
        // cover the span since its previous one: proc_image may be late to
        // close an interval (a busy machine), the kernel's clock is not
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        let samples = self.samples()?;
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

    fn check_target(&self, target: &Target) -> Result<()> {
        if let Target::Idle { .. } = target {
            return Err(anyhow!(
                "resource follows threads and processes: an idle task has no memory or I/O (keytime -p 0 -c CPU shows its CPU time)"
            ));
        }
        Ok(())
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
        let samples = match self.samples() {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, kind: u32, ts: u64, cpu: u64, rchar: u64, wchar: u64) -> resource_sample {
        let mut s = resource_sample::default();
        s.hdr.pid = pid;
        s.hdr.tgid = 100;
        s.hdr.kind = kind as u8;
        s.hdr.ts_ns = ts;
        s.hdr.comm[..2].copy_from_slice(b"wl");
        s.on_cpu_ns = cpu;
        s.rss_pages = 256;
        s.rchar = rchar;
        s.wchar = wchar;
        s
    }

    #[test]
    fn percent_and_rates() {
        assert_eq!(percent(250_000_000, 1_000_000_000), 25.0);
        assert_eq!(percent(1, 3), 33.33);
        assert_eq!(percent(5, 0), 0.0);
        assert_eq!(per_second(50 << 20, 500_000_000), 100 << 20);
        assert_eq!(per_second(1, 0), 0);
        // no overflow with large counts over short intervals
        assert_eq!(per_second(u64::MAX / 2, 1_000_000_000), u64::MAX / 2);
    }

    #[test]
    fn counters_never_go_back() {
        let a = Counters {
            on_cpu_ns: 10,
            rchar: 5,
            wchar: 7,
        };
        let b = Counters {
            on_cpu_ns: 30,
            rchar: 4,
            wchar: 9,
        };
        assert_eq!(
            b.since(&a),
            Counters {
                on_cpu_ns: 20,
                rchar: 0,
                wchar: 2
            }
        );
    }

    #[test]
    fn meminfo_total() {
        let text = "MemTotal:        8029876 kB\nMemFree:          123 kB\n";
        assert_eq!(parse_mem_total_kib(text), Some(8_029_876));
        assert_eq!(parse_mem_total_kib("nothing"), None);
    }

    #[test]
    fn iterator_output_is_split_into_samples() {
        let a = sample(1, crate::bpf_intf::RESOURCE_LIVE, 5, 1, 2, 3);
        let b = sample(2, RESOURCE_EXIT, 6, 4, 5, 6);
        let mut bytes = vec![0u8]; // misaligned on purpose
                                   // SAFETY: resource_sample is plain data
        bytes.extend_from_slice(unsafe { plain::as_bytes(&a) });
        bytes.extend_from_slice(unsafe { plain::as_bytes(&b) });
        let got = parse_samples(&bytes[1..]);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].hdr.pid, got[0].wchar), (1, 3));
        assert_eq!((got[1].hdr.pid, got[1].on_cpu_ns), (2, 4));
        // a torn tail is not a sample
        assert_eq!(parse_samples(&bytes[1..bytes.len() - 1]).len(), 1);
    }

    #[test]
    fn total_counts_shared_memory_once_per_process() {
        let t = |pid, tgid, rss_kib, cpu| Figures {
            pid,
            tgid,
            comm: String::new(),
            ts_ns: 7,
            window_ns: 1000,
            delta: Counters {
                on_cpu_ns: cpu,
                rchar: 1,
                wchar: 2,
            },
            total: Counters::default(),
            rss_kib,
            exited: false,
            cgroup_id: 0,
        };
        let threads = [t(1, 1, 100, 5), t(2, 1, 100, 7), t(3, 3, 40, 1)];
        let sum = total_of(&threads, 0, 0, Counters::default(), 9, 5);
        assert_eq!((sum.ts_ns, sum.window_ns), (7, 1000));
        let none = total_of(&[], 0, 0, Counters::default(), 9, 5);
        assert_eq!((none.ts_ns, none.window_ns), (9, 5));
        assert_eq!(sum.rss_kib, 140);
        assert_eq!(
            sum.delta,
            Counters {
                on_cpu_ns: 13,
                rchar: 3,
                wchar: 6
            }
        );
        let rec = sum.total_record(1400, 2);
        assert_eq!(rec.get("cpu_pct"), Some(serde_json::json!(1.3)));
        assert_eq!(rec.get("mem_pct"), Some(serde_json::json!(10.0)));
        assert_eq!(rec.get("read_bps"), Some(serde_json::json!(3_000_000)));
    }

    #[test]
    fn tracker_takes_differences_per_thread() {
        use crate::bpf_intf::RESOURCE_LIVE as LIVE;
        let mut t = Tracker::default();
        // at the activation: thread 1 had read 1000 bytes already
        t.start(&[sample(1, LIVE, 100, 0, 1000, 0)]);
        let f = t.figures(
            &[
                sample(1, LIVE, 1100, 400, 1500, 20),
                // born during the interval, which began at 100
                sample(2, LIVE, 1150, 300, 10, 10),
            ],
            4,
            100,
        );
        let one = f.iter().find(|f| f.pid == 1).unwrap();
        assert_eq!(one.window_ns, 1000);
        assert_eq!(
            (one.delta.on_cpu_ns, one.delta.rchar, one.delta.wchar),
            (400, 500, 20)
        );
        assert_eq!(one.rss_kib, 1024);
        let two = f.iter().find(|f| f.pid == 2).unwrap();
        assert_eq!((two.window_ns, two.delta.rchar), (1050, 10));
        assert_eq!(t.total.on_cpu_ns, 700);

        // thread 1 exits: its exit sample wins over a live one; thread 2 is
        // not sampled any more (no longer a target) and is forgotten
        let f = t.figures(
            &[
                sample(1, RESOURCE_EXIT, 1900, 500, 1600, 20),
                sample(1, LIVE, 1800, 450, 1550, 20),
            ],
            4,
            1100,
        );
        assert_eq!(f.len(), 1);
        assert!(f[0].exited);
        assert_eq!((f[0].window_ns, f[0].delta.on_cpu_ns), (800, 100));
        assert_eq!(
            f[0].total,
            Counters {
                on_cpu_ns: 500,
                rchar: 600,
                wchar: 20
            }
        );
        assert_eq!(t.total.on_cpu_ns, 800);
        // an exited thread is gone: the same pid later is a new thread
        let f = t.figures(&[sample(1, LIVE, 2900, 50, 5, 0)], 4, 1900);
        assert_eq!((f[0].delta.on_cpu_ns, f[0].window_ns), (50, 1000));
    }
}
