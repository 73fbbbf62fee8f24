#!/usr/bin/env bash
# Boot Debian 12's 6.1 kernel under QEMU (TCG) with an initramfs that holds
# the release binaries, the test workload and busybox; inside, one proc_image
# loads every collector and each collector traces a workload of known
# behaviour. The guest's raw output (proc_image's JSON records, the
# workloads' own account, controller's answers) comes back on a second
# serial port; tests/kernel_6_1.rs checks it on the host.
#
#   scripts/qemu-kernel-test.sh [--arch x86_64|aarch64] [--out DIR] [--no-build] [--fetch-only]
#   scripts/qemu-kernel-test.sh --arch aarch64 --dump-btf FILE   # the guest kernel's BTF, for vmlinux/
#   scripts/qemu-kernel-test.sh --kernel 5.10   # Debian 11's kernel instead (x86_64; apt state of its own)
#
# Writes DIR/results.txt ("@@ name" lines start each guest file) and
# DIR/console.log (the guest's console). Exit 0 when the guest ran to its
# end, 1 when it did not, 2 when it cannot run here (the reason on stderr).
#
# Needs qemu-system-x86 (or qemu-system-arm), busybox-static and, for
# aarch64, the cross toolchain (scripts/setup.sh installs them). The
# kernel package is downloaded once with apt-get into $PROC_IMAGE_KERNEL_CACHE
# (default /var/cache/proc_image/kernels) and unpacked there: nothing is
# installed into /boot.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=x86_64
out=""
build=1
fetch_only=0
dump_btf=""
kernel=6.1
while [ $# -gt 0 ]; do
	case "$1" in
	--arch) arch="$2"; shift 2 ;;
	--out) out="$2"; shift 2 ;;
	--no-build) build=0; shift ;;
	--fetch-only) fetch_only=1; shift ;;
	--kernel) kernel="$2"; shift 2 ;;
	--dump-btf) dump_btf="$2"; build=0; shift 2 ;;
	*) echo "usage: $0 [--arch x86_64|aarch64] [--out DIR] [--no-build] [--fetch-only]" >&2; exit 2 ;;
	esac
done
cannot() { echo "qemu-kernel-test: cannot run: $*" >&2; exit 2; }

case "$arch" in
x86_64)
	deb_arch=amd64; qemu=qemu-system-x86_64; qemu_pkg=qemu-system-x86
	rust_target=""; console=ttyS0; data=/dev/ttyS1
	# nested KVM hangs at boot on these machines: TCG only, and one host
	# thread for all vCPUs. Multi-threaded TCG stalled 2 runs of ~30 under
	# host load: a vCPU kept re-entering the int3 that text_poke_bp() put on
	# a tracepoint's static call in __schedule() (irqs off) while proc_image,
	# closing a raw_tp link, waited for its IPI. thread=single: 7 of 7, and
	# faster here (the locks workload waits until its other thread is
	# really blocked, however late the emulator runs it)
	machine=(-machine q35 -accel tcg,thread=single -cpu max)
	;;
aarch64)
	deb_arch=arm64; qemu=qemu-system-aarch64; qemu_pkg=qemu-system-arm
	# one UART, and virtio is modular: the results follow the console's
	# last kernel message on the same port (loglevel=1 keeps the kernel quiet)
	rust_target=aarch64-unknown-linux-gnu; console=ttyAMA0; data=/dev/ttyAMA0
	machine=(-machine virt -accel tcg -cpu max)
	;;
*) cannot "unknown --arch $arch (x86_64 or aarch64)" ;;
esac

command -v "$qemu" >/dev/null || cannot "no $qemu (apt-get install $qemu_pkg)"
command -v busybox >/dev/null || cannot "no busybox (apt-get install busybox-static)"
busybox=/bin/busybox
[ "$arch" = x86_64 ] || busybox=""
cache="${PROC_IMAGE_KERNEL_CACHE:-/var/cache/proc_image/kernels}"
mkdir -p "$cache"

# --- the kernel: Debian 12's cloud 6.1 flavour, the version its metapackage names
# Debian 12 (bookworm) has 6.1; Debian 11 (bullseye) 5.10, whose package
# lists are kept apart from the machine's in the cache, so that apt's own
# state never sees bullseye
apt_opts=()
case "$kernel" in
6.1) ;;
5.10)
	[ "$arch" = x86_64 ] || cannot "--kernel 5.10 is for x86_64"
	b="$cache/apt-bullseye"
	mkdir -p "$b/lists/partial" "$b/cache"
	echo "deb http://deb.debian.org/debian bullseye main" >"$b/sources.list"
	apt_opts=(-o "Dir::Etc::sourcelist=$b/sources.list" -o Dir::Etc::sourceparts=-
		-o "Dir::State::Lists=$b/lists" -o "Dir::Cache=$b/cache" -o APT::Architectures::=amd64)
	;;
