//! futex: every contended futex wait of the target (pthread, musl, Rust std,
//! any runtime: the fast path of a lock never enters the kernel, so a futex
//! wait syscall is a contended wait), the thread whose futex wake woke it,
//! and figures per futex address and interval. BPF side: bpf/futex.bpf.c,
//! on the per-syscall tracepoints of the futex syscalls and sched_waking.
//!
//! Its records, and what they add to the metrics and the trace, are in
//! futex/records.rs.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle, TracepointCategory};

use super::{
    delete_keys, hash_entries, load_skel, read_stats, wait_for_programs_in_flight, Activation,
    Collector, CollectorKind, Decoder, LoadOptions,
};
use crate::bpf_intf::{
    self, c_str, decode, futex_addr_key, futex_config, futex_figures, futex_part, futex_part_key,
    futex_wait_event, FUTEX_WAITER, FUTEX_WAKER,
};
use crate::losses::Losses;
use crate::output::Output;
use crate::sys;
use crate::target::Target;

mod records;
pub use records::*;

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
    let syscalls = crate::sys::tracing_dir()?.join("events/syscalls");
    syscalls.is_dir().then(|| syscalls.join(name).is_dir())
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
        let mut done: Vec<Vec<u8>> = Vec::new();
        for (k, v) in &hash_entries(&self.skel.maps.futexes)? {
            let (Ok(key), Ok(f)) = (decode::<futex_addr_key>(k), decode::<futex_figures>(v)) else {
                continue;
            };
            if key.slot == slot {
                sums.push(((key.tgid, key.uaddr), *f));
                done.push(k.to_vec());
            }
        }
        type Parties = (Vec<Party>, Vec<Party>);
        let mut by_addr: HashMap<(u32, u64), Parties> = HashMap::new();
        let mut parts_done: Vec<Vec<u8>> = Vec::new();
        for (k, v) in &hash_entries(&self.skel.maps.parts)? {
            let (Ok(key), Ok(p)) = (decode::<futex_part_key>(k), decode::<futex_part>(v)) else {
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
            parts_done.push(k.to_vec());
        }
        delete_keys(&self.skel.maps.futexes, &done);
        delete_keys(&self.skel.maps.parts, &parts_done);

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

    fn stats(&self) -> Result<Losses> {
        read_stats(&self.skel.maps.stats)
    }

    fn object(&self) -> &libbpf_rs::Object {
        libbpf_rs::skel::Skel::object(&self.skel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf_intf::{FUTEX_K_WAIT_BITSET, FUTEX_RECORD_WAIT};
    use serde_json::json;

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
        let keys: Vec<String> = rec.details().into_iter().map(|(k, _)| k).collect();
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
    fn the_exporter_fills_the_wait_histogram_and_address_counters() {
        use crate::metrics::{Exporter, Val};
        use crate::record::families::Fam;
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
}
