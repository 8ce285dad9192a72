#!/usr/bin/env bash
# Runs the burn draft model on burn's wgpu backend natively (Vulkan) and compares its logits
# with the ndarray backend and with llama.cpp. Without a GPU, Mesa's lavapipe (a CPU Vulkan
# driver, Debian's mesa-vulkan-drivers) provides the adapter; this script installs it.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SHARD_ROOT"
"$SHARD_ROOT/scripts/setup.sh"
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  log "installing a Vulkan driver (mesa-vulkan-drivers: lavapipe)"
  apt_install mesa-vulkan-drivers libvulkan1
fi
# Mesa's Vulkan loader wants a runtime dir (headless machines and CI often lack one).
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
cargo test --locked -p shard-tests --features wgpu --test draft_model_wgpu -- --nocapture --test-threads 1
