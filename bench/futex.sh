#!/usr/bin/env bash
# futex collector overhead, on a contended and an uncontended loop:
#   contended: two threads hand a turn over one futex word (ns per handoff:
#     a FUTEX_WAKE and the FUTEX_WAIT it ends, two context switches)
#     (a) no tracing (proc_image -M loaded, nothing attached)
#     (b) futex active on another process: the hooks run, the loop is not a target
#     (c) futex active on the loop (-P): every wait is a record
#     (d) futex active on the whole system
#   uncontended: pthread_mutex_lock/unlock alone (ns per pair): the fast
#     path never enters the kernel, so (a) and (c) should be the same
#     (a) no tracing   (c) futex active on the loop
#   other syscalls: a getppid loop (ns per call). The futex programs run
#     only for futex syscalls, but an enabled syscalls:* tracepoint sends
#     every syscall of every task through the kernel's tracepoint entry
#     path, which then finds no program for getppid: that is the cost here
#     (a) no tracing   (d) futex active on the whole system
# Usage: sudo bench/futex.sh   (REPS=N runs per figure, median taken)
source "$(dirname "$0")/lib.sh"

HANDOFFS=${HANDOFFS:-200000}
PAIRS=${PAIRS:-100000000}
SYSCALLS=${SYSCALLS:-5000000}

sleep 1000 &
OTHER_PID=$!
T=$(mktemp -d)

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# The configurations take turns, REPS rounds, so a load that comes and
# goes on the machine weighs on each alike.
pi_start -M -o none
for _ in $(seq 1 "$REPS"); do
	"$CTL" -d >/dev/null
	run_once bench-futex "$HANDOFFS" >>"$T/a"
	run_once bench-mutex "$PAIRS" >>"$T/ua"
	run_once bench-syscalls "$SYSCALLS" >>"$T/sa"
	"$CTL" -a -P "$OTHER_PID" -M >/dev/null
	run_once bench-futex "$HANDOFFS" >>"$T/b"
	"$CTL" -d >/dev/null
	run_once bench-futex "$HANDOFFS" -M >>"$T/c"
	"$CTL" -d >/dev/null
	run_once bench-mutex "$PAIRS" -M >>"$T/uc"
	"$CTL" -a -M >/dev/null
	run_once bench-futex "$HANDOFFS" >>"$T/d"
	run_once bench-syscalls "$SYSCALLS" >>"$T/sd"
done
"$CTL" -d >/dev/null
pi_stop
for f in a b c d ua uc sa sd; do eval "$f=\$(median <\"\$T/$f\")"; done
rm -rf "$T"

echo "futex handoffs between two threads with proc_image -M (median of $REPS)"
row "(a) no tracing ($HANDOFFS handoffs)" "$a" "$a"
row "(b) futex active on another process" "$a" "$b"
row "(c) futex active on the loop" "$a" "$c"
row "(d) futex active on the whole system" "$a" "$d"
echo "uncontended pthread_mutex_lock+unlock pairs"
row "(a) no tracing ($PAIRS pairs)" "$ua" "$ua"
row "(c) futex active on the loop" "$ua" "$uc"
echo "other syscalls: getppid"
row "(a) no tracing ($SYSCALLS calls)" "$sa" "$sa"
row "(d) futex active on the whole system" "$sa" "$sd"
awk -v a="$a" -v c="$c" -v ua="$ua" -v uc="$uc" 'BEGIN {
	printf "  per contended handoff: %+.2f us traced; uncontended: %+.2f%%\n",
		(c - a) / 1000, 100 * (uc - ua) / ua }'
