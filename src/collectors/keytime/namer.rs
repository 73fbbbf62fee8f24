//! Level 2's stack records are unwound and named on a thread of their own.
//! The first stack of a large binary makes blazesym read its debug
//! information, which can take seconds; the main loop must go on draining
//! the ring buffers meanwhile, or records are dropped. The raw records
//! (the waker's, then the stretch's) go to the thread in ring order; the
//! named records come back and are written at the main loop's next turn,
//! and all of them before keytime's deactivation completes.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use super::records::decode_record_with;
use super::stacks::UserStacks;
use super::unwind::ProcessMaps;
use super::wakers::Wakers;
use crate::bpf_intf::{decode, event_hdr, keytime_waker_event, KEYTIME_WAKER};
use crate::kallsyms::Kallsyms;
use crate::record::Record;

enum Job {
    /// a process's mappings, read (files opened) while it lived
    Watch(u32, ProcessMaps),
    /// the process has ended: its mappings may go first when room is needed
    Ended(u32),
    /// a KEYTIME_WAKER or KEYTIME_OFF_CPU_STACK record, as the ring had it
    Decode(Vec<u8>),
}

/// Processes remembered as watched, at most.
const WATCHED_MAX: usize = 65_536;

/// How long a deactivation waits for the stacks still being named.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub struct StackNamer {
    jobs: Sender<Job>,
    named: Receiver<Result<Option<Record>>>,
    /// Decode jobs sent whose answer has not come back
    in_flight: usize,
    /// level 2 is active: exec records are followed
    active: bool,
    /// the processes whose mappings were sent (under churn, telling the
    /// thread of every other process's end woke it a thousand times a second)
    watched: RefCell<HashSet<u32>>,
}

impl StackNamer {
    pub fn start(ksyms: Arc<OnceLock<Kallsyms>>) -> Result<Self> {
        let (jobs, todo) = mpsc::channel::<Job>();
        let (answer, named) = mpsc::channel();
        std::thread::Builder::new()
            .name("stack-namer".into())
            .spawn(move || {
                let users = UserStacks::default();
                let mut wakers = Wakers::default();
                for job in todo {
                    match job {
                        Job::Watch(tgid, maps) => users.install(tgid, maps),
                        Job::Ended(tgid) => users.process_ended(tgid),
                        Job::Decode(data) => {
                            let named = decode_stack_record(&data, &ksyms, &users, &mut wakers);
                            if answer.send(named).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| anyhow!("keytime: start the stack-naming thread: {e}"))?;
        Ok(StackNamer {
            jobs,
            named,
            in_flight: 0,
            active: false,
            watched: RefCell::default(),
        })
    }

    fn send(&self, job: Job) {
        // the thread only ends with the sender: it cannot be gone
        let _ = self.jobs.send(job);
    }

    pub fn set_active(&mut self, on: bool) {
        self.active = on;
    }

    /// Read the mappings of a target process now, while it lives: the
    /// files are opened here (cheap), their unwind and symbol information
    /// read on the naming thread.
    pub fn watch(&self, tgid: u32) {
        if let Some(maps) = ProcessMaps::read(tgid) {
            self.note_watched(Some(tgid));
            self.send(Job::Watch(tgid, maps));
        }
    }

    /// Remember a process the thread may hold mappings of. Bounded: should
    /// exits go unseen (a deactivation), forgetting only costs the thread
    /// the hint that those mappings may go first.
    fn note_watched(&self, tgid: Option<u32>) {
        let mut watched = self.watched.borrow_mut();
        if watched.len() >= WATCHED_MAX {
            watched.clear();
        }
        watched.extend(tgid);
    }

    /// A record for the thread: unwound, named and answered later.
    pub fn decode(&mut self, data: &[u8]) {
        // the thread reads the mappings of a process it has not seen
        let tgid = match decode::<event_hdr>(data) {
            Ok(h) if u32::from(h.kind) == KEYTIME_WAKER => decode::<keytime_waker_event>(data)
                .map(|w| w.waker_tgid)
                .ok(),
            Ok(h) => Some(h.tgid),
            Err(_) => None,
        };
        self.note_watched(tgid);
        self.in_flight += 1;
        self.send(Job::Decode(data.to_vec()));
    }

    /// Follow the lifecycle of the processes whose stacks are named: an
    /// exec replaces the mappings (read at once: the process may be gone
    /// when its stacks are decoded), the end of a process lets them go.
    pub fn follow(&self, rec: &Record) {
        match rec.body.name() {
            "execve" if self.active => self.watch(rec.tgid),
            "exit"
                if self.watched.borrow().contains(&rec.tgid)
                    && rec.get("group_dead") == Some(true.into()) =>
            {
                self.watched.borrow_mut().remove(&rec.tgid);
                self.send(Job::Ended(rec.tgid))
            }
            _ => {}
        }
    }

    /// The records named so far.
    pub fn ready(&mut self) -> Vec<Result<Option<Record>>> {
        let mut done = Vec::new();
        while let Ok(named) = self.named.try_recv() {
            self.in_flight -= 1;
            done.push(named);
        }
        done
    }

    /// Every record sent so far, named (at a deactivation, at the end).
    pub fn drain(&mut self) -> Vec<Result<Option<Record>>> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut done = Vec::new();
        while self.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.named.recv_timeout(left) {
                Ok(named) => {
                    self.in_flight -= 1;
                    done.push(named);
                }
                Err(RecvTimeoutError::Timeout) => {
                    done.push(Err(anyhow!(
                        "keytime: {} stack records were still being named after {} s",
                        self.in_flight,
                        DRAIN_TIMEOUT.as_secs()
                    )));
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        done
    }
}

/// On the naming thread: a waker is kept for the stretch that follows it,
/// a stretch becomes its off_cpu record.
fn decode_stack_record(
    data: &[u8],
    ksyms: &OnceLock<Kallsyms>,
    users: &UserStacks,
    wakers: &mut Wakers,
) -> Result<Option<Record>> {
    if u32::from(decode::<event_hdr>(data)?.kind) == KEYTIME_WAKER {
        wakers.keep(data, ksyms.get_or_init(Kallsyms::load), Some(users))?;
        return Ok(None);
    }
    decode_record_with(data, ksyms, Some(users), Some(wakers)).map(Some)
}
