//! controller: write one request into the pinned control map and wait for
//! proc_image's answer.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::bpf_intf::{
    c_str, control_request, CONTROL_ACTIVATE, CONTROL_DEACTIVATE, CONTROL_FINISH,
    CONTROL_STATUS_ACTIVE, CONTROL_STATUS_ENDING, CONTROL_STATUS_ERROR, KEYTIME_LEVEL_ALL,
};
use crate::cli::ControllerArgs;
use crate::collectors::CollectorKind;
use crate::control::{self, ControlMap};
use crate::sys;
use crate::target::Target;

/// proc_image looks at the control map every 50 ms; loading nothing, it
/// answers well within this, except that an activation of lock right after
/// another first waits for the old uprobes to go (~85 ms each).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SYSCALL_SEQ_LEN: u32 = 10;

pub fn run(args: &ControllerArgs) -> Result<String> {
    sys::require_root("controller")?;
    let pin_dir = control::resolve_pin_dir(args.pin_dir.as_deref());
    let ctl = ControlMap::open(&pin_dir)?;
    let state = ctl.read_state()?;
    if args.status {
        let refused = if state.refused_mask != 0 {
            format!(
                "; not loaded (refused by the kernel) {}",
                CollectorKind::names(state.refused_mask)
            )
        } else {
            String::new()
        };
        return Ok(format!(
            "proc_image pid {}: loaded {}{refused}; active {}; {}",
            state.owner_pid,
            CollectorKind::names(state.loaded_mask),
            CollectorKind::names(state.active_mask),
            c_str(&state.message)
        ));
    }

    let mut req = control_request {
        hdr: control::header(),
        seq: ctl.read_request()?.seq.max(state.applied_seq) + 1,
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
        let target = Target::resolve(args.pid, args.tgid, args.cpu, sys::possible_cpus()?)?;
        req.command = CONTROL_ACTIVATE;
        req.collectors = CollectorKind::mask(&kinds);
        target.write_request(&mut req);
        req.keytime_level = args.keytime.unwrap_or(KEYTIME_LEVEL_ALL);
        req.syscall_seq_len = args.syscall.unwrap_or(DEFAULT_SYSCALL_SEQ_LEN);
        req.interval_ms = args.interval.unwrap_or(0);
        req.duration_s = match u32::try_from(args.time.unwrap_or(0)) {
            Ok(s) => s,
            Err(_) => bail!("-t {} is too long", args.time.unwrap_or(0)),
        };
    } else if args.deactivate {
        req.command = CONTROL_DEACTIVATE;
    } else {
        req.command = CONTROL_FINISH;
    }
    ctl.write_request(&req)?;
    wait_for_answer(&ctl, req.seq, state.owner_pid, state.owner_start_ticks)
}

fn wait_for_answer(ctl: &ControlMap, seq: u64, owner: u32, owner_start: u64) -> Result<String> {
    let start = Instant::now();
    loop {
        let state = ctl.read_state()?;
        if state.applied_seq >= seq {
            let msg = c_str(&state.message);
            return match state.status {
                CONTROL_STATUS_ERROR => bail!("{msg}"),
                CONTROL_STATUS_ACTIVE | CONTROL_STATUS_ENDING => Ok(msg),
                _ => Ok(msg),
            };
        }
        if !sys::task_alive(owner, owner_start) {
            bail!("proc_image (pid {owner}) ended before answering");
        }
        if start.elapsed() > ANSWER_TIMEOUT {
            bail!(
                "proc_image (pid {owner}) did not answer within {} s",
                ANSWER_TIMEOUT.as_secs()
            );
        }
        sleep(Duration::from_millis(10));
    }
}
