//! `ddpm`: the command-line tool. Options are parsed in `args.rs`; the
//! work is the library's (`train::run`, `sample`, `eval`); this file
//! builds the runs and prints.

mod args;
mod devices;
mod eval;
mod job;
mod sample;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use args::{EvalArgs, SampleArgs, TrainArgs};
use clap::{Parser, Subcommand};
use ddpm_wgpu::gpu::{Gpu, GpuOptions};
use ddpm_wgpu::train::{
    existing_checkpoint, read_state, run, settle_class_dropout, DataSpec, Observer, Outcome, Readout, Trainer,
};
use ddpm_wgpu::unet::UNetConfig;
use indicatif::{ProgressBar, ProgressStyle};
use job::Job;

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
    /// Train a DDPM (defaults: the MNIST digits shipped in assets/). Under `mpirun -np N`
    /// (built with `--features mpi`) the N ranks train one model, data-parallel.
    Train(Box<TrainArgs>),
    /// Draw samples from a checkpoint (ours or a diffusers UNet2DModel folder).
    Sample(SampleArgs),
    /// Score samples (from a checkpoint, or a folder of PNGs) against the training digits:
    /// Fréchet distance of digit-classifier features with its real-vs-real floor, the
    /// fraction of confidently classified samples, the class histogram and its KL from
    /// uniform; with --nll, the paper's bits/dim.
    Eval(EvalArgs),
}

fn main() {
    let cli = Cli::parse();
    let job = Job::join().unwrap_or_else(|e| Job::Single(Default::default()).fail(e));
    let options = GpuOptions {
        backend: cli.backend.clone(),
        adapter_name: cli.adapter.clone(),
        // Each rank on a host takes the next of its equally good adapters.
        ordinal: job.local_rank(),
        ..GpuOptions::default()
    };
    let result = match cli.command {
        Command::Devices => devices::devices(&options, &job),
        Command::Train(args) => train(&options, *args, &job),
        Command::Sample(args) => only_alone(&job, "sample").and_then(|()| sample::sample_command(&options, args)),
        Command::Eval(args) => only_alone(&job, "eval").and_then(|()| eval::eval_command(&options, args)),
    };
    if let Err(e) = result {
        job.fail(e);
    }
}

/// Sampling and evaluation run in one process.
fn only_alone(job: &Job, command: &str) -> Result<()> {
    let n = job.world().size();
    ensure!(n == 1, "`ddpm {command}` runs in one process, not as {n} MPI ranks (only `train` is data-parallel)");
    Ok(())
}

pub(crate) fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta_precise}]")
            .expect("valid template"),
    );
    bar
}

/// Fail early, before any training, when `dir` cannot be written.
pub(crate) fn ensure_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").with_context(|| format!("output folder {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe)?;
    Ok(())
}

