//! What a record adds to the metrics. Each collector's module says it for
//! its own records (`Event::metrics`) through `Updates`, the exporter's
//! `MetricsOut`, which knows the labels: the target, the bounded thread and
//! process sets, the cgroup.

use super::{Exporter, REBALANCE_NS};
use crate::record::families::{Fam, Labels, OTHER};
use crate::record::histogram::Log2Hist;
use crate::record::{MetricsOut, Record};

pub(super) enum Update {
    Add(f64),
    Set(f64),
    Observe(u64),
    Hist(Box<Log2Hist>),
}

/// The updates one record makes, with the labels they go under.
pub(super) struct Updates<'a> {
    exp: &'a mut Exporter,
    pid: u32,
    tgid: u32,
    comm: &'a str,
    now: u64,
    list: Vec<(Fam, Labels, Update)>,
}

impl MetricsOut for Updates<'_> {
    fn target(&self) -> String {
        self.exp.target()
    }

    fn thread(&mut self, activity: u64) -> Labels {
        self.exp
            .thread_labels(self.pid, self.tgid, self.comm, activity)
    }

    fn other_threads(&self) -> Labels {
        self.exp.other_labels()
    }

    fn process(&mut self, activity: u64) -> Option<Labels> {
        self.exp.proc_labels(self.tgid, self.comm, activity)
    }

    fn other_processes(&self) -> Labels {
        vec![
            ("target", self.target()),
            ("tgid", OTHER.into()),
            ("comm", OTHER.into()),
        ]
    }

    fn growth(&mut self, totals: &[u64]) -> Vec<f64> {
        let last = self
            .exp
            .last_totals
            .insert(self.tgid, (totals.to_vec(), self.now))
            .map(|(t, _)| t)
            .unwrap_or_default();
        totals
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let before = last.get(i).copied().unwrap_or(0);
                t.checked_sub(before).unwrap_or(t) as f64
            })
            .collect()
    }

    fn add(&mut self, fam: Fam, labels: Labels, v: f64) {
        self.list.push((fam, labels, Update::Add(v)));
    }

    fn set(&mut self, fam: Fam, labels: Labels, v: f64) {
        self.list.push((fam, labels, Update::Set(v)));
    }

    fn observe_ns(&mut self, fam: Fam, labels: Labels, ns: u64) {
        self.list.push((fam, labels, Update::Observe(ns)));
    }

    fn add_hist(&mut self, fam: Fam, labels: Labels, hist: Log2Hist) {
        self.list.push((fam, labels, Update::Hist(Box::new(hist))));
    }
}

impl Exporter {
    /// Turn one record into metric updates.
    pub fn apply(&mut self, rec: &Record, now: u64) {
        if now >= self.next_rebalance_ns {
            if self.next_rebalance_ns != 0 {
                self.maintain(now);
            }
            self.next_rebalance_ns = now + REBALANCE_NS;
        }
        let collector = rec.collector;
        self.current = self
            .targets
            .get(collector)
            .cloned()
            .unwrap_or_else(|| "none".into());
        self.current_cgroup = rec
            .cgroup
            .as_ref()
            .map(|c| c.cgroup.clone())
            .unwrap_or_default();
        let mut m = Updates {
            exp: self,
            pid: rec.pid,
            tgid: rec.tgid,
            comm: &rec.comm,
            now,
            list: Vec::new(),
        };
        if collector != "proc_image" {
            m.add(Fam::Records, vec![("collector", collector.into())], 1.0);
        }
        rec.body.metrics(rec, &mut m);
        let updates = m.list;
        self.with(|s| {
            for (fam, labels, u) in updates {
                match u {
                    Update::Add(v) => s.add(fam, labels, now, v),
                    Update::Set(v) => s.set(fam, labels, now, v),
                    Update::Observe(ns) => s.hist(fam, labels, now).observe_ns(ns),
                    Update::Hist(h) => s.hist(fam, labels, now).merge(&h),
                }
            }
        });
    }
}
