// SPDX-License-Identifier: GPL-2.0
/*
 * futex: contended futex waits of the target, who woke them, and figures per
 * futex address and interval.
 *
 * A lock's fast path (pthread, musl, Rust std, Go's runtime alike) is an
 * atomic in user space; only a thread that must wait enters the kernel, with
 * futex(FUTEX_WAIT...), futex_waitv() or futex_wait(). So the per-syscall
 * tracepoints of those syscalls see exactly the contended waits, at no cost
 * to an uncontended lock, and unlike uprobes they see every runtime. Raw
 * sys_enter/sys_exit would run for every syscall of every task.
 *
 * Who woke a waiter: sched_waking runs in the waker's context. It counts
 * only when the waker is inside a futex wake syscall of its own (a flag in
 * its task storage between that syscall's entry and exit) for the futex the
 * woken task waits on, and the wakeup does not come from an interrupt,
 * where `current` is whatever it interrupted (a timeout's hrtimer): the
 * shared tracker's rule, bpf/waker.bpf.h.
 *
 * Per-interval figures go into the slot of the interval's parity (futex_addr_key
 * .slot); proc_image bumps the interval, waits for the programs in flight
 * (an RCU grace period), then reads and deletes last interval's entries.
 */
#include "common.bpf.h"

/* Written by proc_image (struct futex_config). */
struct futex_config cfg;

/* futex(2) operations (include/uapi/linux/futex.h) */
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1
#define FUTEX_REQUEUE 3
#define FUTEX_CMP_REQUEUE 4
#define FUTEX_WAKE_OP 5
#define FUTEX_LOCK_PI 6
#define FUTEX_UNLOCK_PI 7
#define FUTEX_WAIT_BITSET 9
#define FUTEX_WAKE_BITSET 10
#define FUTEX_WAIT_REQUEUE_PI 11
#define FUTEX_CMP_REQUEUE_PI 12
#define FUTEX_LOCK_PI2 13
#define FUTEX_CMD_MASK 127 /* without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME */

#define MAX_FUTEXES 16384    /* addresses x 2 slots */
#define MAX_PARTS 32768      /* (address, thread, role) x 2 slots */
#define MAX_WAITING 16384

