#!/usr/bin/env bash
# Flood: whole-system collection by every collector but lock (keytime at
# level 1, syscall, schedule, resource) while a workload runs 1,000
# fork+exit/s and 1M syscalls/s for SECS (default 30) seconds. Prints events
# seen, events counted lost, proc_image's peak RSS and CPU, how full its BPF
# maps got, and whether it met its budget: under 5% of one core, under
# 100 MiB, no loss, the flood at its rate.
# Then a second, shorter flood (STATS_SECS, default 10) with --bpf-stats
# gives the run time of the BPF programs per collector (they run in the
# traced tasks, not in proc_image). The stats cost a clock read or two per
# program run, ~4 million runs a second here: the budget run goes without.
# Usage: sudo bench/stress.sh [SECS]
source "$(dirname "$0")/lib.sh"
SECS=${1:-30}
STATS_SECS=${STATS_SECS:-10}
OUT=$(mktemp -d)

# flood_with SECS DIR [proc_image args...]: one flood under proc_image
flood_with() {
	local secs=$1 dir=$2
	shift 2
	mkdir -p "$dir"
	"$PI" -k -s -S -r --json "$@" >"$dir/records" 2>"$dir/log" &
	PI_PID=$!
	until grep -q ready "$dir/log"; do kill -0 $PI_PID || { cat "$dir/log"; exit 1; }; sleep 0.1; done
	"$CTL" -a -k 1 -s -S -r >/dev/null
	ticks() { awk '{print $14 + $15}' "/proc/$PI_PID/stat"; }
	local t0 t1
	t0=$(ticks)
	# sample how full proc_image's hash maps are every 5 s, at the lowest
	# priority (bpftool's dumps are not free: they must not slow the
	# flood); its map fds are listed in /proc/PID/fdinfo with their
	# map_type and map_id
	(
		while kill -0 $PI_PID 2>/dev/null; do
			for id in $(awk '/^map_type:/ {t=$2} /^map_id:/ && (t == 1 || t == 9) {print $2}' /proc/$PI_PID/fdinfo/* 2>/dev/null | sort -u); do
				bpftool map show id "$id" -j 2>/dev/null | python3 -c '
import json,sys,subprocess
m=json.load(sys.stdin)
n=len(json.loads(subprocess.run(["bpftool","map","dump","id",str(m["id"]),"-j"],capture_output=True,text=True).stdout or "[]"))
print(m["name"], m["max_entries"], n)'
			done
			sleep 5
		done
	) >"$dir/fill" &
	local sampler=$!
	renice -n 19 -p $sampler >/dev/null

	"$CTL" --status >"$dir/status0"
	"$WL" stress --secs "$secs" >"$dir/truth"
	t1=$(ticks)
	# the stats in the status are a second old at most: let them catch up
	sleep 1.5
	"$CTL" --status >"$dir/status1"
	awk '/VmHWM/ {print $2}' "/proc/$PI_PID/status" >"$dir/hwm"
	awk '/VmRSS/ {print $2}' "/proc/$PI_PID/status" >"$dir/rss"
	"$CTL" -f >/dev/null
	wait $PI_PID || true
	PI_PID=""
	kill $sampler 2>/dev/null || true
	echo $((t1 - t0)) >"$dir/ticks"
}

flood_with "$SECS" "$OUT/budget"
flood_with "$STATS_SECS" "$OUT/stats" --bpf-stats
hz=$(getconf CLK_TCK)
B=$OUT/budget
hwm=$(cat "$B/hwm")
rss=$(cat "$B/rss")
ticks=$(cat "$B/ticks")

echo "flood: $(cat "$B/truth")"
echo "records written:        $(wc -l <"$B/records")"
echo "records by event:       $(python3 -c '
import json,sys,collections
c=collections.Counter()
for l in open(sys.argv[1]):
    r=json.loads(l); c[r["collector"]+"/"+r["event"]]+=1
print(", ".join(f"{k}={v}" for k,v in c.most_common(8)))' "$B/records")"
echo "lost (counted):         $(python3 -c '
import json,sys
t={"ringbuf_drops":0,"map_full":0,"no_task_state":0}
for l in open(sys.argv[1]):
    r=json.loads(l)
    if r["event"]=="lost":
        for k in t: t[k]+=r[k]
print(t)' "$B/records")"
echo "exit summary:           $(grep 'ended' "$B/log")"
echo "proc_image peak RSS:    ${hwm} KiB (at end ${rss} KiB)"
echo "proc_image CPU:         $(awk -v d="$ticks" -v hz="$hz" -v s="$SECS" 'BEGIN {printf "%.1f%% of one core", 100 * d / hz / s}')"
echo "map fill (name max peak): $(sort -k1,1 -k3,3n "$B/fill" | awk '{peak[$1]=$3; max[$1]=$2} END {for (m in peak) printf "%s %d/%d  ", m, peak[m], max[m]}')"
# BPF run time per collector over the stats flood (+ the 1.5 s after), from
# the --bpf-stats table of controller --status: "collector program runs ms ms ns/run"
python3 - "$OUT" "$SECS" "$ticks" "$hz" "$hwm" "$STATS_SECS" <<'PY'
import json, sys
out, secs, ticks, hz, hwm, stats_secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
def table(f):
    t = {}
    for l in open(f"{out}/stats/{f}"):
        x = l.split()
        if len(x) == 6 and x[4] == "ms":
            t[(x[0], x[1])] = (int(x[2]), float(x[3]))
    return t
a, b = table("status0"), table("status1")
per = {}
for k, (runs, ms) in b.items():
    r0, m0 = a.get(k, (0, 0.0))
    c = per.setdefault(k[0], [0, 0.0])
    c[0] += runs - r0
    c[1] += ms - m0
stats_truth = json.loads(open(f"{out}/stats/truth").read())
print(f"BPF run time over a {stats_secs} s flood with --bpf-stats ({stats_truth['syscalls'] / stats_secs:,.0f} syscalls/s; in the traced tasks, not in proc_image's CPU):")
for c, (runs, ms) in sorted(per.items()):
    print(f"  {c:9} {runs:>11} runs {ms:10.1f} ms  {ms * 1e6 / runs if runs else 0:6.0f} ns/run  {ms / 10 / (stats_secs + 1.5):5.2f}% of one core")
truth = json.loads(open(f"{out}/budget/truth").read())
lost = {"ringbuf_drops": 0, "map_full": 0, "no_task_state": 0}
for l in open(f"{out}/budget/records"):
    r = json.loads(l)
    if r["event"] == "lost":
        for k in lost:
            lost[k] += r[k]
cpu = 100 * ticks / hz / secs
checks = [
    (f"proc_image CPU {cpu:.1f}% of one core < 5%", cpu < 5),
    (f"peak RSS {hwm / 1024:.1f} MiB < 100 MiB", hwm < 100 * 1024),
    (f"no loss ({sum(lost.values())} counted)", sum(lost.values()) == 0),
    (f"the flood ran: {truth['syscalls'] / secs:,.0f} syscalls/s, {truth['forks'] / secs:,.0f} forks/s (>= 95% of 1M and 1,000)",
     truth["syscalls"] >= 0.95e6 * secs and truth["forks"] >= 950 * secs),
]
for what, ok in checks:
    print(f"{'meets' if ok else 'FAILS'}: {what}")
PY
rm -rf "$OUT"
