//! controller's side: queue one request for a running proc_image and wait for the
//! answer to it; with -t, stay in the foreground and undo the activation
//! after that long or on a signal, as the original proc_image's controller.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bpf_intf::{
    c_str, control_answer, control_request, control_state, CONTROL_ACTIVATE, CONTROL_DEACTIVATE,
    CONTROL_FINISH, CONTROL_F_EXEC_FAILURES, CONTROL_F_MYPROC, CONTROL_STATUS_ERROR,
    KEYTIME_LEVEL_ALL, SYSCALL_SEQ_DEFAULT,
};
use crate::cli::ControllerArgs;
use crate::collectors::CollectorKind;
use crate::control::{self, ControlMap};
use crate::sys;
use crate::target::Target;

/// proc_image looks at its requests every 50 ms; loading nothing, it
/// answers well within this, except that an activation of lock right after
/// another first waits for the old uprobes to go (~85 ms each).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a proc_image that is still loading.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// keytime -k 2: off-CPU stretches shorter than this carry no stacks.
const DEFAULT_STACK_MIN_US: u32 = 1000;
/// keytime's on_cpu / off_cpu records: stretches from 50 us, as blocked_in's stacks
const DEFAULT_STRETCH_MIN_US: u32 = 50;

pub fn run(args: &ControllerArgs) -> Result<String> {
    sys::require_root("controller")?;
    refuse_other_pid_namespace()?;
    let pin_dir = control::resolve_pin_dir(args.pin_dir.as_deref());
    let ctl = ControlMap::open(&pin_dir)?;
    let mut state = ctl.read_state()?;
    if args.status {
        return Ok(status_text(&state));
    }
    // proc_image pins its control map first, then loads and verifies its
    // collectors (seconds on a busy machine): a request waits for that
    let loading_until = Instant::now() + LOAD_TIMEOUT;
    while state.ready == 0 {
        if Instant::now() > loading_until {
            bail!(
                "proc_image is still loading its collectors after {} s",
                LOAD_TIMEOUT.as_secs()
            );
        }
        sleep(Duration::from_millis(50));
        state = ctl.read_state()?;
        if !sys::task_alive(state.owner_pid, state.owner_start_ticks) {
            bail!("proc_image (pid {}) ended while loading", state.owner_pid);
        }
    }
    let mut req = control_request {
        hdr: control::header(),
        requester_pid: std::process::id(),
        ..Default::default()
    };
    if args.activate {
        let kinds = args.collectors();
        if let Some(k) = kinds.iter().find(|k| state.loaded_mask & k.bit() == 0) {
            bail!(
                "the {k} collector is not loaded by the running proc_image (loaded: {}); start proc_image with {} or -a",
                CollectorKind::names(state.loaded_mask),
                k.flag()
            );
        }
        let target = match &args.cgroup {
            Some(path) => Target::resolve_cgroup(path)?,
            None => Target::resolve(args.pid, args.tgid, args.cpu, sys::possible_cpus()?)?,
        };
        req.command = CONTROL_ACTIVATE;
        req.collectors = CollectorKind::mask(&kinds);
        target.write_request(&mut req);
        req.keytime_level = args
            .value_of(CollectorKind::Keytime)
            .unwrap_or(KEYTIME_LEVEL_ALL);
        req.syscall_seq_len = args
            .value_of(CollectorKind::Syscall)
            .unwrap_or(SYSCALL_SEQ_DEFAULT);
        req.interval_ms = args.interval.unwrap_or(0);
        req.futex_min_us = args.futex_min_us.unwrap_or(0);
        req.stack_min_us = args.stack_min_us.unwrap_or(DEFAULT_STACK_MIN_US);
        req.stretch_min_us = args.stretch_min_us.unwrap_or(DEFAULT_STRETCH_MIN_US);
        if args.myproc {
            req.flags |= CONTROL_F_MYPROC;
        }
        if args.exec_failures {
            req.flags |= CONTROL_F_EXEC_FAILURES;
        }
    } else if args.deactivate {
        req.command = CONTROL_DEACTIVATE;
        req.collectors = CollectorKind::mask(&args.collectors());
    } else {
        req.command = CONTROL_FINISH;
    }
    // -t: a signal from the moment the request is sent must still undo it
    let hold = match args.time {
        Some(secs) if args.activate && secs > 0 => {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
                .context("install signal handlers")?;
            Some((secs, stop))
        }
        _ => None,
    };
    let answer = ask(&ctl, &state, &mut req)?;
    let message = c_str(&answer.message).to_string();
    match hold {
        Some((secs, stop)) => {
            println!("{message}");
            hold_then_deactivate(&ctl, &state, &answer, secs, &stop)
        }
        None => Ok(message),
    }
}

