use super::*;
use crate::bpf_intf::{user_regs_sample, OFFCPU_DISK, OFFCPU_OTHER, OFFCPU_SLEEP};
use serde_json::Value;

#[test]
fn level2_record_decodes_to_a_folded_stack() {
    let ksyms = OnceLock::new();
    let _ = ksyms.set(Kallsyms::parse(
        "ffffffff81000000 T hrtimer_nanosleep\nffffffff81001000 T do_syscall_64\n",
    ));
    let mut e = keytime_offcpu_stack_event {
        hdr: hdr(KEYTIME_OFF_CPU_STACK),
        duration_ns: 2_000_000,
        reason: OFFCPU_SLEEP,
        prev_state: 1,
        kstack_len: 16,
        ustack_bytes: 0,
        ustack_start: 0,
        flags: 0,
        kstack: [0; 32],
        regs: user_regs_sample {
            ip: 0x1234,
            sp: 0x7ffc0000,
            fp: 0,
            lr: 0,
        },
    };
    e.kstack[0] = 0xffffffff81000010;
    e.kstack[1] = 0xffffffff81001020;
    let r = decode_record(&bytes(&e), &ksyms).unwrap();
    assert_eq!(r.get("blocked_in"), Some("hrtimer_nanosleep".into()));
    let stack = r.get("stack").unwrap();
    assert_eq!(stack[0]["fn"], "hrtimer_nanosleep");
    assert_eq!(stack[0]["offset"], 0x10);
    assert_eq!(stack[1]["module"], "kernel");
    // without a symbolizer, a user frame stays its address
    assert_eq!(stack[2]["fn"], "0x1234");
    let r = r.task(11, 10, "a;b");
    assert_eq!(
        r.body.folded(&r),
        Some((
            "a:b;0x1234;do_syscall_64_[k];hrtimer_nanosleep_[k]".into(),
            2_000_000
        ))
    );
}

fn bytes<T: plain::Plain>(v: &T) -> Vec<u8> {
    // SAFETY: plain types have no padding-sensitive invariants
    unsafe { plain::as_bytes(v) }.to_vec()
}

fn hdr(kind: u32) -> event_hdr {
    let mut h = event_hdr {
        ts_ns: 42,
        pid: 11,
        tgid: 10,
        kind: kind as u8,
        cpu: 1,
        ..Default::default()
    };
    h.comm[..4].copy_from_slice(b"work");
    h
}

#[test]
fn clone_kinds() {
    for (kind, name) in [
        (KEYTIME_FORK, "fork"),
        (KEYTIME_VFORK, "vfork"),
        (KEYTIME_PTHREAD_CREATE, "pthread_create"),
        (KEYTIME_KERNEL_WORKER, "kernel_worker"),
    ] {
        let e = keytime_clone_event {
            hdr: hdr(kind),
            clone_flags: 0x4111,
            child_pid: 20,
            child_tgid: 20,
        };
        let r = decode_record(&bytes(&e), &OnceLock::new()).unwrap();
        assert_eq!(
            (r.event(), r.pid, r.tgid, r.comm.as_str()),
            (name, 11, 10, "work")
        );
        assert_eq!(r.get("child_pid"), Some(Value::from(20)));
    }
}

#[test]
fn execve_argv_and_exit_status() {
    let mut e = keytime_exec_event {
        hdr: hdr(KEYTIME_EXECVE),
        old_pid: 11,
        ..Default::default()
    };
    e.filename[..9].copy_from_slice(b"/bin/true");
    let args = b"true\0-x\0\0";
    e.args[..args.len()].copy_from_slice(args);
    e.args_len = args.len() as u32;
    let r = decode_record(&bytes(&e), &OnceLock::new()).unwrap();
    assert_eq!(r.get("filename"), Some(Value::from("/bin/true")));
    assert_eq!(r.get("argv"), Some(serde_json::json!(["true", "-x", ""])));
    assert_eq!(r.get("old_pid"), None);

    let x = keytime_exit_event {
        hdr: hdr(KEYTIME_EXIT),
        exit_code: 7 << 8,
        group_dead: 1,
        ..Default::default()
    };
    let r = decode_record(&bytes(&x), &OnceLock::new()).unwrap();
    assert_eq!(
        (r.get("exit_code"), r.get("signal")),
        (Some(Value::from(7)), Some(Value::from(0)))
    );
    let killed = keytime_exit_event { exit_code: 9, ..x };
    let r = decode_record(&bytes(&killed), &OnceLock::new()).unwrap();
    assert_eq!(
        (r.get("exit_code"), r.get("signal")),
        (Some(Value::from(0)), Some(Value::from(9)))
    );
    assert_eq!(r.get("signal_name"), Some(Value::from("Killed")));
    assert_eq!((r.get("killed_by"), r.get("oom_kill")), (None, None));

    // killed by a known sender, chosen by the OOM killer
    let mut oom = keytime_exit_event {
        killed: 1,
        killer_kernel: 1,
        killer_pid: 30,
        killer_tgid: 29,
        oom_kill: 1,
        ..killed
    };
    oom.killer_comm[..3].copy_from_slice(b"hog");
    let r = decode_record(&bytes(&oom), &OnceLock::new()).unwrap();
    assert_eq!(
        r.get("killed_by"),
        Some(serde_json::json!({"pid": 30, "tgid": 29, "comm": "hog", "kernel": true}))
    );
    assert_eq!(r.get("oom_kill"), Some(Value::from(true)));
}

