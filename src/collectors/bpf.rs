//! What the collectors do with libbpf and the kernel alike: load a
//! skeleton (and say in one line why the kernel refused it), attach all
//! of a set or none, read hash maps and per-CPU stats, wait for programs in
//! flight, capture ring-buffer records raw.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenObject, PrintLevel};

use super::{CollectorKind, Decoder};
use crate::bpf_intf::collector_stats;
use crate::kernel_btf::{self, Variant};
use crate::losses::Losses;

/// After a collector points its BPF side at the next interval's slot (or
/// map), how long it leaves the old one before reading and clearing it: a
/// program that read the old slot number just before the switch may still
/// be adding to it, for microseconds.
pub const SLOT_SETTLE: std::time::Duration = std::time::Duration::from_millis(1);

/// Return once every BPF program that was running when called has finished.
///
/// A collector that points its BPF side at the next interval's slot calls
/// this before it reads (and clears) the old one: a program that read the
/// old slot number just before the switch may still be adding to it, and a
/// stalled vCPU can stretch that far beyond any fixed sleep. Tracing
/// programs run inside an RCU read-side section (non-sleepable: preemption
/// or rcu_read_lock), so an RCU grace period waits for all of them. The
/// kernel waits one (synchronize_rcu) before it returns from an update of a
/// map-in-map, so that user space knows no program still uses the old inner
/// map: updating a small one of our own is that wait, on every kernel that
/// runs tp_btf programs. Should it not be had, membarrier(GLOBAL) also
/// calls synchronize_rcu (on more than one online CPU); the last resort is a
/// settle sleep, logged once.
pub fn wait_for_programs_in_flight() {
    use std::sync::OnceLock;
    static GRACE: OnceLock<Option<(MapHandle, MapHandle)>> = OnceLock::new();
    let grace = GRACE.get_or_init(|| match grace_period_maps() {
        Ok(maps) => Some(maps),
        Err(e) => {
            eprintln!("proc_image: no map-in-map for RCU grace periods ({e:#}): membarrier or a settle sleep instead");
            None
        }
    });
    if let Some((inner, outer)) = grace {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = inner.as_fd().as_raw_fd() as u32;
        if outer
            .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .is_ok()
        {
            return;
        }
    }
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes plain integers.
    let cmds = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0) };
    if cmds > 0 && cmds & MEMBARRIER_CMD_GLOBAL != 0 && crate::sys::online_cpus().len() > 1 {
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) } == 0 {
            return;
        }
    }
    std::thread::sleep(SLOT_SETTLE);
}

