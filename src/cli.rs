//! Command lines of proc_image and controller (clap derive). Parsing only:
//! checks against the running system happen in app.rs and controller.rs.

use std::path::PathBuf;

use clap::{
    value_parser, Arg, ArgAction, ArgGroup, ArgMatches, Args, Command, FromArgMatches, Parser,
};

use crate::bpf_intf::KEYTIME_LEVEL_ALL;
use crate::collectors::{CollectorKind, COLLECTORS};
use crate::output::Format;

const AFTER_HELP_PROC_IMAGE: &str = "\
With no collector flag, -a is assumed. proc_image loads and verifies the chosen
collectors, pins its control map (under /sys/fs/bpf/proc_image) and waits,
attached to nothing, until `controller -a` activates collection. It ends on
`controller -f`, SIGINT/SIGTERM/SIGHUP, or -t.

Example:  sudo proc_image -a &   sudo controller -a -P 1234 -k";

/// Trace a thread, a process or the whole system from creation to termination.
#[derive(Debug, Parser)]
#[command(name = "proc_image", version, after_help = AFTER_HELP_PROC_IMAGE)]
pub struct ProcImageArgs {
    /// Load every collector
    #[arg(short = 'a', long)]
    pub all: bool,
    #[command(flatten)]
    pub load: LoadFlags,

    /// Output format
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Same as -o json: one JSON object per line
    #[arg(long)]
    pub json: bool,

    /// End proc_image after SECS seconds (0 = run until told to stop)
    #[arg(short = 't', long = "time", value_name = "SECS", default_value = "0", value_parser = parse_secs, allow_hyphen_values = true)]
    pub time: u64,
    /// Reporting interval for summaries, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(100..=60_000))]
    pub interval: u32,
    /// Whole-system summaries: list only the N busiest threads per interval
    /// (default: 20 in text, all in JSON)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub top: Option<u32>,
    /// Size of each collector's ring buffer in KiB (a power of two)
    #[arg(long, value_name = "KIB", default_value_t = 4096, value_parser = parse_ringbuf_kib)]
    pub ringbuf_kib: u32,
    /// Directory on bpffs for the pins [env: PROC_IMAGE_PIN_DIR] [default: /sys/fs/bpf/proc_image]
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Print libbpf's log (verifier output on load errors)
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Serve Prometheus metrics on ADDR (PORT or HOST:PORT; a bare port binds
    /// 127.0.0.1 only), e.g. --metrics 9464
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Metrics: label only the N most active threads; the rest are summed
    /// under pid="other"
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub metrics_top: u32,
    /// Write the trace as Chrome Trace Event JSON to FILE (ui.perfetto.dev, chrome://tracing)
    #[arg(long, value_name = "FILE")]
    pub trace_out: Option<PathBuf>,
    /// Write keytime -k 2's off-CPU stacks in folded form to FILE
    /// (flamegraph.pl, inferno, speedscope), weighted by off-CPU ns, a
    /// stretch woken by a thread as offwaketime does (its stack, `--`, the
    /// waker's): when keytime is deactivated and when proc_image ends
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Render the same stacks as an off-CPU flame graph (SVG) to FILE, at
    /// the same times
    #[arg(long, value_name = "FILE")]
    pub flamegraph: Option<PathBuf>,
    /// Count each BPF program's runs and run time (the kernel's BPF stats,
    /// on while proc_image runs): in controller --status, the exit summary
    /// and the metrics proc_image_bpf_runs_total and
    /// proc_image_bpf_run_seconds_total. Adds two clock reads to every
    /// program run (of every BPF program on the host while on). If the
    /// kernel refuses (before 5.8), proc_image does not start
    #[arg(long)]
    pub bpf_stats: bool,
}

impl ProcImageArgs {
    /// The collectors to load: those named, or every one.
    /// -a, or no collector named: each collector loads on its own.
    pub fn all_collectors(&self) -> bool {
        self.all || self.load.0.is_empty()
    }

    pub fn collectors(&self) -> Vec<CollectorKind> {
        if self.all_collectors() {
            CollectorKind::ALL.to_vec()
        } else {
            self.load.0.clone()
        }
    }

    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.output
        }
    }
}

const AFTER_HELP_CONTROLLER: &str = "\
Without -p/-P/--cgroup the target is the whole system (but proc_image itself,
unless -m). Without a collector flag, -a activates every collector proc_image loaded
that can trace the target, and its answer names those left out. Each collector
has its own activation: activating some replaces only theirs, and the others go
on with their own targets.

Examples:
  sudo controller -a -P 1234 -k        keytime on every thread of process 1234
  sudo controller -a -P 5678 -s        ... and syscall on process 5678 beside it
  sudo controller -a -p 0 -c 1 -k 0    lifecycle of CPU 1's idle task
  sudo controller -a --cgroup system.slice/nginx.service -k -s -r
                                       a service (or a container) by its cgroup
  sudo controller -a -P 1234 -l -r     its pthread locks, CPU, memory and I/O
  sudo controller -a -s 20 -S -t 60    whole system: syscalls and run-queue latency
                                       for 60 s (controller waits, then deactivates them)
  sudo controller -a -M --futex-min-us 1000
                                       whole system: futex waits of 1 ms or more, who woke them
  sudo controller -d -k                stop keytime alone, stay loaded
  sudo controller -d                   stop every collector, stay loaded
  sudo controller --status             each collector: loaded, active, target, records
  sudo controller -f                   end proc_image";

