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
use crate::kernel_btf::{self, Variant};
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

    /// Its bit in the masks of the control map (enum pi_collector).
    pub fn bit(self) -> u32 {
        1 << match self {
            CollectorKind::Keytime => PI_KEYTIME,
            CollectorKind::Lock => PI_LOCK,
            CollectorKind::Resource => PI_RESOURCE,
            CollectorKind::Syscall => PI_SYSCALL,
            CollectorKind::Schedule => PI_SCHEDULE,
        }
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

pub type Decoder = Box<dyn FnMut(&[u8]) -> Result<Record>>;

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

    /// The target moved: a non-leader thread traced alone (-p) exec'd and
    /// goes on as its group's leader, under the leader's pid. Asked after
    /// every poll; the activation then follows it.
    fn moved_target(&mut self) -> Option<Target> {
        None
    }

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
    load_skel_variants(builder, name, ringbuf_bytes, &[])
}

/// load_skel, loading only the form of each `variants` program this kernel
/// takes (see kernel_btf).
pub fn load_skel_variants<B>(
    builder: B,
    name: &str,
    ringbuf_bytes: u32,
    variants: &[Variant],
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
    kernel_btf::choose(open.open_object_mut(), variants)
        .with_context(|| format!("choose the {name} programs for this kernel"))?;
    for v in variants.iter().filter(|v| !v.use_newer) {
        let why = match kernel_btf::features().forced {
            true => format!("forced by {}=1", kernel_btf::FORCE_COMPAT_ENV),
            false => "this kernel's hook lacks an argument".into(),
        };
        eprintln!("proc_image: {name}: older form {} ({why})", v.older);
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
