// The page: the engine's steps, driven from here one at a time with a
// readback (a promise) every few, so the page stays responsive and draws
// the images as they denoise. `?test` runs web/test.sh's checks instead.
import init, { Engine, to_bytes } from "./pkg/ddpm_web.js";

const $ = (id) => document.getElementById(id);
const yieldToPage = () => new Promise((resolve) => setTimeout(resolve, 0));

// Draw (count, C, R, R) images in [-1, 1] as a grid, as `ddpm sample` lays
// its PNG out: square-ish, a 2-pixel black border, nearest-neighbour scaled.
function drawGrid(canvas, images, count, channels, resolution) {
  const cols = Math.ceil(Math.sqrt(count));
  const rows = Math.ceil(count / cols);
  const scale = Math.max(1, Math.floor(128 / resolution));
  const tile = resolution + 2;
  const [w, h] = [cols * tile + 2, rows * tile + 2];
  const pixels = new ImageData(w, h);
  pixels.data.fill(0);
  const bytes = to_bytes(images);
  const plane = resolution * resolution;
  for (let i = 0; i < count; i++) {
    const [x0, y0] = [2 + (i % cols) * tile, 2 + Math.floor(i / cols) * tile];
    for (let p = 0; p < plane; p++) {
      const o = 4 * ((y0 + Math.floor(p / resolution)) * w + x0 + (p % resolution));
      for (let c = 0; c < 3; c++) pixels.data[o + c] = bytes[(i * channels + Math.min(c, channels - 1)) * plane + p];
      pixels.data[o + 3] = 255;
    }
  }
  const small = new OffscreenCanvas(w, h);
  small.getContext("2d").putImageData(pixels, 0, 0);
  canvas.width = w * scale;
  canvas.height = h * scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, w * scale, h * scale);
}

// The training loss against the step, on a log scale, labelled.
function drawLoss(canvas, logs, totalSteps) {
  const ctx = canvas.getContext("2d");
  const [w, h, left, bottom, top, right] = [canvas.width, canvas.height, 56, 34, 14, 12];
  ctx.clearRect(0, 0, w, h);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#222";
  ctx.strokeStyle = "#888";
  ctx.strokeRect(left, top, w - left - right, h - top - bottom);
  ctx.fillText("step", w / 2 - 10, h - 6);
  ctx.save();
  ctx.translate(12, h / 2 + 40);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("loss (log scale)", 0, 0);
  ctx.restore();
  if (logs.length === 0) return;
  const losses = logs.map((l) => Math.log10(l.loss));
  const [lo, hi] = [Math.min(...losses), Math.max(...losses) + 1e-6];
  const x = (step) => left + ((w - left - right) * step) / totalSteps;
  const y = (v) => top + ((h - top - bottom) * (hi - v)) / (hi - lo);
  ctx.textAlign = "right";
  for (const v of [lo, (lo + hi) / 2, hi]) ctx.fillText((10 ** v).toPrecision(3), left - 4, y(v) + 4);
  ctx.textAlign = "left";
  ctx.fillText("0", left - 3, h - bottom + 14);
  ctx.fillText(String(totalSteps), w - right - 24, h - bottom + 14);
  ctx.strokeStyle = "#1f6fb4";
  ctx.beginPath();
  logs.forEach((l, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(l.step), y(losses[i])));
  ctx.stroke();
}

// Run a sampling run to the end, calling `frame(images, done, total)` every
// few steps and at the end.
async function sampleAll(engine, request, frame) {
  const { count, steps, eta, seed, cls, guidance } = request;
  engine.start_sampling(count, steps, eta, seed, cls, guidance);
  const total = engine.sample_progress()[1];
  const every = Math.max(1, Math.ceil(total / 25));
  let done = 0;
  let more = true;
  while (more) {
    more = engine.sample_step();
    done += 1;
    if (!more || done % every === 0) frame(await engine.read_samples(), done, total);
    else await yieldToPage();
  }
}