/// Activate, deactivate or end a running proc_image.
#[derive(Debug, Parser)]
#[command(name = "controller", version, after_help = AFTER_HELP_CONTROLLER)]
#[command(group(ArgGroup::new("action").required(true).args(["activate", "deactivate", "finish", "status"])))]
pub struct ControllerArgs {
    /// Activate the collectors named by their flags (below) for the target
    #[arg(short = 'a', long)]
    pub activate: bool,
    /// Stop the collectors named by their flags (all without one); proc_image stays loaded
    #[arg(short = 'd', long)]
    pub deactivate: bool,
    /// End proc_image
    #[arg(short = 'f', long)]
    pub finish: bool,
    /// Show each collector: loaded, active, target, since when, records so far
    /// (with proc_image --bpf-stats, also each BPF program's runs and run time)
    #[arg(long)]
    pub status: bool,

    /// Target one thread (pid 0 with -c: the idle task of that CPU)
    #[arg(short = 'p', long, value_name = "PID", value_parser = parse_id, allow_hyphen_values = true, conflicts_with = "tgid")]
    pub pid: Option<u32>,
    /// Target every thread of a thread group (process)
    #[arg(short = 'P', long, value_name = "TGID", value_parser = parse_id, allow_hyphen_values = true)]
    pub tgid: Option<u32>,
    /// Target every task in a cgroup v2 and below it, also those that enter it later
    /// (absolute, or relative to the cgroup2 mount; e.g. system.slice/ssh.service)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "tgid", "cpu"])]
    pub cgroup: Option<PathBuf>,
    /// The CPU whose idle task -p 0 means
    #[arg(short = 'c', long, value_name = "CPUID", value_parser = parse_id, allow_hyphen_values = true, requires = "pid")]
    pub cpu: Option<u32>,
    /// Stay in the foreground SECS seconds, then deactivate what this -a activated
    /// (at once on Ctrl-C, SIGTERM or SIGHUP); proc_image stays loaded
    #[arg(short = 't', long = "time", value_name = "SECS", value_parser = parse_secs, allow_hyphen_values = true)]
    pub time: Option<u64>,
    /// Trace proc_image's own threads too when the target is the whole system
    #[arg(short = 'm', long)]
    pub myproc: bool,

    #[command(flatten)]
    pub collector_flags: ActivateFlags,
    /// futex: futex_wait records only for waits of at least US microseconds
    /// (the per-address summaries count every wait) [default: 0]
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u32).range(0..=60_000_000))]
    pub futex_min_us: Option<u32>,
    /// keytime -k 2: off-CPU stacks only for stretches of at least US
    /// microseconds [default: 1000]
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u32).range(0..=60_000_000))]
    pub stack_min_us: Option<u32>,
    /// keytime -k 1 and 2 on a thread, process or cgroup: on_cpu / off_cpu
    /// records only for stretches of at least US microseconds, 0 = every
    /// stretch (every one is summed in the per-interval cpu_summary) [default: 50]
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u32).range(0..=60_000_000))]
    pub stretch_min_us: Option<u32>,
    /// keytime: also an execve_failed record for every execve / execveat that
    /// returns an error. Needs the syscall tracepoints, which send every
    /// syscall of every task on the host through the kernel's slower traced
    /// path while keytime is active (+30-50 ns a syscall measured here)
    #[arg(long)]
    pub exec_failures: bool,
    /// Reporting interval in milliseconds (default: proc_image's --interval)
    #[arg(short = 'i', long, value_name = "MS", value_parser = clap::value_parser!(u32).range(100..=60_000))]
    pub interval: Option<u32>,
    /// Directory on bpffs where proc_image pinned its control map
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

impl ControllerArgs {
    /// Target, time and options only mean something with -a; collector
    /// flags with -a or -d.
    pub fn validate(&self) -> Result<(), String> {
        let with_activation = self.pid.is_some()
            || self.tgid.is_some()
            || self.cgroup.is_some()
            || self.time.is_some()
            || self.interval.is_some()
            || self.myproc
            || self.futex_min_us.is_some()
            || self.stack_min_us.is_some()
            || self.stretch_min_us.is_some()
            || self.exec_failures;
        if !self.activate && with_activation {
            return Err(
                "error: -p, -P, -c, --cgroup, -t, -i, -m, --futex-min-us, --stack-min-us, --stretch-min-us and --exec-failures go only with -a (see --help)".into(),
            );
        }
        let futex = self.collectors().contains(&CollectorKind::Futex);
        if self.futex_min_us.is_some() && !futex && !self.collectors().is_empty() {
            return Err(
                "error: --futex-min-us goes with -M (or a bare -a, which activates futex too) (see --help)"
                    .into(),
            );
        }
        if self.stack_min_us.is_some() && self.value_of(CollectorKind::Keytime) != Some(2) {
            return Err("error: --stack-min-us goes with -k 2 (see --help)".into());
        }
        // a bare -a activates keytime at level 1 too
        let keytime_level = match self.collectors().is_empty() {
            true => Some(KEYTIME_LEVEL_ALL),
            false => self.value_of(CollectorKind::Keytime),
        };
        if self.exec_failures && keytime_level.is_none() {
            return Err("error: --exec-failures goes with -k (or a bare -a) (see --help)".into());
        }
        if self.stretch_min_us.is_some() && !matches!(keytime_level, Some(1 | 2)) {
            return Err(
                "error: --stretch-min-us goes with -k 1 or -k 2 (or a bare -a) (see --help)".into(),
            );
        }
        if !self.activate && !self.deactivate && !self.collectors().is_empty() {
            return Err("error: the collector flags go only with -a or -d (see --help)".into());
        }
        Ok(())
    }

