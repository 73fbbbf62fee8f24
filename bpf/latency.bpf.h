/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Latency figures per interval, target and system side by side (struct
 * latency_stats in proc_image.h), for the collectors that measure one.
 * The including object defines `cfg` with an `interval` member first.
 * proc_image reads (and clears) a pair only after bumping the interval and
 * waiting for every program in flight, so no addition here is lost.
 */
#ifndef LATENCY_BPF_H
#define LATENCY_BPF_H

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LAT_SLOTS);
	__type(key, __u32);
	__type(value, struct latency_stats);
} latencies SEC(".maps");

/*
 * floor(log2(ns)) for ns below 2^16 (0 for 0), read from a table: most
 * latencies are that short (a syscall, a run-queue wait), and one load
 * costs less than the arithmetic below (~4 ns an event on the syscall
 * path, measured). 64 KiB of .rodata, written out by the preprocessor.
 */
#define LAT_LOG2_TABLE_BITS 16
#define LOG2_X2(b) b, b
#define LOG2_X4(b) LOG2_X2(b), LOG2_X2(b)
#define LOG2_X8(b) LOG2_X4(b), LOG2_X4(b)
#define LOG2_X16(b) LOG2_X8(b), LOG2_X8(b)
#define LOG2_X32(b) LOG2_X16(b), LOG2_X16(b)
#define LOG2_X64(b) LOG2_X32(b), LOG2_X32(b)
#define LOG2_X128(b) LOG2_X64(b), LOG2_X64(b)
#define LOG2_X256(b) LOG2_X128(b), LOG2_X128(b)
#define LOG2_X512(b) LOG2_X256(b), LOG2_X256(b)
#define LOG2_X1K(b) LOG2_X512(b), LOG2_X512(b)
#define LOG2_X2K(b) LOG2_X1K(b), LOG2_X1K(b)
#define LOG2_X4K(b) LOG2_X2K(b), LOG2_X2K(b)
#define LOG2_X8K(b) LOG2_X4K(b), LOG2_X4K(b)
#define LOG2_X16K(b) LOG2_X8K(b), LOG2_X8K(b)
#define LOG2_X32K(b) LOG2_X16K(b), LOG2_X16K(b)

static const __u8 lat_log2[1 << LAT_LOG2_TABLE_BITS] = {
	0, 0, LOG2_X2(1), LOG2_X4(2), LOG2_X8(3), LOG2_X16(4), LOG2_X32(5),
	LOG2_X64(6), LOG2_X128(7), LOG2_X256(8), LOG2_X512(9), LOG2_X1K(10),
	LOG2_X2K(11), LOG2_X4K(12), LOG2_X8K(13), LOG2_X16K(14), LOG2_X32K(15),
};

/*
 * The histogram bucket of a latency: floor(log2(ns)), the last bucket open.
 * Past the table, without branches: each step's "is v above 2^k - 1" is the
 * sign of (2^k - 1 - v). A latency's bucket changes from one event to the
 * next, and the branches of a plain log2 missed often enough to cost ~9 ns
 * an event on the syscall path (measured). The one branch here, on the
 * table's range, goes the same way for most events.
 */
static __always_inline __u32 lat_bucket(__u64 ns)
{
	__u64 v = ns, shift, b = 0;

	if (v < (1ULL << LAT_LOG2_TABLE_BITS))
		return lat_log2[v];
	if (v >> 62) /* no real latency: the sign test below needs v < 2^63 */
		return LAT_HIST_BUCKETS - 1;
	/* halve the width looked at: 32, 16, 8, 4, 2 bits, then the last one */
#pragma unroll
	for (int k = 5; k > 0; k--) {
		shift = ((((1ULL << (1 << k)) - 1) - v) >> 63) << k;
		v >>= shift;
		b += shift;
	}
	b += (1ULL - v) >> 63;
	return b < LAT_HIST_BUCKETS ? b : LAT_HIST_BUCKETS - 1;
}

/*
 * Add one latency, in histogram bucket `bucket` (lat_bucket(ns): computed
 * once for both scopes), to this interval's figures of `scope` on this CPU.
 */
static __always_inline void latency_add(__u32 interval, __u32 scope, __u64 ns, __u32 bucket)
{
	__u32 idx = (interval & 1) * 2 + scope;
	struct latency_stats *s = bpf_map_lookup_elem(&latencies, &idx);

	if (!s)
		return;
	s->count++;
	s->sum_ns += ns;
	if (s->count == 1 || ns < s->min_ns)
		s->min_ns = ns;
	if (ns > s->max_ns)
		s->max_ns = ns;
	if (bucket < LAT_HIST_BUCKETS)
		s->hist[bucket]++;
}

#endif /* LATENCY_BPF_H */
