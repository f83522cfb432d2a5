#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy (warnings are errors) and the
# whole test suite. Extra arguments go to `cargo test`, e.g.
#   scripts/test.sh -- --nocapture
#   scripts/test.sh some_test_name
# The integration tests start their own redis-server on free ports; this script
# only makes sure redis-server and chromium are installed, and installs what
# the README's Python and Node recipes import (tests/readme.rs runs them) and
# the socket.io-client the Socket.IO tests drive into the cargo target dir.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# The build and the installed tools take ~4 GB; say so up front rather than
# fail mid-build with "No space left on device".
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kb:-0}" -lt 4000000 ]; then
  echo "warning: only $((free_kb / 1024)) MiB free here; the build and test tools need ~4 GB" >&2
fi

# What the tests need from Debian: redis-server (integration tests start their
# own on free ports), chromium (the browser test of the test console), haproxy
# (tests/load_balancer.rs runs deploy/haproxy/haproxy.cfg), curl (the JS
# client's browser test publishes with it), and
# python3 with venv and node with npm (tests/readme.rs runs the README's
# recipes). The machine usually has python3 and node already.
# haproxy (the load-balancer test) lands in /usr/sbin, not on every PATH.
export PATH="$PATH:/usr/sbin"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v curl >/dev/null 2>&1 || missing+=(curl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
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

# redis-py and node-redis for the README recipes, into the target dir (never
# globally), only when missing; tests/readme.rs finds them through this variable.
export WS_GATEWAY_RECIPE_DEPS="${CARGO_TARGET_DIR:-$PWD/target}/readme-recipes"
step "README recipe packages (redis-py, node-redis) in $WS_GATEWAY_RECIPE_DEPS"
bash tests/recipes/install.sh "$WS_GATEWAY_RECIPE_DEPS"

# The real socket.io-client that the Socket.IO tests drive (tests/socketio/),
# likewise; tests/common/socketio.rs finds it through this variable.
export WS_GATEWAY_SOCKETIO_DEPS="${CARGO_TARGET_DIR:-$PWD/target}/socketio-client"
step "socket.io-client for the Socket.IO tests in $WS_GATEWAY_SOCKETIO_DEPS"
bash tests/socketio/install.sh "$WS_GATEWAY_SOCKETIO_DEPS"

# The JS client (clients/js): its dev dependencies, its build (tsc) and its
# unit tests; tests/js_client.rs and the browser test then drive its dist/.
step "JS client (clients/js): npm ci, build, unit tests"
(
  cd clients/js
  if [ -n "${CI:-}" ] || [ ! -d node_modules ]; then npm ci --no-audit --no-fund; fi
  npm test
)

# The layers follow the message (src/lib.rs, "Layout"): the broker imports no
# hub, session, HTTP or server code, and the wire imports no hub.
step "import direction"
upward() { # DIR WORDS: `crate::WORD` in code (not comments), also in `use crate::{...}`
  # A moved module must not make the check look at nothing.
  [ -e "$1" ] || { echo "import check: $1 does not exist" >&2; echo "$1: missing"; return; }
  perl -0ne 's{//[^\n]*}{}g; while (/crate::(?:\{[^}]*?\b|)('"$2"')\b/g) { print "$ARGV: crate::$1\n" }' \
    $(find "$1" -name '*.rs')
}
bad=$(upward src/broker 'hub|connection|session|http|server|canary'; upward src/wire 'hub|connection|session|http|server')
if [ -n "$bad" ]; then
  echo "$bad" >&2
  echo "these imports run against the message: see src/lib.rs, Layout" >&2
  exit 1
fi

step "deploy manifests"
bash scripts/check-deploy.sh

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace $*"
cargo test --workspace "$@"

step "all checks passed"
