//! keytime's records: decoded from the ring buffer and built from the
//! interval summaries, and what each adds to the metrics and the trace.

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use serde::Serialize;
use serde_json::json;

use super::stacks::{copied_stack, kernel_frames, Frame, UserStacks};
use super::wakers::{folded_waker, trace_wakeup, Wakers, WokenBy};
use crate::bpf_intf::{
    c_str, decode, event_hdr, keytime_child_exit_event, keytime_clone_event, keytime_cpu_event,
    keytime_exec_event, keytime_exec_failed_event, keytime_exit_event, keytime_summary,
    keytime_summary_key, KEYTIME_ARGS_LEN, KEYTIME_CHILD_EXIT, KEYTIME_CPU_F_UNSEEN_SWITCH_IN,
    KEYTIME_EXECVE, KEYTIME_EXEC_FAILED, KEYTIME_EXIT, KEYTIME_FORK, KEYTIME_KERNEL_WORKER,
    KEYTIME_OFF_CPU, KEYTIME_ON_CPU, KEYTIME_PTHREAD_CREATE, KEYTIME_STACK_F_WAKER_LOST,
    KEYTIME_VFORK, OFFCPU_REASON_COUNT,
};
use crate::bpf_intf::{keytime_offcpu_stack_event, KEYTIME_OFF_CPU_STACK, OFFCPU_PREEMPTED};
use crate::kallsyms::Kallsyms;
use crate::record::families::{with_label, Fam};
use crate::record::{self, hex, write_json_of, MetricsOut, Record, TraceOut};
use crate::trace;

fn task_record(hdr: &event_hdr, event: Event) -> Record {
    Record::new(hdr.ts_ns, event).task(hdr.pid, hdr.tgid, c_str(&hdr.comm))
}

pub fn decode_record(data: &[u8], ksyms: &OnceLock<Kallsyms>) -> Result<Record> {
    decode_record_with(data, ksyms, None, None)
}

/// `decode_record`, naming level 2's user frames with `users` (without
/// it they stay addresses), and giving an off_cpu record with stacks the
/// waker kept for it in `wakers`.
pub fn decode_record_with(
    data: &[u8],
    ksyms: &OnceLock<Kallsyms>,
    users: Option<&UserStacks>,
    wakers: Option<&mut Wakers>,
) -> Result<Record> {
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
                switch_in_unseen: e.flags & KEYTIME_CPU_F_UNSEEN_SWITCH_IN != 0,
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
                stack: None,
                unwind: None,
                woken_by: None,
                wake_latency_ns: None,
                waker_lost: false,
                switch_in_unseen: e.flags & KEYTIME_CPU_F_UNSEEN_SWITCH_IN != 0,
            })
        }
        KEYTIME_OFF_CPU_STACK => {
            let e = decode::<keytime_offcpu_stack_event>(data)?;
            let kframes = (e.kstack_len as usize / 8).min(e.kstack.len());
            let ks = ksyms.get_or_init(Kallsyms::load);
            // blocked_in as at level 1: not for preemptions, from 50 us
            let (blocked_in, reason) = if kframes > 0
                && e.reason != OFFCPU_PREEMPTED
                && e.duration_ns >= super::STACK_MIN_NS
            {
                ks.explain(&e.kstack[..kframes], e.reason)
            } else {
                (None, e.reason)
            };
            let mut stack = kernel_frames(ks, &e.kstack[..kframes]);
            // the copied user stack follows the record
            let copied =
                copied_stack::<keytime_offcpu_stack_event>(data, e.ustack_start, e.ustack_bytes);
            let mut unwind = None;
            match users {
                Some(u) => {
                    let (frames, outcome) = u.frames(hdr.tgid, &e.regs, copied);
                    stack.extend(frames);
                    unwind = outcome.failure();
                }
                None if e.regs.ip != 0 => stack.push(Frame::unknown(e.regs.ip, "")),
                None => {}
            }
            let wake = wakers.and_then(|w| w.take(hdr.pid, hdr.ts_ns));
            Event::OffCpu(OffCpu {
                cpu: hdr.cpu,
                duration_ns: e.duration_ns,
                reason: reason_name(reason),
                blocked_in,
                prev_state: e.prev_state.into(),
                stack: Some(stack),
                unwind,
                wake_latency_ns: wake.as_ref().map(|w| hdr.ts_ns.saturating_sub(w.wake_ns)),
                woken_by: wake.map(|w| w.by),
                waker_lost: e.flags & KEYTIME_STACK_F_WAKER_LOST != 0,
                switch_in_unseen: false,
            })
        }
        other => return Err(anyhow!("unknown keytime record kind {other}")),
    };
    Ok(task_record(hdr, event))
}

