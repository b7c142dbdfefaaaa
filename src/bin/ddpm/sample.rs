//! `ddpm sample`: draw images from a checkpoint into a grid, and optionally
//! one PNG each and a strip of one sample's reverse process.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use ddpm_wgpu::data::{grid_scale, save_grid, save_image, save_npy};
use ddpm_wgpu::gpu::{Gpu, GpuOptions};
use ddpm_wgpu::sample::{default_sample_batch, sample, Model, SampleRequest, Sampler};

use crate::args::SampleArgs;
use crate::{ensure_writable, progress_bar};

pub fn sample_command(options: &GpuOptions, args: SampleArgs) -> Result<()> {
    if args.num == 0 {
        bail!("--num must be at least 1");
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    // Every output path is checked before sampling, which may take minutes.
    if !(args.eta.is_finite() && args.eta >= 0.0) {
        bail!("--eta must be a finite number >= 0, got {}", args.eta);
    }
    if args.out.is_dir() {
        bail!("--out {} is a folder: give the grid's file name", args.out.display());
    }
    for file in std::iter::once(&args.out).chain(&args.strip).chain(&args.npy) {
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            ensure_writable(parent)?;
        }
    }
    if let Some(dir) = &args.individual {
        ensure_writable(dir)?;
    }
    let gpu = Gpu::new(options)?;
    eprintln!("adapter: {}", gpu.info());
    let model = Model::load_variant(&gpu, &args.checkpoint, args.variant.as_deref())?;
    let config = model.unet.config();
    let resolution =
        args.resolution.or(config.image_size()).context("the config has no sample_size: give --resolution")?;
    let sampler = args.sampler.sampler(args.steps, args.eta);
    let steps = match sampler {
        Sampler::Ddpm => model.scheduler.num_train_timesteps,
        Sampler::Ddim { steps, .. } => steps,
    };
    let batch_size = args.batch_size.unwrap_or_else(|| default_sample_batch(&gpu, config, resolution));
    // Progress counts the steps of every chunk.
    let total = steps * args.num.div_ceil(batch_size);
    let bar = progress_bar(total as u64);
    let started = Instant::now();
    let keep_every = args.strip.as_ref().map(|_| (steps / 10).max(1));
    let guidance = args.guidance.for_model(config, args.class)?;
    let request =
        SampleRequest { count: args.num, resolution, sampler, seed: args.seed, keep_every, batch_size, guidance };
    let (images, kept) = sample(&gpu, &model.unet, &model.weights, &model.scheduler, &request, &mut |done, _| {
        bar.set_position(done as u64);
        let rate = done as f64 / started.elapsed().as_secs_f64();
        if bar.is_hidden() && (done * 10 / total != (done - 1) * 10 / total || done == total) {
            // Not a terminal: a line every tenth of the way instead of a bar.
            eprintln!("step {done}/{total} | {rate:.2} steps/s | ETA {:.0} s", (total - done) as f64 / rate);
        }
        bar.set_message(format!("{rate:.2} steps/s"));
    })?;
    bar.finish();
    if images.iter().any(|v| !v.is_finite()) {
        bail!("the samples hold NaN or infinite values; nothing was written");
    }
    let channels = config.image_channels();
    let cols = (args.num as f64).sqrt().ceil() as usize;
    save_grid(&args.out, &images, channels, resolution, cols, grid_scale(resolution))?;
    eprintln!("wrote {} ({} samples in {:.1} s)", args.out.display(), args.num, started.elapsed().as_secs_f64());
    if let Some(npy) = &args.npy {
        save_npy(npy, &images, &[args.num, channels, resolution, resolution])?;
        eprintln!("wrote {}", npy.display());
    }
    if let Some(dir) = &args.individual {
        let len = channels * resolution * resolution;
        for (i, img) in images.chunks_exact(len).enumerate() {
            save_image(&dir.join(format!("sample_{i:04}.png")), img, channels, resolution)?;
        }
        eprintln!("wrote {} images to {}", args.num, dir.display());
    }
    if let Some(strip) = &args.strip {
        let flat: Vec<f32> = kept.iter().flatten().map(|v| v.clamp(-1.0, 1.0)).collect();
        save_grid(strip, &flat, channels, resolution, kept.len(), grid_scale(resolution))?;
        eprintln!("wrote the reverse process of sample 0 to {}", strip.display());
    }
    Ok(())
}
