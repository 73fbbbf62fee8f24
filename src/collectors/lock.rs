//! lock: every pthread mutex, rwlock and spinlock acquisition of the target
//! (request, acquire and release times), failed try/timed locks, and a
//! summary per lock and interval. BPF side: bpf/lock.bpf.c.
//!
//! Uprobes cost ~14 us per hit on this machine, so they are attached only
//! to the target's process, at activation, on the C library that process
//! actually maps (glibc >= 2.34: libc.so.6; older: libpthread.so.0), and
//! detached with the activation. Whole-system and idle-task targets are
//! refused. When the target execs, the probes follow it into the new image.

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

const NAME: &str = "lock";

/// After an exec, how long to wait for the dynamic loader to map a C library.
const EXEC_LIBRARY_WAIT: Duration = Duration::from_secs(2);

/// What a probed function does, and the cookie its uprobe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// lock, trylock, timed lock: a uprobe at entry and a uretprobe
    Acquire { lock_type: u32, op: u32 },
    /// unlock: a uprobe at entry
    Release { lock_type: u32 },
    /// glibc x86_64 pthread_spin_lock, probed after its first instruction
    /// (see handle__spin_attempt in bpf/lock.bpf.c)
    SpinAttempt,
}

/// x86 uprobes cannot probe a lock-prefixed instruction.
const LOCK_PREFIX: u8 = 0xf0;
/// glibc's pthread_spin_lock on x86_64 starts `lock decl (%rdi); jne`.
const SPIN_LOCK_HEAD: [u8; 4] = [0xf0, 0xff, 0x0f, 0x75];

/// The functions probed. Only the mutex pair is required; the others are
/// probed where the library has them (clocklock: glibc >= 2.30).
const FUNCTIONS: &[(&str, Role)] = &[
    ("pthread_mutex_lock", acquire(LOCK_MUTEX, LOCK_OP_LOCK)),
    ("pthread_mutex_trylock", acquire(LOCK_MUTEX, LOCK_OP_TRY)),
    (
        "pthread_mutex_timedlock",
        acquire(LOCK_MUTEX, LOCK_OP_TIMED),
    ),
    (
        "pthread_mutex_clocklock",
        acquire(LOCK_MUTEX, LOCK_OP_TIMED),
    ),
    (
        "pthread_mutex_unlock",
        Role::Release {
            lock_type: LOCK_MUTEX,
        },
    ),
    (
        "pthread_rwlock_rdlock",
        acquire(LOCK_RWLOCK_READ, LOCK_OP_LOCK),
    ),
    (
        "pthread_rwlock_tryrdlock",
        acquire(LOCK_RWLOCK_READ, LOCK_OP_TRY),
    ),
    (
        "pthread_rwlock_timedrdlock",
        acquire(LOCK_RWLOCK_READ, LOCK_OP_TIMED),
    ),
    (
        "pthread_rwlock_clockrdlock",
        acquire(LOCK_RWLOCK_READ, LOCK_OP_TIMED),
    ),
    (
        "pthread_rwlock_wrlock",
        acquire(LOCK_RWLOCK_WRITE, LOCK_OP_LOCK),
    ),
    (
        "pthread_rwlock_trywrlock",
        acquire(LOCK_RWLOCK_WRITE, LOCK_OP_TRY),
    ),
    (
        "pthread_rwlock_timedwrlock",
        acquire(LOCK_RWLOCK_WRITE, LOCK_OP_TIMED),
    ),
    (
        "pthread_rwlock_clockwrlock",
        acquire(LOCK_RWLOCK_WRITE, LOCK_OP_TIMED),
    ),
    (
        "pthread_rwlock_unlock",
        Role::Release {
            lock_type: LOCK_RWLOCK,
        },
    ),
    ("pthread_spin_lock", acquire(LOCK_SPINLOCK, LOCK_OP_LOCK)),
    ("pthread_spin_trylock", acquire(LOCK_SPINLOCK, LOCK_OP_TRY)),
    (
        "pthread_spin_unlock",
        Role::Release {
            lock_type: LOCK_SPINLOCK,
        },
    ),
];
const REQUIRED: [&str; 2] = ["pthread_mutex_lock", "pthread_mutex_unlock"];

const fn acquire(lock_type: u32, op: u32) -> Role {
    Role::Acquire { lock_type, op }
}

/// The uprobe cookie: LOCK_COOKIE() in proc_image.h.
fn cookie(lock_type: u32, op: u32) -> u64 {
    (lock_type | (op << 8)).into()
}

// ---------------------------------------------------------------------
// Which library: /proc/PID/maps

/// One file mapping of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `start-end`: its name under /proc/PID/map_files
    pub range: String,
    pub dev: String,
    pub inode: u64,
    /// as maps shows it, ` (deleted)` left out
    pub path: String,
}

