//! keytime: fork, vfork, pthread_create, execve, exit, and every on-CPU /
//! off-CPU interval of the target with the reason it left the CPU.
//! BPF side: bpf/keytime.bpf.c.

use std::cell::OnceCell;
use std::io::Read;
use std::rc::Rc;

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Iter, Link, MapCore, MapFlags, MapHandle};
use serde_json::{Map, Value};

use super::{
    attach_all, load_skel_variants, read_stats, Activation, Collector, CollectorKind, Decoder,
    LoadOptions,
};
use crate::bpf_intf::{
    self, c_str, collector_stats, decode, event_hdr, keytime_child_exit_event, keytime_clone_event,
    keytime_config, keytime_cpu_event, keytime_exec_event, keytime_exec_failed_event,
    keytime_exit_event, keytime_summary, keytime_summary_key, KEYTIME_ARGS_LEN, KEYTIME_CHILD_EXIT,
    KEYTIME_EXECVE, KEYTIME_EXEC_FAILED, KEYTIME_EXIT, KEYTIME_FORK, KEYTIME_KERNEL_WORKER,
    KEYTIME_LEVEL_ALL, KEYTIME_OFF_CPU, KEYTIME_ON_CPU, KEYTIME_PTHREAD_CREATE, KEYTIME_VFORK,
    OFFCPU_REASON_COUNT,
};
use crate::kallsyms::Kallsyms;
use crate::kernel_btf::{self, Variant};
use crate::output::{Output, Record};
use crate::sys;
use crate::target::Target;

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
            out.emit(
                &Record::new(now, NAME, "cpu_summary_rest")
                    .field("interval_ns", interval_ns)
                    .field("threads", rest.len())
                    .field(
                        "on_cpu_ns",
                        rest.iter().map(|(_, s)| s.on_cpu_ns).sum::<u64>(),
                    )
                    .field(
                        "switches",
                        rest.iter().map(|(_, s)| s.switches_out).sum::<u64>(),
                    ),
            );
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

    fn stats(&self) -> Result<collector_stats> {
        read_stats(&self.skel.maps.stats)
    }
}

fn task_record(hdr: &event_hdr, event: &'static str) -> Record {
    Record::new(hdr.ts_ns, NAME, event).task(hdr.pid, hdr.tgid, c_str(&hdr.comm))
}

pub fn decode_record(data: &[u8], ksyms: &OnceCell<Kallsyms>) -> Result<Record> {
    let hdr = decode::<event_hdr>(data)?;
    let rec = match u32::from(hdr.kind) {
        kind @ (KEYTIME_FORK | KEYTIME_VFORK | KEYTIME_PTHREAD_CREATE | KEYTIME_KERNEL_WORKER) => {
            let e = decode::<keytime_clone_event>(data)?;
            let event = match kind {
                KEYTIME_FORK => "fork",
                KEYTIME_VFORK => "vfork",
                KEYTIME_KERNEL_WORKER => "kernel_worker",
                _ => "pthread_create",
            };
            task_record(hdr, event)
                .field("child_pid", e.child_pid)
                .field("child_tgid", e.child_tgid)
                .field("clone_flags", format!("{:#x}", e.clone_flags))
        }
        KEYTIME_EXECVE => {
            let e = decode::<keytime_exec_event>(data)?;
            let argv = argv_of(&e.args[..(e.args_len as usize).min(e.args.len())]);
            let mut rec = task_record(hdr, "execve")
                .field("filename", c_str(&e.filename))
                .field("argv", argv);
            if e.old_pid != hdr.pid {
                rec = rec.field("old_pid", e.old_pid);
            }
            if e.args_truncated != 0 {
                rec = rec.field("argv_truncated", true);
            }
            rec
        }
        KEYTIME_EXIT => {
            let e = decode::<keytime_exit_event>(data)?;
            let status = e.exit_code;
            let signal = status & 0x7f;
            let mut rec = task_record(hdr, "exit")
                .field("exit_code", (status >> 8) & 0xff)
                .field("signal", signal);
            if signal != 0 {
                rec = rec.field("signal_name", signal_name(signal));
            }
            if status & 0x80 != 0 {
                rec = rec.field("core_dumped", true);
            }
            rec.field("group_dead", e.group_dead != 0)
                .fields_of(&ExitCause::of(e))
        }
        KEYTIME_CHILD_EXIT => {
            let e = decode::<keytime_child_exit_event>(data)?;
            task_record(hdr, "child_exit").fields_of(&ChildExit::of(e))
        }
        KEYTIME_EXEC_FAILED => {
            let e = decode::<keytime_exec_failed_event>(data)?;
            task_record(hdr, "execve_failed").fields_of(&ExecFailed::of(e))
        }
        KEYTIME_ON_CPU => {
            let e = decode::<keytime_cpu_event>(data)?;
            task_record(hdr, "on_cpu")
                .field("cpu", hdr.cpu)
                .field("duration_ns", e.duration_ns)
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
            let mut rec = task_record(hdr, "off_cpu")
                .field("cpu", hdr.cpu)
                .field("duration_ns", e.duration_ns)
                .field("reason", reason_name(reason));
            if let Some(f) = blocked_in {
                rec = rec.field("blocked_in", f);
            }
            rec.field("prev_state", format!("{:#x}", e.prev_state))
        }
        other => return Err(anyhow!("unknown keytime record kind {other}")),
    };
    Ok(rec)
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

/// Who ended a thread: the `exit` record's `killed_by` and `oom_kill`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExitCause {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed_by: Option<Killer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<bool>,
}

