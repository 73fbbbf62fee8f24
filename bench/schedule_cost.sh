#!/usr/bin/env bash
# The schedule collector's own cost per event: the kernel's run time of its
# BPF programs (kernel.bpf_stats_enabled=1, restored after) divided by their
# runs, while a pipe ping-pong switches tasks as fast as it can, with the
# collector on the ping-pong (-P) and on the whole system. The programs are
# told from other proc_images' by the descriptors this one holds.
# Usage: sudo bench/schedule_cost.sh [PROC_IMAGE_BIN_DIR]   (default target/release;
# give another build's directory to compare two commits the same way)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release}
PI="$BIN/proc_image" CTL="$BIN/controller" WL="$BIN/proc_image_workload"
N=${N:-200000}
PIN="/sys/fs/bpf/pi_schedcost_$$"
old=$(sysctl -n kernel.bpf_stats_enabled)
PI_PID=""
cleanup() {
	sysctl -qw kernel.bpf_stats_enabled="$old"
	[ -n "$PI_PID" ] && kill "$PI_PID" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT

# prog_stats: "name run_cnt run_time_ns" of this proc_image's schedule
# programs (their ids from its descriptors' fdinfo)
prog_stats() {
	local ids
	ids=$(grep -h '^prog_id:' /proc/"$PI_PID"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -u)
	bpftool prog show -j | python3 -c '
import json, sys
ids = set(int(i) for i in sys.argv[1].split())
for p in json.load(sys.stdin):
    if p["id"] in ids and p.get("name", "").startswith("handle__sched"):
        print(p["name"], p.get("run_cnt", 0), p.get("run_time_ns", 0))' "$ids"
}

"$PI" -S --pin-dir "$PIN" >/dev/null 2>/tmp/schedcost.$$ &
PI_PID=$!
for _ in $(seq 1 600); do grep -q ready /tmp/schedcost.$$ && break; sleep 0.1; done
rm -f /tmp/schedcost.$$
sysctl -qw kernel.bpf_stats_enabled=1
for scope in target system; do
	fifo=$(mktemp -u)
	mkfifo "$fifo"
	"$WL" bench-pipe "$N" --wait <"$fifo" >/dev/null &
	wl=$!
	exec 9>"$fifo"
	if [ "$scope" = target ]; then "$CTL" --pin-dir "$PIN" -a -P "$wl" -S >/dev/null
	else "$CTL" --pin-dir "$PIN" -a -S >/dev/null; fi
	before=$(prog_stats)
	echo go >&9
	exec 9>&-
	wait "$wl"
	after=$(prog_stats)
	rm -f "$fifo"
	join <(echo "$before" | sort) <(echo "$after" | sort) | awk -v s="$scope" '
		$4 > $2 { printf "  %-8s %-30s %9d runs %7.1f ns/run\n", s, $1, $4 - $2, ($5 - $3) / ($4 - $2) }'
done
"$CTL" --pin-dir "$PIN" -f >/dev/null
wait "$PI_PID" || true
PI_PID=""
