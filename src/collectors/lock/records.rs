//! lock's records (a hold, a failed call, an unmatched release, a lock's
//! interval, what happened at an exec), and what each adds to the metrics
//! and the trace.

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::json;

use crate::bpf_intf::{
    c_str, event_hdr, lock_event, LOCK_ANCHOR_EXIT, LOCK_EXEC, LOCK_FAILED, LOCK_F_CONTENDED,
    LOCK_NEW_THREAD, LOCK_OP_LOCK, LOCK_OP_TIMED, LOCK_OP_TRY, LOCK_RELEASED, LOCK_RWLOCK_READ,
    LOCK_UNMATCHED,
};
use crate::record::families::Fam;
use crate::record::{self, hex, write_json_of, MetricsOut, Record, TraceOut};

pub use crate::bpf_intf::lock_type_name as type_name;

fn op_name(op: u8) -> &'static str {
    match u32::from(op) {
        LOCK_OP_LOCK => "lock",
        LOCK_OP_TRY => "trylock",
        LOCK_OP_TIMED => "timedlock",
        _ => "unknown",
    }
}

/// The name of an errno a lock call returns.
pub fn errno_name(e: i32) -> String {
    match e {
        libc::EBUSY => "EBUSY".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EDEADLK => "EDEADLK".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::EPERM => "EPERM".into(),
        libc::EOWNERDEAD => "EOWNERDEAD".into(),
        libc::ENOTRECOVERABLE => "ENOTRECOVERABLE".into(),
        other => format!("errno {other}"),
    }
}

/// One lock's figures over an interval (its type is said once, by the
/// `lock_summary` record that carries them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LockSummary {
    #[serde(skip)]
    pub lock_type: &'static str,
    pub acquisitions: u64,
    /// attempts that found the lock held: acquisitions that had to wait for
    /// a holder, and failed try/timed locks
    pub contended: u64,
    pub failed: u64,
    pub unmatched_releases: u64,
    pub wait_total_ns: u64,
    pub wait_max_ns: u64,
    pub hold_total_ns: u64,
    pub hold_max_ns: u64,
}

impl LockSummary {
    pub(super) fn add(&mut self, e: &lock_event) {
        let wait = e.acquire_ns.saturating_sub(e.request_ns);
        let contended = e.flags & LOCK_F_CONTENDED as u8 != 0;
        // an rwlock taken both ways is summarized as one rwlock
        let t = type_name(e.lock_type);
        self.lock_type = match (self.lock_type, t) {
            ("rwlock_read", "rwlock_write") | ("rwlock_write", "rwlock_read") => "rwlock",
            ("rwlock", "rwlock_read" | "rwlock_write") => "rwlock",
            _ => t,
        };
        match u32::from(e.hdr.kind) {
            LOCK_RELEASED => {
                let hold = e.release_ns.saturating_sub(e.acquire_ns);
                self.acquisitions += 1;
                self.wait_total_ns += wait;
                self.wait_max_ns = self.wait_max_ns.max(wait);
                self.hold_total_ns += hold;
                self.hold_max_ns = self.hold_max_ns.max(hold);
                self.contended += u64::from(contended);
            }
            LOCK_FAILED => {
                self.failed += 1;
                self.contended += u64::from(contended);
                self.wait_total_ns += wait;
                self.wait_max_ns = self.wait_max_ns.max(wait);
            }
            LOCK_UNMATCHED => self.unmatched_releases += 1,
            _ => {}
        }
    }
}

fn task_record(hdr: &event_hdr, event: Event) -> Record {
    Record::new(hdr.ts_ns, event).task(hdr.pid, hdr.tgid, c_str(&hdr.comm))
}

/// A ring-buffer record as an output record; None for the ones only
/// proc_image acts on (an anchor exited, a thread started: the probes move).
pub fn lock_record(e: &lock_event) -> Result<Option<Record>> {
    let kind = u32::from(e.hdr.kind);
    Ok(Some(match kind {
        LOCK_RELEASED | LOCK_FAILED => {
            let released = kind == LOCK_RELEASED;
            let interval = Interval {
                lock_type: type_name(e.lock_type),
                op: op_name(e.op),
                lock_addr: e.lock_addr,
                request_ns: e.request_ns,
                acquire_ns: e.acquire_ns,
                release_ns: e.release_ns,
                wait_ns: e.acquire_ns.saturating_sub(e.request_ns),
                hold_ns: if released {
                    e.release_ns.saturating_sub(e.acquire_ns)
                } else {
                    0
                },
                ret: e.ret,
                contended: e.flags & LOCK_F_CONTENDED as u8 != 0,
            };
            let event = if released {
                Event::Lock(interval)
            } else {
                Event::LockFailed(Failed {
                    error: errno_name(e.ret),
                    interval,
                })
            };
            task_record(&e.hdr, event)
        }
        LOCK_UNMATCHED => task_record(
            &e.hdr,
            Event::LockUnmatched(Unmatched {
                lock_type: type_name(e.lock_type),
                lock_addr: e.lock_addr,
                release_ns: e.release_ns,
                readers_left: (u32::from(e.lock_type) == LOCK_RWLOCK_READ).then_some(e.aux),
            }),
        ),
        LOCK_EXEC => task_record(&e.hdr, Event::Exec { old_pid: e.aux }),
        LOCK_ANCHOR_EXIT | LOCK_NEW_THREAD => return Ok(None),
        other => bail!("unknown lock record kind {other}"),
    }))
}

