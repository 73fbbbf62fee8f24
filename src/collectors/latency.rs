//! Latency figures per interval, target and whole system side by side, as
//! the syscall and schedule collectors keep them (bpf/latency.bpf.h).

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use serde_json::{json, Value};

use crate::bpf_intf::{latency_stats, LAT_HIST_BUCKETS, LAT_SLOTS, LAT_SYSTEM, LAT_TARGET};
use crate::output::Record;

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

/// The log2 histogram as `[{"le_ns": upper bound, "count": n}]`, non-empty
/// buckets only; the last bucket is open (`le_ns: null`).
pub fn hist_json(s: &latency_stats) -> Value {
    let buckets: Vec<Value> = s
        .hist
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| {
            let le = (i + 1 < LAT_HIST_BUCKETS as usize).then(|| 1u64 << (i + 1));
            json!({"le_ns": le, "count": n})
        })
        .collect();
    Value::Array(buckets)
}

/// count, avg_ns, max_ns, min_ns, sum_ns of the target, then the same for
/// the system as sys_*; histograms last (long). The sums and histograms
/// fill the exporter's Prometheus histograms exactly.
pub fn with_figures(rec: Record, l: &IntervalLatency) -> Record {
    rec.field("count", l.target.count)
        .field("avg_ns", avg_ns(&l.target))
        .field("max_ns", l.target.max_ns)
        .field("min_ns", l.target.min_ns)
        .field("sum_ns", l.target.sum_ns)
        .field("sys_count", l.system.count)
        .field("sys_avg_ns", avg_ns(&l.system))
        .field("sys_max_ns", l.system.max_ns)
        .field("sys_min_ns", l.system.min_ns)
        .field("sys_sum_ns", l.system.sum_ns)
        .field("hist", hist_json(&l.target))
        .field("sys_hist", hist_json(&l.system))
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
        let h = hist_json(&stats(&[100, 300, 300]));
        assert_eq!(
            h,
            json!([{"le_ns": 128, "count": 1}, {"le_ns": 512, "count": 2}])
        );
    }
}
