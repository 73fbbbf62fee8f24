//! What is traced: one thread, a thread group, the idle task of a CPU, or
//! the whole system, or a cgroup; how controller checks it and how BPF programs match it.

use std::fmt;

use anyhow::{bail, Result};

use crate::bpf_intf::{
    control_activation, control_request, target_filter, TARGET_CGROUP, TARGET_IDLE, TARGET_SYSTEM,
    TARGET_TGID, TARGET_THREAD,
};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    System,
    /// One thread; `start_ticks` (from /proc) tells it from a later task
    /// that is given the same pid.
    Thread {
        pid: u32,
        tgid: u32,
        start_ticks: u64,
    },
    Group {
        tgid: u32,
        start_ticks: u64,
    },
    /// The idle task (pid 0) of one CPU.
    Idle {
        cpu: u32,
    },
    /// Every task in a cgroup v2 or below it, also those that enter it
    /// later: `id` is its kernfs id, `level` its depth below the root.
    Cgroup {
        id: u64,
        level: u32,
    },
}

impl Target {
    /// Turn controller's -p/-P/-c into a target, checking it against the
    /// running system. `cpus` is the number of possible CPUs.
    pub fn resolve(
        pid: Option<u32>,
        tgid: Option<u32>,
        cpu: Option<u32>,
        cpus: u32,
    ) -> Result<Self> {
        match (pid, tgid, cpu) {
            (Some(_), Some(_), _) => {
                bail!("-p (one thread) and -P (a thread group) cannot be used together")
            }
            (Some(0), None, Some(cpu)) => {
                if cpu >= cpus {
                    bail!(
                        "CPU {cpu} is out of range: this system has CPUs 0..={}",
                        cpus - 1
                    );
                }
                Ok(Target::Idle { cpu })
            }
            (Some(0), None, None) => {
                bail!("pid 0 is the idle task, one per CPU: name the CPU with -c (e.g. -p 0 -c 0)")
            }
            (_, _, Some(_)) => bail!("-c selects the CPU of the idle task and goes only with -p 0"),
            (Some(pid), None, None) => {
                let (Some(stat), Some(tgid)) = (sys::proc_stat(pid), sys::tgid_of(pid)) else {
                    bail!("no thread with pid {pid}");
                };
                if stat.state == 'Z' || stat.state == 'X' {
                    bail!("thread {pid} has already exited");
                }
                Ok(Target::Thread {
                    pid,
                    tgid,
                    start_ticks: stat.start_ticks,
                })
            }
            (None, Some(0), None) => bail!("-P 0 is not a thread group"),
            (None, Some(tgid), None) => {
                let Some(stat) = sys::proc_stat(tgid) else {
                    bail!("no process with tgid {tgid}");
                };
                if sys::tgid_of(tgid) != Some(tgid) {
                    bail!("{tgid} is a thread, not a thread-group leader: use -p {tgid} for the thread, or -P with its tgid");
                }
                if !sys::thread_group_alive(tgid, stat.start_ticks) {
                    bail!("process {tgid} has already exited");
                }
                Ok(Target::Group {
                    tgid,
                    start_ticks: stat.start_ticks,
                })
            }
            (None, None, None) => Ok(Target::System),
        }
    }

    /// `--cgroup PATH`, checked against the running system.
    pub fn resolve_cgroup(path: &std::path::Path) -> Result<Self> {
        let cg = sys::resolve_cgroup(path)?;
        Ok(Target::Cgroup {
            id: cg.id,
            level: cg.level,
        })
    }

    /// Is it still there? The system and idle tasks always are; a cgroup
    /// while its directory exists.
    pub fn alive(&self) -> bool {
        match *self {
            Target::System | Target::Idle { .. } => true,
            Target::Cgroup { id, .. } => sys::cgroup_path(id).is_some(),
            Target::Thread {
                pid, start_ticks, ..
            } => sys::task_alive(pid, start_ticks),
            Target::Group { tgid, start_ticks } => sys::thread_group_alive(tgid, start_ticks),
        }
    }

    pub fn is_system(&self) -> bool {
        matches!(self, Target::System)
    }

    pub fn write_request(&self, req: &mut control_request) {
        if let Target::Cgroup { id, level } = *self {
            req.target_mode = TARGET_CGROUP;
            req.cgroup_id = id;
            req.cgroup_level = level;
            return;
        }
        let (mode, pid, tgid, cpu, start) = match *self {
            Target::System => (TARGET_SYSTEM, 0, 0, 0, 0),
            Target::Thread {
                pid,
                tgid,
                start_ticks,
            } => (TARGET_THREAD, pid, tgid, 0, start_ticks),
            Target::Group { tgid, start_ticks } => (TARGET_TGID, 0, tgid, 0, start_ticks),
            Target::Idle { cpu } => (TARGET_IDLE, 0, 0, cpu, 0),
            Target::Cgroup { .. } => unreachable!("written above"),
        };
        req.target_mode = mode;
        req.pid = pid;
        req.tgid = tgid;
        req.cpu = cpu;
        req.start_ticks = start;
    }

