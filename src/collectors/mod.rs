//! The collectors, and what they have in common: loading a skeleton up
//! front, activating it for a target, and reading its health counters.
//!
//! A collector is loaded and verified when proc_image starts but attaches
//! its programs only when activated, so a waiting proc_image costs the
//! traced system nothing. Adding a collector: its bpf/<name>.bpf.c, a line
//! in build.rs, a variant here and a module implementing `Collector`.

pub mod keytime;
pub mod latency;
pub mod lock;
pub mod resource;
pub mod schedule;
pub mod syscall;

use std::fmt;
use std::mem::MaybeUninit;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenObject};

use crate::bpf_intf::{collector_stats, PI_KEYTIME, PI_LOCK, PI_RESOURCE, PI_SCHEDULE, PI_SYSCALL};
use crate::output::{Output, Record};
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CollectorKind {
    Keytime,
    Lock,
    Resource,
    Syscall,
    Schedule,
}

impl CollectorKind {
    pub const ALL: [CollectorKind; 5] = [
        CollectorKind::Keytime,
        CollectorKind::Lock,
        CollectorKind::Resource,
        CollectorKind::Syscall,
        CollectorKind::Schedule,
    ];

    /// Its number in the control records (enum pi_collector).
    pub fn index(self) -> usize {
        (match self {
            CollectorKind::Keytime => PI_KEYTIME,
            CollectorKind::Lock => PI_LOCK,
            CollectorKind::Resource => PI_RESOURCE,
            CollectorKind::Syscall => PI_SYSCALL,
            CollectorKind::Schedule => PI_SCHEDULE,
        }) as usize
    }

    /// Its bit in the masks of the control records.
    pub fn bit(self) -> u32 {
        1 << self.index()
    }

    pub fn name(self) -> &'static str {
        match self {
            CollectorKind::Keytime => "keytime",
            CollectorKind::Lock => "lock",
            CollectorKind::Resource => "resource",
            CollectorKind::Syscall => "syscall",
            CollectorKind::Schedule => "schedule",
        }
    }

    /// The flag that selects it, in both proc_image and controller.
    pub fn flag(self) -> &'static str {
        match self {
            CollectorKind::Keytime => "-k",
            CollectorKind::Lock => "-l",
            CollectorKind::Resource => "-r",
            CollectorKind::Syscall => "-s",
            CollectorKind::Schedule => "-S",
        }
    }

    pub fn from_mask(mask: u32) -> Vec<CollectorKind> {
        Self::ALL
            .into_iter()
            .filter(|k| mask & k.bit() != 0)
            .collect()
    }

    pub fn mask(kinds: &[CollectorKind]) -> u32 {
        kinds.iter().fold(0, |m, k| m | k.bit())
    }

    pub fn names(mask: u32) -> String {
        let names: Vec<&str> = Self::from_mask(mask).into_iter().map(Self::name).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

impl fmt::Display for CollectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What controller asked for, as every collector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation {
    pub target: Target,
    /// Bumped at every activation: per-task state from an earlier one is stale.
    pub generation: u32,
    pub keytime_level: u32,
    pub syscall_seq_len: u32,
    pub interval_ms: u32,
    /// Never traced as part of the whole system: proc_image's own thread
    /// group, unless controller -m asked for it (then 0).
    pub exclude_tgid: u32,
}

impl Activation {
    /// The target as the BPF programs match it.
    pub fn filter(&self) -> crate::bpf_intf::target_filter {
        self.target.filter(self.generation, self.exclude_tgid)
    }
}

/// Settings that apply when collectors are loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Size of each collector's record ring buffer (a power of two).
    pub ringbuf_bytes: u32,
    /// Whole-system keytime: threads listed per interval in text output.
    pub top: Option<usize>,
    pub json: bool,
}

/// A page: the ring buffer of a collector that reports through maps only.
pub const MIN_RINGBUF: u32 = 4096;

/// After a collector points its BPF side at the next interval's slot (or
/// map), how long it leaves the old one before reading and clearing it: a
/// program that read the old slot number just before the switch may still
/// be adding to it, for microseconds.
pub const SLOT_SETTLE: std::time::Duration = std::time::Duration::from_millis(1);

