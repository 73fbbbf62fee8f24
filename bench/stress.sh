#!/usr/bin/env bash
# Flood: whole-system collection (every loaded collector that can trace the
# whole system) while a workload runs 1,000 fork+exit/s and 1M syscalls/s
# for SECS (default 30) seconds. Prints events seen, events counted lost,
# proc_image's peak RSS and CPU, and how full its BPF maps got.
# Usage: sudo bench/stress.sh [SECS]
source "$(dirname "$0")/lib.sh"
SECS=${1:-30}
OUT=$(mktemp -d)

"$PI" -a --json >"$OUT/records" 2>"$OUT/log" &
PI_PID=$!
until grep -q ready "$OUT/log"; do kill -0 $PI_PID || { cat "$OUT/log"; exit 1; }; sleep 0.1; done
"$CTL" -a >/dev/null

ticks() { awk '{print $14 + $15}' "/proc/$PI_PID/stat"; }
t0=$(ticks)
# sample how full proc_image's hash maps are while the flood runs (its map
# fds are listed in /proc/PID/fdinfo with their map_type and map_id)
(
	while kill -0 $PI_PID 2>/dev/null; do
		for id in $(awk '/^map_type:/ {t=$2} /^map_id:/ && (t == 1 || t == 9) {print $2}' /proc/$PI_PID/fdinfo/* 2>/dev/null | sort -u); do
			bpftool map show id "$id" -j 2>/dev/null | python3 -c '
import json,sys,subprocess
m=json.load(sys.stdin)
n=len(json.loads(subprocess.run(["bpftool","map","dump","id",str(m["id"]),"-j"],capture_output=True,text=True).stdout or "[]"))
print(m["name"], m["max_entries"], n)'
		done
		sleep 1
	done
) >"$OUT/fill" &
SAMPLER=$!

"$WL" stress --secs "$SECS" >"$OUT/truth"
t1=$(ticks)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PI_PID/status")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$PI_PID/status")
"$CTL" -f >/dev/null
wait $PI_PID || true
PI_PID=""
kill $SAMPLER 2>/dev/null || true
hz=$(getconf CLK_TCK)

echo "flood: $(cat "$OUT/truth")"
echo "records written:        $(wc -l <"$OUT/records")"
echo "records by event:       $(python3 -c '
import json,sys,collections
c=collections.Counter()
for l in open(sys.argv[1]):
    r=json.loads(l); c[r["collector"]+"/"+r["event"]]+=1
print(", ".join(f"{k}={v}" for k,v in c.most_common(8)))' "$OUT/records")"
echo "lost (counted):         $(python3 -c '
import json,sys
t={"ringbuf_drops":0,"map_full":0,"no_task_state":0}
for l in open(sys.argv[1]):
    r=json.loads(l)
    if r["event"]=="lost":
        for k in t: t[k]+=r[k]
print(t)' "$OUT/records")"
echo "exit summary:           $(grep 'ended' "$OUT/log")"
echo "proc_image peak RSS:    ${hwm} KiB (at end ${rss} KiB)"
echo "proc_image CPU:         $(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$SECS" 'BEGIN {printf "%.1f%% of one core", 100 * d / hz / s}')"
echo "map fill (name max peak): $(sort -k1,1 -k3,3n "$OUT/fill" | awk '{peak[$1]=$3; max[$1]=$2} END {for (m in peak) printf "%s %d/%d  ", m, peak[m], max[m]}')"
rm -rf "$OUT"
