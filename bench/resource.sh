#!/usr/bin/env bash
# resource collector overhead: syscall loop and pipe ping-pong, each
#   (a) no tracing
#   (b) floor: no-op programs on sched_switch and sched_process_exit: the
#       least a collector that hangs on sched_switch pays (resource reads the
#       scheduler's own run-time account instead, and hooks only process exit)
#   (c) resource active on the workload
#   (d) resource active on another process
# with the overhead of (c) as a multiple of the floor's (target: <= 1.5x),
# then proc_image's own CPU while it follows the whole system.
# Usage: sudo bench/resource.sh   (REPS=N runs per figure, median taken)
source "$(dirname "$0")/lib.sh"

sleep 1000 &
OTHER_PID=$!

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# The four configurations take turns within each repetition, so that a
# neighbour's load on this shared machine falls on all of them alike.
# (a) runs beside a loaded, deactivated proc_image: that attaches nothing.
table() { # table MODE N
	local mode=$1 n=$2 a b c d dir
	dir=$(mktemp -d)
	pi_start -r
	for _ in $(seq 1 "$REPS"); do
		run_once "$mode" "$n" >>"$dir/a"
		floor_start resource
		run_once "$mode" "$n" >>"$dir/b"
		floor_stop
		run_once "$mode" "$n" -r >>"$dir/c"
		"$CTL" -d >/dev/null || true
		"$CTL" -a -P "$OTHER_PID" -r >/dev/null
		run_once "$mode" "$n" >>"$dir/d"
		"$CTL" -d >/dev/null
	done
	pi_stop
	a=$(median <"$dir/a") b=$(median <"$dir/b") c=$(median <"$dir/c") d=$(median <"$dir/d")
	rm -rf "$dir"
	echo "$mode with proc_image -r ($n ops, median of $REPS)"
	row "(a) no tracing" "$a" "$a"
	row "(b) floor: no-op programs on the same hooks" "$a" "$b"
	row "(c) active on the workload" "$a" "$c"
	row "(d) active on another process" "$a" "$d"
	awk -v a="$a" -v b="$b" -v c="$c" -v d="$d" 'BEGIN {
		printf "  overhead over (a): floor %.1f ns, on workload %.1f ns, other process %.1f ns", b - a, c - a, d - a
		if (b - a > 0) printf "; on workload %.2fx the floor", (c - a) / (b - a)
		else printf "; the floor is below the noise"
		printf "\n" }'
}

table bench-syscalls 2000000
table bench-pipe 300000

# proc_image's own CPU while resource follows every task for 10 s (1 s intervals)
pi_start -r
"$CTL" -a -r >/dev/null
t0=$(cpu_ticks "$PI_PID")
sleep 10
t1=$(cpu_ticks "$PI_PID")
tasks=$(ls /proc/[0-9]*/task | grep -c '^[0-9]')
pi_stop
awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$tasks" 'BEGIN {
	printf "proc_image CPU while resource follows the whole system (%d threads): %.2f%% of one core\n", n, 100 * d / hz / 10 }'