/// An array-of-maps of one slot and an array to put in it.
fn grace_period_maps() -> Result<(MapHandle, MapHandle)> {
    use libbpf_rs::libbpf_sys::bpf_map_create_opts;
    use libbpf_rs::MapType;
    use std::os::fd::{AsFd, AsRawFd};
    let plain = bpf_map_create_opts {
        sz: std::mem::size_of::<bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let inner = MapHandle::create(MapType::Array, Some("pi_grace_in"), 4, 4, 1, &plain)
        .context("create the inner map")?;
    let outer_opts = bpf_map_create_opts {
        inner_map_fd: inner.as_fd().as_raw_fd() as u32,
        ..plain
    };
    let outer = MapHandle::create(MapType::ArrayOfMaps, Some("pi_grace"), 4, 4, 1, &outer_opts)
        .context("create the map-in-map")?;
    Ok((inner, outer))
}

/// With PROC_IMAGE_CAPTURE_RAW=FILE, every ring-buffer record is also
/// appended to FILE as it arrived (collector name, length, bytes): the
/// input of the decoders' golden test, and of a bug report.
pub fn capture_raw(kind: CollectorKind, mut decode: Decoder) -> Decoder {
    let Some(path) = std::env::var_os("PROC_IMAGE_CAPTURE_RAW") else {
        return decode;
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    let Ok(mut file) = file else {
        eprintln!("proc_image: cannot open {}", path.to_string_lossy());
        return decode;
    };
    Box::new(move |data| {
        use std::io::Write;
        let name = kind.name().as_bytes();
        let mut frame = vec![name.len() as u8];
        frame.extend_from_slice(name);
        frame.extend_from_slice(&(data.len() as u32).to_le_bytes());
        frame.extend_from_slice(data);
        let _ = file.write_all(&frame);
        decode(data)
    })
}

/// Reads what `capture_raw` wrote: (collector name, record bytes).
pub fn read_captured(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while let Some((&n, tail)) = rest.split_first() {
        let n = n as usize;
        if tail.len() < n + 4 {
            break;
        }
        let name = String::from_utf8_lossy(&tail[..n]).into_owned();
        let len = u32::from_le_bytes(tail[n..n + 4].try_into().unwrap()) as usize;
        let Some(data) = tail.get(n + 4..n + 4 + len) else {
            break;
        };
        records.push((name, data.to_vec()));
        rest = &tail[n + 4 + len..];
    }
    records
}

/// libbpf's messages go to stderr with -v; its warnings are also kept while
/// a collector loads, so that a refusal can say why in one line.
static LIBBPF_VERBOSE: AtomicBool = AtomicBool::new(false);
static LIBBPF_CAPTURE: Mutex<Option<String>> = Mutex::new(None);

pub fn set_libbpf_log(verbose: bool) {
    LIBBPF_VERBOSE.store(verbose, Ordering::Relaxed);
    let level = if verbose {
        PrintLevel::Debug
    } else {
        PrintLevel::Warn
    };
    libbpf_rs::set_print(Some((level, libbpf_print as fn(PrintLevel, String))));
}

fn libbpf_print(level: PrintLevel, msg: String) {
    if level == PrintLevel::Warn {
        if let Some(buf) = LIBBPF_CAPTURE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            buf.push_str(&msg);
        }
    }
    // debug messages (every relocation) only when asked for twice
    if LIBBPF_VERBOSE.load(Ordering::Relaxed)
        && (level != PrintLevel::Debug || std::env::var_os("PROC_IMAGE_LIBBPF_DEBUG").is_some())
    {
        eprint!("libbpf: {msg}");
    }
}

pub(super) fn start_capture() {
    *LIBBPF_CAPTURE.lock().unwrap_or_else(|e| e.into_inner()) = Some(String::new());
}

pub(super) fn end_capture() -> String {
    LIBBPF_CAPTURE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default()
}

/// Why libbpf or the kernel refused an object, from libbpf's warnings: the
/// verifier's last words for a program it rejected (the line before its
/// statistics), else libbpf's first warning (a missing BTF type, a map the
/// kernel cannot create, ...).
pub fn refusal_reason(log: &str) -> Option<String> {
    const BEGIN: &str = "-- BEGIN PROG LOAD LOG --";
    const END: &str = "-- END PROG LOAD LOG --";
    if let Some(at) = log.find(BEGIN) {
        let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
        let prog = log[line_start..at]
            .split('\'')
            .nth(1)
            .map(|p| format!("program {p}: "))
            .unwrap_or_default();
        let body = &log[at + BEGIN.len()..];
        let body = &body[..body.find(END).unwrap_or(body.len())];
        let last = body.lines().map(str::trim).rfind(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })?;
        return Some(format!("the kernel's verifier refused {prog}{last}"));
    }
    // libbpf's own account: the first thing it says failed (a map the
    // kernel cannot create, a BTF type it lacks), not its retries or the
    // object's failure that follows
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.trim().trim_start_matches("libbpf: "))
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .find(|l| l.contains("failed to") && !l.starts_with("failed to load object"))
        .or(lines.first())
        .map(|l| l.trim_end_matches('.').to_string())
}

/// A test hook (PROC_IMAGE_TEST_REFUSE=name,...): the named collectors'
/// tp_btf programs are pointed at `sched_process_free`, a tracepoint of one
/// argument, as if the kernel's tracepoints lacked the arguments the
/// programs read (sched_switch's prev_state before 5.18). The kernel's
/// verifier then really refuses them, on a kernel that loads everything.
fn refuse_for_test(name: &str, open: &mut OpenObject) -> Result<()> {
    let listed = std::env::var("PROC_IMAGE_TEST_REFUSE")
        .is_ok_and(|names| names.split(',').any(|n| n == name));
    if !listed {
        return Ok(());
    }
    for mut prog in open.progs_mut() {
        if prog.section().to_string_lossy().starts_with("tp_btf/") {
            prog.set_attach_target(0, Some("sched_process_free".into()))
                .context("retarget a program for PROC_IMAGE_TEST_REFUSE")?;
        }
    }
    Ok(())
}

/// Open and load (verify) a skeleton, sizing its `events` ring buffer.
///
/// The skeleton borrows its object storage for its whole life. A collector
/// lives as long as proc_image, so the storage is leaked once per collector
/// rather than threading a lifetime through every type.
pub fn load_skel<B>(
    builder: B,
    name: &str,
    ringbuf_bytes: u32,
) -> Result<<B::Output as OpenSkel<'static>>::Output>
where
    B: SkelBuilder<'static>,
{
    load_skel_variants(builder, name, ringbuf_bytes, &[])
}

