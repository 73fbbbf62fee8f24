//! syscall: per interval, each target thread's last N syscalls, its three
//! most frequent syscalls and its latency figures, beside the whole
//! system's latency in the same interval. BPF side: bpf/syscall.bpf.c
//! (aggregated in the kernel; nothing per syscall crosses the ring buffer).

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle};

use super::latency::{self, Figures};
use super::{
    attach_all, delete_keys, hash_entries, load_skel, read_stats, read_task_iter,
    wait_for_programs_in_flight, Activation, Collector, CollectorKind, LoadOptions, MIN_RINGBUF,
};
use crate::bpf_intf::{
    self, decode, syscall_config, syscall_count, syscall_count_key, syscall_live, syscall_thread,
    syscall_thread_key, SYSCALL_ID_IA32, SYSCALL_SEQ_MAX,
};
use crate::output::Output;
use crate::record::Record;
use crate::sys;
use crate::target::Target;

mod records;
pub use records::*;

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
    /// the exit hook: kept, like the iterator, until the last interval is
    /// flushed, so that a thread that exits after the others are detached
    /// still leaves its figures in `threads`
    exit_link: Option<Link>,
    /// the task iterator over the live threads' figures: kept until the
    /// last interval is flushed
    iter: Option<Link>,
    /// what the current (or last) activation traces; None once flushed
    target: Option<Target>,
    seq_len: usize,
    top_threads: Option<usize>,
    interval_start_ns: u64,
}

/// The name of syscall `id` on this architecture; with SYSCALL_ID_IA32 set
/// (x86_64 only), of the rest in the ia32 table.
pub fn syscall_name(id: u32) -> String {
    let nr = (id & !SYSCALL_ID_IA32) as usize;
    let name = if id & SYSCALL_ID_IA32 != 0 {
        ia32_name(nr)
    } else {
        syscalls::Sysno::new(nr).map(|s| s.name())
    };
    match name {
        Some(name) => name.to_string(),
        None if id & SYSCALL_ID_IA32 != 0 => format!("ia32_syscall_{nr}"),
        None => format!("syscall_{nr}"),
    }
}

#[cfg(target_arch = "x86_64")]
fn ia32_name(nr: usize) -> Option<&'static str> {
    syscalls::x86::Sysno::new(nr).map(|s| s.name())
}

#[cfg(not(target_arch = "x86_64"))]
fn ia32_name(_nr: usize) -> Option<&'static str> {
    None
}

/// Keys of the threads map, as the BPF side makes them.
type ThreadKey = (u32, u64);

