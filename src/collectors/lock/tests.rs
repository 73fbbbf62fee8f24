use super::library::tests::MAPS;
use super::*;
use crate::bpf_intf::{
    LOCK_FAILED, LOCK_F_CONTENDED, LOCK_OP_TRY, LOCK_RELEASED, LOCK_SPINLOCK, LOCK_UNMATCHED,
};

fn event(kind: u32, request: u64, acquire: u64, release: u64, ret: i32) -> lock_event {
    let mut e = lock_event::default();
    e.hdr.kind = kind as u8;
    e.hdr.pid = 11;
    e.hdr.tgid = 10;
    e.lock_addr = 0x7f00_1000;
    e.request_ns = request;
    e.acquire_ns = acquire;
    e.release_ns = release;
    e.ret = ret;
    e
}

#[test]
fn records_carry_wait_and_hold() {
    let mut e = event(LOCK_RELEASED, 100, 150, 1150, 0);
    e.flags = LOCK_F_CONTENDED as u8;
    let r = lock_record(&e).unwrap().unwrap();
    assert_eq!(r.event(), "lock");
    assert_eq!(r.get("lock_addr").unwrap(), "0x7f001000");
    assert_eq!(r.get("wait_ns").unwrap(), 50);
    assert_eq!(r.get("hold_ns").unwrap(), 1000);
    assert_eq!(r.get("lock_type").unwrap(), "mutex");
    assert_eq!(r.get("contended").unwrap(), true);

    let mut f = event(LOCK_FAILED, 100, 120, 0, libc::EBUSY);
    f.op = LOCK_OP_TRY as u8;
    let r = lock_record(&f).unwrap().unwrap();
    assert_eq!(r.event(), "lock_failed");
    assert_eq!(r.get("ret").unwrap(), 16);
    assert_eq!(r.get("error").unwrap(), "EBUSY");
    assert_eq!(r.get("hold_ns").unwrap(), 0);
    assert_eq!(r.get("op").unwrap(), "trylock");

    let mut s = LockSummary::default();
    s.add(&e);
    s.add(&event(LOCK_RELEASED, 2000, 2000, 5000, 0));
    s.add(&f);
    s.add(&event(LOCK_UNMATCHED, 0, 0, 9000, 0));
    assert_eq!(
        (s.acquisitions, s.contended, s.failed, s.unmatched_releases),
        (2, 1, 1, 1)
    );
    assert_eq!((s.hold_total_ns, s.hold_max_ns), (4000, 3000));
    assert_eq!((s.wait_total_ns, s.wait_max_ns), (70, 50));
    assert!(lock_record(&event(99, 0, 0, 0, 0)).is_err());
}

#[test]
fn a_lock_summary_says_its_type_once_then_its_figures() {
    let figures = LockSummary {
        lock_type: "mutex",
        acquisitions: 4,
        hold_max_ns: 9,
        ..Default::default()
    };
    let r = summary_record(1, 2, 3, 0x10, &figures);
    let keys: Vec<String> = r.details().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "lock_type",
            "lock_addr",
            "interval_ns",
            "acquisitions",
            "contended",
            "failed",
            "unmatched_releases",
            "wait_total_ns",
            "wait_max_ns",
            "hold_total_ns",
            "hold_max_ns"
        ]
    );
    assert_eq!(r.get("lock_addr"), Some(serde_json::json!("0x10")));
    assert_eq!(r.get("hold_max_ns"), Some(serde_json::json!(9)));
}

#[test]
fn an_exiting_thread_is_not_live() {
    let stat =
        |state: &str, flags: u64| format!("12 (a (b) c) {state} 1 12 12 0 -1 {flags} 0 0 0 0 0 0");
    assert!(stat_is_live(&stat("S", 0x40_0040)));
    assert!(!stat_is_live(&stat("R", 0x40_0044)), "PF_EXITING");
    assert!(!stat_is_live(&stat("Z", 0x40_0040)));
    assert!(!stat_is_live("garbage"));
    // this thread
    let me = std::process::id();
    assert!(thread_is_live(me, me));
}

#[test]
fn thread_records_are_acted_on_not_printed() {
    for kind in [LOCK_ANCHOR_EXIT, LOCK_NEW_THREAD] {
        assert!(lock_record(&event(kind, 0, 0, 0, 0)).unwrap().is_none());
    }
    let exec = lock_record(&event(LOCK_EXEC, 0, 0, 0, 0)).unwrap();
    assert_eq!(exec.unwrap().event(), "exec");
}

#[test]
fn only_processes_are_targets_and_names_are_stable() {
    assert!(tgid_of(&Target::System).is_none());
    assert!(tgid_of(&Target::Idle { cpu: 0 }).is_none());
    let t = Target::Thread {
        pid: 12,
        tgid: 10,
        start_ticks: 0,
    };
    assert_eq!(tgid_of(&t), Some(10));
    assert_eq!(type_name(LOCK_SPINLOCK as u8), "spinlock");
    assert_eq!(errno_name(110), "ETIMEDOUT");
}

#[test]
fn exec_reattaches_unless_the_leader_kept_the_library() {
    let maps = parse_maps(MAPS);
    let (libc, other) = (&maps[1], &maps[3]);
    assert!(!needs_reattach(libc, libc, 10, 10));
    assert!(needs_reattach(libc, libc, 11, 10), "a non-leader exec'd");
    assert!(needs_reattach(libc, other, 10, 10), "another library");
}
