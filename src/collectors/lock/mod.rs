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
//!
//! The kernel keeps a perf uprobe armed in a process only while the perf
//! event's own thread is alive in it, so the probe set is attached to two
//! live threads of the target ("anchors", see bpf/lock.bpf.c) and one more
//! is taken as soon as one of them exits.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle, UprobeOpts};

use super::{load_skel, read_stats, Activation, Collector, CollectorKind, Decoder, LoadOptions};
use crate::bpf_intf::{
    self, decode, lock_config, lock_event, LOCK_ANCHORS, LOCK_ANCHOR_EXIT, LOCK_COOKIE_PROBE_SHIFT,
    LOCK_COOKIE_SEQ_SHIFT, LOCK_EXEC, LOCK_F_OTHERS_LIVE, LOCK_NEW_THREAD,
};
use crate::losses::{Losses, Unprobed};
use crate::output::Output;
use crate::record::Record;
use crate::sys;
use crate::target::Target;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/lock.skel.rs"));
}
use skel::{LockSkel, LockSkelBuilder};

mod library;
mod records;
pub use library::{
    choose_symbol, file_offset, has_loader, open_library, own_probe, parse_maps,
    pthread_candidates, read_elf, read_library, DynSym, Library, Mapping, Probe, Segment,
    LIBRARY_MAX_BYTES,
};
use library::{find_library, no_library, read_maps, Role};
pub use records::*;

const NAME: &str = "lock";

/// After an exec, how long to wait for the dynamic loader to map a C library.
const EXEC_LIBRARY_WAIT: Duration = Duration::from_secs(2);

/// Live threads a process's probes are attached to (see the module doc).
const WANTED_ANCHORS: usize = 2;

/// The uprobe cookie (proc_image.h): type | op << 8, which probe of the set
/// (`probe`: 2 x its index, + 1 for a uretprobe) and which set (`seq`).
fn cookie(lock_type: u32, op: u32, probe: u32, seq: u32) -> u64 {
    u64::from(lock_type | (op << 8) | (probe << LOCK_COOKIE_PROBE_SHIFT))
        | (u64::from(seq) << LOCK_COOKIE_SEQ_SHIFT)
}

/// What the decoder learns for the collector: per-lock figures and execs.
#[derive(Default)]
struct Shared {
    /// (tgid, lock address) -> this interval's figures
    locks: BTreeMap<(u32, u64), LockSummary>,
    /// the target exec'd: (when seen, old pid, holds of the old image cleared)
    exec: Option<(Instant, u32, bool)>,
    /// anchors that exited: (tid, when, CLOCK_MONOTONIC ns)
    anchor_exits: Vec<(u32, u64)>,
    /// threads the target started while it had too few anchors
    new_threads: Vec<u32>,
    /// the anchors last published to BPF whose exit has not come yet
    live_anchors: Vec<u32>,
    /// the last of them ended while other threads of the process lived on,
    /// at this time (ns): their calls go unseen until a set is armed again
    unprobed_since: Option<u64>,
    /// meanwhile, the probed functions (offsets) seen to have lost their
    /// breakpoint (a call missed for sure each): if the process ends before
    /// a set is armed again, `flush` reports the window when there is one
    /// (the last threads of a process that ends one by one call nothing)
    unarmed_seen: BTreeSet<u64>,
}

// ---------------------------------------------------------------------
// The collector

/// One probe set, attached to one thread of the target.
struct Anchor {
    tid: u32,
    /// its probe set's seq (the uprobe cookie)
    seq: u32,
    /// the last time (CLOCK_MONOTONIC ns) this thread was seen alive, not
    /// exiting: its probes were armed then
    seen_alive_ns: u64,
    links: Vec<Link>,
}

pub struct Lock {
    skel: LockSkel<'static>,
    /// the probe sets attached now, oldest first
    anchors: Vec<Anchor>,
    /// the sets of anchors that exited, kept until a new set is armed:
    /// letting one go unregisters its uprobes, and the kernel then takes
    /// out the breakpoints no live set wants, which would pass for calls
    /// missed if the other anchor died meanwhile (see `unarmed_sites`)
    retiring: Vec<Anchor>,
    /// the seq of the next probe set: only grows, so a newer set always has
    /// a higher one (lock.bpf.c relies on it to drop repeated runs)
    next_seq: u32,
    /// the exec, thread-exit and new-thread hooks
    hooks: Vec<Link>,
    library: Option<Library>,
    /// the library file, open: probes are attached through /proc/self/fd/N,
    /// which names it after the leader is gone (its /proc/TGID/map_files
    /// with it) or the file was deleted
    library_file: Option<std::fs::File>,
    /// every anchor had exited, the last one at this time (ns) at the
    /// earliest: the probes are unarmed until another is attached
    unarmed_since: Option<u64>,
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
        self.hooks.clear();
        self.detach_anchors();
        self.reaper.wait();
    }
}

