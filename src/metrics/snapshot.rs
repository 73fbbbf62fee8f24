//! The series a scrape encodes, and their encoding.

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::record::families::{Fam, Labels};
use crate::record::histogram::Log2Hist;

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Num(f64),
    Hist(Box<Log2Hist>),
}

#[derive(Debug, Clone)]
pub(super) struct Series {
    pub(super) val: Val,
    pub(super) updated_ns: u64,
}

/// What a scrape encodes: every series of every family.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    series: BTreeMap<Fam, BTreeMap<Labels, Series>>,
}

impl Snapshot {
    pub fn get(&self, fam: Fam, labels: &[(&'static str, &str)]) -> Option<&Val> {
        let key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.series.get(&fam)?.get(&key).map(|s| &s.val)
    }

    pub fn len(&self) -> usize {
        self.series.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Series of `fam` as (labels, value).
    pub fn family(&self, fam: Fam) -> Vec<(&Labels, &Val)> {
        self.series
            .get(&fam)
            .map(|m| m.iter().map(|(l, s)| (l, &s.val)).collect())
            .unwrap_or_default()
    }

    pub(super) fn entry(
        &mut self,
        fam: Fam,
        labels: Labels,
        now: u64,
        init: impl FnOnce() -> Val,
    ) -> &mut Val {
        let s = self
            .series
            .entry(fam)
            .or_default()
            .entry(labels)
            .or_insert_with(|| Series {
                val: init(),
                updated_ns: now,
            });
        s.updated_ns = now;
        &mut s.val
    }

    pub(super) fn add(&mut self, fam: Fam, labels: Labels, now: u64, v: f64) {
        if let Val::Num(n) = self.entry(fam, labels, now, || Val::Num(0.0)) {
            *n += v;
        }
    }

    pub(super) fn set(&mut self, fam: Fam, labels: Labels, now: u64, v: f64) {
        *self.entry(fam, labels, now, || Val::Num(0.0)) = Val::Num(v);
    }

    pub(super) fn hist(&mut self, fam: Fam, labels: Labels, now: u64) -> &mut Log2Hist {
        let v = self.entry(fam, labels, now, || Val::Hist(Box::default()));
        if !matches!(v, Val::Hist(_)) {
            *v = Val::Hist(Box::default());
        }
        match v {
            Val::Hist(h) => h,
            Val::Num(_) => unreachable!("set to a histogram above"),
        }
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(Fam, &Labels, &Series) -> bool) {
        for (fam, m) in self.series.iter_mut() {
            m.retain(|l, s| keep(*fam, l, s));
        }
        self.series.retain(|_, m| !m.is_empty());
    }

    /// Encode every family through prometheus-client.
    pub(super) fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let total = self.len() + 1;
        for (fam, series) in self
            .series
            .iter()
            .map(|(f, m)| (*f, Some(m)))
            .chain([(Fam::Series, None)])
        {
            let d = fam.desc();
            let mut family = encoder.encode_descriptor(d.name, d.help, d.unit.as_ref(), d.kind)?;
            let Some(series) = series else {
                family.encode_gauge(&(total as u64))?;
                continue;
            };
            for (labels, s) in series {
                let mut m = family.encode_family(labels)?;
                match (&s.val, d.kind) {
                    (Val::Num(v), MetricType::Counter) => {
                        m.encode_counter::<NoLabelSet, f64, f64>(v, None)?
                    }
                    (Val::Num(v), _) => m.encode_gauge(v)?,
                    (Val::Hist(h), _) => m.encode_histogram::<NoLabelSet>(
                        h.sum_s,
                        h.count(),
                        &h.prometheus_buckets(),
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}
