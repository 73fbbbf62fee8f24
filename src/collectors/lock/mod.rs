//! lock: every pthread mutex, rwlock and spinlock acquisition of the target
//! (request, acquire and release times), failed try/timed locks, and a
//! summary per lock and interval. BPF side: bpf/lock.bpf.c.
//!
//! Uprobes cost ~14 us per hit on this machine, so they are attached only
//! to the target's process, at activation, on the C library that process
//! actually maps (glibc >= 2.34: libc.so.6; older: libpthread.so.0), and
//! detached with the activation. Whole-system and idle-task targets are
//! refused. When the target execs, the probes follow it into the new image.
//! Which library and which offsets to probe: library.rs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle, UprobeOpts};

use super::{load_skel, read_stats, Activation, Collector, CollectorKind, Decoder, LoadOptions};
use crate::bpf_intf::{
    self, c_str, collector_stats, decode, event_hdr, lock_config, lock_event, LOCK_EXEC,
    LOCK_FAILED, LOCK_F_CONTENDED, LOCK_MUTEX, LOCK_OP_LOCK, LOCK_OP_TIMED, LOCK_OP_TRY,
    LOCK_RELEASED, LOCK_RWLOCK, LOCK_RWLOCK_READ, LOCK_RWLOCK_WRITE, LOCK_SPINLOCK, LOCK_UNMATCHED,
};
use crate::output::{Output, Record};
use crate::sys;
use crate::target::Target;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/lock.skel.rs"));
}
use skel::{LockSkel, LockSkelBuilder};

mod library;
pub use library::{
    choose_symbol, file_offset, has_loader, own_probe, parse_maps, pthread_candidates, read_elf,
    DynSym, Library, Mapping, Probe, Segment,
};
use library::{find_library, no_library, read_maps, Role};

const NAME: &str = "lock";

/// After an exec, how long to wait for the dynamic loader to map a C library.
const EXEC_LIBRARY_WAIT: Duration = Duration::from_secs(2);

/// The uprobe cookie: LOCK_COOKIE() in proc_image.h.
fn cookie(lock_type: u32, op: u32) -> u64 {
    (lock_type | (op << 8)).into()
}

// ---------------------------------------------------------------------
// Records

pub fn type_name(t: u8) -> &'static str {
    match u32::from(t) {
        LOCK_MUTEX => "mutex",
        LOCK_RWLOCK_READ => "rwlock_read",
        LOCK_RWLOCK_WRITE => "rwlock_write",
        LOCK_SPINLOCK => "spinlock",
        LOCK_RWLOCK => "rwlock",
        _ => "unknown",
    }
}

fn op_name(op: u8) -> &'static str {
    match u32::from(op) {
        LOCK_OP_LOCK => "lock",
        LOCK_OP_TRY => "trylock",
        LOCK_OP_TIMED => "timedlock",
        _ => "unknown",
    }
}

/// The name of an errno a lock call returns.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::EBUSY => "EBUSY".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EDEADLK => "EDEADLK".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::EPERM => "EPERM".into(),
        libc::EOWNERDEAD => "EOWNERDEAD".into(),
        libc::ENOTRECOVERABLE => "ENOTRECOVERABLE".into(),
        other => format!("errno {other}"),
    }
}

/// One lock's figures over an interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockSummary {
    pub lock_type: &'static str,
    pub acquisitions: u64,
    /// attempts that found the lock held: acquisitions that had to wait for
    /// a holder, and failed try/timed locks
    pub contended: u64,
    pub failed: u64,
    pub unmatched_releases: u64,
    pub wait_total_ns: u64,
    pub wait_max_ns: u64,
    pub hold_total_ns: u64,
    pub hold_max_ns: u64,
}

impl LockSummary {
    fn add(&mut self, e: &lock_event) {
        let wait = e.acquire_ns.saturating_sub(e.request_ns);
        let contended = e.flags & LOCK_F_CONTENDED as u8 != 0;
        // an rwlock taken both ways is summarized as one rwlock
        let t = type_name(e.lock_type);
        self.lock_type = match (self.lock_type, t) {
            ("rwlock_read", "rwlock_write") | ("rwlock_write", "rwlock_read") => "rwlock",
            ("rwlock", "rwlock_read" | "rwlock_write") => "rwlock",
            _ => t,
        };
        match u32::from(e.hdr.kind) {
            LOCK_RELEASED => {
                let hold = e.release_ns.saturating_sub(e.acquire_ns);
                self.acquisitions += 1;
                self.wait_total_ns += wait;
                self.wait_max_ns = self.wait_max_ns.max(wait);
                self.hold_total_ns += hold;
                self.hold_max_ns = self.hold_max_ns.max(hold);
                self.contended += u64::from(contended);
            }
            LOCK_FAILED => {
                self.failed += 1;
                self.contended += u64::from(contended);
                self.wait_total_ns += wait;
                self.wait_max_ns = self.wait_max_ns.max(wait);
            }
            LOCK_UNMATCHED => self.unmatched_releases += 1,
            _ => {}
        }
    }
}

