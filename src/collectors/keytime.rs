//! keytime: fork, vfork, pthread_create, execve, exit, and every on-CPU /
//! off-CPU interval of the target with the reason it left the CPU.
//! BPF side: bpf/keytime.bpf.c.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Link, MapCore, MapHandle};

use super::{
    attach_all, load_skel_variants, read_stats, Activation, Collector, CollectorKind, Decoder,
    LoadOptions,
};
use crate::bpf_intf::{
    self, decode, event_hdr, keytime_config, keytime_summary, keytime_summary_key,
    KEYTIME_LEVEL_ALL, KEYTIME_LEVEL_STACKS, KEYTIME_OFF_CPU_STACK, KEYTIME_WAKER,
};
use crate::kallsyms::Kallsyms;
use crate::kernel_btf::{self, Variant};
use crate::output::Output;
use crate::record::Record;
use crate::sys;
use crate::target::Target;

mod records;
pub use records::*;
mod namer;
pub mod stacks;
pub mod unwind;
pub mod wakers;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/keytime.skel.rs"));
}
use skel::{KeytimeSkel, KeytimeSkelBuilder};

const NAME: &str = "keytime";

/// Off-CPU intervals this long or longer are named by their kernel stack
/// (`blocked_in`, and the disk / lock refinement of the reason).
pub const STACK_MIN_NS: u64 = 50_000;

/// Threads listed per interval in whole-system text output unless --top says otherwise.
const DEFAULT_TEXT_TOP: usize = 20;

pub struct Keytime {
    skel: KeytimeSkel<'static>,
    /// the programs with a newer and an older form: is the newer loaded?
    switch_newer: bool,
    exit_newer: bool,
    /// the task pass has bpf_loop for the idle tasks (5.17+)
    pass_newer: bool,
    /// oom:mark_victim passes the task (else exits read signal->oom_mm)
    oom_newer: bool,
    links: Vec<Link>,
    /// the activation's target, as userspace last knew it
    target: Option<Target>,
    /// level 1 and 2: summaries to drain, until flushed
    summarizing: bool,
    /// threads per interval to print (None = all)
    top: Option<usize>,
    /// summaries since this time (CLOCK_MONOTONIC ns)
    interval_start_ns: u64,
    /// read at the first targeted activation, not at start: it costs ~10 MB
    ksyms: Arc<OnceLock<Kallsyms>>,
    /// the activation traces the whole system (its records name cgroups)
    whole_system: Rc<std::cell::Cell<bool>>,
    /// level 2: stack records unwound and named off the main loop
    namer: Rc<RefCell<namer::StackNamer>>,
}

