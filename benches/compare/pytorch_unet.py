"""Times the same UNet configs' training step and sampling step in PyTorch (diffusers'
UNet2DModel) on this machine's CPU, so the README can state the ratio to `cargo bench` honestly.
Run by hand, not in CI:

    python3 -m venv venv && venv/bin/pip install torch diffusers
    venv/bin/python benches/compare/pytorch_unet.py [--threads 2] [--batch N] [--configs patched]

Each config trains at the batch `cargo bench` uses for it (default 32, patched 64, cifar10 8)
unless --batch is given.

Prints one line per measurement and writes target/pytorch-results.json in the same form as
target/bench-results.json (kernel "train_step" / "sample_step"), so benches/compare/table.py can
put the two side by side.
"""
import argparse
import json
import os
import statistics
import time

import torch
from diffusers import DDPMScheduler, UNet2DModel

CONFIGS = {
    # The engine's default preset (assets/configs/default_unet.json).
    "default": dict(
        sample_size=32, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=None, norm_num_groups=8,
    ),
    # What `ddpm train` trains by default: the same UNet on 2x2 patches (4 x 16 x 16).
    "patched": dict(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=None, norm_num_groups=8,
    ),
    # The DDPM paper's CIFAR-10 model (35.7M parameters).
    "cifar10": dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    ),
}


# The training batch `cargo bench` uses for each config.
BENCH_BATCH = {"default": 32, "patched": 64, "cifar10": 8}


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="default,patched,cifar10")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        model = UNet2DModel(**cfg)
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        sched = DDPMScheduler(num_train_timesteps=1000)
        c, s = cfg["in_channels"], cfg["sample_size"]
        batch = args.batch or BENCH_BATCH[name]
        x0 = torch.randn(batch, c, s, s)

        def train_step():
            t = torch.randint(0, 1000, (batch,))
            eps = torch.randn_like(x0)
            xt = sched.add_noise(x0, eps, t)
            loss = torch.nn.functional.mse_loss(model(xt, t).sample, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        xs = torch.randn(args.sample_batch, c, s, s)

        @torch.no_grad()
        def sample_step():
            eps = model(xs, torch.full((args.sample_batch,), 500)).sample
            sched.step(eps, 500, xs)

        for kernel, fn, n in [("train_step", train_step, batch), ("sample_step", sample_step, args.sample_batch)]:
            median, lo, hi = timed(fn, args.repeats)
            shape = f"{name} ({params / 1e6:.2f}M params) batch {n}"
            print(f"{kernel:12} {shape:40} {median:9.1f} ms [{lo:.1f}-{hi:.1f}]  {n / median * 1e3:7.1f} images/s")
            results.append(dict(kernel=kernel, shape=shape, median_ms=median, min_ms=lo, max_ms=hi,
                                gflops=None, gbps=None, fraction=None))
    out = dict(adapter=f"PyTorch {torch.__version__} CPU, {args.threads} threads", backend="pytorch-cpu",
               driver="", peak_fma_gflops=None, copy_gbps=None, results=results)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "target", "pytorch-results.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