impl Mapping {
    /// The mapped file itself, through the process: right in another mount
    /// namespace (a container), and even when the file was replaced or
    /// deleted since (a libc upgraded under a running process).
    pub fn file(&self, tgid: u32) -> String {
        format!("/proc/{tgid}/map_files/{}", self.range)
    }
}

/// The file mappings of a maps file (anonymous and special ones left out).
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_ascii_whitespace();
            let (range, _perms, _off) = (f.next()?, f.next()?, f.next()?);
            let dev = f.next()?.to_string();
            let inode = f.next()?.parse().ok()?;
            let path: Vec<&str> = f.collect();
            let path = path.join(" ");
            let path = path.strip_suffix(" (deleted)").unwrap_or(&path).to_string();
            (inode != 0 && path.starts_with('/')).then(|| Mapping {
                range: range.to_string(),
                dev,
                inode,
                path,
            })
        })
        .collect()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The libraries that may hold the pthread functions, in the order to try:
/// libpthread first (glibc < 2.34 keeps them there; newer ones map an
/// empty stub), then the C library itself (glibc's libc.so.6, musl's loader).
pub fn pthread_candidates(maps: &[Mapping]) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for prefix in ["libpthread.so", "libc.so", "ld-musl"] {
        for m in maps {
            let name = basename(&m.path);
            if name.starts_with(prefix) && !out.iter().any(|o| o.inode == m.inode && o.dev == m.dev)
            {
                out.push(m.clone());
            }
        }
    }
    out
}

/// Does the image use a dynamic loader (so a C library may still come)?
pub fn has_loader(maps: &[Mapping]) -> bool {
    maps.iter().any(|m| {
        basename(&m.path).starts_with("ld-linux") || basename(&m.path).starts_with("ld-musl")
    })
}

// ---------------------------------------------------------------------
// Which address: ELF dynamic symbols and their versions

/// A defined function among a library's dynamic symbols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynSym {
    pub name: String,
    pub vaddr: u64,
    /// a non-default version (`name@VER`); the default is `name@@VER`
    pub hidden: bool,
}

/// The address a newly linked program calls for `name`: the default
/// version (`@@`), or an unversioned symbol. Old versions (`@`) are kept for
/// binaries linked long ago; for the pthread lock functions glibc aliases
/// them to the same code. None if no default version is defined.
pub fn choose_symbol(syms: &[DynSym], name: &str) -> Result<Option<u64>> {
    let mut defaults = syms.iter().filter(|s| s.name == name && !s.hidden);
    let Some(first) = defaults.next() else {
        return Ok(None);
    };
    if let Some(other) = defaults.find(|s| s.vaddr != first.vaddr) {
        bail!(
            "{name} has two default versions at {:#x} and {:#x}",
            first.vaddr,
            other.vaddr
        );
    }
    Ok(Some(first.vaddr))
}

/// A loadable segment: where file bytes land in the address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
}

/// The file offset of a virtual address (uprobes are placed by file offset).
pub fn file_offset(segments: &[Segment], vaddr: u64) -> Option<u64> {
    segments
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
        .map(|s| vaddr - s.vaddr + s.offset)
}

/// The defined functions among the dynamic symbols, and the load segments.
pub fn read_elf(data: &[u8]) -> Result<(Vec<DynSym>, Vec<Segment>)> {
    use object::elf::{FileHeader64, PT_LOAD, SHN_UNDEF, SHT_DYNSYM, STT_FUNC, STT_GNU_IFUNC};
    use object::read::elf::{FileHeader, ProgramHeader, Sym};
    use object::Endianness;

    let header = FileHeader64::<Endianness>::parse(data).context("not a 64-bit ELF file")?;
    let endian = header.endian()?;
    let segments = header
        .program_headers(endian, data)?
        .iter()
        .filter(|p| p.p_type(endian) == PT_LOAD)
        .map(|p| Segment {
            vaddr: p.p_vaddr(endian),
            offset: p.p_offset(endian),
            filesz: p.p_filesz(endian),
        })
        .collect();
    let sections = header.sections(endian, data)?;
    let symbols = sections.symbols(endian, data, SHT_DYNSYM)?;
    let versions = sections.versions(endian, data)?;
    let mut out = Vec::new();
    for (index, sym) in symbols.enumerate() {
        let kind = sym.st_type();
        if sym.st_shndx(endian) == SHN_UNDEF || (kind != STT_FUNC && kind != STT_GNU_IFUNC) {
            continue;
        }
        let Ok(name) = sym.name(endian, symbols.strings()) else {
            continue;
        };
        let hidden = versions
            .as_ref()
            .is_some_and(|v| v.version_index(endian, index).is_hidden());
        out.push(DynSym {
            name: String::from_utf8_lossy(name).into_owned(),
            vaddr: sym.st_value(endian),
            hidden,
        });
    }
    Ok((out, segments))
}