async function fetchModel(base) {
  const get = async (name, kind) => {
    const r = await fetch(base + name);
    if (!r.ok) return null;
    return kind === "bytes" ? new Uint8Array(await r.arrayBuffer()) : r.text();
  };
  const config = await get("config.json", "text");
  const weights = await get("diffusion_pytorch_model.safetensors", "bytes");
  if (config === null || weights === null) throw new Error(`no config.json and safetensors weights under ${base}`);
  return { config, weights, scheduler: (await get("scheduler_config.json", "text")) ?? undefined };
}

async function filesModel(files) {
  const named = (pattern) => [...files].find((f) => pattern.test(f.name));
  const config = named(/^config\.json$/);
  const weights = named(/\.safetensors$/);
  const scheduler = named(/^scheduler_config\.json$/);
  if (!config || !weights) throw new Error("choose config.json and diffusion_pytorch_model.safetensors (and scheduler_config.json if there is one)");
  return {
    config: await config.text(),
    weights: new Uint8Array(await weights.arrayBuffer()),
    scheduler: scheduler ? await scheduler.text() : undefined,
  };
}

const number = (id) => ($(id).value === "" ? undefined : Number($(id).value));

async function page(engine) {
  let loaded = null; // which model the engine holds: "shipped", "files" or "trained"
  let training = null; // { stop } while a run goes on
  let dropped = null; // files dropped on the page
  const show = (id, text, error = false) => {
    $(id).textContent = text;
    $(id).classList.toggle("error", error);
  };

  $("model-source").onchange = () => {
    $("model-files").hidden = $("model-source").value !== "files";
    loaded = null;
  };
  $("model-files").onchange = () => {
    loaded = null;
    dropped = null;
  };
  // A diffusers folder's files dropped anywhere on the page are the model to sample.
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    dropped = e.dataTransfer.files;
    $("model-source").value = "files";
    $("model-files").hidden = false;
    loaded = null;
    show("sample-status", `dropped: ${[...dropped].map((f) => f.name).join(", ")}; press Sample`);
  });

  $("sample").onclick = async () => {
    $("sample").disabled = true;
    try {
      const source = $("model-source").value;
      if (loaded !== source || source === "trained") {
        const described = JSON.parse(
          source === "trained"
            ? engine.use_trained_model()
            : await (async () => {
                const files = $("model-files").files.length ? $("model-files").files : dropped ?? [];
                const m = source === "shipped" ? await fetchModel("model/") : await filesModel(files);
                return engine.load_model(m.config, m.weights, m.scheduler);
              })(),
        );
        loaded = source;
        show("sample-status", `model: ${described.parameters.toLocaleString()} parameters, ${described.resolution}x${described.resolution}`);
      }
      const request = {
        count: number("count"), steps: number("ddim-steps"), eta: number("eta"), seed: number("seed"),
        cls: number("class"), guidance: number("guidance"),
      };
      const started = performance.now();
      await sampleAll(engine, request, (images, done, total) => {
        const info = JSON.parse(engine.model_info());
        drawGrid($("samples"), images, request.count, info.channels, info.resolution);
        const ms = (performance.now() - started) / done;
        show("sample-status", `step ${done}/${total}, ${ms.toFixed(0)} ms per step`);
      });
    } catch (e) {
      show("sample-status", String(e), true);
    }
    $("sample").disabled = false;
  };

  $("train").onclick = async () => {
    $("train").disabled = true;
    $("stop").disabled = false;
    $("download").disabled = true;
    const request = { batch_size: number("batch"), steps: number("steps"), seed: number("train-seed") };
    const gridEvery = number("grid-every") ?? 0;
    const logs = [];
    training = { stop: false };
    try {
      const run = JSON.parse(engine.start_training(JSON.stringify(request)));
      $("download").disabled = false;
      const started = performance.now();
      let step = 0;
      while (step < run.steps && !training.stop) {
        step = engine.train_step();
        if (step % 10 === 0 || step === run.steps || training.stop) {
          logs.push(...JSON.parse(await engine.read_logs()));
          const ms = (performance.now() - started) / step;
          const last = logs[logs.length - 1];
          show("train-status", `step ${step}/${run.steps} | loss ${last.loss.toFixed(4)} | ${ms.toFixed(0)} ms per step ` +
            `(${((1000 * run.batch_size) / ms).toFixed(1)} images/s) | ${run.parameters.toLocaleString()} parameters, ${run.images} digits`);
          drawLoss($("loss"), logs, run.steps);
        } else {
          await yieldToPage();
        }
        if ((gridEvery > 0 && step % gridEvery === 0) || step === run.steps) {
          engine.use_trained_model();
          loaded = null;
          const info = JSON.parse(engine.model_info());
          await sampleAll(engine, { count: 16, steps: 20, eta: 1, seed: 0 }, (images) =>
            drawGrid($("train-grid"), images, 16, info.channels, info.resolution));
        }
      }
    } catch (e) {
      show("train-status", String(e), true);
    }
    training = null;
    $("train").disabled = false;
    $("stop").disabled = true;
  };
  $("stop").onclick = () => training && (training.stop = true);

  $("download").onclick = async () => {
    $("download").disabled = true;
    try {
      const zip = await engine.checkpoint_zip();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([zip], { type: "application/zip" }));
      link.download = "checkpoint.zip";
      link.click();
    } catch (e) {
      show("train-status", String(e), true);
    }
    $("download").disabled = false;
  };
}