/* Where a thread is in the futex syscalls, and who woke its wait. */
struct futex_task {
	__u64 enter_ns;   /* the wait's entry; 0 = not in a wait we saw enter */
	__u64 uaddr;      /* the wait's (or wake's) futex */
	__u64 uaddr2;     /* a wake's second futex (requeue, wake_op) */
	__u64 waitv;      /* futex_waitv: the user array of waiters */
	__u64 wake_ns;    /* when a futex wake woke the wait */
	__u32 waker_pid;  /* 0 = none */
	__u32 waker_tgid;
	__u8 waker_comm[PI_COMM_LEN];
	__u32 generation;
	__u8 op;          /* enum futex_op_kind of the wait */
	__u8 in_wait;     /* between a wait's entry and exit */
	__u8 in_wake;     /* between a wake's entry and exit */
	__u8 of_target;   /* the wait is a target thread's, decided at entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct futex_task);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FUTEXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct futex_addr_key);
	__type(value, struct futex_figures);
} futexes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PARTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct futex_part_key);
	__type(value, struct futex_part);
} parts SEC(".maps");

/*
 * Target threads waiting now, per (address, process); slot 0. An LRU: an
 * address nobody waits on any more ages out instead of filling the map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_WAITING);
	__type(key, struct futex_addr_key);
	__type(value, __s64);
} waiting SEC(".maps");

/* The interval, read once per program run (the compiler may not re-read it). */
static __always_inline __u32 this_interval(void)
{
	return *(volatile __u32 *)&cfg.interval;
}

static __always_inline void atomic_max(__u64 *at, __u64 v)
{
	__u64 old = *at;

	/* bounded: another CPU can only raise it */
	for (int i = 0; i < 8 && v > old; i++) {
		__u64 seen = __sync_val_compare_and_swap(at, old, v);

		if (seen == old)
			break;
		old = seen;
	}
}

static __always_inline struct futex_figures *figures(__u64 uaddr, __u32 tgid, __u32 interval)
{
	struct futex_addr_key key = { .uaddr = uaddr, .tgid = tgid, .slot = interval & 1 };
	struct futex_figures zero = {};

	return lookup_or_init(&futexes, &key, &zero);
}

/* One more wait of `pid` (role waiter) or wakeup by it (role waker) on an address. */
static __always_inline void count_part(__u64 uaddr, __u32 tgid, __u32 interval, __u32 role,
				       __u32 pid, __u32 own_tgid, const void *comm)
{
	struct futex_part_key key = {
		.uaddr = uaddr, .tgid = tgid, .pid = pid, .slot = interval & 1, .role = role,
	};
	struct futex_part *p = bpf_map_lookup_elem(&parts, &key), fresh = {};

	if (!p) {
		fresh.tgid = own_tgid;
		bpf_probe_read_kernel_str(fresh.comm, sizeof(fresh.comm), comm);
		p = lookup_or_init(&parts, &key, &fresh);
		if (!p)
			return;
	}
	__sync_fetch_and_add(&p->count, 1);
}

static __always_inline __u8 wait_kind(__u32 cmd)
{
	switch (cmd) {
	case FUTEX_WAIT: return FUTEX_K_WAIT;
	case FUTEX_WAIT_BITSET: return FUTEX_K_WAIT_BITSET;
	case FUTEX_LOCK_PI: return FUTEX_K_LOCK_PI;
	case FUTEX_LOCK_PI2: return FUTEX_K_LOCK_PI2;
	case FUTEX_WAIT_REQUEUE_PI: return FUTEX_K_WAIT_REQUEUE_PI;
	}
	return 0;
}

static __always_inline __u8 wake_kind(__u32 cmd)
{
	switch (cmd) {
	case FUTEX_WAKE: return FUTEX_K_WAKE;
	case FUTEX_WAKE_BITSET: return FUTEX_K_WAKE_BITSET;
	case FUTEX_WAKE_OP: return FUTEX_K_WAKE_OP;
	case FUTEX_REQUEUE: return FUTEX_K_REQUEUE;
	case FUTEX_CMP_REQUEUE: return FUTEX_K_CMP_REQUEUE;
	case FUTEX_CMP_REQUEUE_PI: return FUTEX_K_CMP_REQUEUE_PI;
	case FUTEX_UNLOCK_PI: return FUTEX_K_UNLOCK_PI;
	}
	return 0;
}

static __always_inline void wait_enter(__u8 op, __u64 uaddr, __u64 waitv)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct futex_addr_key wkey = {};
	struct futex_figures *f;
	struct futex_task *t;
	__s64 *n, one = 1, now;

	t = bpf_task_storage_get(&tasks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t) {
		STAT_INC(no_task_state);
		return;
	}
	t->enter_ns = bpf_ktime_get_ns();
	t->uaddr = uaddr;
	t->uaddr2 = 0;
	t->waitv = waitv;
	t->op = op;
	t->in_wait = 1;
	t->in_wake = 0;
	t->waker_pid = 0;
	t->wake_ns = 0;
	t->generation = cfg.target.generation;
	t->of_target = is_target(&cfg.target, task);
	if (!t->of_target || !uaddr)
		return;
	/* how many of the process's threads wait on it now */
	wkey.uaddr = uaddr;
	wkey.tgid = task->tgid;
	n = bpf_map_lookup_elem(&waiting, &wkey);
	if (n) {
		now = __sync_add_and_fetch(n, 1);
	} else {
		bpf_map_update_elem(&waiting, &wkey, &one, BPF_NOEXIST);
		now = 1;
	}
	f = figures(uaddr, task->tgid, this_interval());
	if (f && now > 0)
		atomic_max(&f->waiters_max, now);
}

static __always_inline void wake_enter(__u8 op, __u64 uaddr, __u64 uaddr2)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct futex_figures *f;
	struct futex_task *t;

	t = bpf_task_storage_get(&tasks, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t) {
		STAT_INC(no_task_state);
		return;
	}
	t->uaddr = uaddr;
	t->uaddr2 = uaddr2;
	t->in_wake = 1;
	t->in_wait = 0;
	t->enter_ns = 0;
	t->generation = cfg.target.generation;
	if (!is_target(&cfg.target, task))
		return;
	f = figures(uaddr, task->tgid, this_interval());
	if (f)
		__sync_fetch_and_add(&f->wake_calls, 1);
}

