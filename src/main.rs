//! `ddpm`: the command-line tool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ddpm_wgpu::data::{grid_scale, save_grid, save_image, Dataset};
use ddpm_wgpu::eval::classifier::DigitClassifier;
use ddpm_wgpu::eval::{evaluate, EvalReport, FeatureExtractor, Images};
use ddpm_wgpu::gpu::{enumerate_adapters, Gpu, GpuOptions};
use ddpm_wgpu::plot::{read_curves, training_plot, EvalPoint};
use ddpm_wgpu::sample::{default_sample_batch, predict_noise, sample, Model, SampleRequest, Sampler};
use ddpm_wgpu::schedule::{BetaSchedule, PredictionType, SchedulerConfig};
use ddpm_wgpu::train::{
    append_metrics, existing_checkpoint, read_state, resume_metrics, DataSpec, Recipe, TrainOptions, Trainer,
};
use ddpm_wgpu::unet::UNetConfig;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "ddpm", version, about = "Train and sample DDPM diffusion models on any GPU wgpu reaches")]
struct Cli {
    /// Graphics backend: vulkan, metal, dx12 or gl (default: WGPU_BACKEND, else the best found).
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Pick the adapter whose name contains this (default: WGPU_ADAPTER_NAME).
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu can see, with the limits and features the engine uses.
    Devices,
    /// Train a DDPM (defaults: the MNIST digits shipped in assets/).
    Train(TrainArgs),
    /// Draw samples from a checkpoint (ours or a diffusers UNet2DModel folder).
    Sample(SampleArgs),
    /// Score samples (from a checkpoint, or a folder of PNGs) against the training digits:
    /// Fréchet distance of digit-classifier features with its real-vs-real floor, the
    /// fraction of confidently classified samples, the class histogram and its KL from
    /// uniform; with --nll, the paper's bits/dim.
    Eval(EvalArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Folder of training images (png, jpg, ...; searched recursively). Default: MNIST digits.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the model, schedule and optimisation settings start: default (sized for a
    /// 10-minute run on two CPU cores) or paper (Ho et al. 2020); the flags below override
    /// [default: default].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
        Recipe::all().iter().map(|r| clap::builder::PossibleValue::new(r.name).help(r.summary)).collect::<Vec<_>>()))]
    preset: Option<String>,
    /// UNet2DModel config JSON (default: the preset's, assets/configs/default_unet.json or
    /// ddpm_cifar10_unet.json).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Training image size (default: the config's sample_size).
    #[arg(long)]
    resolution: Option<usize>,
    /// 1 = grey, 3 = RGB (default: 1 for MNIST, 3 for --data).
    #[arg(long)]
    channels: Option<usize>,
    #[arg(long, help = preset_help("Images per step", |o| o.batch_size.to_string()))]
    batch_size: Option<usize>,
    #[arg(long, help = preset_help("Training steps (on --resume: the new total)", |o| o.steps.to_string()))]
    steps: Option<u64>,
    #[arg(long, help = preset_help("Adam learning rate", |o| o.lr.to_string()))]
    lr: Option<f32>,
    #[arg(long, help = preset_help("Steps of linear learning-rate warm-up", |o| o.warmup.to_string()))]
    warmup: Option<u64>,
    #[arg(long, help = preset_help("Decay of the weights' EMA (the weights checkpoints and grids use)", |o| o.ema_decay.to_string()))]
    ema_decay: Option<f32>,
    /// Seed of the initial weights, the data order and all noise [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, help = preset_help("Clip the global gradient norm (0: off)", |o| o.grad_clip.to_string()))]
    grad_clip: Option<f32>,
    #[arg(long, help = preset_help(
        "Min-SNR-gamma loss weighting (Hang et al. 2023): each sample's loss times min(SNR_t, gamma) / SNR_t (0: the paper's L_simple)",
        |o| o.min_snr_gamma.to_string()))]
    min_snr_gamma: Option<f32>,
    /// Random horizontal flips (not for digits).
    #[arg(long)]
    flip: bool,
    /// Noise schedule: linear (the paper's) or cosine [default: the preset's].
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// What the UNet predicts: epsilon (the noise, the paper's), v-prediction (Salimans & Ho
    /// 2022) or sample (x_0); saved in scheduler_config.json [default: the preset's].
    #[arg(long, value_enum)]
    prediction_type: Option<Prediction>,
    /// Where checkpoints, sample grids, metrics.csv and loss.png go.
    #[arg(long, default_value = "runs/mnist")]
    out: PathBuf,
    /// Continue the run whose output folder is this (same seed and data).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write a sample grid from the EMA weights every this many steps (0: only at the end).
    #[arg(long, default_value_t = 300)]
    sample_every: u64,
    /// Write a checkpoint every this many steps (and at the end, and on Ctrl-C).
    #[arg(long, default_value_t = 300)]
    checkpoint_every: u64,
    /// Samples in each grid.
    #[arg(long, default_value_t = 25)]
    grid_samples: usize,
    /// DDIM steps used for the grids written during training.
    #[arg(long, default_value_t = 50)]
    grid_ddim_steps: usize,
    /// DDIM eta of those grids: 1 (fresh noise each step, like the paper's sampler) gives much
    /// cleaner samples than 0 from a briefly trained model.
    #[arg(long, default_value_t = 1.0)]
    grid_eta: f64,
    /// Use only the first N training images.
    #[arg(long)]
    limit: Option<usize>,
    /// Every this many steps (and at the end), score --eval-samples samples drawn as the grids
    /// are with `ddpm eval`'s metrics (grey 28x28 or 32x32 digits only) into metrics.csv and
    /// loss.png (0: off; each evaluation costs a sampling run).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Samples per evaluation during training (the training data needs twice as many images;
    /// below the classifier's 128 features the Fréchet distance is mostly small-N bias).
    #[arg(long, default_value_t = 256)]
    eval_samples: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Schedule {
    Linear,
    Cosine,
}

