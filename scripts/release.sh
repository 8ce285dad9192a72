#!/usr/bin/env bash
# Builds Shard's release archives into target/distrib/ (or --out DIR):
#   shard-<version>-<target>.tar.gz (.zip for Windows) holding bin/shard-oracle, bin/shard-scout,
#   share/shard/web (the web app), share/shard/models (the default pair), README.md, LICENSE;
#   its .sha256; and the installers install.sh and install.ps1.
#
# Usage: scripts/release.sh [--target TRIPLE ...] [--profile release|debug] [--package-only] [--out DIR]
#   --target        x86_64-unknown-linux-gnu (default), aarch64-unknown-linux-gnu (cross, with
#                   Debian's gcc-aarch64-linux-gnu; check it with qemu-aarch64), x86_64-pc-windows-gnu
#                   (mingw-w64); repeat for several
#   --package-only  package binaries already built (the installer test packages debug builds)
# macOS cannot be built here: .github/workflows/release.yml builds it on hosted runners.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"

targets=() profile=release package_only=0 out="$CARGO_TARGET_DIR/distrib"
while [ $# -gt 0 ]; do
  case "$1" in
    --target) targets+=("$2"); shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    --package-only) package_only=1; shift ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) log "unknown argument: $1"; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(x86_64-unknown-linux-gnu)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
mkdir -p "$out"

if [ ! -f dist/index.html ]; then
  [ "$package_only" = 1 ] && { log "dist/ has no web app: run scripts/build-web.sh"; exit 1; }
  "$SHARD_ROOT/scripts/setup.sh" --web
  "$SHARD_ROOT/scripts/build-web.sh"
fi

host=$(rustc -vV | sed -n 's/^host: //p')
for target in "${targets[@]}"; do
  exe=""
  case "$target" in
    *windows*) exe=".exe" ;;
  esac
  if [ "$package_only" = 0 ]; then
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    case "$target" in
      aarch64-unknown-linux-gnu)
        command -v aarch64-linux-gnu-gcc >/dev/null || apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc ;;
      x86_64-pc-windows-gnu)
        command -v x86_64-w64-mingw32-gcc >/dev/null || apt_install gcc-mingw-w64-x86-64 ;;
    esac
    log "building $target ($profile)"
    flag=(); [ "$profile" = release ] && flag=(--release)
    # The host's own build (what scripts/run.sh made) is reused: naming the host triple would
    # build everything again under target/<triple>/.
    [ "$target" = "$host" ] || flag+=(--target "$target")
    cargo build --locked "${flag[@]}" -p shard-oracle -p shard-scout
  fi
  # Host builds land in target/<profile>, cross builds in target/<triple>/<profile>.
  bin="$CARGO_TARGET_DIR/$target/$profile"
  [ "$target" = "$host" ] && bin="$CARGO_TARGET_DIR/$profile"
  [ -x "$bin/shard-oracle$exe" ] || { log "no $bin/shard-oracle$exe: build it first"; exit 1; }
  name="shard-$version-$target"
  stage=$(mktemp -d)
  mkdir -p "$stage/$name/bin" "$stage/$name/share/shard"
  cp "$bin/shard-oracle$exe" "$bin/shard-scout$exe" "$stage/$name/bin/"
  cp -r dist "$stage/$name/share/shard/web"
  mkdir -p "$stage/$name/share/shard/models"
  cp models/*.gguf models/README.md models/SHA256SUMS "$stage/$name/share/shard/models/"
  cp README.md LICENSE "$stage/$name/"
  if [ -n "$exe" ]; then
    archive="$out/$name.zip"
    (cd "$stage" && rm -f "$archive" && python3 -m zipfile -c "$archive" "$name")
  else
    archive="$out/$name.tar.gz"
    tar -C "$stage" -czf "$archive" "$name"
  fi
  rm -rf "$stage"
  (cd "$out" && sha256sum "$(basename "$archive")" > "$(basename "$archive").sha256")
  log "$archive ($(du -h "$archive" | cut -f1))"
done
cp scripts/install.sh scripts/install.ps1 "$out/"
log "archives and installers in $out"
