//! `cargo bench`: every kernel family at the UNet's real shapes, on the
//! adapter chosen by WGPU_BACKEND / WGPU_ADAPTER_NAME, each figure also as a
//! fraction of this adapter's own ceilings measured in the same run.
//!
//! `cargo bench -- matmul conv` runs only benchmarks whose kernel name
//! contains one of the words. Results go to `target/bench-results.json`.
//! BENCH_REPEATS sets the timed runs per case (default 5; median reported).
//! BENCH_UNET=patched (or default, cifar10) keeps only that UNet's
//! train_step, sample_step and profile; `cargo bench -- profile` prints
//! where each UNet's training step spends its GPU time, by kernel.

mod ceiling;

use anyhow::Result;
use ddpm_wgpu::ops::conv2d::{self, Conv2dGeometry};
use ddpm_wgpu::ops::ddpm::{self, DdpmTables, NoiseKey};
use ddpm_wgpu::ops::group_norm::GroupNorm;
use ddpm_wgpu::ops::{attention, elementwise as ew, matmul, optimizer, reduce};
use ddpm_wgpu::schedule::{Schedule, SchedulerConfig};
use ddpm_wgpu::train::{TrainOptions, Trainer};
use ddpm_wgpu::unet::{ParamStore, UNet, UNetConfig};
use ddpm_wgpu::{Gpu, GpuOptions, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

#[derive(Serialize)]
struct Record {
    kernel: String,
    shape: String,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    gflops: Option<f64>,
    gbps: Option<f64>,
    fraction: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    adapter: String,
    backend: String,
    driver: String,
    subgroups: bool,
    timing: &'static str,
    peak_fma_gflops: f64,
    copy_gbps: f64,
    results: Vec<Record>,
}

struct Bench<'g> {
    gpu: &'g Gpu,
    rng: StdRng,
    repeats: usize,
    filters: Vec<String>,
    report: Report,
}

/// Work per run, for the throughput columns.
enum Work {
    Flops(f64),
    Bytes(f64),
}

impl Bench<'_> {
    fn wanted(&self, kernel: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| kernel.contains(f.as_str()))
    }

    fn random(&mut self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.rng.random_range(-1.0..1.0)).collect();
        self.gpu.upload(shape, &data)
    }

    /// Warm up (compiles the pipelines), then time `repeats` runs.
    fn time(&self, mut record: impl FnMut(&Gpu) -> Result<()>) -> Result<(f64, f64, f64)> {
        self.gpu.time(|| record(self.gpu))?;
        let mut ms: Vec<f64> =
            (0..self.repeats).map(|_| self.gpu.time(|| record(self.gpu)).map(|t| t.ms())).collect::<Result<_>>()?;
        ms.sort_by(f64::total_cmp);
        Ok((ms[ms.len() / 2], ms[0], ms[ms.len() - 1]))
    }

    fn run(&mut self, kernel: &str, shape: &str, work: Work, record: impl FnMut(&Gpu) -> Result<()>) -> Result<()> {
        let (median_ms, min_ms, max_ms) = self.time(record)?;
        let (gflops, gbps, fraction) = match work {
            Work::Flops(f) => {
                let g = f / median_ms * 1e-6;
                (Some(g), None, Some(g / self.report.peak_fma_gflops))
            }
            Work::Bytes(b) => {
                let g = b / median_ms * 1e-6;
                (None, Some(g), Some(g / self.report.copy_gbps))
            }
        };
        let rate = match (gflops, gbps) {
            (Some(g), _) => format!("{g:8.2} GFLOP/s"),
            (_, Some(g)) => format!("{g:8.2} GB/s   "),
            _ => String::new(),
        };
        println!(
            "{kernel:<28} {shape:<34} {median_ms:9.3} ms [{min_ms:.3}-{max_ms:.3}]  {rate}  {:5.1}% of ceiling",
            fraction.unwrap_or(0.0) * 100.0
        );
        self.report.results.push(Record {
            kernel: kernel.into(),
            shape: shape.into(),
            median_ms,
            min_ms,
            max_ms,
            gflops,
            gbps,
            fraction,
        });
        Ok(())
    }
}

