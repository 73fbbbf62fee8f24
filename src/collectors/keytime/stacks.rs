//! Level 2 off-CPU stacks, symbolized: kernel frames from kallsyms, user
//! frames with blazesym from the process's own ELF files (read through
//! /proc/PID/map_files, so deleted binaries and containers work).

use std::cell::RefCell;
use std::collections::HashMap;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use serde::Serialize;

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

/// Frames cached per process and address beyond this many are dropped all at
/// once (a long run with many processes must not grow without bound).
const CACHE_MAX: usize = 200_000;

/// User frames named with blazesym, cached per (tgid, address): a repeated
/// stack costs hash lookups only, and a process that has exited is still
/// named for the addresses seen while it lived.
pub struct UserSyms {
    symbolizer: Symbolizer,
    cache: RefCell<HashMap<(u32, u64), Frame>>,
}

impl Default for UserSyms {
    fn default() -> Self {
        UserSyms {
            symbolizer: Symbolizer::new(),
            cache: RefCell::new(HashMap::new()),
        }
    }
}

impl UserSyms {
    pub fn frames(&self, tgid: u32, addrs: &[u64]) -> Vec<Frame> {
        let mut cache = self.cache.borrow_mut();
        let missing: Vec<u64> = addrs
            .iter()
            .copied()
            .filter(|a| !cache.contains_key(&(tgid, *a)))
            .collect();
        if !missing.is_empty() {
            if cache.len() + missing.len() > CACHE_MAX {
                cache.clear();
            }
            let src = Source::Process(Process::new(tgid.into()));
            let named = self
                .symbolizer
                .symbolize(&src, Input::AbsAddr(&missing))
                .unwrap_or_default();
            for (i, &addr) in missing.iter().enumerate() {
                let frame = match named.get(i) {
                    Some(Symbolized::Sym(sym)) => Frame {
                        func: sym.name.to_string(),
                        module: sym
                            .module
                            .as_deref()
                            .map(|m| m.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        offset: sym.offset as u64,
                        file: sym
                            .code_info
                            .as_ref()
                            .map(|c| c.file.to_string_lossy().into_owned()),
                        line: sym.code_info.as_ref().and_then(|c| c.line),
                    },
                    _ => Frame::unknown(addr, ""),
                };
                cache.insert((tgid, addr), frame);
            }
        }
        addrs
            .iter()
            .map(|a| {
                cache
                    .get(&(tgid, *a))
                    .cloned()
                    .unwrap_or_else(|| Frame::unknown(*a, ""))
            })
            .collect()
    }
}
