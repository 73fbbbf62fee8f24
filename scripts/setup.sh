#!/usr/bin/env bash
# Install what building and testing proc_image needs on Debian/Ubuntu, only
# what is missing. Safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# command or file -> Debian package that provides it
need=()
check() { # check <test> <package>
	if ! eval "$1" >/dev/null 2>&1; then need+=("$2"); fi
}
check "command -v clang" clang
check "command -v llvm-strip || ls /usr/bin/llvm-strip-*" llvm
check "command -v pkg-config" pkg-config
check "command -v make" make
check "test -e /usr/include/libelf.h" libelf-dev
check "test -e /usr/include/zlib.h" zlib1g-dev
check "ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so*" libclang-dev
check "command -v strace" strace
check "command -v bpftrace" bpftrace
check "command -v setpriv" util-linux
check "command -v promtool" prometheus
check "command -v perf" linux-perf
check "command -v bpftool" bpftool
check "command -v musl-gcc" musl-tools
# tests/kernel_*.rs: Debian's kernels under QEMU, busybox in their initramfs
check "command -v qemu-system-x86_64" qemu-system-x86
check "test -x /bin/busybox" busybox-static
check "command -v readelf" binutils

if [ "${#need[@]}" -gt 0 ]; then
	echo "setup: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# the 6.1 and 5.10 kernel packages themselves, unpacked into a cache (not
# installed into /boot)
if [ "$(id -u)" -eq 0 ]; then
	for k in 6.1 5.10; do
		"$(dirname "$0")/qemu-kernel-test.sh" --fetch-only --kernel "$k" >/dev/null 2>&1 ||
			echo "setup: could not fetch Debian's $k kernel (tests/kernel_${k/./_}.rs will say why)"
	done
fi

if ! command -v cargo >/dev/null 2>&1; then
	if [ -x "$HOME/.cargo/bin/cargo" ]; then
		export PATH="$HOME/.cargo/bin:$PATH"
	else
		echo "setup: installing the Rust toolchain (rustup)"
		curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
		export PATH="$HOME/.cargo/bin:$PATH"
	fi
fi
# clippy and rustfmt are used by the test command
if command -v rustup >/dev/null 2>&1; then
	rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi
