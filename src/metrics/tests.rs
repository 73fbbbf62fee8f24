//! The exporter's mapping and bounds, on records made here.

use super::*;
use crate::collectors::latency::{Buckets, Figures};
use crate::collectors::{keytime, lock, resource, schedule, syscall};
use crate::losses::Losses;

pub(super) const S: u64 = 1_000_000_000;
const BUCKETS: usize = crate::bpf_intf::LAT_HIST_BUCKETS as usize;

fn num(e: &Exporter, fam: Fam, labels: &[(&'static str, &str)]) -> Option<f64> {
    match e.shared.lock().unwrap().get(fam, labels) {
        Some(Val::Num(v)) => Some(*v),
        _ => None,
    }
}

fn group() -> Target {
    Target::Group {
        tgid: 10,
        start_ticks: 1,
    }
}

fn thread(pid: u32) -> [(&'static str, String); 4] {
    [
        ("target", "tgid:10".into()),
        ("tgid", "10".into()),
        ("pid", pid.to_string()),
        ("comm", "work".into()),
    ]
}

fn labels<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    l.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub(super) fn exporter() -> Exporter {
    let mut e = Exporter::new(50);
    e.loaded(&["keytime", "syscall", "schedule", "resource", "lock"]);
    e.activated(
        &group(),
        &["keytime", "syscall", "schedule", "resource", "lock"],
        S,
    );
    e
}

#[test]
fn keytime_records_become_counters() {
    let mut e = exporter();
    let rec = |ev| Record::new(S, ev).task(11, 10, "work");
    let fork = |child_pid| {
        keytime::Event::Fork(keytime::Child {
            child_pid,
            ..Default::default()
        })
    };
    e.apply(&rec(fork(12)), S);
    e.apply(&rec(fork(13)), S);
    e.apply(&rec(keytime::Event::Exit(Default::default())), S);
    let sum = keytime::Summary {
        on_cpu_ns: 300_000_000,
        off_cpu_by_reason_ns: keytime::ByReason(vec![("sleep", 2 * S)]),
        ..Default::default()
    };
    e.apply(&rec(keytime::Event::CpuSummary(sum)), S);
    // a streamed stretch is part of a summary: not counted again
    let on = keytime::OnCpu {
        cpu: 0,
        duration_ns: 300_000_000,
        ..Default::default()
    };
    e.apply(&rec(keytime::Event::OnCpu(on)), S);
    let t11 = thread(11);
    let mut l = labels(&t11);
    l.push(("event", "fork"));
    assert_eq!(num(&e, Fam::LifecycleEvents, &l), Some(2.0));
    assert_eq!(num(&e, Fam::OnCpu, &labels(&thread(11))), Some(0.3));
    let mut l = labels(&t11);
    l.push(("reason", "sleep"));
    assert_eq!(num(&e, Fam::OffCpu, &l), Some(2.0));
    assert_eq!(
        num(&e, Fam::Records, &[("collector", "keytime")]),
        Some(5.0)
    );
    assert_eq!(
        num(&e, Fam::TargetInfo, &[("target", "tgid:10")]),
        Some(1.0)
    );
    assert_eq!(
        num(&e, Fam::CollectorActive, &[("collector", "syscall")]),
        Some(1.0)
    );
    e.deactivated(&["lock"], 2 * S);
    assert_eq!(
        num(&e, Fam::CollectorActive, &[("collector", "lock")]),
        Some(0.0)
    );
    assert_eq!(
        num(&e, Fam::TargetInfo, &[("target", "tgid:10")]),
        Some(1.0),
        "other collectors still trace it"
    );
}

#[test]
fn offcpu_stacks_and_their_failures_are_counted() {
    let mut e = exporter();
    let frame = |f: &str| keytime::stacks::Frame {
        func: f.into(),
        module: "m".into(),
        offset: 0,
        file: None,
        line: None,
        inlined: false,
    };
    let off = |stack: Option<Vec<keytime::stacks::Frame>>, unwind| {
        let o = keytime::OffCpu {
            duration_ns: 2_000_000,
            reason: "sleep",
            stack,
            unwind,
            ..Default::default()
        };
        Record::new(S, keytime::Event::OffCpu(o)).task(11, 10, "work")
    };
    e.apply(&off(Some(vec![frame("a"), frame("0x1234")]), None), S);
    e.apply(&off(Some(vec![frame("0x99")]), Some("truncated")), S);
    e.apply(&off(None, None), S);
    let target = [("target", "tgid:10")];
    assert_eq!(num(&e, Fam::OffcpuStacks, &target), Some(2.0));
    assert_eq!(
        num(
            &e,
            Fam::StackUnwindFailures,
            &[("target", "tgid:10"), ("reason", "truncated")]
        ),
        Some(1.0)
    );
    assert_eq!(num(&e, Fam::StackUnnamedFrames, &target), Some(2.0));
}

#[test]
fn latency_histograms_are_filled_exactly_from_log2_buckets() {
    let mut e = exporter();
    // 3 latencies in [64,128) ns, 1 in [1024,2048), 2 in the open bucket
    let mut hist = Buckets::default();
    (hist.0[6], hist.0[10], hist.0[BUCKETS - 1]) = (3, 1, 2);
    let mut sys_hist = Buckets::default();
    sys_hist.0[2] = 1;
    let latency = Figures {
        count: 6,
        sum_ns: 5_000_000_000,
        hist,
        sys_count: 1,
        sys_avg_ns: 7,
        sys_sum_ns: 7,
        sys_hist,
        ..Default::default()
    };
    let rec = Record::new(
        S,
        schedule::Event::Schedule(Box::new(schedule::Interval {
            interval_ns: S,
            latency,
            ..Default::default()
        })),
    );
    e.apply(&rec, S);
    e.apply(&rec, S);
    let snap = e.shared.lock().unwrap().clone();
    let Some(Val::Hist(h)) = snap.get(
        Fam::SchedLatency,
        &[("target", "tgid:10"), ("scope", "target")],
    ) else {
        panic!("no histogram")
    };
    assert_eq!(h.count(), 12);
    assert_eq!(h.sum_s, 10.0);
    let b = h.prometheus_buckets();
    assert_eq!(b.len(), BUCKETS);
    // bucket 6 = [64, 128): every whole ns up to 127
    assert_eq!(b[6], (127e-9, 6));
    assert_eq!(b[10], (2047e-9, 2));
    assert_eq!(b[BUCKETS - 1], (f64::INFINITY, 4));
    let Some(Val::Hist(sys)) = snap.get(
        Fam::SchedLatency,
        &[("target", "tgid:10"), ("scope", "system")],
    ) else {
        panic!("no system histogram")
    };
    assert_eq!((sys.count(), sys.buckets[2], sys.sum_s), (2, 2, 14e-9));
    // observe_ns puts a value where BPF's log2 would
    let mut h = Log2Hist::default();
    for ns in [0, 1, 2, 3, 127, 128, u64::MAX] {
        h.observe_ns(ns);
    }
    assert_eq!(&h.buckets[..8], &[2, 2, 0, 0, 0, 0, 1, 1]);
    assert_eq!(h.buckets[BUCKETS - 1], 1);
}

#[test]
fn syscall_counts_by_name() {
    let mut e = exporter();
    let total = syscall::Total {
        by_name: syscall::ByName(vec![("getppid".into(), 10_000), ("read".into(), 5)]),
        ..Default::default()
    };
    let rec = Record::new(S, syscall::Event::SyscallsTotal(Box::new(total)));
    e.apply(&rec, S);
    e.apply(&rec, S);
    assert_eq!(
        num(
            &e,
            Fam::Syscalls,
            &[("target", "tgid:10"), ("syscall", "getppid")]
        ),
        Some(20_000.0)
    );
    let thread_rec = syscall::Thread {
        count: 7,
        ..Default::default()
    };
    let t = Record::new(S, syscall::Event::Syscalls(thread_rec)).task(11, 10, "work");
    e.apply(&t, S);
    assert_eq!(
        num(&e, Fam::ThreadSyscalls, &labels(&thread(11))),
        Some(7.0)
    );
    // the threads a --top listing left out still count, under "other"
    let rest = syscall::Rest {
        interval_ns: S,
        threads: 40,
        count: 900,
    };
    let rest = Record::new(S, syscall::Event::SyscallsRest(rest));
    e.apply(&rest, S);
    e.apply(&rest, S);
    assert_eq!(
        num(
            &e,
            Fam::ThreadSyscalls,
            &[
                ("target", "tgid:10"),
                ("tgid", OTHER),
                ("pid", OTHER),
                ("comm", OTHER)
            ]
        ),
        Some(1800.0)
    );
}

#[test]
fn resource_records_map_to_cpu_memory_and_io() {
    let mut e = exporter();
    let total = |ts, cpu_total: u64, read: u64| {
        let usage = resource::Usage {
            interval_ns: S,
            cpu_pct: 150.0,
            rss_kib: 2048,
            mem_pct: 1.5,
            read_bps: 100,
            cpu_ns_total: cpu_total,
            read_bytes_total: read,
            cpu_ratio: 1.5,
            mem_ratio: 0.015,
            ..Default::default()
        };
        let total = resource::Total { usage, threads: 2 };
        Record::new(ts, resource::Event::ResourceTotal(total)).task(10, 10, "work")
    };
    e.apply(&total(S, 2 * S, 4096), S);
    e.apply(&total(2 * S, 3 * S, 8192), 2 * S);
    let l = [("target", "tgid:10"), ("tgid", "10"), ("comm", "work")];
    assert_eq!(num(&e, Fam::CpuSeconds, &l), Some(3.0));
    assert_eq!(num(&e, Fam::IoRead, &l), Some(8192.0));
    assert_eq!(num(&e, Fam::IoWrite, &l), Some(0.0));
    assert_eq!(num(&e, Fam::CpuUsage, &l), Some(1.5));
    assert_eq!(num(&e, Fam::MemoryRss, &l), Some(2048.0 * 1024.0));
    assert_eq!(num(&e, Fam::MemoryUsage, &l), Some(0.015));
    let usage = resource::Usage {
        interval_ns: S,
        cpu_pct: 50.0,
        cpu_ratio: 0.5,
        ..Default::default()
    };
    let thread_rec = Record::new(S, resource::Event::Resource(usage)).task(11, 10, "work");
    e.apply(&thread_rec, S);
    assert_eq!(
        num(&e, Fam::ThreadCpuUsage, &labels(&thread(11))),
        Some(0.5)
    );
}

#[test]
fn lock_records_fill_wait_and_hold_histograms() {
    let mut e = exporter();
    let interval = |wait_ns: u64, hold_ns: u64| lock::Interval {
        lock_type: "mutex",
        lock_addr: 0x7f00,
        wait_ns,
        hold_ns,
        ..Default::default()
    };
    let rec = |ev| Record::new(S, ev).task(11, 10, "work");
    e.apply(&rec(lock::Event::Lock(interval(1000, 5_000_000))), S);
    e.apply(&rec(lock::Event::Lock(interval(3000, 100))), S);
    let failed = lock::Failed {
        interval: interval(0, 0),
        error: "EBUSY".into(),
    };
    e.apply(&rec(lock::Event::LockFailed(failed)), S);
    e.apply(&rec(lock::Event::LockSummary(Default::default())), S);
    let snap = e.shared.lock().unwrap().clone();
    let l = [("target", "tgid:10"), ("lock_type", "mutex")];
    let (Some(Val::Hist(w)), Some(Val::Hist(h))) =
        (snap.get(Fam::LockWait, &l), snap.get(Fam::LockHold, &l))
    else {
        panic!("no lock histograms")
    };
    assert_eq!((w.count(), w.buckets[9], w.buckets[11]), (2, 1, 1));
    assert_eq!((h.count(), h.sum_s), (2, 0.0050001));
    assert_eq!(num(&e, Fam::LockFailures, &l), Some(1.0));
}

#[test]
fn lost_records_are_health_counters() {
    let mut e = exporter();
    let losses = Losses {
        ringbuf_drops: 12,
        map_full: 3,
        ..Default::default()
    };
    let rec = losses.record(S, "keytime");
    e.apply(&rec, S);
    assert_eq!(
        num(&e, Fam::RingbufDrops, &[("collector", "keytime")]),
        Some(12.0)
    );
    assert_eq!(
        num(
            &e,
            Fam::LostEvents,
            &[("collector", "keytime"), ("reason", "map_full")]
        ),
        Some(3.0)
    );
    assert_eq!(
        num(&e, Fam::Records, &[("collector", "proc_image")]),
        None,
        "the tool's own records are not counted as collected"
    );
}

#[test]
fn only_the_top_threads_are_labelled_and_series_stay_bounded() {
    let cap = 3;
    let mut e = Exporter::new(cap);
    e.activated(&Target::System, &["keytime"], 0);
    // 100 rounds of 1 s on a busy host: 20 long-lived threads (thread i
    // runs i ms a round) and 20 new short-lived ones every round
    let mut peak = 0;
    for round in 1..=100u64 {
        let now = round * S;
        for i in 1..=20u32 {
            for (pid, on) in [
                (i, u64::from(i) * 1_000_000),
                (round as u32 * 100 + i, 1000),
            ] {
                let summary = keytime::Summary {
                    on_cpu_ns: on,
                    off_cpu_by_reason_ns: keytime::ByReason(vec![("sleep", 5)]),
                    ..Default::default()
                };
                let rec = Record::new(now, keytime::Event::CpuSummary(summary)).task(
                    pid,
                    pid,
                    format!("t{pid}"),
                );
                e.apply(&rec, now);
            }
        }
        // short-lived threads of earlier rounds have exited
        let limit = round as u32 * 100;
        e.maintain_with(now, |id| id <= 20 || id > limit);
        peak = peak.max(e.shared.lock().unwrap().len());
        assert!(e.threads.labelled_len() <= cap);
    }
    // per thread: on_cpu and off_cpu{sleep}; labelled + lingering <= 2 cap,
    // plus "other"; plus build_info, target_info, records{keytime}
    assert!(
        peak <= (2 * cap + 1) * 2 + 3,
        "{peak} series for a cap of {cap}"
    );
    let snap = e.shared.lock().unwrap().clone();
    let comms: Vec<String> = snap
        .family(Fam::OnCpu)
        .iter()
        .filter_map(|(l, _)| l.iter().find(|(k, _)| *k == "comm").map(|(_, v)| v.clone()))
        .collect();
    assert_eq!(comms.len(), cap + 1, "{comms:?}");
    for c in ["t20", "t19", "t18", "other"] {
        assert!(comms.iter().any(|x| x == c), "{c} not in {comms:?}");
    }
    // nothing is lost by aggregation: the series sum to all CPU time
    let total: f64 = snap
        .family(Fam::OnCpu)
        .iter()
        .map(|(_, v)| match v {
            Val::Num(n) => *n,
            _ => 0.0,
        })
        .sum();
    // (less the series removed: t1..t3, labelled in the first round only)
    let want = 100.0 * (210.0 * 1e-3 + 20.0 * 1e-6);
    assert!(
        total <= want + 1e-9 && total > want * 0.99,
        "{total} of {want}"
    );
}

#[test]
fn exited_threads_and_old_targets_are_removed_after_linger() {
    let mut e = Exporter::new(10);
    e.activated(&group(), &["keytime", "schedule"], S);
    let rec = Record::new(S, keytime::Event::Exit(Default::default())).task(11, 10, "work");
    e.apply(&rec, S);
    let t11 = thread(11);
    let mut l = labels(&t11);
    l.push(("event", "exit"));
    e.maintain_with(2 * S, |id| id != 11);
    assert!(num(&e, Fam::LifecycleEvents, &l).is_some(), "kept a while");
    e.maintain_with(2 * S + LINGER_NS, |id| id != 11);
    assert!(num(&e, Fam::LifecycleEvents, &l).is_none(), "removed");

    // a new target: the old one's series go after LINGER_NS
    let sched = Record::new(3 * S, schedule::Event::Schedule(Default::default()));
    e.apply(&sched, 3 * S);
    e.deactivated(&["keytime", "schedule"], 4 * S);
    e.activated(&Target::System, &["schedule"], 4 * S);
    let old = [("target", "tgid:10"), ("scope", "target")];
    e.maintain_with(5 * S, |_| true);
    assert!(e
        .shared
        .lock()
        .unwrap()
        .get(Fam::SchedLatency, &old)
        .is_some());
    e.maintain_with(4 * S + LINGER_NS, |_| true);
    assert!(e
        .shared
        .lock()
        .unwrap()
        .get(Fam::SchedLatency, &old)
        .is_none());
    assert_eq!(num(&e, Fam::TargetInfo, &[("target", "tgid:10")]), None);
    assert_eq!(num(&e, Fam::TargetInfo, &[("target", "system")]), Some(1.0));
}