/// (peak FMA GFLOP/s, copy GB/s). The FMA peak is the better of the kernel
/// unrolled 4 and 8 times; both are printed, and agree when the loop's
/// overhead is gone.
fn ceilings(gpu: &Gpu) -> Result<(f64, f64)> {
    let fma_out = gpu.uninit(&[4 * 128 * 1024])?;
    let mut rates = Vec::new();
    for unroll in ddpm_wgpu::ops::CEILING_UNROLLS {
        // The same FMAs at every unrolling.
        let iterations = (2048 / unroll) as u32;
        let mut flops = 0.0;
        let fma_ms = best_of(gpu, 5, || {
            flops = ceiling::peak_fma(gpu, &fma_out, iterations, unroll)?;
            Ok(())
        })?;
        rates.push((unroll, flops / fma_ms * 1e-6));
    }
    let shown: Vec<String> = rates.iter().map(|(u, r)| format!("{r:.1} (unrolled {u}x)")).collect();
    println!("peak FMA: {} GFLOP/s", shown.join(", "));
    let peak = rates.iter().map(|r| r.1).fold(0.0, f64::max);
    let n = 8 << 20; // 32 MiB each way
    let src = gpu.upload(&[n], &vec![1.0; n])?;
    let dst = gpu.uninit(&[n])?;
    let mut bytes = 0.0;
    let copy_ms = best_of(gpu, 5, || {
        bytes = ceiling::copy(gpu, &dst, &src)?;
        Ok(())
    })?;
    Ok((peak, bytes / copy_ms * 1e-6))
}

/// Ceilings are the best of several runs: they bound what kernels can reach.
fn best_of(gpu: &Gpu, runs: usize, mut record: impl FnMut() -> Result<()>) -> Result<f64> {
    gpu.time(&mut record)?;
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        best = best.min(gpu.time(&mut record)?.ms());
    }
    Ok(best)
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; other words filter kernels.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let repeats = std::env::var("BENCH_REPEATS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let gpu = Gpu::new(&GpuOptions::default())?;
    let info = gpu.info().clone();
    println!("adapter: {}  backend: {:?}  driver: {} {}", info.name, info.backend, info.driver, info.driver_info);
    println!(
        "subgroup kernels: {}  timing: {}",
        info.subgroups,
        if info.timestamps { "GPU timestamps" } else { "wall clock" }
    );
    let (peak, copy) = ceilings(&gpu)?;
    println!("ceilings: peak FMA {peak:.1} GFLOP/s, storage copy {copy:.2} GB/s\n");
    let mut b = Bench {
        gpu: &gpu,
        rng: StdRng::seed_from_u64(0x5eed),
        repeats,
        filters,
        report: Report {
            adapter: info.name.clone(),
            backend: format!("{:?}", info.backend).to_lowercase(),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            subgroups: info.subgroups,
            timing: if info.timestamps { "gpu-timestamps" } else { "wall-clock" },
            peak_fma_gflops: peak,
            copy_gbps: copy,
            results: Vec::new(),
        },
    };

    bench_matmul(&mut b)?;
    bench_conv2d(&mut b)?;
    bench_group_norm(&mut b)?;
    bench_attention(&mut b)?;
    bench_elementwise(&mut b)?;
    bench_ddpm(&mut b)?;
    bench_optimizer(&mut b)?;
    bench_unet(&mut b)?;

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-results.json");
    std::fs::write(path, serde_json::to_string_pretty(&b.report)?)?;
    println!("\nwrote {path}");
    Ok(())
}