#[derive(Clone, Copy, ValueEnum)]
enum Prediction {
    Epsilon,
    #[value(name = "v-prediction")]
    V,
    Sample,
}

/// `what`, then each preset's value of one option.
fn preset_help(what: &str, value: impl Fn(&TrainOptions) -> String) -> String {
    let values: Vec<String> = Recipe::all().iter().map(|r| format!("{} {}", r.name, value(&r.options))).collect();
    format!("{what} [preset: {}]", values.join(", "))
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum SamplerKind {
    Ddpm,
    Ddim,
}

#[derive(clap::Args)]
struct SampleArgs {
    /// A checkpoint folder from `train` (runs/NAME/checkpoint) or a diffusers model folder.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, default_value_t = 64)]
    num: usize,
    /// The grid PNG to write.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// ddpm: the paper's Algorithm 2 over every timestep; ddim: --steps steps.
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddpm)]
    sampler: SamplerKind,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// DDIM eta (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Also write each sample as its own PNG into this folder.
    #[arg(long)]
    individual: Option<PathBuf>,
    /// Also write a strip of sample 0's reverse process (x_t every few steps) to this PNG.
    #[arg(long)]
    strip: Option<PathBuf>,
    /// Image size (default: the config's sample_size).
    #[arg(long)]
    resolution: Option<usize>,
    /// Samples per UNet batch; any --num is drawn in chunks of this many, with the same result
    /// (default: the most this adapter's limits allow, at most 256).
    #[arg(long)]
    batch_size: Option<usize>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["checkpoint", "samples"])))]