    pub fn from_request(req: &control_request) -> Result<Self> {
        Ok(match req.target_mode {
            TARGET_SYSTEM => Target::System,
            TARGET_THREAD => Target::Thread {
                pid: req.pid,
                tgid: req.tgid,
                start_ticks: req.start_ticks,
            },
            TARGET_TGID => Target::Group {
                tgid: req.tgid,
                start_ticks: req.start_ticks,
            },
            TARGET_IDLE => Target::Idle { cpu: req.cpu },
            TARGET_CGROUP => Target::Cgroup {
                id: req.cgroup_id,
                level: req.cgroup_level,
            },
            other => bail!("unknown target mode {other} in the control request"),
        })
    }

    /// What `controller --status` shows of an activation.
    pub fn write_activation(&self, a: &mut control_activation) {
        let mut req = control_request::default();
        self.write_request(&mut req);
        a.target_mode = req.target_mode;
        a.pid = req.pid;
        a.tgid = req.tgid;
        a.cpu = req.cpu;
        a.cgroup_id = req.cgroup_id;
    }

    pub fn from_activation(a: &control_activation) -> Result<Self> {
        Self::from_request(&control_request {
            target_mode: a.target_mode,
            pid: a.pid,
            tgid: a.tgid,
            cpu: a.cpu,
            cgroup_id: a.cgroup_id,
            ..Default::default()
        })
    }

    /// The filter BPF programs match tasks against (see is_target() in
    /// bpf/common.bpf.h).
    pub fn filter(&self, generation: u32, exclude_tgid: u32) -> target_filter {
        let exclude_tgid = match self {
            // an explicit thread or process is traced even if it is proc_image
            Target::System | Target::Cgroup { .. } => exclude_tgid,
            _ => 0,
        };
        let mut f = target_filter {
            generation,
            exclude_tgid,
            ns_per_tick: 1_000_000_000 / sys::clock_ticks_per_sec(),
            ..Default::default()
        };
        match *self {
            Target::System => f.mode = TARGET_SYSTEM,
            Target::Thread {
                pid,
                tgid,
                start_ticks,
            } => {
                f.mode = TARGET_THREAD;
                f.pid = pid;
                // keytime: a fatal signal to any thread of its process ends it
                f.tgid = tgid;
                f.start_ticks = start_ticks;
            }
            Target::Group { tgid, start_ticks } => {
                f.mode = TARGET_TGID;
                f.tgid = tgid;
                f.start_ticks = start_ticks;
            }
            Target::Idle { cpu } => {
                f.mode = TARGET_IDLE;
                f.cpu = cpu;
            }
            Target::Cgroup { id, level } => {
                f.mode = TARGET_CGROUP;
                f.cgroup_id = id;
                f.cgroup_level = level;
            }
        }
        f
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Target::System => write!(f, "the whole system"),
            Target::Thread { pid, tgid, .. } => write!(f, "thread {pid} (tgid {tgid})"),
            Target::Group { tgid, .. } => write!(f, "thread group {tgid}"),
            Target::Idle { cpu } => write!(f, "the idle task of CPU {cpu}"),
            Target::Cgroup { id, .. } => match sys::cgroup_path(id) {
                Some(path) => write!(f, "cgroup {path}"),
                None => write!(f, "cgroup id {id} (removed)"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(pid: Option<u32>, tgid: Option<u32>, cpu: Option<u32>) -> String {
        Target::resolve(pid, tgid, cpu, 2).unwrap_err().to_string()
    }

    #[test]
    fn bad_targets_are_refused() {
        assert!(err(Some(1), Some(1), None).contains("cannot be used together"));
        assert!(err(Some(0), None, Some(2)).contains("out of range"));
        assert!(err(Some(0), None, None).contains("-c"));
        assert!(err(Some(1), None, Some(0)).contains("only with -p 0"));
        assert!(err(Some(999_999_999), None, None).contains("no thread"));
        assert!(err(None, Some(999_999_999), None).contains("no process"));
        assert!(err(None, Some(0), None).contains("not a thread group"));
    }

    #[test]
    fn good_targets_resolve() {
        let me = std::process::id();
        assert_eq!(
            Target::resolve(None, None, None, 2).unwrap(),
            Target::System
        );
        assert_eq!(
            Target::resolve(Some(0), None, Some(1), 2).unwrap(),
            Target::Idle { cpu: 1 }
        );
        let t = Target::resolve(None, Some(me), None, 2).unwrap();
        assert!(matches!(t, Target::Group { tgid, .. } if tgid == me));
        assert!(t.alive());
        let t = Target::resolve(Some(me), None, None, 2).unwrap();
        assert!(matches!(t, Target::Thread { pid, tgid, .. } if pid == me && tgid == me));
    }

    #[test]
    fn request_round_trip() {
        for t in [
            Target::System,
            Target::Thread {
                pid: 5,
                tgid: 4,
                start_ticks: 77,
            },
            Target::Group {
                tgid: 4,
                start_ticks: 77,
            },
            Target::Idle { cpu: 1 },
        ] {
            let mut req = control_request::default();
            t.write_request(&mut req);
            assert_eq!(Target::from_request(&req).unwrap(), t);
        }
    }

    #[test]
    fn filter_carries_identity() {
        let f = Target::Group {
            tgid: 42,
            start_ticks: 9,
        }
        .filter(3, 0);
        assert_eq!(
            (f.mode, f.tgid, f.start_ticks, f.generation),
            (TARGET_TGID, 42, 9, 3)
        );
        assert!(f.ns_per_tick > 0);
    }
}
