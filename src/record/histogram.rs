//! The log2 histogram of the BPF side, as a Prometheus histogram.

use crate::bpf_intf::LAT_HIST_BUCKETS;

const BUCKETS: usize = LAT_HIST_BUCKETS as usize;

/// A log2 latency histogram, the layout the BPF side keeps: bucket i counts
/// latencies in [2^i, 2^(i+1)) ns, the last bucket is open.
#[derive(Debug, Clone, PartialEq)]
pub struct Log2Hist {
    pub buckets: [u64; BUCKETS],
    pub sum_s: f64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Log2Hist {
            buckets: [0; BUCKETS],
            sum_s: 0.0,
        }
    }
}

impl Log2Hist {
    pub fn observe_ns(&mut self, ns: u64) {
        let b = (63 - ns.max(1).leading_zeros()) as usize;
        self.buckets[b.min(BUCKETS - 1)] += 1;
        self.sum_s += ns as f64 / 1e9;
    }

    /// Add another histogram of the same layout (an interval's).
    pub fn merge(&mut self, other: &Log2Hist) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_s += other.sum_s;
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Prometheus buckets (upper bound in seconds, count in the bucket):
    /// bucket i holds whole nanoseconds up to 2^(i+1) - 1, so that is its
    /// inclusive bound `le`, exactly; the last is +Inf.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let le = if i + 1 == BUCKETS {
                    f64::INFINITY
                } else {
                    ((1u64 << (i + 1)) - 1) as f64 / 1e9
                };
                (le, n)
            })
            .collect()
    }
}
