#!/usr/bin/env bash
# Builds the x86_64 Windows binaries with Debian's mingw-w64 and runs them under wine:
# `--version` of both, then the Oracle serving a completion on the default model.
# For developers (not CI): the cross build takes most of an hour on 2 cores.
# Usage: scripts/check-windows.sh [--no-build]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
target=x86_64-pc-windows-gnu
command -v x86_64-w64-mingw32-gcc >/dev/null || apt_install gcc-mingw-w64-x86-64
[ -x /usr/lib/wine/wine64 ] || apt_install wine64
if [ "${1:-}" != "--no-build" ]; then
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  cargo build --locked --release --target "$target" -p shard-oracle -p shard-scout
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp "$CARGO_TARGET_DIR/$target/release/"{shard-oracle,shard-scout}.exe models/shard-target-bitnet-tq2_0.gguf "$dir/"
# wine 8.0 lacks bcryptprimitives.dll, which Rust's std imports on Windows (see the source).
x86_64-w64-mingw32-gcc -shared -O2 -o "$dir/bcryptprimitives.dll" tools/ops/wine-bcryptprimitives.c -lbcrypt
export WINEDEBUG=-all WINEPREFIX="$dir/prefix"
wine=/usr/lib/wine/wine64
cd "$dir"
"$wine" ./shard-oracle.exe --version >/dev/null 2>&1 || true # the first run creates the prefix
log "$("$wine" ./shard-oracle.exe --version)"
log "$("$wine" ./shard-scout.exe --version)"
port=18181
"$wine" ./shard-oracle.exe --model shard-target-bitnet-tq2_0.gguf --no-p2p --port $port --state-dir state >oracle.log 2>&1 &
pid=$!
for _ in $(seq 1 120); do curl -fs -m 2 "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
answer=$(curl -fs -m 60 "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
  -d '{"prompt": "In the beginning", "max_tokens": 12, "temperature": 0}')
kill $pid 2>/dev/null || true
wineserver -k 2>/dev/null || true
log "the Windows Oracle under wine answered: $answer"
