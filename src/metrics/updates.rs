//! What a record adds to the metrics. Each collector's module says it for
//! its own records (`Body::metrics`) through `Updates`, which knows the
//! labels: the target, the bounded thread and process sets, the cgroup.

use super::{Exporter, Fam, Labels, Log2Hist, OTHER, REBALANCE_NS};
use crate::record::Record;

pub(super) enum Update {
    Add(f64),
    Set(f64),
    Observe(u64),
    Hist(Box<Log2Hist>),
}

/// The updates one record makes, with the labels they go under.
pub struct Updates<'a> {
    exp: &'a mut Exporter,
    pid: u32,
    tgid: u32,
    comm: &'a str,
    now: u64,
    list: Vec<(Fam, Labels, Update)>,
}

impl Updates<'_> {
    /// The current target's label ("system", "pid:42", ...).
    pub fn target(&self) -> String {
        self.exp.target()
    }

    /// target, tgid, pid, comm of the record's thread, or the "other"
    /// aggregate when it is not among the busiest (`activity` ranks it).
    pub fn thread(&mut self, activity: u64) -> Labels {
        self.exp
            .thread_labels(self.pid, self.tgid, self.comm, activity)
    }

    /// The series the threads not labelled of their own sum into.
    pub fn other_threads(&self) -> Labels {
        self.exp.other_labels()
    }

    /// target, tgid, comm of the record's process, if it is among the busiest.
    pub fn process(&mut self, activity: u64) -> Option<Labels> {
        self.exp.proc_labels(self.tgid, self.comm, activity)
    }

    /// The series the processes not labelled of their own sum into.
    pub fn other_processes(&self) -> Labels {
        vec![
            ("target", self.target()),
            ("tgid", OTHER.into()),
            ("comm", OTHER.into()),
        ]
    }

    /// A counter's growth, from a process's cumulative totals: what they
    /// grew since its last record (all of them after a restart).
    pub fn growth<const N: usize>(&mut self, totals: [u64; N]) -> [f64; N] {
        let last = self
            .exp
            .last_totals
            .insert(self.tgid, (totals.to_vec(), self.now))
            .map(|(t, _)| t)
            .unwrap_or_default();
        let mut growth = [0.0; N];
        for (i, g) in growth.iter_mut().enumerate() {
            let before = last.get(i).copied().unwrap_or(0);
            *g = totals[i].checked_sub(before).unwrap_or(totals[i]) as f64;
        }
        growth
    }

    pub fn add(&mut self, fam: Fam, labels: Labels, v: f64) {
        self.list.push((fam, labels, Update::Add(v)));
    }

    pub fn set(&mut self, fam: Fam, labels: Labels, v: f64) {
        self.list.push((fam, labels, Update::Set(v)));
    }

    /// One observation of a histogram family.
    pub fn observe_ns(&mut self, fam: Fam, labels: Labels, ns: u64) {
        self.list.push((fam, labels, Update::Observe(ns)));
    }

    /// A whole interval's histogram, added to the family's.
    pub fn add_hist(&mut self, fam: Fam, labels: Labels, hist: Log2Hist) {
        self.list.push((fam, labels, Update::Hist(Box::new(hist))));
    }
}

/// Whether thread labels name a thread of its own (not the "other" sum).
pub fn labelled(labels: &Labels) -> bool {
    labels.iter().any(|(k, v)| *k == "pid" && v != OTHER)
}

/// `labels` with one more.
pub fn with_label(mut labels: Labels, k: &'static str, v: &str) -> Labels {
    labels.push((k, v.to_string()));
    labels
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
