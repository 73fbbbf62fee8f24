#!/usr/bin/env bash
# syscall (and schedule) collector overhead, each as a ratio to no tracing:
#   (a) no tracing
#   (b) no-op BPF programs on the same hooks: the floor, the hook's own price
#   (c) collector active on the workload
#   (d) collector active on another process
#   (e) bpftrace doing the same aggregation (latency per syscall, target and system)
# Each rep runs (a)..(e) one after the other (interleaved, so a change in the
# machine's load hits every variant alike); a figure is the median over reps,
# and so is each ratio to the floor (one ratio per rep, then the median).
# Then the BPF side: run time per program run with kernel.bpf_stats_enabled
# (on only for that pass, restored after), and proc_image's own CPU while
# the target makes ~1M syscalls/s.
# Usage: sudo bench/syscall.sh   (REPS=N reps, at least 5; BPFTRACE=0 skips (e))
source "$(dirname "$0")/lib.sh"

BPFTRACE=${BPFTRACE:-1}
sleep 1000 &
OTHER_PID=$!
BT_SYSCALL='tracepoint:raw_syscalls:sys_enter { @s[tid] = nsecs; }
tracepoint:raw_syscalls:sys_exit /@s[tid]/ { $l = nsecs - @s[tid]; delete(@s[tid]);
  @sys = stats($l); @sys_hist = hist($l);
  if (pid == TARGET) { @t = stats($l); @t_hist = hist($l); @seq[tid] = args->id; @n[args->id] = count(); } }'
BT_SCHED='tracepoint:sched:sched_wakeup { @q[args->pid] = nsecs; }
tracepoint:sched:sched_switch { if (args->prev_state == 0) { @q[args->prev_pid] = nsecs; }
  if (@q[args->next_pid]) { $l = nsecs - @q[args->next_pid]; delete(@q[args->next_pid]); @sys = stats($l);
  if (args->next_pid == TARGET) { @t = stats($l); } } }'

# median of column COL of FILE
median_col() {
	awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

# median over reps of (column X - a) / (b - a): the ratio to the floor
median_ratio() {
	awk -v x="$2" '{fl = $2 - $1; if (fl <= 0) fl = 1e-9; print ($x - $1) / fl}' "$1" |
		sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

table() { # table COLLECTOR-FLAG FLOOR BPFTRACE-PROGRAM MODE N
	local flag=$1 floor=$2 bt=$3 mode=$4 n=$5 runs a b c d e
	runs=$(mktemp)
	pi_start "$flag"
	for _ in $(seq 1 "$REPS"); do
		a=$(run_once "$mode" "$n")
		floor_start "$floor"
		b=$(run_once "$mode" "$n")
		floor_stop
		c=$(run_once "$mode" "$n" "$flag")
		"$CTL" -d >/dev/null
		"$CTL" -a -P "$OTHER_PID" "$flag" >/dev/null
		d=$(run_once "$mode" "$n")
		"$CTL" -d >/dev/null
		e=0
		if [ "$BPFTRACE" = 1 ]; then
			# bpftrace filters on the pid of a process that makes no syscalls:
			# it aggregates the system, the target part runs for none
			bpftrace_start "${bt//TARGET/$OTHER_PID}"
			e=$(run_once "$mode" "$n")
			bpftrace_stop
		fi
		echo "$a $b $c $d $e" >>"$runs"
	done
	pi_stop
	a=$(median_col "$runs" 1)
	echo "$mode with proc_image $flag ($n ops, median of $REPS interleaved reps)"
	row "(a) no tracing" "$a" "$a"
	row "(b) floor: no-op programs on the same hooks" "$a" "$(median_col "$runs" 2)"
	row "(c) active on the workload" "$a" "$(median_col "$runs" 3)"
	row "(d) active on another process" "$a" "$(median_col "$runs" 4)"
	[ "$BPFTRACE" = 1 ] && row "(e) bpftrace, same aggregation" "$a" "$(median_col "$runs" 5)"
	printf "  overhead over (a) as a multiple of the floor's, median of per-rep ratios: on workload %.2fx, other process %.2fx\n" \
		"$(median_ratio "$runs" 3)" "$(median_ratio "$runs" 4)"
	printf "  per rep (a b c d e ns/op):"
	awk '{printf " [%s]", $0} END {print ""}' "$runs"
	rm -f "$runs"
}

table -s syscalls "$BT_SYSCALL" bench-syscalls 2000000
table -s syscalls "$BT_SYSCALL" bench-pipe 100000
table -S sched "$BT_SCHED" bench-pipe 100000

# BPF run time per program run (enter and exit apart), getppid loop
bpf_stats_on
floor_start syscalls
run_once bench-syscalls 2000000 >/dev/null
bpf_prog_stats "floor (no-op)" "$(pgrep -f -n "$WL noop-hooks")" noop__sys
floor_stop
pi_start -s
run_once bench-syscalls 2000000 -s >/dev/null
bpf_prog_stats "syscall on the workload" "$PI_PID" handle__sys
"$CTL" -d >/dev/null
pi_stop
pi_start -s
"$CTL" -a -P "$OTHER_PID" -s >/dev/null
run_once bench-syscalls 2000000 >/dev/null
bpf_prog_stats "syscall on another process" "$PI_PID" handle__sys
pi_stop
bpf_stats_off

# proc_image's own CPU while its target makes ~1M syscalls/s for 10 s
pi_start -s
"$WL" stress --forks-per-sec 0 --syscalls-per-sec 1000000 --secs 10 >/dev/null &
wl=$!
"$CTL" -a -P "$wl" -s >/dev/null
t0=$(cpu_ticks "$PI_PID")
wait "$wl"
t1=$(cpu_ticks "$PI_PID")
pi_stop
awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
	printf "proc_image CPU while its target makes 1M syscalls/s: %.1f%% of one core\n", 100 * d / hz / 10 }'