/// What the decoder learns for the collector: per-lock figures and execs.
#[derive(Default)]
struct Shared {
    /// (tgid, lock address) -> this interval's figures
    locks: BTreeMap<(u32, u64), LockSummary>,
    /// the target exec'd: (when seen, old pid, holds of the old image cleared)
    exec: Option<(Instant, u32, bool)>,
}

fn task_record(hdr: &event_hdr, event: &'static str) -> Record {
    Record::new(hdr.ts_ns, NAME, event).task(hdr.pid, hdr.tgid, c_str(&hdr.comm))
}

/// A ring-buffer record as an output record.
pub fn lock_record(e: &lock_event) -> Result<Record> {
    let kind = u32::from(e.hdr.kind);
    let addr = format!("{:#x}", e.lock_addr);
    let wait = e.acquire_ns.saturating_sub(e.request_ns);
    let contended = e.flags & LOCK_F_CONTENDED as u8 != 0;
    Ok(match kind {
        LOCK_RELEASED | LOCK_FAILED => {
            let released = kind == LOCK_RELEASED;
            let rec = task_record(&e.hdr, if released { "lock" } else { "lock_failed" })
                .field("lock_type", type_name(e.lock_type))
                .field("op", op_name(e.op))
                .field("lock_addr", addr)
                .field("request_ns", e.request_ns)
                .field("acquire_ns", e.acquire_ns)
                .field("release_ns", e.release_ns)
                .field("wait_ns", wait)
                .field(
                    "hold_ns",
                    if released {
                        e.release_ns.saturating_sub(e.acquire_ns)
                    } else {
                        0
                    },
                )
                .field("ret", e.ret)
                .field("contended", contended);
            if released {
                rec
            } else {
                rec.field("error", errno_name(e.ret))
            }
        }
        LOCK_UNMATCHED => {
            let rec = task_record(&e.hdr, "lock_unmatched")
                .field("lock_type", type_name(e.lock_type))
                .field("lock_addr", addr)
                .field("release_ns", e.release_ns);
            if u32::from(e.lock_type) == LOCK_RWLOCK_READ {
                rec.field("readers_left", e.aux)
            } else {
                rec
            }
        }
        LOCK_EXEC => task_record(&e.hdr, "exec").field("old_pid", e.aux),
        other => bail!("unknown lock record kind {other}"),
    })
}

fn summary_record(now: u64, interval_ns: u64, tgid: u32, addr: u64, s: &LockSummary) -> Record {
    Record::new(now, NAME, "lock_summary")
        .task(0, tgid, "")
        .field("lock_type", s.lock_type)
        .field("lock_addr", format!("{addr:#x}"))
        .field("interval_ns", interval_ns)
        .field("acquisitions", s.acquisitions)
        .field("contended", s.contended)
        .field("failed", s.failed)
        .field("unmatched_releases", s.unmatched_releases)
        .field("wait_total_ns", s.wait_total_ns)
        .field("wait_max_ns", s.wait_max_ns)
        .field("hold_total_ns", s.hold_total_ns)
        .field("hold_max_ns", s.hold_max_ns)
}

// ---------------------------------------------------------------------
// The collector

pub struct Lock {
    skel: LockSkel<'static>,
    /// the uprobes of the library attached now
    probes: Vec<Link>,
    exec_link: Option<Link>,
    library: Option<Mapping>,
    target: Option<Target>,
    shared: Rc<RefCell<Shared>>,
    interval_start_ns: u64,
    /// uprobes being detached in the background (see `Reaper`)
    reaper: Reaper,
}

/// After an exec, must the probes be attached anew? They are registered on
/// the library's inode with a filter on the target task's mm. When the
/// group leader itself exec'd and the new image maps the same library, the
/// kernel re-armed them as the loader mapped it. Otherwise (another library,
/// or a non-leader thread exec'd and took over the group, leaving the probes
/// filtering on the dead leader) they would never fire again.
pub fn needs_reattach(old: &Mapping, new: &Mapping, old_pid: u32, tgid: u32) -> bool {
    old.dev != new.dev || old.inode != new.inode || old_pid != tgid
}

