"""Recipe screening in diffusers (PyTorch CPU): the same UNet2DModel config, data, preprocessing,
Adam, warm-up, clipping and EMA warm-up as `ddpm train`, then 512 DDIM samples scored by
`ddpm eval --samples` (NOTES.md, "The default recipe"). Run by hand, not in CI:

    python3 -m venv venv && venv/bin/pip install torch diffusers numpy pillow
    cargo build --release
    venv/bin/python benches/compare/recipe_screen.py NAME --pred sample --schedule cosine

Writes runs/screen/NAME/ (samples, grid.png, eval.json) and appends a line to runs/screen/results.txt.
"""
import argparse, json, os, time, subprocess
import numpy as np, torch
from PIL import Image
from diffusers import UNet2DModel, DDPMScheduler, DDIMScheduler

ap = argparse.ArgumentParser()
ap.add_argument("name"); ap.add_argument("--config", default="assets/configs/default_unet.json")
ap.add_argument("--batch", type=int, default=32); ap.add_argument("--steps", type=int, default=300)
ap.add_argument("--lr", type=float, default=2e-3); ap.add_argument("--warmup", type=int, default=100)
ap.add_argument("--ema", type=float, default=0.99); ap.add_argument("--pred", default="epsilon")
ap.add_argument("--snr", type=float, default=0.0); ap.add_argument("--schedule", default="linear")
ap.add_argument("--num", type=int, default=512); ap.add_argument("--ddim", type=int, default=50)
ap.add_argument("--eta", type=float, default=1.0); ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--decay", default="constant", help="learning rate after warm-up: constant | cosine")
ap.add_argument("--patch", type=int, default=1, help="pixel-unshuffle the images by this factor before the UNet")
ap.add_argument("--channels", default=None, help="override block_out_channels, e.g. 32,64,64")
ap.add_argument("--zero-init", action="store_true",
                help="zero each ResBlock's conv2, attention's to_out and conv_out, as the DDPM code (and the engine) do")
ap.add_argument("--beta2", type=float, default=0.999, help="Adam's second-moment decay")
ap.add_argument("--tsample", default="uniform", help="training timesteps: uniform | logitnormal:M,S (t/T = sigmoid(N(M, S)))")
ap.add_argument("--guidance", type=float, default=0.0,
                help="> 0: class-conditional (num_class_embeds 11, class 10 = none, 10%% label drop), sampled with this CFG weight")
a = ap.parse_args()
torch.set_num_threads(2); torch.manual_seed(a.seed); np.random.seed(a.seed)
out = f"runs/screen/{a.name}"; os.makedirs(out + "/samples", exist_ok=True)
atlas = np.asarray(Image.open("assets/mnist/digits.png").convert("L"), dtype=np.float32)
cols = atlas.shape[1] // 28; rows = atlas.shape[0] // 28
tiles = atlas.reshape(rows, 28, cols, 28).transpose(0, 2, 1, 3).reshape(-1, 28, 28)[:10000]
cfg = json.load(open(a.config)); res = cfg["sample_size"]; pad = (res - 28) // 2
data = np.full((len(tiles), 1, res, res), -1.0, np.float32)
data[:, 0, pad:pad + 28, pad:pad + 28] = tiles / 127.5 - 1
data = torch.from_numpy(data)
counts = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
labels = torch.tensor([d for k in range(max(counts)) for d in range(10) if k < counts[d]])
keys = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "dropout"}
keys["attention_head_dim"] = keys.get("attention_head_dim")
if a.channels: keys["block_out_channels"] = [int(c) for c in a.channels.split(",")]
if a.patch > 1:
    data = torch.nn.functional.pixel_unshuffle(data, a.patch)
    keys.update(in_channels=a.patch ** 2, out_channels=a.patch ** 2, sample_size=res // a.patch)
if a.guidance > 0: keys["num_class_embeds"] = 11
model = UNet2DModel(**keys); ema = UNet2DModel(**keys)
if a.zero_init:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".conv2." in n or "to_out.0" in n or n.startswith("conv_out."):
                p.zero_()
ema.load_state_dict(model.state_dict())
sched_kw = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2" if a.schedule == "cosine" else "linear",
                clip_sample=True, prediction_type=a.pred)