/* A wait returns: its figures, and its record if long enough. */
static __always_inline void wait_exit(long ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 interval = this_interval();
	struct futex_wait_event *e;
	struct futex_addr_key wkey = {};
	struct futex_figures *f;
	struct futex_task *t;
	__u64 uaddr, wait;
	__s64 *n, waiters = 1;

	t = bpf_task_storage_get(&tasks, task, 0, 0);
	if (!t || !t->in_wait)
		return;
	t->in_wait = 0;
	if (!t->enter_ns || t->generation != cfg.target.generation || !t->of_target)
		return;
	wait = bpf_ktime_get_ns() - t->enter_ns;
	t->enter_ns = 0;
	uaddr = t->uaddr;

	/* waiting since an earlier interval: it was one of this one's waiters too */
	wkey.uaddr = uaddr;
	wkey.tgid = task->tgid;
	n = bpf_map_lookup_elem(&waiting, &wkey);
	if (n && *n > 0) {
		waiters = __sync_fetch_and_add(n, -1);
		if (waiters < 1)
			waiters = 1;
	}

	/* futex_waitv returns the index of the futex that woke it */
	if (t->op == FUTEX_K_WAITV && t->waitv && ret >= 0 && ret < 128) {
		__u64 woken = 0;

		/* struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 reserved; } */
		if (!bpf_probe_read_user(&woken, sizeof(woken), (void *)(t->waitv + ret * 24 + 8)))
			uaddr = woken;
	}

	f = figures(uaddr, task->tgid, interval);
	/*
	 * A futex wake makes the wait return 0 (futex_waitv: an index). An
	 * interrupt's wakeup (a timeout, a signal sent from one) makes it fail:
	 * whatever task the interrupt found in a futex wake is not its waker.
	 */
	if (ret < 0)
		t->waker_pid = 0;
	if (f) {
		__sync_fetch_and_add(&f->waits, 1);
		__sync_fetch_and_add(&f->wait_total_ns, wait);
		atomic_max(&f->wait_max_ns, wait);
		if (t->waker_pid)
			__sync_fetch_and_add(&f->wakes, 1);
		atomic_max(&f->waiters_max, waiters);
	}
	count_part(uaddr, task->tgid, interval, FUTEX_WAITER, task->pid, task->tgid, task->comm);
	if (t->waker_pid)
		count_part(uaddr, task->tgid, interval, FUTEX_WAKER, t->waker_pid, t->waker_tgid,
			   t->waker_comm);

	if (wait < cfg.min_ns)
		return;
	e = reserve_record(sizeof(*e));
	if (!e)
		return;
	fill_hdr(&e->hdr, task, PI_FUTEX, FUTEX_RECORD_WAIT, bpf_ktime_get_ns());
	e->uaddr = uaddr;
	e->wait_ns = wait;
	e->wake_ns = t->waker_pid ? t->wake_ns : 0;
	e->ret = ret;
	e->waker_pid = t->waker_pid;
	e->waker_tgid = t->waker_pid ? t->waker_tgid : 0;
	__builtin_memcpy(e->waker_comm, t->waker_comm, sizeof(e->waker_comm));
	if (!t->waker_pid)
		__builtin_memset(e->waker_comm, 0, sizeof(e->waker_comm));
	e->op = t->op;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	submit_record(e);
}

static __always_inline void wake_exit(void)
{
	struct futex_task *t = bpf_task_storage_get(&tasks, bpf_get_current_task_btf(), 0, 0);

	if (t)
		t->in_wake = 0;
}

