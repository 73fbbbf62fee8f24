//! The pinned maps through which controller drives a running proc_image
//! (see the control section of bpf/proc_image.h).
//!
//! Three maps pinned in one directory: `control` holds proc_image's state
//! (written only by proc_image), `requests` is a queue controllers push
//! their requests into, `answers` a hash where proc_image puts each answer
//! under its request's unique id. A push and a pop are atomic, so concurrent
//! controllers cannot overwrite or tear each other's requests, and each
//! reads the answer to its own. proc_image looks every 50 ms.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::bpf_intf::{
    control_answer, control_header, control_request, control_state, CONTROL_ANSWERS_MAX,
    CONTROL_MAGIC, CONTROL_MESSAGE_LEN, CONTROL_QUEUE_LEN, CONTROL_SLOT_SIZE, CONTROL_STATE_SIZE,
    CONTROL_VERSION,
};
use crate::sys;

/// Where proc_image pins its control maps unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/proc_image";
/// Environment variable that overrides the pin directory for both tools.
pub const PIN_DIR_ENV: &str = "PROC_IMAGE_PIN_DIR";
const STATE_FILE: &str = "control";
const REQUESTS_FILE: &str = "requests";
const ANSWERS_FILE: &str = "answers";

pub fn control_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join(STATE_FILE)
}

pub fn header() -> control_header {
    control_header {
        magic: CONTROL_MAGIC,
        version: CONTROL_VERSION,
    }
}

/// Store `msg` in a fixed C message field, always NUL-terminated. One too
/// long is cut at a character boundary and ends in "..." so the cut shows.
pub fn set_message(field: &mut [u8; CONTROL_MESSAGE_LEN as usize], msg: &str) {
    field.fill(0);
    let room = field.len() - 1;
    let text = if msg.len() <= room {
        msg.to_string()
    } else {
        let mut end = room - 3;
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &msg[..end])
    };
    field[..text.len()].copy_from_slice(text.as_bytes());
}

/// A request id no other controller will pick: 64 random bits, never 0.
pub fn new_request_id() -> u64 {
    let mut id = 0u64;
    // SAFETY: getrandom fills at most the 8 bytes of `id`.
    let n = unsafe { libc::getrandom((&mut id as *mut u64).cast(), 8, 0) };
    if n != 8 || id == 0 {
        // no entropy to be had: pid and time are unique enough on one host
        id = (u64::from(std::process::id()) << 32) ^ sys::monotonic_ns() | 1;
    }
    id
}

fn as_bytes<T: plain::Plain>(value: &T, size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    // SAFETY: T is Plain: viewing it as bytes is sound.
    let src = unsafe { plain::as_bytes(value) };
    bytes[..src.len()].copy_from_slice(src);
    bytes
}

fn from_bytes<T: plain::Plain + Default>(bytes: &[u8], what: &str) -> Result<T> {
    let mut value = T::default();
    plain::copy_from_bytes(&mut value, bytes).map_err(|_| anyhow!("{what} is too short"))?;
    Ok(value)
}

fn map_id(map: &MapHandle) -> Option<u32> {
    map.info().ok().map(|i| i.info.id)
}

pub struct ControlMap {
    state: MapHandle,
    requests: MapHandle,
    answers: MapHandle,
    dir: PathBuf,
    /// proc_image: the pins it made, with the id of the map each holds. It
    /// removes a pin only while it still holds its own map.
    owned: Vec<(PathBuf, Option<u32>)>,
}

impl ControlMap {
    /// proc_image: create and pin the control maps, replacing stale pins
    /// left by a proc_image that is gone, refusing while one is alive (also
    /// while it is still loading: its state says who it is from the start).
    pub fn create(pin_dir: &Path) -> Result<Self> {
        let path = control_path(pin_dir);
        if path.exists() {
            remove_if_stale(&path)?;
        }
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let state = MapHandle::create(
            MapType::Array,
            Some("pi_control"),
            4,
            CONTROL_STATE_SIZE,
            1,
            &opts,
        )
        .context("create the control map")?;
        let requests = MapHandle::create(
            MapType::Queue,
            Some("pi_requests"),
            0,
            CONTROL_SLOT_SIZE,
            CONTROL_QUEUE_LEN,
            &opts,
        )
        .context("create the control request queue")?;
        let answers = MapHandle::create(
            MapType::Hash,
            Some("pi_answers"),
            8,
            std::mem::size_of::<control_answer>() as u32,
            CONTROL_ANSWERS_MAX,
            &opts,
        )
        .context("create the control answer map")?;
        let mut ctl = ControlMap {
            state,
            requests,
            answers,
            dir: pin_dir.to_path_buf(),
            owned: Vec::new(),
        };
        // who owns the pins is readable before anyone can see them
        let me = std::process::id();
        let loading = control_state {
            hdr: header(),
            owner_pid: me,
            owner_start_ticks: sys::proc_stat(me).map(|s| s.start_ticks).unwrap_or(0),
            ..Default::default()
        };
        ctl.write_state(&loading)?;
        // the state map first: pinning is atomic, so of two proc_images
        // starting together one gets it and the other is refused
        if let Err(e) = ctl.state.pin(&path) {
            if path.exists() {
                let owner = read_owner(&path)
                    .map(|s| format!(" (pid {})", s.owner_pid))
                    .unwrap_or_default();
                bail!(
                    "another proc_image{owner} started at the same time (pin {} exists)",
                    path.display()
                );
            }
            bail!("pin the control map at {}: {e}", path.display());
        }
        ctl.owned.push((path.clone(), map_id(&ctl.state)));
        for (file, what) in [(REQUESTS_FILE, "requests"), (ANSWERS_FILE, "answers")] {
            let p = pin_dir.join(file);
            // left by a proc_image that is gone (the state pin is ours now)
            let _ = fs::remove_file(&p);
            let map = if what == "requests" {
                &mut ctl.requests
            } else {
                &mut ctl.answers
            };
            map.pin(&p)
                .with_context(|| format!("pin the control {what} at {}", p.display()))?;
            let id = map_id(map);
            ctl.owned.push((p, id));
        }
        for (p, _) in &ctl.owned {
            fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .with_context(|| format!("chmod 0600 {}", p.display()))?;
        }
        Ok(ctl)
    }

