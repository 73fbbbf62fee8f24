//! proc_image's life: load the collectors, pin the control map, then poll
//! the ring buffers and the control map until told to stop.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{MapHandle, PrintLevel, RingBuffer, RingBufferBuilder};

use crate::bpf_intf::{
    collector_stats, control_request, control_state, CONTROL_ACTIVATE, CONTROL_DEACTIVATE,
    CONTROL_FINISH, CONTROL_NONE, CONTROL_STATUS_ACTIVE, CONTROL_STATUS_ENDING,
    CONTROL_STATUS_ERROR, CONTROL_STATUS_IDLE,
};
use crate::cli::ProcImageArgs;
use crate::collectors::{self, Activation, Collector, CollectorKind, LoadOptions};
use crate::control::{self, ControlMap};
use crate::output::{Format, Output, Record, Sink};
use crate::sys;
use crate::target::Target;

/// How often the ring buffers and the control map are looked at; controller
/// waits for an answer, so this bounds its latency.
const POLL: Duration = Duration::from_millis(50);
/// How often a targeted activation checks that its target still exists.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);

pub fn run(args: ProcImageArgs) -> Result<()> {
    sys::require_root("proc_image")?;
    set_libbpf_log(args.verbose);

    let kinds = args.collectors();

    // before the pins: a taken metrics port or a bad trace path leaves nothing behind
    let sinks = open_sinks(&args)?;
    let pin_dir = control::resolve_pin_dir(args.pin_dir.as_deref());
    control::prepare_pin_dir(&pin_dir)?;
    // pinned before the (slow) load, so a second proc_image is refused at once
    let control = ControlMap::create(&pin_dir)?;

    let opts = LoadOptions {
        ringbuf_bytes: args.ringbuf_kib * 1024,
        top: args.top.map(|n| n as usize),
        // every thread, not a --top of them, unless people read the text
        json: args.format() != Format::Text,
    };
    let collectors = collectors::load(&kinds, &opts)?;
    let mut app = App::new(args, control, collectors, sinks)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("install signal handlers")?;

    let result = app.main_loop(&stop);
    app.finish();
    result
}

/// The record consumers besides stdout: --metrics, --trace-out.
fn open_sinks(args: &ProcImageArgs) -> Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(addr) = &args.metrics {
        sinks.push(Box::new(crate::metrics::start(
            addr,
            args.metrics_top as usize,
        )?));
    }
    if let Some(path) = &args.trace_out {
        sinks.push(Box::new(crate::trace::TraceWriter::create(path)?));
    }
    Ok(sinks)
}

fn set_libbpf_log(verbose: bool) {
    fn to_stderr(level: PrintLevel, msg: String) {
        if level != PrintLevel::Debug || std::env::var_os("PROC_IMAGE_LIBBPF_DEBUG").is_some() {
            eprint!("libbpf: {msg}");
        }
    }
    // libbpf's warnings are noise unless asked for: errors reach the user
    // through the returned error's context
    libbpf_rs::set_print(
        verbose.then_some((PrintLevel::Debug, to_stderr as fn(PrintLevel, String))),
    );
}

struct ActiveRun {
    act: Activation,
    kinds: Vec<CollectorKind>,
    next_interval: Instant,
    next_liveness: Instant,
    /// controller -t: proc_image ends at this time
    deadline: Option<Instant>,
}

struct App {
    args: ProcImageArgs,
    control: ControlMap,
    collectors: Vec<Box<dyn Collector>>,
    output: Rc<RefCell<Output>>,
    decode_errors: Rc<Cell<u64>>,
    state: control_state,
    last_seq: u64,
    generation: u32,
    active: Option<ActiveRun>,
    /// stats already reported, per collector
    reported: Vec<collector_stats>,
    finishing: bool,
}

