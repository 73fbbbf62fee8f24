#!/usr/bin/env bash
# lock collector overhead on a pthread_mutex_lock/unlock loop (ns per pair):
#   (a) no tracing (proc_image loaded, nothing attached: the same, see bench/keytime.sh)
#   (b) lock active on another process: the loop is not a target (promise: within 3% of a)
#   (c) lock active on the loop
#   (d) bpftrace, pid-filtered to the loop, on the same hooks of the same
#       libc: uprobe + uretprobe on pthread_mutex_lock, uprobe on
#       pthread_mutex_unlock, keeping wait and hold per thread
# (a)/(b) run many more pairs than (c)/(d): a traced pair costs three
# uprobe traps (~7 us each here), an untraced one ~3 ns.
# Then the probe hits per pair, from the kernel's BPF stats (turned on for
# these runs only, through BPF_ENABLE_STATS): the run count of proc_image's
# uprobe programs over the pairs of a loop that is the target (c), and of
# one that is not (b: nothing hits, the untargeted process pays nothing).
# Usage: sudo bench/lock.sh   (REPS=N runs per figure, median taken)
source "$(dirname "$0")/lib.sh"

FAST_N=${FAST_N:-200000000}
SLOW_N=${SLOW_N:-20000}
LIBC=$(awk '$6 ~ /\/libc\.so\.6$/ {print $6; exit}' /proc/self/maps)
BT='uprobe:LIBC:pthread_mutex_lock { @req[tid] = nsecs; }
uretprobe:LIBC:pthread_mutex_lock { @acq[tid] = nsecs; @wait = hist(nsecs - @req[tid]); }
uprobe:LIBC:pthread_mutex_unlock /@acq[tid]/ { @hold = hist(nsecs - @acq[tid]); delete(@acq[tid]); }'

sleep 1000 &
OTHER_PID=$!
TMP_A=$(mktemp) TMP_B=$(mktemp) TMP_C=$(mktemp) TMP_D=$(mktemp)
TMP_HB=$(mktemp) TMP_HC=$(mktemp)

# hits N [ACTIVATE-ARGS]: proc_image's uprobe program runs per pair in one
# loop of N pairs (with the kernel's BPF stats on)
hits() {
	local n=$1 r0 r1
	shift
	read -r r0 _ < <(stats_of --uprobes "$PI_PID")
	run_once bench-mutex "$n" "$@" >/dev/null
	read -r r1 _ < <(stats_of --uprobes "$PI_PID")
	awk -v d=$((r1 - r0)) -v n="$n" 'BEGIN {printf "%.3f\n", d / n}'
}

# bt_once N: one timed loop under bpftrace -p <loop pid>, prints ns/pair
bt_once() {
	local n=$1 fifo out log
	fifo=$(mktemp -u)
	out=$(mktemp)
	log=$(mktemp)
	mkfifo "$fifo"
	"$WL" bench-mutex "$n" --wait <"$fifo" >"$out" &
	local wl=$!
	exec 9>"$fifo"
	bpftrace -p "$wl" -e "${BT//LIBC/$LIBC}" >"$log" 2>&1 &
	local bt=$!
	until grep -q Attaching "$log"; do
		kill -0 "$bt" 2>/dev/null || { cat "$log" >&2; exit 1; }
		sleep 0.2
	done
	sleep 1
	echo go >&9
	exec 9>&-
	wait "$wl"
	bt_kill "$bt"
	sed -n 's/.*"ns_per_op":\([0-9.e+-]*\).*/\1/p' "$out"
	rm -f "$fifo" "$out" "$log"
}

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# The four configurations take turns, REPS rounds, so a load that comes and
# goes on the machine weighs on each alike; proc_image stays loaded (idle,
# nothing attached, for a and d).
pi_start -l
for _ in $(seq 1 "$REPS"); do
	"$CTL" -d >/dev/null
	run_once bench-mutex "$FAST_N" >>"$TMP_A"
	"$CTL" -a -P "$OTHER_PID" -l >/dev/null
	run_once bench-mutex "$FAST_N" >>"$TMP_B"
	"$CTL" -d >/dev/null
	run_once bench-mutex "$SLOW_N" -l >>"$TMP_C"
	"$CTL" -d >/dev/null
	bt_once "$SLOW_N" >>"$TMP_D"
	# not timed: the stats add two clock reads to every program run
	stats_on
	"$CTL" -a -P "$OTHER_PID" -l >/dev/null
	hits $((FAST_N / 20)) >>"$TMP_HB"
	"$CTL" -d >/dev/null
	hits "$SLOW_N" -l >>"$TMP_HC"
	"$CTL" -d >/dev/null
	stats_off
done
pi_stop
a=$(median <"$TMP_A")
b=$(median <"$TMP_B")
c=$(median <"$TMP_C")
d=$(median <"$TMP_D")
hb=$(median <"$TMP_HB")
hc=$(median <"$TMP_HC")
rm -f "$TMP_A" "$TMP_B" "$TMP_C" "$TMP_D" "$TMP_HB" "$TMP_HC"

echo "pthread_mutex_lock+unlock pairs with proc_image -l (median of $REPS; libc $LIBC)"
row "(a) no tracing ($FAST_N pairs)" "$a" "$a"
row "(b) lock active on another process" "$a" "$b"
row "(c) lock active on the loop ($SLOW_N pairs)" "$a" "$c"
row "(d) bpftrace -p on the same hooks" "$a" "$d"
awk -v c="$c" -v d="$d" -v a="$a" -v b="$b" 'BEGIN {
	printf "  not a target: %+.2f%% vs no tracing; target: proc_image %.2fx bpftrace (%.1f vs %.1f us per pair)\n",
		100 * (b - a) / a, c / d, c / 1000, d / 1000 }'
echo "  probe hits per lock/unlock pair (uprobe program runs / pairs): on the loop $hc; on another process's loop $hb ($((FAST_N / 20)) pairs)"
