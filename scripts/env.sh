# Shared settings for Shard's scripts; sourced, not run.
# SHARD_CACHE: downloads, venv and build outputs that outlive a clone.
# SHARD_DATA_DIR: generated test data (synthetic models).
SHARD_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SHARD_CACHE=${SHARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shard}
export SHARD_DATA_DIR=${SHARD_DATA_DIR:-$SHARD_ROOT/work-data}
export SHARD_VENV=${SHARD_VENV:-$SHARD_CACHE/venv}
export SHARD_PYTHON=$SHARD_VENV/bin/python
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SHARD_ROOT/target}
# Tools the scripts install themselves (trunk, wasm-bindgen-cli) live here.
export PATH="$SHARD_CACHE/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
log() { printf '\033[1m[shard]\033[0m %s\n' "$*" >&2; }
# Installs Debian packages (as root, or through sudo), updating the package lists only when the
# first try fails.
apt_install() {
  local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}
