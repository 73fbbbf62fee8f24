#!/usr/bin/env bash
# The demo: build, start proc_image with every collector, the Prometheus
# exporter and the trace export, then trace two small workloads of known
# behaviour with controller:
#  1. keytime on a process that forks 3 times, vforks twice, starts 2
#     threads, sleeps 200 ms, spins 50 ms, execs and exits with code 7;
#  2. every collector (keytime, lock, resource, syscall, schedule) on a
#     process whose threads contend for a pthread mutex (20 ms holds), share
#     a rwlock, hold a spinlock 5 ms and fail a trylock;
# then show what proc_image printed, a few of its metrics, and where the
# Perfetto trace is. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" -ne 0 ]; then
	exec sudo -E env "PATH=$PATH" "$0" "$@"
fi

echo "== building (release)"
cargo build --release --bins --quiet
BIN=target/release
export PROC_IMAGE_PIN_DIR=/sys/fs/bpf/proc_image_demo
OUT=$(mktemp -d)
trap 'kill $PI $WL 2>/dev/null || true; rm -rf "$OUT"' EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TRACE=$PWD/proc_image_demo_trace.json
echo "== sudo proc_image -a --metrics 127.0.0.1:$PORT --trace-out $TRACE"
echo "   (loads and verifies every collector, then waits attached to nothing)"
$BIN/proc_image -a --metrics "127.0.0.1:$PORT" --trace-out "$TRACE" >"$OUT/records" 2>"$OUT/log" &
PI=$!
until grep -q ready "$OUT/log"; do
	kill -0 $PI 2>/dev/null || { cat "$OUT/log"; exit 1; }
	sleep 0.1
done
cat "$OUT/log"

# run_traced NAME CONTROLLER-FLAGS -- WORKLOAD-ARGS: start the workload (it
# waits on stdin), activate on it, let it go, wait for it and its records
run_traced() {
	local name=$1 flags=$2
	shift 3
	mkfifo "$OUT/go_$name"
	$BIN/proc_image_workload "$@" <"$OUT/go_$name" >"$OUT/truth_$name" &
	WL=$!
	exec 9>"$OUT/go_$name"
	echo "== controller -a -P $WL $flags   ($name: the workload waits on stdin until now)"
	# shellcheck disable=SC2086
	$BIN/controller -a -P $WL $flags
	echo go >&9
	exec 9>&-
	wait $WL || echo "== workload exited with status $?"
	GONE=$((GONE + 1))
	until [ "$(grep -c "has exited" "$OUT/log")" -ge $GONE ]; do sleep 0.1; done
}
GONE=0

run_traced lifecycle "-k" -- lifecycle --forks 3 --vforks 2 --threads 2 --sleep-ms 200 --busy-ms 50 --exit-code 7
run_traced locks "" -- locks

echo "== a scrape of http://127.0.0.1:$PORT/metrics (a few lines)"
python3 -c 'import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1]).read().decode()
keep = ("proc_image_lifecycle_events_total{", "proc_image_lock_hold_seconds_count{", "proc_image_collector_active{")
print("\n".join(l for l in text.splitlines() if l.startswith(keep)))' "http://127.0.0.1:$PORT/metrics"

echo "== controller -f"
$BIN/controller -f
wait $PI
echo
echo "== what proc_image printed"
cat "$OUT/records"
echo
echo "== the workloads' own account"
cat "$OUT/truth_lifecycle" "$OUT/truth_locks"
echo
echo "== the timeline: open $TRACE in https://ui.perfetto.dev (or chrome://tracing)"