*) cannot "--kernel $kernel: 6.1 (Debian 12) or 5.10 (Debian 11)" ;;
esac
kernel_pkg() {
	apt-cache "${apt_opts[@]}" depends "linux-image-cloud-$deb_arch:$deb_arch" 2>/dev/null |
		sed -n "s/^ *Depends: \(linux-image-${kernel//./\\.}\.[0-9.-]*-cloud-$deb_arch\).*/\1/p" | head -1
}
kernel_dir() {
	local pkg
	pkg=$(kernel_pkg)
	if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
		apt-get "${apt_opts[@]}" update -qq >/dev/null 2>&1 || true
		pkg=$(kernel_pkg)
	fi
	if [ -z "$pkg" ]; then
		# no package lists for the arch: whatever was unpacked before
		pkg=$(ls -d "$cache"/linux-image-"$kernel".*-cloud-"$deb_arch" 2>/dev/null | sort -V | tail -1)
		pkg=${pkg##*/}
	fi
	[ -n "$pkg" ] || return 1
	if [ ! -d "$cache/$pkg/boot" ]; then
		(cd "$cache" && rm -f "$pkg"_*.deb && apt-get "${apt_opts[@]}" download -q "$pkg:$deb_arch" >/dev/null 2>&1) || return 1
		dpkg -x "$cache/$pkg"_*_"$deb_arch".deb "$cache/$pkg.tmp" && mv "$cache/$pkg.tmp" "$cache/$pkg"
		rm -f "$cache/$pkg"_*.deb
	fi
	echo "$cache/$pkg"
}
kdir=$(kernel_dir) ||
	cannot "no Debian $kernel cloud kernel for $deb_arch (apt-get update; for arm64 first dpkg --add-architecture arm64)"
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -1)
echo "qemu-kernel-test: kernel $(basename "$vmlinuz") ($arch, TCG)" >&2
[ "$fetch_only" = 0 ] || exit 0

# --- the binaries
if [ "$build" = 1 ]; then
	if [ -n "$rust_target" ]; then
		cargo build --release --locked --bins --target "$rust_target" >&2
	else
		cargo build --release --locked --bins >&2
	fi
fi
bindir=target/${rust_target:+$rust_target/}release
bins="proc_image controller proc_image_workload"
[ -z "$dump_btf" ] || bins=""
for b in $bins; do
	[ -x "$bindir/$b" ] || cannot "no $bindir/$b (cargo build --release${rust_target:+ --target $rust_target})"
done

# --- the initramfs
work=$(mktemp -d /tmp/proc_image_qemu.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,run}
if [ "$arch" = x86_64 ]; then
	[ -x "$busybox" ] || cannot "no busybox (apt-get install busybox-static)"
	! readelf -lW "$busybox" | grep -q 'interpreter' ||
		cannot "$busybox is linked dynamically (apt-get install busybox-static)"
	cp "$busybox" "$root/bin/busybox"
	libs_root=/
	strip_cmd=strip
