//! `--bpf-stats`: what proc_image's BPF programs cost, as the kernel counts
//! it (bpftop's figures): runs and run time of each program.
//!
//! The kernel counts only while its BPF stats are on. BPF_ENABLE_STATS
//! turns them on for as long as the file descriptor it returns is open: the
//! kernel drops it when proc_image exits however it ends (SIGKILL too), so
//! `kernel.bpf_stats_enabled` goes back to what it was. The sysctl is never
//! written. Counting costs two clock reads per program run, so it is off
//! unless asked for.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::libbpf_sys;

use crate::bpf_intf::{c_str, control_prog_stats, control_state, CONTROL_PROGS_MAX};
use crate::record::families::{Fam, Labels};

/// Turn the kernel's BPF run-time stats on until the returned fd is closed.
pub fn enable() -> Result<OwnedFd> {
    // SAFETY: a plain bpf() command taking an integer.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        let e = std::io::Error::from_raw_os_error(-fd);
        bail!("--bpf-stats: the kernel refused to count BPF run time (BPF_ENABLE_STATS: {e}; it needs Linux 5.8 and CAP_SYS_ADMIN): run without --bpf-stats");
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Stats on, and the programs to read them of.
pub struct Counting {
    /// while open, the kernel counts
    _on: OwnedFd,
    programs: Vec<Program>,
}

impl Counting {
    /// `on` from enable(); the collectors' names and loaded objects.
    pub fn new<'a>(
        on: OwnedFd,
        objects: impl IntoIterator<Item = (&'static str, &'a libbpf_rs::Object)>,
    ) -> Result<Self> {
        let mut programs = Vec::new();
        for (collector, obj) in objects {
            programs.extend(Program::of(collector, obj)?);
        }
        Ok(Counting { _on: on, programs })
    }

    /// Every program's stats; one that cannot be read is left out.
    pub fn read(&self) -> Vec<ProgStats> {
        self.programs
            .iter()
            .filter_map(|p| p.stats().ok())
            .collect()
    }
}

/// One loaded BPF program of a collector (its own fd, so it outlives nothing).
pub struct Program {
    pub collector: &'static str,
    pub name: String,
    fd: OwnedFd,
}

impl Program {
    /// The programs of `obj` the kernel loaded (not the forms this kernel
    /// did not take, which have no fd).
    pub fn of(collector: &'static str, obj: &libbpf_rs::Object) -> Result<Vec<Program>> {
        obj.progs()
            // the object is loaded: every program set to load is
            .filter(|p| p.autoload())
            .map(|p| {
                let name = p.name().to_string_lossy().into_owned();
                let fd = p
                    .as_fd()
                    .try_clone_to_owned()
                    .with_context(|| format!("dup the fd of {collector}/{name}"))?;
                Ok(Program {
                    collector,
                    name,
                    fd,
                })
            })
            .collect()
    }

    /// Runs and run time so far (bpf_prog_info run_cnt, run_time_ns).
    pub fn stats(&self) -> Result<ProgStats> {
        let mut info = libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info is a zeroed bpf_prog_info of `len` bytes, no arrays asked for.
        let rc = unsafe {
            libbpf_sys::bpf_prog_get_info_by_fd(self.fd.as_raw_fd(), &mut info, &mut len)
        };
        if rc < 0 {
            bail!(
                "read the stats of {}/{}: {}",
                self.collector,
                self.name,
                std::io::Error::from_raw_os_error(-rc)
            );
        }
        Ok(ProgStats {
            collector: self.collector,
            program: self.name.clone(),
            runs: info.run_cnt,
            run_ns: info.run_time_ns,
        })
    }
}

/// One program's figures since proc_image turned the stats on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgStats {
    pub collector: &'static str,
    pub program: String,
    pub runs: u64,
    pub run_ns: u64,
}

impl ProgStats {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_ns as f64 / self.runs as f64)
    }
}

/// The counters' values (absolute: the kernel's counts only grow), in
/// proc_image_bpf_runs_total and proc_image_bpf_run_seconds_total,
/// labelled {collector, program}.
pub fn metric_values(stats: &[ProgStats]) -> Vec<(Fam, Labels, f64)> {
    stats
        .iter()
        .flat_map(|s| {
            let labels = vec![
                ("collector", s.collector.to_string()),
                ("program", s.program.clone()),
            ];
            [
                (Fam::BpfRuns, labels.clone(), s.runs as f64),
                (Fam::BpfRunSeconds, labels, s.run_ns as f64 / 1e9),
            ]
        })
        .collect()
}

