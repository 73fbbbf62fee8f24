//! Level 2 user stacks: the user registers and the top of the user stack
//! copied at a switch-out, unwound here with the binaries' `.eh_frame` (as
//! perf --call-graph dwarf does), frame pointers where a function has no
//! unwind information. A C library built without frame pointers (Debian's
//! glibc) is unwound through like any other code.
//!
//! A process's executable mappings are read from /proc/PID/maps and their
//! files opened through /proc/PID/map_files (deleted binaries, other mount
//! namespaces), once per process and again when an address falls outside
//! them. The files stay open, so a process that has exited before its
//! records are decoded is still unwound and named.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment};

use crate::bpf_intf::user_regs_sample;

#[cfg(target_arch = "aarch64")]
use framehop::aarch64::{
    CacheAarch64 as Cache, UnwindRegsAarch64 as Regs, UnwinderAarch64 as Arch,
};
#[cfg(target_arch = "x86_64")]
use framehop::x86_64::{CacheX86_64 as Cache, UnwindRegsX86_64 as Regs, UnwinderX86_64 as Arch};

type SectionBytes = Arc<[u8]>;

/// Frames unwound from one stack at most.
pub const MAX_USER_FRAMES: usize = 64;

/// Processes whose address spaces are kept (an exited one is kept too, for
/// its records still in the ring buffer); past it the dead ones go first.
const MAX_PROCESSES: usize = 512;

/// A process's mappings are read again after an address outside them, at
/// most this often.
const REREAD_AFTER: Duration = Duration::from_millis(200);

/// One ELF file, read once, whoever maps it.
pub struct ElfImage {
    /// the path /proc/PID/maps shows
    pub path: String,
    /// the kept-open file, as a path the symbolizer can open at any time
    pub fd_path: PathBuf,
    _file: File,
    /// (file offset, virtual address, size in the file) of each executable PT_LOAD
    segments: Vec<(u64, u64, u64)>,
    eh_frame: Option<(std::ops::Range<u64>, SectionBytes)>,
    eh_frame_hdr: Option<(std::ops::Range<u64>, SectionBytes)>,
    debug_frame: Option<SectionBytes>,
    got: Option<std::ops::Range<u64>>,
    text: Option<std::ops::Range<u64>>,
}

impl ElfImage {
    fn read(file: File, path: String) -> Option<ElfImage> {
        use std::os::fd::AsRawFd;
        let data = object::ReadCache::new(file.try_clone().ok()?);
        let obj = object::File::parse(&data).ok()?;
        const PF_X: u32 = 1;
        let segments = obj
            .segments()
            .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0))
            .map(|s| {
                let (off, size) = s.file_range();
                (off, s.address(), size)
            })
            .collect();
        let section = |name: &str| {
            let s = obj.section_by_name(name)?;
            let bytes: SectionBytes = s.data().ok()?.into();
            Some((s.address()..s.address() + s.size(), bytes))
        };
        let range = |name: &str| {
            let s = obj.section_by_name(name)?;
            Some(s.address()..s.address() + s.size())
        };
        Some(ElfImage {
            fd_path: PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame").map(|(_, b)| b),
            got: range(".got"),
            text: range(".text"),
            segments,
            path,
            _file: file,
        })
    }

    /// The virtual address (as in the file) of the file offset an
    /// executable mapping starts at: the segment's offset rounded down to
    /// its page, which may be below the segment's own start.
    fn svma_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|(off, _, size)| offset >= off & !0xfff && offset < off + size)
            .map(|(off, vaddr, _)| vaddr.wrapping_add(offset).wrapping_sub(*off))
    }
}

/// An executable mapping of a process.
struct Mapped {
    start: u64,
    end: u64,
    /// address in the process minus address in the file
    bias: u64,
    image: Arc<ElfImage>,
}

struct ProcessImage {
    mapped: Vec<Mapped>,
    unwinder: Arch<SectionBytes>,
    read_at: Instant,
    dead: bool,
}

