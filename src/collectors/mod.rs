//! The collectors, and what they have in common: loading a skeleton up
//! front, activating it for a target, and reading its health counters.
//!
//! A collector is loaded and verified when proc_image starts but attaches
//! its programs only when activated, so a waiting proc_image costs the
//! traced system nothing. Adding a collector: see `COLLECTORS`.

mod bpf;
pub mod futex;
pub mod keytime;
pub mod latency;
pub mod lock;
pub mod resource;
pub mod schedule;
pub mod syscall;

pub use bpf::{
    attach_all, capture_raw, delete_keys, hash_entries, load_skel, load_skel_variants,
    read_captured, read_stats, read_task_iter, refusal_reason, set_libbpf_log, take_hash_entries,
    wait_for_programs_in_flight, Entries, SLOT_SETTLE,
};

use std::fmt;

use anyhow::{anyhow, Result};
use libbpf_rs::MapHandle;

use crate::bpf_intf::{
    KEYTIME_LEVEL_ALL, KEYTIME_LEVEL_LIFECYCLE, KEYTIME_LEVEL_STACKS, PI_FUTEX, PI_KEYTIME,
    PI_LOCK, PI_RESOURCE, PI_SCHEDULE, PI_SYSCALL, SYSCALL_SEQ_DEFAULT, SYSCALL_SEQ_MAX,
};
use crate::losses::Losses;
use crate::output::Output;
use crate::record::Record;
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CollectorKind {
    Keytime,
    Lock,
    Resource,
    Syscall,
    Schedule,
    Futex,
}

/// A collector's option on controller's command line besides its flag.
pub struct CollectorValue {
    pub value_name: &'static str,
    /// taken when the flag is given without a value
    pub default: u32,
    pub min: u32,
    pub max: u32,
}

/// One row per collector: names, flags, bits, help and loader are derived
/// from here. Adding a collector: its bpf/<name>.bpf.c (a line in
/// build.rs), its module implementing `Collector`, a `CollectorKind`
/// variant and one row here (in the variant's order), and its tests.
pub struct CollectorInfo {
    pub kind: CollectorKind,
    pub name: &'static str,
    /// its number in the control records (enum pi_collector)
    pub index: u32,
    /// its flags in proc_image and controller
    pub short: char,
    pub long: &'static str,
    /// other long flags that name it
    pub long_aliases: &'static [&'static str],
    /// other short flags of proc_image that load it (shown in --help)
    pub load_short_aliases: &'static [char],
    /// proc_image --help: what loading it gives
    pub about: &'static str,
    /// controller --help: what activating it gives
    pub controller_about: &'static str,
    pub value: Option<CollectorValue>,
    pub load: fn(&LoadOptions) -> Result<Box<dyn Collector>>,
}

pub const COLLECTORS: [CollectorInfo; 6] = [
    CollectorInfo {
        kind: CollectorKind::Keytime,
        name: "keytime",
        index: PI_KEYTIME,
        short: 'k',
        long: "keytime",
        long_aliases: &[],
        load_short_aliases: &[],
        about: "Load keytime: fork, vfork, pthread_create, execve, exit, on/off-CPU intervals",
        controller_about:
            "keytime; LEVEL 0 = lifecycle only, 1 = also on/off-CPU time per thread per interval and each stretch from --stretch-min-us (default), 2 = also off-CPU stacks and who woke them (--stack-min-us)",
        value: Some(CollectorValue {
            value_name: "LEVEL",
            default: KEYTIME_LEVEL_ALL,
            min: KEYTIME_LEVEL_LIFECYCLE,
            max: KEYTIME_LEVEL_STACKS,
        }),
        load: |opts| Ok(Box::new(keytime::Keytime::load(opts)?)),
    },
    CollectorInfo {
        kind: CollectorKind::Lock,
        name: "lock",
        index: PI_LOCK,
        short: 'l',
        long: "lock",
        long_aliases: &[],
        load_short_aliases: &[],
        about: "Load lock: pthread mutex / rwlock / spinlock intervals",
        controller_about:
            "lock: pthread mutex/rwlock/spinlock intervals (a thread or process only)",
        value: None,
        load: |opts| Ok(Box::new(lock::Lock::load(opts)?)),
    },
    CollectorInfo {
        kind: CollectorKind::Resource,
        name: "resource",
        index: PI_RESOURCE,
        short: 'r',
        long: "resource",
        long_aliases: &[],
        load_short_aliases: &[],
        about: "Load resource: CPU %, memory, I/O rates, the CPU each thread ran on (-p 0 -c N: that CPU's idle time)",
        controller_about:
            "resource: CPU %, RSS, read/write bytes per second, CPU; for -p 0 -c N the CPU's idle time",
        value: None,
        load: |opts| Ok(Box::new(resource::Resource::load(opts)?)),
    },
    CollectorInfo {
        kind: CollectorKind::Syscall,
        name: "syscall",
        index: PI_SYSCALL,
        short: 's',
        long: "syscall",
        long_aliases: &[],
        load_short_aliases: &[],
        about: "Load syscall: sequence, top syscalls, latency",
        controller_about: "syscall: last N syscalls per thread (default 10), top 3, latency",
        value: Some(CollectorValue {
            value_name: "N",
            default: SYSCALL_SEQ_DEFAULT,
            min: 1,
            max: SYSCALL_SEQ_MAX,
        }),
        load: |opts| Ok(Box::new(syscall::Syscall::load(opts)?)),
    },
    CollectorInfo {
        kind: CollectorKind::Schedule,
        name: "schedule",
        index: PI_SCHEDULE,
        short: 'S',
        long: "schedule",
        long_aliases: &[],
        load_short_aliases: &[],
        about: "Load schedule: run-queue latency, per thread with its class (-p 0 -c N: that CPU's run queue)",
        controller_about: "schedule: run-queue latency beside the whole system's, per thread with prio/nice/policy; for -p 0 -c N the CPU's run queue",
        value: None,
        load: |opts| Ok(Box::new(schedule::Schedule::load(opts)?)),
    },
    CollectorInfo {
        kind: CollectorKind::Futex,
        name: "futex",
        index: PI_FUTEX,
        short: 'M',
        // the original's mfutex mode; -m as it spells it (controller's -m is --myproc)
        long: "mfutex",
        long_aliases: &["futex"],
        load_short_aliases: &['m'],
        about:
            "Load futex: contended futex waits of any runtime, who woke them, per-address figures",
        controller_about:
            "futex: contended futex waits and who woke them, per address (also the whole system)",
        value: None,
        load: |opts| Ok(Box::new(futex::Futex::load(opts)?)),
    },
];

