#!/usr/bin/env bash
# Installs the real socket.io-client that tests/socketio/driver.mjs drives,
# into DIR only (never globally), and only when it is missing or the pinned
# version changed:
#   DIR/node_modules   socket.io-client as pinned in package.json, exactly as
#                      package-lock.json locks it (npm ci)
# Usage: tests/socketio/install.sh DIR
# scripts/test.sh calls it with DIR = <cargo target dir>/socketio-client and
# exports WS_GATEWAY_SOCKETIO_DEPS=DIR; tests/common/socketio.rs calls it
# itself when that variable is absent (plain `cargo test`). Needs node and npm,
# and access to the npm registry the first time.
set -euo pipefail

dir=${1:?usage: tests/socketio/install.sh DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$dir"
# Two test processes may install at once (each test binary that needs it).
exec 9>"$dir/.install.lock"
flock 9

# Reinstall when package.json or the lock changed (a new pinned version).
if ! cmp -s "$here/package.json" "$dir/package.json" \
  || ! cmp -s "$here/package-lock.json" "$dir/package-lock.json" \
  || [ ! -f "$dir/node_modules/socket.io-client/package.json" ]; then
  echo "installing socket.io-client into $dir" >&2
  rm -rf "$dir/node_modules" "$dir/package.json" "$dir/package-lock.json"
  cp "$here/package.json" "$here/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --silent --no-audit --no-fund)
fi

# Fail loudly if what landed is not what package.json pins.
want=$(node -p 'require(process.argv[1]).dependencies["socket.io-client"]' "$here/package.json")
got=$(node -p 'require(process.argv[1]).version' "$dir/node_modules/socket.io-client/package.json")
if [ "$want" != "$got" ]; then
  echo "tests/socketio/install.sh: $dir has socket.io-client $got, package.json pins $want" >&2
  exit 1
fi