#[test]
fn child_exit_and_failed_exec() {
    let mut c = keytime_child_exit_event {
        hdr: hdr(KEYTIME_CHILD_EXIT),
        lifetime_ns: 1234,
        child_pid: 20,
        child_tgid: 20,
        exit_code: 11 << 8,
        kind: KEYTIME_VFORK as u8,
        ..Default::default()
    };
    c.child_comm[..2].copy_from_slice(b"sh");
    let r = decode_record(&bytes(&c), &OnceLock::new()).unwrap();
    assert_eq!(
        (r.event(), r.pid, r.comm.as_str()),
        ("child_exit", 11, "work")
    );
    assert_eq!(
        r.to_json(),
        serde_json::json!({"ts_ns": 42, "collector": "keytime", "pid": 11, "tgid": 10,
            "comm": "work", "event": "child_exit", "child_pid": 20, "child_tgid": 20,
            "child_comm": "sh", "kind": "vfork", "lifetime_ns": 1234, "exit_code": 11,
            "signal": 0})
    );

    let mut f = keytime_exec_failed_event {
        hdr: hdr(KEYTIME_EXEC_FAILED),
        ret: -libc::ENOENT,
        ..Default::default()
    };
    f.filename[..7].copy_from_slice(b"/no/cmd");
    let args = b"cmd\0-v\0";
    f.args[..args.len()].copy_from_slice(args);
    f.args_len = args.len() as u32;
    let r = decode_record(&bytes(&f), &OnceLock::new()).unwrap();
    assert_eq!(r.event(), "execve_failed");
    assert_eq!(r.get("syscall"), Some(Value::from("execve")));
    assert_eq!(r.get("filename"), Some(Value::from("/no/cmd")));
    assert_eq!(r.get("argv"), Some(serde_json::json!(["cmd", "-v"])));
    assert_eq!(
        (r.get("ret"), r.get("error")),
        (Some(Value::from(-2)), Some(Value::from("ENOENT")))
    );
    // args_len past the buffer's reported part is cut, not trusted
    f.args_len = u32::MAX;
    f.execveat = 1;
    let r = decode_record(&bytes(&f), &OnceLock::new()).unwrap();
    assert_eq!(r.get("syscall"), Some(Value::from("execveat")));
}

#[test]
fn off_cpu_reason_and_stack() {
    let mut e = keytime_cpu_event {
        hdr: hdr(KEYTIME_OFF_CPU),
        duration_ns: 5,
        reason: OFFCPU_SLEEP,
        ..Default::default()
    };
    let ksyms = OnceLock::new();
    let _ = ksyms.set(Kallsyms::parse("ffffffff81000000 T __schedule\nffffffff81001000 T io_schedule\nffffffff81002000 T folio_wait_bit_common\n"));
    e.kstack[..3].copy_from_slice(&[0xffffffff81000010, 0xffffffff81001010, 0xffffffff81002010]);
    e.stack_len = 24;
    let r = decode_record(&bytes(&e), &ksyms).unwrap();
    assert_eq!(r.get("reason"), Some(Value::from(reason_name(OFFCPU_DISK))));
    assert_eq!(
        r.get("blocked_in"),
        Some(Value::from("folio_wait_bit_common"))
    );
    e.reason = OFFCPU_PREEMPTED;
    e.stack_len = 0;
    let r = decode_record(&bytes(&e), &ksyms).unwrap();
    assert_eq!(r.get("reason"), Some(Value::from("preempted")));
    assert_eq!(r.get("blocked_in"), None);
    assert_eq!(reason_name(OFFCPU_OTHER), "other");
    assert_eq!(reason_name(99), "other");
}

#[test]
fn short_record_is_an_error() {
    let e = hdr(KEYTIME_EXECVE);
    assert!(decode_record(&bytes(&e), &OnceLock::new()).is_err());
}