impl ProcessImage {
    fn find(&self, addr: u64) -> Option<&Mapped> {
        let i = self.mapped.partition_point(|m| m.start <= addr);
        self.mapped[..i].last().filter(|m| addr < m.end)
    }
}

/// One executable file mapping of a process, its file open.
struct MappedFile {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
    file: File,
}

/// A process's executable mappings with their files open: cheap to read
/// (no ELF parsing), and enough to unwind it after it has ended.
pub struct ProcessMaps(Vec<MappedFile>);

impl ProcessMaps {
    pub fn read(tgid: u32) -> Option<ProcessMaps> {
        let maps = std::fs::read_to_string(format!("/proc/{tgid}/maps")).ok()?;
        let mut files = Vec::new();
        for line in maps.lines() {
            let mut f = line.split_ascii_whitespace();
            let (Some(range), Some(perms), Some(offset)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let path: Vec<&str> = f.skip(2).collect();
            if !perms.contains('x') || !path.first().is_some_and(|p| p.starts_with('/')) {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(offset)) = (
                u64::from_str_radix(start, 16),
                u64::from_str_radix(end, 16),
                u64::from_str_radix(offset, 16),
            ) else {
                continue;
            };
            // the file itself, deleted or in another mount namespace
            let Ok(file) = File::open(format!("/proc/{tgid}/map_files/{range}")) else {
                continue;
            };
            files.push(MappedFile {
                start,
                end,
                offset,
                path: path.join(" "),
                file,
            });
        }
        Some(ProcessMaps(files))
    }
}

/// A user frame: its address, and where it is in which file when known.
#[derive(Clone)]
pub struct UserFrame {
    pub addr: u64,
    pub at: Option<(Arc<ElfImage>, u64)>,
}

/// Why a user stack ended before its outermost frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwound {
    /// to the outermost frame (or the frame limit)
    Complete,
    /// no registers or stack bytes were copied (a kernel thread, a fault)
    NoStack,
    /// the process's mappings could not be read (it ended before it was seen)
    NoMappings,
    /// an address outside every known mapping, or the copied bytes ran out
    Truncated,
}

impl Unwound {
    pub fn failure(self) -> Option<&'static str> {
        match self {
            Unwound::Complete => None,
            Unwound::NoStack => Some("no_stack"),
            Unwound::NoMappings => Some("no_mappings"),
            Unwound::Truncated => Some("truncated"),
        }
    }
}

/// The unwinder of every process seen, and the files they map.
pub struct Unwinding {
    images: HashMap<(u64, u64), Arc<ElfImage>>,
    procs: HashMap<u32, ProcessImage>,
    cache: Cache,
}

impl Default for Unwinding {
    fn default() -> Self {
        Unwinding {
            images: HashMap::new(),
            procs: HashMap::new(),
            cache: Cache::new(),
        }
    }
}

impl Unwinding {
    /// Read (again) the mappings of `tgid`; false if it cannot be read.
    pub fn read_process(&mut self, tgid: u32) -> bool {
        match ProcessMaps::read(tgid) {
            Some(maps) => {
                self.install(tgid, maps);
                true
            }
            None => false,
        }
    }