// web/test.sh's checks: results POSTed to the test server, which compares
// them with the native engine's (the page cannot write files).
async function test(engine, params) {
  const post = (name, body) => fetch(`/result/${name}`, { method: "POST", body });
  const t0 = performance.now();
  const phase = (what) => post("log", `${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}`);
  try {
    await post("adapter", engine.adapter());
    const fixture = await fetchModel(params.get("fixture"));
    engine.load_model(fixture.config, fixture.weights, fixture.scheduler);
    const s = JSON.parse(params.get("sample"));
    await sampleAll(engine, s, () => {});
    await post("samples.f32", await engine.read_samples());
    await phase("sampled");

    const config = await (await fetch(params.get("train_config"))).json();
    const t = JSON.parse(params.get("train"));
    engine.start_training(JSON.stringify({ ...t, unet_config: config }));
    await phase("training started");
    for (let i = 0; i < t.steps; i++) {
      engine.train_step();
      await phase(`step ${i + 1} recorded`);
    }
    await post("losses.json", await engine.read_logs());
    await phase("logs read");
    await post("checkpoint.zip", await engine.checkpoint_zip());
    await post("kernels.json", engine.built_kernels());
    await post("done", "ok");
  } catch (e) {
    await post("error", String(e.stack ?? e));
  }
}

async function main() {
  await init();
  const params = new URLSearchParams(location.search);
  let engine;
  try {
    engine = await Engine.open();
  } catch (e) {
    $("adapter").textContent = `${e}`;
    $("adapter").classList.add("error");
    if (params.has("test")) await fetch("/result/error", { method: "POST", body: String(e) });
    return;
  }
  const a = JSON.parse(engine.adapter());
  const name = a.name || (a.device_type === "Cpu" ? "the browser's software fallback" : "unnamed");
  $("adapter").textContent = `adapter: ${name} (${a.backend}), ${a.subgroup_kernels ? "subgroup" : "portable"} kernels` +
    `${a.few_loads ? " with SwiftShader's tiles" : ""}, ` +
    `largest storage binding ${a.max_storage_binding_mib} MiB, timestamps ${a.timestamps ? "yes" : "no"}`;
  if (params.has("test")) await test(engine, params);
  else await page(engine);
}

main();
