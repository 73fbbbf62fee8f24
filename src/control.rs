//! The pinned control map through which controller drives a running proc_image.
//!
//! A BPF array of two slots pinned at `<pin dir>/control`: proc_image writes
//! only CONTROL_STATE (owner, loaded collectors, the answer to the last
//! request), controller writes only CONTROL_REQUEST (a numbered command).
//! proc_image polls the request slot every 50 ms.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::bpf_intf::{
    control_header, control_request, control_state, CONTROL_MAGIC, CONTROL_MESSAGE_LEN,
    CONTROL_REQUEST, CONTROL_SLOTS, CONTROL_SLOT_SIZE, CONTROL_STATE, CONTROL_VERSION,
};
use crate::sys;

/// Where proc_image pins its control map unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/proc_image";
/// Environment variable that overrides the pin directory for both tools.
pub const PIN_DIR_ENV: &str = "PROC_IMAGE_PIN_DIR";
const MAP_FILE: &str = "control";

pub fn control_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join(MAP_FILE)
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

pub struct ControlMap {
    map: MapHandle,
    path: PathBuf,
    /// proc_image owns the pin and removes it (and the directory) on drop.
    owner: bool,
}

impl ControlMap {
    /// proc_image: create and pin the control map, replacing a stale pin
    /// left by a proc_image that is gone, refusing while one is alive.
    pub fn create(pin_dir: &Path) -> Result<Self> {
        let path = control_path(pin_dir);
        if path.exists() {
            remove_if_stale(&path)?;
        }
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let mut map = MapHandle::create(
            MapType::Array,
            Some("pi_control"),
            4,
            CONTROL_SLOT_SIZE,
            CONTROL_SLOTS,
            &opts,
        )
        .context("create the control map")?;
        map.pin(&path).map_err(|e| {
            if path.exists() {
                anyhow!(
                    "another proc_image started at the same time (pin {} exists)",
                    path.display()
                )
            } else {
                anyhow!("pin the control map at {}: {e}", path.display())
            }
        })?;
        let ctl = ControlMap {
            map,
            path,
            owner: true,
        };
        fs::set_permissions(
            &ctl.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .with_context(|| format!("chmod 0600 {}", ctl.path.display()))?;
        Ok(ctl)
    }

    /// controller: open the map a running proc_image pinned, and check that
    /// both speak the same version of the record.
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = control_path(pin_dir);
        let map = MapHandle::from_pinned_path(&path).map_err(|e| {
            if e.kind() == libbpf_rs::ErrorKind::NotFound {
                anyhow!("proc_image is not running (no control map at {}): start it with `sudo proc_image -a`", path.display())
            } else {
                anyhow!("open control map {}: {e}", path.display())
            }
        })?;
        if map.value_size() != CONTROL_SLOT_SIZE || map.max_entries() != CONTROL_SLOTS {
            bail!(
                "{} is not a proc_image control map of this version (value size {}, {} slots)",
                path.display(),
                map.value_size(),
                map.max_entries()
            );
        }
        let ctl = ControlMap {
            map,
            path,
            owner: false,
        };
        let state = ctl.read_state()?;
        check_header(&state.hdr)?;
        if !sys::task_alive(state.owner_pid, state.owner_start_ticks) {
            bail!(
                "proc_image is not running (pid {} that pinned {} is gone): start it with `sudo proc_image -a`",
                state.owner_pid,
                ctl.path.display()
            );
        }
        Ok(ctl)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_slot<T: plain::Plain + Default>(&self, slot: u32) -> Result<T> {
        let bytes = self
            .map
            .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
            .context("read the control map")?
            .ok_or_else(|| anyhow!("control map slot {slot} is missing"))?;
        let mut value = T::default();
        plain::copy_from_bytes(&mut value, &bytes)
            .map_err(|_| anyhow!("control map slot {slot} is too short"))?;
        Ok(value)
    }

    fn write_slot<T: plain::Plain>(&self, slot: u32, value: &T) -> Result<()> {
        let mut bytes = vec![0u8; CONTROL_SLOT_SIZE as usize];
        // SAFETY: T is Plain: viewing it as bytes is sound.
        let src = unsafe { plain::as_bytes(value) };
        bytes[..src.len()].copy_from_slice(src);
        self.map
            .update(&slot.to_ne_bytes(), &bytes, MapFlags::ANY)
            .context("write the control map")
    }

    pub fn read_state(&self) -> Result<control_state> {
        self.read_slot(CONTROL_STATE)
    }

    pub fn write_state(&self, state: &control_state) -> Result<()> {
        self.write_slot(CONTROL_STATE, state)
    }

    pub fn read_request(&self) -> Result<control_request> {
        self.read_slot(CONTROL_REQUEST)
    }

    pub fn write_request(&self, request: &control_request) -> Result<()> {
        self.write_slot(CONTROL_REQUEST, request)
    }
}

impl Drop for ControlMap {
    fn drop(&mut self) {
        if self.owner {
            let _ = fs::remove_file(&self.path);
            if let Some(dir) = self.path.parent() {
                // only if empty: never take anything of someone else's
                let _ = fs::remove_dir(dir);
            }
        }
    }
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
    let owner = MapHandle::from_pinned_path(path)
        .ok()
        .and_then(|m| {
            m.lookup(&CONTROL_STATE.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
        })
        .and_then(|bytes| {
            let mut state = control_state::default();
            plain::copy_from_bytes(&mut state, &bytes).ok()?;
            (state.hdr.magic == CONTROL_MAGIC).then_some(state)
        });
    match owner {
        Some(st) if sys::task_alive(st.owner_pid, st.owner_start_ticks) => bail!(
            "proc_image is already running (pid {}, pins in {}); end it with `controller -f` first",
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
        set_message(&mut field, &"é".repeat(100));
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
