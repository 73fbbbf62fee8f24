//! Level 2: who woke a target thread. BPF sends the waker (a
//! KEYTIME_WAKER record, bpf/waker.bpf.h's rule: from task context only)
//! just before the off_cpu record with stacks of the stretch the wakeup
//! ended, on the same CPU; the two are joined here by thread and time.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::stacks::{copied_stack, kernel_frames, Frame, UserStacks};
use crate::bpf_intf::{c_str, decode, keytime_waker_event};
use crate::kallsyms::Kallsyms;
use crate::record::{Record, TraceOut};

/// The thread that woke an off-CPU stretch, and where it was then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WokenBy {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// the waker's kernel then user frames at the wakeup, innermost first
    pub stack: Vec<Frame>,
}

/// A waker, and when: the wakee's off_cpu record says the rest.
#[derive(Debug, Clone)]
pub struct Wakeup {
    pub by: WokenBy,
    /// CLOCK_MONOTONIC ns
    pub wake_ns: u64,
}

/// Pending wakers beyond this many (their off_cpu records lost) are dropped.
const PENDING_MAX: usize = 4096;

/// Wakers waiting for their stretch's off_cpu record, by woken thread.
#[derive(Default)]
pub struct Wakers {
    /// tid -> (the stretch's end, its waker)
    pending: HashMap<u32, (u64, Wakeup)>,
}

impl Wakers {
    /// Keep a KEYTIME_WAKER record for the off_cpu record that follows it.
    pub fn keep(
        &mut self,
        data: &[u8],
        ksyms: &Kallsyms,
        users: Option<&UserStacks>,
    ) -> Result<()> {
        let e = decode::<keytime_waker_event>(data)?;
        let kframes = (e.kstack_len as usize / 8).min(e.kstack.len());
        let mut stack = kernel_frames(ksyms, &e.kstack[..kframes]);
        // from try_to_wake_up on: the tracepoint's and the program's frames say nothing
        let tracing = stack
            .iter()
            .take_while(|f| is_tracing_frame(&f.func))
            .count();
        stack.drain(..tracing);
        // the waker's copied user stack follows the record
        let copied = copied_stack::<keytime_waker_event>(data, e.ustack_start, e.ustack_bytes);
        match users {
            Some(u) => stack.extend(u.frames(e.waker_tgid, &e.regs, copied).0),
            None if e.regs.ip != 0 => stack.push(Frame::unknown(e.regs.ip, "")),
            None => {}
        }
        if self.pending.len() >= PENDING_MAX {
            self.pending.clear();
        }
        let by = WokenBy {
            pid: e.waker_pid,
            tgid: e.waker_tgid,
            comm: c_str(&e.waker_comm),
            stack,
        };
        let wake = Wakeup {
            by,
            wake_ns: e.wake_ns,
        };
        self.pending.insert(e.hdr.pid, (e.hdr.ts_ns, wake));
        Ok(())
    }

    /// The waker of thread `tid`'s stretch that ended at `end_ns`, if one was sent.
    pub fn take(&mut self, tid: u32, end_ns: u64) -> Option<Wakeup> {
        match self.pending.remove(&tid) {
            Some((end, w)) if end == end_ns => Some(w),
            // its own off_cpu record was lost: not this stretch's
            _ => None,
        }
    }
}

/// A frame of the tracepoint machinery or of a BPF program.
fn is_tracing_frame(func: &str) -> bool {
    [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__traceiter_",
        "bpf_dispatcher",
    ]
    .iter()
    .any(|p| func.starts_with(p))
}

/// The waker part of an offwaketime folded line: `--`, the waker's kernel
/// then user frames innermost first (upside down on top of the wakee's
/// stack, so the two meet at the separator), the waker's comm last.
pub fn folded_waker(line: &mut String, by: &WokenBy) {
    line.push_str(";--");
    for f in &by.stack {
        let kernel = f.module == "kernel";
        let _ = write!(line, ";{}", crate::folded::element(&f.func, kernel));
    }
    let _ = write!(line, ";{}", crate::folded::element(&by.comm, false));
}