    /// The collectors named on the command line (empty: all loaded).
    pub fn collectors(&self) -> Vec<CollectorKind> {
        self.collector_flags.0.iter().map(|&(k, _)| k).collect()
    }

    /// The value given to a collector's flag (its default when the flag
    /// came alone; None when the collector was not named).
    pub fn value_of(&self, kind: CollectorKind) -> Option<u32> {
        self.collector_flags
            .0
            .iter()
            .find(|&&(k, _)| k == kind)
            .and_then(|&(_, v)| v)
    }
}

/// proc_image's collector flags, one per row of `COLLECTORS`: the
/// collectors to load.
#[derive(Debug, Clone, Default)]
pub struct LoadFlags(pub Vec<CollectorKind>);

impl FromArgMatches for LoadFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(LoadFlags(
            COLLECTORS
                .iter()
                .filter(|c| m.get_flag(c.name))
                .map(|c| c.kind)
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for LoadFlags {
    fn augment_args(cmd: Command) -> Command {
        COLLECTORS.iter().fold(cmd, |cmd, c| {
            cmd.arg(
                Arg::new(c.name)
                    .short(c.short)
                    .long(c.long)
                    .aliases(c.long_aliases)
                    .visible_short_aliases(c.load_short_aliases.iter().copied())
                    .action(ArgAction::SetTrue)
                    .help(c.about),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// controller's collector flags, one per row of `COLLECTORS`: the
/// collectors named, each with its value (the default when the flag came
/// alone) if it takes one.
#[derive(Debug, Clone, Default)]
pub struct ActivateFlags(pub Vec<(CollectorKind, Option<u32>)>);

impl FromArgMatches for ActivateFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut named = Vec::new();
        for c in &COLLECTORS {
            match &c.value {
                None if m.get_flag(c.name) => named.push((c.kind, None)),
                Some(v) if m.contains_id(c.name) => {
                    let given = m.get_one::<u32>(c.name).copied();
                    named.push((c.kind, Some(given.unwrap_or(v.default))));
                }
                _ => {}
            }
        }
        Ok(ActivateFlags(named))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for ActivateFlags {
    fn augment_args(cmd: Command) -> Command {
        COLLECTORS.iter().fold(cmd, |cmd, c| {
            let arg = Arg::new(c.name)
                .short(c.short)
                .long(c.long)
                .aliases(c.long_aliases)
                .help(c.controller_about);
            cmd.arg(match &c.value {
                None => arg.action(ArgAction::SetTrue),
                Some(v) => arg
                    .value_name(v.value_name)
                    .num_args(0..=1)
                    .value_parser(value_parser!(u32).range(v.min as i64..=v.max as i64)),
            })
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

/// A pid, tgid or CPU number: a non-negative integer a kernel can have.
fn parse_id(s: &str) -> Result<u32, String> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if n < 0 {
        return Err(format!("{n} is negative"));
    }
    // PID_MAX_LIMIT is 4M; anything past i32 cannot name a task at all
    u32::try_from(n)
        .ok()
        .filter(|&v| v <= i32::MAX as u32)
        .ok_or_else(|| format!("{n} is out of range"))
}

fn parse_secs(s: &str) -> Result<u64, String> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of seconds"))?;
    u64::try_from(n).map_err(|_| format!("{n} is negative: give 0 (unbounded) or more seconds"))
}

fn parse_ringbuf_kib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(4..=1 << 20).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} must be a power of two from 4 to 1048576"));
    }
    Ok(n)
}

/// Parse arguments; a usage error becomes one line on stderr and exit 2.
pub fn parse_or_exit<P: Parser>() -> P {
    match P::try_parse() {
        Ok(args) => args,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            eprintln!("{}", one_line_error(&e.render().to_string()));
            std::process::exit(2);
        }
    }
}

/// clap's message ("error: ..." up to the first blank line) on one line,
/// plus a pointer to --help.
pub fn one_line_error(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = if message.is_empty() {
        "error: bad arguments".to_string()
    } else {
        message.join(" ")
    };
    format!("{message} (see --help)")
}

#[cfg(test)]
mod tests;
