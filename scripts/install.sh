#!/bin/sh
# Installs a Shard release archive under a prefix: bin/shard-oracle, bin/shard-scout, and
# share/shard/{web,models}. The archive's .sha256, when it is beside it, is checked first.
#
# Usage: install.sh --from URL_OR_FILE [--prefix DIR]      (default prefix: ~/.local)
#   curl -fsSL https://HOST/install.sh | sh -s -- --from https://HOST/shard-0.1.0-x86_64-unknown-linux-gnu.tar.gz
set -eu

from="" prefix="${HOME}/.local"
while [ $# -gt 0 ]; do
  case "$1" in
    --from) from="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$from" ] || { echo "install.sh: give --from URL_OR_FILE" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fetch() { # fetch SOURCE DEST
  case "$1" in
    http://*|https://*)
      if command -v curl >/dev/null 2>&1; then curl -fsSL "$1" -o "$2"; else wget -q "$1" -O "$2"; fi ;;
    *) cp "$1" "$2" ;;
  esac
}
archive="$work/$(basename "$from")"
fetch "$from" "$archive"
if fetch "$from.sha256" "$work/sum" 2>/dev/null; then
  want=$(cut -d' ' -f1 "$work/sum")
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "install.sh: $from does not match its sha256" >&2; exit 1; }
fi
tar -C "$work" -xzf "$archive"
root=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'shard-*' | head -1)
[ -x "$root/bin/shard-oracle" ] || { echo "install.sh: $from is not a Shard archive" >&2; exit 1; }
mkdir -p "$prefix/bin" "$prefix/share/shard"
cp "$root/bin/shard-oracle" "$root/bin/shard-scout" "$prefix/bin/"
rm -rf "$prefix/share/shard/web" "$prefix/share/shard/models"
cp -r "$root/share/shard/web" "$root/share/shard/models" "$prefix/share/shard/"
echo "installed $("$prefix/bin/shard-oracle" --version) into $prefix"
echo "run: $prefix/bin/shard-oracle --model $prefix/share/shard/models/shard-target-bitnet-tq2_0.gguf --web-dir $prefix/share/shard/web"
