//! syscall: per interval, each target thread's last N syscalls, its three
//! most frequent syscalls and its latency figures, beside the whole
//! system's latency in the same interval. BPF side: bpf/syscall.bpf.c
//! (aggregated in the kernel; nothing per syscall crosses the ring buffer).

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};
use serde_json::{json, Value};

use super::latency::{self, IntervalLatency};
use super::{
    attach_all, load_skel, read_stats, Activation, Collector, CollectorKind, LoadOptions,
    MIN_RINGBUF,
};
use crate::bpf_intf::{
    self, c_str, collector_stats, decode, syscall_config, syscall_count, syscall_count_key,
    syscall_thread, SYSCALL_SEQ_MAX, SYSCALL_SEQ_RING,
};
use crate::output::{Output, Record};
use crate::sys;
use crate::target::Target;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/syscall.skel.rs"));
}
use skel::{SyscallSkel, SyscallSkelBuilder};

const NAME: &str = "syscall";
const TOP: usize = 3;
/// Per-thread records per interval in whole-system text output.
const DEFAULT_TEXT_TOP: usize = 20;

pub struct Syscall {
    skel: SyscallSkel<'static>,
    links: Vec<Link>,
    /// what the current (or last) activation traces; None once flushed
    target: Option<Target>,
    seq_len: usize,
    top_threads: Option<usize>,
    interval_start_ns: u64,
}

/// The name of syscall `id` on this architecture.
pub fn syscall_name(id: u32) -> String {
    syscalls::Sysno::new(id as usize)
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| format!("syscall_{id}"))
}

impl Syscall {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        // aggregates in maps: its ring buffer stays at the minimum
        let skel = load_skel(SyscallSkelBuilder::default(), NAME, MIN_RINGBUF)?;
        Ok(Syscall {
            skel,
            links: Vec::new(),
            target: None,
            seq_len: 10,
            top_threads: opts.top.or((!opts.json).then_some(DEFAULT_TEXT_TOP)),
            interval_start_ns: 0,
        })
    }

    fn config(&mut self) -> Result<&mut skel::types::syscall_config> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cfg)
            .ok_or_else(|| anyhow!("syscall: .bss is not mapped"))
    }

    fn report(&mut self, target: Target, out: &mut Output) -> Result<()> {
        let old = self.config()?.interval;
        self.config()?.interval = old.wrapping_add(1);
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        self.interval_start_ns = now;
        let lat = latency::take(&self.skel.maps.latencies, old)?;

        // counts by thread and syscall; entries idle for a whole interval go
        let mut by_thread: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
        let mut stale = Vec::new();
        for (k, v) in self
            .skel
            .maps
            .counts
            .lookup_batch(4096, MapFlags::ANY, MapFlags::ANY)?
        {
            let (Ok(key), Ok(c)) = (decode::<syscall_count_key>(&k), decode::<syscall_count>(&v))
            else {
                continue;
            };
            if c.interval == old {
                by_thread
                    .entry(key.pid)
                    .or_default()
                    .push((key.id, c.count));
            } else if c.interval != old.wrapping_add(1) {
                stale.push(k);
            }
        }
        for k in stale {
            let _ = self.skel.maps.counts.delete(&k);
        }

        let mut threads = Vec::new();
        let mut gone = Vec::new();
        for (k, v) in self
            .skel
            .maps
            .threads
            .lookup_batch(1024, MapFlags::ANY, MapFlags::ANY)?
        {
            let (Ok(pid), Ok(t)) = (decode::<u32>(&k), decode::<syscall_thread>(&v)) else {
                continue;
            };
            if t.interval == old && t.count > 0 {
                threads.push((*pid, *t));
            } else if old.wrapping_sub(t.interval) >= 2 && sys::proc_stat(*pid).is_none() {
                gone.push(k);
            }
        }
        for k in gone {
            let _ = self.skel.maps.threads.delete(&k);
        }

        threads.sort_by_key(|(_, t)| std::cmp::Reverse(t.count));
        let shown = self.top_threads.unwrap_or(usize::MAX).min(threads.len());
        for (pid, t) in &threads[..shown] {
            let counts = by_thread.get(pid).map(Vec::as_slice).unwrap_or(&[]);
            out.emit(&thread_record(
                now,
                interval_ns,
                *pid,
                t,
                counts,
                self.seq_len,
                &lat,
            ));
        }

        let mut totals: HashMap<u32, u64> = HashMap::new();
        for (id, n) in by_thread.values().flatten() {
            *totals.entry(*id).or_default() += n;
        }
        let (pid, tgid) = match target {
            Target::Thread { pid, tgid, .. } => (pid, tgid),
            Target::Group { tgid, .. } => (tgid, tgid),
            Target::System | Target::Idle { .. } | Target::Cgroup { .. } => (0, 0),
        };
        let rec = Record::new(now, NAME, "syscalls_total")
            .task(pid, tgid, "")
            .field("interval_ns", interval_ns)
            .field("threads", threads.len());
        let totals: Vec<(u32, u64)> = totals.into_iter().collect();
        out.emit(
            &latency::with_figures(rec, &lat)
                .field("top", top_json(&totals))
                .field("by_name", by_name_json(&totals)),
        );
        Ok(())
    }

    fn clear_maps(&self) {
        for map in [
            &self.skel.maps.threads as &dyn MapCore,
            &self.skel.maps.counts,
        ] {
            let keys: Vec<Vec<u8>> = map.keys().collect();
            for k in keys {
                let _ = map.delete(&k);
            }
        }
    }
}

