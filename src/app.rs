//! proc_image's life: load the collectors, pin the control map, then poll
//! the ring buffers and the control map until told to stop.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use libbpf_rs::{MapHandle, RingBuffer, RingBufferBuilder};

use crate::bpf_intf::{
    control_activation, control_answer, control_request, control_state, CONTROL_ACTIVATE,
    CONTROL_DEACTIVATE, CONTROL_FINISH, CONTROL_F_EXEC_FAILURES, CONTROL_F_MYPROC,
    CONTROL_STATUS_DONE, CONTROL_STATUS_ENDING, CONTROL_STATUS_ERROR, PI_COLLECTOR_COUNT,
};
use crate::bpf_stats;
use crate::cli::ProcImageArgs;
use crate::collectors::{self, Activation, Collector, CollectorKind, LoadOptions};
use crate::control::{self, ControlMap};
use crate::losses::Losses;
use crate::output::{Format, Output, Sink};
use crate::record::{write_json_of, Event, Record};
use crate::sys;
use crate::target::Target;

/// How often the ring buffers and the control map are looked at; controller
/// waits for an answer, so this bounds its latency.
const POLL: Duration = Duration::from_millis(50);
/// How often a targeted activation checks that its target still exists.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);

pub fn run(args: ProcImageArgs) -> Result<()> {
    sys::require_root("proc_image")?;
    collectors::set_libbpf_log(args.verbose);

    let kinds = args.collectors();
    // refused up front, before anything is pinned: asked for, it must be had
    let stats_on = args.bpf_stats.then(bpf_stats::enable).transpose()?;

    // before the pins: a taken metrics port or a bad trace path leaves nothing behind
    let sinks = open_sinks(&args)?;
    let pin_dir = control::resolve_pin_dir(args.pin_dir.as_deref());
    control::prepare_pin_dir(&pin_dir)?;
    // keytime's exec hooks and futex attach by tracefs's event ids: without
    // it they would fail only at activation
    if let Err(e) = sys::ensure_tracefs() {
        eprintln!("proc_image: {e:#}: keytime's exec records and futex cannot attach");
    }
    // pinned before the (slow) load, so a second proc_image is refused at once
    let control = ControlMap::create(&pin_dir)?;

    let opts = LoadOptions {
        ringbuf_bytes: args.ringbuf_kib * 1024,
        top: args.top.map(|n| n as usize),
        // every thread, not a --top of them, unless people read the text
        json: args.format() != Format::Text,
    };
    let (collectors, refused) = collectors::load(&kinds, &opts);
    // collectors named on the command line must all load; with -a (or none
    // named) each loads on its own and one the kernel refuses is reported
    if let Some(r) = refused.first() {
        if !args.all_collectors() || collectors.is_empty() {
            bail!("the {} collector did not load: {}", r.kind, r.reason);
        }
    }
    for r in &refused {
        eprintln!(
            "proc_image: {} not loaded: {} (the others run; -v shows libbpf's log)",
            r.kind, r.reason
        );
    }
    let counting = match stats_on {
        Some(on) => Some(bpf_stats::Counting::new(
            on,
            collectors.iter().map(|c| (c.kind().name(), c.object())),
        )?),
        None => None,
    };
    let mut app = App::new(args, control, collectors, &refused, sinks)?;
    app.bpf_stats = counting;
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
    if args.folded.is_some() || args.flamegraph.is_some() {
        sinks.push(Box::new(crate::folded::FoldedWriter::create(
            args.folded.as_deref(),
            args.flamegraph.as_deref(),
        )?));
    }
    Ok(sinks)
}

/// One collector's activation.
struct ActiveRun {
    act: Activation,
    /// unique among this proc_image's activations, never 0
    id: u32,
    /// CLOCK_REALTIME of the activation, for controller --status
    since_ns: u64,
    /// the collector's records before it, so the status counts its own
    records_before: u64,
    next_interval: Instant,
    next_liveness: Instant,
}

