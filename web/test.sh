#!/usr/bin/env bash
# The page in real headless Chromium on its WebGPU adapter, against the
# native engine: (1) sampling the tiny fixture gives `ddpm sample`'s values,
# (2) three training steps give `ddpm train`'s losses (1e-4 relative), and
# the checkpoint the page downloads is read by `ddpm sample` and holds the
# native run's weights, (3) the page ran on WebGPU, every kernel on the
# portable path. Prints "N passed, 0 failed" and exits 0 only if all pass.
# Needs Chromium (`apt-get install chromium`) and what web/build.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
web/build.sh
cargo build --release --quiet --bin ddpm
work=$(mktemp -d)
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
ddpm=target/release/ddpm
# The native figures, with the settings web/test.py gives the page.
$ddpm sample --checkpoint tests/fixtures/tiny_unet --num 3 --sampler ddim --steps 4 --eta 1 --seed 7 \
    --out "$work/native.png" --npy "$work/native.npy" 2>"$work/native-sample.log"
$ddpm train --config tests/fixtures/tiny_unet_28.json --batch-size 4 --steps 3 --seed 0 --limit 64 \
    --out "$work/native-run" --sample-every 0 --grid-samples 1 --grid-ddim-steps 1 2>"$work/native-train.log"
python3 web/test.py --work "$work"
