//! Latency figures per interval, target and whole system side by side, as
//! the syscall and schedule collectors keep them (bpf/latency.bpf.h).

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;
use serde_json::json;

use crate::bpf_intf::{latency_stats, LAT_HIST_BUCKETS, LAT_SLOTS, LAT_SYSTEM, LAT_TARGET};
use crate::record::families::Fam;
use crate::record::histogram::Log2Hist;
use crate::record::{MetricsOut, Record, TraceOut};
use crate::trace;

/// Last interval's figures, system and target.
pub struct IntervalLatency {
    pub system: latency_stats,
    pub target: latency_stats,
}

/// Read and clear the pair of slots BPF filled during `interval`. Call it
/// after moving BPF on to the next interval and then
/// `wait_for_programs_in_flight()`: no program adds to the pair any more, so
/// clearing it loses nothing.
pub fn take(map: &dyn MapCore, interval: u32) -> Result<IntervalLatency> {
    let base = (interval & 1) * 2;
    Ok(IntervalLatency {
        system: take_slot(map, base + LAT_SYSTEM)?,
        target: take_slot(map, base + LAT_TARGET)?,
    })
}

/// Clear every slot (at activation: nothing of an earlier one remains).
pub fn clear(map: &dyn MapCore) -> Result<()> {
    for idx in 0..LAT_SLOTS {
        take_slot(map, idx)?;
    }
    Ok(())
}

fn take_slot(map: &dyn MapCore, idx: u32) -> Result<latency_stats> {
    let key = idx.to_ne_bytes();
    let per_cpu = map
        .lookup_percpu(&key, MapFlags::ANY)
        .context("read latency figures")?
        .unwrap_or_default();
    let mut sum = latency_stats::default();
    for bytes in &per_cpu {
        let mut s = latency_stats::default();
        if plain::copy_from_bytes(&mut s, bytes).is_ok() {
            merge(&mut sum, &s);
        }
    }
    let zeros = vec![vec![0u8; std::mem::size_of::<latency_stats>()]; per_cpu.len()];
    map.update_percpu(&key, &zeros, MapFlags::ANY)
        .context("clear latency figures")?;
    Ok(sum)
}

pub fn merge(into: &mut latency_stats, s: &latency_stats) {
    if s.count == 0 {
        return;
    }
    if into.count == 0 || s.min_ns < into.min_ns {
        into.min_ns = s.min_ns;
    }
    into.max_ns = into.max_ns.max(s.max_ns);
    into.count += s.count;
    into.sum_ns += s.sum_ns;
    for (a, b) in into.hist.iter_mut().zip(s.hist) {
        *a += b;
    }
}

pub fn avg_ns(s: &latency_stats) -> u64 {
    s.sum_ns.checked_div(s.count).unwrap_or(0)
}

/// A log2 histogram of one interval, as BPF keeps it: bucket i counts
/// latencies in [2^i, 2^(i+1)) ns, the last is open. Shown as
/// `[{"le_ns": upper bound, "count": n}]`, non-empty buckets only, the open
/// one with `le_ns: null`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buckets(pub [u64; LAT_HIST_BUCKETS as usize]);

impl Default for Buckets {
    fn default() -> Self {
        Buckets([0; LAT_HIST_BUCKETS as usize])
    }
}

impl Serialize for Buckets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Bucket {
            le_ns: Option<u64>,
            count: u64,
        }
        s.collect_seq(
            self.0
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(|(i, &count)| Bucket {
                    le_ns: (i + 1 < LAT_HIST_BUCKETS as usize).then(|| 1u64 << (i + 1)),
                    count,
                }),
        )
    }
}

/// An interval's latency, target and whole system side by side: count,
/// avg_ns, max_ns, min_ns, sum_ns of the target, the same for the system as
/// sys_*, histograms last (long). The sums and histograms fill the
/// exporter's Prometheus histograms exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub count: u64,
    pub avg_ns: u64,
    pub max_ns: u64,
    pub min_ns: u64,
    pub sum_ns: u64,
    pub sys_count: u64,
    pub sys_avg_ns: u64,
    pub sys_max_ns: u64,
    pub sys_min_ns: u64,
    pub sys_sum_ns: u64,
    pub hist: Buckets,
    pub sys_hist: Buckets,
}

impl Figures {
    pub fn of(l: &IntervalLatency) -> Self {
        Figures {
            count: l.target.count,
            avg_ns: avg_ns(&l.target),
            max_ns: l.target.max_ns,
            min_ns: l.target.min_ns,
            sum_ns: l.target.sum_ns,
            sys_count: l.system.count,
            sys_avg_ns: avg_ns(&l.system),
            sys_max_ns: l.system.max_ns,
            sys_min_ns: l.system.min_ns,
            sys_sum_ns: l.system.sum_ns,
            hist: Buckets(l.target.hist),
            sys_hist: Buckets(l.system.hist),
        }
    }

    /// Both histograms into `fam`, by scope.
    pub fn metrics(&self, fam: Fam, m: &mut dyn MetricsOut) {
        for (scope, hist, sum_ns) in [
            ("target", &self.hist, self.sum_ns),
            ("system", &self.sys_hist, self.sys_sum_ns),
        ] {
            let labels = vec![("target", m.target()), ("scope", scope.into())];
            let h = Log2Hist {
                buckets: hist.0,
                sum_s: sum_ns as f64 / 1e9,
            };
            m.add_hist(fam, labels, h);
        }
    }

    /// The averages as a counter track of the trace.
    pub fn trace(&self, rec: &Record, name: &str, t: &mut dyn TraceOut) {
        t.counter(
            rec.tgid,
            name,
            rec.ts_ns,
            json!({"target": trace::us(self.avg_ns), "system": trace::us(self.sys_avg_ns)}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(lat: &[u64]) -> latency_stats {
        let mut s = latency_stats::default();
        for &ns in lat {
            let one = latency_stats {
                count: 1,
                sum_ns: ns,
                min_ns: ns,
                max_ns: ns,
                hist: {
                    let mut h = [0; LAT_HIST_BUCKETS as usize];
                    h[(63 - ns.leading_zeros()) as usize] = 1;
                    h
                },
            };
            merge(&mut s, &one);
        }
        s
    }

    #[test]
    fn merge_keeps_min_max_and_sums() {
        let s = stats(&[300, 100, 5000]);
        assert_eq!(
            (s.count, s.sum_ns, s.min_ns, s.max_ns),
            (3, 5400, 100, 5000)
        );
        assert_eq!(avg_ns(&s), 1800);
        let mut empty = latency_stats::default();
        merge(&mut empty, &latency_stats::default());
        assert_eq!((empty.count, avg_ns(&empty)), (0, 0));
    }

    #[test]
    fn histogram_buckets_are_log2() {
        // 100 in [64,128) -> le 128; 300 in [256,512) -> le 512
        let h = serde_json::to_value(Buckets(stats(&[100, 300, 300]).hist)).unwrap();
        assert_eq!(
            h,
            json!([{"le_ns": 128, "count": 1}, {"le_ns": 512, "count": 2}])
        );
    }
}