fn bench_matmul(b: &mut Bench) -> Result<()> {
    if !b.wanted("matmul") {
        return Ok(());
    }
    use matmul::Gemm;
    // (label, gemm): 1024^3, then the UNet's: attention scores and values
    // (batch 32, 256 tokens, 64 channels), a conv as GEMM, a linear layer.
    let cases = [
        ("[1024,1024]x[1024,1024]", Gemm::new(1024, 1024, 1024)),
        ("attn QK^T [32,256,64]x[32,256,64]^T", Gemm { batch: 32, trans_b: true, ..Gemm::new(256, 256, 64) }),
        ("attn PV [32,256,256]x[32,256,64]", Gemm { batch: 32, ..Gemm::new(256, 64, 256) }),
        ("im2col [8192,576]x[576,64]", Gemm::new(8192, 64, 576)),
        ("linear [32,128]x[512,128]^T", Gemm { trans_b: true, ..Gemm::new(32, 512, 128) }),
    ];
    for (label, g) in cases {
        let a = b.random(&[g.batch * g.m * g.k])?;
        let bm = b.random(&[g.batch * g.k * g.n])?;
        let c = b.gpu.uninit(&[g.batch * g.m * g.n])?;
        b.run("matmul", label, Work::Flops(g.flops()), |gpu| matmul::gemm(gpu, &g, &c, &a, &bm, None))?;
    }
    Ok(())
}

fn bench_elementwise(b: &mut Bench) -> Result<()> {
    let shape = [32, 64, 32, 32];
    let n: usize = shape.iter().product();
    if b.wanted("elementwise") {
        let x = b.random(&shape)?;
        let y = b.random(&shape)?;
        b.run("elementwise_add", "[32,64,32,32]", Work::Bytes((n * 12) as f64), |gpu| ew::add(gpu, &x, &y).map(drop))?;
        b.run("elementwise_silu", "[32,64,32,32]", Work::Bytes((n * 8) as f64), |gpu| ew::silu(gpu, &x).map(drop))?;
    }
    if b.wanted("reduce") {
        let x = b.random(&shape)?;
        b.run("reduce_sum", "[32,64,32,32] over (0,2,3)", Work::Bytes((n * 4) as f64), |gpu| {
            reduce::sum(gpu, &x, &[0, 2, 3]).map(drop)
        })?;
        // Summing per-image weight gradients: many outputs, few terms each.
        let per_image = b.random(&[32, 36_864])?;
        b.run("reduce_sum", "[32,36864] over (0)", Work::Bytes((32 * 36_864 * 4) as f64), |gpu| {
            reduce::sum(gpu, &per_image, &[0]).map(drop)
        })?;
    }
    Ok(())
}

fn bench_ddpm(b: &mut Bench) -> Result<()> {
    let shape = [64, 3, 32, 32];
    let n: usize = shape.iter().product();
    let label = "[64,3,32,32]";
    let tables = DdpmTables::new(b.gpu, &Schedule::new(SchedulerConfig::default())?)?;
    let t = ddpm::timesteps(b.gpu, &(0..shape[0]).map(|i| i * 997 % 1000).collect::<Vec<_>>())?;
    let x = b.random(&shape)?;
    let eps = b.random(&shape)?;
    let key = NoiseKey { seed: 7, step: 3, first_sample: 0 };
    // Bytes that must move: x0 in, x_t and eps out; x_t and eps_theta in, x_{t-1} out.
    if b.wanted("noise_step") {
        b.run("noise_step", label, Work::Bytes((n * 12) as f64), |gpu| {
            ddpm::q_sample(gpu, &tables, &x, &t, key).map(drop)
        })?;
    }
    if b.wanted("denoise_step") {
        b.run("denoise_step", label, Work::Bytes((n * 12) as f64), |gpu| {
            ddpm::p_sample(gpu, &tables, &x, &eps, &t, key).map(drop)
        })?;
    }
    if b.wanted("randn") {
        b.run("randn", label, Work::Bytes((n * 4) as f64), |gpu| ddpm::randn(gpu, &shape, key).map(drop))?;
    }
    Ok(())
}

