// SPDX-License-Identifier: GPL-2.0
/*
 * lock: pthread mutex, rwlock and spinlock intervals of the target, from
 * uprobes on the C library its process maps. proc_image attaches them with
 * the target's tgid as the perf event's pid, so the kernel runs these
 * programs only for tasks using that process's mm; is_target() below narrows
 * it to the traced thread (-p) and guards against a recycled pid.
 *
 * Forked children: fork copies the parent's text pages, breakpoints
 * included, but the uprobe's perf filter matches on the mm. In a child the
 * first hit of each probe finds no consumer for its mm, so the kernel
 * removes that breakpoint from the child (UPROBE_HANDLER_REMOVE) without
 * running these programs. A child that execs starts with a clean mm.
 *
 * Anchors: that filter compares the mm of the perf event's own task. When
 * that task exits (a main thread that calls pthread_exit() while its
 * workers go on), its mm is gone and the next hit in the process removes
 * the breakpoint. So proc_image attaches the probe set to two live threads
 * of the target ("anchors"), and attaches one more as soon as one of them
 * exits (handle__thread_exit) or, while it has fewer than two, as soon as
 * the target starts a thread (handle__new_thread). Each set runs these
 * programs once per hit, the newest set first; repeat_of_hit() keeps the
 * first run of a hit and drops the others.
 *
 * Nested calls: musl's lock functions call each other (pthread_mutex_lock
 * -> pthread_mutex_timedlock -> pthread_mutex_trylock, all probed). A call
 * for a lock this thread already has a call in flight for is an inner
 * call: it is tracked (its return pairs with it) but never a record.
 *
 * Bookkeeping, so nested, recursive and cross-thread use cannot pair the
 * wrong calls:
 *   in_flight  per thread (task storage), a stack of lock calls between
 *              entry and return (a timed lock may call a probed one inside);
 *   holds      per (tgid, holder thread, lock), a stack of LOCK_HOLD_DEPTH
 *              acquisitions: a recursive mutex's inner unlock closes the
 *              inner hold;
 *   lock_state per (tgid, lock), how many readers / writers hold it: tells
 *              a contended request, and lets a read hold released by another
 *              thread (glibc allows it) be counted instead of misattributed.
 * holds and lock_state are LRU maps whose entries stay when a lock is free:
 * a lock taken again (the common case) costs lookups only, no insert and
 * delete per acquisition. What the LRU evicts first are idle entries; a
 * hold evicted under pressure shows as an unmatched unlock, not as a lie.
 * An unlock with no recorded hold (taken before tracing began, or a read
 * hold of another thread) becomes a LOCK_UNMATCHED record, never a hold.
 */
#include "common.bpf.h"

/* Written by proc_image (struct lock_config). */
struct lock_config cfg;
/*
 * Written by proc_image: the oldest probe set still attached (its seq), set
 * before it lets older ones go. A call whose entry only older sets saw can
 * get no return run once they are gone (see drop_stale).
 */
__u32 oldest_live_seq;
/*
 * Written by proc_image: one more after each window in which no probed
 * thread was alive (see push_hold).
 */
__u32 holds_epoch;

/*
 * The uprobes fire only in the target's mm (see above), and a recycled pid
 * gets a new mm the probes are not in, so the pid is all there is left to
 * check: cheaper than is_target()'s start-time test, on a path taken at
 * every lock call.
 */
static __always_inline bool in_target(struct task_struct *task)
{
	if (cfg.target.mode == TARGET_TGID)
		return task->tgid == cfg.target.tgid;
	if (cfg.target.mode == TARGET_THREAD)
		return task->pid == cfg.target.pid;
	return false;
}

#define EBUSY 16
#define EOWNERDEAD 130
#define MAX_HOLDS 16384
/* lock_request.flags beyond LOCK_F_*: an inner call (see above) */
#define REQ_INNER 0x80
/* lock_hold.flags beyond LOCK_F_*: acquired with EOWNERDEAD */
#define HOLD_OWNER_DEAD 0x40

struct lock_request {
	__u64 lock_addr;
	__u64 request_ns;
	__u64 sp;   /* at entry: the return address's slot */
	__u32 cookie;
	__u32 seq;  /* the newest probe set that saw the entry */
	__u8 flags; /* LOCK_F_* known at entry, REQ_INNER */
	__u8 _pad[7];
};

/* The last probe run on a thread (see repeat_of_hit). */
struct last_hit {
	__u64 sp;
	__u64 arg;
	__u32 probe; /* cookie bits 0..31: which probe of a set */
	__u32 seq;   /* which set */
};

