//! Kernel symbols from /proc/kallsyms, to name the function an off-CPU
//! task blocked in and to tell disk waits and lock waits from plain sleeps.

use std::fs;

use crate::bpf_intf::{OFFCPU_DISK, OFFCPU_LOCK, OFFCPU_SLEEP, OFFCPU_UNINTERRUPTIBLE};

pub struct Kallsyms {
    /// (address, name) of text symbols, sorted by address
    syms: Vec<(u64, Box<str>)>,
}

impl Kallsyms {
    /// Read /proc/kallsyms. Without root its addresses are all zero, which
    /// leaves every stack unnamed rather than wrongly named.
    pub fn load() -> Self {
        Self::parse(&fs::read_to_string("/proc/kallsyms").unwrap_or_default())
    }

    pub fn parse(text: &str) -> Self {
        let mut syms: Vec<(u64, Box<str>)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.into()))
            })
            .collect();
        syms.sort_unstable_by_key(|(addr, _)| *addr);
        syms.shrink_to_fit();
        Kallsyms { syms }
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The function containing `addr`.
    pub fn resolve(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        i.checked_sub(1).map(|i| &*self.syms[i].1)
    }

    /// The function containing `addr` and how far into it `addr` is.
    pub fn resolve_with_offset(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        i.checked_sub(1)
            .map(|i| (&*self.syms[i].1, addr - self.syms[i].0))
    }

    /// What a kernel stack taken at sched_switch says about why the task
    /// is off the CPU: the first frame below the scheduler and tracing
    /// machinery, and a refined reason (disk or lock) when the stack shows one.
    pub fn explain(&self, stack: &[u64], reason: u32) -> (Option<String>, u32) {
        let names: Vec<&str> = stack.iter().filter_map(|&a| self.resolve(a)).collect();
        let blocked_in = names
            .iter()
            .find(|n| !is_machinery(n))
            .map(|n| n.to_string());
        (blocked_in, refine_reason(&names, reason))
    }
}

/// Frames that are the act of switching, not the reason for it.
fn is_machinery(name: &str) -> bool {
    name.contains("schedule")
        || name.starts_with("bpf_")
        || name.starts_with("__bpf")
        || name.starts_with("__traceiter")
        || name.starts_with("__probestub")
        || name.starts_with("trace_")
        || name == "__switch_to"
}

/// A sleep in the block layer is a disk wait; one in a futex, mutex, rwsem
/// or rt_mutex is a lock wait. Other reasons stand as the scheduler gave them.
pub fn refine_reason(frames: &[&str], reason: u32) -> u32 {
    if reason != OFFCPU_SLEEP && reason != OFFCPU_UNINTERRUPTIBLE {
        return reason;
    }
    let any = |pred: &dyn Fn(&str) -> bool| frames.iter().any(|f| pred(f));
    if any(&|f| {
        f.starts_with("io_schedule")
            || f.starts_with("blk_")
            || f.starts_with("bio_")
            || f.contains("submit_bio")
    }) {
        OFFCPU_DISK
    } else if any(&|f| {
        f.starts_with("futex_")
            || f.contains("mutex_lock")
            || f.contains("rwsem")
            || f.starts_with("rt_mutex")
            || f.starts_with("down_read")
            || f.starts_with("down_write")
    }) {
        OFFCPU_LOCK
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf_intf::OFFCPU_PREEMPTED;

    const TEXT: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81100000 T __schedule
ffffffff81100800 T schedule
ffffffff81101000 t do_nanosleep
ffffffff81102000 T futex_wait_queue
ffffffff81103000 T io_schedule
ffffffff81104000 D some_data
ffffffff81105000 T folio_wait_bit_common
";

    #[test]
    fn resolves_within_function() {
        let k = Kallsyms::parse(TEXT);
        assert_eq!(k.resolve(0xffffffff81100010), Some("__schedule"));
        assert_eq!(k.resolve(0xffffffff81101fff), Some("do_nanosleep"));
        assert_eq!(k.resolve(0x10), None);
        // data symbols are not functions
        assert_eq!(k.resolve(0xffffffff81104010), Some("io_schedule"));
    }

    #[test]
    fn explains_sleep_lock_and_disk() {
        let k = Kallsyms::parse(TEXT);
        let sleep = [0xffffffff81100010, 0xffffffff81100810, 0xffffffff81101010];
        assert_eq!(
            k.explain(&sleep, OFFCPU_SLEEP),
            (Some("do_nanosleep".into()), OFFCPU_SLEEP)
        );
        let futex = [0xffffffff81100010, 0xffffffff81102010];
        assert_eq!(
            k.explain(&futex, OFFCPU_SLEEP),
            (Some("futex_wait_queue".into()), OFFCPU_LOCK)
        );
        let disk = [0xffffffff81100010, 0xffffffff81103010, 0xffffffff81105010];
        assert_eq!(
            k.explain(&disk, OFFCPU_UNINTERRUPTIBLE),
            (Some("folio_wait_bit_common".into()), OFFCPU_DISK)
        );
        // a preemption is never relabelled
        assert_eq!(k.explain(&futex, OFFCPU_PREEMPTED).1, OFFCPU_PREEMPTED);
    }
}