/// load_skel, loading only the form of each `variants` program this kernel
/// takes (see kernel_btf).
pub fn load_skel_variants<B>(
    builder: B,
    name: &str,
    ringbuf_bytes: u32,
    variants: &[Variant],
) -> Result<<B::Output as OpenSkel<'static>>::Output>
where
    B: SkelBuilder<'static>,
{
    let storage: &'static mut MaybeUninit<OpenObject> = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = builder
        .open(storage)
        .with_context(|| format!("open the {name} BPF object"))?;
    for mut map in open.open_object_mut().maps_mut() {
        if map.name() == "events" {
            map.set_max_entries(ringbuf_bytes)
                .with_context(|| format!("size the {name} ring buffer"))?;
        }
    }
    refuse_for_test(name, open.open_object_mut())?;
    kernel_btf::choose(open.open_object_mut(), variants)
        .with_context(|| format!("choose the {name} programs for this kernel"))?;
    for v in variants.iter().filter(|v| !v.use_newer) {
        let why = match kernel_btf::features().forced {
            true => format!("forced by {}=1", kernel_btf::FORCE_COMPAT_ENV),
            false => "this kernel's hook lacks an argument".into(),
        };
        eprintln!("proc_image: {name}: older form {} ({why})", v.older);
    }
    open.load().with_context(|| {
        format!("load and verify the {name} BPF programs (run with -v for the verifier log)")
    })
}

/// Sum a per-CPU `collector_stats` array over the CPUs.
pub fn read_stats(map: &dyn MapCore) -> Result<Losses> {
    let per_cpu = map
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .context("read collector stats")?
        .unwrap_or_default();
    let mut sum = Losses::default();
    for bytes in per_cpu {
        let mut s = collector_stats::default();
        if plain::copy_from_bytes(&mut s, &bytes).is_ok() {
            sum += Losses::from(s);
        }
    }
    Ok(sum)
}