struct in_flight {
	__u32 generation;
	__u32 depth;
	struct lock_request req[LOCK_HOLD_DEPTH];
	/* pthread_spin_lock spinning since spin.request_ns (see handle__spin_attempt) */
	struct lock_request spin;
	struct last_hit last;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct in_flight);
} in_flight SEC(".maps");

struct lock_hold_key {
	__u32 tgid;
	__u32 holder;
	__u64 lock_addr;
};

struct lock_hold {
	__u32 depth;    /* holds kept below */
	__u32 overflow; /* deeper recursive holds, counted only */
	__u64 request_ns[LOCK_HOLD_DEPTH];
	__u64 acquire_ns[LOCK_HOLD_DEPTH];
	__u8 type[LOCK_HOLD_DEPTH];
	__u8 op[LOCK_HOLD_DEPTH];
	__u8 flags[LOCK_HOLD_DEPTH];
	__u32 epoch;    /* holds_epoch at the last push */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_HOLDS);
	__type(key, struct lock_hold_key);
	__type(value, struct lock_hold);
} holds SEC(".maps");

struct lock_state_key {
	__u32 tgid;
	__u32 _pad;
	__u64 lock_addr;
};

/*
 * Updated by every CPU at once: atomic adds only (clang 14 emits no
 * fetching atomics for BPF, so no compare-and-swap). An unlock subtracts
 * only what its own recorded hold added, so the counts stay right; signed,
 * so an entry the LRU evicted under a hold cannot wrap to "held forever".
 */
struct lock_state {
	__s32 readers;
	__s32 writers; /* mutex, spinlock and rwlock write holds */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_HOLDS);
	__type(key, struct lock_state_key);
	__type(value, struct lock_state);
} lock_state SEC(".maps");

static __always_inline struct lock_state *state_of(__u32 tgid, __u64 addr, bool create)
{
	struct lock_state_key key = { .tgid = tgid, .lock_addr = addr };
	struct lock_state zero = {};

	if (!create)
		return bpf_map_lookup_elem(&lock_state, &key);
	return lookup_or_init(&lock_state, &key, &zero);
}

static __always_inline struct in_flight *flight_of(struct task_struct *task)
{
	struct in_flight *f;

	f = bpf_task_storage_get(&in_flight, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!f) {
		STAT_INC(no_task_state);
		return 0;
	}
	/* calls of an earlier activation, or returns we never saw: start over */
	if (f->generation != cfg.target.generation) {
		f->generation = cfg.target.generation;
		f->depth = 0;
		f->spin.request_ns = 0;
	}
	return f;
}

/*
 * Is this run a repeat of the hit the previous run on this thread handled?
 * Every anchor's probe set runs the program for each hit, newest set (the
 * highest seq in the cookie) first, with the same registers. So a run is a
 * repeat when the run just before it on this thread was the same probe with
 * the same stack pointer and argument, from a newer set. A new hit starts
 * over from the newest set still attached, which is never older than the
 * last set of the hit before (sets only come newer, and one whose thread
 * exited does not come back), so it is never taken for a repeat.
 */
static __always_inline bool repeat_of_hit(struct in_flight *f, struct pt_regs *ctx,
					  __u64 cookie, __u64 arg)
{
	__u32 probe = (__u32)cookie, seq = cookie >> LOCK_COOKIE_SEQ_SHIFT;
	__u64 sp = PT_REGS_SP(ctx);
	bool repeat = f->last.probe == probe && f->last.sp == sp && f->last.arg == arg &&
		      f->last.seq > seq;

	f->last.probe = probe;
	f->last.sp = sp;
	f->last.arg = arg;
	f->last.seq = seq;
	return repeat;
}

/* What a lock record says beyond its header (see struct lock_event). */
struct lock_fields {
	__u64 lock_addr;
	__u64 request_ns;
	__u64 acquire_ns;
	__u64 release_ns;
	__s32 ret;
	__u32 aux;
	__u8 lock_type;
	__u8 op;
	__u8 flags;
};

static __always_inline void emit(struct task_struct *task, __u8 kind, __u64 now,
				 const struct lock_fields *f)
{
	struct lock_event *e = reserve_record(sizeof(*e));

	if (!e)
		return;
	fill_hdr(&e->hdr, task, PI_LOCK, kind, now);
	e->lock_addr = f->lock_addr;
	e->request_ns = f->request_ns;
	e->acquire_ns = f->acquire_ns;
	e->release_ns = f->release_ns;
	e->ret = f->ret;
	e->aux = f->aux;
	e->lock_type = f->lock_type;
	e->op = f->op;
	e->flags = f->flags;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	/*
	 * No wakeup: proc_image sweeps the ring every 50 ms, and uprobes bound
	 * the rate (~20 us per traced lock/unlock pair) far below what fills
	 * the ring in that time. Saves the ring queries of submit_record().
	 */
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	STAT_INC(events);
}