/// A stack as one folded line's frames: the thread's comm at the root, then
/// the user frames and the kernel frames, outermost first.
fn folded_stack(comm: &str, stack: &[Frame]) -> String {
    let (kernel, user): (Vec<&Frame>, Vec<&Frame>) =
        stack.iter().partition(|f| f.module == "kernel");
    let mut parts = vec![crate::folded::element(comm, false)];
    parts.extend(
        user.iter()
            .rev()
            .map(|f| crate::folded::element(&f.func, false)),
    );
    parts.extend(
        kernel
            .iter()
            .rev()
            .map(|f| crate::folded::element(&f.func, true)),
    );
    parts.join(";")
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

pub(super) fn summary_record(
    now: u64,
    interval_ns: u64,
    key: &keytime_summary_key,
    s: &keytime_summary,
    whole_system: bool,
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
    let rec = Record::new(now, Event::CpuSummary(summary)).task(key.pid, s.tgid, comm);
    // the whole system: which container or service each thread is in
    match whole_system {
        true => rec.cgroup(s.cgroup_id),
        false => rec,
    }
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
    /// it started at a switch-in the kernel did not trace, placed by the
    /// scheduler's stamp of the arrival
    #[serde(skip_serializing_if = "is_false")]
    pub switch_in_unseen: bool,
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
    /// level 2, stretches from --stack-min-us: kernel then user frames,
    /// innermost first
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<Vec<Frame>>,
    /// level 2: why the user stack ends early (no_stack, no_mappings,
    /// truncated); absent when it was unwound to its outermost frame
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwind: Option<&'static str>,
    /// level 2, with `stack`: the thread that woke it, from task context
    /// (a wakeup from an interrupt, a timer's, names no thread)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub woken_by: Option<WokenBy>,
    /// from the wakeup to the switch-in (waiting for a CPU)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_latency_ns: Option<u64>,
    /// level 2: a thread woke it, but the record that said which was
    /// dropped (ring buffer full): no `woken_by` does not mean nobody
    #[serde(skip_serializing_if = "is_false")]
    pub waker_lost: bool,
    /// it ended at a switch-in the kernel did not trace, placed by the
    /// scheduler's stamp of the arrival (so no `blocked_in`: the kernel
    /// stack is no longer where it blocked)
    #[serde(skip_serializing_if = "is_false")]
    pub switch_in_unseen: bool,
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

impl record::Event for Event {
    fn collector(&self) -> &'static str {
        "keytime"
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        write_json_of(self, out)
    }

    fn name(&self) -> &'static str {
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

    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
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
            // the streamed stretches are a part of what cpu_summary counts whole
            Event::KernelWorker(_) | Event::OnCpu(_) => {}
            Event::OffCpu(e) => {
                if let Some(stack) = &e.stack {
                    let target = vec![("target", m.target())];
                    m.add(Fam::OffcpuStacks, target.clone(), 1.0);
                    if let Some(why) = e.unwind {
                        m.add(
                            Fam::StackUnwindFailures,
                            with_label(target.clone(), "reason", why),
                            1.0,
                        );
                    }
                    let unnamed = stack.iter().filter(|f| f.func.starts_with("0x")).count();
                    m.add(Fam::StackUnnamedFrames, target, unnamed as f64);
                }
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

    fn folded(&self, rec: &Record) -> Option<(String, u64)> {
        match self {
            Event::OffCpu(OffCpu {
                stack: Some(stack),
                duration_ns,
                woken_by,
                ..
            }) if !stack.is_empty() => {
                let mut line = folded_stack(&rec.comm, stack);
                // woken by a thread: offwaketime's form, the waker on top
                if let Some(by) = woken_by {
                    folded_waker(&mut line, by);
                }
                Some((line, *duration_ns))
            }
            _ => None,
        }
    }

    fn trace(&self, rec: &Record, t: &mut dyn TraceOut) {
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
                if let Some(stack) = &e.stack {
                    // innermost first, as in the record
                    let frames: Vec<String> = stack
                        .iter()
                        .map(|f| format!("{} ({})", f.func, f.module))
                        .collect();
                    args["stack"] = frames.into();
                }
                if let Some(k) = &e.woken_by {
                    args["woken_by"] = json!({"pid": k.pid, "tgid": k.tgid, "comm": k.comm});
                }
                let name = format!("off-CPU: {}", e.reason);
                t.slice(rec, &name, e.duration_ns, &args);
                if let (Some(k), Some(lat)) = (&e.woken_by, e.wake_latency_ns) {
                    let wake = rec.ts_ns.saturating_sub(lat);
                    trace_wakeup(rec, k, wake, t);
                }
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
mod tests;
