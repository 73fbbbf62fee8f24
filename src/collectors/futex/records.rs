//! futex's records (a contended wait, an address's interval), and what each
//! adds to the metrics and the trace.

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::json;

use super::TOP;
use crate::bpf_intf::{
    c_str, futex_wait_event, FUTEX_K_CMP_REQUEUE, FUTEX_K_CMP_REQUEUE_PI, FUTEX_K_FUTEX_REQUEUE,
    FUTEX_K_FUTEX_WAIT, FUTEX_K_FUTEX_WAKE, FUTEX_K_LOCK_PI, FUTEX_K_LOCK_PI2, FUTEX_K_REQUEUE,
    FUTEX_K_UNLOCK_PI, FUTEX_K_WAIT, FUTEX_K_WAITV, FUTEX_K_WAIT_BITSET, FUTEX_K_WAIT_REQUEUE_PI,
    FUTEX_K_WAKE, FUTEX_K_WAKE_BITSET, FUTEX_K_WAKE_OP, FUTEX_RECORD_WAIT,
};
use crate::record::families::Fam;
use crate::record::{self, write_json_of, MetricsOut, Record, TraceOut};

/// The thread whose futex wake woke a wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waker {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
}

/// The futex collector's records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// One contended wait of a target thread (the record's task).
    FutexWait(FutexWait),
    /// One futex address of one process over an interval.
    FutexSummary(FutexSummary),
}

/// `futex_wait`: one contended wait of a target thread (the record's task).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FutexWait {
    /// the futex word's user address, hex
    pub uaddr: String,
    pub op: &'static str,
    pub wait_ns: u64,
    pub ret: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub woken_by: Option<Waker>,
    /// from the waker's wake to this thread's return from the syscall
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_latency_ns: Option<u64>,
}

/// A thread among an address's waiters or wakers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Party {
    pub pid: u32,
    pub comm: String,
    pub count: u64,
}

/// `futex_summary`: one futex address of one process over an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FutexSummary {
    pub uaddr: String,
    pub interval_ns: u64,
    pub waits: u64,
    pub wait_total_ns: u64,
    pub wait_max_ns: u64,
    pub wakes: u64,
    pub wake_calls: u64,
    pub waiters_max: u64,
    pub top_waiters: Vec<Party>,
    pub top_wakers: Vec<Party>,
}

pub fn op_name(op: u8) -> &'static str {
    match u32::from(op) {
        FUTEX_K_WAIT => "wait",
        FUTEX_K_WAIT_BITSET => "wait_bitset",
        FUTEX_K_LOCK_PI => "lock_pi",
        FUTEX_K_LOCK_PI2 => "lock_pi2",
        FUTEX_K_WAIT_REQUEUE_PI => "wait_requeue_pi",
        FUTEX_K_WAITV => "waitv",
        FUTEX_K_FUTEX_WAIT => "futex_wait",
        FUTEX_K_WAKE => "wake",
        FUTEX_K_WAKE_BITSET => "wake_bitset",
        FUTEX_K_WAKE_OP => "wake_op",
        FUTEX_K_REQUEUE => "requeue",
        FUTEX_K_CMP_REQUEUE => "cmp_requeue",
        FUTEX_K_CMP_REQUEUE_PI => "cmp_requeue_pi",
        FUTEX_K_UNLOCK_PI => "unlock_pi",
        FUTEX_K_FUTEX_WAKE => "futex_wake",
        FUTEX_K_FUTEX_REQUEUE => "futex_requeue",
        _ => "other",
    }
}

/// The name of the errno a futex wait returned (negated).
pub fn errno_name(e: i64) -> String {
    match i32::try_from(e).unwrap_or(0) {
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::EINTR => "EINTR".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EDEADLK => "EDEADLK".into(),
        libc::EPERM => "EPERM".into(),
        libc::ESRCH => "ESRCH".into(),
        libc::ENOSYS => "ENOSYS".into(),
        libc::ENOMEM => "ENOMEM".into(),
        libc::EOWNERDEAD => "EOWNERDEAD".into(),
        // the kernel's own, seen at the syscall's exit when a signal
        // interrupts the wait; the kernel then restarts it or returns EINTR
        512 => "ERESTARTSYS".into(),
        513 => "ERESTARTNOINTR".into(),
        514 => "ERESTARTNOHAND".into(),
        516 => "ERESTART_RESTARTBLOCK".into(),
        other => format!("errno {other}"),
    }
}