impl Keytime {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let features = kernel_btf::features();
        let switch = Variant {
            newer: "handle__sched_switch",
            older: "handle__sched_switch_compat",
            use_newer: features.sched_switch_prev_state,
        };
        // the whole system's switches have a program of their own
        let switch_system = Variant {
            newer: "handle__sched_switch_system",
            older: "handle__sched_switch_system_compat",
            use_newer: features.sched_switch_prev_state,
        };
        let exit = Variant {
            newer: "handle__sched_process_exit",
            older: "handle__sched_process_exit_compat",
            use_newer: features.process_exit_group_dead,
        };
        let pass = Variant {
            newer: "handle__iter_task",
            older: "handle__iter_task_compat",
            use_newer: features.bpf_loop,
        };
        let oom = Variant {
            newer: "handle__mark_victim",
            older: "handle__mark_victim_compat",
            use_newer: features.mark_victim_task,
        };
        let skel = load_skel_variants(
            KeytimeSkelBuilder::default(),
            NAME,
            opts.ringbuf_bytes,
            &[switch, switch_system, exit, pass, oom],
        )?;
        let ksyms = Arc::new(OnceLock::new());
        Ok(Keytime {
            skel,
            switch_newer: switch.use_newer,
            exit_newer: exit.use_newer,
            pass_newer: pass.use_newer,
            oom_newer: oom.use_newer,
            links: Vec::new(),
            target: None,
            summarizing: false,
            top: opts.top.or((!opts.json).then_some(DEFAULT_TEXT_TOP)),
            interval_start_ns: 0,
            ksyms: ksyms.clone(),
            whole_system: Rc::default(),
            namer: Rc::new(RefCell::new(namer::StackNamer::start(ksyms)?)),
        })
    }

    fn config(&mut self) -> Result<&mut skel::types::keytime_config> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cfg)
            .ok_or_else(|| anyhow!("keytime: .bss is not mapped"))
    }

    fn summary_map(&self, slot: u32) -> &dyn MapCore {
        if slot == 0 {
            &self.skel.maps.summary_a
        } else {
            &self.skel.maps.summary_b
        }
    }

    /// Run the task pass (handle__iter_task): at the activation it starts
    /// every target task's stretch; at a close it gives the closing interval
    /// every task's part up to the close.
    fn run_pass(&self) -> Result<()> {
        let p = &self.skel.progs;
        let prog = if self.pass_newer {
            &p.handle__iter_task
        } else {
            &p.handle__iter_task_compat
        };
        let link = prog.attach().context("attach keytime/iter_task")?;
        super::read_task_iter(&link, "keytime")?;
        Ok(())
    }

    /// Close the interval at `now`: point BPF at the other summary map,
    /// starting at `now`. The start is written first: a program that sees
    /// the new slot sees its start.
    fn flip_slot(&mut self, now: u64) -> Result<u32> {
        let cfg = self.config()?;
        let old_slot = cfg.summary_slot & 1;
        let new_slot = old_slot ^ 1;
        // SAFETY: both point into the mapped .bss, which outlives this call;
        // volatile, so the stores are made, in this order
        unsafe {
            std::ptr::write_volatile(&mut cfg.closing_open, 1);
            std::ptr::write_volatile(&mut cfg.slot_start_ns[new_slot as usize], now);
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            std::ptr::write_volatile(&mut cfg.summary_slot, new_slot);
        }
        Ok(old_slot)
    }

    /// Close the interval and report what its summary map holds.
    fn drain_summaries(&mut self, out: &mut Output) -> Result<()> {
        let now = sys::monotonic_ns();
        let old_slot = self.flip_slot(now)?;
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        self.interval_start_ns = now;
        self.run_pass()?;

        // A sched_switch program that read the old slot just before the swap
        // may still be adding to an entry of the old map: wait until every
        // program in flight has finished (an RCU grace period, not a sleep:
        // a stalled vCPU can hold one far longer) before the entries are
        // taken out, or its addition would be lost with the entry.
        super::wait_for_programs_in_flight();
        let mut threads = Vec::new();
        let map = self.summary_map(old_slot);
        for (k, v) in &super::take_hash_entries(map).context("drain keytime summaries")? {
            let (Ok(key), Ok(sum)) = (
                decode::<keytime_summary_key>(k),
                decode::<keytime_summary>(v),
            ) else {
                continue;
            };
            threads.push((*key, *sum));
        }
        // from now on, a part of a stretch before the close is carried
        // into the current interval (and said: carried_ns)
        let cfg = self.config()?;
        // SAFETY: a field of the mapped .bss
        unsafe { std::ptr::write_volatile(&mut cfg.closing_open, 0) };
        // every thread is in every interval now: the busiest first
        threads.sort_by_key(|(k, s)| {
            (
                std::cmp::Reverse(s.on_cpu_ns),
                std::cmp::Reverse(s.switches_out),
                k.pid,
                k.cpu,
            )
        });
        let shown = self.top.unwrap_or(usize::MAX).min(threads.len());
        let whole_system = self.whole_system.get();
        for (key, sum) in &threads[..shown] {
            out.emit(&summary_record(now, interval_ns, key, sum, whole_system));
        }
        if shown < threads.len() {
            let rest = &threads[shown..];
            out.emit(&Record::new(
                now,
                Event::CpuSummaryRest(SummaryRest {
                    interval_ns,
                    threads: rest.len(),
                    on_cpu_ns: rest.iter().map(|(_, s)| s.on_cpu_ns).sum::<u64>(),
                    switches: rest.iter().map(|(_, s)| s.switches_out).sum::<u64>(),
                }),
            ));
        }
        Ok(())
    }
}

