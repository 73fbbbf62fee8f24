#!/usr/bin/env bash
# The whole test suite (what .ci/run calls): installs what is missing, then
# checks formatting and clippy and runs `cargo test` as root, which includes
# the integration tests that load real BPF programs. With CI=true a test that
# cannot load BPF fails instead of being skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(id -u)" -ne 0 ]; then
	exec sudo -E env "PATH=$PATH" "$0" "$@"
fi

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features flamegraph -- -D warnings
echo "== cargo test (unit and BPF integration tests, as root)"
# the BPF tests are #[ignore = "needs root"] (shown as ignored, not passed,
# when someone runs plain `cargo test`); as root they all run
# with --flamegraph's renderer, so that its SVG is tested too (a test build
# is not distributed; the default build leaves inferno out, see README)
case " $* " in
*" -- "*) cargo test --locked --no-fail-fast --features flamegraph "$@" --include-ignored ;;
*) cargo test --locked --no-fail-fast --features flamegraph "$@" -- --include-ignored ;;
esac