/// How long an answer waits for the controller that asked (it polls every 10 ms).
const ANSWER_KEPT: Duration = Duration::from_secs(30);

struct App {
    args: ProcImageArgs,
    control: ControlMap,
    collectors: Vec<Box<dyn Collector>>,
    output: Rc<RefCell<Output>>,
    decode_errors: Rc<Cell<u64>>,
    state: control_state,
    generation: u32,
    /// per collector (same index as `collectors`): its current activation
    runs: Vec<Option<ActiveRun>>,
    /// answers not yet taken, oldest first
    answers: VecDeque<(u64, Instant)>,
    /// stats already reported, per collector
    reported: Vec<Losses>,
    finishing: bool,
    /// --bpf-stats: the programs whose runs are counted, read every interval
    bpf_stats: Option<bpf_stats::Counting>,
    next_bpf_stats: Instant,
}

impl App {
    fn new(
        args: ProcImageArgs,
        control: ControlMap,
        collectors: Vec<Box<dyn Collector>>,
        refused: &[collectors::Refusal],
        sinks: Vec<Box<dyn Sink>>,
    ) -> Result<Self> {
        let mut state = control.read_state()?;
        state.loaded_mask = collectors.iter().fold(0, |m, c| m | c.kind().bit());
        let refused_kinds: Vec<CollectorKind> = refused.iter().map(|r| r.kind).collect();
        state.refused_mask = CollectorKind::mask(&refused_kinds);
        state.ready = 1;
        // what the loader could not load, for controller --status
        let why: Vec<String> = refused
            .iter()
            .map(|r| format!("{}: {}", r.kind, r.reason))
            .collect();
        if why.is_empty() {
            control::set_message(&mut state.message, "ready");
        } else {
            control::set_message(&mut state.message, &why.join("; "));
        }
        control.write_state(&state)?;
        let mut output = Output::stdout(args.format()).with_sinks(sinks);
        output.loaded(
            &collectors
                .iter()
                .map(|c| c.kind().name())
                .collect::<Vec<_>>(),
        );
        output.refused(&refused_kinds.iter().map(|k| k.name()).collect::<Vec<_>>());
        let output = Rc::new(RefCell::new(output));
        let reported = vec![Losses::default(); collectors.len()];
        let runs = collectors.iter().map(|_| None).collect();
        Ok(App {
            args,
            control,
            collectors,
            output,
            decode_errors: Rc::new(Cell::new(0)),
            state,
            generation: 0,
            runs,
            answers: VecDeque::new(),
            reported,
            finishing: false,
            bpf_stats: None,
            next_bpf_stats: Instant::now(),
        })
    }

    fn main_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        let handles = self
            .collectors
            .iter()
            .map(|c| c.events())
            .collect::<Result<Vec<_>>>()?;
        let decoders = self
            .collectors
            .iter()
            .map(|c| collectors::capture_raw(c.kind(), c.decoder()))
            .collect();
        let rb = ring_buffer(&handles, decoders, &self.output, &self.decode_errors)?;
        // the programs are listed by --status from the start
        self.refresh_bpf_stats()?;
        let names = CollectorKind::names(self.state.loaded_mask);
        eprintln!(
            "proc_image: loaded {names}; ready (pid {}, pins in {}). Activate with: controller -a [-p PID | -P TGID] [-k] ...",
            std::process::id(),
            self.control.dir().display()
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
        let all: Vec<usize> = (0..self.collectors.len()).collect();
        self.end_runs(&rb, &all, None);
        drop(rb);
        result
    }

    /// One turn of the loop: deliver records, answer controllers, do the
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
        self.check_requests(rb)?;
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

