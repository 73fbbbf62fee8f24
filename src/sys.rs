//! Small facts about the running system: privileges, filesystems, /proc, clocks.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// `statfs(2)` magic numbers of the filesystems proc_image mounts itself.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const TRACEFS_MAGIC: i64 = 0x7472_6163;

pub fn require_root(tool: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{tool} must run as root (it loads BPF programs and owns pins under /sys/fs/bpf): try sudo {tool}");
    }
    Ok(())
}

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated and st is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

/// Mount bpffs at /sys/fs/bpf when a fresh boot has not.
pub fn ensure_bpffs(mount_point: &Path) -> Result<()> {
    if is_bpffs(mount_point) {
        return Ok(());
    }
    fs::create_dir_all(mount_point)
        .with_context(|| format!("create bpffs mount point {}", mount_point.display()))?;
    mount("bpf", mount_point, "mode=0700")
        .with_context(|| format!("bpffs is not mounted at {}", mount_point.display()))
}

/// Where tracefs's events can be: its own mount point (proc_image mounts
/// it at the first when a fresh boot has not), then debugfs's tracing
/// directory.
pub const TRACING_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The first of TRACING_DIRS whose tracepoint events can be read.
pub fn tracing_dir() -> Option<&'static Path> {
    TRACING_DIRS
        .iter()
        .map(Path::new)
        .find(|dir| dir.join("events").is_dir())
}

/// Mount tracefs at /sys/kernel/tracing when no tracing directory is
/// there: libbpf reads a `tracepoint/` program's event id from one
/// (keytime's exec hooks, futex), and a fresh boot may have mounted none.
pub fn ensure_tracefs() -> Result<()> {
    let at = Path::new(TRACING_DIRS[0]);
    if fs_magic(at).is_ok_and(|m| m == TRACEFS_MAGIC) || tracing_dir().is_some() {
        return Ok(());
    }
    mount("tracefs", at, "").with_context(|| format!("tracefs is not mounted at {}", at.display()))
}

/// mount(2) a filesystem of type `fs` at `at`.
fn mount(fs: &str, at: &Path, options: &str) -> Result<()> {
    let target = CString::new(at.as_os_str().as_encoded_bytes())?;
    let fs = CString::new(fs)?;
    let options = CString::new(options)?;
    // SAFETY: all arguments are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        bail!("mounting it failed: {err}");
    }
    Ok(())
}

/// Create `dir` (and parents) and restrict it to its owner.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))
}

/// Fields of /proc/PID/stat that proc_image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start_ticks: u64,
}

/// Parse /proc/PID/stat text: the comm field may hold spaces and parentheses,
/// so fields are counted after the last ')'.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22
    let state = fields.first()?.chars().next()?;
    let start_ticks = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

/// /proc/PID/stat of a thread or process; None when there is no such task.
/// /proc/TID works for every thread id, though only leaders are listed.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// The thread-group id of thread `pid`.
pub fn tgid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Is the task still alive (not gone, not a zombie, and not a recycled pid)?
pub fn task_alive(pid: u32, start_ticks: u64) -> bool {
    match proc_stat(pid) {
        Some(st) => st.start_ticks == start_ticks && st.state != 'Z' && st.state != 'X',
        None => false,
    }
}

/// Does thread group `tgid` still have a live thread? A leader that called
/// pthread_exit() stays a zombie while the other threads run.
pub fn thread_group_alive(tgid: u32, start_ticks: u64) -> bool {
    let Some(leader) = proc_stat(tgid) else {
        return false;
    };
    if leader.start_ticks != start_ticks {
        return false;
    }
    if leader.state != 'Z' && leader.state != 'X' {
        return true;
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{tgid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| parse_proc_stat(&s))
            .is_some_and(|st| st.state != 'Z' && st.state != 'X')
    })
}

pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns() and of every ts_ns.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// CPUs the kernel may bring online: valid `-c` values are 0..possible_cpus().
pub fn possible_cpus() -> Result<u32> {
    let text = fs::read_to_string("/sys/devices/system/cpu/possible")
        .context("read /sys/devices/system/cpu/possible")?;
    parse_cpu_list_max(&text)
        .map(|max| max + 1)
        .with_context(|| format!("unexpected CPU list {:?}", text.trim()))
}

/// Highest CPU number in a list such as "0-3,8-11".
pub fn parse_cpu_list_max(text: &str) -> Option<u32> {
    text.trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.trim().parse().ok())
        .max()
}

pub fn online_cpus() -> Vec<u32> {
    let text = fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for range in text.trim().split(',').filter(|r| !r.is_empty()) {
        let mut ends = range.split('-').map(|n| n.trim().parse::<u32>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => cpus.extend(a..=b),
            (Some(Ok(a)), None) => cpus.push(a),
            _ => {}
        }
    }
    cpus
}