/// Return once every BPF program that was running when called has finished.
///
/// A collector that points its BPF side at the next interval's slot calls
/// this before it reads (and clears) the old one: a program that read the
/// old slot number just before the switch may still be adding to it, and a
/// stalled vCPU can stretch that far beyond any fixed sleep. Tracing
/// programs run inside an RCU read-side section (non-sleepable: preemption
/// or rcu_read_lock), so an RCU grace period waits for all of them. The
/// kernel waits one (synchronize_rcu) before it returns from an update of a
/// map-in-map, so that user space knows no program still uses the old inner
/// map: updating a small one of our own is that wait, on every kernel that
/// runs tp_btf programs. Should it not be had, membarrier(GLOBAL) also
/// calls synchronize_rcu (on more than one online CPU); the last resort is a
/// settle sleep, logged once.
pub fn wait_for_programs_in_flight() {
    use std::sync::OnceLock;
    static GRACE: OnceLock<Option<(MapHandle, MapHandle)>> = OnceLock::new();
    let grace = GRACE.get_or_init(|| match grace_period_maps() {
        Ok(maps) => Some(maps),
        Err(e) => {
            eprintln!("proc_image: no map-in-map for RCU grace periods ({e:#}): membarrier or a settle sleep instead");
            None
        }
    });
    if let Some((inner, outer)) = grace {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = inner.as_fd().as_raw_fd() as u32;
        if outer
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .is_ok()
        {
            return;
        }
    }
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes plain integers.
    let cmds = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0) };
    if cmds > 0 && cmds & MEMBARRIER_CMD_GLOBAL != 0 && crate::sys::online_cpus().len() > 1 {
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) } == 0 {
            return;
        }
    }
    std::thread::sleep(SLOT_SETTLE);
}