impl App {
    fn new(
        args: ProcImageArgs,
        control: ControlMap,
        collectors: Vec<Box<dyn Collector>>,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Result<Self> {
        let me = std::process::id();
        let mut state = control_state {
            hdr: control::header(),
            owner_pid: me,
            owner_start_ticks: sys::proc_stat(me).map(|s| s.start_ticks).unwrap_or(0),
            loaded_mask: collectors.iter().fold(0, |m, c| m | c.kind().bit()),
            status: CONTROL_STATUS_IDLE,
            ..Default::default()
        };
        control::set_message(&mut state.message, "ready");
        control.write_state(&state)?;
        let last_seq = control.read_request()?.seq;
        let mut output = Output::stdout(args.format()).with_sinks(sinks);
        output.loaded(
            &collectors
                .iter()
                .map(|c| c.kind().name())
                .collect::<Vec<_>>(),
        );
        let output = Rc::new(RefCell::new(output));
        let reported = vec![collector_stats::default(); collectors.len()];
        Ok(App {
            args,
            control,
            collectors,
            output,
            decode_errors: Rc::new(Cell::new(0)),
            state,
            last_seq,
            generation: 0,
            active: None,
            reported,
            finishing: false,
        })
    }

    fn main_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        let handles = self
            .collectors
            .iter()
            .map(|c| c.events())
            .collect::<Result<Vec<_>>>()?;
        let decoders = self.collectors.iter().map(|c| c.decoder()).collect();
        let rb = ring_buffer(&handles, decoders, &self.output, &self.decode_errors)?;
        let names = CollectorKind::names(self.state.loaded_mask);
        eprintln!(
            "proc_image: loaded {names}; ready (pid {}, pins in {}). Activate with: controller -a [-p PID | -P TGID] [-k] ...",
            std::process::id(),
            self.control.path().parent().unwrap_or(self.control.path()).display()
        );
        let run_deadline =
            (self.args.time > 0).then(|| Instant::now() + Duration::from_secs(self.args.time));

        let result = loop {
            match self.step(&rb, stop, run_deadline) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.end_activation(&rb, None);
        drop(rb);
        result
    }

    /// One turn of the loop: deliver records, answer controller, do the
    /// periodic work. Ok(false) when proc_image should end.
    fn step(
        &mut self,
        rb: &RingBuffer<'_>,
        stop: &AtomicBool,
        run_deadline: Option<Instant>,
    ) -> Result<bool> {
        poll(rb)?;
        self.service();
        self.output.borrow_mut().flush();
        if self.output.borrow().is_closed() {
            return Ok(false);
        }
        if stop.load(Ordering::SeqCst) {
            eprintln!("proc_image: signal received, ending");
            return Ok(false);
        }
        self.check_request(rb)?;
        if !self.finishing {
            self.tick(rb)?;
        }
        if !self.finishing && run_deadline.is_some_and(|d| Instant::now() >= d) {
            eprintln!(
                "proc_image: time limit of {} s reached, ending",
                self.args.time
            );
            return Ok(false);
        }
        Ok(!self.finishing)
    }

    /// Apply a new controller request, if there is one.
    fn check_request(&mut self, rb: &RingBuffer<'_>) -> Result<()> {
        let req = self.control.read_request()?;
        if req.seq == self.last_seq || req.command == CONTROL_NONE {
            return Ok(());
        }
        self.last_seq = req.seq;
        let outcome = self.apply(&req, rb);
        let (status, message) = match &outcome {
            Ok(msg) => (
                if self.finishing {
                    CONTROL_STATUS_ENDING
                } else if self.active.is_some() {
                    CONTROL_STATUS_ACTIVE
                } else {
                    CONTROL_STATUS_IDLE
                },
                msg.clone(),
            ),
            Err(e) => (CONTROL_STATUS_ERROR, format!("{e:#}")),
        };
        eprintln!(
            "proc_image: {}{message}",
            if outcome.is_err() {
                "request refused: "
            } else {
                ""
            }
        );
        self.state.status = status;
        self.state.applied_seq = req.seq;
        self.state.active_mask = self
            .active
            .as_ref()
            .map_or(0, |a| CollectorKind::mask(&a.kinds));
        control::set_message(&mut self.state.message, &message);
        self.control.write_state(&self.state)
    }

    fn apply(&mut self, req: &control_request, rb: &RingBuffer<'_>) -> Result<String> {
        control::check_header(&req.hdr)?;
        match req.command {
            CONTROL_ACTIVATE => self.activate(req, rb),
            CONTROL_DEACTIVATE => Ok(match self.active.is_some() {
                true => {
                    self.end_activation(rb, None);
                    "deactivated; still loaded".into()
                }
                false => "nothing was active".into(),
            }),
            CONTROL_FINISH => {
                self.finishing = true;
                Ok("ending on controller's request".into())
            }
            other => bail!("unknown command {other} in the control request"),
        }
    }

    fn activate(&mut self, req: &control_request, rb: &RingBuffer<'_>) -> Result<String> {
        let loaded = self.state.loaded_mask;
        let target = Target::from_request(req)?;
        // no collector named: every loaded one that can trace this target
        let mask = match req.collectors {
            0 => self
                .collectors
                .iter()
                .filter(|c| c.check_target(&target).is_ok())
                .fold(0, |m, c| m | c.kind().bit()),
            named => named,
        };
        if let Some(k) = CollectorKind::from_mask(mask & !loaded).first() {
            bail!(
                "the {k} collector is not loaded by this proc_image (loaded: {}); restart it with {} or -a",
                CollectorKind::names(loaded),
                k.flag()
            );
        }
        if !target.alive() {
            bail!("{target} has exited");
        }
        let kinds = CollectorKind::from_mask(mask);
        for c in self.collectors.iter().filter(|c| kinds.contains(&c.kind())) {
            c.check_target(&target)?;
        }
        // a new activation replaces the current one
        self.end_activation(rb, None);

        self.generation = self.generation.wrapping_add(1);
        let act = Activation {
            target,
            generation: self.generation,
            keytime_level: req.keytime_level,
            syscall_seq_len: req.syscall_seq_len,
            interval_ms: if req.interval_ms > 0 {
                req.interval_ms
            } else {
                self.args.interval
            },
        };
        let mut failure = None;
        for c in self
            .collectors
            .iter_mut()
            .filter(|c| kinds.contains(&c.kind()))
        {
            if let Err(e) = c.activate(&act) {
                failure = Some(e.context(format!("activate {}", c.kind())));
                break;
            }
        }
        if let Some(e) = failure {
            // all or nothing: undo those already attached
            for c in self.collectors.iter_mut() {
                c.deactivate();
            }
            return Err(e);
        }
        let mut out = self.output.borrow_mut();
        for c in self.collectors.iter().filter(|c| kinds.contains(&c.kind())) {
            out.section(&c.describe(&act));
        }
        out.activated(&target, &kinds.iter().map(|k| k.name()).collect::<Vec<_>>());
        drop(out);
        let now = Instant::now();
        let interval = Duration::from_millis(act.interval_ms.into());
        self.active = Some(ActiveRun {
            act,
            kinds: kinds.clone(),
            next_interval: now + interval,
            next_liveness: now + LIVENESS_CHECK,
            deadline: (req.duration_s > 0)
                .then(|| now + Duration::from_secs(req.duration_s.into())),
        });
        let limit = match req.duration_s {
            0 => String::new(),
            s => format!(" for {s} s"),
        };
        Ok(format!(
            "activated {} on {target}{limit}",
            CollectorKind::names(mask)
        ))
    }

    /// Let the active collectors act on the records just delivered. A
    /// failure there is reported and tracing goes on.
    fn service(&mut self) {
        let Some(run) = self.active.as_mut() else {
            return;
        };
        let mut out = self.output.borrow_mut();
        for c in self
            .collectors
            .iter_mut()
            .filter(|c| run.kinds.contains(&c.kind()))
        {
            if let Err(e) = c.service(&mut out) {
                eprintln!("proc_image: {}: {e:#}", c.kind());
            }
            // the liveness check follows a thread that became its group's leader
            if let Some(moved) = c.moved_target() {
                let rec = Record::new(sys::monotonic_ns(), "proc_image", "target_moved")
                    .field("from", run.act.target.to_string())
                    .field("to", moved.to_string());
                out.emit(&rec);
                run.act.target = moved;
            }
        }
    }

    /// Periodic work of an activation: summaries, lost-record reports,
    /// target liveness and the time limit.
    fn tick(&mut self, rb: &RingBuffer<'_>) -> Result<()> {
        let Some(run) = self.active.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= run.next_interval {
            run.next_interval += Duration::from_millis(run.act.interval_ms.into());
            if run.next_interval < now {
                run.next_interval = now + Duration::from_millis(run.act.interval_ms.into());
            }
            self.interval()?;
        }
        let Some(run) = self.active.as_mut() else {
            return Ok(());
        };
        if run.deadline.is_some_and(|d| now >= d) {
            eprintln!("proc_image: the activation's time limit was reached, ending");
            self.finishing = true;
            return Ok(());
        }
        if now >= run.next_liveness {
            run.next_liveness = now + LIVENESS_CHECK;
            let target = run.act.target;
            if !target.alive() {
                self.end_activation(rb, Some(target));
                self.state.status = CONTROL_STATUS_IDLE;
                self.state.active_mask = 0;
                control::set_message(
                    &mut self.state.message,
                    &format!("{target} has exited; collection stopped"),
                );
                self.control.write_state(&self.state)?;
            }
        }
        Ok(())
    }

    fn interval(&mut self) -> Result<()> {
        let Some(run) = &self.active else {
            return Ok(());
        };
        let kinds = run.kinds.clone();
        let mut out = self.output.borrow_mut();
        for c in self
            .collectors
            .iter_mut()
            .filter(|c| kinds.contains(&c.kind()))
        {
            c.on_interval(&mut out)?;
        }
        drop(out);
        self.report_losses();
        Ok(())
    }

    /// Anything the BPF side could not deliver since the last report is said,
    /// as a record and on stderr: nothing is dropped silently.
    fn report_losses(&mut self) {
        let now = sys::monotonic_ns();
        for (i, c) in self.collectors.iter().enumerate() {
            let Ok(s) = c.stats() else { continue };
            let last = self.reported[i];
            let delta = collector_stats {
                events: s.events - last.events,
                ringbuf_drops: s.ringbuf_drops - last.ringbuf_drops,
                map_full: s.map_full - last.map_full,
                no_task_state: s.no_task_state - last.no_task_state,
            };
            self.reported[i] = s;
            if delta.ringbuf_drops + delta.map_full + delta.no_task_state == 0 {
                continue;
            }
            eprintln!(
                "proc_image: {} lost {} records (ring buffer full), {} map entries (map full), {} task states",
                c.kind(),
                delta.ringbuf_drops,
                delta.map_full,
                delta.no_task_state
            );
            self.output
                .borrow_mut()
                .emit(&lost_record(now, c.kind(), &delta));
        }
        let errors = self.decode_errors.replace(0);
        if errors > 0 {
            eprintln!("proc_image: {errors} records could not be decoded");
        }
    }

    /// Stop the current activation: deliver what is in flight, emit the last
    /// partial interval, detach. `gone` says the target exited.
    fn end_activation(&mut self, rb: &RingBuffer<'_>, gone: Option<Target>) {
        let Some(run) = self.active.take() else {
            return;
        };
        for c in self
            .collectors
            .iter_mut()
            .filter(|c| run.kinds.contains(&c.kind()))
        {
            c.deactivate();
        }
        // detached: whatever is in the ring buffers now is all there is
        let _ = rb.consume();
        {
            let mut out = self.output.borrow_mut();
            for c in self
                .collectors
                .iter_mut()
                .filter(|c| run.kinds.contains(&c.kind()))
            {
                if let Err(e) = c.flush(&mut out) {
                    eprintln!("proc_image: {}: {e:#}", c.kind());
                }
            }
        }
        self.report_losses();
        if let Some(target) = gone {
            eprintln!("proc_image: {target} has exited; collection stopped, still loaded (controller -a to trace again)");
            let rec = Record::new(sys::monotonic_ns(), "proc_image", "target_gone")
                .field("target", target.to_string());
            self.output.borrow_mut().emit(&rec);
        }
        self.output.borrow_mut().deactivated();
        self.output.borrow_mut().flush();
    }

    /// Say goodbye in the control map and on stderr; the pins go with `control`.
    fn finish(&mut self) {
        self.state.status = CONTROL_STATUS_ENDING;
        self.state.active_mask = 0;
        control::set_message(&mut self.state.message, "ended");
        let _ = self.control.write_state(&self.state);
        // the trace file's closing bracket, the last flush
        self.output.borrow_mut().finish();
        let lost: Vec<String> = self
            .collectors
            .iter()
            .filter_map(|c| {
                let s = c.stats().ok()?;
                Some(format!(
                    "{}: {} records, {} lost (ring buffer full), {} map full, {} without task state",
                    c.kind(),
                    s.events,
                    s.ringbuf_drops,
                    s.map_full,
                    s.no_task_state
                ))
            })
            .collect();
        eprintln!(
            "proc_image: ended; {} records written; {}",
            self.output.borrow().records(),
            lost.join("; ")
        );
    }
}

fn lost_record(now: u64, kind: CollectorKind, d: &collector_stats) -> Record {
    Record::new(now, "proc_image", "lost")
        .field("lost_collector", kind.name())
        .field("ringbuf_drops", d.ringbuf_drops)
        .field("map_full", d.map_full)
        .field("no_task_state", d.no_task_state)
}

/// Wait up to POLL for a wakeup, then take every record waiting. A signal interrupting the wait is not an
/// error; a closed stdout shows in the output's state.
fn poll(rb: &RingBuffer<'_>) -> Result<()> {
    let mut rc = rb.poll_raw(POLL);
    // records submitted without a wakeup (see submit_record) are swept here
    if rc >= 0 {
        rc = rb.consume_raw();
    }
    if rc >= 0 || rc == -libc::EINTR || rc == -1 {
        // -1: a callback stopped the poll (stdout closed)
        return Ok(());
    }
    Err(anyhow!(
        "poll the ring buffers: {}",
        std::io::Error::from_raw_os_error(-rc)
    ))
}

/// One ring buffer over every collector's `events` map; each record goes
/// through its collector's decoder straight to the output.
fn ring_buffer<'a>(
    handles: &'a [MapHandle],
    decoders: Vec<collectors::Decoder>,
    output: &Rc<RefCell<Output>>,
    decode_errors: &Rc<Cell<u64>>,
) -> Result<RingBuffer<'a>> {
    let mut builder = RingBufferBuilder::new();
    for (events, mut decode) in handles.iter().zip(decoders) {
        let out = output.clone();
        let errors = decode_errors.clone();
        builder
            .add(events, move |data: &[u8]| {
                let mut out = out.borrow_mut();
                match decode(data) {
                    Ok(rec) => out.emit(&rec),
                    Err(_) => errors.set(errors.get() + 1),
                }
                // a negative return stops polling: stdout is gone
                if out.is_closed() {
                    -1
                } else {
                    0
                }
            })
            .context("set up the ring buffers")?;
    }
    builder.build().context("set up the ring buffers")
}