impl CollectorKind {
    pub const ALL: [CollectorKind; COLLECTORS.len()] = {
        let mut all = [CollectorKind::Keytime; COLLECTORS.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = COLLECTORS[i].kind;
            i += 1;
        }
        all
    };

    /// Its row of `COLLECTORS`.
    pub fn info(self) -> &'static CollectorInfo {
        &COLLECTORS[self as usize]
    }

    /// Its number in the control records (enum pi_collector).
    pub fn index(self) -> usize {
        self.info().index as usize
    }

    /// Its bit in the masks of the control records.
    pub fn bit(self) -> u32 {
        1 << self.index()
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The flag that selects it, in both proc_image and controller.
    pub fn flag(self) -> String {
        format!("-{}", self.info().short)
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
    /// futex: futex_wait records only for waits at least this long
    pub futex_min_us: u32,
    /// keytime level 2: off-CPU stacks only for stretches at least this long
    pub stack_min_us: u32,
    /// keytime, targeted: on_cpu / off_cpu records only for stretches at
    /// least this long (every stretch is summed per interval)
    pub stretch_min_us: u32,
    /// keytime: execve_failed records (the syscall tracepoints they need
    /// slow every syscall on the host, so only when asked)
    pub exec_failures: bool,
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
    fn stats(&self) -> Result<Losses>;

    /// Its loaded BPF object (--bpf-stats reads its programs' run counts).
    fn object(&self) -> &libbpf_rs::Object;
}

/// A collector that did not load, and why, in one line.
#[derive(Debug)]
pub struct Refusal {
    pub kind: CollectorKind,
    pub reason: String,
}

/// Load each collector in `kinds` on its own: those that loaded, and a
/// `Refusal` for each the kernel (or libbpf) would not load.
pub fn load(
    kinds: &[CollectorKind],
    opts: &LoadOptions,
) -> (Vec<Box<dyn Collector>>, Vec<Refusal>) {
    let mut loaded: Vec<Box<dyn Collector>> = Vec::new();
    let mut refused = Vec::new();
    for &kind in kinds {
        bpf::start_capture();
        let result = (kind.info().load)(opts);
        let log = bpf::end_capture();
        match result {
            Ok(c) => loaded.push(c),
            Err(e) => refused.push(Refusal {
                kind,
                reason: refusal_reason(&log).unwrap_or_else(|| format!("{e:#}")),
            }),
        }
    }
    (loaded, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_the_kinds_and_its_flags_and_bits_differ() {
        let mut flags = std::collections::HashSet::new();
        let mut bits = 0u32;
        for (i, c) in COLLECTORS.iter().enumerate() {
            assert_eq!(c.kind as usize, i, "{} out of order", c.name);
            assert!(flags.insert(c.short), "flag -{} twice", c.short);
            assert_eq!(bits & c.kind.bit(), 0, "index {} twice", c.index);
            bits |= c.kind.bit();
        }
    }

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