impl ExitCause {
    fn of(e: &keytime_exit_event) -> Self {
        ExitCause {
            killed_by: (e.killed != 0).then(|| Killer {
                pid: e.killer_pid,
                tgid: e.killer_tgid,
                comm: c_str(&e.killer_comm),
                kernel: e.killer_kernel != 0,
            }),
            oom_kill: (e.oom_kill != 0).then_some(true),
        }
    }
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
    let mut reasons = Map::new();
    for (i, &ns) in s.off_cpu_ns.iter().enumerate() {
        if ns > 0 {
            reasons.insert(reason_name(i as u32).into(), ns.into());
        }
    }
    let comm = match key.pid {
        0 => format!("swapper/{}", key.cpu),
        _ => c_str(&s.comm),
    };
    let mut rec = Record::new(now, NAME, "cpu_summary")
        .task(key.pid, s.tgid, comm)
        .field("interval_ns", interval_ns)
        .field("on_cpu_ns", s.on_cpu_ns)
        .field("off_cpu_ns", s.off_cpu_ns.iter().sum::<u64>())
        .field("switches", s.switches_out)
        .field("preemptions", s.preemptions)
        .field("off_cpu_by_reason_ns", Value::Object(reasons));
    if s.carried_ns > 0 {
        rec = rec.field("carried_ns", s.carried_ns);
    }
    if key.pid == 0 {
        rec = rec.field("cpu", key.cpu);
    }
    // the whole system: which container or service each thread is in
    rec.cgroup(s.cgroup_id)
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
                (r.event, r.pid, r.tgid, r.comm.as_str()),
                (name, 11, 10, "work")
            );
            assert_eq!(r.get("child_pid"), Some(&Value::from(20)));
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
        assert_eq!(r.get("filename"), Some(&Value::from("/bin/true")));
        assert_eq!(r.get("argv"), Some(&serde_json::json!(["true", "-x", ""])));
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
            (Some(&Value::from(7)), Some(&Value::from(0)))
        );
        let killed = keytime_exit_event { exit_code: 9, ..x };
        let r = decode_record(&bytes(&killed), &OnceCell::new()).unwrap();
        assert_eq!(
            (r.get("exit_code"), r.get("signal")),
            (Some(&Value::from(0)), Some(&Value::from(9)))
        );
        assert_eq!(r.get("signal_name"), Some(&Value::from("Killed")));
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
            Some(&serde_json::json!({"pid": 30, "tgid": 29, "comm": "hog", "kernel": true}))
        );
        assert_eq!(r.get("oom_kill"), Some(&Value::from(true)));
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
            (r.event, r.pid, r.comm.as_str()),
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
        assert_eq!(r.event, "execve_failed");
        assert_eq!(r.get("syscall"), Some(&Value::from("execve")));
        assert_eq!(r.get("filename"), Some(&Value::from("/no/cmd")));
        assert_eq!(r.get("argv"), Some(&serde_json::json!(["cmd", "-v"])));
        assert_eq!(
            (r.get("ret"), r.get("error")),
            (Some(&Value::from(-2)), Some(&Value::from("ENOENT")))
        );
        // args_len past the buffer's reported part is cut, not trusted
        f.args_len = u32::MAX;
        f.execveat = 1;
        let r = decode_record(&bytes(&f), &OnceCell::new()).unwrap();
        assert_eq!(r.get("syscall"), Some(&Value::from("execveat")));
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
        assert_eq!(
            r.get("reason"),
            Some(&Value::from(reason_name(OFFCPU_DISK)))
        );
        assert_eq!(
            r.get("blocked_in"),
            Some(&Value::from("folio_wait_bit_common"))
        );
        e.reason = OFFCPU_PREEMPTED;
        e.stack_len = 0;
        let r = decode_record(&bytes(&e), &ksyms).unwrap();
        assert_eq!(r.get("reason"), Some(&Value::from("preempted")));
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