/// Detaches uprobes off the main loop. Each perf-event uprobe waits for an
/// RCU grace period when it goes, and the kernel takes them one at a time
/// (~85 ms each here: 31 take 2.7 s). Once their programs match nothing
/// (see `Lock::deactivate`) they only cost the target a trap per call until
/// gone, so proc_image answers first and waits for them only before it
/// attaches the same probes again, and before it exits.
#[derive(Default)]
struct Reaper(Vec<std::thread::JoinHandle<()>>);

impl Reaper {
    fn detach(&mut self, links: &mut Vec<Link>) {
        if links.is_empty() {
            return;
        }
        let links = std::mem::take(links);
        self.0.push(std::thread::spawn(move || drop(links)));
    }

    fn wait(&mut self) {
        for t in self.0.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.exec_link = None;
        self.reaper.detach(&mut self.probes);
        self.reaper.wait();
    }
}

fn tgid_of(target: &Target) -> Option<u32> {
    match *target {
        Target::Thread { tgid, .. } | Target::Group { tgid, .. } => Some(tgid),
        Target::System | Target::Idle { .. } | Target::Cgroup { .. } => None,
    }
}

impl Lock {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let skel = load_skel(LockSkelBuilder::default(), NAME, opts.ringbuf_bytes)?;
        Ok(Lock {
            skel,
            probes: Vec::new(),
            exec_link: None,
            library: None,
            target: None,
            shared: Rc::default(),
            interval_start_ns: 0,
            reaper: Reaper::default(),
        })
    }

    fn config(&mut self) -> Result<&mut skel::types::lock_config> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cfg)
            .ok_or_else(|| anyhow!("lock: .bss is not mapped"))
    }

    /// Forget every hold: they belong to an earlier activation or image.
    fn clear_holds(&self) {
        for map in [
            &self.skel.maps.holds as &dyn MapCore,
            &self.skel.maps.lock_state,
        ] {
            let keys: Vec<Vec<u8>> = map.keys().collect();
            for k in keys {
                let _ = map.delete(&k);
            }
        }
    }

    /// Attach every probe of `lib` to process `tgid` (all or none), then let
    /// the previous ones go. After an exec those cannot fire any more (they
    /// filter on the old image's mm), so old and new never count twice.
    fn attach(&mut self, tgid: u32, lib: &Library) -> Result<()> {
        let path = lib.mapping.file(tgid);
        let mut links = Vec::new();
        let attached = self.attach_into(&mut links, tgid, &path, lib);
        if let Err(e) = attached {
            self.reaper.detach(&mut links);
            return Err(e);
        }
        std::mem::swap(&mut self.probes, &mut links);
        self.reaper.detach(&mut links);
        self.library = Some(lib.mapping.clone());
        Ok(())
    }

    fn attach_into(
        &self,
        links: &mut Vec<Link>,
        tgid: u32,
        path: &str,
        lib: &Library,
    ) -> Result<()> {
        let p = &self.skel.progs;
        for probe in &lib.probes {
            let offset = probe.offset as usize;
            let what = || {
                format!(
                    "attach a uprobe to {} in {}",
                    probe.function, lib.mapping.path
                )
            };
            let opts = |cookie, retprobe| UprobeOpts {
                cookie,
                retprobe,
                ..Default::default()
            };
            match probe.role {
                Role::Acquire { lock_type, op } => {
                    let c = cookie(lock_type, op);
                    links.push(
                        p.handle__lock_enter
                            .attach_uprobe_with_opts(tgid as i32, path, offset, opts(c, false))
                            .with_context(what)?,
                    );
                    links.push(
                        p.handle__lock_exit
                            .attach_uprobe_with_opts(tgid as i32, path, offset, opts(c, true))
                            .with_context(what)?,
                    );
                }
                Role::SpinAttempt => links.push(
                    p.handle__spin_attempt
                        .attach_uprobe_with_opts(tgid as i32, path, offset, opts(0, false))
                        .with_context(what)?,
                ),
                Role::Release { lock_type } => links.push(
                    p.handle__unlock
                        .attach_uprobe_with_opts(
                            tgid as i32,
                            path,
                            offset,
                            opts(cookie(lock_type, 0), false),
                        )
                        .with_context(what)?,
                ),
            }
        }
        Ok(())
    }

    /// The target exec'd: follow it into the new image once its C library
    /// is mapped (the loader maps it after the exec), or say it has none.
    fn follow_exec(&mut self, seen: Instant, old_pid: u32, out: &mut Output) -> Result<()> {
        let Some(tgid) = self.target.as_ref().and_then(tgid_of) else {
            self.shared.borrow_mut().exec = None;
            return Ok(());
        };
        let Ok(maps) = read_maps(tgid) else {
            // gone: the liveness check ends the activation
            self.shared.borrow_mut().exec = None;
            return Ok(());
        };
        let now = sys::monotonic_ns();
        let lib = find_library(tgid, &maps)?;
        if lib.is_none() && has_loader(&maps) && seen.elapsed() < EXEC_LIBRARY_WAIT {
            return Ok(()); // the loader has not mapped it yet: next poll
        }
        self.shared.borrow_mut().exec = None;
        let Some(lib) = lib else {
            self.reaper.detach(&mut self.probes);
            self.library = None;
            let msg = no_library(tgid).to_string();
            eprintln!("proc_image: lock: after exec, {msg}; no lock probes left in it");
            out.emit(
                &Record::new(now, NAME, "no_pthread_library")
                    .task(tgid, tgid, "")
                    .field("reason", msg),
            );
            return Ok(());
        };
        let same = self
            .library
            .as_ref()
            .is_some_and(|old| !needs_reattach(old, &lib.mapping, old_pid, tgid));
        if !same {
            self.attach(tgid, &lib)
                .context("reattach the lock probes after exec")?;
        }
        out.emit(
            &Record::new(now, NAME, "probes_follow_exec")
                .task(tgid, tgid, "")
                .field("library", lib.mapping.path.clone())
                .field("probes", lib.probes.len())
                .field("reattached", !same),
        );
        Ok(())
    }
}

