#!/usr/bin/env bash
# proc_image against the floor and the classic tools, one table per
# collector, in one invocation:
#   none     no tracing
#   floor    no-op BPF programs on the collector's hooks (bpf/noop.bpf.c):
#            the price of the hook itself
#   target   proc_image's collector active on the workload (controller -a -P)
#   other    the collector active on another process (a sleep)
#   bpftrace bpftrace doing the same job
#   ref      the job written the classic way (bpf/bench_ref.bpf.c: a hash
#            map keyed by tid, as libbpf-tools' syscount -L and runqlat do;
#            whole system, their default), for syscall and schedule
#   ref2     schedule only: runqlat with its start times in task storage
#            instead of the hash (the per-event bar schedule must stay under)
#   least    syscall and keytime: the least job (bpf/bench_ref.bpf.c): only
#            the clock reads and per-task state that any way of doing the
#            collector's job needs (syscall: every syscall timed, for the
#            system's latency; keytime: the target's stretches summed in its
#            task storage), so that what is left of proc_image's cost over
#            it is the collector's own work
# each in time per operation (ratio to none, and overhead as a multiple of
# the floor's) and in BPF run time per event (the kernel's run time / run
# count of the tracer's programs). Every rep runs the configurations one
# after another (none, floor, target, ...), REPS reps (default 5); each
# figure and ratio is the median over the reps. Every tracer is loaded
# afresh for each configuration of each rep, proc_image too: where the
# kernel puts a tracer's JIT code moves its cost by tens of ns per event
# from one load to the next, and one load kept for all the reps would put
# one draw of that in every rep. Timed runs have the
# kernel's BPF stats off; each configuration then makes a second, shorter
# run with them on (BPF_ENABLE_STATS held by `proc_image_workload
# bpf-stats-on`; the sysctl is not touched) for the ns per event.
# lock has a table of its own: uprobes on the C library, a mutex loop.
# Usage: sudo bench/compare.sh   (REPS=N; ONLY="syscall schedule ..." for some tables)
source "$(dirname "$0")/lib.sh"
# a step that fails says where (set -e alone would end the run silently)
set -E
trap 'echo "compare.sh: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

ONLY=${ONLY:-"syscall schedule keytime keytime-forks resource lock"}
sleep 1000 &
OTHER_PID=$!
RESULTS=$(mktemp)
TR_PID="" BT_PID=""
on_exit() {
	[ -n "$TR_PID" ] && { exec 7>&- || true; }
	[ -n "$STATS_PID" ] && { exec 6>&- || true; }
	[ -n "$BT_PID" ] && kill -INT "$BT_PID" 2>/dev/null
	rm -f "$RESULTS"
	cleanup
}
trap on_exit EXIT

LIBC=$(awk '$6 ~ /\/libc\.so\.6$/ {print $6; exit}' /proc/self/maps)
BT_SYSCALL='tracepoint:raw_syscalls:sys_enter { @s[tid] = nsecs; }
tracepoint:raw_syscalls:sys_exit /@s[tid]/ { $l = nsecs - @s[tid]; delete(@s[tid]);
  @sys = stats($l); @sys_hist = hist($l);
  if (pid == TARGET) { @t = stats($l); @t_hist = hist($l); @seq[tid] = args->id; @n[args->id] = count(); } }'
BT_SCHED='tracepoint:sched:sched_wakeup { @q[args->pid] = nsecs; }
tracepoint:sched:sched_wakeup_new { @q[args->pid] = nsecs; }
tracepoint:sched:sched_switch { if (args->prev_state == 0) { @q[args->prev_pid] = nsecs; }
  if (@q[args->next_pid]) { $l = nsecs - @q[args->next_pid]; delete(@q[args->next_pid]); @sys = hist($l);
  if (args->next_pid == TARGET) { @t = hist($l); } } }'
