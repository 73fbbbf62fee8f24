//! schedule: run-queue latency (runnable -> running) of the target per
//! interval, beside the whole system's in the same interval, with log2
//! histograms. BPF side: bpf/schedule.bpf.c (aggregated in the kernel).

use anyhow::{anyhow, Context, Result};
use libbpf_rs::{Link, MapHandle};
use serde::Serialize;
use serde_json::Value;

use super::latency::{self, Figures};
use super::{
    attach_all, load_skel_variants, read_stats, wait_for_programs_in_flight, Activation, Collector,
    CollectorKind, LoadOptions, MIN_RINGBUF,
};
use crate::bpf_intf::{self, schedule_config};
use crate::kernel_btf::{self, Variant};
use crate::output::Output;
use crate::record::families::Fam;
use crate::record::{self, value_of, MetricsOut, Record, TraceOut};
use crate::sys;
use crate::target::Target;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/schedule.skel.rs"));
}
use skel::{ScheduleSkel, ScheduleSkelBuilder};

const NAME: &str = "schedule";

pub struct Schedule {
    skel: ScheduleSkel<'static>,
    links: Vec<Link>,
    /// sched_switch passes prev_state: its newer program is the one loaded
    switch_newer: bool,
    /// what the current (or last) activation traces; None once flushed
    target: Option<Target>,
    interval_start_ns: u64,
}

impl Schedule {
    pub fn load(_opts: &LoadOptions) -> Result<Self> {
        // aggregates in maps: its ring buffer stays at the minimum
        let switch = Variant {
            newer: "handle__sched_switch",
            older: "handle__sched_switch_compat",
            use_newer: kernel_btf::features().sched_switch_prev_state,
        };
        let skel =
            load_skel_variants(ScheduleSkelBuilder::default(), NAME, MIN_RINGBUF, &[switch])?;
        Ok(Schedule {
            skel,
            switch_newer: switch.use_newer,
            links: Vec::new(),
            target: None,
            interval_start_ns: 0,
        })
    }

    fn config(&mut self) -> Result<&mut skel::types::schedule_config> {
        self.skel
            .maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cfg)
            .ok_or_else(|| anyhow!("schedule: .bss is not mapped"))
    }

    fn report(&mut self, target: Target, out: &mut Output) -> Result<()> {
        let old = self.config()?.interval;
        // SAFETY: a u32 in the mapped .bss, which BPF only reads
        unsafe { std::ptr::write_volatile(&mut self.config()?.interval, old.wrapping_add(1)) };
        let now = sys::monotonic_ns();
        let interval_ns = now.saturating_sub(self.interval_start_ns);
        self.interval_start_ns = now;
        wait_for_programs_in_flight();
        let lat = latency::take(&self.skel.maps.latencies, old)?;
        let (pid, tgid) = match target {
            Target::Thread { pid, tgid, .. } => (pid, tgid),
            Target::Group { tgid, .. } => (tgid, tgid),
            Target::System | Target::Idle { .. } | Target::Cgroup { .. } => (0, 0),
        };
        let rec = Record::new(
            now,
            Event::Schedule(Box::new(Interval {
                interval_ns,
                latency: Figures::of(&lat),
            })),
        )
        .task(pid, tgid, "");
        out.emit(&rec);
        Ok(())
    }
}

/// The schedule collector's records.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The target's run-queue latency in one interval, beside the system's.
    Schedule(Box<Interval>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Interval {
    pub interval_ns: u64,
    #[serde(flatten)]
    pub latency: Figures,
}

impl record::Event for Event {
    fn collector(&self) -> &'static str {
        "schedule"
    }

    fn to_value(&self) -> Value {
        value_of(self)
    }

    fn name(&self) -> &'static str {
        match self {
            Event::Schedule(_) => "schedule",
        }
    }

    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
        match self {
            Event::Schedule(i) => i.latency.metrics(Fam::SchedLatency, m),
        }
    }

    fn trace(&self, rec: &Record, t: &mut dyn TraceOut) {
        match self {
            Event::Schedule(i) => i.latency.trace(rec, "run-queue latency avg (us)", t),
        }
    }
}

impl Collector for Schedule {
    fn kind(&self) -> CollectorKind {
        CollectorKind::Schedule
    }

    fn activate(&mut self, act: &Activation) -> Result<()> {
        self.deactivate();
        latency::clear(&self.skel.maps.latencies)?;
        // wakeups an earlier activation kept aside (see runnable_spill)
        let spill = &self.skel.maps.runnable_spill;
        let keys: Vec<Vec<u8>> = libbpf_rs::MapCore::keys(spill).collect();
        for k in keys {
            let _ = libbpf_rs::MapCore::delete(spill, &k);
        }
        if let Some(bss) = self.skel.maps.bss_data.as_deref_mut() {
            bss.spilled = 0;
        }
        let cfg = schedule_config {
            target: act.filter(),
            interval: self.config()?.interval,
            _pad: 0,
        };
        bpf_intf::copy_into(self.config()?, &cfg);
        self.interval_start_ns = sys::monotonic_ns();
        let p = &self.skel.progs;
        self.links = attach_all(&[
            ("schedule/sched_wakeup", &p.handle__sched_wakeup),
            ("schedule/sched_wakeup_new", &p.handle__sched_wakeup_new),
            (
                "schedule/sched_switch",
                if self.switch_newer {
                    &p.handle__sched_switch
                } else {
                    &p.handle__sched_switch_compat
                },
            ),
        ])?;
        self.target = Some(act.target);
        Ok(())
    }

    fn deactivate(&mut self) {
        self.links.clear();
    }

    fn describe(&self, act: &Activation) -> String {
        format!(
            "schedule on {}: run-queue latency beside the whole system's, per interval",
            act.target
        )
    }

    fn events(&self) -> Result<MapHandle> {
        MapHandle::try_from(&self.skel.maps.events).context("schedule ring buffer")
    }

    fn on_interval(&mut self, out: &mut Output) -> Result<()> {
        match self.target {
            Some(target) => self.report(target, out),
            None => Ok(()),
        }
    }

    fn flush(&mut self, out: &mut Output) -> Result<()> {
        self.on_interval(out)?;
        self.target = None;
        Ok(())
    }

    fn stats(&self) -> Result<crate::losses::Losses> {
        read_stats(&self.skel.maps.stats)
    }
}