/// An array-of-maps of one slot and an array to put in it.
fn grace_period_maps() -> Result<(MapHandle, MapHandle)> {
    use libbpf_rs::libbpf_sys::bpf_map_create_opts;
    use libbpf_rs::MapType;
    use std::os::fd::{AsFd, AsRawFd};
    let plain = bpf_map_create_opts {
        sz: std::mem::size_of::<bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let inner = MapHandle::create(MapType::Array, Some("pi_grace_in"), 4, 4, 1, &plain)
        .context("create the inner map")?;
    let outer_opts = bpf_map_create_opts {
        inner_map_fd: inner.as_fd().as_raw_fd() as u32,
        ..plain
    };
    let outer = MapHandle::create(MapType::ArrayOfMaps, Some("pi_grace"), 4, 4, 1, &outer_opts)
        .context("create the map-in-map")?;
    Ok((inner, outer))
}

/// Turns one ring-buffer record into an output record, or into nothing (a
/// record only proc_image itself acts on).
pub type Decoder = Box<dyn FnMut(&[u8]) -> Result<Option<Record>>>;

pub trait Collector {
    fn kind(&self) -> CollectorKind;

    /// Refuse a target this collector cannot trace, before anything changes.
    fn check_target(&self, _target: &Target) -> Result<()> {
        Ok(())
    }

    /// Configure the BPF side for `act` and attach. On error nothing stays attached.
    fn activate(&mut self, act: &Activation) -> Result<()>;

    /// Detach everything; the programs stay loaded for the next activation.
    fn deactivate(&mut self);

    /// A text line describing the activation, printed above its records.
    fn describe(&self, act: &Activation) -> String {
        format!("{} on {}", self.kind(), act.target)
    }

    /// The ring buffer its programs write records into (an fd of its own).
    fn events(&self) -> Result<MapHandle>;

    /// Turns one ring-buffer record into an output record. A collector that
    /// reports through maps only keeps this default.
    fn decoder(&self) -> Decoder {
        let kind = self.kind();
        Box::new(move |_| Err(anyhow!("the {kind} collector sends no ring-buffer records")))
    }

    /// Called after every poll of the ring buffers while active: act on what
    /// the records said (lock: follow the target into a new image).
    fn service(&mut self, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    /// Called once per reporting interval while active: emit summaries.
    fn on_interval(&mut self, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    /// Called when the activation ends (deactivate, target gone, exit), after
    /// the ring buffer was drained: emit what is left of the last interval.
    fn flush(&mut self, out: &mut Output) -> Result<()> {
        self.on_interval(out)
    }

    /// The per-CPU health counters, summed over CPUs.
    fn stats(&self) -> Result<collector_stats>;
}

/// Load every collector in `kinds`; the first failure is the error.
pub fn load(kinds: &[CollectorKind], opts: &LoadOptions) -> Result<Vec<Box<dyn Collector>>> {
    kinds
        .iter()
        .map(|&kind| -> Result<Box<dyn Collector>> {
            match kind {
                CollectorKind::Keytime => Ok(Box::new(keytime::Keytime::load(opts)?)),
                CollectorKind::Lock => Ok(Box::new(lock::Lock::load(opts)?)),
                CollectorKind::Resource => Ok(Box::new(resource::Resource::load(opts)?)),
                CollectorKind::Syscall => Ok(Box::new(syscall::Syscall::load(opts)?)),
                CollectorKind::Schedule => Ok(Box::new(schedule::Schedule::load(opts)?)),
            }
        })
        .collect()
}

/// Open and load (verify) a skeleton, sizing its `events` ring buffer.
///
/// The skeleton borrows its object storage for its whole life. A collector
/// lives as long as proc_image, so the storage is leaked once per collector
/// rather than threading a lifetime through every type.
pub fn load_skel<B>(
    builder: B,
    name: &str,
    ringbuf_bytes: u32,
) -> Result<<B::Output as OpenSkel<'static>>::Output>
where
    B: SkelBuilder<'static>,
{
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = builder
        .open(storage)
        .with_context(|| format!("open the {name} BPF object"))?;
    for mut map in open.open_object_mut().maps_mut() {
        if map.name() == "events" {
            map.set_max_entries(ringbuf_bytes)
                .with_context(|| format!("size the {name} ring buffer"))?;
        }
    }
    open.load().with_context(|| {
        format!("load and verify the {name} BPF programs (run with -v for the verifier log)")
    })
}

/// Sum a per-CPU `collector_stats` array over the CPUs.
pub fn read_stats(map: &dyn MapCore) -> Result<collector_stats> {
    let per_cpu = map
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("read collector stats")?
        .unwrap_or_default();
    let mut sum = collector_stats::default();
    for bytes in per_cpu {
        let mut s = collector_stats::default();
        if plain::copy_from_bytes(&mut s, &bytes).is_ok() {
            sum.events += s.events;
            sum.ringbuf_drops += s.ringbuf_drops;
            sum.map_full += s.map_full;
            sum.no_task_state += s.no_task_state;
        }
    }
    Ok(sum)
}

/// Attach a set of programs as one: all of them or none.
pub fn attach_all(progs: &[(&str, &libbpf_rs::ProgramMut<'_>)]) -> Result<Vec<libbpf_rs::Link>> {
    progs
        .iter()
        .map(|(name, prog)| prog.attach().with_context(|| format!("attach {name}")))
        .collect()
}

/// Every entry of a hash map, read in batches. libbpf-rs's `lookup_batch`
/// iterator ends at the first batch shorter than asked for, but a hash map
/// batch holds whole buckets only and comes back short whenever the next
/// bucket does not fit: with thousands of entries it stopped part way. This
/// goes on until the kernel says ENOENT. Entries BPF adds meanwhile may or
/// may not be in it; none that was there all along is left out.
pub fn hash_entries(map: &dyn MapCore) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use libbpf_rs::libbpf_sys;
    use std::os::fd::AsRawFd;
    let (key_size, value_size) = (map.key_size() as usize, map.value_size() as usize);
    let mut per_call: usize = 1024;
    let mut out = Vec::new();
    // the batch token: a bucket index for hash maps (8 bytes is room enough)
    let mut token = vec![0u8; key_size.max(8)];
    let mut next = vec![0u8; key_size.max(8)];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; key_size * per_call];
        let mut values = vec![0u8; value_size * per_call];
        let mut count = per_call as u32;
        let opts = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        // SAFETY: the buffers hold `count` keys and values and a token each.
        let ret = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                if first {
                    std::ptr::null_mut()
                } else {
                    token.as_mut_ptr().cast()
                },
                next.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        let err = (ret < 0).then(std::io::Error::last_os_error);
        match err.as_ref().and_then(|e| e.raw_os_error()) {
            Some(libc::ENOSPC) => {
                // one bucket holds more than a call's room
                per_call *= 2;
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => {
                return Err(err.unwrap())
                    .with_context(|| format!("read map {}", map.name().to_string_lossy()))
            }
        }
        for i in 0..count as usize {
            out.push((
                keys[i * key_size..(i + 1) * key_size].to_vec(),
                values[i * value_size..(i + 1) * value_size].to_vec(),
            ));
        }
        if err.is_some() {
            return Ok(out);
        }
        std::mem::swap(&mut token, &mut next);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        let kinds = [CollectorKind::Keytime, CollectorKind::Syscall];
        let mask = CollectorKind::mask(&kinds);
        assert_eq!(mask, 0b1001);
        assert_eq!(CollectorKind::from_mask(mask), kinds);
        assert_eq!(CollectorKind::names(mask), "keytime, syscall");
        assert_eq!(CollectorKind::names(0), "none");
    }
}
