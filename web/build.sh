#!/usr/bin/env bash
# Build the page's module: the engine for wasm32, then wasm-bindgen's JS glue
# into web/pkg/. Needs the wasm32 target and wasm-bindgen-cli at the version
# web/Cargo.toml pins:
#   rustup target add wasm32-unknown-unknown
#   cargo install wasm-bindgen-cli --version 0.2.130
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --target wasm32-unknown-unknown -p ddpm-web
wasm-bindgen --target web --no-typescript --out-dir web/pkg target/wasm32-unknown-unknown/release/ddpm_web.wasm
echo "built web/pkg ($(du -h web/pkg/ddpm_web_bg.wasm | cut -f1) of wasm)"
