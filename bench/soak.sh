#!/usr/bin/env bash
# Soak: the whole system traced (keytime, syscall, schedule, resource) for
# SECS (default 3600) seconds at the default interval, while the soak
# workload (busy, idle and short-lived threads) and the stress workload
# (fork+exit and syscalls at a steady rate) run. Every MINUTE seconds
# (default 60) prints one line: elapsed time, records so far, losses so far
# (ring buffer, map full, task state), proc_image's CPU over that minute
# and its RSS. Not part of the test suite: it takes an hour.
# Usage: sudo bench/soak.sh [SECS] [MINUTE]
source "$(dirname "$0")/lib.sh"
SECS=${1:-3600}
MINUTE=${2:-60}
OUT=$(mktemp -d)

"$PI" -k -s -S -r --json >"$OUT/records" 2>"$OUT/log" &
PI_PID=$!
until grep -q ready "$OUT/log"; do kill -0 $PI_PID || { cat "$OUT/log"; exit 1; }; sleep 0.1; done
"$CTL" -a -k -s -S -r >/dev/null

# the workloads: they run the whole time, in a loop
(while :; do echo go | "$WL" soak --secs 300 >/dev/null; done) &
SOAK=$!
(while :; do "$WL" stress --forks-per-sec 200 --syscalls-per-sec 200000 --secs 300 >/dev/null; done) &
STRESS=$!
trap 'kill $SOAK $STRESS 2>/dev/null; pkill -f "proc_image_workload (soak|stress)" 2>/dev/null; cleanup' EXIT

losses() {
	python3 -c '
import json,sys
t={"ringbuf_drops":0,"map_full":0,"no_task_state":0}
n=0
for l in open(sys.argv[1]):
    n+=1
    try: r=json.loads(l)
    except ValueError: continue
    if r.get("event")=="lost":
        for k in t: t[k]+=r[k]
print(n, t["ringbuf_drops"], t["map_full"], t["no_task_state"])' "$OUT/records"
}

hz=$(getconf CLK_TCK)
printf "%8s %12s %10s %10s %10s %9s %10s\n" elapsed records ringbuf map_full no_task cpu% rss_kib
start=$(date +%s)
t0=$(cpu_ticks $PI_PID)
while [ $(($(date +%s) - start)) -lt "$SECS" ]; do
	sleep "$MINUTE"
	t1=$(cpu_ticks $PI_PID)
	read -r n rb mf nt < <(losses)
	rss=$(awk '/VmRSS/ {print $2}' "/proc/$PI_PID/status")
	awk -v e=$(($(date +%s) - start)) -v n="$n" -v rb="$rb" -v mf="$mf" -v nt="$nt" \
		-v d=$((t1 - t0)) -v hz="$hz" -v m="$MINUTE" -v rss="$rss" \
		'BEGIN {printf "%8d %12d %10d %10d %10d %8.2f%% %10d\n", e, n, rb, mf, nt, 100 * d / hz / m, rss}'
	t0=$t1
done
"$CTL" -f >/dev/null
wait $PI_PID || true
PI_PID=""
echo "exit summary: $(grep 'ended' "$OUT/log")"
rm -rf "$OUT"