fn thread_record(
    now: u64,
    interval_ns: u64,
    pid: u32,
    t: &syscall_thread,
    counts: &[(u32, u64)],
    seq_len: usize,
    lat: &IntervalLatency,
) -> Record {
    Record::new(now, NAME, "syscalls")
        .task(pid, t.tgid, c_str(&t.comm))
        .field("interval_ns", interval_ns)
        .field("count", t.count)
        .field("sequence", sequence(t, seq_len))
        .field("sequence_spans", sequence_spans(t, seq_len))
        .field("top", top_json(counts))
        .field("avg_ns", t.sum_ns.checked_div(t.count).unwrap_or(0))
        .field("max_ns", t.max_ns)
        .field("min_ns", t.min_ns)
        .field("sys_count", lat.system.count)
        .field("sys_avg_ns", latency::avg_ns(&lat.system))
        .field("sys_max_ns", lat.system.max_ns)
        .field("sys_min_ns", lat.system.min_ns)
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

/// The TOP most frequent syscalls, most frequent first (ties by name).
pub fn top_json(counts: &[(u32, u64)]) -> Value {
    let mut named: Vec<(String, u64)> = counts
        .iter()
        .map(|&(id, n)| (syscall_name(id), n))
        .collect();
    named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Value::Array(
        named
            .into_iter()
            .take(TOP)
            .map(|(name, count)| json!({"name": name, "count": count}))
            .collect(),
    )
}

/// Every syscall of the interval by name, most frequent first (the
/// exporter counts them all, not only the top three).
pub fn by_name_json(counts: &[(u32, u64)]) -> Value {
    let mut named: Vec<(String, u64)> = counts
        .iter()
        .map(|&(id, n)| (syscall_name(id), n))
        .collect();
    named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Value::Object(named.into_iter().map(|(k, n)| (k, n.into())).collect())
}

impl Collector for Syscall {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Syscall
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.deactivate();
        self.clear_maps();
        latency::clear(&self.skel.maps.latencies)?;
        let cfg = syscall_config {
            target: act.filter(),
            interval: self.config()?.interval,
            _pad: 0,
        };
        bpf_intf::copy_into(self.config()?, &cfg);
        self.seq_len = act.syscall_seq_len.clamp(1, SYSCALL_SEQ_MAX) as usize;
        self.interval_start_ns = sys::monotonic_ns();
        let p = &self.skel.progs;
        self.links = attach_all(&[
            ("syscall/sys_enter", &p.handle__sys_enter),
            ("syscall/sys_exit", &p.handle__sys_exit),
        ])?;
        self.target = Some(act.target);
        Ok(())
    }

    fn deactivate(&mut self) {
        self.links.clear();
    }

    fn describe(&self, act: &Activation) -> String {
        format!(
            "syscall on {}: last {} syscalls per thread, top {TOP}, latency beside the whole system's, per interval",
            act.target,
            act.syscall_seq_len.clamp(1, SYSCALL_SEQ_MAX)
        )
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("syscall ring buffer")
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        match self.target {
            Some(target) => self.report(target, out),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_table() {
        // x86_64 numbers; the table follows the build's architecture
        if cfg!(target_arch = "x86_64") {
            assert_eq!(syscall_name(39), "getpid");
            assert_eq!(syscall_name(231), "exit_group");
        }
        assert_eq!(syscall_name(100_000), "syscall_100000");
    }

    #[test]
    fn sequence_is_oldest_first_over_the_ring() {
        let mut t = syscall_thread::default();
        let ids: Vec<u16> = (0..60).collect();
        for (i, id) in ids.iter().enumerate() {
            t.seq[i % SYSCALL_SEQ_RING as usize] = *id;
        }
        t.seq_total = 60;
        for i in 0..60u64 {
            let slot = (i % SYSCALL_SEQ_RING as u64) as usize;
            t.seq_enter_ns[slot] = 1000 * i;
            t.seq_dur_ns[slot] = i;
        }
        let want: Vec<String> = (57..60).map(syscall_name).collect();
        assert_eq!(sequence(&t, 3), want);
        assert_eq!(
            sequence_spans(&t, 3),
            vec![[57_000, 57], [58_000, 58], [59_000, 59]]
        );
        assert_eq!(sequence(&t, 50).len(), 50);
        assert_eq!(sequence(&t, 80).len(), 60);
        t.seq_total = 2;
        assert_eq!(sequence(&t, 10).len(), 2);
    }

    #[test]
    fn top_three_by_count() {
        let top = top_json(&[(39, 5), (1, 500), (110, 10_000), (0, 5)]);
        let names: Vec<&str> = top
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 3);
        assert_eq!(top[0]["count"], 10_000);
        assert_eq!(top[1]["count"], 500);
    }
}
