#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy (warnings are errors) and the
# whole test suite. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh -- --nocapture
#   scripts/test.sh some_test_name
# The integration tests start their own redis-server on free ports; this script
# only makes sure redis-server and chromium are installed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# What the tests need from Debian: redis-server (integration tests start their
# own on free ports) and chromium (the browser test of the test console).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${missing[*]} (needed by the tests)"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "${missing[*]} not installed and this user cannot install (not root, no sudo)." >&2
    echo "Install them (apt-get install -y ${missing[*]}) and run again." >&2
    exit 1
  fi
  $SUDO apt-get update
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
  # A system redis the package may have started on 6379 is harmless: the tests
  # start their own instances on free ports.
fi

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test $*"
cargo test "$@"

step "all checks passed"