    /// Answer every request waiting, each under its own id.
    fn check_requests(&mut self, rb: &RingBuffer<'_>) -> Result<()> {
        // answers nobody came for (a controller killed while waiting)
        while self
            .answers
            .front()
            .is_some_and(|(_, at)| at.elapsed() > ANSWER_KEPT)
        {
            if let Some((id, _)) = self.answers.pop_front() {
                self.control.drop_answer(id);
            }
        }
        while !self.finishing {
            let Some(req) = self.control.pop_request()? else {
                break;
            };
            let outcome = self.apply(&req, rb);
            let mut answer = control_answer::default();
            let message = match outcome {
                Ok((msg, ids)) => {
                    answer.status = if self.finishing {
                        CONTROL_STATUS_ENDING
                    } else {
                        CONTROL_STATUS_DONE
                    };
                    answer.activation_ids = ids;
                    eprintln!("proc_image: {msg}");
                    msg
                }
                Err(e) => {
                    answer.status = CONTROL_STATUS_ERROR;
                    let msg = format!("{e:#}");
                    eprintln!("proc_image: request refused: {msg}");
                    msg
                }
            };
            control::set_message(&mut answer.message, &message);
            self.control.put_answer(req.id, &answer)?;
            self.answers.push_back((req.id, Instant::now()));
            self.publish_state()?;
        }
        Ok(())
    }

    /// Write what each collector is doing into the control map (--status).
    fn publish_state(&mut self) -> Result<()> {
        let out = self.output.borrow();
        for (c, run) in self.collectors.iter().zip(&self.runs) {
            let slot = &mut self.state.active[c.kind().index()];
            *slot = control_activation::default();
            if let Some(run) = run {
                run.act.target.write_activation(slot);
                slot.id = run.id;
                slot.since_ns = run.since_ns;
                slot.interval_ms = run.act.interval_ms;
                slot.records = out.records_of(c.kind().name()) - run.records_before;
            }
        }
        drop(out);
        self.control.write_state(&self.state)
    }

    fn apply(
        &mut self,
        req: &control_request,
        rb: &RingBuffer<'_>,
    ) -> Result<(String, [u32; PI_COLLECTOR_COUNT as usize])> {
        control::check_header(&req.hdr)?;
        match req.command {
            CONTROL_ACTIVATE => self.activate(req, rb),
            CONTROL_DEACTIVATE => Ok((self.deactivate(req, rb), Default::default())),
            CONTROL_FINISH => {
                self.finishing = true;
                Ok(("ending on controller's request".into(), Default::default()))
            }
            other => bail!("unknown command {other} in the control request"),
        }
    }

