//! Level 2 off-CPU stacks, symbolized: kernel frames from kallsyms, user
//! frames with blazesym from the ELF files the process maps (opened through
//! /proc/PID/map_files and kept open, so deleted binaries, containers and
//! processes that have ended are named).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
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
}

impl Frame {
    pub fn unknown(addr: u64, module: &str) -> Self {
        Frame {
            func: format!("{addr:#x}"),
            module: module.into(),
            offset: 0,
            file: None,
            line: None,
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
            },
            None => Frame::unknown(a, "kernel"),
        })
        .collect()
}

/// Frames cached per file and address beyond this many are dropped all at
/// once (a long run with many processes must not grow without bound).
const CACHE_MAX: usize = 200_000;

/// A symbol as blazesym gives it, as a frame of `module`.
fn frame_of(sym: &blazesym::symbolize::Sym, module: String) -> Frame {
    Frame {
        func: sym.name.to_string(),
        module,
        offset: sym.offset as u64,
        file: sym
            .code_info
            .as_ref()
            .map(|c| c.file.to_string_lossy().into_owned()),
        line: sym.code_info.as_ref().and_then(|c| c.line),
    }
}

/// User stacks from the copied registers and stack bytes: unwound, then
/// named from the files mapped, cached per (file, address in the file).
#[derive(Default)]
pub struct UserStacks {
    unwinding: RefCell<Unwinding>,
    symbolizer: Symbolizer,
    named: RefCell<HashMap<(usize, u64), Frame>>,
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
        (frames.iter().map(|f| self.name(f)).collect(), outcome)
    }

    fn name(&self, f: &UserFrame) -> Frame {
        let Some((image, svma)) = &f.at else {
            return Frame::unknown(f.addr, "");
        };
        let key = (Arc::as_ptr(image) as usize, *svma);
        if let Some(frame) = self.named.borrow().get(&key) {
            return frame.clone();
        }
        let frame = self.symbolize(image, *svma, f.addr);
        let mut named = self.named.borrow_mut();
        if named.len() >= CACHE_MAX {
            named.clear();
        }
        named.insert(key, frame.clone());
        frame
    }

    fn symbolize(&self, image: &ElfImage, svma: u64, addr: u64) -> Frame {
        let src = Source::Elf(Elf::new(&image.fd_path));
        match self
            .symbolizer
            .symbolize_single(&src, Input::VirtOffset(svma))
        {
            Ok(Symbolized::Sym(sym)) => frame_of(&sym, image.path.clone()),
            _ => Frame::unknown(addr, &image.path),
        }
    }
}