    /// A process's mappings as read (maybe on another thread, while it lived).
    pub fn install(&mut self, tgid: u32, maps: ProcessMaps) {
        let mut mapped = Vec::new();
        for m in maps.0 {
            let Some(image) = self.image(m.file, m.path) else {
                continue;
            };
            let Some(svma) = image.svma_of_offset(m.offset) else {
                continue;
            };
            mapped.push(Mapped {
                start: m.start,
                end: m.end,
                bias: m.start.wrapping_sub(svma),
                image,
            });
        }
        mapped.sort_by_key(|m| m.start);
        let mut unwinder = Arch::new();
        for m in &mapped {
            let img = &m.image;
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: img.text.clone(),
                got_svma: img.got.clone(),
                eh_frame_svma: img.eh_frame.as_ref().map(|(r, _)| r.clone()),
                eh_frame: img.eh_frame.as_ref().map(|(_, b)| b.clone()),
                eh_frame_hdr_svma: img.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
                eh_frame_hdr: img.eh_frame_hdr.as_ref().map(|(_, b)| b.clone()),
                debug_frame: img.debug_frame.clone(),
                ..Default::default()
            };
            unwinder.add_module(Module::new(img.path.clone(), m.start..m.end, m.bias, info));
        }
        if self.procs.len() >= MAX_PROCESSES {
            self.procs.retain(|_, p| !p.dead);
            if self.procs.len() >= MAX_PROCESSES {
                self.procs.clear();
            }
        }
        self.procs.insert(
            tgid,
            ProcessImage {
                mapped,
                unwinder,
                read_at: Instant::now(),
                dead: false,
            },
        );
    }

    /// The process has ended: its image may go first when room is needed.
    pub fn process_ended(&mut self, tgid: u32) {
        if let Some(p) = self.procs.get_mut(&tgid) {
            p.dead = true;
        }
    }

    /// The image of a mapped file, read once per file.
    fn image(&mut self, file: File, path: String) -> Option<Arc<ElfImage>> {
        let meta = file.metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        if let Some(img) = self.images.get(&key) {
            return Some(img.clone());
        }
        let img = Arc::new(ElfImage::read(file, path)?);
        self.images.insert(key, img.clone());
        Some(img)
    }

    /// Unwind one copied stack of a thread of `tgid`, innermost frame first.
    pub fn unwind(
        &mut self,
        tgid: u32,
        regs: &user_regs_sample,
        stack: &[u8],
    ) -> (Vec<UserFrame>, Unwound) {
        if regs.ip == 0 && regs.sp == 0 {
            // a kernel thread: no user stack to unwind
            return (Vec::new(), Unwound::Complete);
        }
        let stale = match self.procs.get(&tgid) {
            None => true,
            Some(p) => p.find(regs.ip).is_none() && p.read_at.elapsed() >= REREAD_AFTER,
        };
        if stale && !self.read_process(tgid) && !self.procs.contains_key(&tgid) {
            return (
                vec![UserFrame {
                    addr: regs.ip,
                    at: None,
                }],
                Unwound::NoMappings,
            );
        }
        let Some(proc) = self.procs.get(&tgid) else {
            return (Vec::new(), Unwound::NoMappings);
        };
        let sp = regs.sp;
        let mut read_stack = |addr: u64| {
            let at = addr.checked_sub(sp).ok_or(())? as usize;
            let word = stack.get(at..at + 8).ok_or(())?;
            Ok(u64::from_ne_bytes(word.try_into().map_err(|_| ())?))
        };
        let mut frames = Vec::new();
        let mut iter =
            proc.unwinder
                .iter_frames(regs.ip, start_regs(regs), &mut self.cache, &mut read_stack);
        let outcome = loop {
            if frames.len() >= MAX_USER_FRAMES {
                break Unwound::Complete;
            }
            match iter.next() {
                Ok(Some(frame)) => {
                    let lookup = frame.address_for_lookup();
                    let at = proc
                        .find(lookup)
                        .map(|m| (m.image.clone(), lookup.wrapping_sub(m.bias)));
                    frames.push(UserFrame {
                        addr: match frame {
                            FrameAddress::InstructionPointer(a) => a,
                            FrameAddress::ReturnAddress(a) => a.get(),
                        },
                        at,
                    });
                }
                Ok(None) => break Unwound::Complete,
                Err(_) => break Unwound::Truncated,
            }
        };
        match outcome {
            Unwound::Truncated if stack.is_empty() => (frames, Unwound::NoStack),
            _ => (frames, outcome),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn start_regs(r: &user_regs_sample) -> Regs {
    Regs::new(r.ip, r.sp, r.fp)
}

#[cfg(target_arch = "aarch64")]
fn start_regs(r: &user_regs_sample) -> Regs {
    Regs::new(r.lr, r.sp, r.fp)
}