/*
 * Is the lock held by another thread? A recursive mutex taken again by its
 * holder is not contended. Readers share: a read request waits for writers.
 */
static __always_inline bool held_by_others(struct task_struct *task, __u64 addr,
					   struct lock_state *s, __u8 type)
{
	struct lock_hold_key key = { .tgid = task->tgid, .holder = task->pid, .lock_addr = addr };
	struct lock_hold *h = bpf_map_lookup_elem(&holds, &key);
	__s32 own = h ? h->depth + h->overflow : 0;

	if (type == LOCK_RWLOCK_READ)
		return s->writers > own;
	return s->writers + s->readers > own;
}

/*
 * How many of this thread's calls in flight can still return. A call whose
 * return run never comes (its probe sets were detached while it waited for
 * the lock) would stay on the stack, and every later call for that lock
 * would pass for an inner call of it and never be a record. A call is over
 * when the stack is back above its frame (a call from inside it, or a tail
 * call, has its stack pointer at or below its own), or when no probe set as
 * old as the newest that saw its entry is left to run its return (a set's
 * return probe is attached before its entry probe, so a set that saw an
 * entry runs its return unless it is detached).
 */
static __always_inline __u32 drop_stale(struct in_flight *f, __u64 sp)
{
	__u32 i, live = f->depth;

	for (i = 0; i < LOCK_HOLD_DEPTH; i++) {
		struct lock_request *r = &f->req[i];

		if (i < live && (sp > r->sp || r->seq < oldest_live_seq))
			live = i;
	}
	return live;
}

/* Entry of a lock / trylock / timedlock call. */
SEC("uprobe")
int BPF_UPROBE(handle__lock_enter, void *lock)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 addr = (__u64)lock;
	struct lock_state *s;
	struct in_flight *f;
	struct lock_request *r;
	__u8 flags = 0;
	__u32 i;

	if (!in_target(task))
		return 0;
	f = flight_of(task);
	if (!f || repeat_of_hit(f, ctx, cookie, addr))
		return 0;
	if (f->depth >= LOCK_HOLD_DEPTH)
		f->depth = 0; /* returns we never saw */
	f->depth = drop_stale(f, PT_REGS_SP(ctx));
	for (i = 0; i < LOCK_HOLD_DEPTH; i++) {
		if (i < f->depth && f->req[i].lock_addr == addr)
			flags |= REQ_INNER;
	}
	s = state_of(task->tgid, addr, false);
	if (!(flags & REQ_INNER) && s && (s->writers > 0 || s->readers > 0) &&
	    held_by_others(task, addr, s, cookie & 0xff))
		flags |= LOCK_F_CONTENDED;
	r = &f->req[f->depth & (LOCK_HOLD_DEPTH - 1)];
	r->lock_addr = addr;
	r->cookie = cookie;
	r->seq = cookie >> LOCK_COOKIE_SEQ_SHIFT;
	r->sp = PT_REGS_SP(ctx);
	r->flags = flags;
	r->request_ns = bpf_ktime_get_ns();
	f->depth++;
	return 0;
}

static __always_inline void push_hold(struct task_struct *task, struct lock_request *r,
				      __u8 type, __u8 op, __u64 now)
{
	struct lock_hold_key key = { .tgid = task->tgid, .holder = task->pid, .lock_addr = r->lock_addr };
	struct lock_state *s;
	struct lock_hold *h;
	__u32 i;

	h = lookup_or_init(&holds, &key, &(struct lock_hold){});
	if (!h)
		return;
	s = state_of(task->tgid, r->lock_addr, true);
	if (s) {
		if (type == LOCK_RWLOCK_READ)
			__sync_fetch_and_add(&s->readers, 1);
		else
			__sync_fetch_and_add(&s->writers, 1);
	}
	if (h->depth >= LOCK_HOLD_DEPTH || h->overflow) {
		if (h->epoch == holds_epoch) {
			h->overflow++;
			return;
		}
		/*
		 * A full stack pushed before a window without probes: its holds
		 * are likely ones whose unlock was missed then. Kept, they would
		 * make this and every later hold a deeper recursive one, never
		 * a record: they go (what they added to lock_state stays: others'
		 * requests may pass for contended, as after any missed unlock).
		 */
		h->depth = 0;
		h->overflow = 0;
	}
	h->epoch = holds_epoch;
	i = h->depth & (LOCK_HOLD_DEPTH - 1);
	h->request_ns[i] = r->request_ns;
	h->acquire_ns[i] = now;
	h->type[i] = type;
	h->op[i] = op;
	h->flags[i] = r->flags;
	h->depth++;
}