fn bench_optimizer(b: &mut Bench) -> Result<()> {
    if !b.wanted("adam") {
        return Ok(());
    }
    // The default config's parameter count, rounded.
    let n = 1 << 20;
    let params = b.random(&[n])?;
    let grads = b.random(&[n])?;
    let (m, v) = (b.gpu.zeros(&[n])?, b.gpu.zeros(&[n])?);
    let ema = b.random(&[n])?;
    let cfg = optimizer::Adam { max_grad_norm: 1.0, ..optimizer::Adam::default() };
    // Reads params, m, v, grads (and the norm pass reads grads); writes params, m, v; EMA reads 2, writes 1.
    b.run("adam_step", "1M params, clip + Adam + EMA", Work::Bytes((n * 4 * 11) as f64), |gpu| {
        let norm_sq = optimizer::grad_norm_sq(gpu, &grads)?;
        optimizer::adam_step(gpu, &cfg, 1, 1e-4, &params, &m, &v, &grads, &norm_sq)?;
        optimizer::ema_update(gpu, &ema, &params, 0.999)
    })?;
    Ok(())
}

/// Useful FLOPs of one UNet forward pass: every conv, linear and attention
/// product, counted from the layout (2 per multiply-add).
fn unet_forward_flops(config: &UNetConfig, batch: usize, resolution: usize) -> f64 {
    let unet = UNet::new(config).unwrap();
    let mut flops = 0.0;
    let (mut hw, mut level_res) = (Vec::new(), resolution);
    for _ in &config.block_out_channels {
        hw.push(level_res * level_res);
        level_res /= 2;
    }
    let conv = |cin: usize, cout: usize, k: usize, pixels: usize| 2.0 * (batch * pixels * cin * cout * k * k) as f64;
    let attn = |c: usize, t: usize| 2.0 * (batch * t * c * c * 4) as f64 + 4.0 * (batch * t * t * c) as f64;
    let resblock = |r: &ddpm_wgpu::unet::layout::ResBlock, pixels: usize| {
        conv(r.c_in, r.c_out, 3, pixels)
            + conv(r.c_out, r.c_out, 3, pixels)
            + if r.has_shortcut() { conv(r.c_in, r.c_out, 1, pixels) } else { 0.0 }
    };
    flops += conv(config.in_channels, config.block_out_channels[0], 3, hw[0]);
    for (i, level) in unet.layout.down.iter().enumerate() {
        for r in &level.resnets {
            flops += resblock(r, hw[i]);
        }
        flops += level.attentions.iter().map(|a| attn(a.channels, hw[i])).sum::<f64>();
        if level.downsample.is_some() {
            flops += conv(level.channels, level.channels, 3, hw[i + 1]);
        }
    }
    let last = hw.len() - 1;
    if let Some(mid) = &unet.layout.mid {
        flops += resblock(&mid.resnet_in, hw[last]) + resblock(&mid.resnet_out, hw[last]);
        flops += mid.attention.as_ref().map_or(0.0, |a| attn(a.channels, hw[last]));
    }
    for (i, level) in unet.layout.up.iter().enumerate() {
        let li = last - i;
        for r in &level.resnets {
            flops += resblock(r, hw[li]);
        }
        flops += level.attentions.iter().map(|a| attn(a.channels, hw[li])).sum::<f64>();
        if level.upsample.is_some() {
            flops += conv(level.channels, level.channels, 3, hw[li - 1]);
        }
    }
    flops + conv(config.block_out_channels[0], config.out_channels, 3, hw[0])
}

/// Kernels a profile lists by name (the rest are summed in one line).
const PROFILE_TOP: usize = 12;