    fn activate(
        &mut self,
        req: &control_request,
        rb: &RingBuffer<'_>,
    ) -> Result<(String, [u32; PI_COLLECTOR_COUNT as usize])> {
        let loaded = self.state.loaded_mask;
        let target = Target::from_request(req)?;
        // no collector named: every loaded one that can trace this target
        // (the answer names those left out: lock, say, with no pthread
        // library mapped there yet)
        let mut left_out = Vec::new();
        let mask = match req.collectors {
            0 => self.collectors.iter().fold(0, |m, c| {
                if c.check_target(&target).is_ok() {
                    m | c.kind().bit()
                } else {
                    left_out.push(c.kind().name());
                    m
                }
            }),
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
        let chosen: Vec<usize> = (0..self.collectors.len())
            .filter(|&i| kinds.contains(&self.collectors[i].kind()))
            .collect();
        // a new activation replaces only these collectors' activations
        self.end_runs(rb, &chosen, None);

        self.generation = self.generation.wrapping_add(1).max(1);
        let act = Activation {
            target,
            generation: self.generation,
            keytime_level: req.keytime_level,
            syscall_seq_len: req.syscall_seq_len,
            futex_min_us: req.futex_min_us,
            stack_min_us: req.stack_min_us,
            stretch_min_us: req.stretch_min_us,
            exec_failures: req.flags & CONTROL_F_EXEC_FAILURES != 0,
            interval_ms: if req.interval_ms > 0 {
                req.interval_ms
            } else {
                self.args.interval
            },
            exclude_tgid: if req.flags & CONTROL_F_MYPROC != 0 {
                0
            } else {
                std::process::id()
            },
        };
        let mut failure = None;
        for &i in &chosen {
            if let Err(e) = self.collectors[i].activate(&act) {
                failure = Some(e.context(format!("activate {}", self.collectors[i].kind())));
                break;
            }
        }
        if let Some(e) = failure {
            // all or nothing: undo those of this request already attached
            for &i in &chosen {
                self.collectors[i].deactivate();
            }
            return Err(e);
        }
        let mut ids = [0u32; PI_COLLECTOR_COUNT as usize];
        let now = Instant::now();
        let interval = Duration::from_millis(act.interval_ms.into());
        let mut out = self.output.borrow_mut();
        for &i in &chosen {
            let c = &self.collectors[i];
            out.section(&c.describe(&act));
            ids[c.kind().index()] = self.generation;
            self.runs[i] = Some(ActiveRun {
                act,
                id: self.generation,
                since_ns: sys::realtime_ns(),
                records_before: out.records_of(c.kind().name()),
                next_interval: now + interval,
                next_liveness: now + LIVENESS_CHECK,
            });
        }
        out.activated(&target, &kinds.iter().map(|k| k.name()).collect::<Vec<_>>());
        drop(out);
        let mut message = format!("activated {} on {target}", CollectorKind::names(mask));
        if !left_out.is_empty() {
            message += &format!("; not {}: cannot trace it", left_out.join(", "));
        }
        Ok((message, ids))
    }

    /// Deactivate the collectors asked for (all when none is named), each
    /// only while it still runs the activation the request names, if any.
    fn deactivate(&mut self, req: &control_request, rb: &RingBuffer<'_>) -> String {
        let mut ended = Vec::new();
        let mut left = Vec::new();
        for (i, c) in self.collectors.iter().enumerate() {
            let k = c.kind();
            let Some(run) = &self.runs[i] else { continue };
            if req.collectors != 0 && req.collectors & k.bit() == 0 {
                continue;
            }
            let wanted = req.activation_ids[k.index()];
            if wanted != 0 && wanted != run.id {
                left.push(k.name());
                continue;
            }
            ended.push(i);
        }
        let names: Vec<&str> = ended
            .iter()
            .map(|&i| self.collectors[i].kind().name())
            .collect();
        let mut msg = if names.is_empty() {
            "nothing was active".to_string()
        } else {
            format!("deactivated {}; still loaded", names.join(", "))
        };
        if !left.is_empty() {
            msg += &format!(
                " ({} left alone: a later activation replaced it)",
                left.join(", ")
            );
        }
        self.end_runs(rb, &ended, None);
        msg
    }

    /// Let the active collectors act on the records just delivered. A
    /// failure there is reported and tracing goes on.
    fn service(&mut self) {
        let mut out = self.output.borrow_mut();
        for (c, run) in self.collectors.iter_mut().zip(self.runs.iter_mut()) {
            let Some(run) = run else {
                continue;
            };
            if let Err(e) = c.service(&mut out) {
                eprintln!("proc_image: {}: {e:#}", c.kind());
            }
            // the liveness check follows a thread that became its group's leader
            if let Some(moved) = c.moved_target() {
                let moved_to = AppEvent::TargetMoved {
                    from: run.act.target.to_string(),
                    to: moved.to_string(),
                };
                let rec = Record::new(sys::monotonic_ns(), moved_to);
                out.emit(&rec);
                run.act.target = moved;
            }
        }
    }

    /// Periodic work of each activation: summaries, lost-record reports,
    /// target liveness.
    fn tick(&mut self, rb: &RingBuffer<'_>) -> Result<()> {
        let now = Instant::now();
        let mut reported = false;
        let mut gone: Vec<(usize, Target)> = Vec::new();
        for i in 0..self.collectors.len() {
            let Some(run) = self.runs[i].as_mut() else {
                continue;
            };
            let every = Duration::from_millis(run.act.interval_ms.into());
            if now >= run.next_interval {
                run.next_interval += every;
                if run.next_interval < now {
                    run.next_interval = now + every;
                }
                let mut out = self.output.borrow_mut();
                self.collectors[i].on_interval(&mut out)?;
                reported = true;
            }
            let Some(run) = self.runs[i].as_mut() else {
                continue;
            };
            if now >= run.next_liveness {
                run.next_liveness = now + LIVENESS_CHECK;
                if !run.act.target.alive() {
                    gone.push((i, run.act.target));
                }
            }
        }
        if reported {
            self.report_losses();
            self.publish_state()?;
        }
        if self.bpf_stats.is_some() && now >= self.next_bpf_stats {
            self.next_bpf_stats = now + Duration::from_millis(self.args.interval.into());
            self.refresh_bpf_stats()?;
        }
        // one target_gone per target, however many collectors traced it
        let mut targets: Vec<Target> = gone.iter().map(|(_, t)| *t).collect();
        targets.dedup();
        for target in targets {
            let of_it: Vec<usize> = gone
                .iter()
                .filter(|(_, t)| *t == target)
                .map(|(i, _)| *i)
                .collect();
            self.end_runs(rb, &of_it, Some(target));
            control::set_message(
                &mut self.state.message,
                &format!("{target} has exited; collection stopped"),
            );
            self.publish_state()?;
        }
        Ok(())
    }

    /// --bpf-stats: every program's runs and run time to the metrics and
    /// the control state (controller --status).
    fn refresh_bpf_stats(&mut self) -> Result<()> {
        let Some(counting) = &self.bpf_stats else {
            return Ok(());
        };
        let stats = counting.read();
        self.output.borrow_mut().bpf_stats(&stats);
        bpf_stats::to_control(&stats, collector_index, &mut self.state);
        self.publish_state()
    }

    /// Anything the BPF side could not deliver since the last report is said,
    /// as a record and on stderr: nothing is dropped silently.
    fn report_losses(&mut self) {
        let now = sys::monotonic_ns();
        for (i, c) in self.collectors.iter().enumerate() {
            let Ok(s) = c.stats() else { continue };
            let delta = s.since(&self.reported[i]);
            self.reported[i] = s;
            if delta.lost() == 0 {
                continue;
            }
            eprintln!("proc_image: {} lost {}", c.kind(), delta.lost_text());
            self.output
                .borrow_mut()
                .emit(&delta.record(now, c.kind().name()));
        }
        let errors = self.decode_errors.replace(0);
        if errors > 0 {
            eprintln!("proc_image: {errors} records could not be decoded");
        }
    }

    /// End the activations of collectors `which` (indices; those not active
    /// are skipped): deliver what is in flight, emit the last partial
    /// interval, detach. `gone` says their target exited.
    fn end_runs(&mut self, rb: &RingBuffer<'_>, which: &[usize], gone: Option<Target>) {
        let ending: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.runs[i].is_some())
            .collect();
        if ending.is_empty() {
            return;
        }
        for &i in &ending {
            self.collectors[i].deactivate();
        }
        // detached: whatever is in the ring buffers now is all there is
        let _ = rb.consume();
        {
            let mut out = self.output.borrow_mut();
            for &i in &ending {
                if let Err(e) = self.collectors[i].flush(&mut out) {
                    eprintln!("proc_image: {}: {e:#}", self.collectors[i].kind());
                }
            }
        }
        for &i in &ending {
            self.runs[i] = None;
        }
        self.report_losses();
        if let Some(target) = gone {
            eprintln!("proc_image: {target} has exited; collection stopped, still loaded (controller -a to trace again)");
            let gone = AppEvent::TargetGone {
                target: target.to_string(),
            };
            let rec = Record::new(sys::monotonic_ns(), gone);
            self.output.borrow_mut().emit(&rec);
        }
        let names: Vec<&'static str> = ending
            .iter()
            .map(|&i| self.collectors[i].kind().name())
            .collect();
        self.output.borrow_mut().deactivated(&names);
        self.output.borrow_mut().flush();
    }

