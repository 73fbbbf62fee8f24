//! Level 2 off-CPU stacks, symbolized: kernel frames from kallsyms, user
//! frames with blazesym from the ELF files the process maps (opened through
//! /proc/PID/map_files and kept open, so deleted binaries, containers and
//! processes that have ended are named).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{CodeInfo, Input, Sym, Symbolized, Symbolizer};
use serde::Serialize;

use super::unwind::{ElfImage, ProcessMaps, Unwinding, Unwound, UserFrame};
use crate::bpf_intf::user_regs_sample;
use crate::kallsyms::Kallsyms;

/// One frame of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// the function; `0x..` (the address) when it could not be named
    #[serde(rename = "fn")]
    pub func: String,
    /// "kernel", or the ELF file it is in
    pub module: String,
    /// from the function's start
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// the compiler inlined this function into the frame below it (the
    /// next one out): both are at the same instruction, each at its line
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    pub fn unknown(addr: u64, module: &str) -> Self {
        Frame {
            func: format!("{addr:#x}"),
            module: module.into(),
            offset: 0,
            file: None,
            line: None,
            inlined: false,
        }
    }
}

/// The user stack a record of type `T` carries after itself: `bytes` of
/// whole pages, the stack proper (from sp) `start` bytes in.
pub fn copied_stack<T>(data: &[u8], start: u32, bytes: u32) -> &[u8] {
    let pages = std::mem::size_of::<T>();
    let max = crate::bpf_intf::KEYTIME_USTACK_PAGES as usize * 4096;
    let from = pages + start as usize;
    let to = pages + (bytes as usize).min(max);
    data.get(from..to).unwrap_or(&[])
}

/// Kernel frames named from kallsyms.
pub fn kernel_frames(ksyms: &Kallsyms, addrs: &[u64]) -> Vec<Frame> {
    addrs
        .iter()
        .map(|&a| match ksyms.resolve_with_offset(a) {
            Some((name, offset)) => Frame {
                func: name.into(),
                module: "kernel".into(),
                offset,
                file: None,
                line: None,
                inlined: false,
            },
            None => Frame::unknown(a, "kernel"),
        })
        .collect()
}

/// Frames cached per file and address beyond this many are dropped all at
/// once (a long run with many processes must not grow without bound).
const CACHE_MAX: usize = 200_000;

/// A symbol as blazesym gives it, as frames of `module`, innermost first:
/// the functions inlined at the address (blazesym lists them outermost
/// first), then the function the code is in. Each has its own line there.
fn frames_of(sym: &Sym, module: &str) -> Vec<Frame> {
    let frame = |func: &str, code: Option<&CodeInfo>, inlined| Frame {
        func: func.to_string(),
        module: module.to_string(),
        offset: sym.offset as u64,
        file: code.map(|c| c.file.to_string_lossy().into_owned()),
        line: code.and_then(|c| c.line),
        inlined,
    };
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| frame(&f.name, f.code_info.as_ref(), true))
        .collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref(), false));
    frames
}

/// User stacks from the copied registers and stack bytes: unwound, then
/// named from the files mapped, cached per (file, address in the file).
#[derive(Default)]
pub struct UserStacks {
    unwinding: RefCell<Unwinding>,
    symbolizer: Symbolizer,
    named: RefCell<HashMap<(usize, u64), Vec<Frame>>>,
}

impl UserStacks {
    /// A process's mappings, read while it lived (at an activation, an exec).
    pub fn install(&self, tgid: u32, maps: ProcessMaps) {
        self.unwinding.borrow_mut().install(tgid, maps);
    }

    /// The process has ended: its mappings may go first when room is needed.
    pub fn process_ended(&self, tgid: u32) {
        self.unwinding.borrow_mut().process_ended(tgid);
    }

    /// The frames of one copied stack, innermost first, and how the unwinding ended.
    pub fn frames(
        &self,
        tgid: u32,
        regs: &user_regs_sample,
        stack: &[u8],
    ) -> (Vec<Frame>, Unwound) {
        let (frames, outcome) = self.unwinding.borrow_mut().unwind(tgid, regs, stack);
        (frames.iter().flat_map(|f| self.name(f)).collect(), outcome)
    }

    /// A user frame's function, and the ones inlined into it there.
    fn name(&self, f: &UserFrame) -> Vec<Frame> {
        let Some((image, svma)) = &f.at else {
            return vec![Frame::unknown(f.addr, "")];
        };
        let key = (Arc::as_ptr(image) as usize, *svma);
        if let Some(frames) = self.named.borrow().get(&key) {
            return frames.clone();
        }
        let frames = self.symbolize(image, *svma, f.addr);
        let mut named = self.named.borrow_mut();
        if named.len() >= CACHE_MAX {
            named.clear();
        }
        named.insert(key, frames.clone());
        frames
    }

    fn symbolize(&self, image: &ElfImage, svma: u64, addr: u64) -> Vec<Frame> {
        let src = Source::Elf(Elf::new(&image.fd_path));
        match self
            .symbolizer
            .symbolize_single(&src, Input::VirtOffset(svma))
        {
            Ok(Symbolized::Sym(sym)) => frames_of(&sym, &image.path),
            _ => vec![Frame::unknown(addr, &image.path)],
        }
    }
}