/// One uprobe to attach: a function's file offset and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub function: &'static str,
    pub offset: u64,
    role: Role,
}

/// The probes for a library's symbols (`code`: the file's bytes). Two names
/// at one address (aliases) are probed once, or each hit would count twice.
/// A function whose first instruction cannot be probed is left out, except
/// glibc's pthread_spin_lock, whose second instruction is probed instead.
fn probes_for(syms: &[DynSym], segments: &[Segment], code: &[u8]) -> Result<Vec<Probe>> {
    let mut probes: Vec<Probe> = Vec::new();
    for &(function, mut role) in FUNCTIONS {
        let Some(vaddr) = choose_symbol(syms, function)? else {
            continue;
        };
        let mut offset = file_offset(segments, vaddr)
            .ok_or_else(|| anyhow!("{function} at {vaddr:#x} is outside every segment"))?;
        let head = code
            .get(offset as usize..offset as usize + 4)
            .unwrap_or(&[]);
        if cfg!(target_arch = "x86_64") && head.first() == Some(&LOCK_PREFIX) {
            if function != "pthread_spin_lock" || head != SPIN_LOCK_HEAD {
                continue;
            }
            role = Role::SpinAttempt;
            offset += 3;
        }
        if !probes.iter().any(|p| p.offset == offset) {
            probes.push(Probe {
                function,
                offset,
                role,
            });
        }
    }
    Ok(probes)
}

/// The C library a process maps and the probes for it.
#[derive(Debug, Clone)]
pub struct Library {
    pub mapping: Mapping,
    pub probes: Vec<Probe>,
}

/// Find the mapped library that defines the pthread lock functions.
/// Ok(None): the process maps no candidate library (static, or not yet).
fn find_library(tgid: u32, maps: &[Mapping]) -> Result<Option<Library>> {
    for m in pthread_candidates(maps) {
        // map_files needs CAP_SYS_ADMIN: proc_image has it, unit tests may not
        let data = std::fs::read(m.file(tgid))
            .or_else(|_| std::fs::read(format!("/proc/{tgid}/root{}", m.path)))
            .with_context(|| format!("read {}", m.path))?;
        let (syms, segments) = read_elf(&data).with_context(|| format!("parse {}", m.path))?;
        let probes = probes_for(&syms, &segments, &data).with_context(|| m.path.clone())?;
        let have = |f: &str| probes.iter().any(|p| p.function == f);
        if REQUIRED.iter().all(|f| have(f)) {
            return Ok(Some(Library { mapping: m, probes }));
        }
    }
    Ok(None)
}

fn read_maps(tgid: u32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/maps"))
        .with_context(|| format!("read /proc/{tgid}/maps"))?;
    Ok(parse_maps(&text))
}