/// No probed thread was alive from `from` to `to` (ns) at most: the lock
/// calls of the others in between were not seen, `at_least` of them for
/// sure (one per probed function whose breakpoint the kernel took out; 0
/// when none was, yet a call in the last moments, while the new set was
/// being attached, leaves no trace: the window is reported all the same).
/// A `lost` record like the ones of app.rs, so whoever watches for losses
/// sees it.
fn unarmed_record(tgid: u32, from: u64, to: u64, at_least: u64) -> Record {
    eprintln!(
        "proc_image: lock: no probed thread of {tgid} was alive for {} ms: lock calls in that time were not seen ({at_least} at least)",
        to.saturating_sub(from) / 1_000_000
    );
    let unprobed = Unprobed {
        unprobed_from_ns: from,
        unprobed_to_ns: to,
        unseen_lock_calls_at_least: at_least,
    };
    let mut rec = Losses::default().record_unprobed(to, NAME, unprobed);
    rec.tgid = tgid;
    rec
}

/// Which of `probes` (of `lib`) lost their breakpoint in process `tgid`,
/// by offset: while no probed thread is alive, the first hit of each takes
/// it out, so each one without its int3 is a call not seen. Read through
/// a live thread, `tid` if it is (a zombie leader has no memory); none
/// when none lives.
fn unarmed_sites(tgid: u32, tid: u32, lib: &Library, probes: &[Probe]) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let live = thread_is_live(tgid, tid).then_some(tid);
    let Some(tid) = live.or_else(|| live_threads(tgid).first().copied()) else {
        return Vec::new();
    };
    let (Ok(maps), Ok(mem)) = (
        std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/maps")),
        std::fs::File::open(format!("/proc/{tgid}/task/{tid}/mem")),
    ) else {
        return Vec::new();
    };
    let mut unarmed = Vec::new();
    for p in probes {
        let addr = maps.lines().find_map(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            if f.len() < 6
                || f[4].parse::<u64>().ok()? != lib.mapping.inode
                || f[3] != lib.mapping.dev
            {
                return None;
            }
            let (start, end) = f[0].split_once('-')?;
            let (start, end) = (
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            );
            let off = u64::from_str_radix(f[2], 16).ok()?;
            (p.offset >= off && p.offset < off + (end - start)).then(|| start + p.offset - off)
        });
        let mut b = [0u8];
        if addr.is_some_and(|a| mem.read_exact_at(&mut b, a).is_ok() && b[0] != 0xcc) {
            unarmed.push(p.offset);
        }
    }
    unarmed
}

/// The live threads of a process, the leader first (a leader that called
/// pthread_exit() stays a zombie while its threads run: not live).
fn live_threads(tgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tgid}/task")) else {
        return Vec::new();
    };
    let mut tids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| thread_is_live(tgid, tid))
        .collect();
    tids.sort_by_key(|&t| (t != tgid, t));
    tids
}

/// Alive, and not exiting: an exiting thread may have dropped its mm
/// already (exit_mm() comes before the zombie state), and its probe set
/// stops matching then.
fn thread_is_live(tgid: u32, tid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/stat"))
        .is_ok_and(|stat| stat_is_live(&stat))
}

/// PF_EXITING in the flags of /proc/PID/stat: set as do_exit() starts.
const PF_EXITING: u64 = 0x4;