fn bench_unet(b: &mut Bench) -> Result<()> {
    // (name, config, batch, patch size): "default" is the default run's model
    // unpatched at 32x32; "patched" is what `ddpm train` trains by default.
    let configs = [
        ("default", include_str!("../assets/configs/default_unet.json"), 32, 1),
        ("patched", include_str!("../assets/configs/default_unet.json"), 64, 2),
        ("cifar10", include_str!("../assets/configs/ddpm_cifar10_unet.json"), 8, 1),
    ];
    let data = ddpm_wgpu::data::Dataset::mnist(32, Some(256))?;
    let only = std::env::var("BENCH_UNET").ok();
    for (name, json, batch, patch) in configs.into_iter().filter(|c| only.as_deref().is_none_or(|o| o == c.0)) {
        let mut config = UNetConfig::from_json(json)?;
        // Trained on the shipped digits, whatever the config's channels.
        config.in_channels = patch * patch;
        config.out_channels = patch * patch;
        config.patch_size = patch;
        config.sample_size = Some(32 / patch);
        let resolution = 32 / patch;
        if b.wanted("train_step") || b.wanted("profile") {
            let options = TrainOptions { batch_size: batch, steps: 1_000_000, ..TrainOptions::default() };
            let mut trainer = Trainer::new(b.gpu, &config, SchedulerConfig::default(), options, [1, 32, 32])?;
            let params = trainer.unet.table.count() as f64 / 1e6;
            // Backward costs about twice the forward.
            let flops = 3.0 * unet_forward_flops(&config, batch, resolution);
            let label = format!("{name} ({params:.2}M params) batch {batch}");
            if b.wanted("train_step") {
                b.run("train_step", &label, Work::Flops(flops), |_| trainer.train_step(&data))?;
            }
            trainer.read_logs()?;
            let before = b.gpu.launch_count();
            trainer.train_step(&data)?;
            trainer.read_logs()?;
            println!("    kernel launches per step: {}", b.gpu.launch_count() - before);
            println!("    memory: {}", trainer.memory());
            if b.wanted("profile") && b.gpu.info().timestamps {
                let profile = b.gpu.profile(|| trainer.train_step(&data))?;
                trainer.read_logs()?;
                print_profile(&format!("train_step {label}"), &profile);
            }
        }
        if b.wanted("sample_step") {
            let batch = 16;
            let unet = UNet::new(&config)?;
            let weights = ParamStore::upload(
                b.gpu,
                unet.table.clone(),
                &unet.table.init(0, ddpm_wgpu::unet::layout::InitScheme::Ddpm),
            )?;
            let tables = DdpmTables::new(b.gpu, &Schedule::new(SchedulerConfig::default())?)?;
            let x = b.random(&[batch, config.in_channels, resolution, resolution])?;
            let t = ddpm::timesteps(b.gpu, &vec![500; batch])?;
            let flops = unet_forward_flops(&config, batch, resolution);
            let label = format!("{name} batch {batch}");
            b.run("sample_step", &label, Work::Flops(flops), |gpu| {
                let eps = ddpm_wgpu::sample::predict_noise(gpu, &unet, &weights, &x, &t, None)?;
                ddpm::p_sample(gpu, &tables, &x, &eps, &t, NoiseKey { seed: 1, step: 500, first_sample: 0 }).map(drop)
            })?;
        }
    }
    Ok(())
}

/// Where a step's GPU time goes, by kernel: the largest [`PROFILE_TOP`]
/// and the rest.
fn print_profile(what: &str, profile: &ddpm_wgpu::gpu::Profile) {
    println!(
        "    profile of one {what}: {:.1} ms in kernels ({:.1} ms wall, one pass per launch)",
        profile.total_ms, profile.wall_ms
    );
    for k in profile.kernels.iter().take(PROFILE_TOP) {
        let share = 100.0 * k.ms / profile.total_ms;
        println!("      {:>8.2} ms {share:5.1}% {:>4}x  {}", k.ms, k.launches, k.kernel);
    }
    let rest = &profile.kernels[profile.kernels.len().min(PROFILE_TOP)..];
    if !rest.is_empty() {
        let ms: f64 = rest.iter().map(|k| k.ms).sum();
        let launches: usize = rest.iter().map(|k| k.launches).sum();
        println!(
            "      {ms:>8.2} ms {:5.1}% {launches:>4}x  {} other kernels",
            100.0 * ms / profile.total_ms,
            rest.len()
        );
    }
}