/// A table: a header, then one line per program.
pub fn table(stats: &[ProgStats]) -> Vec<String> {
    let width = stats
        .iter()
        .map(|s| s.program.len())
        .max()
        .unwrap_or(0)
        .max("program".len());
    let mut lines = vec![format!(
        "{:<9} {:<width$} {:>12} {:>14} {:>8}",
        "collector", "program", "runs", "run time", "ns/run"
    )];
    for s in stats {
        let per_run = s
            .ns_per_run()
            .map_or_else(|| "-".to_string(), |ns| format!("{ns:.0}"));
        lines.push(format!(
            "{:<9} {:<width$} {:>12} {:>11.3} ms {:>8}",
            s.collector,
            s.program,
            s.runs,
            s.run_ns as f64 / 1e6,
            per_run
        ));
    }
    lines
}

/// Publish `stats` in the control state (controller --status); `index_of`
/// gives a collector's number (enum pi_collector).
pub fn to_control(stats: &[ProgStats], index_of: impl Fn(&str) -> u32, state: &mut control_state) {
    state.bpf_stats = 1;
    state.progs = [control_prog_stats::default(); CONTROL_PROGS_MAX as usize];
    let n = stats.len().min(CONTROL_PROGS_MAX as usize);
    for (slot, s) in state.progs.iter_mut().zip(&stats[..n]) {
        let name = s.program.as_bytes();
        // NUL-terminated, cut if it must be
        let len = name.len().min(slot.name.len() - 1);
        slot.name[..len].copy_from_slice(&name[..len]);
        slot.collector = index_of(s.collector);
        slot.runs = s.runs;
        slot.run_ns = s.run_ns;
    }
    state.prog_count = n as u32;
}

/// The stats a proc_image published, if it runs with --bpf-stats;
/// `name_of` names a collector by its number.
pub fn from_control(
    state: &control_state,
    name_of: impl Fn(u32) -> &'static str,
) -> Option<Vec<ProgStats>> {
    if state.bpf_stats == 0 {
        return None;
    }
    let n = (state.prog_count as usize).min(state.progs.len());
    Some(
        state.progs[..n]
            .iter()
            .map(|p: &control_prog_stats| ProgStats {
                collector: name_of(p.collector),
                program: c_str(&p.name),
                runs: p.runs,
                run_ns: p.run_ns,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Vec<ProgStats> {
        vec![
            ProgStats {
                collector: "syscall",
                program: "handle__sys_enter".into(),
                runs: 2000,
                run_ns: 212_000,
            },
            ProgStats {
                collector: "keytime",
                program: "handle__sched_process_exit_compat_with_a_very_long_name".into(),
                runs: 0,
                run_ns: 0,
            },
        ]
    }

    #[test]
    fn control_round_trip() {
        let mut state = control_state::default();
        assert_eq!(from_control(&state, |_| "x"), None);
        let names = ["keytime", "lock", "resource", "syscall", "schedule"];
        let index = |n: &str| names.iter().position(|&m| m == n).unwrap() as u32;
        to_control(&stats(), index, &mut state);
        let back = from_control(&state, |i| names[i as usize]).unwrap();
        assert_eq!(back[0], stats()[0]);
        // the long name is cut, never unterminated
        assert_eq!(back[1].program.len(), 39);
        assert!(stats()[1].program.starts_with(&back[1].program));
        assert_eq!(back[1].collector, "keytime");
    }

    #[test]
    fn table_and_metrics() {
        let t = table(&stats());
        assert_eq!(t.len(), 3);
        assert!(
            t[1].contains("handle__sys_enter") && t[1].contains(" 106"),
            "{}",
            t[1]
        );
        assert!(t[1].contains("0.212 ms"), "{}", t[1]);
        assert!(t[2].trim_end().ends_with(" -"), "{}", t[2]);
        let m = metric_values(&stats()[..1]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].0, Fam::BpfRuns);
        assert_eq!(m[0].2, 2000.0);
        assert_eq!(m[1].2, 212e-6);
        assert_eq!(
            m[1].1,
            vec![
                ("collector", "syscall".to_string()),
                ("program", "handle__sys_enter".to_string())
            ]
        );
    }
}
