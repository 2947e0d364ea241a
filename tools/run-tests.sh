#!/usr/bin/env bash
# The whole test suite, lab included: installs what the tests need (root, Debian), builds the
# guest (cached), the workspace, then runs every test. Extra arguments go to `cargo test`.
#   tools/run-tests.sh                 # everything
#   tools/run-tests.sh --test frontend # one integration test binary
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

if [ "$(id -u)" = 0 ]; then
    step "installing dependencies"
    tools/lab/install-deps.sh
    if [ -x tools/lab/build-guest.sh ]; then
        step "building the lab guest (cached)"
        tools/lab/build-guest.sh
    fi
else
    echo "not root: skipping dependency installation; tests that need root will say why they skip"
fi

step "style: rustfmt, clippy, docs"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "layering: vf-dataplane must not depend on vhost-user crates"
if cargo tree -p vf-dataplane -e normal --locked | grep -E "^.* (vhost|vhost-user-backend|virtio-queue) v"; then
    echo "vf-dataplane depends on a vhost-user crate (see above)" >&2
    exit 1
fi

step "building the workspace binaries"
cargo build --workspace --bins --locked

step "running the tests"
cargo test --workspace --locked "$@"
