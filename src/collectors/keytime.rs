//! keytime: fork, vfork, pthread_create, execve, exit, and every on-CPU /
//! off-CPU interval of the target with the reason it left the CPU.
//! BPF side: bpf/keytime.bpf.c.

use std::cell::OnceCell;
use std::io::Read;
use std::rc::Rc;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Iter, Link, MapCore, MapFlags, MapHandle};
use serde::Serialize;
use serde_json::json;

use super::{
    attach_all, load_skel_variants, read_stats, Activation, Collector, CollectorKind, Decoder,
    LoadOptions,
};
use crate::bpf_intf::{
    self, c_str, decode, event_hdr, keytime_child_exit_event, keytime_clone_event, keytime_config,
    keytime_cpu_event, keytime_exec_event, keytime_exec_failed_event, keytime_exit_event,
    keytime_summary, keytime_summary_key, KEYTIME_ARGS_LEN, KEYTIME_CHILD_EXIT, KEYTIME_EXECVE,
    KEYTIME_EXEC_FAILED, KEYTIME_EXIT, KEYTIME_FORK, KEYTIME_KERNEL_WORKER, KEYTIME_LEVEL_ALL,
    KEYTIME_OFF_CPU, KEYTIME_ON_CPU, KEYTIME_PTHREAD_CREATE, KEYTIME_VFORK, OFFCPU_REASON_COUNT,
};
use crate::kallsyms::Kallsyms;
use crate::kernel_btf::{self, Variant};
use crate::metrics::{with_label, Fam, Updates};
use crate::output::Output;
use crate::record::{hex, Body, Record};
use crate::sys;
use crate::target::Target;
use crate::trace::{self, TraceWriter};

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
    /// whole system at level 1: summaries to drain, until flushed
    summarizing: bool,
    /// whole system: threads per interval to print (None = all)
    top: Option<usize>,
    /// summaries since this time (CLOCK_MONOTONIC ns)
    interval_start_ns: u64,
    /// read on the first off-CPU stack, not at start: it costs ~10 MB
    ksyms: Rc<OnceCell<Kallsyms>>,
    /// the activation traces the whole system (its records name cgroups)
    whole_system: Rc<std::cell::Cell<bool>>,
}