# keytime level 1: every on-CPU and off-CPU interval of the target and its
# lifecycle points, each a record (the workloads are single-threaded)
BT_KEYTIME='tracepoint:sched:sched_switch {
  if (pid == TARGET) { printf("on %d %d\n", tid, nsecs - @on[tid]); @off[tid] = nsecs; }
  if (args->next_pid == TARGET) { printf("off %d %d\n", args->next_pid, nsecs - @off[args->next_pid]); @on[args->next_pid] = nsecs; } }
tracepoint:sched:sched_process_fork /pid == TARGET/ { printf("fork %d\n", args->child_pid); }
tracepoint:sched:sched_process_exec /pid == TARGET/ { printf("exec %d\n", tid); }
tracepoint:sched:sched_process_exit /pid == TARGET/ { printf("exit %d\n", tid); }'
# resource: the target's last CPU time and I/O when a thread of it exits
BT_RESOURCE='tracepoint:sched:sched_process_exit /pid == TARGET/ {
  @cpu[tid] = curtask->se.sum_exec_runtime; @rd[tid] = curtask->ioac.read_bytes; @wr[tid] = curtask->ioac.write_bytes; }'
BT_LOCK="uprobe:$LIBC:pthread_mutex_lock { @req[tid] = nsecs; }
uretprobe:$LIBC:pthread_mutex_lock { @acq[tid] = nsecs; @wait = hist(nsecs - @req[tid]); }
uprobe:$LIBC:pthread_mutex_unlock /@acq[tid]/ { @hold = hist(nsecs - @acq[tid]); delete(@acq[tid]); }"

# tracer_start CMD...: a tracer that runs until its stdin closes (fd 7)
tracer_start() {
	local fifo out
	fifo=$(mktemp -u)
	out=$(mktemp)
	mkfifo "$fifo"
	"$@" <"$fifo" >"$out" 2>&1 &
	TR_PID=$!
	exec 7>"$fifo"
	rm -f "$fifo"
	until grep -q ready "$out"; do
		kill -0 "$TR_PID" 2>/dev/null || { cat "$out" >&2; exit 1; }
		sleep 0.1
	done
	rm -f "$out"
}
tracer_stop() { exec 7>&-; wait "$TR_PID" 2>/dev/null || true; TR_PID=""; }

# bt_start PROGRAM [OPTS...]: bpftrace, attached
bt_start() {
	local prog=$1 log
	shift
	log=$(mktemp)
	# its output goes on into the removed file: Attaching comes on stdout
	bpftrace "$@" -e "$prog" >"$log" 2>&1 &
	BT_PID=$!
	until grep -q Attaching "$log"; do
		kill -0 "$BT_PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
		sleep 0.1
	done
	# "Attaching" comes before the probes are: give them time
	sleep 1
	rm -f "$log"
}
bt_stop() { bt_kill "$BT_PID"; BT_PID=""; }

