//! `ddpm eval`: score samples (drawn from a checkpoint, or a folder of
//! PNGs) with the digit classifier, and the NLL bound on real images.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use ddpm_wgpu::data::Dataset;
use ddpm_wgpu::eval::classifier::DigitClassifier;
use ddpm_wgpu::eval::{evaluate, FeatureExtractor, Images};
use ddpm_wgpu::gpu::{Gpu, GpuOptions};
use ddpm_wgpu::nll::{dataset_bits_per_dim, NllRequest};
use ddpm_wgpu::sample::{default_sample_batch, sample, Model, SampleRequest};

use crate::args::EvalArgs;
use crate::ensure_writable;

pub fn eval_command(options: &GpuOptions, args: EvalArgs) -> Result<()> {
    // Every check that can fail comes before sampling, which may take minutes.
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    if !(args.eta.is_finite() && args.eta >= 0.0) {
        bail!("--eta must be a finite number >= 0, got {}", args.eta);
    }
    if args.nll && args.checkpoint.is_none() {
        bail!("--nll needs --checkpoint (the bound is a property of a model, not of samples)");
    }
    if args.checkpoint.is_none() && args.guidance.guidance.is_some() {
        bail!("--guidance samples --checkpoint; --samples are scored as they are");
    }
    if args.nll && args.nll_num == 0 {
        bail!("--nll-num must be at least 1");
    }
    if args.checkpoint.is_some() && args.num < 2 {
        bail!("--num must be at least 2");
    }
    if let Some(parent) = args.json.as_ref().and_then(|j| j.parent()).filter(|p| !p.as_os_str().is_empty()) {
        ensure_writable(parent)?;
    }
    let folder = args.samples.as_ref().map(|dir| Images::from_png_folder(dir)).transpose()?;
    let gpu = Gpu::new(options)?;
    eprintln!("adapter: {}", gpu.info());
    let model =
        args.checkpoint.as_ref().map(|dir| Model::load_variant(&gpu, dir, args.variant.as_deref())).transpose()?;
    let (channels, resolution, count) = match (&model, &folder) {
        (Some(model), _) => {
            let config = model.unet.config();
            let resolution = config.image_size().context("the checkpoint's config has no sample_size")?;
            (config.image_channels(), resolution, args.num)
        }
        (None, Some(images)) => (images.channels, images.resolution, images.len()),
        (None, None) => bail!("give --checkpoint or --samples"),
    };
    let real = match &args.data {
        Some(dir) => Dataset::from_folder(dir, resolution, channels)?,
        None if channels == 1 => Dataset::mnist(resolution.max(28), None)?,
        None => bail!("the model makes {channels}-channel images: give the real images with --data"),
    };
    let classifier = DigitClassifier::shipped(&gpu)?;
    // The classifier metrics need digits; a model of other images gets only its NLL.
    let scored = match classifier.accepts(channels, resolution) {
        Ok(()) => true,
        Err(e) if args.nll => {
            eprintln!("note: no sample metrics ({e:#}); computing the NLL only");
            false
        }
        Err(e) => return Err(e),
    };
    if scored && real.len() < 2 * count {
        bail!(
            "scoring {count} samples needs {} real images (N for the reference, N for the floor); {} has {}",
            2 * count,
            real.source,
            real.len()
        );
    }
    if let Some(model) = model.as_ref().filter(|_| args.nll) {
        ddpm_wgpu::nll::evaluated_timesteps(model.scheduler.num_train_timesteps, args.nll_timesteps)?;
        if real.resolution != resolution || real.channels != channels {
            bail!(
                "--nll needs real images of the model's shape {channels}x{resolution}x{resolution}; {} is {}x{}x{}",
                real.source,
                real.channels,
                real.resolution,
                real.resolution
            );
        }
        if args.nll_num > real.len() {
            eprintln!(
                "note: --nll-num {} is more than the {} real images: using all of them",
                args.nll_num,
                real.len()
            );
        }
    }

    let mut metrics = serde_json::Map::new();
    let mut guided_at = None;
    if scored {
        let (samples, source) = match (&args.checkpoint, &model, folder) {
            (Some(dir), Some(model), _) => {
                let sampler = args.sampler.sampler(args.steps, args.eta);
                let config = model.unet.config();
                let batch_size = args.batch_size.unwrap_or_else(|| default_sample_batch(&gpu, config, resolution));
                let guidance = args.guidance.for_model(config, None)?;
                let request = SampleRequest {
                    count,
                    resolution,
                    sampler,
                    seed: args.seed,
                    keep_every: None,
                    batch_size,
                    guidance,
                };
                let started = Instant::now();
                let (pixels, _) =
                    sample(&gpu, &model.unet, &model.weights, &model.scheduler, &request, &mut |done, total| {
                        if done * 10 / total != (done - 1) * 10 / total || done == total {
                            eprintln!("sampling: step {done}/{total} ({:.0} s)", started.elapsed().as_secs_f64());
                        }
                    })?;
                let guided = match config.num_class_embeds {
                    Some(_) => {
                        guided_at = Some(guidance.scale);
                        format!(", all classes in turn, guidance {}", guidance.scale)
                    }
                    None => String::new(),
                };
                let what = format!("{count} samples from {} ({sampler:?}{guided}, seed {})", dir.display(), args.seed);
                (Images { channels, resolution, pixels }, what)
            }
            (_, _, Some(images)) => {
                let what = format!("{} images from {}", images.len(), args.samples.as_ref().unwrap().display());
                (images, what)
            }
            _ => unreachable!("a source was found above"),
        };
        let report = evaluate(&gpu, &classifier, &samples, &Images::from_dataset(&real), args.seed)?;
        println!("{source}, against {}", real.source);
        println!(
            "  Fréchet distance    {:>9.3}   (real vs real at this N: {:.3}; ratio {:.1}x)",
            report.frechet,
            report.frechet_floor,
            report.frechet / report.frechet_floor
        );
        println!(
            "  confident (p>={})  {:>9.3}   (real digits: {:.3})",
            ddpm_wgpu::eval::CONFIDENT,
            report.confident_fraction,
            report.real_confident_fraction
        );
        println!(
            "  class KL            {:>9.3}   (0: balanced; {:.3}: one class)",
            report.class_kl,
            (report.class_histogram.len() as f64).ln()
        );
        let histogram: Vec<String> =
            report.class_histogram.iter().enumerate().map(|(c, n)| format!("{c}:{n}")).collect();
        println!("  classes             {}", histogram.join(" "));
        if let serde_json::Value::Object(m) = serde_json::to_value(&report)? {
            metrics = m;
        }
        if let Some(scale) = guided_at {
            // The samples asked for every class equally: the class KL measures guidance hitting them.
            metrics.insert("guidance".into(), scale.into());
        }
    }
    if let Some(model) = model.as_ref().filter(|_| args.nll) {
        let batch = args.batch_size.unwrap_or_else(|| default_sample_batch(&gpu, model.unet.config(), resolution));
        let request = NllRequest { seed: args.seed, first_sample: 0, timesteps: args.nll_timesteps };
        let started = Instant::now();
        let n = dataset_bits_per_dim(&gpu, model, &real, args.nll_num, batch, &request, &mut |done, total| {
            if done * 20 / total != (done - 1) * 20 / total || done == total {
                eprintln!("NLL: timestep {done}/{total} ({:.0} s)", started.elapsed().as_secs_f64());
            }
        })?;
        let conditional = model.unet.config().num_class_embeds.is_some();
        let how = if conditional { "of the \"no class\" model, p(x); " } else { "" };
        let how = if n.strided {
            format!("{how}strided estimate over {} timesteps, runs low", n.evaluated_timesteps)
        } else {
            format!("{how}exact bound over all {} timesteps", n.evaluated_timesteps)
        };
        println!(
            "  NLL bits/dim        {:>9.3}   ({how}; {} real images: prior {:.4}, L_0 {:.3}, KL terms {:.3})",
            n.bits_per_dim,
            n.per_sample.len(),
            n.prior,
            n.decoder,
            n.kl
        );
        metrics.insert("bits_per_dim".into(), n.bits_per_dim.into());
        metrics.insert(
            "nll".into(),
            serde_json::json!({
                "images": n.per_sample.len(), "prior": n.prior, "decoder": n.decoder, "kl": n.kl,
                "evaluated_timesteps": n.evaluated_timesteps, "strided": n.strided,
            }),
        );
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(metrics))?;
        ddpm_wgpu::unet::params::write_atomically(path, text.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
