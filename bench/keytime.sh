#!/usr/bin/env bash
# keytime overhead: syscall loop, pipe ping-pong and fork loop, each
#   (a) without proc_image
#   (b) proc_image -a loaded but deactivated (the pre-attach promise: ~1.00x)
#   (c) keytime active on another process
#   (d) keytime active on the workload
#   (e) keytime active on the whole system (every fork is a child to mark,
#       every exit a child_exit)
#   (f) no-op BPF programs on keytime's hooks: the floor, the hooks' own price
#   (g) keytime -k 2 on the workload: (d) plus the user stack taken at every
#       switch-out (the stretches here are too short to emit stacks)
# Usage: sudo bench/keytime.sh   (REPS=N runs per figure, median taken)
source "$(dirname "$0")/lib.sh"

declare -A N=([bench-syscalls]=2000000 [bench-pipe]=100000 [bench-forks]=2000)
sleep 1000 &
OTHER_PID=$!

for mode in ${MODES:-bench-syscalls bench-pipe bench-forks}; do
	n=${N[$mode]}
	a=$(measure "$mode" "$n")
	floor_start keytime
	f=$(measure "$mode" "$n")
	floor_stop
	pi_start -a
	b=$(measure "$mode" "$n")
	"$CTL" -a -P "$OTHER_PID" -k >/dev/null
	c=$(measure "$mode" "$n")
	"$CTL" -d >/dev/null
	d=$(measure "$mode" "$n" -k)
	g=$(measure "$mode" "$n" -k 2)
	"$CTL" -a -k >/dev/null
	e=$(measure "$mode" "$n")
	"$CTL" -d >/dev/null
	pi_stop
	echo "$mode ($n ops, median of $REPS)"
	row "(a) no proc_image" "$a" "$a"
	row "(b) proc_image -a loaded, deactivated" "$a" "$b"
	row "(c) keytime active on another process" "$a" "$c"
	row "(d) keytime active on the workload" "$a" "$d"
	row "(e) keytime active on the whole system" "$a" "$e"
	row "(f) floor: no-op programs on keytime's hooks" "$a" "$f"
	row "(g) keytime -k 2 on the workload" "$a" "$g"
	awk -v a="$a" -v c="$c" -v d="$d" -v f="$f" 'BEGIN { fl = f - a
		if (fl < a / 100) { print "  the floor is within the noise (these hooks are not on this path)"; exit }
		printf "  overhead over (a) as a multiple of the floor'"'"'s: on workload %.2fx, other process %.2fx\n", (d - a) / fl, (c - a) / fl }'
done