# one_run CFG MODE N STATS: one workload run under configuration CFG (its
# floor or reference tracer already running as TR_PID); prints
# "ns_per_op runs run_ns" (runs and run_ns only with STATS=1)
one_run() {
	local cfg=$1 mode=$2 n=$3 stats=$4 fifo out wl tracer="" s0="" s1=""
	fifo=$(mktemp -u)
	out=$(mktemp)
	mkfifo "$fifo"
	"$WL" "$mode" "$n" --wait <"$fifo" >"$out" &
	wl=$!
	exec 9>"$fifo"
	case $cfg in
	floor | ref | ref2) tracer=$TR_PID ;;
	least)
		# its filter's tgid (least-keytime), read from its stdin
		echo "$wl" >&7
		sleep 0.1
		tracer=$TR_PID
		;;
	target) "$CTL" -a -P "$wl" "$FLAG" >/dev/null; tracer=$PI_PID ;;
	other) "$CTL" -a -P "$OTHER_PID" "$FLAG" >/dev/null; tracer=$PI_PID ;;
	bpftrace)
		if [ "$FLAG" = -l ]; then bt_start "$BT" -p "$wl"; else bt_start "${BT//TARGET/$wl}"; fi
		tracer=$BT_PID
		;;
	esac
	[ "$stats" = 1 ] && [ -n "$tracer" ] && s0=$(stats_of $STATS_OPTS "$tracer")
	echo go >&9
	exec 9>&-
	wait "$wl"
	[ "$stats" = 1 ] && [ -n "$tracer" ] && s1=$(stats_of $STATS_OPTS "$tracer")
	case $cfg in
	target | other) "$CTL" -d >/dev/null ;;
	bpftrace) bt_stop ;;
	esac
	local ns
	ns=$(sed -n 's/.*"ns_per_op":\([0-9.e+-]*\).*/\1/p' "$out")
	rm -f "$fifo" "$out"
	if [ -n "$s0" ] && [ -n "$s1" ]; then
		read -r r0 t0 <<<"$s0"
		read -r r1 t1 <<<"$s1"
		echo "$ns $((r1 - r0)) $((t1 - t0))"
	else
		echo "$ns - -"
	fi
}

# table NAME MODE N FLAG FLOOR-SET REF BT [REF2 [LEAST]]: REPS interleaved reps of
# every configuration; lines "NAME CFG REP ns_per_op runs run_ns stats_ops" to RESULTS
table() {
	local name=$1 mode=$2 n=$3 floor=$5 ref=$6 ref2=${8:--} least=${9:--}
	FLAG=$4
	BT=$7
	# lock: its uprobes (its other programs see every task's exit, exec, fork)
	STATS_OPTS=""
	[ "$FLAG" = -l ] && STATS_OPTS=--uprobes
	local cfgs="none"
	[ "$floor" != - ] && cfgs+=" floor"
	[ "$least" != - ] && cfgs+=" least"
	cfgs+=" target other bpftrace"
	[ "$ref" != - ] && cfgs+=" ref"
	[ "$ref2" != - ] && cfgs+=" ref2"
	echo "$name: $mode $n, configurations: $cfgs" >&2
	for rep in $(seq 1 "$REPS"); do
		for cfg in $cfgs; do
			local cn=$n
			# lock: a traced pair costs three uprobe traps (~7 us each)
			[ "$FLAG" = -l ] && { [ "$cfg" = target ] || [ "$cfg" = bpftrace ]; } && cn=$LOCK_SLOW_N
			case $cfg in
			floor) tracer_start "$WL" noop-hooks "$floor" ;;
			ref) tracer_start "$WL" ref-hooks "$ref" ;;
			ref2) tracer_start "$WL" ref-hooks "$ref2" ;;
			least) tracer_start "$WL" ref-hooks "$least" ;;
			target | other) pi_start "$FLAG" ;;
			esac
			local timed counted
			timed=$(one_run "$cfg" "$mode" "$cn" 0)
			if [ "$cfg" = none ]; then
				counted="- -"
			else
				stats_on
				counted=$(one_run "$cfg" "$mode" $((cn / 4)) 1 | cut -d' ' -f2-)
				stats_off
			fi
			case $cfg in
			floor | ref | ref2 | least) tracer_stop ;;
			target | other) pi_stop ;;
			esac
			echo "$name $cfg $rep ${timed%% *} $counted $((cn / 4))" >>"$RESULTS"
		done
	done
}

LOCK_SLOW_N=${LOCK_SLOW_N:-20000}
for t in $ONLY; do
	case $t in
	syscall) table syscall bench-syscalls 2000000 -s syscalls syscount "$BT_SYSCALL" - least-syscall ;;
	schedule) table schedule bench-pipe 100000 -S sched runqlat "$BT_SCHED" runqlat-ts ;;
	keytime) table keytime bench-pipe 100000 -k keytime - "$BT_KEYTIME" - least-keytime ;;
	keytime-forks) table keytime-forks bench-forks 2000 -k keytime - "$BT_KEYTIME" ;;
	resource) table resource bench-forks 2000 -r resource - "$BT_RESOURCE" ;;
	lock) table lock bench-mutex 200000000 -l - - "$BT_LOCK" ;;
	*) echo "unknown table $t" >&2; exit 1 ;;
	esac
