#!/usr/bin/env bash
# keytime overhead: syscall loop, pipe ping-pong and fork loop, each
#   (a) without proc_image
#   (f) no-op BPF programs on keytime's hooks: the floor, the hooks' own price
#   (b) proc_image -k loaded but deactivated (the pre-attach promise: ~1.00x)
#   (c) keytime active on another process
#   (d) keytime (-k 1) active on the workload: every stretch summed per
#       interval, stretches from --stretch-min-us (50 us) streamed
#   (g) keytime -k 2 on the workload: (d) plus the user stack taken at every
#       switch-out (the stretches here are too short to emit stacks)
#   (e) keytime active on the whole system (every fork is a child to mark,
#       every exit a child_exit)
# Each rep runs (a)..(e) one after the other (interleaved, so a change in the
# machine's load hits every variant alike); a figure is the median over reps,
# and so is each ratio to the floor (one ratio per rep, then the median).
# Then the BPF side: run count and run time per program run, from the
# kernel's BPF stats (on only for that pass, restored after).
# Usage: sudo bench/keytime.sh   (REPS=N reps, at least 5; MODES="bench-pipe ...")
source "$(dirname "$0")/lib.sh"

declare -A N=([bench-syscalls]=2000000 [bench-pipe]=100000 [bench-forks]=2000)
sleep 1000 &
OTHER_PID=$!

# median of column COL of FILE
median_col() {
	awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

# median over reps of (column X - a) / (f - a): the overhead as a multiple of
# the floor's ("n/a" when no rep measured the floor above (a): noise)
median_ratio() {
	awk -v x="$2" '$2 > $1 {print ($x - $1) / ($2 - $1)}' "$1" |
		sort -g | awk '{v[NR]=$1} END {if (NR) printf "%.2fx (%d reps)", v[int((NR+1)/2)], NR; else print "n/a"}'
}

# deactivate whatever is active (nothing is fine too)
deactivate() { "$CTL" -d >/dev/null 2>&1 || true; }

for mode in ${MODES:-bench-syscalls bench-pipe bench-forks}; do
	n=${N[$mode]}
	runs=$(mktemp)
	pi_start -k
	for _ in $(seq 1 "$REPS"); do
		a=$(run_once "$mode" "$n")
		floor_start keytime
		f=$(run_once "$mode" "$n")
		floor_stop
		b=$(run_once "$mode" "$n")
		"$CTL" -a -P "$OTHER_PID" -k >/dev/null
		c=$(run_once "$mode" "$n")
		deactivate
		d=$(run_once "$mode" "$n" -k)
		deactivate
		g=$(run_once "$mode" "$n" -k 2)
		deactivate
		"$CTL" -a -k >/dev/null
		e=$(run_once "$mode" "$n")
		deactivate
		echo "$a $f $b $c $d $e $g" >>"$runs"
	done
	pi_stop
	a=$(median_col "$runs" 1)
	echo "$mode ($n ops, median of $REPS interleaved reps)"
	row "(a) no proc_image" "$a" "$a"
	row "(f) floor: no-op programs on keytime's hooks" "$a" "$(median_col "$runs" 2)"
	row "(b) proc_image -k loaded, deactivated" "$a" "$(median_col "$runs" 3)"
	row "(c) keytime active on another process" "$a" "$(median_col "$runs" 4)"
	row "(d) keytime active on the workload" "$a" "$(median_col "$runs" 5)"
	row "(e) keytime active on the whole system" "$a" "$(median_col "$runs" 6)"
	row "(g) keytime -k 2 on the workload" "$a" "$(median_col "$runs" 7)"
	fl=$(awk -v a="$a" -v f="$(median_col "$runs" 2)" 'BEGIN { print f - a }')
	if awk -v fl="$fl" -v a="$a" 'BEGIN { exit !(fl < a / 100) }'; then
		echo "  the floor is within the noise (under 1% of (a)): ratios to it mean little here"
	fi
	printf "  overhead over (a) as a multiple of the floor's, median of per-rep ratios: on workload %s, -k 2 %s, other process %s, whole system %s\n" \
		"$(median_ratio "$runs" 5)" "$(median_ratio "$runs" 7)" "$(median_ratio "$runs" 4)" "$(median_ratio "$runs" 6)"
	printf "  per rep (a f b c d e g ns/op):"
	awk '{printf " [%s]", $0} END {print ""}' "$runs"
	rm -f "$runs"
done

# bpf_per_op LABEL PID NAME-PREFIX OPS: the run time of those programs of
# process PID, summed, per workload op (the host's other switches included)
bpf_per_op() {
	local ids
	ids=$(sed -n 's/^prog_id:\s*//p' /proc/"$2"/fdinfo/* 2>/dev/null | sort -u | tr '\n' ' ')
	bpftool prog show | awk -v l="$1" -v ids=" $ids" -v p="$3" -v ops="$4" '
		/^[0-9]+:/ { id = $1; sub(":", "", id); name = ""
			for (i = 1; i < NF; i++) {
				if ($i == "name") name = $(i + 1)
				if ($i == "run_time_ns" && index(name, p) == 1 && index(ids, " " id " ")) ns += $(i + 1) } }
		END { printf "  %-28s %-22s %10.1f BPF ns per op\n", l, "(all programs)", ns / ops }'
}

# BPF run time per program run, pipe ping-pong and fork loop (every
# program's runs count, the other tasks' switches included)
bpf_stats_on
for mode in bench-pipe bench-forks; do
	n=${N[$mode]}
	echo "BPF run time per program run, $mode ($n ops)"
	floor_start keytime
	run_once "$mode" "$n" >/dev/null
	bpf_prog_stats "floor (no-op)" "$(pgrep -f -n "$WL noop-hooks")" noop__
	bpf_per_op "floor (no-op)" "$(pgrep -f -n "$WL noop-hooks")" noop__ "$n"
	floor_stop
	pi_start -k
	run_once "$mode" "$n" -k >/dev/null
	bpf_prog_stats "keytime on the workload" "$PI_PID" handle__
	bpf_per_op "keytime on the workload" "$PI_PID" handle__ "$n"
	pi_stop
	pi_start -k
	"$CTL" -a -k >/dev/null
	run_once "$mode" "$n" >/dev/null
	bpf_prog_stats "keytime on the whole system" "$PI_PID" handle__
	bpf_per_op "keytime on the whole system" "$PI_PID" handle__ "$n"
	pi_stop
done
bpf_stats_off
