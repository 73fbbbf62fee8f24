//! Compiles bpf/<collector>.bpf.c into CO-RE skeletons and turns the shared
//! ABI header bpf/proc_image.h into Rust, all into OUT_DIR (nothing lands in src/).

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

/// One entry per BPF object: bpf/<name>.bpf.c -> $OUT_DIR/<name>.skel.rs
/// (the collectors; `noop`, the benchmark floor; `bench_ref`, the classic
/// way of doing syscall's and schedule's jobs, the benchmark reference).
const COLLECTORS: &[&str] = &[
    "keytime",
    "lock",
    "resource",
    "syscall",
    "schedule",
    "futex",
    "noop",
    "bench_ref",
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest_dir.join("bpf");
    let vmlinux_dir = manifest_dir.join("vmlinux");
    // the kernel types of the architecture built for (pt_regs differs): x86_64
    // in vmlinux/, the others in vmlinux/<kernel arch>/
    let arch_dir = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => vmlinux_dir.clone(),
        Ok("aarch64") => vmlinux_dir.join("arm64"),
        Ok(other) => {
            panic!("no vmlinux header for {other}: proc_image builds for x86_64 and aarch64")
        }
        Err(e) => panic!("CARGO_CFG_TARGET_ARCH: {e}"),
    };

    for name in COLLECTORS {
        let src = bpf_dir.join(format!("{name}.bpf.c"));
        let skel = out_dir.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(&src)
            .clang_args([
                OsStr::new("-I"),
                bpf_dir.as_os_str(),
                OsStr::new("-I"),
                arch_dir.as_os_str(),
                OsStr::new("-Wall"),
                OsStr::new("-Werror"),
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building BPF skeleton for {}: {e:#}", src.display()));
    }

    generate_abi(&bpf_dir.join("proc_image.h"), &out_dir.join("bpf_intf.rs"));

    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-changed={}", vmlinux_dir.display());
}

/// bindgen the shared header once; its layout asserts catch any drift.
fn generate_abi(header: &Path, out: &Path) {
    bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_file(header.to_string_lossy())
        .derive_default(true)
        .derive_debug(true)
        .prepend_enum_name(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen {}: {e}", header.display()))
        .write_to_file(out)
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