else
	# arm64 busybox and C library from Debian's arm64 packages
	adir="$cache/arm64-userland"
	if [ ! -x "$adir/bin/busybox" ]; then
		mkdir -p "$adir.dl"
		(cd "$adir.dl" && apt-get download -q busybox-static:arm64 libc6:arm64 libelf1:arm64 zlib1g:arm64 libgcc-s1:arm64 >/dev/null 2>&1) ||
			cannot "cannot download arm64 busybox-static/libc6/libelf1/zlib1g/libgcc-s1 (dpkg --add-architecture arm64; apt-get update)"
		for d in "$adir.dl"/*.deb; do dpkg -x "$d" "$adir"; done
		rm -rf "$adir.dl"
	fi
	cp "$adir/bin/busybox" "$root/bin/busybox"
	libs_root="$adir"
	strip_cmd=aarch64-linux-gnu-strip
fi
for b in $bins; do
	cp "$bindir/$b" "$root/bin/$b"
	if command -v "$strip_cmd" >/dev/null; then "$strip_cmd" "$root/bin/$b"; fi
done
# the dynamic loader and libraries the binaries need, at the paths they name
if [ -n "$bins" ]; then
interp=$(readelf -lW "$bindir/proc_image" | sed -n 's/.*interpreter: \(.*\)]/\1/p')
needed=$(for b in proc_image controller proc_image_workload; do
	readelf -dW "$bindir/$b" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'
done | sort -u)
multiarch=$([ "$arch" = x86_64 ] && echo x86_64-linux-gnu || echo aarch64-linux-gnu)
mkdir -p "$root/lib/$multiarch" "$root$(dirname "$interp")"
for l in $needed; do
	src=""
	for d in "lib/$multiarch" "usr/lib/$multiarch"; do
		[ -e "$libs_root/$d/$l" ] && src="$libs_root/$d/$l" && break
	done
	[ -n "$src" ] || cannot "no $l for $arch under $libs_root"
	cp -L "$src" "$root/lib/$multiarch/$l"
done
ld_src=""
for d in "lib/$multiarch" "usr/lib/$multiarch"; do
	[ -e "$libs_root/$d/$(basename "$interp")" ] && ld_src="$libs_root/$d/$(basename "$interp")" && break
done
[ -n "$ld_src" ] || cannot "no dynamic loader $interp for $arch"
cp -L "$ld_src" "$root/lib/$multiarch/$(basename "$interp")"
[ -e "$root$interp" ] || ln -s "/lib/$multiarch/$(basename "$interp")" "$root$interp"
fi
cp scripts/qemu-guest-init.sh "$root/init"
chmod +x "$root/init"
{
	echo "DATA=$data"
	# TCG emulates arm64 on x86 about 10 times slower: longer waits
	echo "SLOW=$([ "$arch" = x86_64 ] && echo 1 || echo 10)"
	[ -z "$dump_btf" ] || echo "DUMP_BTF=1"
} >"$root/guest.env"
(cd "$root" && find . | busybox cpio -o -H newc >"$work/initramfs.cpio" 2>/dev/null)

# --- boot
out="${out:-$work/out}"
mkdir -p "$out"
rm -f "$out/results.txt" "$out/console.log"
if [ "$arch" = x86_64 ]; then
	serial=(-serial "file:$out/console.log" -serial "file:$out/results.txt")
else
	serial=(-serial "file:$out/results.txt")
fi
# the monitor on two FIFOs: a guest that does not end in time is asked
# where its CPUs are
mkfifo "$work/mon.in" "$work/mon.out"
start=$(date +%s)
limit=${PROC_IMAGE_QEMU_TIMEOUT:-600}
"$qemu" "${machine[@]}" -smp 2 -m 1G \
	-nodefaults -display none -no-reboot \
	-kernel "$vmlinuz" -initrd "$work/initramfs.cpio" \
	-append "console=$console rdinit=/init panic=-1 quiet loglevel=1 nokaslr" \
	-monitor "pipe:$work/mon" \
	"${serial[@]}" &
qpid=$!
while kill -0 "$qpid" 2>/dev/null && [ $(($(date +%s) - start)) -lt "$limit" ]; do
	sleep 1
done
if kill -0 "$qpid" 2>/dev/null; then
	timeout 5 sh -c 'echo "info registers -a" >"$1"' sh "$work/mon.in" || true
	sleep 2
	timeout 3 cat "$work/mon.out" >"$out/cpus.txt" 2>/dev/null || true
	kill "$qpid" 2>/dev/null || true
	{
		# nokaslr: /proc/kallsyms of a guest of this kernel names them
		echo "qemu-kernel-test: the guest did not end in $limit s; its CPUs:"
		sed -n 's/^\(CPU#[0-9]*\).*/\1/p; s/^\(RIP=[0-9a-f]*\).*/\1/p' "$out/cpus.txt" | paste -d' ' - -
	} | tee -a "$out/console.log" >&2
fi
wait "$qpid" 2>/dev/null || true
echo "qemu-kernel-test: guest ran $(($(date +%s) - start)) s; output in $out" >&2
[ -e "$out/console.log" ] || cp "$out/results.txt" "$out/console.log"
if [ -n "$dump_btf" ]; then
	sed -n '/^@@ btf/,/^@@ end/p' "$out/results.txt" | tr -d '\r' | grep -v '^@@' | base64 -d >"$dump_btf" ||
		{ echo "qemu-kernel-test: no BTF came back" >&2; exit 1; }
	echo "qemu-kernel-test: $(stat -c %s "$dump_btf") bytes of BTF in $dump_btf" >&2
	exit 0
fi
if ! grep -q '^@@ end' "$out/results.txt" 2>/dev/null; then
	echo "qemu-kernel-test: the guest did not finish; its console:" >&2
	tail -40 "$out/console.log" >&2 || true
	exit 1
fi