done

python3 - "$RESULTS" "$REPS" "$LIBC" <<'EOF'
import statistics, sys
from collections import defaultdict
rows = defaultdict(dict)  # (table, cfg) -> rep -> (ns, runs, run_ns)
order = []
for line in open(sys.argv[1]):
    t, cfg, rep, ns, runs, run_ns, ops = line.split()
    if t not in order:
        order.append(t)
    num = lambda v: None if v == "-" else int(v)
    rows[(t, cfg)][int(rep)] = (float(ns), num(runs), num(run_ns), int(ops))
what = {
    "syscall": ("bench-syscalls: a getppid loop, proc_image -s", "syscount -L"),
    "schedule": ("bench-pipe: a pipe ping-pong on one CPU, proc_image -S", "runqlat"),
    "keytime": ("bench-pipe: a pipe ping-pong on one CPU, proc_image -k (level 1)", None),
    "keytime-forks": ("bench-forks: a fork+exit+wait loop, proc_image -k (level 1)", None),
    "resource": ("bench-forks: a fork+exit+wait loop, proc_image -r", None),
    "lock": ("bench-mutex: pthread_mutex_lock+unlock pairs, proc_image -l", None),
}
labels = {
    "none": "no tracing",
    "floor": "hook floor (no-op programs)",
    "least": "least job (clock reads, task state)",
    "target": "proc_image on the target",
    "other": "proc_image on another process",
    "bpftrace": "bpftrace, same job",
    "ref": "reference, classic ({})",
    "ref2": "reference, task storage ({})",
}
med = lambda xs: statistics.median(xs) if xs else None
print(f"medians of {sys.argv[2]} interleaved runs (ratios taken per run, then their median);")
print("x floor: overhead over no tracing as a multiple of the floor's; BPF ns/event: run time")
print("per run of the tracer's BPF programs, events/op: their runs per operation (every task")
print("that passes a hook runs its program), both from the kernel's BPF stats")
for t in order:
    title, ref = what[t]
    print(f"\n{t}: {title}")
    print(f"  {'':38} {'ns/op':>10} {'vs none':>8} {'x floor':>8} {'BPF ns/event':>13} {'events/op':>10}")
    none = rows[(t, "none")]
    floor = rows.get((t, "floor"), {})
    for cfg in ["none", "floor", "least", "target", "other", "bpftrace", "ref", "ref2"]:
        r = rows.get((t, cfg))
        if not r:
            continue
        reps = sorted(r)
        ns = med([r[i][0] for i in reps])
        vs = med([r[i][0] / none[i][0] for i in reps if i in none])
        xf = med([(r[i][0] - none[i][0]) / (floor[i][0] - none[i][0])
                  for i in reps if i in none and i in floor and floor[i][0] > none[i][0]])
        per_ev = med([r[i][2] / r[i][1] for i in reps if r[i][1]])
        per_op = med([r[i][1] / r[i][3] for i in reps if r[i][1] is not None])
        label = labels[cfg].format(ref)
        xf_s = f"{xf:7.2f}x" if xf is not None and cfg not in ("none", "floor") else ""
        ev_s = f"{per_ev:13.1f}" if per_ev is not None else f"{'-':>13}"
        op_s = f"{per_op:10.2f}" if per_op is not None else f"{'-':>10}"
        print(f"  {label:38} {ns:10.1f} {vs:7.3f}x {xf_s:>8} {ev_s} {op_s}")
    if t == "lock":
        print("  (events/op on the target: probe hits per lock/unlock pair)")
EOF
