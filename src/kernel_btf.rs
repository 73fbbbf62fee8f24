//! What this kernel's hooks look like, read from its own BTF
//! (/sys/kernel/btf/vmlinux), and the choice between the newer and the older
//! form of a BPF program made from it before the object is loaded.
//!
//! A tp_btf program may read only the arguments the tracepoint has: one
//! written for a newer prototype (sched_switch's prev_state, 5.18;
//! sched_process_exit's group_dead, 6.16) fails verification on an older
//! kernel. So such a program comes in two forms in one BPF object, and only
//! the one this kernel can take is loaded; the collector attaches that one.
//! PROC_IMAGE_FORCE_COMPAT=1 picks every older form, so tests exercise them
//! on a new kernel too.

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use libbpf_rs::btf::types::{Composite, Enum, FuncProto};
use libbpf_rs::btf::BtfType;
use libbpf_rs::{Btf, OpenObject};

/// The environment variable that forces the older forms.
pub const FORCE_COMPAT_ENV: &str = "PROC_IMAGE_FORCE_COMPAT";

/// Arguments of a tracepoint as a tp_btf program sees them (the BTF of
/// `btf_trace_<name>` less its leading context pointer); None when the
/// kernel has no such tracepoint.
pub fn tracepoint_args(btf: &Btf<'_>, name: &str) -> Option<usize> {
    // typedef void (*btf_trace_<name>)(void *__data, <args>...)
    let ty: BtfType<'_> = btf.type_by_name(&format!("btf_trace_{name}"))?;
    let proto = ty.skip_mods_and_typedefs().next_type()?;
    let proto = FuncProto::try_from(proto.skip_mods_and_typedefs()).ok()?;
    Some(proto.len().saturating_sub(1))
}

/// Does struct (or union) `name` have a member `field` (at its top level)?
pub fn has_field(btf: &Btf<'_>, name: &str, field: &str) -> bool {
    btf.type_by_name::<Composite<'_>>(name)
        .is_some_and(|c| c.iter().any(|m| m.name.is_some_and(|n| n == field)))
}

/// Does enum `name` have a value `value`? (`bpf_func_id` lists the helpers.)
pub fn has_enum_value(btf: &Btf<'_>, name: &str, value: &str) -> bool {
    btf.type_by_name::<Enum<'_>>(name)
        .is_some_and(|e| e.iter().any(|m| m.name.is_some_and(|n| n == value)))
}

/// The hook forms this kernel has that some program depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// sched_switch passes prev_state (5.18+): before, it must be read from
    /// the task, which a concurrent wakeup may already have changed.
    pub sched_switch_prev_state: bool,
    /// sched_process_exit passes group_dead (6.16+).
    pub process_exit_group_dead: bool,
    /// The bpf_loop helper (5.17+).
    pub bpf_loop: bool,
    /// oom:mark_victim passes the victim task (older kernels pass only its pid).
    pub mark_victim_task: bool,
    /// The older forms were forced (PROC_IMAGE_FORCE_COMPAT=1).
    pub forced: bool,
}

impl Features {
    /// Read from the kernel's BTF; a kernel without BTF gets the older forms
    /// (proc_image's tp_btf programs need BTF anyway: loading will say so).
    fn probe() -> Features {
        let forced = std::env::var(FORCE_COMPAT_ENV).is_ok_and(|v| v == "1");
        let btf = if forced {
            None
        } else {
            Btf::from_vmlinux().ok()
        };
        let args = |tp: &str| {
            btf.as_ref()
                .and_then(|b| tracepoint_args(b, tp))
                .unwrap_or(0)
        };
        Features {
            // (bool preempt, prev, next, unsigned int prev_state, ...)
            sched_switch_prev_state: args("sched_switch") >= 4,
            // (struct task_struct *p, bool group_dead)
            process_exit_group_dead: args("sched_process_exit") >= 2,
            // (struct task_struct *task, uid_t uid)
            mark_victim_task: args("mark_victim") >= 2,
            bpf_loop: btf
                .as_ref()
                .is_some_and(|b| has_enum_value(b, "bpf_func_id", "BPF_FUNC_loop")),
            forced,
        }
    }
}

/// This kernel's features, probed once.
pub fn features() -> Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    *FEATURES.get_or_init(Features::probe)
}

/// A program with a newer and an older form in one BPF object.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    pub newer: &'static str,
    pub older: &'static str,
    /// this kernel takes the newer form
    pub use_newer: bool,
}

impl Variant {
    /// The name of the form that is loaded.
    pub fn chosen(&self) -> &'static str {
        if self.use_newer {
            self.newer
        } else {
            self.older
        }
    }
}

/// Before load: let exactly one form of each variant autoload.
pub fn choose(open: &mut OpenObject, variants: &[Variant]) -> Result<()> {
    for v in variants {
        let mut seen = 0;
        for mut prog in open.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if name == v.newer || name == v.older {
                prog.set_autoload(name == v.chosen());
                seen += 1;
            }
        }
        if seen != 2 {
            return Err(anyhow!(
                "BPF object lacks the program pair {} / {}",
                v.newer,
                v.older
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_is_read() {
        // any kernel proc_image runs on has BTF with sched_switch
        let Ok(btf) = Btf::from_vmlinux() else {
            eprintln!("SKIPPED: no kernel BTF");
            return;
        };
        let n = tracepoint_args(&btf, "sched_switch").unwrap();
        assert!(n == 3 || n >= 4, "sched_switch has {n} arguments");
        assert!(tracepoint_args(&btf, "no_such_tracepoint").is_none());
        assert!(has_field(&btf, "task_struct", "pid"));
        assert!(!has_field(&btf, "task_struct", "no_such_field"));
        assert!(has_enum_value(
            &btf,
            "bpf_func_id",
            "BPF_FUNC_map_lookup_elem"
        ));
        assert!(!has_enum_value(
            &btf,
            "bpf_func_id",
            "BPF_FUNC_no_such_helper"
        ));
    }

    #[test]
    fn chosen_form() {
        let v = Variant {
            newer: "a",
            older: "a__old",
            use_newer: false,
        };
        assert_eq!(v.chosen(), "a__old");
        assert_eq!(
            Variant {
                use_newer: true,
                ..v
            }
            .chosen(),
            "a"
        );
    }
}
