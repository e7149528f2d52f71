#!/usr/bin/env bash
# Builds the hostile test plugins as WebAssembly components (wasm32-wasip2) and prints the path
# of each .wasm. Extra arguments go to `cargo build`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

target=wasm32-wasip2
if command -v rustup >/dev/null 2>&1; then
    installed="$(rustup target list --installed)"
    if ! grep -qx "$target" <<<"$installed"; then
        rustup target add "$target"
    fi
fi
cargo build --release --target "$target" "$@"

out="${CARGO_TARGET_DIR:-$PWD/target}/$target/release"
for name in hostile wrong_world world_0_1_0; do
    echo "$out/$name.wasm"
done