/// A is at or before B, in interval numbers that wrap.
fn not_after(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

impl Syscall {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        // aggregates in maps: its ring buffer stays at the minimum
        let skel = load_skel(SyscallSkelBuilder::default(), NAME, MIN_RINGBUF)?;
        Ok(Syscall {
            skel,
            links: Vec::new(),
            exit_link: None,
            iter: None,
            target: None,
            seq_len: 10,
            top_threads: opts.top.or((!opts.json).then_some(DEFAULT_TEXT_TOP)),
            interval_start_ns: 0,
        })
    }

    /// The live target threads' figures, of those that made syscalls in
    /// the interval just closed (the task iterator).
    /// What the task iterator wrote: `syscall_live` records, read in place
    /// (each is kilobytes: copies of them were most of report's time).
    fn live_threads(&self) -> Result<Vec<u8>> {
        let link = self
            .iter
            .as_ref()
            .ok_or_else(|| anyhow!("syscall: the task iterator is not attached"))?;
        read_task_iter(link, NAME)
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
        // SAFETY: a u32 in the mapped .bss, which BPF only reads
        unsafe { std::ptr::write_volatile(&mut self.config()?.interval, old.wrapping_add(1)) };
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        self.interval_start_ns = now;
        // from here no program adds to interval `old`'s slots: read them whole
        wait_for_programs_in_flight();
        let lat = latency::take(&self.skel.maps.latencies, old)?;
        let slot = (old & 1) as usize;

        // counts by thread and syscall (an id may come from both maps: named() adds them up)
        let mut by_thread: HashMap<ThreadKey, Vec<(u32, u64)>> = HashMap::new();
        // (with whether they hold counts newer than this interval's)
        let mut count_keys: Vec<(ThreadKey, Vec<u8>, bool)> = Vec::new();
        for (k, v) in &hash_entries(&self.skel.maps.counts)? {
            let (Ok(key), Ok(c)) = (decode::<syscall_count_key>(k), decode::<syscall_count>(v))
            else {
                continue;
            };
            let thread = (key.pid, key.start_ns);
            if c.interval[slot] == old && c.count[slot] > 0 {
                by_thread
                    .entry(thread)
                    .or_default()
                    .push((key.id, c.count[slot]));
            }
            let newer = c.interval.iter().any(|&i| !not_after(i, old));
            count_keys.push((thread, k.to_vec(), newer));
        }

        let ns_per_tick = 1_000_000_000 / sys::clock_ticks_per_sec();
        // the live threads' figures (the iterator), then the exited ones'
        // (`threads`): in that order, a thread that exits meanwhile is in
        // one or both (BPF marks it for the iterator only once it is in
        // `threads`), with the same figures for this interval: it counts once
        let live = self.live_threads()?;
        let exited = hash_entries(&self.skel.maps.threads)?;
        let mut entries: HashMap<ThreadKey, &syscall_thread> =
            HashMap::with_capacity(exited.len() + live.len() / size_of::<syscall_live>());
        let mut done: Vec<(ThreadKey, Vec<u8>)> = Vec::new();
        for (k, v) in &exited {
            let (Ok(key), Ok(t)) = (decode::<syscall_thread_key>(k), decode::<syscall_thread>(v))
            else {
                continue;
            };
            let thread = (key.pid, key.start_ns);
            // its last figures are read now: the exit fell in this interval or before
            if not_after(t.exit_interval, old) {
                done.push((thread, k.to_vec()));
            }
            entries.insert(thread, t);
        }
        for chunk in live.chunks_exact(size_of::<syscall_live>()) {
            let Ok(l) = decode::<syscall_live>(chunk) else {
                continue;
            };
            entries.entry((l.key.pid, l.key.start_ns)).or_insert(&l.t);
        }
        let known: std::collections::HashSet<ThreadKey> = entries.keys().copied().collect();
        let mut threads = Vec::new();
        for (thread, t) in entries {
            // the counts kept in the entry itself (the rest are in `counts`)
            for c in &t.counts {
                if c.id_plus_one != 0 && c.interval[slot] == old && c.count[slot] > 0 {
                    by_thread
                        .entry(thread)
                        .or_default()
                        .push((c.id_plus_one - 1, c.count[slot]));
                }
            }
            let s = &t.slot[slot];
            if s.interval == old && s.count > 0 {
                threads.push((thread, t));
            }
        }

        threads.sort_by_key(|(_, t)| std::cmp::Reverse(t.slot[slot].count));
        let shown = self.top_threads.unwrap_or(usize::MAX).min(threads.len());
        for (key, t) in &threads[..shown] {
            let counts = by_thread.get(key).map(Vec::as_slice).unwrap_or(&[]);
            let rec = thread_record(
                now,
                interval_ns,
                key.0,
                t,
                &t.slot[slot],
                counts,
                self.seq_len,
                &lat,
            );
            // the whole system: which container or service each thread is in
            out.emit(&match target {
                Target::System => rec.cgroup(t.cgroup_id),
                _ => rec,
            });
        }
        if shown < threads.len() {
            // the threads not listed, summed: exporters count every syscall
            let rest = &threads[shown..];
            out.emit(&Record::new(
                now,
                Event::SyscallsRest(Rest {
                    interval_ns,
                    threads: rest.len(),
                    count: rest.iter().map(|(_, t)| t.slot[slot].count).sum::<u64>(),
                }),
            ));
        }

        let mut totals: Vec<(u32, u64)> = Vec::new();
        for (id, n) in by_thread.values().flatten() {
            totals.push((*id, *n));
        }
        // what BPF timed but could not put in a thread's or a name's entry (map full)
        let by_threads: u64 = threads.iter().map(|(_, t)| t.slot[slot].count).sum();
        let by_names: u64 = totals.iter().map(|(_, n)| n).sum();
        let (pid, tgid) = match target {
            Target::Thread { pid, tgid, .. } => (pid, tgid),
            Target::Group { tgid, .. } => (tgid, tgid),
            Target::System | Target::Idle { .. } | Target::Cgroup { .. } => (0, 0),
        };
        let total = Total {
            interval_ns,
            threads: threads.len(),
            latency: Figures::of(&lat),
            top: top_of(&totals),
            by_name: by_name_of(&totals),
            missed_threads: lat.target.count.saturating_sub(by_threads),
            missed_names: lat.target.count.saturating_sub(by_names),
        };
        out.emit(&Record::new(now, Event::SyscallsTotal(Box::new(total))).task(pid, tgid, ""));

        // exited threads go, with their counts; so do counts of a thread
        // not seen this interval that is gone (and has written no newer
        // counts: a live thread keyed by its exec's time looks gone to /proc)
        let gone: std::collections::HashSet<ThreadKey> = done.iter().map(|(t, _)| *t).collect();
        let done_keys: Vec<Vec<u8>> = done.into_iter().map(|(_, k)| k).collect();
        delete_keys(&self.skel.maps.threads, &done_keys);
        let mut orphans = Vec::new();
        for (thread, k, newer) in count_keys {
            let orphan = || {
                !newer
                    && !known.contains(&thread)
                    && !sys::task_alive(thread.0, thread.1 / ns_per_tick)
            };
            if gone.contains(&thread) || orphan() {
                orphans.push(k);
            }
        }
        delete_keys(&self.skel.maps.counts, &orphans);
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

impl Collector for Syscall {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Syscall
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.deactivate();
        self.exit_link = None;
        self.iter = None;
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
        // exit, exec and sched_switch before the entry: from the first
        // entry on, a syscall that is switched out moves to its task's
        // storage, and a task remembered as not the target is forgotten
        // when it (or its stack's owner) could become one
        // (held in locals until all are in: a failed attach detaches the rest)
        let exit = p
            .handle__sched_process_exit
            .attach()
            .context("attach syscall/sched_process_exit")?;
        let links = attach_all(&[
            ("syscall/sched_process_exec", &p.handle__sched_process_exec),
            ("syscall/sched_switch", &p.handle__sched_switch),
            ("syscall/sys_enter", &p.handle__sys_enter),
            ("syscall/sys_exit", &p.handle__sys_exit),
        ])?;
        let iter = p
            .handle__iter_task
            .attach()
            .context("attach syscall/iter_task")?;
        self.exit_link = Some(exit);
        self.links = links;
        self.iter = Some(iter);
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
        let result = self.on_interval(out);
        self.iter = None;
        self.exit_link = None;
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
mod tests {
    use super::*;
    use crate::bpf_intf::SYSCALL_SEQ_RING;
    use serde_json::json;

    #[test]
    fn names_come_from_the_table() {
        // x86_64 numbers; the table follows the build's architecture
        if cfg!(target_arch = "x86_64") {
            assert_eq!(syscall_name(39), "getpid");
            assert_eq!(syscall_name(231), "exit_group");
        }
        assert_eq!(syscall_name(10_000), "syscall_10000");
    }

    #[test]
    fn ia32_syscalls_are_named_from_the_ia32_table() {
        if cfg!(target_arch = "x86_64") {
            // 20: ia32 getpid, x86_64 writev; 252: ia32 exit_group, x86_64 ioprio_get
            assert_eq!(syscall_name(20), "writev");
            assert_eq!(syscall_name(20 | SYSCALL_ID_IA32), "getpid");
            assert_eq!(syscall_name(252 | SYSCALL_ID_IA32), "exit_group");
            assert_eq!(syscall_name(5000 | SYSCALL_ID_IA32), "ia32_syscall_5000");
            // the same name from both tables counts once, summed
            let by_name = by_name_of(&[(39, 2), (20 | SYSCALL_ID_IA32, 3), (20, 1)]);
            assert_eq!(
                serde_json::to_value(by_name).unwrap(),
                json!({"getpid": 5, "writev": 1})
            );
            assert_eq!(top_of(&[(39, 2), (20 | SYSCALL_ID_IA32, 3)])[0].count, 5);
        }
    }

    #[test]
    fn interval_order_wraps() {
        assert!(not_after(3, 3) && not_after(3, 4) && !not_after(4, 3));
        assert!(not_after(u32::MAX, 0) && !not_after(0, u32::MAX));
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
        let top = top_of(&[(39, 5), (1, 500), (110, 10_000), (0, 5)]);
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].count, 10_000);
        assert_eq!(top[1].count, 500);
    }
}