impl Collector for Lock {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Lock
    }

    /// A process with a shared C library (so `controller -a` without
    /// collector flags skips lock for a static program instead of failing).
    fn check_target(&self, target: &Target) -> Result<()> {
        let Some(tgid) = tgid_of(target) else {
            // short: the control record carries 128 bytes of message
            bail!("lock needs -p TID or -P TGID: its uprobes cost ~14 us per lock call, so it never traces {target}");
        };
        find_library(tgid, &read_maps(tgid)?)?.ok_or_else(|| no_library(tgid))?;
        Ok(())
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.deactivate();
        if tgid_of(&act.target).is_none() {
            self.check_target(&act.target)?;
        }
        // the same probes attached twice would count every call twice
        self.reaper.wait();
        let tgid = tgid_of(&act.target).unwrap_or_default();
        let lib = find_library(tgid, &read_maps(tgid)?)?.ok_or_else(|| no_library(tgid))?;
        self.clear_holds();
        *self.shared.borrow_mut() = Shared::default();
        let mut filter = act.filter();
        filter.tgid = tgid; // the exec hook matches the group in -p mode too
        bpf_intf::copy_into(self.config()?, &lock_config { target: filter });
        self.interval_start_ns = sys::monotonic_ns();
        self.target = Some(act.target);
        let attached = self.attach(tgid, &lib).and_then(|()| {
            self.skel
                .progs
                .handle__exec
                .attach()
                .context("attach lock/sched_process_exec")
        });
        match attached {
            Ok(link) => {
                self.exec_link = Some(link);
                Ok(())
            }
            Err(e) => {
                self.deactivate();
                Err(e)
            }
        }
    }

    fn deactivate(&mut self) {
        // match nothing from now on, even while the uprobes are detaching
        if let Ok(cfg) = self.config() {
            cfg.target.mode = u32::MAX;
            cfg.target.tgid = 0;
        }
        self.exec_link = None;
        self.reaper.detach(&mut self.probes);
        self.library = None;
    }

    fn describe(&self, act: &Activation) -> String {
        let lib = self
            .library
            .as_ref()
            .map_or("?".to_string(), |m| m.path.clone());
        format!(
            "lock on {}: pthread mutex/rwlock/spinlock calls, {} uprobes on {lib}",
            act.target,
            self.probes.len()
        )
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("lock ring buffer")
    }

    fn decoder(&self) -> Decoder {
        let shared = self.shared.clone();
        Box::new(move |data| {
            let e = decode::<lock_event>(data)?;
            let mut s = shared.borrow_mut();
            match u32::from(e.hdr.kind) {
                LOCK_EXEC => s.exec = Some((Instant::now(), e.aux, false)),
                _ => s.locks.entry((e.hdr.tgid, e.lock_addr)).or_default().add(e),
            }
            lock_record(e)
        })
    }

    fn service(&mut self, out: &mut Output) -> Result<()> {
        let exec = self.shared.borrow().exec;
        match exec {
            Some((seen, old_pid, cleared)) if self.target.is_some() => {
                if !cleared {
                    // the old image's holds and locks are gone with it
                    self.clear_holds();
                    self.shared.borrow_mut().exec = Some((seen, old_pid, true));
                }
                self.follow_exec(seen, old_pid, out)
            }
            _ => Ok(()),
        }
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        if self.target.is_none() {
            return Ok(());
        }
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        self.interval_start_ns = now;
        let locks = std::mem::take(&mut self.shared.borrow_mut().locks);
        for ((tgid, addr), s) in &locks {
            out.emit(&summary_record(now, interval_ns, *tgid, *addr, s));
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Output) -> Result<()> {
        self.on_interval(out)?;
        self.target = None;
        self.shared.borrow_mut().exec = None;
        Ok(())
    }

    fn stats(&self) -> Result<collector_stats> {
        read_stats(&self.skel.maps.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::library::tests::MAPS;
    use super::*;

    fn event(kind: u32, request: u64, acquire: u64, release: u64, ret: i32) -> lock_event {
        let mut e = lock_event::default();
        e.hdr.kind = kind as u8;
        e.hdr.pid = 11;
        e.hdr.tgid = 10;
        e.lock_addr = 0x7f00_1000;
        e.request_ns = request;
        e.acquire_ns = acquire;
        e.release_ns = release;
        e.ret = ret;
        e
    }

    #[test]
    fn records_carry_wait_and_hold() {
        let mut e = event(LOCK_RELEASED, 100, 150, 1150, 0);
        e.flags = LOCK_F_CONTENDED as u8;
        let r = lock_record(&e).unwrap();
        assert_eq!(r.event, "lock");
        assert_eq!(r.get("lock_addr").unwrap(), "0x7f001000");
        assert_eq!(r.get("wait_ns").unwrap(), 50);
        assert_eq!(r.get("hold_ns").unwrap(), 1000);
        assert_eq!(r.get("lock_type").unwrap(), "mutex");
        assert_eq!(r.get("contended").unwrap(), true);

        let mut f = event(LOCK_FAILED, 100, 120, 0, libc::EBUSY);
        f.op = LOCK_OP_TRY as u8;
        let r = lock_record(&f).unwrap();
        assert_eq!(r.event, "lock_failed");
        assert_eq!(r.get("ret").unwrap(), 16);
        assert_eq!(r.get("error").unwrap(), "EBUSY");
        assert_eq!(r.get("hold_ns").unwrap(), 0);
        assert_eq!(r.get("op").unwrap(), "trylock");

        let mut s = LockSummary::default();
        s.add(&e);
        s.add(&event(LOCK_RELEASED, 2000, 2000, 5000, 0));
        s.add(&f);
        s.add(&event(LOCK_UNMATCHED, 0, 0, 9000, 0));
        assert_eq!(
            (s.acquisitions, s.contended, s.failed, s.unmatched_releases),
            (2, 1, 1, 1)
        );
        assert_eq!((s.hold_total_ns, s.hold_max_ns), (4000, 3000));
        assert_eq!((s.wait_total_ns, s.wait_max_ns), (70, 50));
        assert!(lock_record(&event(99, 0, 0, 0, 0)).is_err());
    }

    #[test]
    fn only_processes_are_targets_and_names_are_stable() {
        assert!(tgid_of(&Target::System).is_none());
        assert!(tgid_of(&Target::Idle { cpu: 0 }).is_none());
        let t = Target::Thread {
            pid: 12,
            tgid: 10,
            start_ticks: 0,
        };
        assert_eq!(tgid_of(&t), Some(10));
        assert_eq!(type_name(LOCK_SPINLOCK as u8), "spinlock");
        assert_eq!(errno_name(110), "ETIMEDOUT");
    }

    #[test]
    fn exec_reattaches_unless_the_leader_kept_the_library() {
        let maps = parse_maps(MAPS);
        let (libc, other) = (&maps[1], &maps[3]);
        assert!(!needs_reattach(libc, libc, 10, 10));
        assert!(needs_reattach(libc, libc, 11, 10), "a non-leader exec'd");
        assert!(needs_reattach(libc, other, 10, 10), "another library");
    }
}