train_sched = DDPMScheduler(**sched_kw)
abar = train_sched.alphas_cumprod
opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, a.beta2))
t0 = time.time(); perm = torch.randperm(len(data)); pos = 0
for s in range(a.steps):
    if pos + a.batch > len(data): perm = torch.randperm(len(data)); pos = 0
    idx = perm[pos:pos + a.batch]; x0 = data[idx]; pos += a.batch
    if a.tsample == "uniform": t = torch.randint(0, 1000, (a.batch,))
    else:
        m, sd = (float(v) for v in a.tsample.split(":")[1].split(","))
        t = (torch.sigmoid(m + sd * torch.randn(a.batch)) * 1000).long().clamp(0, 999)
    cls = torch.where(torch.rand(a.batch) < 0.1, 10, labels[idx]) if a.guidance > 0 else None
    eps = torch.randn_like(x0)
    xt = train_sched.add_noise(x0, eps, t)
    pred = model(xt, t, class_labels=cls).sample
    ab = abar[t].view(-1, 1, 1, 1)
    target = {"epsilon": eps, "v_prediction": ab.sqrt() * eps - (1 - ab).sqrt() * x0, "sample": x0}[a.pred]
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    if a.snr > 0:
        snr = abar[t] / (1 - abar[t])
        base = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[a.pred]
        w = torch.minimum(snr, torch.full_like(snr, a.snr)) / base
        per = per * w
    loss = per.mean()
    lr = a.lr * min(1.0, (s + 1) / a.warmup) if a.warmup else a.lr
    if a.decay == "cosine" and s >= a.warmup:
        lr = a.lr * 0.5 * (1 + np.cos(np.pi * (s - a.warmup) / max(1, a.steps - a.warmup)))
    for g in opt.param_groups: g["lr"] = lr
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    d = min(a.ema, (1 + s) / (10 + s))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()): pe.mul_(d).add_(pm, alpha=1 - d)
    if s % 50 == 0: print(f"step {s} loss {loss.item():.4f} {time.time()-t0:.0f}s", flush=True)
train_s = time.time() - t0
ddim = DDIMScheduler(**sched_kw); ddim.set_timesteps(a.ddim)
g = torch.Generator().manual_seed(1)
t1 = time.time(); imgs = []
with torch.no_grad():
    for c in range(0, a.num, 256):
        x = torch.randn((min(256, a.num - c), a.patch ** 2, res // a.patch, res // a.patch), generator=g)
        for t in ddim.timesteps:
            if a.guidance > 0:
                n = x.shape[0]; cl = torch.arange(c, c + n) % 10
                out2 = ema(torch.cat([x, x]), t, class_labels=torch.cat([cl, torch.full_like(cl, 10)])).sample
                pc, pu = out2[:n], out2[n:]; p = pu + a.guidance * (pc - pu)
            else: p = ema(x, t).sample
            x = ddim.step(p, t, x, eta=a.eta, generator=g).prev_sample
        imgs.append(torch.nn.functional.pixel_shuffle(x, a.patch) if a.patch > 1 else x)
x = torch.cat(imgs).clamp(-1, 1)
for i, im in enumerate(((x[:, 0] + 1) * 127.5).round().byte().numpy()):
    Image.fromarray(im, "L").save(f"{out}/samples/s{i:04d}.png")
xs = x[:25, 0] if len(x) >= 25 else x[:1, 0].repeat(25, 1, 1)
grid = ((xs + 1) * 127.5).round().byte().numpy().reshape(5, 5, res, res).transpose(0, 2, 1, 3).reshape(5 * res, 5 * res)
Image.fromarray(grid, "L").resize((5 * res * 4, 5 * res * 4), Image.NEAREST).save(f"{out}/grid.png")
sample_s = time.time() - t1
r = subprocess.run(["target/release/ddpm", "eval", "--samples", out + "/samples", "--json", out + "/eval.json"], capture_output=True, text=True, check=True)
e = json.load(open(out + "/eval.json"))
line = f"{a.name} {vars(a)} | train {train_s:.0f}s sample {sample_s:.0f}s | FD {e['frechet']:.1f} floor {e['frechet_floor']:.1f} conf {e['confident_fraction']:.3f} KL {e['class_kl']:.3f} hist {e['class_histogram']}"
print(line); open("runs/screen/results.txt", "a").write(line + "\n")