fn bench_conv2d(b: &mut Bench) -> Result<()> {
    let square = |n, c_in, size, c_out, k, stride, pad| Conv2dGeometry {
        n,
        c_in,
        h: size,
        w: size,
        c_out,
        kh: k,
        kw: k,
        stride,
        pad,
    };
    // The shapes of ../shared/perf/targets.md, then the UNet's stride-2 and 1x1 convs.
    let cases = [
        ("[32,64,16,16]->64", square(32, 64, 16, 64, 3, 1, [1; 4])),
        ("[32,32,32,32]->32", square(32, 32, 32, 32, 3, 1, [1; 4])),
        ("stride 2 [32,64,32,32]->64", square(32, 64, 32, 64, 3, 2, [1; 4])),
        ("stride 2 SAME [32,64,16,16]->64", square(32, 64, 16, 64, 3, 2, [0, 1, 0, 1])),
        ("1x1 [32,128,16,16]->64", square(32, 128, 16, 64, 1, 1, [0; 4])),
        // The default run's top two levels (2x2 patches, batch 64) and the CIFAR-10 UNet's top level.
        ("[64,16,16,16]->16", square(64, 16, 16, 16, 3, 1, [1; 4])),
        ("[64,32,8,8]->32", square(64, 32, 8, 32, 3, 1, [1; 4])),
        ("[8,128,32,32]->128", square(8, 128, 32, 128, 3, 1, [1; 4])),
    ];
    for (label, g) in cases {
        let x = b.random(&g.x_shape())?;
        let w = b.random(&g.w_shape())?;
        let bias = b.random(&[g.c_out])?;
        let dy = b.random(&g.y_shape())?;
        if b.wanted("conv2d_forward") {
            b.run("conv2d_forward", label, Work::Flops(g.flops()), |gpu| {
                conv2d::conv2d_forward(gpu, &g, &x, &w, Some(&bias)).map(drop)
            })?;
        }
        if b.wanted("conv2d_grad_input") {
            b.run("conv2d_grad_input", label, Work::Flops(g.flops()), |gpu| {
                conv2d::conv2d_grad_input(gpu, &g, &dy, &w).map(drop)
            })?;
        }
        if b.wanted("conv2d_grad_weight") {
            b.run("conv2d_grad_weight", label, Work::Flops(g.flops()), |gpu| {
                conv2d::conv2d_grad_weight(gpu, &g, &dy, &x).map(drop)
            })?;
        }
    }
    Ok(())
}

fn bench_group_norm(b: &mut Bench) -> Result<()> {
    if !b.wanted("group_norm") {
        return Ok(());
    }
    let shape = [32, 64, 32, 32];
    let n: usize = shape.iter().product();
    let x = b.random(&shape)?;
    let dy = b.random(&shape)?;
    let gamma = b.random(&[64])?;
    let beta = b.random(&[64])?;
    for (kernel, norm) in [
        ("group_norm_forward_backward", GroupNorm::new(32, 1e-5)),
        ("group_norm_silu_forward_backward", GroupNorm { fuse_silu: true, ..GroupNorm::new(32, 1e-5) }),
    ] {
        // Bytes that must move, counted once: x, y forward; x, dy, dx backward.
        b.run(kernel, "[32,64,32,32], 32 groups", Work::Bytes((n * 4 * 5) as f64), |gpu| {
            let (_, stats) = norm.forward(gpu, &x, &gamma, &beta)?;
            norm.backward(gpu, &dy, &x, &gamma, &beta, &stats).map(drop)
        })?;
    }
    Ok(())
}

fn bench_attention(b: &mut Bench) -> Result<()> {
    if !b.wanted("attention") {
        return Ok(());
    }
    // Batch 32, 16x16 = 256 tokens, 64 channels, 1 head.
    let (bh, t, d) = (32, 256, 64);
    let q = b.random(&[bh, t, d])?;
    let k = b.random(&[bh, t, d])?;
    let v = b.random(&[bh, t, d])?;
    let d_out = b.random(&[bh, t, d])?;
    let scale = 1.0 / (d as f32).sqrt();
    let flops = attention::flops_forward_backward(bh, t, d);
    b.run("attention_forward_backward", "batch 32, 256 tokens, 64 ch, 1 head", Work::Flops(flops), |gpu| {
        let (_, probs) = attention::attention_forward(gpu, &q, &k, &v, scale)?;
        attention::attention_backward(gpu, &d_out, &q, &k, &v, &probs, scale).map(drop)
    })?;
    Ok(())
}
