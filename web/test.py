"""web/test.sh's browser half: serve the repository on 127.0.0.1, open the
page's test mode in headless Chromium, collect what it POSTs, and compare it
with the native engine's results in WORK (made by test.sh).

The page reports by POST because headless Chromium's --dump-dom returns
before asynchronous WebGPU work ends. Standard library only.
"""

import argparse
import http.server
import io
import json
import math
import os
import struct
import subprocess
import sys
import threading
import urllib.parse
import zipfile

# The page's test: the tiny fixture sampled as test.sh samples it natively,
# three training steps of the tiny 28x28 config on 64 digits.
SAMPLE = {"count": 3, "steps": 4, "eta": 1, "seed": 7}
TRAIN = {"batch_size": 4, "steps": 3, "seed": 0, "limit": 64}
# Samples: the same f32 kernels on two drivers (SwiftShader in Chromium, the
# native adapter here) through 4 UNet passes, whose first DDIM steps scale
# the UNet's rounding up a hundredfold (lavapipe's Vulkan and GL drivers
# differ by 1.5e-5); losses: 1e-4 relative; weights after three Adam steps,
# which divide each gradient by its own size, so tiny ones differ most.
SAMPLE_TOLERANCE = 5e-5
LOSS_RELATIVE_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4


class Results(http.server.SimpleHTTPRequestHandler):
    """Files from the repository; POST /result/NAME stores the body as NAME."""

    results = {}
    finished = threading.Event()

    def do_POST(self):
        name = self.path.removeprefix("/result/")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Results.results[name] = body
        if name == "log":
            print(f"page: {body.decode(errors='replace')}", flush=True)
        self.send_response(204)
        self.end_headers()
        if name in ("done", "error"):
            Results.finished.set()

    def log_message(self, *args):
        pass


def read_npy(path):
    """A float32 C-order .npy file (as `ddpm sample --npy` writes) as a flat list."""
    data = open(path, "rb").read()
    assert data[:6] == b"\x93NUMPY", f"{path} is not a .npy file"
    header_len = struct.unpack("<H", data[8:10])[0]
    header = data[10 : 10 + header_len].decode()
    assert "'<f4'" in header and "False" in header, f"unexpected .npy header {header}"
    values = data[10 + header_len :]
    return list(struct.unpack(f"<{len(values) // 4}f", values))