impl Collector for Keytime {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Keytime
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.deactivate();
        // targeted: off_cpu records name where they blocked from the first
        // one on; the symbols are read beside the main loop from now (a
        // record needs them only if it comes first), not in an interval
        if act.keytime_level >= KEYTIME_LEVEL_ALL
            && !act.target.is_system()
            && self.ksyms.get().is_none()
        {
            let ksyms = self.ksyms.clone();
            let _ = std::thread::Builder::new()
                .name("kallsyms".into())
                .spawn(move || ksyms.get_or_init(Kallsyms::load).is_empty());
        }
        let now = sys::monotonic_ns();
        let cfg = keytime_config {
            target: act.filter(),
            level: act.keytime_level,
            summary_slot: 0,
            stack_min_ns: STACK_MIN_NS,
            activated_ns: now,
            // no earlier interval: slot 1's start stays 0 until the first close
            slot_start_ns: [now, 0],
            nr_cpus: libbpf_rs::num_possible_cpus()
                .context("keytime: count the CPUs")?
                .try_into()
                .unwrap_or(u32::MAX),
            closing_open: 0,
            oom_from_mm: u32::from(!self.oom_newer),
            _pad: 0,
            offcpu_stack_min_ns: u64::from(act.stack_min_us) * 1000,
            stretch_min_ns: u64::from(act.stretch_min_us) * 1000,
        };
        bpf_intf::copy_into(self.config()?, &cfg);
        self.target = Some(act.target);
        if act.keytime_level >= KEYTIME_LEVEL_ALL {
            // leftovers of an earlier activation
            for slot in [0, 1] {
                let _ = super::take_hash_entries(self.summary_map(slot));
            }
        }
        self.interval_start_ns = now;