SEC("tracepoint/syscalls/sys_enter_futex")
int handle__enter_futex(struct trace_event_raw_sys_enter *ctx)
{
	__u32 cmd = ctx->args[1] & FUTEX_CMD_MASK;
	__u8 k = wait_kind(cmd);

	if (k) {
		wait_enter(k, ctx->args[0], 0);
		return 0;
	}
	k = wake_kind(cmd);
	if (k)
		wake_enter(k, ctx->args[0], ctx->args[4]);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex")
int handle__exit_futex(struct trace_event_raw_sys_exit *ctx)
{
	wait_exit(ctx->ret);
	wake_exit();
	return 0;
}

/* futex_waitv(waiters, nr_futexes, flags, timeout, clockid), 5.16+ */
SEC("tracepoint/syscalls/sys_enter_futex_waitv")
int handle__enter_futex_waitv(struct trace_event_raw_sys_enter *ctx)
{
	__u64 first = 0;

	/* the first futex stands for the wait until the return says which woke it */
	bpf_probe_read_user(&first, sizeof(first), (void *)(ctx->args[0] + 8));
	wait_enter(FUTEX_K_WAITV, first, ctx->args[0]);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex_waitv")
int handle__exit_futex_waitv(struct trace_event_raw_sys_exit *ctx)
{
	wait_exit(ctx->ret);
	return 0;
}

/* futex_wait(uaddr, val, mask, flags, timeout, clockid), 6.7+ */
SEC("tracepoint/syscalls/sys_enter_futex_wait")
int handle__enter_futex_wait(struct trace_event_raw_sys_enter *ctx)
{
	wait_enter(FUTEX_K_FUTEX_WAIT, ctx->args[0], 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex_wait")
int handle__exit_futex_wait(struct trace_event_raw_sys_exit *ctx)
{
	wait_exit(ctx->ret);
	return 0;
}

/* futex_wake(uaddr, mask, nr, flags), 6.7+ */
SEC("tracepoint/syscalls/sys_enter_futex_wake")
int handle__enter_futex_wake(struct trace_event_raw_sys_enter *ctx)
{
	wake_enter(FUTEX_K_FUTEX_WAKE, ctx->args[0], 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex_wake")
int handle__exit_futex_wake(struct trace_event_raw_sys_exit *ctx)
{
	wake_exit();
	return 0;
}

/* futex_requeue(waiters[2], flags, nr_wake, nr_requeue), 6.7+ */
SEC("tracepoint/syscalls/sys_enter_futex_requeue")
int handle__enter_futex_requeue(struct trace_event_raw_sys_enter *ctx)
{
	__u64 a[2] = {};

	/* two struct futex_waitv: the futex woken from, the one requeued to */
	bpf_probe_read_user(&a[0], sizeof(a[0]), (void *)(ctx->args[0] + 8));
	bpf_probe_read_user(&a[1], sizeof(a[1]), (void *)(ctx->args[0] + 24 + 8));
	wake_enter(FUTEX_K_FUTEX_REQUEUE, a[0], a[1]);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex_requeue")
int handle__exit_futex_requeue(struct trace_event_raw_sys_exit *ctx)
{
	wake_exit();
	return 0;
}

/*
 * The waker's side (bpf/waker.bpf.h runs it for every wakeup in the
 * system, from task context only): the cheap checks (is `current` in a
 * futex wake at all) come first.
 */
static __always_inline void *wakeup_wanted(struct task_struct *cur, struct task_struct *p)
{
	struct futex_task *w, *t;

	w = bpf_task_storage_get(&tasks, cur, 0, 0);
	if (!w || !w->in_wake || w->generation != cfg.target.generation)
		return NULL;
	t = bpf_task_storage_get(&tasks, p, 0, 0);
	if (!t || !t->in_wait || !t->of_target || t->generation != cfg.target.generation)
		return NULL;
	/*
	 * The wake is for the futex the woken thread waits on (futex_waitv
	 * waits on several: not checked). An interrupt's wakeup that came in
	 * while `current` was inside a wake of another futex is not this wake.
	 */
	if (!t->waitv && t->uaddr != w->uaddr && t->uaddr != w->uaddr2)
		return NULL;
	return t;
}

static __always_inline void wakeup_seen(void *ctx, void *state, struct task_struct *cur,
					struct task_struct *p)
{
	struct futex_task *t = state;

	t->waker_pid = cur->pid;
	t->waker_tgid = cur->tgid;
	bpf_probe_read_kernel_str(t->waker_comm, sizeof(t->waker_comm), cur->comm);
	t->wake_ns = bpf_ktime_get_ns();
}

#include "waker.bpf.h"
