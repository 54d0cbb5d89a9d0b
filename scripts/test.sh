#!/usr/bin/env bash
# Runs every test regkeeper has, on a fresh Debian machine too: installs what
# the tests start and check with when missing (the real registry, skopeo, and
# systemd-nspawn for the test that boots a real systemd), builds the release
# binary that test binds into its container, then fmt, clippy and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
# systemd (PID 1 of the container) and systemd-nspawn; util-linux has
# unshare and nsenter.
[ -x /lib/systemd/systemd ] || need+=(systemd)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
# script: a pseudo-terminal for the progress line test.
command -v script >/dev/null 2>&1 || need+=(bsdutils)
# promtool and prometheus: the shipped alerting rules (tests/it/alerts.rs).
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need+=(prometheus)
# dpkg-shlibdeps (the Debian package's Depends) and man (the package test).
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v man >/dev/null 2>&1 || need+=(man-db)
# openssl ts: an independent RFC 3161 timestamp authority (verify/tsa_tests.rs, tests/it/verify_tsa.rs).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# node and npm: sigstore-js signs and checks bundles (tests/it/verify_sigstore_js.rs).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# The registry with the OCI 1.1 referrers API (tests/it/referrers.rs):
# a cold build takes minutes, so once per machine.
ferro_bin="${CARGO_HOME:-$HOME/.cargo}/bin/ferro-oci-server"
command -v ferro-oci-server >/dev/null 2>&1 || [ -x "$ferro_bin" ] \
    || cargo install --locked --version 1.0.0 ferro-oci-server

# sigstore-js (tests/it/support/sigstore_js), exactly as its lock file says.
node -e 'const [a, b] = process.versions.node.split(".").map(Number);
  if (a < 20 || (a === 20 && b < 17)) { console.error(`node ${process.versions.node}: sigstore-js needs 20.17 or newer`); process.exit(1); }'
(cd tests/it/support/sigstore_js && npm ci --no-audit --no-fund --loglevel=error)

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# tests/it/systemd.rs runs the release binary under a real systemd.
cargo build --release --locked
cargo test --all-targets --locked