        let p = &self.skel.progs;
        let mut progs = vec![
            ("keytime/task_newtask", &p.handle__task_newtask),
            ("keytime/sched_process_exec", &p.handle__sched_process_exec),
            (
                "keytime/sched_process_exit",
                if self.exit_newer {
                    &p.handle__sched_process_exit
                } else {
                    &p.handle__sched_process_exit_compat
                },
            ),
            ("keytime/signal_generate", &p.handle__signal_generate),
        ];
        // any syscall tracepoint puts every task's every syscall on the
        // kernel's traced path (SYSCALL_WORK_SYSCALL_TRACEPOINT): only when asked
        if act.exec_failures {
            progs.extend([
                ("keytime/sys_enter_execve", &p.handle__sys_enter_execve),
                ("keytime/sys_exit_execve", &p.handle__sys_exit_execve),
                ("keytime/sys_enter_execveat", &p.handle__sys_enter_execveat),
                ("keytime/sys_exit_execveat", &p.handle__sys_exit_execveat),
            ]);
        }
        // the older mark_victim names no task: exits read signal->oom_mm instead
        if self.oom_newer {
            progs.push(("keytime/mark_victim", &p.handle__mark_victim));
        }
        // level 0 asks for lifecycle points only: leave sched_switch unhooked
        let switches = act.keytime_level >= KEYTIME_LEVEL_ALL;
        // level 2 names wakers: every wakeup in the system runs this (never at 0 or 1)
        if act.keytime_level >= KEYTIME_LEVEL_STACKS && !act.target.is_system() {
            progs.push(("keytime/sched_waking", &p.handle__sched_waking));
        }
        if switches {
            progs.push((
                "keytime/sched_switch",
                match (act.target.is_system(), self.switch_newer) {
                    (false, true) => &p.handle__sched_switch,
                    (false, false) => &p.handle__sched_switch_compat,
                    (true, true) => &p.handle__sched_switch_system,
                    (true, false) => &p.handle__sched_switch_system_compat,
                },
            ));
        }
        self.links = attach_all(&progs)?;
        // attached first, so a task either switched since (and is known)
        // or is in the stretch it was in at the activation
        if switches {
            if let Err(e) = self.run_pass() {
                self.links.clear();
                return Err(e);
            }
        }
        self.summarizing = switches;
        self.whole_system.set(act.target.is_system());
        let stacks = act.keytime_level >= bpf_intf::KEYTIME_LEVEL_STACKS && !act.target.is_system();
        self.namer.borrow_mut().set_active(stacks);
        if stacks {
            // read the target's mappings while it lives: its stacks are
            // unwound even if it has ended when they are decoded
            match act.target {
                Target::Thread { tgid, .. } | Target::Group { tgid, .. } => {
                    self.namer.borrow().watch(tgid)
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn deactivate(&mut self) {
        self.links.clear();
    }

    fn moved_target(&mut self) -> Option<Target> {
        let Some(Target::Thread { pid, .. }) = self.target else {
            return None;
        };
        let now = self.skel.maps.bss_data.as_deref()?.cfg.target.pid;
        if now == pid {
            return None;
        }
        // BPF followed the thread's exec: it leads its group under the leader's pid
        let moved = Target::Thread {
            pid: now,
            tgid: now,
            start_ticks: sys::proc_stat(now)?.start_ticks,
        };
        self.target = Some(moved);
        Some(moved)
    }

    fn describe(&self, act: &Activation) -> String {
        let what = if act.keytime_level >= KEYTIME_LEVEL_STACKS && !act.target.is_system() {
            format!(
                "lifecycle events, on/off-CPU summed per thread per interval, stretches from {} us, off-CPU stacks and their wakers from {} us",
                act.stretch_min_us, act.stack_min_us
            )
        } else if act.keytime_level >= KEYTIME_LEVEL_ALL {
            if act.target.is_system() {
                "lifecycle events, on/off-CPU summed per thread per interval".into()
            } else {
                format!(
                    "lifecycle events, on/off-CPU summed per thread per interval, stretches from {} us",
                    act.stretch_min_us
                )
            }
        } else {
            "lifecycle events only (level 0)".into()
        };
        let execs = if act.exec_failures {
            ", failed execs"
        } else {
            ""
        };
        format!("keytime on {}: {what}{execs}", act.target)
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("keytime ring buffer")
    }

    fn decoder(&self) -> Decoder {
        let ksyms = self.ksyms.clone();
        let whole_system = self.whole_system.clone();
        let namer = self.namer.clone();
        Box::new(move |data| {
            // level 2's stacks (a waker's, then its stretch's) are named off the main loop
            let kind = u32::from(decode::<event_hdr>(data)?.kind);
            if kind == KEYTIME_WAKER || kind == KEYTIME_OFF_CPU_STACK {
                namer.borrow_mut().decode(data);
                return Ok(None);
            }
            let rec = decode_record(data, &ksyms)?;
            namer.borrow().follow(&rec);
            // the whole system: which container or service each thread is in
            Ok(Some(match whole_system.get() {
                true => rec.cgroup(decode::<event_hdr>(data)?.cgroup_id),
                false => rec,
            }))
        })
    }

    fn service(&mut self, out: &mut Output) -> Result<()> {
        let named = self.namer.borrow_mut().ready();
        emit_named(named, out)
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        if self.summarizing {
            self.drain_summaries(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Output) -> Result<()> {
        let named = self.namer.borrow_mut().drain();
        emit_named(named, out)?;
        self.on_interval(out)?;
        self.summarizing = false;
        Ok(())
    }

    fn stats(&self) -> Result<crate::losses::Losses> {
        read_stats(&self.skel.maps.stats)
    }

    fn object(&self) -> &libbpf_rs::Object {
        libbpf_rs::skel::Skel::object(&self.skel)
    }
}

/// Stack records named off the main loop, written now; the first failure is
/// said (a record that cannot be decoded is counted like the main loop's).
fn emit_named(named: Vec<Result<Option<Record>>>, out: &mut Output) -> Result<()> {
    let mut failed = None;
    for rec in named {
        match rec {
            Ok(Some(rec)) => out.emit(&rec),
            Ok(None) => {}
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    failed.map_or(Ok(()), Err)
}
