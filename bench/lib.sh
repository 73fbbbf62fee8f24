# Shared helpers for the benchmarks (sourced). Each benchmark measures its
# configurations in one invocation and prints ratios to the untraced run:
# absolute numbers differ between machines, ratios measured together do not.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" -ne 0 ]; then echo "benchmarks load BPF: run as root" >&2; exit 1; fi
# bpftrace finds tracepoints in tracefs, which a fresh boot may not have
# mounted (proc_image mounts what it needs itself)
if [ ! -d /sys/kernel/tracing/events ]; then
	mount -t tracefs tracefs /sys/kernel/tracing
fi
(cd "$ROOT" && cargo build --release --bins --quiet)
PI="$ROOT/target/release/proc_image"
CTL="$ROOT/target/release/controller"
WL="$ROOT/target/release/proc_image_workload"
export PROC_IMAGE_PIN_DIR="/sys/fs/bpf/pi_bench_$$"
REPS=${REPS:-5}
PI_PID=""

cleanup() {
	[ -n "$PI_PID" ] && kill "$PI_PID" 2>/dev/null || true
	[ -n "${OTHER_PID:-}" ] && kill "$OTHER_PID" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT

# pi_start ARGS...: start proc_image (output discarded) and wait until ready
pi_start() {
	local log
	log=$(mktemp)
	"$PI" "$@" >/dev/null 2>"$log" &
	PI_PID=$!
	for _ in $(seq 1 600); do
		grep -q ready "$log" && { rm -f "$log"; return 0; }
		kill -0 "$PI_PID" 2>/dev/null || { cat "$log" >&2; exit 1; }
		sleep 0.1
	done
	echo "proc_image did not start" >&2
	exit 1
}

pi_stop() {
	"$CTL" -f >/dev/null
	wait "$PI_PID" || true
	PI_PID=""
}

# run_once MODE N [ACTIVATE-ARGS...]: one timed workload run, prints ns/op.
# With ACTIVATE-ARGS, controller -a ARGS -P <workload pid> runs first.
run_once() {
	local mode=$1 n=$2
	shift 2
	local fifo out
	fifo=$(mktemp -u)
	out=$(mktemp)
	mkfifo "$fifo"
	"$WL" "$mode" "$n" --wait <"$fifo" >"$out" &
	local wl=$!
	exec 9>"$fifo"
	if [ $# -gt 0 ]; then "$CTL" -a -P "$wl" "$@" >/dev/null; fi
	echo go >&9
	exec 9>&-
	wait "$wl"
	sed -n 's/.*"ns_per_op":\([0-9.e+-]*\).*/\1/p' "$out"
	rm -f "$fifo" "$out"
}

# measure MODE N [ACTIVATE-ARGS...]: median ns/op of REPS runs
measure() {
	for _ in $(seq 1 "$REPS"); do run_once "$@"; done | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

# row LABEL BASE VALUE: one line of the table
row() {
	awk -v l="$1" -v b="$2" -v v="$3" 'BEGIN {printf "  %-44s %10.1f ns/op  %6.3fx\n", l, v, v / b}'
}

# floor_start syscalls|sched: no-op BPF programs on the collectors' hooks
floor_start() {
	local out
	out=$(mktemp)
	exec 8> >("$WL" noop-hooks "$1" >"$out")
	until grep -q ready "$out"; do sleep 0.1; done
	rm -f "$out"
}
floor_stop() { exec 8>&-; sleep 0.5; }

# bpftrace_start PROGRAM: run bpftrace until bpftrace_stop
bpftrace_start() {
	local log
	log=$(mktemp)
	bpftrace -e "$1" >"$log" 2>&1 &
	BT_PID=$!
	until grep -q Attaching "$log" && sleep 1; do
		kill -0 $BT_PID 2>/dev/null || { cat "$log" >&2; exit 1; }
		sleep 0.2
	done
	rm -f "$log"
}
bpftrace_stop() { bt_kill "$BT_PID"; }

# bt_kill PID: end a bpftrace. It takes SIGINT only once its handler is set
# (a background job of a script starts with SIGINT ignored), which a loaded
# machine can delay past the attach: ask until it ends, then SIGKILL
bt_kill() {
	for _ in $(seq 1 40); do
		kill -INT "$1" 2>/dev/null || break
		sleep 0.25
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# cpu_ticks PID: utime + stime of a process so far
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# stats_on / stats_off: the kernel's BPF run-time stats on while a
# `proc_image_workload bpf-stats-on` holds its BPF_ENABLE_STATS fd (its
# stdin is fd 6); kernel.bpf_stats_enabled is never written
STATS_PID=""
stats_on() {
	local fifo out
	fifo=$(mktemp -u)
	out=$(mktemp)
	mkfifo "$fifo"
	"$WL" bpf-stats-on <"$fifo" >"$out" 2>&1 &
	STATS_PID=$!
	exec 6>"$fifo"
	rm -f "$fifo"
	until grep -q ready "$out"; do
		kill -0 "$STATS_PID" 2>/dev/null || { cat "$out" >&2; exit 1; }
		sleep 0.1
	done
	rm -f "$out"
}
stats_off() { exec 6>&-; wait "$STATS_PID" 2>/dev/null || true; STATS_PID=""; }

# stats_of [--uprobes] PID: "RUNS RUN_NS" of the BPF programs process PID
# holds (--uprobes: of its uprobes only), so far
stats_of() { "$WL" bpf-stats-of "$@" | sed -n 's/.*"runs":\([0-9]*\),"run_ns":\([0-9]*\).*/\1 \2/p'; }

# bpf_stats_on / bpf_stats_off: the kernel's BPF run-time stats, on only for
# a measuring pass (they cost a little); put back as found, even on a failure
bpf_stats_on() {
	BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
	trap 'sysctl -q kernel.bpf_stats_enabled="$BPF_STATS_WAS"; cleanup' EXIT
	sysctl -q kernel.bpf_stats_enabled=1
}
bpf_stats_off() { sysctl -q kernel.bpf_stats_enabled="$BPF_STATS_WAS"; trap cleanup EXIT; }

# bpf_prog_stats LABEL PID NAME-PREFIX: run count and ns per run of the
# programs of process PID (its fds) whose name starts with NAME-PREFIX
bpf_prog_stats() {
	local ids
	ids=$(sed -n 's/^prog_id:\s*//p' /proc/"$2"/fdinfo/* 2>/dev/null | sort -u | tr '\n' ' ')
	bpftool prog show | awk -v l="$1" -v ids=" $ids" -v p="$3" '
		function out() { if (name != "" && index(name, p) == 1 && cnt > 0 && index(ids, " " id " "))
			printf "  %-28s %-22s %10d runs %7.1f ns/run\n", l, name, cnt, ns / cnt }
		/^[0-9]+:/ { out(); id = $1; sub(":", "", id); name = ""; cnt = 0; ns = 0
			for (i = 1; i < NF; i++) {
				if ($i == "name") name = $(i + 1)
				if ($i == "run_time_ns") ns = $(i + 1)
				if ($i == "run_cnt") cnt = $(i + 1) } }
		END { out() }'
}
