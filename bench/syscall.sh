#!/usr/bin/env bash
# syscall (and schedule) collector overhead, each as a ratio to no tracing:
#   (a) no tracing
#   (b) no-op BPF programs on the same hooks: the floor, the hook's own price
#   (c) collector active on the workload
#   (d) collector active on another process
#   (e) bpftrace doing the same aggregation (latency per syscall, target and system)
# then proc_image's own CPU while the target makes ~1M syscalls/s.
# Usage: sudo bench/syscall.sh   (REPS=N runs per figure, median taken)
source "$(dirname "$0")/lib.sh"

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

table() { # table COLLECTOR-FLAG FLOOR BPFTRACE-PROGRAM MODE N
	local flag=$1 floor=$2 bt=$3 mode=$4 n=$5 a b c d e
	a=$(measure "$mode" "$n")
	floor_start "$floor"
	b=$(measure "$mode" "$n")
	floor_stop
	pi_start "$flag"
	c=$(measure "$mode" "$n" "$flag")
	"$CTL" -a -P "$OTHER_PID" "$flag" >/dev/null
	d=$(measure "$mode" "$n")
	pi_stop
	# bpftrace filters on the pid of a workload that does not exist yet: it
	# aggregates the system, and the target part runs for none (cheaper than c)
	bpftrace_start "${bt//TARGET/$OTHER_PID}"
	e=$(measure "$mode" "$n")
	bpftrace_stop
	echo "$mode with proc_image $flag ($n ops, median of $REPS)"
	row "(a) no tracing" "$a" "$a"
	row "(b) floor: no-op programs on the same hooks" "$a" "$b"
	row "(c) active on the workload" "$a" "$c"
	row "(d) active on another process" "$a" "$d"
	row "(e) bpftrace, same aggregation" "$a" "$e"
	awk -v a="$a" -v b="$b" -v c="$c" -v d="$d" 'BEGIN {
		fl = b - a; if (fl <= 0) fl = 1e-9
		printf "  overhead over (a): floor %.1f ns, on workload %.1f ns (%.2fx the floor), other process %.1f ns (%.2fx)\n",
			b - a, c - a, (c - a) / fl, d - a, (d - a) / fl }'
}

table -s syscalls "$BT_SYSCALL" bench-syscalls 2000000
table -s syscalls "$BT_SYSCALL" bench-pipe 100000
table -S sched "$BT_SCHED" bench-pipe 100000

# proc_image's own CPU while its target makes ~1M syscalls/s for 10 s
pi_start -s
fifo=$(mktemp -u)
mkfifo "$fifo"
"$WL" stress --forks-per-sec 0 --syscalls-per-sec 1000000 --secs 10 >/dev/null &
wl=$!
"$CTL" -a -P "$wl" -s >/dev/null
t0=$(cpu_ticks "$PI_PID")
wait "$wl"
t1=$(cpu_ticks "$PI_PID")
pi_stop
rm -f "$fifo"
awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
	printf "proc_image CPU while its target makes 1M syscalls/s: %.1f%% of one core\n", 100 * d / hz / 10 }'
