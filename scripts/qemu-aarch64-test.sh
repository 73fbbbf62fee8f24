#!/usr/bin/env bash
# tests/kernel_6_1.rs on aarch64: cross-builds proc_image for
# aarch64-unknown-linux-gnu and runs the same checks in Debian 12's arm64 6.1
# kernel under qemu-system-aarch64 (TCG, about 10 times slower than the x86
# guest: minutes, so not in CI). Installs what is missing first: the arm64
# architecture in dpkg, Debian's cross gcc, arm64 libelf/zlib, qemu-system-arm
# and the Rust target.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export PATH="$HOME/.cargo/bin:$PATH"

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
[ -e /usr/lib/aarch64-linux-gnu/pkgconfig/libelf.pc ] || need+=(libelf-dev:arm64)
[ -e /usr/lib/aarch64-linux-gnu/pkgconfig/zlib.pc ] || need+=(zlib1g-dev:arm64)
if [ "${#need[@]}" -gt 0 ]; then
	echo "qemu-aarch64-test: installing ${need[*]}"
	dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
	rustup target add aarch64-unknown-linux-gnu

# the checks run on the host; the guest's timeouts are scaled for TCG
export PROC_IMAGE_QEMU_ARCH=aarch64 PROC_IMAGE_QEMU_TIMEOUT=3600
if [ "$(id -u)" -ne 0 ]; then
	exec sudo -E env "PATH=$PATH" cargo test --locked --test kernel_6_1 -- --test-threads=1 "$@"
fi
exec cargo test --locked --test kernel_6_1 -- --test-threads=1 "$@"