def read_safetensors(data):
    """{name: flat list of floats} of an F32 safetensors file."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        assert entry["dtype"] == "F32", f"{name} is {entry['dtype']}"
        start, end = entry["data_offsets"]
        out[name] = struct.unpack(f"<{(end - start) // 4}f", body[start:end])
    return out


def native_losses(metrics_csv):
    """The loss column of `ddpm train`'s metrics.csv, one row per step."""
    lines = open(metrics_csv).read().splitlines()
    column = lines[0].split(",").index("loss")
    return [float(line.split(",")[column]) for line in lines[1:]]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True, help="test.sh's folder: native results in, page results out")
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    handler = lambda *a, **k: Results(*a, directory=root, **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    query = urllib.parse.urlencode(
        {
            "test": "1",
            "fixture": "/tests/fixtures/tiny_unet/",
            "sample": json.dumps(SAMPLE),
            "train_config": "/tests/fixtures/tiny_unet_28.json",
            "train": json.dumps(TRAIN),
        }
    )
    url = f"http://127.0.0.1:{server.server_port}/web/index.html?{query}"
    browser = subprocess.Popen(
        [
            args.chromium,
            "--headless=new",
            "--no-sandbox",
            "--enable-unsafe-webgpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--enable-logging=stderr",
            "--disable-gpu-watchdog",
            f"--user-data-dir={os.path.join(args.work, 'chromium-profile')}",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(args.work, "chromium.log"), "w"),
    )
    finished = Results.finished.wait(args.timeout)
    browser.kill()
    browser.wait()
    server.shutdown()
    got = Results.results

    passed, failed = 0, 0

    def check(name, ok, detail):
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        passed += ok
        failed += not ok

    if not finished:
        check("page", False, f"no result within {args.timeout:.0f} s (see {args.work}/chromium.log)")
    if "error" in got:
        check("page", False, got["error"].decode(errors="replace"))

    adapter = json.loads(got.get("adapter", b"{}") or b"{}")
    check(
        "WebGPU adapter",
        adapter.get("backend") == "BrowserWebGpu" and bool(adapter.get("name") is not None),
        f"{adapter.get('name')!r} on {adapter.get('backend')}, subgroup kernels {adapter.get('subgroup_kernels')}",
    )

    native = read_npy(os.path.join(args.work, "native.npy"))
    if "samples.f32" in got:
        page = list(struct.unpack(f"<{len(got['samples.f32']) // 4}f", got["samples.f32"]))
        worst = max((abs(a - b) for a, b in zip(page, native)), default=math.inf)
        same = len(page) == len(native) and all(math.isfinite(v) for v in page) and worst <= SAMPLE_TOLERANCE
        check("sampling matches ddpm sample", same, f"{len(page)} values, largest difference {worst:.2e} (bound {SAMPLE_TOLERANCE})")
    else:
        check("sampling matches ddpm sample", False, "the page posted no samples")

    want = native_losses(os.path.join(args.work, "native-run", "metrics.csv"))
    if "losses.json" in got:
        logs = json.loads(got["losses.json"])
        losses = [log["loss"] for log in logs]
        rel = [abs(a - b) / abs(b) for a, b in zip(losses, want)]
        ok = len(losses) == len(want) == TRAIN["steps"] and all(math.isfinite(r) and r <= LOSS_RELATIVE_TOLERANCE for r in rel)
        check("training losses match ddpm train", ok, f"page {losses}, native {want}, relative {['%.1e' % r for r in rel]}")
    else:
        check("training losses match ddpm train", False, "the page posted no losses")

    if "checkpoint.zip" in got:
        target = os.path.join(args.work, "page-checkpoint")
        zipfile.ZipFile(io.BytesIO(got["checkpoint.zip"])).extractall(target)
        run = subprocess.run(
            [
                os.path.join(root, "target/release/ddpm"),
                "sample",
                "--checkpoint",
                os.path.join(target, "checkpoint"),
                "--num",
                "2",
                "--sampler",
                "ddim",
                "--steps",
                "2",
                "--out",
                os.path.join(args.work, "page-checkpoint.png"),
            ],
            capture_output=True,
            text=True,
        )
        check("ddpm sample reads the page's checkpoint", run.returncode == 0, run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "")
        page_ema = read_safetensors(open(os.path.join(target, "checkpoint/unet/diffusion_pytorch_model.safetensors"), "rb").read())
        native_ema = read_safetensors(
            open(os.path.join(args.work, "native-run/checkpoint/unet/diffusion_pytorch_model.safetensors"), "rb").read()
        )
        worst = max(abs(a - b) for name in native_ema for a, b in zip(page_ema.get(name, ()), native_ema[name]))
        ok = page_ema.keys() == native_ema.keys() and worst <= WEIGHT_TOLERANCE
        check(
            "the page's trained weights match ddpm train's",
            ok,
            f"{len(page_ema)} tensors, largest difference {worst:.2e} (bound {WEIGHT_TOLERANCE})",
        )
    else:
        check("ddpm sample reads the page's checkpoint", False, "the page posted no checkpoint")

    kernels = json.loads(got.get("kernels.json", b"[]") or b"[]")
    subgroup = [name for name, defines in kernels if defines.get("SUBGROUPS", 0) or defines.get("SG8", 0)]
    check(
        "every kernel on the portable path",
        len(kernels) > 0 and not subgroup and not adapter.get("subgroup_kernels", True),
        f"{len(kernels)} kernel variants built, {len(subgroup)} with subgroups {subgroup[:3]}",
    )

    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
