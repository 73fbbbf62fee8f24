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

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

/* Add one latency to this interval's figures of `scope` on this CPU. */
static __always_inline void latency_add(__u32 interval, __u32 scope, __u64 ns)
{
	__u32 idx = (interval & 1) * 2 + scope;
	struct latency_stats *s = bpf_map_lookup_elem(&latencies, &idx);
	__u32 b;

	if (!s)
		return;
	s->count++;
	s->sum_ns += ns;
	if (s->count == 1 || ns < s->min_ns)
		s->min_ns = ns;
	if (ns > s->max_ns)
		s->max_ns = ns;
	b = log2_u64(ns);
	if (b >= LAT_HIST_BUCKETS)
		b = LAT_HIST_BUCKETS - 1;
	s->hist[b]++;
}

#endif /* LATENCY_BPF_H */
