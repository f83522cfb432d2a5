#!/usr/bin/env bash
# Installs what tests/readme.rs needs to run the README's recipes as printed,
# into DIR only (never globally), and only what is missing:
#   DIR/venv   a Python venv with redis-py    (the Python recipe)
#   DIR/node   node_modules with node-redis 4 (the Node recipe)
# Usage: tests/recipes/install.sh DIR
# scripts/test.sh calls it with DIR = <cargo target dir>/readme-recipes and
# exports WS_GATEWAY_RECIPE_DEPS=DIR; tests/readme.rs calls it itself when that
# variable is absent (plain `cargo test`). Needs python3 (with venv) and npm,
# and network access to PyPI and the npm registry the first time.
set -euo pipefail

dir=${1:?usage: tests/recipes/install.sh DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$dir"

if ! "$dir/venv/bin/python" -c 'import redis' >/dev/null 2>&1; then
  echo "installing redis-py into $dir/venv" >&2
  rm -rf "$dir/venv"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check 'redis==5.2.1'
fi

# Reinstall when package.json changed (a new pinned version).
if ! cmp -s "$here/package.json" "$dir/node/package.json" \
  || [ ! -f "$dir/node/node_modules/redis/package.json" ]; then
  echo "installing node-redis into $dir/node" >&2
  rm -rf "$dir/node"
  mkdir -p "$dir/node"
  cp "$here/package.json" "$dir/node/package.json"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund --no-package-lock)
fi