/// Local wall-clock time of day, "HH:MM:SS.micros", for text output.
pub fn local_time_of_day(realtime_ns: u64) -> String {
    let secs = (realtime_ns / 1_000_000_000) as libc::time_t;
    let micros = (realtime_ns % 1_000_000_000) / 1000;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        tm.tm_hour, tm.tm_min, tm.tm_sec, micros
    )
}

/// Create (or truncate) an output file such as --trace-out's, safely when
/// proc_image runs as root: a symlink or anything but a regular file is
/// refused (opening a FIFO would block), and the file is private (0600).
pub fn create_private_file(path: &Path, what: &str) -> Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let kind = meta.file_type();
        if kind.is_symlink() {
            bail!(
                "{what}: {} is a symbolic link; give the file itself",
                path.display()
            );
        }
        if !kind.is_file() {
            let is = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            bail!("{what}: {} is {is}; give a regular file", path.display());
        }
    }
    // O_NOFOLLOW and O_NONBLOCK close the gap between the check and the open
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("{what}: cannot create {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("{what}: stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what}: {} is not a regular file", path.display());
    }
    // an existing file keeps its mode through O_CREAT: make it private too
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("{what}: chmod 0600 {}", path.display()))?;
    // SAFETY: fcntl on a file descriptor this function owns.
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(file)
}

/// `statfs(2)` magic of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on hybrid hosts), from /proc/self/mounts.
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| std::path::PathBuf::from(f[1].replace("\\040", " ")))
}

/// A cgroup v2 directory: its id (the inode number, as the kernel's
/// kernfs id) and its depth below the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub id: u64,
    pub level: u32,
    /// its path below the root, e.g. /system.slice/ssh.service
    pub path: String,
}

/// Resolve `--cgroup PATH`: absolute (under the cgroup2 mount, or the
/// cgroup's own path as /proc/PID/cgroup shows it), or relative to the mount.
pub fn resolve_cgroup(path: &Path) -> Result<Cgroup> {
    use std::os::unix::fs::MetadataExt;
    let Some(mount) = cgroup2_mount() else {
        bail!("this host has no cgroup v2 hierarchy mounted (cgroup v1 only): --cgroup needs cgroup v2");
    };
    let rel = match path.strip_prefix(&mount) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => path.strip_prefix("/").unwrap_or(path).to_path_buf(),
    };
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!("--cgroup {}: give a path without . or ..", path.display());
    }
    let dir = mount.join(&rel);
    let meta = fs::metadata(&dir).map_err(|e| {
        anyhow::anyhow!(
            "--cgroup {}: no cgroup at {} ({e})",
            path.display(),
            dir.display()
        )
    })?;
    if !meta.is_dir() || fs_magic(&dir).ok() != Some(CGROUP2_SUPER_MAGIC) {
        bail!(
            "--cgroup {}: {} is not a cgroup v2 directory",
            path.display(),
            dir.display()
        );
    }
    Ok(Cgroup {
        id: meta.ino(),
        level: rel.components().count() as u32,
        path: format!("/{}", rel.display()),
    })
}

/// The path below the cgroup2 root of the cgroup with this id, if it still
/// exists: opened by its kernfs file handle (the id), then named through
/// /proc/self/fd.
pub fn cgroup_path(id: u64) -> Option<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mount = cgroup2_mount()?;
    let root = fs::File::open(&mount).ok()?;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    // FILEID_KERNFS: the handle of a kernfs node is its 64-bit id
    let mut h = Handle {
        bytes: 8,
        kind: 0xfe,
        id,
    };
    // SAFETY: a file_handle header followed by its 8 bytes of handle.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root.as_raw_fd(),
            &mut h as *mut Handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel gave us this descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let full = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = full.strip_prefix(&mount).ok()?;
    Some(format!("/{}", rel.display()))
}

/// The name of a cgroup v2 by its id, for records of the whole system:
/// looked up once per cgroup (names of removed cgroups are kept; the cache
/// starts over past 4096 of them). "" for id 0.
pub fn cgroup_name(id: u64) -> String {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashMap<u64, String>>> = OnceLock::new();
    if id == 0 {
        return String::new();
    }
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(name) = names.get(&id) {
        return name.clone();
    }
    if names.len() >= 4096 {
        names.clear();
    }
    let name = cgroup_path(id).unwrap_or_else(|| format!("id:{id}"));
    names.insert(id, name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_survives_odd_comm() {
        let text =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(
            parse_proc_stat(text),
            Some(ProcStat {
                state: 'S',
                start_ticks: 987654
            })
        );
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn cpu_list() {
        assert_eq!(parse_cpu_list_max("0-1\n"), Some(1));
        assert_eq!(parse_cpu_list_max("0,2-5,7"), Some(7));
        assert_eq!(parse_cpu_list_max("0"), Some(0));
    }

    #[test]
    fn this_process_is_alive() {
        let me = std::process::id();
        let st = proc_stat(me).unwrap();
        assert!(task_alive(me, st.start_ticks));
        assert!(!task_alive(me, st.start_ticks + 1));
        assert!(thread_group_alive(me, st.start_ticks));
        assert_eq!(tgid_of(me), Some(me));
    }
}