    /// controller: open the maps a running proc_image pinned, and check that
    /// both speak the same version of the records.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = control_path(pin_dir);
        let state = MapHandle::from_pinned_path(&path).map_err(|e| {
            if e.kind() == libbpf_rs::ErrorKind::NotFound {
                anyhow!("proc_image is not running (no control map at {}): start it with `sudo proc_image -a`", path.display())
            } else {
                anyhow!("open control map {}: {e}", path.display())
            }
        })?;
        if state.value_size() != CONTROL_STATE_SIZE || state.max_entries() != 1 {
            // an older proc_image: its header says which version it speaks
            if let Some(hdr) = read_header(&state) {
                check_header(&hdr)?;
            }
            bail!(
                "{} is not a proc_image control map of this version (value size {}, {} slots)",
                path.display(),
                state.value_size(),
                state.max_entries()
            );
        }
        let current = read_header(&state)
            .ok_or_else(|| anyhow!("{} holds no proc_image state", path.display()))?;
        check_header(&current)?;
        let open = |file: &str| {
            MapHandle::from_pinned_path(pin_dir.join(file))
                .with_context(|| format!("open {}", pin_dir.join(file).display()))
        };
        let ctl = ControlMap {
            state,
            requests: open(REQUESTS_FILE)?,
            answers: open(ANSWERS_FILE)?,
            dir: pin_dir.to_path_buf(),
            owned: Vec::new(),
        };
        let st = ctl.read_state()?;
        if !sys::task_alive(st.owner_pid, st.owner_start_ticks) {
            bail!(
                "proc_image is not running (pid {} that pinned {} is gone): start it with `sudo proc_image -a`",
                st.owner_pid,
                ctl.dir.display()
            );
        }
        Ok(ctl)
    }

    /// The directory holding the pins.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn read_state(&self) -> Result<control_state> {
        let bytes = self
            .state
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("read the control map")?
            .ok_or_else(|| anyhow!("the control map has no state"))?;
        from_bytes(&bytes, "the control state")
    }

    pub fn write_state(&self, state: &control_state) -> Result<()> {
        self.state
            .update(
                &0u32.to_ne_bytes(),
                &as_bytes(state, CONTROL_STATE_SIZE as usize),
                MapFlags::ANY,
            )
            .context("write the control map")
    }

    /// controller: queue a request (its id is the key of the answer).
    pub fn push_request(&self, req: &control_request) -> Result<()> {
        self.requests
            .update(
                &[],
                &as_bytes(req, CONTROL_SLOT_SIZE as usize),
                MapFlags::ANY,
            )
            .map_err(|e| {
                // a full queue answers E2BIG
                if e.to_string().contains("Argument list too long") {
                    anyhow!(
                        "proc_image has {CONTROL_QUEUE_LEN} requests waiting already; try again"
                    )
                } else {
                    anyhow!("queue the request: {e}")
                }
            })
    }

    /// proc_image: the oldest request waiting, if any.
    pub fn pop_request(&self) -> Result<Option<control_request>> {
        match self.requests.lookup_and_delete(&[]) {
            Ok(Some(bytes)) => Ok(Some(from_bytes(&bytes, "a control request")?)),
            Ok(None) => Ok(None),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("read the control requests: {e}")),
        }
    }

    /// proc_image: answer request `id`.
    pub fn put_answer(&self, id: u64, answer: &control_answer) -> Result<()> {
        self.answers
            .update(
                &id.to_ne_bytes(),
                &as_bytes(answer, std::mem::size_of::<control_answer>()),
                MapFlags::ANY,
            )
            .context("write the answer")
    }

    /// controller: the answer to request `id`, taken out of the map once there.
    pub fn take_answer(&self, id: u64) -> Result<Option<control_answer>> {
        let key = id.to_ne_bytes();
        let Some(bytes) = self
            .answers
            .lookup(&key, MapFlags::ANY)
            .context("read the answers")?
        else {
            return Ok(None);
        };
        let _ = self.answers.delete(&key);
        Ok(Some(from_bytes(&bytes, "an answer")?))
    }

    /// proc_image: forget an answer nobody came for.
    pub fn drop_answer(&self, id: u64) {
        let _ = self.answers.delete(&id.to_ne_bytes());
    }
}

