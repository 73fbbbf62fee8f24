#!/usr/bin/env bash
# The demo: build, start proc_image, run a small workload of known behaviour
# (3 forks, 2 vforks, 2 threads, a 200 ms sleep, a 50 ms busy loop, an exec,
# exit code 7), activate keytime on it with controller, show what proc_image
# saw, and finish. Installs what is missing first.
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

echo "== sudo proc_image -a   (loads and verifies every collector, then waits detached)"
$BIN/proc_image -a >"$OUT/records" 2>"$OUT/log" &
PI=$!
until grep -q ready "$OUT/log"; do
	kill -0 $PI 2>/dev/null || { cat "$OUT/log"; exit 1; }
	sleep 0.1
done
cat "$OUT/log"

mkfifo "$OUT/go"
$BIN/proc_image_workload lifecycle --forks 3 --vforks 2 --threads 2 --sleep-ms 200 --busy-ms 50 --exit-code 7 \
	<"$OUT/go" >"$OUT/truth" &
WL=$!
exec 9>"$OUT/go"
echo "== controller -a -P $WL -k   (the workload waits on stdin until now)"
$BIN/controller -a -P $WL -k
echo go >&9
exec 9>&-
wait $WL || echo "== workload exited with status $?"
sleep 0.5
echo "== controller -f"
$BIN/controller -f
wait $PI
echo
echo "== what proc_image printed"
cat "$OUT/records"
echo
echo "== the workload's own account (pids of its children and threads)"
cat "$OUT/truth"