fn stat_is_live(stat: &str) -> bool {
    // the state and the rest follow the command's closing parenthesis
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    let mut f = rest.split_ascii_whitespace();
    let state = f.next().and_then(|s| s.chars().next());
    let flags = f.nth(5).and_then(|s| s.parse::<u64>().ok());
    !matches!(state, None | Some('Z' | 'X' | 'x')) && flags.is_some_and(|f| f & PF_EXITING == 0)
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
            anchors: Vec::new(),
            retiring: Vec::new(),
            next_seq: 1,
            hooks: Vec::new(),
            library: None,
            library_file: None,
            unarmed_since: None,
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

    fn attach_hooks(&mut self) -> Result<()> {
        let p = &self.skel.progs;
        self.hooks = vec![
            p.handle__exec
                .attach()
                .context("attach lock/sched_process_exec")?,
            p.handle__thread_exit
                .attach()
                .context("attach lock/sched_process_exit")?,
            p.handle__new_thread
                .attach()
                .context("attach lock/sched_process_fork")?,
        ];
        Ok(())
    }

    fn detach_anchors(&mut self) {
        for mut a in self.anchors.drain(..).chain(self.retiring.drain(..)) {
            self.reaper.detach(&mut a.links);
        }
    }

    /// Tell the BPF side which threads are anchors, and whether to report
    /// new threads (a process with fewer than two live anchors).
    fn publish_anchors(&mut self) -> Result<()> {
        let group = matches!(self.target, Some(Target::Group { .. }));
        let want = group && self.library.is_some() && self.anchors.len() < WANTED_ANCHORS;
        let mut tids = [0u32; LOCK_ANCHORS as usize];
        for (slot, a) in tids.iter_mut().zip(&self.anchors) {
            *slot = a.tid;
        }
        let oldest = self.anchors.iter().map(|a| a.seq).min();
        let oldest = oldest.unwrap_or(self.next_seq);
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .ok_or_else(|| anyhow!("lock: .bss is not mapped"))?;
        bss.cfg.anchors = tids;
        bss.cfg.want_threads = u32::from(want);
        // before the sets older than it go (see drop_stale in lock.bpf.c)
        bss.oldest_live_seq = oldest;
        let mut shared = self.shared.borrow_mut();
        shared.live_anchors = self.anchors.iter().map(|a| a.tid).collect();
        if !self.anchors.is_empty() {
            // armed again (a window before is reported by attach_anchor)
            shared.unprobed_since = None;
        }
        Ok(())
    }

    /// Attach every probe of `lib` to thread `tid` of process `tgid` (all or
    /// none) as the newest probe set.
    /// `replacing`: the process was probed before (not a first set). Then,
    /// if no other anchor was alive all through (a thread's liveness only
    /// ever ends), the probes were unarmed for a while: a `lost` record
    /// gives that window and the calls missed in it at least.
    fn attach_anchor(
        &mut self,
        tgid: u32,
        tid: u32,
        lib: &Library,
        replacing: bool,
    ) -> Result<Option<Record>> {
        let before = sys::monotonic_ns();
        let alive_before = self.others_alive(tgid, before);
        let seq = self.next_seq;
        self.next_seq += 1;
        use std::os::fd::AsRawFd;
        let path = match &self.library_file {
            Some(f) => format!("/proc/self/fd/{}", f.as_raw_fd()),
            None => lib.mapping.file(tgid),
        };
        let mut links = Vec::new();
        if let Err(e) = self.attach_into(&mut links, tid, &path, lib, seq, replacing) {
            if thread_is_live(tgid, tid) {
                self.reaper.detach(&mut links);
            } else {
                // its thread exited: a set like the dead anchors'
                self.retiring.push(Anchor {
                    tid,
                    seq,
                    seen_alive_ns: before,
                    links,
                });
            }
            return Err(e);
        }
        let armed_at = sys::monotonic_ns();
        let mut lost = None;
        if replacing && !self.others_alive(tgid, armed_at) {
            // the window starts when the last other anchor died: after it
            // was last seen alive (or its exit record's time)
            let from = if alive_before {
                before
            } else {
                self.anchors
                    .iter()
                    .map(|a| a.seen_alive_ns)
                    .chain(self.unarmed_since)
                    .max()
                    .unwrap_or(before)
            };
            let unseen = self.shared.borrow().unarmed_seen.len() as u64;
            lost = Some(unarmed_record(tgid, from, armed_at, unseen));
            // an unlock missed meanwhile left its hold recorded: four such
            // stale holds filled the thread's stack for that lock, and from
            // then on its every hold only counted as a deeper recursive one
            // (no record, ever again). BPF drops a full stack pushed
            // before this (push_hold in lock.bpf.c)
            if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
                bss.holds_epoch = bss.holds_epoch.wrapping_add(1);
            }
        }
        self.shared.borrow_mut().unarmed_seen.clear();
        self.unarmed_since = None;
        // armed: the sets of the dead anchors can go
        for mut a in std::mem::take(&mut self.retiring) {
            self.reaper.detach(&mut a.links);
        }
        self.anchors.push(Anchor {
            tid,
            seq,
            seen_alive_ns: armed_at,
            links,
        });
        Ok(lost)
    }

    /// Is one of the anchors alive (not exiting: an exiting thread may have
    /// lost its mm, and its probes with it)? Those found so are marked seen
    /// alive at `now`.
    fn others_alive(&mut self, tgid: u32, now: u64) -> bool {
        let mut any = false;
        for a in &mut self.anchors {
            if thread_is_live(tgid, a.tid) {
                a.seen_alive_ns = now;
                any = true;
            }
        }
        any
    }

    /// Probe `lib` in process `tgid` anew (at activation and after an
    /// exec): attach the new sets first, then let the previous ones go.
    /// After an exec those cannot fire any more (they filter on the old
    /// image's mm), and repeated runs are dropped in BPF, so old and new
    /// never count twice.
    fn attach(&mut self, tgid: u32, tids: &[u32], lib: &Library) -> Result<()> {
        // through the process (another mount namespace, a deleted file),
        // or a live thread's root when the leader is gone
        let first = tids.first().copied().unwrap_or(tgid);
        let open = |path: &str| open_library(path, LIBRARY_MAX_BYTES);
        let file = open(&lib.mapping.file(tgid))
            .or_else(|_| {
                open(&format!(
                    "/proc/{tgid}/task/{first}/root{}",
                    lib.mapping.path
                ))
            })
            .with_context(|| format!("open the C library {}", lib.mapping.path))?;
        let old_file = self.library_file.replace(file);
        let old = std::mem::take(&mut self.anchors);
        let mut attached = Ok(());
        for &tid in tids {
            attached = self.attach_anchor(tgid, tid, lib, false).map(drop);
            if attached.is_err() {
                break;
            }
        }
        if let Err(e) = attached {
            self.detach_anchors();
            self.anchors = old;
            self.library_file = old_file;
            return Err(e);
        }
        self.library = Some(lib.clone());
        self.unarmed_since = None;
        let published = self.publish_anchors();
        for mut a in old {
            self.reaper.detach(&mut a.links);
        }
        published
    }

    /// Attach `lib`'s probes to thread `tid` (of process `tgid`). When
    /// `replacing` a set while no anchor is alive: before each probe goes in
    /// (and puts back the breakpoints of the ones before it), the ones
    /// still to go are looked at for a breakpoint a call took out. On a
    /// loaded host the whole set takes seconds to attach, and the process
    /// may end meanwhile: what was seen by then is still reported.
    fn attach_into(
        &self,
        links: &mut Vec<Link>,
        tid: u32,
        path: &str,
        lib: &Library,
        seq: u32,
        replacing: bool,
    ) -> Result<()> {
        let p = &self.skel.progs;
        let pid = tid as i32;
        let tgid = self.target.as_ref().and_then(tgid_of).unwrap_or(tid);
        for (index, probe) in lib.probes.iter().enumerate() {
            // (with an anchor alive, every breakpoint is in)
            if replacing && !self.anchors.iter().any(|a| thread_is_live(tgid, a.tid)) {
                let unarmed = unarmed_sites(tgid, tid, lib, &lib.probes[index..]);
                self.shared.borrow_mut().unarmed_seen.extend(unarmed);
            }
            let offset = probe.offset as usize;
            let entry = 2 * index as u32;
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
                    // the return probe first: an entry this set sees then
                    // always gets its return run from this set (the kernel
                    // arranges a return only for the probes there at entry),
                    // or lock.bpf.c's drop_stale could not tell it was lost
                    links.push(
                        p.handle__lock_exit
                            .attach_uprobe_with_opts(
                                pid,
                                path,
                                offset,
                                opts(cookie(lock_type, op, entry + 1, seq), true),
                            )
                            .with_context(what)?,
                    );
                    links.push(
                        p.handle__lock_enter
                            .attach_uprobe_with_opts(
                                pid,
                                path,
                                offset,
                                opts(cookie(lock_type, op, entry, seq), false),
                            )
                            .with_context(what)?,
                    );
                }
                Role::SpinAttempt => links.push(
                    p.handle__spin_attempt
                        .attach_uprobe_with_opts(
                            pid,
                            path,
                            offset,
                            opts(cookie(0, 0, entry, seq), false),
                        )
                        .with_context(what)?,
                ),
                Role::Release { lock_type } => links.push(
                    p.handle__unlock
                        .attach_uprobe_with_opts(
                            pid,
                            path,
                            offset,
                            opts(cookie(lock_type, 0, entry, seq), false),
                        )
                        .with_context(what)?,
                ),
            }
        }
        Ok(())
    }

    /// Keep two live anchors in a traced process: drop the ones that
    /// exited, take new threads (or any live one) in their place. If every
    /// anchor exited before another was armed, the probes were unarmed
    /// meanwhile: a `lost` record gives the window and how many calls at
    /// least went unseen (see `attach_anchor`).
    /// Never fails: a thread that exits before it is attached to is passed over.
    fn tend_anchors(&mut self, out: &mut Output, look: bool) -> Result<()> {
        let (mut exits, news) = {
            let mut sh = self.shared.borrow_mut();
            (
                std::mem::take(&mut sh.anchor_exits),
                std::mem::take(&mut sh.new_threads),
            )
        };
        if look {
            // an exit whose record was lost (counted as a ring-buffer drop):
            // it died after it was last seen alive
            let traced = self.target.as_ref().and_then(tgid_of).unwrap_or_default();
            let now = sys::monotonic_ns();
            for a in &mut self.anchors {
                if thread_is_live(traced, a.tid) {
                    a.seen_alive_ns = now;
                } else if !exits.iter().any(|&(t, _)| t == a.tid) {
                    exits.push((a.tid, a.seen_alive_ns));
                }
            }
        }
        let look = look || !exits.is_empty();
        let mut gone = Vec::new();
        for (tid, at) in exits {
            if let Some(i) = self.anchors.iter().position(|a| a.tid == tid) {
                gone.push(self.anchors.remove(i));
                if self.anchors.is_empty() {
                    // none left: unarmed from the last exit on
                    self.unarmed_since = self.unarmed_since.max(Some(at));
                }
            }
        }
        if !gone.is_empty() {
            self.publish_anchors()?;
            // until a new set is armed: the anchor left may die meanwhile
            self.retiring.extend(gone);
        }
        let Some(Target::Group { tgid, .. }) = self.target else {
            return self.publish_anchors();
        };
        let Some(lib) = self.library.clone() else {
            return Ok(());
        };
        if self.anchors.is_empty() && self.shared.borrow().unprobed_since.is_some() {
            // note the calls missed so far now: the process may end before
            // another thread is probed (see flush)
            let unarmed = unarmed_sites(tgid, tgid, &lib, &lib.probes);
            self.shared.borrow_mut().unarmed_seen.extend(unarmed);
        }
        // BPF reports the threads that start while anchors are wanted; the
        // full look at /proc (every interval) catches one that started
        // before it was told to
        let quiet = news.is_empty() && !self.anchors.is_empty() && !look;
        if self.anchors.len() >= WANTED_ANCHORS || quiet {
            return self.publish_anchors();
        }
        let mut candidates: Vec<u32> = news
            .into_iter()
            .filter(|&t| thread_is_live(tgid, t))
            .collect();
        candidates.extend(live_threads(tgid));
        for tid in candidates {
            if self.anchors.len() >= WANTED_ANCHORS {
                break;
            }
            if self.anchors.iter().any(|a| a.tid == tid) || !thread_is_live(tgid, tid) {
                continue;
            }
            match self.attach_anchor(tgid, tid, &lib, true) {
                Ok(lost) => {
                    if let Some(r) = lost {
                        out.emit(&r);
                    }
                }
                // it exited meanwhile (ESRCH): the next one
                Err(e) => {
                    if thread_is_live(tgid, tid) {
                        eprintln!("proc_image: lock: attach the probes to thread {tid}: {e:#}");
                    }
                }
            }
        }
        self.publish_anchors()
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
            self.detach_anchors();
            self.library = None;
            self.library_file = None;
            self.publish_anchors()?;
            let msg = no_library(tgid).to_string();
            eprintln!("proc_image: lock: after exec, {msg}; no lock probes left in it");
            out.emit(
                &Record::new(now, Event::NoPthreadLibrary { reason: msg }).task(tgid, tgid, ""),
            );
            return Ok(());
        };
        let same = self
            .library
            .as_ref()
            .is_some_and(|old| !needs_reattach(&old.mapping, &lib.mapping, old_pid, tgid));
        if !same {
            // the exec left one thread: the leader
            self.attach(tgid, &[tgid], &lib)
                .context("reattach the lock probes after exec")?;
        }
        out.emit(
            &Record::new(
                now,
                Event::ProbesFollowExec {
                    library: lib.mapping.path.clone(),
                    probes: lib.probes.len(),
                    reattached: !same,
                },
            )
            .task(tgid, tgid, ""),
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
            bail!("lock needs -p TID or -P TGID (contention of any lock there: -M, futex): its uprobes cost ~14 us per lock call, so it never traces {target}");
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
        bpf_intf::copy_into(
            self.config()?,
            &lock_config {
                target: filter,
                ..Default::default()
            },
        );
        self.interval_start_ns = sys::monotonic_ns();
        self.target = Some(act.target);
        // -p: the traced thread itself; -P: two live threads, leader first
        let tids: Vec<u32> = match act.target {
            Target::Thread { pid, .. } => vec![pid],
            _ => live_threads(tgid)
                .into_iter()
                .take(WANTED_ANCHORS)
                .collect(),
        };
        if tids.is_empty() {
            self.deactivate();
            bail!("process {tgid} has no live thread left");
        }
        let attached = self
            .attach_hooks()
            .and_then(|()| self.attach(tgid, &tids, &lib));
        if let Err(e) = attached {
            self.deactivate();
            return Err(e);
        }
        Ok(())
    }

    fn deactivate(&mut self) {
        // match nothing from now on, even while the uprobes are detaching
        if let Ok(cfg) = self.config() {
            cfg.target.mode = u32::MAX;
            cfg.target.tgid = 0;
            cfg.anchors = [0; LOCK_ANCHORS as usize];
            cfg.want_threads = 0;
        }
        self.hooks.clear();
        self.detach_anchors();
        self.library = None;
        self.library_file = None;
        self.unarmed_since = None;
    }

    fn describe(&self, act: &Activation) -> String {
        let lib = self
            .library
            .as_ref()
            .map_or("?".to_string(), |l| l.mapping.path.clone());
        let tids: Vec<String> = self.anchors.iter().map(|a| a.tid.to_string()).collect();
        format!(
            "lock on {}: pthread mutex/rwlock/spinlock calls, {} uprobes on {lib}, attached to threads {}",
            act.target,
            self.anchors.iter().map(|a| a.links.len()).sum::<usize>(),
            tids.join(",")
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
                LOCK_ANCHOR_EXIT => {
                    s.anchor_exits.push((e.aux, e.hdr.ts_ns));
                    s.live_anchors.retain(|&t| t != e.aux);
                    if s.live_anchors.is_empty() && e.flags & LOCK_F_OTHERS_LIVE as u8 != 0 {
                        s.unprobed_since = Some(e.hdr.ts_ns);
                    }
                }
                LOCK_NEW_THREAD => s.new_threads.push(e.aux),
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
                self.follow_exec(seen, old_pid, out)?;
            }
            _ => {}
        }
        if self.target.is_some() && self.shared.borrow().exec.is_none() {
            self.tend_anchors(out, false)?;
        }
        Ok(())
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        if self.target.is_none() {
            return Ok(());
        }
        if self.shared.borrow().exec.is_none() {
            self.tend_anchors(out, true)?;
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
        // the process ended (or tracing did) before its remaining threads
        // were probed again: what they called meanwhile went unseen
        let (since, unseen) = {
            let mut sh = self.shared.borrow_mut();
            (
                sh.unprobed_since.take(),
                std::mem::take(&mut sh.unarmed_seen).len() as u64,
            )
        };
        if let (Some(from), Some(Target::Group { tgid, .. })) = (since, self.target) {
            if unseen > 0 {
                out.emit(&unarmed_record(tgid, from, sys::monotonic_ns(), unseen));
            }
        }
        self.target = None;
        self.shared.borrow_mut().exec = None;
        Ok(())
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
