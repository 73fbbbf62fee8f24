/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every collector's BPF object has: the record ring buffer, the
 * per-CPU health counters, the target filter and the record header.
 * userspace finds `events` and `stats` by these names in every skeleton.
 */
#ifndef COMMON_BPF_H
#define COMMON_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "proc_image.h"

char LICENSE[] SEC("license") = "GPL";

/* Sized by proc_image before load (--ringbuf-kib). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct collector_stats);
} stats SEC(".maps");

static __always_inline struct collector_stats *this_cpu_stats(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

#define STAT_INC(field)                                          \
	do {                                                     \
		struct collector_stats *__s = this_cpu_stats();  \
		if (__s)                                         \
			__s->field++;                            \
	} while (0)

/*
 * The entry of `key` in a hash map, created from `init` when absent. NULL
 * when the map is full, and counted: an aggregate is never lost silently.
 * (Two racing creators both succeed: NOEXIST lets one write, both find it.)
 */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *init)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v)
		return v;
	bpf_map_update_elem(map, key, init, BPF_NOEXIST);
	v = bpf_map_lookup_elem(map, key);
	if (!v)
		STAT_INC(map_full);
	return v;
}

/* Reserve a record; a full ring buffer is counted, never silent. */
static __always_inline void *reserve_record(__u64 size)
{
	void *rec = bpf_ringbuf_reserve(&events, size, 0);

	if (!rec)
		STAT_INC(ringbuf_drops);
	return rec;
}

/*
 * Wake proc_image only once a quarter of the ring buffer is waiting: it
 * sweeps every ring every 50 ms anyway, and a wakeup per record would make
 * every traced context switch pay for waking the reader.
 */
static __always_inline void submit_record(void *rec)
{
	__u64 waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);

	bpf_ringbuf_submit(rec, waiting >= size / 4 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	STAT_INC(events);
}

/*
 * A record of a size known only at run time, copied from `data` (which
 * the program has built in a map value): woken up like submit_record.
 */
static __always_inline bool output_record(void *data, __u64 size)
{
	__u64 waiting = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 ring = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);

	if (bpf_ringbuf_output(&events, data, size,
			       waiting >= ring / 4 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP)) {
		STAT_INC(ringbuf_drops);
		return false;
	}
	STAT_INC(events);
	return true;
}

/* Same start time as /proc/PID/stat shows (clock ticks since boot)? */
static __always_inline bool start_matches(const struct target_filter *t,
					  struct task_struct *task)
{
	__u64 from = t->start_ticks * t->ns_per_tick, start;

	if (!t->start_ticks || !t->ns_per_tick)
		return true;
	/* start / ns_per_tick == start_ticks, without a 64-bit division */
	start = task->start_boottime;
	return start >= from && start < from + t->ns_per_tick;
}

/* struct cgroup before 6.0 kept its ancestors' ids, not pointers */
struct cgroup___ids {
	int level;
	__u64 ancestor_ids[];
} __attribute__((preserve_access_index));

/*
 * Is `task` in the target cgroup or one below it? Its default-hierarchy
 * (cgroup v2) cgroup's ancestor at the target's depth must be the target,
 * read by CO-RE from either layout (bpf_task_under_cgroup() exists only from
 * 6.5, and needs a reference to the target cgroup). Always the task the
 * event is about, never `current`.
 */
static __noinline bool in_cgroup(const struct target_filter *t, struct task_struct *task)
{
	struct cgroup *cg = BPF_CORE_READ(task, cgroups, dfl_cgrp);
	__u32 want = t->cgroup_level;
	__u64 id = 0;

	if (!cg || BPF_CORE_READ(cg, level) < (int)want || want > 1024)
		return false;
	if (bpf_core_field_exists(cg->ancestors)) {
		struct cgroup *anc = NULL;

		bpf_probe_read_kernel(&anc, sizeof(anc),
				      (void *)cg + bpf_core_field_offset(cg->ancestors) +
					      want * sizeof(void *));
		if (!anc)
			return false;
		id = BPF_CORE_READ(anc, kn, id);
	} else {
		struct cgroup___ids *old = (void *)cg;

		bpf_probe_read_kernel(&id, sizeof(id),
				      (void *)old + bpf_core_field_offset(old->ancestor_ids) +
					      want * sizeof(__u64));
	}
	return id == t->cgroup_id;
}

/*
 * Is `task` (running on this CPU, or being switched on/off it) the target?
 * The cheap pid comparison comes first; the start-time check runs only on
 * a match.
 */
static __always_inline bool is_target(const struct target_filter *t,
				      struct task_struct *task)
{
	switch (t->mode) {
	case TARGET_SYSTEM:
		return task->tgid != t->exclude_tgid;
	case TARGET_THREAD:
		return task->pid == t->pid && start_matches(t, task);
	case TARGET_TGID:
		return task->tgid == t->tgid && start_matches(t, task->group_leader);
	case TARGET_IDLE:
		return task->pid == 0 && bpf_get_smp_processor_id() == t->cpu;
	case TARGET_CGROUP:
		return task->tgid != t->exclude_tgid && in_cgroup(t, task);
	}
	return false;
}

/* The kernfs id of the task's cgroup v2 (what /proc/PID/cgroup's 0:: line names). */
static __always_inline __u64 cgroup_id_of(struct task_struct *task)
{
	return BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
}

static __always_inline void fill_hdr(struct event_hdr *hdr, struct task_struct *task,
				     __u8 collector, __u8 kind, __u64 now)
{
	hdr->ts_ns = now;
	hdr->pid = task->pid;
	hdr->tgid = task->tgid;
	bpf_probe_read_kernel_str(hdr->comm, sizeof(hdr->comm), task->comm);
	hdr->collector = collector;
	hdr->kind = kind;
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->_pad = 0;
	hdr->cgroup_id = cgroup_id_of(task);
}

#endif /* COMMON_BPF_H */