/// Attach a set of programs as one: all of them or none.
pub fn attach_all(progs: &[(&str, &libbpf_rs::ProgramMut<'_>)]) -> Result<Vec<libbpf_rs::Link>> {
    progs
        .iter()
        .map(|(name, prog)| prog.attach().with_context(|| format!("attach {name}")))
        .collect()
}

/// Run a task iterator once: what its program wrote. `what` names the
/// collector in an error.
pub fn read_task_iter(link: &libbpf_rs::Link, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    libbpf_rs::Iter::new(link)
        .with_context(|| format!("{what}: start the task iterator"))?
        .read_to_end(&mut bytes)
        .with_context(|| format!("{what}: read the task iterator"))?;
    Ok(bytes)
}

/// Every entry of a hash map, read in batches. libbpf-rs's `lookup_batch`
/// iterator ends at the first batch shorter than asked for, but a hash map
/// batch holds whole buckets only and comes back short whenever the next
/// bucket does not fit: with thousands of entries it stopped part way. This
/// goes on until the kernel says ENOENT. Entries BPF adds meanwhile may or
/// may not be in it; none that was there all along is left out.
pub fn hash_entries(map: &dyn MapCore) -> Result<Entries> {
    Entries::read(map, false)
}

/// Every entry of a hash map, taken out of it: as `hash_entries`, with the
/// kernel deleting what each batch returns (libbpf-rs's
/// `lookup_and_delete_batch` iterator stops part way the same way).
pub fn take_hash_entries(map: &dyn MapCore) -> Result<Entries> {
    Entries::read(map, true)
}

/// Delete `keys` from a hash map in one call (one bpf() call per key was a
/// share of proc_image's CPU under thread churn); should the batch stop
/// short (a key already gone), the rest go one at a time.
pub fn delete_keys<K: AsRef<[u8]>>(map: &dyn MapCore, keys: &[K]) {
    if keys.is_empty() {
        return;
    }
    let all: Vec<u8> = keys.iter().flat_map(|k| k.as_ref()).copied().collect();
    let any = libbpf_rs::MapFlags::ANY;
    if map.delete_batch(&all, keys.len() as u32, any, any).is_err() {
        for k in keys {
            let _ = map.delete(k.as_ref());
        }
    }
}

/// A hash map's entries as the kernel's batch calls return them: keys and
/// values each in one flat buffer. One allocation per map read, not two per
/// entry: under thread churn, per-entry buffers and the pages behind them
/// were a quarter of proc_image's CPU.
pub struct Entries {
    key_size: usize,
    value_size: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Entries {
    fn read(map: &dyn MapCore, delete: bool) -> Result<Self> {
        use libbpf_rs::libbpf_sys;
        use std::os::fd::AsRawFd;
        let (key_size, value_size) = (map.key_size() as usize, map.value_size() as usize);
        let mut out = Entries {
            key_size,
            value_size,
            keys: Vec::new(),
            values: Vec::new(),
        };
        let mut per_call: usize = 1024;
        // the batch token: a bucket index for hash maps (8 bytes is room enough)
        let mut token = vec![0u8; key_size.max(8)];
        let mut next = vec![0u8; key_size.max(8)];
        let mut first = true;
        loop {
            // the kernel writes this batch straight after the entries so
            // far, into room reserved, not zeroed: a map of thousands of
            // kilobyte values would have its room cleared and faulted in
            // each interval for the few entries it holds
            let have = out.len();
            out.keys.reserve(per_call * key_size);
            out.values.reserve(per_call * value_size);
            let mut count = per_call as u32;
            let opts = libbpf_sys::bpf_map_batch_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
                ..Default::default()
            };
            let batch = if delete {
                libbpf_sys::bpf_map_lookup_and_delete_batch
            } else {
                libbpf_sys::bpf_map_lookup_batch
            };
            // SAFETY: past their lengths the buffers have room for `count`
            // keys and values, and the tokens room for a key each.
            let ret = unsafe {
                batch(
                    map.as_fd().as_raw_fd(),
                    if first {
                        std::ptr::null_mut()
                    } else {
                        token.as_mut_ptr().cast()
                    },
                    next.as_mut_ptr().cast(),
                    out.keys.spare_capacity_mut().as_mut_ptr().cast(),
                    out.values.spare_capacity_mut().as_mut_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            let err = (ret < 0).then(std::io::Error::last_os_error);
            let errno = err.as_ref().and_then(|e| e.raw_os_error());
            match errno {
                // one bucket holds more than a call's room: nothing written
                Some(libc::ENOSPC) => {
                    per_call *= 2;
                    continue;
                }
                None | Some(libc::ENOENT) => {}
                Some(_) => {
                    return Err(err.unwrap())
                        .with_context(|| format!("read map {}", map.name().to_string_lossy()))
                }
            }
            // SAFETY: the kernel wrote `count` keys and values there, at
            // most the room asked for
            let got = (count as usize).min(per_call);
            unsafe {
                out.keys.set_len((have + got) * key_size);
                out.values.set_len((have + got) * value_size);
            }
            if errno == Some(libc::ENOENT) {
                return Ok(out);
            }
            std::mem::swap(&mut token, &mut next);
            first = false;
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len() / self.key_size.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// (key, value) byte slices, in the kernel's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.into_iter()
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter =
        std::iter::Zip<std::slice::ChunksExact<'a, u8>, std::slice::ChunksExact<'a, u8>>;

    fn into_iter(self) -> Self::IntoIter {
        let keys = self.keys.chunks_exact(self.key_size.max(1));
        let values = self.values.chunks_exact(self.value_size.max(1));
        keys.zip(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifiers_last_words_are_the_reason() {
        // libbpf's warnings for a program the verifier rejected (5.15's
        // sched_switch has no 4th argument)
        let log = "prog 'handle__sched_switch': BPF program load failed: Permission denied\n\
            prog 'handle__sched_switch': -- BEGIN PROG LOAD LOG --\n\
            reg type unsupported for arg#0 function handle__sched_switch#21\n\
            0: R1=ctx(off=0,imm=0) R10=fp0\n\
            ; int BPF_PROG(handle__sched_switch, bool preempt, struct task_struct *prev,\n\
            0: (79) r6 = *(u64 *)(r1 +24)\n\
            func 'sched_switch' doesn't have 4-th argument\n\
            invalid bpf_context access off=24 size=8\n\
            processed 1 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n\
            -- END PROG LOAD LOG --\n\
            prog 'handle__sched_switch': failed to load: -13\n\
            failed to load object 'keytime_bpf'\n";
        assert_eq!(
            refusal_reason(log).as_deref(),
            Some("the kernel's verifier refused program handle__sched_switch: invalid bpf_context access off=24 size=8")
        );
        // no verifier log: libbpf's first warning says what is missing
        let log = "prog 'handle__x': failed to find kernel BTF type ID of 'btf_trace_x': -3\n\
            prog 'handle__x': failed to load: -3\n";
        assert_eq!(
            refusal_reason(log).as_deref(),
            Some("prog 'handle__x': failed to find kernel BTF type ID of 'btf_trace_x': -3")
        );
        // Debian 11's 5.10: no task storage map
        let log = "libbpf: Error in bpf_create_map_xattr(cpu_states):Invalid argument(-22). Retrying without BTF.\n\
            libbpf: map 'cpu_states': failed to create: Invalid argument(-22)\n\
            libbpf: failed to load object 'keytime_bpf'\n";
        assert_eq!(
            refusal_reason(log).as_deref(),
            Some("map 'cpu_states': failed to create: Invalid argument(-22)")
        );
        assert_eq!(refusal_reason(""), None);
    }
}