impl Keytime {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        let features = kernel_btf::features();
        let switch = Variant {
            newer: "handle__sched_switch",
            older: "handle__sched_switch_compat",
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
            &[switch, exit, pass, oom],
        )?;
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
            ksyms: Rc::new(OnceCell::new()),
            whole_system: Rc::default(),
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
        let mut sink = Vec::new();
        Iter::new(&link)
            .context("keytime: start the task pass")?
            .read_to_end(&mut sink)
            .context("keytime: run the task pass")?;
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
        for (k, v) in map
            .lookup_and_delete_batch(1024, MapFlags::ANY, MapFlags::ANY)
            .context("drain keytime summaries")?
        {
            let (Ok(key), Ok(sum)) = (
                decode::<keytime_summary_key>(&k),
                decode::<keytime_summary>(&v),
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
        for (key, sum) in &threads[..shown] {
            out.emit(&summary_record(now, interval_ns, key, sum));
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
        };
        bpf_intf::copy_into(self.config()?, &cfg);
        self.target = Some(act.target);
        if act.target.is_system() {
            // leftovers of an earlier whole-system activation
            for slot in [0, 1] {
                let _ = self
                    .summary_map(slot)
                    .lookup_and_delete_batch(1024, MapFlags::ANY, MapFlags::ANY)
                    .map(|it| it.count());
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
            ("keytime/sys_enter_execve", &p.handle__sys_enter_execve),
            ("keytime/sys_exit_execve", &p.handle__sys_exit_execve),
            ("keytime/sys_enter_execveat", &p.handle__sys_enter_execveat),
            ("keytime/sys_exit_execveat", &p.handle__sys_exit_execveat),
        ];
        // the older mark_victim names no task: exits read signal->oom_mm instead
        if self.oom_newer {
            progs.push(("keytime/mark_victim", &p.handle__mark_victim));
        }
        // level 0 asks for lifecycle points only: leave sched_switch unhooked
        let switches = act.keytime_level >= KEYTIME_LEVEL_ALL;
        if switches {
            progs.push((
                "keytime/sched_switch",
                if self.switch_newer {
                    &p.handle__sched_switch
                } else {
                    &p.handle__sched_switch_compat
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
        self.summarizing = act.target.is_system() && switches;
        self.whole_system.set(act.target.is_system());
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
        let what = if act.keytime_level >= KEYTIME_LEVEL_ALL {
            if act.target.is_system() {
                "lifecycle events, on/off-CPU summed per thread per interval"
            } else {
                "lifecycle events and every on/off-CPU interval"
            }
        } else {
            "lifecycle events only (level 0)"
        };
        format!("keytime on {}: {what}", act.target)
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("keytime ring buffer")
    }

    fn decoder(&self) -> Decoder {
        let ksyms = self.ksyms.clone();
        let whole_system = self.whole_system.clone();
        Box::new(move |data| {
            let rec = decode_record(data, &ksyms)?;
            // the whole system: which container or service each thread is in
            Ok(Some(match whole_system.get() {
                true => rec.cgroup(decode::<event_hdr>(data)?.cgroup_id),
                false => rec,
            }))
        })
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        if self.summarizing {
            self.drain_summaries(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Output) -> Result<()> {
        self.on_interval(out)?;
        self.summarizing = false;
        Ok(())
    }

    fn stats(&self) -> Result<crate::losses::Losses> {
        read_stats(&self.skel.maps.stats)
    }
}

fn task_record(hdr: &event_hdr, event: Event) -> Record {
    Record::new(hdr.ts_ns, event).task(hdr.pid, hdr.tgid, c_str(&hdr.comm))
}

pub fn decode_record(data: &[u8], ksyms: &OnceCell<Kallsyms>) -> Result<Record> {
    let hdr = decode::<event_hdr>(data)?;
    let event = match u32::from(hdr.kind) {
        kind @ (KEYTIME_FORK | KEYTIME_VFORK | KEYTIME_PTHREAD_CREATE | KEYTIME_KERNEL_WORKER) => {
            let e = decode::<keytime_clone_event>(data)?;
            let child = Child {
                child_pid: e.child_pid,
                child_tgid: e.child_tgid,
                clone_flags: e.clone_flags,
            };
            match kind {
                KEYTIME_FORK => Event::Fork(child),
                KEYTIME_VFORK => Event::Vfork(child),
                KEYTIME_KERNEL_WORKER => Event::KernelWorker(child),
                _ => Event::PthreadCreate(child),
            }
        }
        KEYTIME_EXECVE => {
            let e = decode::<keytime_exec_event>(data)?;
            let argv = argv_of(&e.args[..(e.args_len as usize).min(e.args.len())]);
            Event::Execve(Exec {
                filename: c_str(&e.filename),
                argv,
                old_pid: (e.old_pid != hdr.pid).then_some(e.old_pid),
                argv_truncated: e.args_truncated != 0,
            })
        }
        KEYTIME_EXIT => {
            let e = decode::<keytime_exit_event>(data)?;
            let status = e.exit_code;
            let signal = status & 0x7f;
            Event::Exit(Exit {
                exit_code: (status >> 8) & 0xff,
                signal,
                signal_name: (signal != 0).then(|| signal_name(signal)),
                core_dumped: status & 0x80 != 0,
                group_dead: e.group_dead != 0,
                killed_by: killer_of(e),
                oom_kill: e.oom_kill != 0,
            })
        }
        KEYTIME_CHILD_EXIT => {
            Event::ChildExit(ChildExit::of(decode::<keytime_child_exit_event>(data)?))
        }
        KEYTIME_EXEC_FAILED => {
            Event::ExecveFailed(ExecFailed::of(decode::<keytime_exec_failed_event>(data)?))
        }
        KEYTIME_ON_CPU => {
            let e = decode::<keytime_cpu_event>(data)?;
            Event::OnCpu(OnCpu {
                cpu: hdr.cpu,
                duration_ns: e.duration_ns,
            })
        }
        KEYTIME_OFF_CPU => {
            let e = decode::<keytime_cpu_event>(data)?;
            let frames = (e.stack_len as usize / 8).min(e.kstack.len());
            let (blocked_in, reason) = if frames > 0 {
                ksyms
                    .get_or_init(Kallsyms::load)
                    .explain(&e.kstack[..frames], e.reason)
            } else {
                (None, e.reason)
            };
            Event::OffCpu(OffCpu {
                cpu: hdr.cpu,
                duration_ns: e.duration_ns,
                reason: reason_name(reason),
                blocked_in,
                prev_state: e.prev_state.into(),
            })
        }
        other => return Err(anyhow!("unknown keytime record kind {other}")),
    };
    Ok(task_record(hdr, event))
}

/// NUL-separated strings as a list.
fn argv_of(args: &[u8]) -> Vec<String> {
    let argv: Vec<String> = args
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>();
    // the area ends with a NUL, which leaves one empty piece
    match argv.split_last() {
        Some((last, rest)) if last.is_empty() => rest.to_vec(),
        _ => argv,
    }
}

/// The task a fatal signal was generated in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Killer {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// the kernel raised it (a fault, the OOM killer): `pid` is the task it ran for
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kernel: bool,
}

/// The sender of the signal an `exit` died of, when its sending was seen.
fn killer_of(e: &keytime_exit_event) -> Option<Killer> {
    (e.killed != 0).then(|| Killer {
        pid: e.killer_pid,
        tgid: e.killer_tgid,
        comm: c_str(&e.killer_comm),
        kernel: e.killer_kernel != 0,
    })
}

/// `child_exit`: a thread or process a target created has ended (the
/// record's pid/tgid/comm are its creator's, as at the creation).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChildExit {
    pub child_pid: u32,
    pub child_tgid: u32,
    pub child_comm: String,
    /// fork, vfork, pthread_create or kernel_worker
    pub kind: &'static str,
    pub lifetime_ns: u64,
    pub exit_code: u32,
    pub signal: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_dumped: Option<bool>,
}

impl ChildExit {
    fn of(e: &keytime_child_exit_event) -> Self {
        ChildExit {
            child_pid: e.child_pid,
            child_tgid: e.child_tgid,
            child_comm: c_str(&e.child_comm),
            kind: match u32::from(e.kind) {
                KEYTIME_FORK => "fork",
                KEYTIME_VFORK => "vfork",
                KEYTIME_KERNEL_WORKER => "kernel_worker",
                _ => "pthread_create",
            },
            lifetime_ns: e.lifetime_ns,
            exit_code: (e.exit_code >> 8) & 0xff,
            signal: e.exit_code & 0x7f,
            core_dumped: (e.exit_code & 0x80 != 0).then_some(true),
        }
    }
}

/// `execve_failed`: an execve / execveat of a target that returned an error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecFailed {
    /// execve or execveat
    pub syscall: &'static str,
    pub filename: String,
    pub argv: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv_truncated: Option<bool>,
    pub ret: i32,
    pub error: String,
}

impl ExecFailed {
    fn of(e: &keytime_exec_failed_event) -> Self {
        let len = (e.args_len as usize).min(KEYTIME_ARGS_LEN as usize);
        ExecFailed {
            syscall: if e.execveat != 0 {
                "execveat"
            } else {
                "execve"
            },
            filename: c_str(&e.filename),
            argv: argv_of(&e.args[..len]),
            argv_truncated: (e.args_truncated != 0).then_some(true),
            ret: e.ret,
            error: exec_errno_name(-e.ret),
        }
    }
}

/// The name of an errno execve(2) returns.
fn exec_errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::ENOEXEC => "ENOEXEC",
        libc::ENOTDIR => "ENOTDIR",
        libc::E2BIG => "E2BIG",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ETXTBSY => "ETXTBSY",
        libc::EPERM => "EPERM",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EIO => "EIO",
        libc::ELIBBAD => "ELIBBAD",
        libc::EAGAIN => "EAGAIN",
        libc::EBADF => "EBADF",
        other => return format!("errno {other}"),
    };
    name.into()
}

fn summary_record(
    now: u64,
    interval_ns: u64,
    key: &keytime_summary_key,
    s: &keytime_summary,
) -> Record {
    let by_reason = s
        .off_cpu_ns
        .iter()
        .enumerate()
        .filter(|(_, &ns)| ns > 0)
        .map(|(i, &ns)| (reason_name(i as u32), ns))
        .collect();
    let comm = match key.pid {
        0 => format!("swapper/{}", key.cpu),
        _ => c_str(&s.comm),
    };
    let summary = Summary {
        interval_ns,
        on_cpu_ns: s.on_cpu_ns,
        off_cpu_ns: s.off_cpu_ns.iter().sum::<u64>(),
        switches: s.switches_out,
        preemptions: s.preemptions,
        off_cpu_by_reason_ns: ByReason(by_reason),
        carried_ns: (s.carried_ns > 0).then_some(s.carried_ns),
        cpu: (key.pid == 0).then_some(key.cpu),
    };
    // the whole system: which container or service each thread is in
    Record::new(now, Event::CpuSummary(summary))
        .task(key.pid, s.tgid, comm)
        .cgroup(s.cgroup_id)
}

// ---------------------------------------------------------------------
// Records

/// The keytime collector's records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Fork(Child),
    Vfork(Child),
    PthreadCreate(Child),
    /// io_uring and vhost workers the target started
    KernelWorker(Child),
    Execve(Exec),
    /// an execve / execveat that returned an error
    ExecveFailed(ExecFailed),
    Exit(Exit),
    /// a thread or process the target created has ended
    ChildExit(ChildExit),
    /// one on-CPU stretch, just ended
    OnCpu(OnCpu),
    /// one off-CPU stretch, just ended
    OffCpu(OffCpu),
    /// whole system: a thread's interval
    CpuSummary(Summary),
    /// whole system: the threads not listed (--top), summed
    CpuSummaryRest(SummaryRest),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Child {
    pub child_pid: u32,
    pub child_tgid: u32,
    #[serde(serialize_with = "hex")]
    pub clone_flags: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Exec {
    pub filename: String,
    pub argv: Vec<String>,
    /// the thread that exec'd, when not the leader (it goes on as the leader)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_pid: Option<u32>,
    #[serde(skip_serializing_if = "is_false")]
    pub argv_truncated: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Exit {
    pub exit_code: u32,
    pub signal: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub core_dumped: bool,
    /// the last thread of its group
    pub group_dead: bool,
    /// ended by a signal whose sending was seen: who sent it
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<Killer>,
    /// the OOM killer chose its process
    #[serde(skip_serializing_if = "is_false")]
    pub oom_kill: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OnCpu {
    pub cpu: u16,
    pub duration_ns: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OffCpu {
    pub cpu: u16,
    pub duration_ns: u64,
    pub reason: &'static str,
    /// the kernel function it blocked in (stretches of 50 us and more)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_in: Option<String>,
    /// the raw task state it left with
    #[serde(serialize_with = "hex")]
    pub prev_state: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub interval_ns: u64,
    pub on_cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub switches: u64,
    pub preemptions: u64,
    pub off_cpu_by_reason_ns: ByReason,
    /// the part of a stretch before this interval that is counted in it
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried_ns: Option<u64>,
    /// the CPU of an idle task
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SummaryRest {
    pub interval_ns: u64,
    pub threads: usize,
    pub on_cpu_ns: u64,
    pub switches: u64,
}

/// Off-CPU ns by reason, reasons with time only; shown as a JSON object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ByReason(pub Vec<(&'static str, u64)>);

impl Serialize for ByReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().copied())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Fork(_) => "fork",
            Event::Vfork(_) => "vfork",
            Event::PthreadCreate(_) => "pthread_create",
            Event::KernelWorker(_) => "kernel_worker",
            Event::Execve(_) => "execve",
            Event::ExecveFailed(_) => "execve_failed",
            Event::Exit(_) => "exit",
            Event::ChildExit(_) => "child_exit",
            Event::OnCpu(_) => "on_cpu",
            Event::OffCpu(_) => "off_cpu",
            Event::CpuSummary(_) => "cpu_summary",
            Event::CpuSummaryRest(_) => "cpu_summary_rest",
        }
    }

    pub fn metrics(&self, _rec: &Record, m: &mut Updates) {
        match self {
            Event::Fork(_)
            | Event::Vfork(_)
            | Event::PthreadCreate(_)
            | Event::Execve(_)
            | Event::ExecveFailed(_)
            | Event::Exit(_)
            | Event::ChildExit(_) => {
                let labels = m.thread(1_000_000);
                m.add(
                    Fam::LifecycleEvents,
                    with_label(labels, "event", self.name()),
                    1.0,
                );
            }
            Event::KernelWorker(_) => {}
            Event::OnCpu(e) => {
                let labels = m.thread(e.duration_ns);
                m.add(Fam::OnCpu, labels, e.duration_ns as f64 / 1e9);
            }
            Event::OffCpu(e) => {
                let labels = m.thread(0);
                m.add(
                    Fam::OffCpu,
                    with_label(labels, "reason", e.reason),
                    e.duration_ns as f64 / 1e9,
                );
            }
            Event::CpuSummary(s) => {
                let labels = m.thread(s.on_cpu_ns);
                m.add(Fam::OnCpu, labels.clone(), s.on_cpu_ns as f64 / 1e9);
                for &(reason, ns) in &s.off_cpu_by_reason_ns.0 {
                    let l = with_label(labels.clone(), "reason", reason);
                    m.add(Fam::OffCpu, l, ns as f64 / 1e9);
                }
            }
            Event::CpuSummaryRest(r) => {
                let labels = m.other_threads();
                m.add(Fam::OnCpu, labels, r.on_cpu_ns as f64 / 1e9);
            }
        }
    }

    pub fn trace(&self, rec: &Record, t: &mut TraceWriter) {
        match self {
            Event::Fork(c) | Event::Vfork(c) | Event::PthreadCreate(c) => t.instant(
                rec,
                json!({"child_pid": c.child_pid, "child_tgid": c.child_tgid,
                       "clone_flags": format!("{:#x}", c.clone_flags)}),
            ),
            Event::KernelWorker(_) => {}
            Event::Execve(e) => {
                let mut args = json!({"filename": e.filename, "argv": e.argv});
                if let Some(old) = e.old_pid {
                    args["old_pid"] = old.into();
                }
                t.instant(rec, args)
            }
            Event::Exit(e) => {
                let mut args = json!({"exit_code": e.exit_code, "signal": e.signal});
                if let Some(name) = &e.signal_name {
                    args["signal_name"] = name.as_str().into();
                }
                args["group_dead"] = e.group_dead.into();
                if let Some(k) = &e.killed_by {
                    args["killed_by"] = json!(k);
                }
                if e.oom_kill {
                    args["oom_kill"] = true.into();
                }
                t.instant(rec, args)
            }
            Event::ExecveFailed(e) => t.instant(
                rec,
                json!({"filename": e.filename, "argv": e.argv, "error": e.error}),
            ),
            Event::ChildExit(c) => t.instant(
                rec,
                json!({"child_pid": c.child_pid, "child_comm": c.child_comm, "kind": c.kind,
                       "lifetime_ns": c.lifetime_ns, "exit_code": c.exit_code, "signal": c.signal}),
            ),
            Event::OnCpu(e) => t.slice(rec, "on-CPU", e.duration_ns, &json!({"cpu": e.cpu})),
            Event::OffCpu(e) => {
                let mut args = json!({"cpu": e.cpu, "reason": e.reason});
                if let Some(f) = &e.blocked_in {
                    args["blocked_in"] = f.as_str().into();
                }
                args["prev_state"] = format!("{:#x}", e.prev_state).into();
                let name = format!("off-CPU: {}", e.reason);
                t.slice(rec, &name, e.duration_ns, &args)
            }
            Event::CpuSummary(s) => {
                let pct = trace::percent(s.on_cpu_ns, s.interval_ns);
                t.counter(
                    rec.tgid,
                    "on-CPU %",
                    rec.ts_ns,
                    json!({rec.pid.to_string(): pct}),
                );
            }
            Event::CpuSummaryRest(_) => {}
        }
    }
}

impl From<Event> for Body {
    fn from(e: Event) -> Self {
        Body::Keytime(e)
    }
}

/// The names used in output for enum offcpu_reason.
pub fn reason_name(reason: u32) -> &'static str {
    const NAMES: [&str; OFFCPU_REASON_COUNT as usize] = [
        "preempted",
        "sleep",
        "uninterruptible",
        "idle",
        "stopped",
        "traced",
        "parked",
        "dead",
        "lock",
        "disk",
        "other",
    ];
    NAMES.get(reason as usize).copied().unwrap_or("other")
}

fn signal_name(sig: u32) -> String {
    // SAFETY: strsignal returns a pointer to a static or thread-local string.
    let name = unsafe { std::ffi::CStr::from_ptr(libc::strsignal(sig as i32)) };
    name.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf_intf::{OFFCPU_DISK, OFFCPU_OTHER, OFFCPU_PREEMPTED, OFFCPU_SLEEP};
    use serde_json::Value;

    fn bytes<T: plain::Plain>(v: &T) -> Vec<u8> {
        // SAFETY: plain types have no padding-sensitive invariants
        unsafe { plain::as_bytes(v) }.to_vec()
    }

    fn hdr(kind: u32) -> event_hdr {
        let mut h = event_hdr {
            ts_ns: 42,
            pid: 11,
            tgid: 10,
            kind: kind as u8,
            cpu: 1,
            ..Default::default()
        };
        h.comm[..4].copy_from_slice(b"work");
        h
    }

    #[test]
    fn clone_kinds() {
        for (kind, name) in [
            (KEYTIME_FORK, "fork"),
            (KEYTIME_VFORK, "vfork"),
            (KEYTIME_PTHREAD_CREATE, "pthread_create"),
            (KEYTIME_KERNEL_WORKER, "kernel_worker"),
        ] {
            let e = keytime_clone_event {
                hdr: hdr(kind),
                clone_flags: 0x4111,
                child_pid: 20,
                child_tgid: 20,
            };
            let r = decode_record(&bytes(&e), &OnceCell::new()).unwrap();
            assert_eq!(
                (r.event(), r.pid, r.tgid, r.comm.as_str()),
                (name, 11, 10, "work")
            );
            assert_eq!(r.get("child_pid"), Some(Value::from(20)));
        }
    }

    #[test]
    fn execve_argv_and_exit_status() {
        let mut e = keytime_exec_event {
            hdr: hdr(KEYTIME_EXECVE),
            old_pid: 11,
            ..Default::default()
        };
        e.filename[..9].copy_from_slice(b"/bin/true");
        let args = b"true\0-x\0\0";
        e.args[..args.len()].copy_from_slice(args);
        e.args_len = args.len() as u32;
        let r = decode_record(&bytes(&e), &OnceCell::new()).unwrap();
        assert_eq!(r.get("filename"), Some(Value::from("/bin/true")));
        assert_eq!(r.get("argv"), Some(serde_json::json!(["true", "-x", ""])));
        assert_eq!(r.get("old_pid"), None);

        let x = keytime_exit_event {
            hdr: hdr(KEYTIME_EXIT),
            exit_code: 7 << 8,
            group_dead: 1,
            ..Default::default()
        };
        let r = decode_record(&bytes(&x), &OnceCell::new()).unwrap();
        assert_eq!(
            (r.get("exit_code"), r.get("signal")),
            (Some(Value::from(7)), Some(Value::from(0)))
        );
        let killed = keytime_exit_event { exit_code: 9, ..x };
        let r = decode_record(&bytes(&killed), &OnceCell::new()).unwrap();
        assert_eq!(
            (r.get("exit_code"), r.get("signal")),
            (Some(Value::from(0)), Some(Value::from(9)))
        );
        assert_eq!(r.get("signal_name"), Some(Value::from("Killed")));
        assert_eq!((r.get("killed_by"), r.get("oom_kill")), (None, None));

        // killed by a known sender, chosen by the OOM killer
        let mut oom = keytime_exit_event {
            killed: 1,
            killer_kernel: 1,
            killer_pid: 30,
            killer_tgid: 29,
            oom_kill: 1,
            ..killed
        };
        oom.killer_comm[..3].copy_from_slice(b"hog");
        let r = decode_record(&bytes(&oom), &OnceCell::new()).unwrap();
        assert_eq!(
            r.get("killed_by"),
            Some(serde_json::json!({"pid": 30, "tgid": 29, "comm": "hog", "kernel": true}))
        );
        assert_eq!(r.get("oom_kill"), Some(Value::from(true)));
    }

    #[test]
    fn child_exit_and_failed_exec() {
        let mut c = keytime_child_exit_event {
            hdr: hdr(KEYTIME_CHILD_EXIT),
            lifetime_ns: 1234,
            child_pid: 20,
            child_tgid: 20,
            exit_code: 11 << 8,
            kind: KEYTIME_VFORK as u8,
            ..Default::default()
        };
        c.child_comm[..2].copy_from_slice(b"sh");
        let r = decode_record(&bytes(&c), &OnceCell::new()).unwrap();
        assert_eq!(
            (r.event(), r.pid, r.comm.as_str()),
            ("child_exit", 11, "work")
        );
        assert_eq!(
            r.to_json(),
            serde_json::json!({"ts_ns": 42, "collector": "keytime", "pid": 11, "tgid": 10,
                "comm": "work", "event": "child_exit", "child_pid": 20, "child_tgid": 20,
                "child_comm": "sh", "kind": "vfork", "lifetime_ns": 1234, "exit_code": 11,
                "signal": 0})
        );

        let mut f = keytime_exec_failed_event {
            hdr: hdr(KEYTIME_EXEC_FAILED),
            ret: -libc::ENOENT,
            ..Default::default()
        };
        f.filename[..7].copy_from_slice(b"/no/cmd");
        let args = b"cmd\0-v\0";
        f.args[..args.len()].copy_from_slice(args);
        f.args_len = args.len() as u32;
        let r = decode_record(&bytes(&f), &OnceCell::new()).unwrap();
        assert_eq!(r.event(), "execve_failed");
        assert_eq!(r.get("syscall"), Some(Value::from("execve")));
        assert_eq!(r.get("filename"), Some(Value::from("/no/cmd")));
        assert_eq!(r.get("argv"), Some(serde_json::json!(["cmd", "-v"])));
        assert_eq!(
            (r.get("ret"), r.get("error")),
            (Some(Value::from(-2)), Some(Value::from("ENOENT")))
        );
        // args_len past the buffer's reported part is cut, not trusted
        f.args_len = u32::MAX;
        f.execveat = 1;
        let r = decode_record(&bytes(&f), &OnceCell::new()).unwrap();
        assert_eq!(r.get("syscall"), Some(Value::from("execveat")));
    }

    #[test]
    fn off_cpu_reason_and_stack() {
        let mut e = keytime_cpu_event {
            hdr: hdr(KEYTIME_OFF_CPU),
            duration_ns: 5,
            reason: OFFCPU_SLEEP,
            ..Default::default()
        };
        let ksyms = OnceCell::new();
        let _ = ksyms.set(Kallsyms::parse("ffffffff81000000 T __schedule\nffffffff81001000 T io_schedule\nffffffff81002000 T folio_wait_bit_common\n"));
        e.kstack[..3].copy_from_slice(&[
            0xffffffff81000010,
            0xffffffff81001010,
            0xffffffff81002010,
        ]);
        e.stack_len = 24;
        let r = decode_record(&bytes(&e), &ksyms).unwrap();
        assert_eq!(r.get("reason"), Some(Value::from(reason_name(OFFCPU_DISK))));
        assert_eq!(
            r.get("blocked_in"),
            Some(Value::from("folio_wait_bit_common"))
        );
        e.reason = OFFCPU_PREEMPTED;
        e.stack_len = 0;
        let r = decode_record(&bytes(&e), &ksyms).unwrap();
        assert_eq!(r.get("reason"), Some(Value::from("preempted")));
        assert_eq!(r.get("blocked_in"), None);
        assert_eq!(reason_name(OFFCPU_OTHER), "other");
        assert_eq!(reason_name(99), "other");
    }

    #[test]
    fn short_record_is_an_error() {
        let e = hdr(KEYTIME_EXECVE);
        assert!(decode_record(&bytes(&e), &OnceCell::new()).is_err());
    }
}