/* Return of a lock / trylock / timedlock call. */
SEC("uretprobe")
int BPF_URETPROBE(handle__lock_exit, int ret)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 now = bpf_ktime_get_ns();
	struct in_flight *f;
	struct lock_request r;
	struct lock_state *s;
	__u8 type, op;

	if (!in_target(task))
		return 0;
	f = bpf_task_storage_get(&in_flight, task, 0, 0);
	if (!f || f->generation != cfg.target.generation)
		return 0;
	if (repeat_of_hit(f, ctx, bpf_get_attach_cookie(ctx), (__u64)ret) || !f->depth)
		return 0;
	f->depth--;
	r = f->req[f->depth & (LOCK_HOLD_DEPTH - 1)];
	if (r.flags & REQ_INNER)
		return 0; /* the outer call's return tells */
	type = r.cookie & 0xff;
	op = (r.cookie >> 8) & 0xff;

	if (type == LOCK_MUTEX && ret == EOWNERDEAD) {
		/*
		 * a robust mutex whose owner died holding it: acquired all the
		 * same, and the dead owner's hold is gone: count from scratch
		 */
		s = state_of(task->tgid, r.lock_addr, false);
		if (s) {
			s->readers = 0;
			s->writers = 0;
		}
		r.flags |= HOLD_OWNER_DEAD;
		push_hold(task, &r, type, op, now);
		return 0;
	}
	if (ret == 0) {
		push_hold(task, &r, type, op, now);
		return 0;
	}
	/* a failed try found the lock held */
	if (ret == EBUSY)
		r.flags |= LOCK_F_CONTENDED;
	emit(task, LOCK_FAILED, now,
	     &(struct lock_fields){ .lock_addr = r.lock_addr, .request_ns = r.request_ns,
				    .acquire_ns = now, .ret = ret, .lock_type = type,
				    .op = op, .flags = r.flags });
	return 0;
}

/*
 * x86 uprobes refuse a lock-prefixed first instruction, and glibc's
 * pthread_spin_lock begins with `lock decl (%rdi); jne spin`. So proc_image
 * probes the jne instead: it runs after every attempt, and ZF tells whether
 * the attempt took the lock. The first failed attempt is the request; the
 * successful one is the acquisition (no uretprobe needed).
 */
#ifdef __TARGET_ARCH_x86
#define X86_EFLAGS_ZF 0x40
#define SPIN_ATTEMPT_FAILED(ctx) (!((ctx)->flags & X86_EFLAGS_ZF))
#else
/* elsewhere pthread_spin_lock is probed at entry and return like the other
 * lock calls (collectors/lock/library.rs): this program is never attached */
#define SPIN_ATTEMPT_FAILED(ctx) 0
#endif

SEC("uprobe")
int BPF_UPROBE(handle__spin_attempt, void *lock)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 now = bpf_ktime_get_ns(), addr = (__u64)lock;
	struct lock_request r = {};
	struct in_flight *f;

	if (!in_target(task))
		return 0;
	f = flight_of(task);
	if (!f || repeat_of_hit(f, ctx, bpf_get_attach_cookie(ctx), addr))
		return 0;
	if (SPIN_ATTEMPT_FAILED(ctx)) {
		/* held by someone: spinning from now, unless already */
		if (!f->spin.request_ns || f->spin.lock_addr != addr) {
			f->spin.lock_addr = addr;
			f->spin.request_ns = now;
		}
		return 0;
	}
	r.lock_addr = addr;
	r.request_ns = now;
	if (f->spin.request_ns && f->spin.lock_addr == addr) {
		r.request_ns = f->spin.request_ns;
		r.flags = LOCK_F_CONTENDED;
	}
	f->spin.request_ns = 0;
	push_hold(task, &r, LOCK_SPINLOCK, LOCK_OP_LOCK, now);
	return 0;
}