pub fn wait_of(e: &futex_wait_event) -> FutexWait {
    let woken_by = (e.waker_pid != 0).then(|| Waker {
        pid: e.waker_pid,
        tgid: e.waker_tgid,
        comm: c_str(&e.waker_comm),
    });
    FutexWait {
        uaddr: format!("{:#x}", e.uaddr),
        op: op_name(e.op),
        wait_ns: e.wait_ns,
        ret: e.ret,
        error: (e.ret < 0).then(|| errno_name(-e.ret)),
        wake_latency_ns: (e.waker_pid != 0 && e.wake_ns != 0)
            .then(|| e.hdr.ts_ns.saturating_sub(e.wake_ns)),
        woken_by,
    }
}

/// The ring-buffer record as an output record.
pub fn wait_record(e: &futex_wait_event, system: bool) -> Result<Record> {
    if u32::from(e.hdr.kind) != FUTEX_RECORD_WAIT {
        bail!("unknown futex record kind {}", e.hdr.kind);
    }
    let rec = Record::new(e.hdr.ts_ns, Event::FutexWait(wait_of(e))).task(
        e.hdr.pid,
        e.hdr.tgid,
        c_str(&e.hdr.comm),
    );
    Ok(if system {
        rec.cgroup(e.hdr.cgroup_id)
    } else {
        rec
    })
}

pub fn summary_record(now: u64, tgid: u32, s: &FutexSummary) -> Record {
    Record::new(now, Event::FutexSummary(s.clone())).task(0, tgid, "")
}

/// The `TOP` threads of a list by count (ties by pid).
pub(super) fn top(mut parties: Vec<Party>) -> Vec<Party> {
    parties.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
    parties.truncate(TOP);
    parties
}

impl record::Event for Event {
    fn collector(&self) -> &'static str {
        "futex"
    }

    fn name(&self) -> &'static str {
        match self {
            Event::FutexWait(_) => "futex_wait",
            Event::FutexSummary(_) => "futex_summary",
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        write_json_of(self, out)
    }

    /// A wait histogram per target; per address (bounded like the
    /// per-thread series: the rest sum under uaddr="other") waits and time.
    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
        match self {
            Event::FutexWait(w) => {
                let labels = vec![("target", m.target())];
                m.observe_ns(Fam::FutexWait, labels, w.wait_ns);
            }
            Event::FutexSummary(s) => {
                let labels = m.address(&s.uaddr, s.wait_total_ns);
                m.add(Fam::FutexWaits, labels.clone(), s.waits as f64);
                m.add(Fam::FutexWaitTime, labels, s.wait_total_ns as f64 / 1e9);
            }
        }
    }

    /// A `futex wait` slice on the waiter's track; when the waker is known,
    /// a `futex wake` slice on the waker's and a flow arrow between them.
    fn trace(&self, rec: &Record, t: &mut dyn TraceOut) {
        let Event::FutexWait(w) = self else {
            return;
        };
        let end = rec.ts_ns;
        let start = end.saturating_sub(w.wait_ns);
        let mut args = json!({"uaddr": w.uaddr, "op": w.op, "ret": w.ret});
        if let Some(e) = &w.error {
            args["error"] = e.as_str().into();
        }
        if let Some(k) = &w.woken_by {
            args["woken_by"] = json!(k);
        }
        t.slice_between((rec.tgid, rec.pid), "futex wait", (start, end), &args);
        let (Some(k), Some(lat)) = (&w.woken_by, w.wake_latency_ns) else {
            return;
        };
        let wake = end.saturating_sub(lat).max(start);
        t.name_thread(k.tgid, k.pid, &k.comm);
        // 1 us around the wake, so that the flow's start has a slice to bind to
        let wake_args = json!({"uaddr": w.uaddr, "woke": rec.pid});
        let span = (wake.saturating_sub(500), wake + 500);
        t.slice_between((k.tgid, k.pid), "futex wake", span, &wake_args);
        let id = t.next_id();
        t.flow("s", id, (k.tgid, k.pid), "futex wake", wake);
        let bound = wake.min(end.saturating_sub(1));
        t.flow("f", id, (rec.tgid, rec.pid), "futex wake", bound);
    }
}
