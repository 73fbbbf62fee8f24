#!/usr/bin/env bash
# Cost of the exporter and the trace writer: a pipe ping-pong (both ends on
# CPU 0) with keytime active on the workload, every context switch a record:
#   (a) no proc_image
#   (b) keytime, records to stdout only (text to /dev/null)
#   (c) keytime, -o none --metrics, scraped every second
#   (d) keytime, -o none --trace-out FILE
#   (e) keytime, stdout + --metrics (scraped) + --trace-out
# and proc_image's own CPU time per configuration (the records are handled
# on its main thread, off the workload's path, so the workload's ratio shows
# only what waiting for proc_image costs; proc_image's CPU shows the rest).
# Usage: sudo bench/visualization.sh   (REPS=N runs per figure, median taken)
source "$(dirname "$0")/lib.sh"

N=${N:-100000}
TRACE=$(mktemp /tmp/pi_bench_trace.XXXXXX.json)
PORT=${PORT:-19464}
SCRAPER=""
stop_scraper() { [ -n "$SCRAPER" ] && kill "$SCRAPER" 2>/dev/null; wait "$SCRAPER" 2>/dev/null || true; SCRAPER=""; }
trap 'stop_scraper; rm -f "$TRACE"; cleanup' EXIT

# config LABEL PROC_IMAGE-ARGS...: median ns/op and proc_image's CPU ticks
config() {
	local scrape=$1
	shift
	pi_start -k "$@"
	if [ "$scrape" = scrape ]; then
		(while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$PORT/metrics"; done) &
		SCRAPER=$!
	fi
	local t0 v t1
	t0=$(cpu_ticks "$PI_PID")
	v=$(measure bench-pipe "$N" -k)
	t1=$(cpu_ticks "$PI_PID")
	stop_scraper
	pi_stop
	echo "$v $((t1 - t0))"
}

a=$(measure bench-pipe "$N")
read -r b bt < <(config none)
read -r c ct < <(config scrape -o none --metrics "$PORT")
read -r d dt < <(config none -o none --trace-out "$TRACE")
trace_size=$(stat -c %s "$TRACE")
read -r e et < <(config scrape --metrics "$PORT" --trace-out "$TRACE")

echo "bench-pipe with keytime active on the workload ($N round trips, median of $REPS)"
row "(a) no proc_image" "$a" "$a"
row "(b) stdout only" "$a" "$b"
row "(c) -o none --metrics, scraped every 1 s" "$a" "$c"
row "(d) -o none --trace-out" "$a" "$d"
row "(e) stdout + --metrics + --trace-out" "$a" "$e"
awk -v b="$b" -v c="$c" -v d="$d" -v e="$e" 'BEGIN {
	printf "  relative to stdout only: metrics %.3fx, trace %.3fx, all %.3fx\n", c / b, d / b, e / b }'
hz=$(getconf CLK_TCK)
awk -v hz="$hz" -v r="$REPS" -v b="$bt" -v c="$ct" -v d="$dt" -v e="$et" 'BEGIN {
	printf "  proc_image CPU over the %d runs: stdout %.2f s, metrics %.2f s, trace %.2f s, all %.2f s\n", r, b / hz, c / hz, d / hz, e / hz }'
echo "  trace file of one configuration: $((trace_size / 1024)) KiB"
