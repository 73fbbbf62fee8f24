#!/usr/bin/env bash
# keytime -k 2 (off-CPU stacks) against -k 1 and the floor, on a pipe
# ping-pong (stretches too short for stacks: the cost is the user stack
# copied at every switch-out) and a 1 ms sleep loop (every stretch gets its
# kernel and user stacks, unwound and named by proc_image):
#   (a) without proc_image
#   (f) no-op BPF programs on keytime's hooks: the floor
#   (1) keytime -k 1 on the workload
#   (2) keytime -k 2 on the workload
# then the BPF run time per sched_switch for (1) and (2) and the floor, and
# proc_image's own CPU time in (2).
# Usage: sudo bench/offcpu.sh   (REPS=N runs per figure, median taken)
source "$(dirname "$0")/lib.sh"

declare -A N=([bench-pipe]=100000 [bench-sleep]=1000)

for mode in ${MODES:-bench-pipe bench-sleep}; do
	n=${N[$mode]}
	a=$(measure "$mode" "$n")
	floor_start keytime
	f=$(measure "$mode" "$n")
	floor_stop
	pi_start -k
	one=$(measure "$mode" "$n" -k 1)
	t0=$(cpu_ticks "$PI_PID")
	two=$(measure "$mode" "$n" -k 2)
	t1=$(cpu_ticks "$PI_PID")
	pi_stop
	echo "$mode ($n ops, median of $REPS)"
	row "(a) no proc_image" "$a" "$a"
	row "(f) floor: no-op programs on keytime's hooks" "$a" "$f"
	row "(1) keytime -k 1 on the workload" "$a" "$one"
	row "(2) keytime -k 2 on the workload" "$a" "$two"
	awk -v a="$a" -v one="$one" -v two="$two" -v f="$f" -v n="$n" -v r="$REPS" -v ticks=$((t1 - t0)) \
		-v hz="$(getconf CLK_TCK)" 'BEGIN {
		printf "  -k 2 over -k 1: %.3fx the time per op; %+.1f ns per op\n", two / one, two - one
		printf "  proc_image CPU during (2): %.1f us per op\n", ticks / hz * 1e6 / (n * r) }'
done

echo "BPF run time per sched_switch (kernel.bpf_stats_enabled), bench-sleep, $REPS runs"
bpf_stats_on
n=${N[bench-sleep]}
floor_start keytime
measure bench-sleep "$n" >/dev/null
bpf_prog_stats "(f) floor" "$(pgrep -f "proc_image_workload noop-hooks" | head -1)" noop__sched_sw
floor_stop
for level in 1 2; do
	pi_start -k
	measure bench-sleep "$n" -k "$level" >/dev/null
	bpf_prog_stats "($level) keytime -k $level" "$PI_PID" handle__sched_s
	pi_stop
done
bpf_stats_off