/* Entry of an unlock call; the cookie is the lock type (LOCK_RWLOCK: either side). */
SEC("uprobe")
int BPF_UPROBE(handle__unlock, void *lock)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u8 cookie_type = cookie & 0xff;
	__u64 now = bpf_ktime_get_ns(), addr = (__u64)lock;
	__u32 tgid = task->tgid;
	struct lock_hold_key key = { .tgid = tgid, .holder = task->pid, .lock_addr = addr };
	struct lock_state *s;
	struct lock_hold *h;
	struct in_flight *f;
	__s32 left;
	__u8 type;
	__u32 i;

	if (!in_target(task))
		return 0;
	f = flight_of(task);
	if (!f || repeat_of_hit(f, ctx, cookie, addr))
		return 0;
	s = state_of(tgid, addr, false);
	h = bpf_map_lookup_elem(&holds, &key);
	if (h && (h->depth || h->overflow)) {
		if (h->overflow) {
			/* the innermost holds were too deep to keep: counted only */
			h->overflow--;
			if (s)
				__sync_fetch_and_add(s->writers > 0 ? &s->writers : &s->readers, -1);
			return 0;
		}
		h->depth--;
		i = h->depth & (LOCK_HOLD_DEPTH - 1);
		type = h->type[i];
		if (s)
			__sync_fetch_and_add(type == LOCK_RWLOCK_READ ? &s->readers : &s->writers, -1);
		emit(task, LOCK_RELEASED, now,
		     &(struct lock_fields){
			     .lock_addr = addr,
			     .request_ns = h->request_ns[i],
			     .acquire_ns = h->acquire_ns[i],
			     .release_ns = now,
			     .ret = h->flags[i] & HOLD_OWNER_DEAD ? EOWNERDEAD : 0,
			     .lock_type = type,
			     .op = h->op[i],
			     .flags = h->flags[i] & ~HOLD_OWNER_DEAD,
		     });
		return 0;
	}
	/* a read hold taken by another thread, released here */
	if (cookie_type == LOCK_RWLOCK && s && s->readers > 0 && s->writers <= 0) {
		__sync_fetch_and_add(&s->readers, -1);
		left = s->readers;
		emit(task, LOCK_UNMATCHED, now,
		     &(struct lock_fields){ .lock_addr = addr, .release_ns = now,
					    .aux = left > 0 ? left : 0,
					    .lock_type = LOCK_RWLOCK_READ });
		return 0;
	}
	emit(task, LOCK_UNMATCHED, now,
	     &(struct lock_fields){ .lock_addr = addr, .release_ns = now,
				    .lock_type = cookie_type });
	return 0;
}

/*
 * The target exec'd: the probes were in the old image. proc_image reattaches
 * them to the new image's C library (or says it has none).
 */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle__exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct lock_event *e;

	if (p->tgid != cfg.target.tgid)
		return 0;
	e = reserve_record(sizeof(*e));
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	fill_hdr(&e->hdr, p, PI_LOCK, LOCK_EXEC, bpf_ktime_get_ns());
	e->aux = old_pid;
	/* proc_image must act before the new image starts locking: wake it now */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	STAT_INC(events);
	return 0;
}

static __always_inline void emit_thread(struct task_struct *p, __u8 kind, __u8 flags)
{
	struct lock_event *e = reserve_record(sizeof(*e));

	if (!e)
		return;
	__builtin_memset(e, 0, sizeof(*e));
	fill_hdr(&e->hdr, p, PI_LOCK, kind, bpf_ktime_get_ns());
	e->aux = p->pid;
	e->flags = flags;
	/* proc_image attaches to another thread before this one's probes are all gone */
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
	STAT_INC(events);
}

/* include/linux/sched/signal.h: exit_group() or a fatal signal */
#define SIGNAL_GROUP_EXIT 0x4

/*
 * A thread the probes are attached to exited: proc_image takes another.
 * Whether the others live on tells a real window without probes (they
 * still call) from the end of the whole process: do_exit() has counted
 * this thread out of signal->live before this tracepoint.
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle__thread_exit, struct task_struct *p)
{
	struct signal_struct *sig = p->signal;
	__u8 flags = 0;
	__u32 i;

	if (p->tgid != cfg.target.tgid)
		return 0;
	if (sig->live.counter > 0 && !(sig->flags & SIGNAL_GROUP_EXIT))
		flags = LOCK_F_OTHERS_LIVE;
	for (i = 0; i < LOCK_ANCHORS; i++) {
		if (cfg.anchors[i] && cfg.anchors[i] == p->pid) {
			emit_thread(p, LOCK_ANCHOR_EXIT, flags);
			return 0;
		}
	}
	return 0;
}

/* The target started a thread while it has fewer than two anchors. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle__new_thread, struct task_struct *parent, struct task_struct *child)
{
	if (!cfg.want_threads || child->tgid != cfg.target.tgid || child->pid == child->tgid)
		return 0;
	emit_thread(child, LOCK_NEW_THREAD, 0);
	return 0;
}
