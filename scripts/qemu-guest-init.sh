#!/bin/busybox sh
# /init of the initramfs scripts/qemu-kernel-test.sh boots: one proc_image
# loads every collector, then each collector traces a workload of known
# behaviour. Nothing is checked here: every file of /tmp/out goes back to
# the host on $DATA (a serial port), each after a line "@@ name", and
# tests/kernel_6_1.rs checks them.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
# tracefs, debugfs and bpffs stay unmounted, as a fresh boot may leave
# them: proc_image mounts what it needs (tracefs, bpffs) on these kernels too
. /guest.env
# the console also gets KERN_WARNING and the dumps that follow a soft
# lockup report (printed at the default level): where a stalled guest is
echo 5 >/proc/sys/kernel/printk
if [ -n "$DUMP_BTF" ]; then
	stty -F "$DATA" raw -echo 2>/dev/null
	{
		echo "@@ btf"
		base64 /sys/kernel/btf/vmlinux
		echo "@@ end"
	} >"$DATA"
	poweroff -f
fi
O=/tmp/out
mkdir -p $O
uname -r >$O/uname

log() { echo "guest: $*" >/dev/console; }

# wait_for FILE PATTERN COUNT SECS: until FILE has COUNT lines matching PATTERN
wait_for() {
	i=0
	while [ "$(grep -c "$2" "$1" 2>/dev/null)" -lt "$3" ]; do
		i=$((i + 1))
		[ $i -gt $(($4 * 10 * ${SLOW:-1})) ] && { log "timeout waiting for $2 in $1"; return 1; }
		sleep 0.1
	done
}

# start NAME ARGS...: the workload, its stdin a fifo, its stdout NAME.truth
start() {
	name=$1
	shift
	rm -f /tmp/go
	mkfifo /tmp/go
	/bin/proc_image_workload "$@" </tmp/go >$O/$name.truth &
	WPID=$!
	# read-write: never blocks (a write-only open waits for the reader, and
	# a SIGCHLD of an earlier child interrupted it once: EINTR, and the
	# shell, init, died on the failed redirection)
	exec 3<>/tmp/go
	# the shell forked for it has become the workload
	while [ "$(readlink /proc/$WPID/exe)" != /bin/proc_image_workload ]; do sleep 0.05; done
	# and is asleep (in its read of the fifo), not still starting up: a
	# syscall it makes after the activation below would be counted
	while [ "$(cut -d' ' -f3 /proc/$WPID/stat)" != S ]; do sleep 0.05; done
	echo "{\"phase\":\"$name\",\"pid\":$WPID}" >>$O/phases
}
go() { echo go >&3; exec 3>&-; }
ctl() {
	echo "\$ controller $*" >>$O/controller
	CTL_OK=1
	timeout 120 /bin/controller "$@" >>$O/controller 2>&1 || { echo "exit $?" >>$O/controller; CTL_OK=0; }
	[ "$CTL_OK" = 1 ] || log "controller $* failed: $(tail -1 $O/controller)"
}
finish_phase() { # NAME: the workload's exit status, then its target_gone
	wait $WPID
	echo "{\"phase\":\"$1\",\"pid\":$WPID,\"exit\":$?}" >>$O/phases
	# (an activation refused, as on a kernel that did not load the collector, has none)
	[ "$CTL_OK" = 1 ] || return 0
	gone=$((gone + 1))
	wait_for $O/records '"event":"target_gone"' $gone 30
}
gone=0

log "starting proc_image"
/bin/proc_image -a --json >$O/records 2>$O/proc_image.err &
PI=$!
wait_for $O/proc_image.err 'ready' 1 120 || true
ctl --status

log "keytime: lifecycle"
start lifecycle lifecycle --forks 3 --vforks 2 --threads 4 --sleep-ms 200 --exit-code 7
ctl -a -P $WPID -k
go
finish_phase lifecycle

log "keytime: failed execs"
start exec_fail exec-fail
ctl -a -P $WPID -k 0 --exec-failures
go
finish_phase exec_fail

log "keytime: an OOM kill"
mkdir -p /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup
echo +memory >/sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/oom
echo 33554432 >/sys/fs/cgroup/oom/memory.max
start oom oom
echo $WPID >/sys/fs/cgroup/oom/cgroup.procs
ctl -a -P $WPID -k 0
go
finish_phase oom
rmdir /sys/fs/cgroup/oom

log "syscall: known syscalls"
# one long interval: the exact counts do not depend on where intervals end
start syscalls syscalls --getppid 10000 --writes 500 --sleep-ms 50
ctl -a -P $WPID -s 10 -i 60000
go
finish_phase syscalls
# and over several intervals of the default length
start syscalls_intervals syscalls --getppid 100000 --writes 500 --sleep-ms 50
ctl -a -P $WPID -s 10
go
finish_phase syscalls_intervals

log "resource"
start resource resource --burn-ms 1000 --alloc-mib 100 --io-mib 20 --pause-ms 700 --dir /tmp
wait_for $O/resource.truth '"event":"ready"' 1 30
ctl -a -P $WPID -r -i 200
go
finish_phase resource

log "lock"
start locks locks
wait_for $O/locks.truth 'mutex' 1 30
ctl -a -P $WPID -l
go
finish_phase locks

log "futex"
start futex futex --lock pthread --rounds 20 --batch 10
wait_for $O/futex.truth '"event":"ready"' 1 30
ctl -a -P $WPID -M
go
finish_phase futex

log "schedule"
/bin/proc_image_workload sched --busy-threads 2 --secs 60 >$O/sched.truth &
WPID=$!
echo "{\"phase\":\"sched\",\"pid\":$WPID}" >>$O/phases
wait_for $O/sched.truth '"event":"threads"' 1 30
busy=$(sed -n 's/.*"busy":\[\([0-9]*\).*/\1/p' $O/sched.truth)
sleeper=$(sed -n 's/.*"sleeper":\([0-9]*\).*/\1/p' $O/sched.truth)
log "schedule: the busy thread"
ctl -a -p "$busy" -S
sleep 2
log "schedule: the sleeper"
ctl -a -p "$sleeper" -S
sleep 2
log "schedule: deactivate"
ctl -d
kill $WPID
wait $WPID

log "status, end"
ctl --status
ctl -f
# bounded: a proc_image that does not end must not keep the results in here
i=0
while kill -0 $PI 2>/dev/null && [ $i -lt $((600 * ${SLOW:-1})) ]; do
	i=$((i + 1))
	sleep 0.1
done
if kill -0 $PI 2>/dev/null; then
	log "proc_image did not end; its threads' kernel stacks:"
	for t in /proc/$PI/task/*; do
		log "$(cat $t/comm) $(cat $t/stack 2>/dev/null | tr '\n' ' ')"
	done
	tail -5 $O/proc_image.err >/dev/console
	kill -9 $PI
fi
wait $PI
echo "{\"phase\":\"proc_image\",\"exit\":$?}" >>$O/phases
log "done"

# back to the host: raw, so that no \n becomes \r\n
stty -F "$DATA" raw -echo 2>/dev/null
for f in $O/*; do
	echo "@@ ${f##*/}"
	cat "$f"
	echo
done >"$DATA"
echo "@@ end" >"$DATA"
sync
poweroff -f
