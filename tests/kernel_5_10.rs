//! proc_image -a on Debian 11's kernel (5.10), booted under QEMU by
//! scripts/qemu-kernel-test.sh --kernel 5.10: a kernel older than proc_image's
//! minimum, where the kernel really refuses collectors (5.10 has no task
//! storage for tracing programs, 5.11+). Each collector loads on its own:
//! every refused one is reported in one line and by controller --status,
//! and the ones that load run (resource needs only 5.8: checked against the
//! guest's /proc as on 6.1).

mod common;

use common::qemu::*;
use common::*;

const ALL: [&str; 6] = [
    "keytime", "lock", "resource", "syscall", "schedule", "futex",
];

#[test]
#[ignore = "needs root (BPF): scripts/test.sh runs it as root"]
fn refused_collectors_are_reported_and_the_rest_run_on_5_10() {
    need_root();
    let Some(g) = guest("5.10") else { return };
    let uname = g.text("uname");
    assert!(uname.starts_with("5.10."), "the guest ran {uname}");
    let err = g.text("proc_image.err");
    // one line for each refused collector, with libbpf's or the verifier's reason
    let refused: Vec<&str> = ALL
        .into_iter()
        .filter(|c| {
            let lines: Vec<&str> = err
                .lines()
                .filter(|l| l.starts_with(&format!("proc_image: {c} not loaded: ")))
                .collect();
            assert!(lines.len() <= 1, "{c}: {lines:?}");
            if let Some(l) = lines.first() {
                assert!(
                    l.contains("failed to") || l.contains("verifier refused"),
                    "no reason: {l}"
                );
            }
            lines.len() == 1
        })
        .collect();
    let loaded: Vec<&str> = ALL.into_iter().filter(|c| !refused.contains(c)).collect();
    eprintln!("5.10: loaded {loaded:?}, refused {refused:?}\n{err}");
    assert!(
        err.contains(&format!("loaded {}; ready", loaded.join(", "))),
        "{err}"
    );
    // 5.10 lacks task storage for tracing programs: keytime, lock, syscall,
    // schedule and futex cannot load; resource can
    assert!(!refused.is_empty(), "5.10 loaded everything?\n{err}");
    assert!(loaded.contains(&"resource"), "{err}");
    let status = g.text("controller");
    assert!(
        status.contains(&format!("ready; loaded {}\n", loaded.join(", "))),
        "controller --status:\n{status}"
    );
    for c in &refused {
        assert!(
            status.contains(&format!("  {c:<9} not loaded: refused by the kernel")),
            "controller --status on {c}:\n{status}"
        );
    }
    assert_eq!(g.phase("proc_image").1, Some(0), "proc_image's exit\n{err}");
    check_resource(g);
}