    /// Say goodbye in the control map and on stderr; the pins go with `control`.
    fn finish(&mut self) {
        self.state.active = Default::default();
        control::set_message(&mut self.state.message, "ended");
        let _ = self.control.write_state(&self.state);
        // the trace file's closing bracket, the last flush
        self.output.borrow_mut().finish();
        let lost: Vec<String> = self
            .collectors
            .iter()
            .filter_map(|c| {
                let s = c.stats().ok()?;
                Some(format!("{}: {s}", c.kind()))
            })
            .collect();
        eprintln!(
            "proc_image: ended; {} records written; {}",
            self.output.borrow().records(),
            lost.join("; ")
        );
        if let Some(counting) = &self.bpf_stats {
            eprintln!("proc_image: BPF programs, runs and run time (--bpf-stats):");
            for line in bpf_stats::table(&counting.read()) {
                eprintln!("  {line}");
            }
        }
    }
}

/// proc_image's own records about its targets.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum AppEvent {
    /// The target exited; collection stopped.
    TargetGone { target: String },
    /// A non-leader thread traced alone exec'd: it goes on as the leader.
    TargetMoved { from: String, to: String },
}

impl Event for AppEvent {
    fn collector(&self) -> &'static str {
        "proc_image"
    }

    fn name(&self) -> &'static str {
        match self {
            AppEvent::TargetGone { .. } => "target_gone",
            AppEvent::TargetMoved { .. } => "target_moved",
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        write_json_of(self, out)
    }
}

