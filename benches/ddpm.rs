//! Wall-clock timings of the DDPM kernels (`shaders/ddpm.wgsl`) at a
//! CIFAR-sized batch. Each figure is the median over 7 runs of (20 launches,
//! one submit, wait) divided by 20, after a warm-up that compiles the
//! pipeline, so submit latency is amortised. Run under the GPU lock:
//! `flock /tmp/gpu.lock cargo bench --bench ddpm`.

use std::time::Instant;

use anyhow::Result;
use ddpm_wgpu::ops::ddpm::{self, DdimTables, DdpmTables, NoiseKey};
use ddpm_wgpu::schedule::{Schedule, SchedulerConfig};
use ddpm_wgpu::{Gpu, GpuOptions};

const LAUNCHES: u32 = 20;
const RUNS: usize = 7;

/// Median milliseconds per launch of `launch`.
fn time(gpu: &Gpu, mut launch: impl FnMut(u32) -> Result<()>) -> Result<f64> {
    launch(0)?;
    gpu.submit();
    gpu.wait()?;
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        for step in 0..LAUNCHES {
            launch(step)?;
        }
        gpu.submit();
        gpu.wait()?;
        runs.push(start.elapsed().as_secs_f64() * 1e3 / LAUNCHES as f64);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[RUNS / 2])
}

fn report(name: &str, elements: usize, bytes_moved: usize, ms: f64) {
    println!(
        "{name:<34} {ms:8.3} ms  {:7.1} M elements/s  {:5.2} GB/s",
        elements as f64 / ms / 1e3,
        bytes_moved as f64 / ms / 1e6
    );
}

fn main() -> Result<()> {
    let gpu = Gpu::new(&GpuOptions::default())?;
    println!("{}", gpu.info());
    let schedule = Schedule::new(SchedulerConfig::default())?;
    let tables = DdpmTables::new(&gpu, &schedule)?;
    let ddim = DdimTables::new(&gpu, &schedule, 20, 1.0)?;
    let key = |step| NoiseKey { seed: 7, step };

    for shape in [[64usize, 3, 32, 32], [64, 3, 31, 31]] {
        let len: usize = shape.iter().product();
        let batch = shape[0];
        let x = gpu.zeros(&shape)?;
        let eps = gpu.zeros(&shape)?;
        let t = ddpm::timesteps(&gpu, &(0..batch).map(|i| i * 997 % 1000).collect::<Vec<_>>())?;
        let tag = format!("{shape:?}");
        let ms = time(&gpu, |s| ddpm::randn_into(&gpu, &x, key(s)))?;
        report(&format!("randn {tag}"), len, 4 * len, ms);
        let ms = time(&gpu, |s| ddpm::q_sample(&gpu, &tables, &x, &t, key(s)).map(|_| ()))?;
        report(&format!("q_sample {tag}"), len, 12 * len, ms);
        let ms = time(&gpu, |s| ddpm::p_sample(&gpu, &tables, &x, &eps, &t, key(s)).map(|_| ()))?;
        report(&format!("p_sample {tag}"), len, 12 * len, ms);
        let ms = time(&gpu, |s| ddpm::ddim_step(&gpu, &ddim, &x, &eps, &t, key(s)).map(|_| ()))?;
        report(&format!("ddim_step eta=1 {tag}"), len, 12 * len, ms);
    }
    let big = gpu.zeros(&[16, 65536])?;
    let ms = time(&gpu, |s| ddpm::randn_into(&gpu, &big, key(s)))?;
    report("randn [16, 65536]", big.len(), 4 * big.len(), ms);
    Ok(())
}