fn train(options: &GpuOptions, args: TrainArgs, job: &Job) -> Result<()> {
    let recipe = args.recipe()?;
    if args.resume.is_some() {
        args.check_resume()?;
    }
    let out = args.out();
    let settings = args.run_settings(out.clone());
    // Rank 0 alone writes into `out`.
    let _lock = if job.is_root() {
        ensure_writable(&out)?;
        // Held until the process ends (a kill included): a second run into `out` is refused.
        Some(settings.lock()?)
    } else {
        None
    };
    let checkpoint_dir = settings.checkpoint_dir();
    let mut train_options = args.options(&recipe);
    // A resumed run keeps its config and data; a new one takes them from the recipe and flags.
    let (config, spec, data) = match &args.resume {
        Some(_) => {
            let state = read_state(&checkpoint_dir)?;
            let found = existing_checkpoint(&checkpoint_dir)?;
            (UNetConfig::load(&found.join("unet/config.json"))?, state.data, None)
        }
        None => {
            let mut config = match &args.config {
                Some(path) => UNetConfig::load(path)?,
                None => UNetConfig::from_json(recipe.unet_config)?,
            };
            // The config's images (before any new patching), then the patching asked for.
            let (config_channels, config_size) = (config.image_channels(), config.image_size());
            let p =
                args.patch_size.unwrap_or(if args.config.is_some() { config.patch_size } else { recipe.patch_size });
            let channels = args.channels.unwrap_or(match (&args.data, &args.config) {
                (Some(_), _) => 3,
                (None, Some(_)) => config_channels,
                (None, None) => 1,
            });
            let resolution = args.resolution.or(config_size).unwrap_or(32);
            ensure!(resolution.is_multiple_of(p), "--resolution {resolution} does not split into {p}x{p} patches");
            if args.config.is_none() || args.patch_size.is_some() {
                config.in_channels = channels * p * p;
                config.out_channels = channels * p * p;
            }
            config.patch_size = p;
            config.sample_size = Some(resolution / p);
            if args.unconditional && config.num_class_embeds.is_some() {
                bail!("--unconditional with a --config that has num_class_embeds: remove one of them");
            }
            // Checked before the data is read (which may take long); again once classes are set.
            config.validate()?;
            let spec = DataSpec { folder: args.data.clone(), resolution, channels, limit: args.limit };
            let data = spec.load()?;
            if args.config.is_none() {
                // The recipe's classes follow the data's labels, plus one row for "no class".
                let conditional = recipe.class_conditional && !args.unconditional;
                let classes = data.classes().filter(|_| conditional);
                if conditional && classes.is_none() && job.is_root() {
                    eprintln!(
                        "note: {} has no class labels (one subfolder per class, at least two): training an \
                         unconditional model",
                        data.source
                    );
                }
                config.num_class_embeds = classes.map(|k| k + 1);
            }
            if config.num_class_embeds.is_none() && args.class_dropout.is_some() {
                bail!("--class-dropout needs a class-conditional UNet (labelled data, or num_class_embeds in --config)")
            }
            settle_class_dropout(&mut config, &mut train_options);
            config.validate()?;
            (config, spec, Some(data))
        }
    };
    let data = match data {
        Some(data) => data,
        None => spec.load()?,
    };
    let gpu = Gpu::new(options)?;
    let world = job.world();
    let ranks = job.describe_ranks(&gpu.info().to_string())?;
    // Only rank 0 speaks (the others' errors still reach stderr).
    let say = |line: &str| {
        if job.is_root() {
            eprintln!("{line}")
        }
    };
    match world.size() {
        1 => say(&format!("adapter: {}", gpu.info())),
        n => {
            say(&format!("MPI job of {n} ranks, data-parallel:"));
            ranks.iter().for_each(|r| say(&format!("  {r}")));
        }
    }
    let (channels, resolution) = (spec.channels, spec.resolution);
    say(&format!("data: {} images of {channels}x{resolution}x{resolution} from {}", data.len(), data.source));
    if let (Some(_), Some(names)) = (config.num_class_embeds, data.class_names()) {
        // What `ddpm sample --class K` will mean.
        let classes: Vec<String> = names.iter().enumerate().map(|(k, name)| format!("{k} {name}")).collect();
        say(&format!("classes: {}", classes.join(", ")));
    }
    let shape = [channels, resolution, resolution];
    let trainer = match &args.resume {
        Some(_) => {
            let (trainer, state) = Trainer::resume(&gpu, &checkpoint_dir, args.steps, shape)?;
            let o = &trainer.options;
            say(&format!("resuming at step {} of {} (seed {})", state.step, o.steps, o.seed));
            trainer
        }
        None => Trainer::new(&gpu, &config, args.scheduler(&recipe), train_options, shape)?,
    };
    let mut trainer = trainer.with_world(world)?;
    let o = &trainer.options;
    let parameters = trainer.unet.table.count() as f64 / 1e6;
    let mut batch = match o.grad_accum {
        1 => o.batch_size.to_string(),
        k => format!("{} ({k} micro-batches of {})", o.images_per_step(), o.batch_size),
    };
    if world.size() > 1 {
        batch += &format!(", {} per rank", o.batch_size / world.size());
    }
    say(&format!(
        "UNet: {parameters:.2}M parameters; batch {batch}, {} steps, lr {} ({:?} after warm-up)",
        o.steps, o.lr, o.lr_schedule
    ));

    // Ctrl-C and SIGTERM stop the run after the current step, with a
    // checkpoint; a second one stops at once (the last complete checkpoint
    // stays: saves are swapped in whole).
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: stopping now");
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    let bar = if job.is_root() { progress_bar(trainer.options.steps) } else { ProgressBar::hidden() };
    let mut progress = ProgressOutput { bar, quiet: !job.is_root() };
    progress.bar.set_position(trainer.step);
    let (start_step, started) = (trainer.step, Instant::now());
    let outcome = run(&mut trainer, &data, &spec, &settings, &mut progress, &interrupted);
    let bar = progress.bar;
    match outcome {
        Err(e) => {
            bar.abandon();
            Err(e)
        }
        Ok(Outcome::Interrupted) => {
            bar.abandon_with_message("interrupted");
            let step = trainer.step;
            say(&format!(
                "interrupted at step {step}: checkpoint saved; continue with `ddpm train --resume {}`",
                out.display()
            ));
            Ok(())
        }
        Ok(Outcome::Finished) => {
            bar.finish();
            let (steps, seconds) = (trainer.step - start_step, started.elapsed().as_secs_f64());
            say(&format!(
                "done: {steps} steps in {seconds:.0} s. Checkpoint: {}, samples: {}, metrics: {}",
                checkpoint_dir.display(),
                settings.samples_dir().display(),
                settings.metrics_csv().display()
            ));
            if world.size() > 1 && steps > 0 {
                let exchange = trainer.communication.as_secs_f64() / steps as f64;
                say(&format!(
                    "gradient exchange: {:.2} MiB of gradients per rank per step, {:.1} ms per step on rank 0 \
                     ({:.1}% of its step time; waiting for the slowest rank included)",
                    (trainer.unet.table.flat_len * 4) as f64 / (1 << 20) as f64,
                    exchange * 1e3,
                    100.0 * exchange * steps as f64 / seconds
                ));
            }
            Ok(())
        }
    }
}

/// A training run's progress: a bar on a terminal, one line per readback otherwise.
struct ProgressOutput {
    bar: ProgressBar,
    /// A rank other than 0 of a job: says nothing.
    quiet: bool,
}

impl Observer for ProgressOutput {
    fn step(&mut self, step: u64, readout: Option<&Readout>) {
        if self.quiet {
            return;
        }
        if let Some(r) = readout {
            let message = format!(
                "loss {:.4} | {:.2} it/s | {:.1} img/s",
                r.smoothed_loss, r.steps_per_second, r.images_per_second
            );
            if self.bar.is_hidden() {
                // Not a terminal (a log file, CI): one line per readback instead of a bar.
                let eta = (r.total - r.step) as f64 / r.steps_per_second.max(1e-9);
                eprintln!("step {}/{} | {message} | ETA {eta:.0} s", r.step, r.total);
            }
            self.bar.set_message(message);
        }
        self.bar.set_position(step);
    }

    fn note(&mut self, line: &str) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }
}