/// A flow arrow from the waker's thread at the wakeup to the end of the
/// wakee's off-CPU slice (`rec`), anchored on the waker's track by a 1 ns
/// `wakeup` slice that nests in whatever slice that track has then.
pub fn trace_wakeup(rec: &Record, w: &WokenBy, wake_ns: u64, t: &mut dyn TraceOut) {
    let end = rec.ts_ns;
    t.name_thread(w.tgid, w.pid, &w.comm);
    let args = json!({"woke": rec.pid, "woke_comm": rec.comm});
    t.mark((w.tgid, w.pid), "wakeup", wake_ns, &args);
    let id = t.next_id();
    t.flow("s", id, (w.tgid, w.pid), "wakeup", wake_ns);
    t.flow(
        "f",
        id,
        (rec.tgid, rec.pid),
        "wakeup",
        end.saturating_sub(1),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::bpf_intf::{
        event_hdr, keytime_offcpu_stack_event, user_regs_sample, KEYTIME_OFF_CPU_STACK,
        KEYTIME_WAKER, OFFCPU_SLEEP,
    };
    use crate::collectors::keytime::decode_record_with;

    fn bytes<T: plain::Plain>(v: &T) -> Vec<u8> {
        // SAFETY: plain types have no padding-sensitive invariants
        unsafe { plain::as_bytes(v) }.to_vec()
    }

    fn hdr(kind: u32, ts_ns: u64) -> event_hdr {
        let mut h = event_hdr {
            ts_ns,
            pid: 11,
            tgid: 10,
            kind: kind as u8,
            ..Default::default()
        };
        h.comm[..4].copy_from_slice(b"read");
        h
    }

    fn ksyms() -> OnceLock<Kallsyms> {
        let k = OnceLock::new();
        let _ = k.set(Kallsyms::parse(
            "ffffffff81000000 T bpf_trace_run1\nffffffff81001000 T try_to_wake_up\n\
             ffffffff81002000 T pipe_write\nffffffff81003000 T pipe_read\n",
        ));
        k
    }

    fn waker(ts_ns: u64) -> keytime_waker_event {
        let mut w = keytime_waker_event {
            hdr: hdr(KEYTIME_WAKER, ts_ns),
            wake_ns: ts_ns - 30_000,
            waker_pid: 10,
            waker_tgid: 10,
            kstack_len: 24,
            regs: user_regs_sample {
                ip: 0x5555,
                sp: 0x7ffc0000,
                ..Default::default()
            },
            ..Default::default()
        };
        w.waker_comm[..5].copy_from_slice(b"write");
        w.kstack[..3].copy_from_slice(&[
            0xffffffff81000010,
            0xffffffff81001010,
            0xffffffff81002010,
        ]);
        w
    }

    fn off_cpu(ts_ns: u64) -> Vec<u8> {
        let mut e = keytime_offcpu_stack_event {
            hdr: hdr(KEYTIME_OFF_CPU_STACK, ts_ns),
            duration_ns: 20_000_000,
            reason: OFFCPU_SLEEP,
            kstack_len: 8,
            regs: user_regs_sample {
                ip: 0x4444,
                sp: 0x7ffc0000,
                ..Default::default()
            },
            ..Default::default()
        };
        e.kstack[0] = 0xffffffff81003010;
        bytes(&e)
    }

    #[test]
    fn a_waker_joins_its_stretch_and_folds_on_top_of_it() {
        let k = ksyms();
        let mut wakers = Wakers::default();
        wakers
            .keep(&bytes(&waker(1_000_000)), k.get().unwrap(), None)
            .unwrap();
        let rec = decode_record_with(&off_cpu(1_000_000), &k, None, Some(&mut wakers)).unwrap();
        let v = rec.to_json();
        assert_eq!(v["woken_by"]["pid"], 10);
        assert_eq!(v["woken_by"]["comm"], "write");
        assert_eq!(v["wake_latency_ns"], 30_000);
        // the tracepoint's frames are left out: try_to_wake_up first
        let stack = v["woken_by"]["stack"].as_array().unwrap();
        assert_eq!(stack[0]["fn"], "try_to_wake_up");
        assert_eq!(stack[1]["fn"], "pipe_write");
        assert_eq!(stack[2]["fn"], "0x5555");
        assert_eq!(
            rec.body.folded(&rec),
            Some((
                "read;0x4444;pipe_read_[k];--;try_to_wake_up_[k];pipe_write_[k];0x5555;write"
                    .into(),
                20_000_000
            ))
        );
        // taken once
        let again = decode_record_with(&off_cpu(1_000_000), &k, None, Some(&mut wakers)).unwrap();
        assert!(again.to_json().get("woken_by").is_none());
    }

    #[test]
    fn a_waker_is_not_given_to_another_stretch() {
        let k = ksyms();
        let mut wakers = Wakers::default();
        wakers
            .keep(&bytes(&waker(1_000_000)), k.get().unwrap(), None)
            .unwrap();
        // its own record was lost: the next stretch of the thread ends later
        let rec = decode_record_with(&off_cpu(5_000_000), &k, None, Some(&mut wakers)).unwrap();
        let v = rec.to_json();
        assert!(v.get("woken_by").is_none() && v.get("wake_latency_ns").is_none());
        assert_eq!(
            rec.body.folded(&rec).unwrap().0,
            "read;0x4444;pipe_read_[k]"
        );
    }
}