fn no_library(tgid: u32) -> anyhow::Error {
    // short: the control record carries 128 bytes of message
    anyhow!("process {tgid} is statically linked or maps no libc.so.6/libpthread.so.0: no pthread locks to probe")
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
        Target::System | Target::Idle { .. } => None,
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
        let mut filter = act.target.filter(act.generation);
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

/// The file offset of `function` in the C library this process maps (for
/// tests and the benchmark: what proc_image would probe).
pub fn own_probe(function: &str) -> Result<(String, u64)> {
    let me = std::process::id();
    let lib = find_library(me, &read_maps(me)?)?.ok_or_else(|| no_library(me))?;
    let p = lib
        .probes
        .iter()
        .find(|p| p.function == function)
        .ok_or_else(|| anyhow!("{function} is not probed"))?;
    Ok((lib.mapping.path, p.offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1311 /usr/bin/prog with space
7f1a00000000-7f1a00028000 r--p 00000000 fe:01 2000 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a00028000-7f1a0019d000 r-xp 00028000 fe:01 2000 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1a10000000-7f1a10021000 rw-p 00000000 00:00 0 [heap]
7f1a20000000-7f1a20002000 r--p 00000000 fe:01 2100 /usr/lib/x86_64-linux-gnu/libpthread.so.0 (deleted)
7f1a30000000-7f1a30002000 r--p 00000000 fe:01 2200 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn maps_parsing_keeps_files_only() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].path, "/usr/bin/prog with space");
        assert_eq!((maps[1].dev.as_str(), maps[1].inode), ("fe:01", 2000));
        assert_eq!(
            maps[1].file(7),
            "/proc/7/map_files/7f1a00000000-7f1a00028000"
        );
        assert_eq!(maps[3].path, "/usr/lib/x86_64-linux-gnu/libpthread.so.0");
        assert!(has_loader(&maps));
        assert!(!has_loader(&maps[..3]));
    }

    #[test]
    fn libpthread_is_tried_before_libc_once_each() {
        let c = pthread_candidates(&parse_maps(MAPS));
        let names: Vec<&str> = c.iter().map(|m| basename(&m.path)).collect();
        assert_eq!(names, ["libpthread.so.0", "libc.so.6"]);
        // a static program maps neither
        assert!(pthread_candidates(&parse_maps(&MAPS[..80])).is_empty());
    }

    fn sym(name: &str, vaddr: u64, hidden: bool) -> DynSym {
        DynSym {
            name: name.into(),
            vaddr,
            hidden,
        }
    }

    #[test]
    fn the_default_version_is_chosen() {
        let syms = [
            sym("pthread_cond_wait", 0x100, true),  // @GLIBC_2.2.5: old ABI
            sym("pthread_cond_wait", 0x200, false), // @@GLIBC_2.3.2
            sym("pthread_mutex_lock", 0x300, false),
        ];
        assert_eq!(
            choose_symbol(&syms, "pthread_cond_wait").unwrap(),
            Some(0x200)
        );
        assert_eq!(
            choose_symbol(&syms, "pthread_mutex_lock").unwrap(),
            Some(0x300)
        );
        assert_eq!(choose_symbol(&syms, "pthread_spin_lock").unwrap(), None);
        // only an old version: not what a program linked today calls
        assert_eq!(
            choose_symbol(&syms[..1], "pthread_cond_wait").unwrap(),
            None
        );
        let twice = [sym("f", 1, false), sym("f", 2, false)];
        assert!(choose_symbol(&twice, "f").is_err());
    }

    #[test]
    fn offsets_follow_the_segments() {
        let segs = [
            Segment {
                vaddr: 0,
                offset: 0,
                filesz: 0x28000,
            },
            Segment {
                vaddr: 0x29000,
                offset: 0x28000,
                filesz: 0x1000,
            },
        ];
        assert_eq!(file_offset(&segs, 0x100), Some(0x100));
        assert_eq!(file_offset(&segs, 0x29010), Some(0x28010));
        assert_eq!(file_offset(&segs, 0x40000), None);
    }

    #[test]
    fn aliases_are_probed_once() {
        let segs = [Segment {
            vaddr: 0,
            offset: 0,
            filesz: 0x10000,
        }];
        // glibc: pthread_spin_unlock is the same code as pthread_spin_init
        let syms = [
            sym("pthread_mutex_lock", 0x10, false),
            sym("pthread_mutex_unlock", 0x20, false),
            sym("pthread_mutex_trylock", 0x10, false),
        ];
        let p = probes_for(&syms, &segs, &[]).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.function).collect();
        assert_eq!(names, ["pthread_mutex_lock", "pthread_mutex_unlock"]);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn lock_prefixed_heads_are_not_probed_at_entry() {
        let segs = [Segment {
            vaddr: 0,
            offset: 0,
            filesz: 0x100,
        }];
        let mut code = vec![0x90u8; 0x100];
        code[0x10..0x14].copy_from_slice(&SPIN_LOCK_HEAD);
        code[0x20] = LOCK_PREFIX; // some other lock-prefixed head
        let syms = [
            sym("pthread_mutex_lock", 0x00, false),
            sym("pthread_spin_lock", 0x10, false),
            sym("pthread_spin_trylock", 0x20, false),
        ];
        let p = probes_for(&syms, &segs, &code).unwrap();
        let got: Vec<(&str, u64)> = p.iter().map(|p| (p.function, p.offset)).collect();
        assert_eq!(
            got,
            [("pthread_mutex_lock", 0), ("pthread_spin_lock", 0x13)]
        );
        assert_eq!(p[1].role, Role::SpinAttempt);
    }

    /// The offset proc_image probes is where this process's dynamic linker
    /// put pthread_mutex_lock: same answer from the ELF and from the loader.
    #[test]
    fn own_libc_offset_matches_the_loaded_address() {
        let (path, offset) = own_probe("pthread_mutex_lock").unwrap();
        let want = libc::pthread_mutex_lock as *const () as usize as u64;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let found = maps.lines().any(|l| {
            let f: Vec<&str> = l.split_ascii_whitespace().collect();
            if f.len() < 6 || f[5] != path {
                return false;
            }
            let (start, end) = f[0].split_once('-').unwrap();
            let start = u64::from_str_radix(start, 16).unwrap();
            let end = u64::from_str_radix(end, 16).unwrap();
            let map_off = u64::from_str_radix(f[2], 16).unwrap();
            offset >= map_off
                && offset < map_off + (end - start)
                && start + offset - map_off == want
        });
        assert!(found, "{path}+{offset:#x} is not at {want:#x}:\n{maps}");
    }

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
