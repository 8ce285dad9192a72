#!/usr/bin/env bash
# Builds the Oracle's container image with podman on a machine that cannot pull base images
# (no registry, no daemon), then runs it and waits for its HEALTHCHECK. For developers, not CI:
# a cold build compiles the whole workspace inside the container (about an hour on 2 cores).
#
# The two base images the Dockerfile names are made locally and tagged with those names:
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, imported with podman import
#   rust:1.95-bookworm     the same plus gcc and libc6-dev, with this machine's rustup
#                          toolchain (and its installed targets) copied in
# Usage: scripts/container-build.sh [--bases-only] [--no-run]
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"

bases_only=0 run=1
for arg in "$@"; do
  case "$arg" in
    --bases-only) bases_only=1 ;;
    --no-run) run=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) log "unknown argument: $arg"; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { log "run as root (debootstrap and podman import need it)"; exit 1; }
command -v podman >/dev/null && command -v debootstrap >/dev/null \
  || apt_install podman buildah debootstrap uidmap fuse-overlayfs

# Inside a sandbox like this project's machine (cgroup v1 mounted by hand, a hard RLIMIT_NPROC),
# crun refuses to start a container ("cgroups in hybrid mode not supported", "setrlimit
# RLIMIT_NOFILE: Operation not permitted"); runc with the cgroupfs manager and no default
# ulimits runs it, and works on an ordinary host too, so the script always uses them.
command -v runc >/dev/null || apt_install runc
export CONTAINERS_CONF="$SHARD_CACHE/container/containers.conf"
mkdir -p "$(dirname "$CONTAINERS_CONF")"
printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
podman() { command podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

# The toolchain rust-toolchain.toml pins (1.95.0) names both the builder base (rust:1.95-bookworm)
# and the toolchain copied into it.
channel=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
rust_version=${channel%.*}
mirror=$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
work="$SHARD_CACHE/container"
mkdir -p "$work"

# A Debian bookworm root filesystem, made once and reused.
make_rootfs() { # DIR EXTRA_PACKAGES
  local dir=$1 include=$2
  [ -f "$dir/.done" ] && return
  rm -rf "$dir"
  log "debootstrap bookworm into $dir${include:+ (with $include)}"
  debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
  touch "$dir/.done"
}

if ! podman image exists localhost/debian:bookworm-slim; then
  make_rootfs "$work/bookworm" ""
  tar -C "$work/bookworm" --exclude=./.done -c . | podman import - localhost/debian:bookworm-slim
fi

if ! podman image exists "localhost/rust:$rust_version-bookworm"; then
  make_rootfs "$work/bookworm-rust" "ca-certificates,gcc,libc6-dev,pkg-config,git,curl,python3,python3-venv"
  log "copying the rustup toolchain ($(rustc --version)) into the builder base"
  rm -rf "$work/bookworm-rust/usr/local/rustup" "$work/bookworm-rust/usr/local/cargo"
  mkdir -p "$work/bookworm-rust/usr/local/rustup" "$work/bookworm-rust/usr/local/cargo/bin"
  # Only the toolchain rust-toolchain.toml names (resolved through any link), under that name,
  # as rustup's default: not rustup's downloads or other toolchains.
  toolchain="$channel-$(rustc -vV | sed -n 's/^host: //p')"
  mkdir -p "$work/bookworm-rust/usr/local/rustup/toolchains/$toolchain"
  cp -a "$(rustc --print sysroot)/." "$work/bookworm-rust/usr/local/rustup/toolchains/$toolchain/"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$toolchain" > "$work/bookworm-rust/usr/local/rustup/settings.toml"
  for bin in cargo rustc rustup rustdoc rustfmt cargo-fmt; do
    if [ -e "${CARGO_HOME:-$HOME/.cargo}/bin/$bin" ]; then
      cp -a "${CARGO_HOME:-$HOME/.cargo}/bin/$bin" "$work/bookworm-rust/usr/local/cargo/bin/"
    fi
  done
  tar -C "$work/bookworm-rust" --exclude=./.done -c . | podman import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "localhost/rust:$rust_version-bookworm"
fi
podman images
[ "$bases_only" = 1 ] && exit 0

log "podman build (Dockerfile, RUST_VERSION=$rust_version)"
start=$(date +%s)
podman build --network=host --build-arg "RUST_VERSION=$rust_version" -t localhost/shard-oracle:dev . \
  2>&1 | tee "$work/build.log"
log "built in $(( $(date +%s) - start )) s"
[ "$run" = 1 ] || exit 0

log "running the image and waiting for its HEALTHCHECK"
podman rm -f shard-oracle-check >/dev/null 2>&1 || true
podman run -d --name shard-oracle-check --network=host -e SHARD_PORT=18080 -e SHARD_HOST=127.0.0.1 \
  localhost/shard-oracle:dev --no-p2p >/dev/null
trap 'podman rm -f shard-oracle-check >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 60); do
  if podman healthcheck run shard-oracle-check >/dev/null 2>&1; then
    log "healthy: $(curl -s http://127.0.0.1:18080/health)"
    podman exec shard-oracle-check id
    exit 0
  fi
  sleep 2
done
podman logs shard-oracle-check | tail -30
log "the container never became healthy"
exit 1