/// Queue `req` under a fresh id and wait for proc_image's answer to it.
fn ask(
    ctl: &ControlMap,
    state: &control_state,
    req: &mut control_request,
) -> Result<control_answer> {
    req.id = control::new_request_id();
    ctl.push_request(req)?;
    let start = Instant::now();
    let answered = |answer: control_answer| {
        if answer.status == CONTROL_STATUS_ERROR {
            bail!("{}", c_str(&answer.message));
        }
        Ok(answer)
    };
    loop {
        if let Some(answer) = ctl.take_answer(req.id)? {
            return answered(answer);
        }
        if !sys::task_alive(state.owner_pid, state.owner_start_ticks) {
            // it answers before it ends (-f): the answer may have come
            // between the look above and its exit
            if let Some(answer) = ctl.take_answer(req.id)? {
                return answered(answer);
            }
            bail!(
                "proc_image (pid {}) ended before answering",
                state.owner_pid
            );
        }
        if start.elapsed() > ANSWER_TIMEOUT {
            bail!(
                "proc_image (pid {}) did not answer within {} s",
                state.owner_pid,
                ANSWER_TIMEOUT.as_secs()
            );
        }
        sleep(Duration::from_millis(10));
    }
}

/// controller -a ... -t SECS: wait SECS (or a signal), then deactivate the
/// activations this controller made, and only those: one that another
/// activation replaced meanwhile is left alone.
fn hold_then_deactivate(
    ctl: &ControlMap,
    state: &control_state,
    activated: &control_answer,
    secs: u64,
    stop: &AtomicBool,
) -> Result<String> {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        if !sys::task_alive(state.owner_pid, state.owner_start_ticks) {
            bail!("proc_image (pid {}) ended", state.owner_pid);
        }
        sleep(Duration::from_millis(50));
    }
    let why = if stop.load(Ordering::SeqCst) {
        "signal received".to_string()
    } else {
        format!("{secs} s are up")
    };
    let mut req = control_request {
        hdr: control::header(),
        command: CONTROL_DEACTIVATE,
        requester_pid: std::process::id(),
        activation_ids: activated.activation_ids,
        ..Default::default()
    };
    req.collectors = CollectorKind::ALL
        .iter()
        .filter(|k| activated.activation_ids[k.index()] != 0)
        .fold(0, |m, k| m | k.bit());
    let answer = ask(ctl, state, &mut req)?;
    Ok(format!("{why}: {}", c_str(&answer.message)))
}

/// One line for proc_image, then one per collector: loaded, active, target,
/// since when, records so far.
pub fn status_text(state: &control_state) -> String {
    let mut lines = vec![format!(
        "proc_image pid {}: {}; loaded {}",
        state.owner_pid,
        if state.ready != 0 { "ready" } else { "loading" },
        CollectorKind::names(state.loaded_mask)
    )];
    for k in CollectorKind::ALL {
        let a = &state.active[k.index()];
        let line = if state.refused_mask & k.bit() != 0 {
            format!("  {:<9} not loaded: refused by the kernel", k.name())
        } else if state.loaded_mask & k.bit() == 0 {
            format!("  {:<9} not loaded", k.name())
        } else if a.id == 0 {
            format!("  {:<9} loaded, inactive", k.name())
        } else {
            let target = Target::from_activation(a)
                .map(|t| t.to_string())
                .unwrap_or_else(|e| e.to_string());
            format!(
                "  {:<9} active on {target} since {} (every {} ms), {} records",
                k.name(),
                sys::local_time_of_day(a.since_ns),
                a.interval_ms,
                a.records
            )
        };
        lines.push(line);
    }
    let name_of = |i: u32| {
        CollectorKind::ALL
            .iter()
            .find(|k| k.index() as u32 == i)
            .map_or("?", |k| k.name())
    };
    if let Some(stats) = crate::bpf_stats::from_control(state, name_of) {
        lines.push("  BPF programs, runs and run time (--bpf-stats):".into());
        lines.extend(
            crate::bpf_stats::table(&stats)
                .into_iter()
                .map(|l| format!("    {l}")),
        );
    }
    let msg = c_str(&state.message);
    if !msg.is_empty() && msg != "ready" {
        lines.push(format!("  note: {msg}"));
    }
    lines.join("\n")
}

/// The initial pid namespace's inode number (PROC_PID_INIT_INO in the
/// kernel's include/linux/proc_ns.h), fixed for every kernel.
const INIT_PID_NS: &str = "pid:[4026531836]";

/// The pids controller is given are the kernel's (the initial pid
/// namespace's): one read in a namespace of its own would name another task.
fn refuse_other_pid_namespace() -> Result<()> {
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !ns.is_empty() && ns != INIT_PID_NS {
        bail!("controller runs in a pid namespace of its own ({ns}, a container?): run it in the host's, where proc_image's pids are");
    }
    Ok(())
}