pub(super) fn summary_record(
    now: u64,
    interval_ns: u64,
    tgid: u32,
    addr: u64,
    s: &LockSummary,
) -> Record {
    let summary = Summary {
        lock_type: s.lock_type,
        lock_addr: addr,
        interval_ns,
        figures: s.clone(),
    };
    Record::new(now, Event::LockSummary(summary)).task(0, tgid, "")
}

/// The lock collector's records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// One hold: request, acquisition, release.
    Lock(Interval),
    /// A lock call that failed (a busy trylock, a timeout, an error).
    LockFailed(Failed),
    /// A release of a lock this thread was not seen taking.
    LockUnmatched(Unmatched),
    /// The target exec'd.
    Exec { old_pid: u32 },
    /// Per lock and interval.
    LockSummary(Summary),
    /// After an exec, the new image has no C library to probe.
    NoPthreadLibrary { reason: String },
    /// After an exec, the probes are in the new image.
    ProbesFollowExec {
        library: String,
        probes: usize,
        reattached: bool,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Interval {
    pub lock_type: &'static str,
    pub op: &'static str,
    #[serde(serialize_with = "hex")]
    pub lock_addr: u64,
    pub request_ns: u64,
    pub acquire_ns: u64,
    pub release_ns: u64,
    pub wait_ns: u64,
    pub hold_ns: u64,
    pub ret: i32,
    pub contended: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Failed {
    #[serde(flatten)]
    pub interval: Interval,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Unmatched {
    pub lock_type: &'static str,
    #[serde(serialize_with = "hex")]
    pub lock_addr: u64,
    pub release_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readers_left: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub lock_type: &'static str,
    #[serde(serialize_with = "hex")]
    pub lock_addr: u64,
    pub interval_ns: u64,
    #[serde(flatten)]
    pub figures: LockSummary,
}

impl record::Event for Event {
    fn collector(&self) -> &'static str {
        "lock"
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        write_json_of(self, out)
    }

    fn name(&self) -> &'static str {
        match self {
            Event::Lock(_) => "lock",
            Event::LockFailed(_) => "lock_failed",
            Event::LockUnmatched(_) => "lock_unmatched",
            Event::Exec { .. } => "exec",
            Event::LockSummary(_) => "lock_summary",
            Event::NoPthreadLibrary { .. } => "no_pthread_library",
            Event::ProbesFollowExec { .. } => "probes_follow_exec",
        }
    }

    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
        match self {
            Event::Lock(i) => {
                let labels = vec![("target", m.target()), ("lock_type", i.lock_type.into())];
                m.observe_ns(Fam::LockWait, labels.clone(), i.wait_ns);
                m.observe_ns(Fam::LockHold, labels, i.hold_ns);
            }
            Event::LockFailed(f) => {
                let labels = vec![
                    ("target", m.target()),
                    ("lock_type", f.interval.lock_type.into()),
                ];
                m.add(Fam::LockFailures, labels, 1.0);
            }
            _ => {}
        }
    }

    /// Wait and hold as async slices (they overlap the thread's CPU slices).
    fn trace(&self, rec: &Record, t: &mut dyn TraceOut) {
        let (i, failed) = match self {
            Event::Lock(i) => (i, false),
            Event::LockFailed(f) => (&f.interval, true),
            _ => return,
        };
        let args = json!({"lock_addr": format!("{:#x}", i.lock_addr), "ret": i.ret});
        let wait_name = if failed {
            format!("{} failed", i.lock_type)
        } else {
            format!("{} wait", i.lock_type)
        };
        let acquired = if i.acquire_ns > 0 {
            i.acquire_ns
        } else {
            rec.ts_ns
        };
        t.async_slice(rec, "lock", &wait_name, i.request_ns, acquired, &args);
        if !failed {
            let hold_name = format!("{} hold", i.lock_type);
            t.async_slice(rec, "lock", &hold_name, i.acquire_ns, i.release_ns, &args);
        }
    }
}