impl Drop for ControlMap {
    fn drop(&mut self) {
        for (path, id) in self.owned.iter().rev() {
            // someone else's pin (a later proc_image's) is left alone
            let ours = MapHandle::from_pinned_path(path)
                .ok()
                .is_some_and(|m| map_id(&m) == *id);
            if ours {
                let _ = fs::remove_file(path);
            }
        }
        if !self.owned.is_empty() {
            // only if empty: never take anything of someone else's
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

fn read_header(map: &MapHandle) -> Option<control_header> {
    let bytes = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).ok()??;
    from_bytes(&bytes, "header").ok()
}

/// The owner recorded in the control state pinned at `path`, of this
/// version or an older one: the owner fields sit at the same offsets in
/// every version (an older one kept its state in slot 0 too).
fn read_owner(path: &Path) -> Option<control_state> {
    let map = MapHandle::from_pinned_path(path).ok()?;
    let bytes = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).ok()??;
    let mut state = control_state::default();
    let n = bytes.len().min(std::mem::size_of::<control_state>());
    // SAFETY: control_state is Plain; only the bytes there are are copied.
    let dst = unsafe { plain::as_mut_bytes(&mut state) };
    dst[..n].copy_from_slice(&bytes[..n]);
    (state.hdr.magic == CONTROL_MAGIC).then_some(state)
}

pub fn check_header(hdr: &control_header) -> Result<()> {
    if hdr.magic != CONTROL_MAGIC {
        bail!("the pinned control map does not hold a proc_image control record");
    }
    if hdr.version != CONTROL_VERSION {
        bail!(
            "the running proc_image speaks control version {}, this controller speaks {}: use the controller built with that proc_image",
            hdr.version,
            CONTROL_VERSION
        );
    }
    Ok(())
}

/// A pin at `path` exists. If its owner (by pid and start time) is alive,
/// refuse; otherwise say so and remove it. The owner fields sit at the same
/// offsets in every version, so an older proc_image's pin is judged too.
fn remove_if_stale(path: &Path) -> Result<()> {
    let owner = read_owner(path);
    match owner {
        Some(st) if sys::task_alive(st.owner_pid, st.owner_start_ticks) => bail!(
            "proc_image is already running (pid {}, pins in {}); end it with `controller -f` first, or give another --pin-dir",
            st.owner_pid,
            path.parent().unwrap_or(path).display()
        ),
        Some(st) => eprintln!(
            "proc_image: removing stale pin {} left by proc_image pid {} (no longer running)",
            path.display(),
            st.owner_pid
        ),
        None => eprintln!(
            "proc_image: removing stale pin {} (not a readable proc_image control map)",
            path.display()
        ),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove stale pin {}", path.display())),
    }
}

/// The pin directory both tools use: --pin-dir, else $PROC_IMAGE_PIN_DIR,
/// else /sys/fs/bpf/proc_image.
pub fn resolve_pin_dir(arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf)
        .or_else(|| std::env::var_os(PIN_DIR_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR))
}

/// Make sure `pin_dir` can hold pins: bpffs mounted at /sys/fs/bpf, the
/// directory present, private to root, and on bpffs.
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
    sys::ensure_bpffs(Path::new("/sys/fs/bpf"))?;
    // judge the nearest existing ancestor first: create nothing off bpffs
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if !pin_dir.is_absolute() || !sys::is_bpffs(existing) {
        bail!(
            "pin directory {} is not on a bpf filesystem",
            pin_dir.display()
        );
    }
    sys::create_private_dir(pin_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_is_truncated_and_terminated() {
        let mut field = [0xffu8; CONTROL_MESSAGE_LEN as usize];
        set_message(&mut field, &"x".repeat(500));
        assert_eq!(field[CONTROL_MESSAGE_LEN as usize - 1], 0);
        let cut = crate::bpf_intf::c_str(&field);
        assert_eq!(cut.len(), CONTROL_MESSAGE_LEN as usize - 1);
        assert!(cut.ends_with("..."), "{cut}");
        // never inside a character
        set_message(&mut field, &"é".repeat(200));
        assert!(crate::bpf_intf::c_str(&field).ends_with("é..."));
        set_message(&mut field, "ok");
        assert_eq!(crate::bpf_intf::c_str(&field), "ok");
    }

    #[test]
    fn header_version_is_checked() {
        assert!(check_header(&header()).is_ok());
        let old = control_header {
            version: CONTROL_VERSION + 1,
            ..header()
        };
        let err = check_header(&old).unwrap_err().to_string();
        assert!(err.contains("control version"), "{err}");
        let alien = control_header {
            magic: 1,
            version: 1,
        };
        assert!(check_header(&alien).is_err());
    }

    #[test]
    fn pin_dir_resolution() {
        assert_eq!(resolve_pin_dir(Some(Path::new("/x"))), PathBuf::from("/x"));
    }
}