struct EvalArgs {
    /// Sample from this checkpoint (runs/NAME/checkpoint or a diffusers model folder).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Score the PNGs in this folder instead (grey, 28x28 or 32x32).
    #[arg(long)]
    samples: Option<PathBuf>,
    /// Samples to draw from --checkpoint (the real reference needs twice as many images).
    #[arg(long, default_value_t = 512)]
    num: usize,
    /// Sampler for --checkpoint (default: DDIM, as the training grids).
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    sampler: SamplerKind,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// DDIM eta (1: the training grids' setting).
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Real images to compare with (default: the shipped MNIST digits).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Also write the metrics to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Samples per UNet batch (default: the most this adapter's limits allow, at most 256).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Also compute the paper's NLL bound in bits/dim on real images (needs --checkpoint). The
    /// exact bound costs T UNet forwards (T = num_train_timesteps, 1000 by default) per batch of
    /// images; --nll-timesteps K costs K+1 and gives a strided estimate that runs low.
    #[arg(long)]
    nll: bool,
    /// Real images the NLL is computed on (the first N of the data).
    #[arg(long, default_value_t = 64)]
    nll_num: usize,
    /// Evaluate the KL terms at K evenly spaced timesteps only: a strided estimate, labelled so.
    #[arg(long)]
    nll_timesteps: Option<usize>,
}

fn main() {
    let cli = Cli::parse();
    let options =
        GpuOptions { backend: cli.backend.clone(), adapter_name: cli.adapter.clone(), ..GpuOptions::default() };
    let result = match cli.command {
        Command::Devices => devices(&options),
        Command::Train(args) => train(&options, args),
        Command::Sample(args) => sample_command(&options, args),
        Command::Eval(args) => eval_command(&options, args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn devices(options: &GpuOptions) -> Result<()> {
    let adapters = enumerate_adapters(options)?;
    if adapters.is_empty() {
        // Gpu::new explains how to get an adapter.
        Gpu::new(options)?;
    }
    // Listed even when the requested adapter is missing; that error comes after the list.
    let opened = Gpu::new(options).map(|g| g.info().clone());
    let chosen = opened.as_ref().ok();
    for adapter in &adapters {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let is_chosen = chosen.as_ref().is_some_and(|c| c.name == info.name && c.backend == info.backend);
        println!("{} {} [{:?}]", if is_chosen { "*" } else { " " }, info.name, info.backend);
        println!("    type: {:?}, driver: {} {}", info.device_type, info.driver, info.driver_info);
        let has = |f: wgpu::Features| if features.contains(f) { "yes" } else { "no" };
        println!(
            "    subgroups: {} (size {}-{}), timestamps: {}, f16: {}",
            has(wgpu::Features::SUBGROUP),
            info.subgroup_min_size,
            info.subgroup_max_size,
            has(wgpu::Features::TIMESTAMP_QUERY),
            has(wgpu::Features::SHADER_F16)
        );
        println!(
            "    max storage binding: {} MiB, max buffer: {} MiB, workgroup storage: {} KiB, invocations/workgroup: {}, storage buffers/stage: {}",
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20,
            limits.max_compute_workgroup_storage_size >> 10,
            limits.max_compute_invocations_per_workgroup,
            limits.max_storage_buffers_per_shader_stage
        );
    }
    opened?;
    println!("* = the adapter the engine uses with these settings");
    Ok(())
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta_precise}]")
            .expect("valid template"),
    );
    bar
}

/// Fail early, before any training, when `dir` cannot be written.
fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("output folder {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

fn train(options: &GpuOptions, args: TrainArgs) -> Result<()> {
    let recipe = Recipe::named(args.preset.as_deref().unwrap_or(Recipe::default().name))?;
    if args.resume.is_some() {
        // A resumed run continues its own recipe; only its length may change.
        let fixed = [
            ("--preset", args.preset.is_some()),
            ("--config", args.config.is_some()),
            ("--data", args.data.is_some()),
            ("--resolution", args.resolution.is_some()),
            ("--channels", args.channels.is_some()),
            ("--limit", args.limit.is_some()),
            ("--batch-size", args.batch_size.is_some()),
            ("--lr", args.lr.is_some()),
            ("--warmup", args.warmup.is_some()),
            ("--ema-decay", args.ema_decay.is_some()),
            ("--grad-clip", args.grad_clip.is_some()),
            ("--min-snr-gamma", args.min_snr_gamma.is_some()),
            ("--schedule", args.schedule.is_some()),
            ("--prediction-type", args.prediction_type.is_some()),
            ("--flip", args.flip),
            ("--seed", args.seed.is_some()),
        ];
        let given: Vec<&str> = fixed.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect();
        if !given.is_empty() {
            bail!("{} cannot change on --resume: the run keeps its recipe (only --steps may grow)", given.join(", "));
        }
    }
    let out = args.resume.clone().unwrap_or_else(|| args.out.clone());
    ensure_writable(&out)?;
    let checkpoint_dir = out.join("checkpoint");
    // A resumed run keeps its config and data; a new one takes them from the recipe and flags.
    let (config, spec) = match &args.resume {
        Some(_) => {
            let state = read_state(&checkpoint_dir)?;
            let found = existing_checkpoint(&checkpoint_dir)?;
            (UNetConfig::load(&found.join("unet/config.json"))?, state.data)
        }
        None => {
            let mut config = match &args.config {
                Some(path) => UNetConfig::load(path)?,
                None => UNetConfig::from_json(recipe.unet_config)?,
            };
            let channels = args.channels.unwrap_or(match (&args.data, &args.config) {
                (Some(_), _) => 3,
                (None, Some(_)) => config.in_channels,
                (None, None) => 1,
            });
            if args.config.is_none() {
                config.in_channels = channels;
                config.out_channels = channels;
            }
            let resolution = args.resolution.or(config.sample_size).unwrap_or(32);
            config.sample_size = Some(resolution);
            config.validate()?;
            (config, DataSpec { folder: args.data.clone(), resolution, channels, limit: args.limit })
        }
    };
    let (channels, resolution) = (spec.channels, spec.resolution);
    let data = spec.load()?;
    let gpu = Gpu::new(options)?;
    eprintln!("adapter: {}", gpu.info());
    eprintln!("data: {} images of {}x{}x{} from {}", data.len(), channels, resolution, resolution, data.source);
    let shape = [channels, resolution, resolution];
    let mut trainer = match &args.resume {
        Some(_) => {
            let (trainer, state) = Trainer::resume(&gpu, &checkpoint_dir, args.steps, shape)?;
            eprintln!("resuming at step {} of {} (seed {})", state.step, trainer.options.steps, trainer.options.seed);
            trainer
        }
        None => {
            let scheduler = SchedulerConfig {
                beta_schedule: match args.schedule {
                    Some(Schedule::Linear) => BetaSchedule::Linear,
                    Some(Schedule::Cosine) => BetaSchedule::SquaredCosCapV2,
                    None => recipe.beta_schedule,
                },
                prediction_type: match args.prediction_type {
                    Some(Prediction::Epsilon) => PredictionType::Epsilon,
                    Some(Prediction::V) => PredictionType::VPrediction,
                    Some(Prediction::Sample) => PredictionType::Sample,
                    None => recipe.prediction_type,
                },
                ..SchedulerConfig::default()
            };
            let r = &recipe.options;
            let opts = TrainOptions {
                batch_size: args.batch_size.unwrap_or(r.batch_size),
                steps: args.steps.unwrap_or(r.steps),
                lr: args.lr.unwrap_or(r.lr),
                warmup: args.warmup.unwrap_or(r.warmup),
                ema_decay: args.ema_decay.unwrap_or(r.ema_decay),
                seed: args.seed.unwrap_or(0),
                grad_clip: args.grad_clip.unwrap_or(r.grad_clip),
                flip: args.flip,
                weight_decay: r.weight_decay,
                min_snr_gamma: args.min_snr_gamma.unwrap_or(r.min_snr_gamma),
            };
            Trainer::new(&gpu, &config, scheduler, opts, shape)?
        }
    };
    eprintln!(
        "UNet: {:.2}M parameters; batch {}, {} steps, lr {}",
        trainer.unet.table.count() as f64 / 1e6,
        trainer.options.batch_size,
        trainer.options.steps,
        trainer.options.lr
    );

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("installing the Ctrl-C handler")?;
    }
    let samples_dir = out.join("samples");
    std::fs::create_dir_all(&samples_dir)?;
    resume_metrics(&out, trainer.step)?;
    let mut curves = read_curves(&out.join("metrics.csv"));
    curves.loss.retain(|p| p.0 <= trainer.step);
    curves.decile_loss.retain(|p| p.0 <= trainer.step);
    curves.eval.retain(|p| p.step <= trainer.step);
    // What --eval-every scores samples with: the digit classifier, against the training images.
    let evaluator = if args.eval_every > 0 {
        if channels != 1 || !(resolution == 28 || resolution == 32) {
            bail!("--eval-every scores grey 28x28 or 32x32 digits; this run is {channels}x{resolution}x{resolution}");
        }
        if args.eval_samples < 2 || args.eval_samples.checked_mul(2).is_none_or(|n| data.len() < n) {
            bail!(
                "--eval-samples {} needs at least 2 and at most half the {} training images",
                args.eval_samples,
                data.len()
            );
        }
        Some((DigitClassifier::shipped(&gpu)?, Images::from_dataset(&data)))
    } else {
        None
    };
    let bar = progress_bar(trainer.options.steps);
    bar.set_position(trainer.step);
    let (start_step, started) = (trainer.step, Instant::now());
    let mut smoothed: Option<f32> = None;
    let batch = trainer.options.batch_size as f64;
    let save = |trainer: &Trainer| -> Result<()> { trainer.save_checkpoint(&checkpoint_dir, &spec) };
    // Samples from the EMA weights, drawn as the grids are.
    let draw = |trainer: &Trainer, count: usize| -> Result<Vec<f32>> {
        let weights = trainer.ema_store()?;
        let steps = args.grid_ddim_steps.min(trainer.scheduler.num_train_timesteps);
        let sampler = Sampler::Ddim { steps, eta: args.grid_eta };
        let request = SampleRequest {
            count,
            resolution,
            sampler,
            seed: trainer.options.seed,
            keep_every: None,
            batch_size: default_sample_batch(&gpu, trainer.unet.config(), resolution),
        };
        Ok(sample(&gpu, &trainer.unet, &weights, &trainer.scheduler, &request, &mut |_, _| {})?.0)
    };
    let grid = |trainer: &Trainer, name: &str| -> Result<()> {
        let images = draw(trainer, args.grid_samples)?;
        let cols = (args.grid_samples as f64).sqrt().ceil() as usize;
        save_grid(&samples_dir.join(name), &images, channels, resolution, cols, grid_scale(resolution))
    };
    let evaluate_now = |trainer: &Trainer| -> Result<Option<EvalReport>> {
        let Some((classifier, real)) = &evaluator else { return Ok(None) };
        let samples = Images { channels, resolution, pixels: draw(trainer, args.eval_samples)? };
        Ok(Some(evaluate(&gpu, classifier, &samples, real, trainer.options.seed)?))
    };

    while trainer.step < trainer.options.steps && !interrupted.load(Ordering::SeqCst) {
        trainer.train_step(&data)?;
        let step = trainer.step;
        let last = step == trainer.options.steps;
        let eval_due = args.eval_every > 0 && (step % args.eval_every == 0 || last);
        if trainer.logs_full() || last || eval_due {
            let logs = match trainer.read_logs() {
                Ok(logs) => logs,
                Err(e) => {
                    bar.abandon();
                    bail!("{e:#}. The last good checkpoint is in {}", checkpoint_dir.display());
                }
            };
            let rate = (step - start_step) as f64 / started.elapsed().as_secs_f64();
            let mut eval = BTreeMap::new();
            if eval_due {
                // A failed evaluation is reported, not fatal: the run and its checkpoints go on.
                let report = evaluate_now(&trainer).unwrap_or_else(|e| {
                    bar.suspend(|| eprintln!("warning: evaluation at step {step} failed: {e:#}"));
                    None
                });
                if let Some(e) = report {
                    let message = format!(
                        "step {step}: Fréchet {:.2} (floor {:.2}), confident {:.3}, class KL {:.3}",
                        e.frechet, e.frechet_floor, e.confident_fraction, e.class_kl
                    );
                    bar.suspend(|| eprintln!("{message}"));
                    eval.insert(step, [e.frechet, e.frechet_floor, e.confident_fraction, e.class_kl]);
                    let (frechet, frechet_floor, confident_fraction) =
                        (e.frechet, e.frechet_floor, e.confident_fraction);
                    curves.eval.push(EvalPoint { step, frechet, frechet_floor, confident_fraction });
                }
            }
            append_metrics(&out, &logs, rate * batch, &eval)?;
            for l in &logs {
                smoothed = Some(smoothed.map_or(l.loss, |s| 0.9 * s + 0.1 * l.loss));
                curves.loss.push((l.step, l.loss));
                curves.decile_loss.push((l.step, l.decile_loss));
            }
            let message =
                format!("loss {:.4} | {:.2} it/s | {:.1} img/s", smoothed.unwrap_or(f32::NAN), rate, rate * batch);
            if bar.is_hidden() {
                // Not a terminal (a log file, CI): one line per readback instead of a bar.
                let eta = (trainer.options.steps - step) as f64 / rate.max(1e-9);
                eprintln!("step {step}/{} | {message} | ETA {:.0} s", trainer.options.steps, eta);
            }
            bar.set_message(message);
        }
        bar.set_position(step);
        if step == start_step + 1 {
            bar.suspend(|| eprintln!("GPU memory after one step: {}", trainer.memory()));
        }
        if args.sample_every > 0 && step % args.sample_every == 0 && !last {
            grid(&trainer, &format!("step_{step:06}.png"))?;
            training_plot(&out.join("loss.png"), &curves)?;
        }
        if args.checkpoint_every > 0 && step % args.checkpoint_every == 0 && !last {
            save(&trainer)?;
        }
    }
    // Steps since the last readback (an interruption) still get their rows.
    let logs = trainer.read_logs()?;
    let rate = (trainer.step - start_step) as f64 / started.elapsed().as_secs_f64();
    append_metrics(&out, &logs, rate * batch, &BTreeMap::new())?;
    curves.loss.extend(logs.iter().map(|l| (l.step, l.loss)));
    curves.decile_loss.extend(logs.iter().map(|l| (l.step, l.decile_loss)));
    save(&trainer)?;
    training_plot(&out.join("loss.png"), &curves)?;
    if interrupted.load(Ordering::SeqCst) {
        bar.abandon_with_message("interrupted");
        eprintln!(
            "interrupted at step {}: checkpoint saved; continue with `ddpm train --resume {}`",
            trainer.step,
            out.display()
        );
        return Ok(());
    }
    grid(&trainer, &format!("step_{:06}.png", trainer.step))?;
    bar.finish();
    eprintln!(
        "done: {} steps in {:.0} s. Checkpoint: {}, samples: {}, metrics: {}",
        trainer.step - start_step,
        started.elapsed().as_secs_f64(),
        checkpoint_dir.display(),
        samples_dir.display(),
        out.join("metrics.csv").display()
    );
    Ok(())
}

/// Draw `loss.png` from the losses so far.
fn sample_command(options: &GpuOptions, args: SampleArgs) -> Result<()> {
    if args.num == 0 {
        bail!("--num must be at least 1");
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_writable(parent)?;
    }
    let gpu = Gpu::new(options)?;
    eprintln!("adapter: {}", gpu.info());
    let model = Model::load(&gpu, &args.checkpoint)?;
    let config = model.unet.config();
    let resolution =
        args.resolution.or(config.sample_size).context("the config has no sample_size: give --resolution")?;
    let sampler = match args.sampler {
        SamplerKind::Ddpm => Sampler::Ddpm,
        SamplerKind::Ddim => Sampler::Ddim { steps: args.steps, eta: args.eta },
    };
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
    let request = SampleRequest { count: args.num, resolution, sampler, seed: args.seed, keep_every, batch_size };
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
    let channels = config.in_channels;
    let cols = (args.num as f64).sqrt().ceil() as usize;
    save_grid(&args.out, &images, channels, resolution, cols, grid_scale(resolution))?;
    eprintln!("wrote {} ({} samples in {:.1} s)", args.out.display(), args.num, started.elapsed().as_secs_f64());
    if let Some(dir) = &args.individual {
        ensure_writable(dir)?;
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

fn eval_command(options: &GpuOptions, args: EvalArgs) -> Result<()> {
    // Every check that can fail comes before sampling, which may take minutes.
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    if args.nll && args.checkpoint.is_none() {
        bail!("--nll needs --checkpoint (the bound is a property of a model, not of samples)");
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
    let folder = args.samples.as_ref().map(|dir| load_sample_folder(dir)).transpose()?;
    let gpu = Gpu::new(options)?;
    eprintln!("adapter: {}", gpu.info());
    let model = args.checkpoint.as_ref().map(|dir| Model::load(&gpu, dir)).transpose()?;
    let (channels, resolution, count) = match (&model, &folder) {
        (Some(model), _) => {
            let config = model.unet.config();
            let resolution = config.sample_size.context("the checkpoint's config has no sample_size")?;
            (config.in_channels, resolution, args.num)
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
    if scored {
        let (samples, source) = match (&args.checkpoint, &model, folder) {
            (Some(dir), Some(model), _) => {
                let sampler = match args.sampler {
                    SamplerKind::Ddpm => Sampler::Ddpm,
                    SamplerKind::Ddim => Sampler::Ddim { steps: args.steps, eta: args.eta },
                };
                let config = model.unet.config();
                let batch_size = args.batch_size.unwrap_or_else(|| default_sample_batch(&gpu, config, resolution));
                let request =
                    SampleRequest { count, resolution, sampler, seed: args.seed, keep_every: None, batch_size };
                let started = Instant::now();
                let (pixels, _) =
                    sample(&gpu, &model.unet, &model.weights, &model.scheduler, &request, &mut |done, total| {
                        if done * 10 / total != (done - 1) * 10 / total || done == total {
                            eprintln!("sampling: step {done}/{total} ({:.0} s)", started.elapsed().as_secs_f64());
                        }
                    })?;
                let what = format!("{count} samples from {} ({sampler:?}, seed {})", dir.display(), args.seed);
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
    }
    if let Some(model) = model.as_ref().filter(|_| args.nll) {
        let n = nll_of(&gpu, model, &real, &args)?;
        let how = if n.strided {
            format!("strided estimate over {} timesteps, runs low", n.evaluated_timesteps)
        } else {
            format!("exact bound over all {} timesteps", n.evaluated_timesteps)
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

/// The NLL bound of `model` on the first --nll-num images of `real`, in
/// chunks of the sampling batch.
fn nll_of(gpu: &Gpu, model: &Model, real: &Dataset, args: &EvalArgs) -> Result<ddpm_wgpu::nll::NllReport> {
    use ddpm_wgpu::nll::{bits_per_dim, evaluated_timesteps, NllReport, NllRequest};
    let config = model.unet.config();
    let resolution = config.sample_size.context("the checkpoint's config has no sample_size")?;
    let count = args.nll_num.min(real.len());
    let batch = args.batch_size.unwrap_or_else(|| default_sample_batch(gpu, config, resolution));
    let per_chunk = evaluated_timesteps(model.scheduler.num_train_timesteps, args.nll_timesteps)?.len();
    let chunks = count.div_ceil(batch);
    let started = Instant::now();
    let mut parts = Vec::new();
    for (c, first) in (0..count).step_by(batch).enumerate() {
        let n = batch.min(count - first);
        let len = real.sample_len();
        let x0 =
            gpu.upload(&[n, real.channels, resolution, resolution], &real.pixels()[first * len..(first + n) * len])?;
        let request = NllRequest { seed: args.seed, first_sample: first as u32, timesteps: args.nll_timesteps };
        let mut predictor = |x: &ddpm_wgpu::Tensor, t: &ddpm_wgpu::Tensor, _: usize| {
            predict_noise(gpu, &model.unet, &model.weights, x, t)
        };
        parts.push(bits_per_dim(gpu, &mut predictor, &model.scheduler, &x0, &request, &mut |done, _| {
            let (done, total) = (c * per_chunk + done, chunks * per_chunk);
            if done * 20 / total != (done - 1) * 20 / total || done == total {
                eprintln!("NLL: timestep {done}/{total} ({:.0} s)", started.elapsed().as_secs_f64());
            }
        })?);
    }
    NllReport::combine(&parts)
}

/// The PNGs directly in a sample folder, as grey images: all must be the
/// same square size, 28x28 or 32x32, and grey (what `sample --individual`
/// writes), so a stray grid or an RGB sample is an error, not a score.
fn load_sample_folder(dir: &Path) -> Result<Images> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading sample folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    let first = files.first().with_context(|| format!("no PNG files in {}", dir.display()))?;
    let (size, _) = image::image_dimensions(first).with_context(|| format!("reading {}", first.display()))?;
    let mut pixels = Vec::new();
    for file in &files {
        let img = image::ImageReader::open(file)?
            .with_guessed_format()?
            .decode()
            .with_context(|| format!("cannot decode {}", file.display()))?;
        let (w, h) = (img.width(), img.height());
        if w != h || w != size || !(w == 28 || w == 32) {
            bail!("{} is {w}x{h}: samples must all be 28x28 or all 32x32 (the first is {size}x{size})", file.display());
        }
        if img.color().has_color() {
            bail!("{} is in colour: the digit classifier scores grey images", file.display());
        }
        pixels.extend(img.to_luma8().pixels().map(|p| p.0[0] as f32 / 127.5 - 1.0));
    }
    Ok(Images { channels: 1, resolution: size as usize, pixels })
}
