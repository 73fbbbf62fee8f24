//! What a collector's BPF side delivered and what it lost, as one type: the
//! exit summary, the `lost` records (hence the metrics and the trace) and
//! controller's status all say it the same way.

use std::fmt;
use std::ops::AddAssign;

use serde::Serialize;
use serde_json::json;

use crate::bpf_intf::collector_stats;
use crate::record::families::Fam;
use crate::record::{value_of, Event, MetricsOut, Record, TraceOut};

/// Counts since the collector was loaded (or, from `since`, over a span).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    /// records sent through the ring buffer
    pub records: u64,
    /// records lost: the ring buffer was full
    pub ringbuf_drops: u64,
    /// aggregates lost: a map was full
    pub map_full: u64,
    /// events not accounted: no task storage could be had
    pub no_task_state: u64,
}

impl Losses {
    /// Everything lost, whatever the way.
    pub fn lost(&self) -> u64 {
        self.ringbuf_drops + self.map_full + self.no_task_state
    }

    /// What happened after `earlier` (counters only grow).
    pub fn since(&self, earlier: &Losses) -> Losses {
        Losses {
            records: self.records.saturating_sub(earlier.records),
            ringbuf_drops: self.ringbuf_drops.saturating_sub(earlier.ringbuf_drops),
            map_full: self.map_full.saturating_sub(earlier.map_full),
            no_task_state: self.no_task_state.saturating_sub(earlier.no_task_state),
        }
    }

    /// The `lost` record that says them (metrics and the trace count it).
    pub fn record(&self, now: u64, collector: &'static str) -> Record {
        Record::new(now, self.lost_record_body(collector, None))
    }

    /// A `lost` record for a window in which probes were not armed.
    pub fn record_unprobed(&self, now: u64, collector: &'static str, u: Unprobed) -> Record {
        Record::new(now, self.lost_record_body(collector, Some(u)))
    }

    fn lost_record_body(&self, collector: &'static str, unprobed: Option<Unprobed>) -> Lost {
        Lost {
            lost_collector: collector,
            ringbuf_drops: self.ringbuf_drops,
            map_full: self.map_full,
            no_task_state: self.no_task_state,
            unprobed,
        }
    }

    /// The losses alone, for stderr: "3 records (ring buffer full), ...".
    pub fn lost_text(&self) -> String {
        format!(
            "{} records (ring buffer full), {} map entries (map full), {} task states",
            self.ringbuf_drops, self.map_full, self.no_task_state
        )
    }
}

/// The `lost` record: what one collector lost since the last one.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "event", rename = "lost")]
pub struct Lost {
    pub lost_collector: &'static str,
    pub ringbuf_drops: u64,
    pub map_full: u64,
    pub no_task_state: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub unprobed: Option<Unprobed>,
}

/// A window in which a collector's probes were not armed, and the calls
/// it missed in it at least.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Unprobed {
    pub unprobed_from_ns: u64,
    pub unprobed_to_ns: u64,
    pub unseen_lock_calls_at_least: u64,
}

impl Event for Lost {
    fn collector(&self) -> &'static str {
        "proc_image"
    }

    fn name(&self) -> &'static str {
        "lost"
    }

    fn to_value(&self) -> serde_json::Value {
        value_of(self)
    }

    fn metrics(&self, _rec: &Record, m: &mut dyn MetricsOut) {
        let c = self.lost_collector;
        m.add(
            Fam::RingbufDrops,
            vec![("collector", c.into())],
            self.ringbuf_drops as f64,
        );
        for (reason, n) in [
            ("map_full", self.map_full),
            ("no_task_state", self.no_task_state),
        ] {
            let labels = vec![("collector", c.into()), ("reason", reason.into())];
            m.add(Fam::LostEvents, labels, n as f64);
        }
    }

    /// A global instant on the trace.
    fn trace(&self, rec: &Record, t: &mut dyn TraceOut) {
        t.lost(
            rec,
            json!({"lost_collector": self.lost_collector,
            "ringbuf_drops": self.ringbuf_drops, "map_full": self.map_full,
            "no_task_state": self.no_task_state}),
        );
    }
}

impl From<collector_stats> for Losses {
    fn from(s: collector_stats) -> Self {
        Losses {
            records: s.events,
            ringbuf_drops: s.ringbuf_drops,
            map_full: s.map_full,
            no_task_state: s.no_task_state,
        }
    }
}

/// Summing the per-CPU slots.
impl AddAssign for Losses {
    fn add_assign(&mut self, o: Losses) {
        self.records += o.records;
        self.ringbuf_drops += o.ringbuf_drops;
        self.map_full += o.map_full;
        self.no_task_state += o.no_task_state;
    }
}

/// The exit summary's form: "9 records, 0 lost (ring buffer full), ...".
impl fmt::Display for Losses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records, {} lost (ring buffer full), {} map full, {} without task state",
            self.records, self.ringbuf_drops, self.map_full, self.no_task_state
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_sums_and_text() {
        let a = Losses {
            records: 10,
            ringbuf_drops: 1,
            map_full: 2,
            no_task_state: 0,
        };
        let mut b = a;
        b += Losses {
            records: 5,
            ringbuf_drops: 0,
            map_full: 1,
            no_task_state: 4,
        };
        let d = b.since(&a);
        assert_eq!((d.records, d.lost()), (5, 5));
        assert_eq!(a.since(&b), Losses::default());
        assert_eq!(
            b.to_string(),
            "15 records, 1 lost (ring buffer full), 3 map full, 4 without task state"
        );
        assert_eq!(
            d.lost_text(),
            "0 records (ring buffer full), 1 map entries (map full), 4 task states"
        );
    }
}