/// A collector's number (enum pi_collector) from its name.
fn collector_index(name: &str) -> u32 {
    CollectorKind::ALL
        .iter()
        .find(|k| k.name() == name)
        .map_or(u32::MAX, |k| k.index() as u32)
}

/// How long one turn of the loop reads the ring buffers: under a flood the
/// rings refill as fast as they are read, and an unbounded read would keep
/// the loop from answering controller and closing intervals (what does not
/// fit waits in the rings, or is counted as dropped).
const TURN_BUDGET: Duration = Duration::from_millis(100);
/// Records taken between two looks at the clock.
const RECORDS_PER_BATCH: usize = 1024;

/// Wait up to POLL for a wakeup (at once if a record is already waiting),
/// then read the records for at most TURN_BUDGET. A signal interrupting the
/// wait is not an error; a closed stdout shows in the output's state.
fn poll(rb: &RingBuffer<'_>) -> Result<()> {
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: one event buffer of the right type for the ring buffers' epoll fd.
    let n = unsafe { libc::epoll_wait(rb.epoll_fd(), &mut event, 1, POLL.as_millis() as i32) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(anyhow!("wait for the ring buffers: {e}"));
        }
    }
    // records submitted without a wakeup (see submit_record) are swept here
    // too; in batches, for at most TURN_BUDGET
    let start = Instant::now();
    loop {
        let rc = rb.consume_raw_n(RECORDS_PER_BATCH);
        if rc == -libc::EINTR || rc == -1 {
            // -1: a callback stopped the poll (stdout closed)
            return Ok(());
        }
        if rc < 0 {
            return Err(anyhow!(
                "read the ring buffers: {}",
                std::io::Error::from_raw_os_error(-rc)
            ));
        }
        if (rc as usize) < RECORDS_PER_BATCH || start.elapsed() >= TURN_BUDGET {
            return Ok(());
        }
    }
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
                    Ok(Some(rec)) => out.emit(&rec),
                    Ok(None) => {}
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
