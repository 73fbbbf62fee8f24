//! Where the lock probes go: the C library the target maps
//! (/proc/PID/maps), its dynamic symbols and segments (ELF), and the
//! file offset and role of each probed pthread function.

use anyhow::{anyhow, bail, Context, Result};

use crate::bpf_intf::{
    LOCK_MUTEX, LOCK_OP_LOCK, LOCK_OP_TIMED, LOCK_OP_TRY, LOCK_RWLOCK, LOCK_RWLOCK_READ,
    LOCK_RWLOCK_WRITE, LOCK_SPINLOCK,
};

/// What a probed function does, and the cookie its uprobe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
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
    pub(super) role: Role,
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

/// The largest library file read (glibc's libc.so.6 is ~2 MB, ~15 MB
/// with its debug information): a path in the target's root may name
/// anything, and the whole file is read to find the symbols.
pub const LIBRARY_MAX_BYTES: u64 = 64 << 20;

/// Open a library the target maps, through its /proc entries: never blocks
/// (a FIFO put at the path through the target's root would wait for a
/// writer), and only a regular file of at most `limit` bytes.
pub fn open_library(path: &str, limit: u64) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("open {path}"))?;
    let meta = file.metadata().with_context(|| format!("stat {path}"))?;
    if !meta.is_file() {
        bail!("{path} is not a regular file: not a C library");
    }
    if meta.len() > limit {
        bail!(
            "{path} is {} MiB, more than a C library ({} MiB at most): not read",
            meta.len() >> 20,
            limit >> 20
        );
    }
    // SAFETY: fcntl on a file descriptor this function owns.
    unsafe {
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(file)
}

/// The bytes of a library file (see `open_library`), at most `limit`.
pub fn read_library(path: &str, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = open_library(path, limit)?;
    let mut data = Vec::new();
    // a file that grew since the check is cut at the limit, never read whole
    file.take(limit + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("read {path}"))?;
    if data.len() as u64 > limit {
        bail!("{path} grew past {} MiB while read", limit >> 20);
    }
    Ok(data)
}

/// Find the mapped library that defines the pthread lock functions.
/// Ok(None): the process maps no candidate library (static, or not yet).
pub(super) fn find_library(tgid: u32, maps: &[Mapping]) -> Result<Option<Library>> {
    let read = |path: &str| read_library(path, LIBRARY_MAX_BYTES);
    for m in pthread_candidates(maps) {
        // map_files needs CAP_SYS_ADMIN: proc_image has it, unit tests may
        // not; a main thread that exited has neither: a live thread's root
        let data = read(&m.file(tgid))
            .or_else(|_| read(&format!("/proc/{tgid}/root{}", m.path)))
            .or_else(|e| match live_task_dir(tgid) {
                Some(root) => read(&format!("{root}/root{}", m.path)),
                None => Err(e),
            })
            .with_context(|| format!("read the C library {}", m.path))?;
        let (syms, segments) = read_elf(&data).with_context(|| format!("parse {}", m.path))?;
        let probes = probes_for(&syms, &segments, &data).with_context(|| m.path.clone())?;
        let have = |f: &str| probes.iter().any(|p| p.function == f);
        if REQUIRED.iter().all(|f| have(f)) {
            return Ok(Some(Library { mapping: m, probes }));
        }
    }
    Ok(None)
}

/// The maps of process `tgid`; once its main thread has exited (its
/// /proc/TGID/maps is empty then), those of a thread still running.
pub(super) fn read_maps(tgid: u32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/maps"))
        .with_context(|| format!("read /proc/{tgid}/maps"))?;
    if !text.is_empty() {
        return Ok(parse_maps(&text));
    }
    let Some(dir) = live_task_dir(tgid) else {
        return Ok(Vec::new());
    };
    Ok(parse_maps(
        &std::fs::read_to_string(format!("{dir}/maps")).unwrap_or_default(),
    ))
}

/// /proc/TGID/task/TID of a thread whose memory is still there.
fn live_task_dir(tgid: u32) -> Option<String> {
    std::fs::read_dir(format!("/proc/{tgid}/task"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| format!("/proc/{tgid}/task/{}", e.file_name().to_string_lossy()))
        .find(|dir| {
            std::fs::metadata(format!("{dir}/maps")).is_ok_and(|_| {
                std::fs::read_to_string(format!("{dir}/maps")).is_ok_and(|m| !m.is_empty())
            })
        })
}

pub(super) fn no_library(tgid: u32) -> anyhow::Error {
    // short: the control record carries 128 bytes of message
    anyhow!("process {tgid} is statically linked (glibc or musl) or maps no C library: no pthread locks to probe")
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
pub(super) mod tests {
    use super::*;

    /// also read by the exec tests in lock/mod.rs
    pub(in crate::collectors::lock) const MAPS: &str = "\
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

    /// A FIFO where the target's root shows its library would block a
    /// plain open until a writer came: one clear error instead, at once.
    #[test]
    fn a_fifo_in_place_of_the_library_is_refused() {
        let dir = std::env::temp_dir().join(format!("pi_lock_fifo_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("libc.so.6");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_library(fifo.to_str().unwrap(), LIBRARY_MAX_BYTES).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
        // the lookup itself, through this process's root: its map_files
        // has no such range, its root has the FIFO
        let maps = parse_maps(&format!(
            "7f0000000000-7f0000001000 r-xp 00000000 fe:01 77 {}\n",
            fifo.display()
        ));
        let e = find_library(std::process::id(), &maps).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("not a regular file") && !msg.contains('\n'),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file larger than any C library is not read into memory.
    #[test]
    fn a_huge_file_is_not_read() {
        let dir = std::env::temp_dir().join(format!("pi_lock_huge_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let huge = dir.join("libc.so.6");
        // sparse: no disk, but its size says 1 GiB
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(1 << 30).unwrap();
        let path = huge.to_str().unwrap();
        let e = read_library(path, LIBRARY_MAX_BYTES).unwrap_err();
        assert!(format!("{e:#}").contains("1024 MiB"), "{e:#}");
        assert!(open_library(path, LIBRARY_MAX_BYTES).is_err());
        // under the limit it reads
        f.set_len(4096).unwrap();
        assert_eq!(read_library(path, LIBRARY_MAX_BYTES).unwrap().len(), 4096);
        std::fs::remove_dir_all(&dir).unwrap();
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
}
