//! A whole training run: the steps, the loss-log readbacks, the stop on a
//! non-finite loss, the checkpoint, grid and evaluation cadence, and
//! interruption. `ddpm train` builds [`RunSettings`], calls [`run`] and
//! prints what its [`Observer`] is told.
//!
//! Every save (checkpoint or grid) comes right after a readback, so a saved
//! model was never trained on a non-finite loss, and the error that stops a
//! diverged run names the last checkpoint that was saved truthfully.
//!
//! In a job of several ranks every rank runs this loop in step; rank 0 alone
//! writes (metrics, checkpoints, grids, plots) and evaluates, and the ranks
//! agree on an interruption before acting on it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use super::{append_metrics, resume_metrics, DataSpec, StepLog, Trainer};
use crate::checkpoint;
use crate::data::{grid_scale, save_grid, Dataset};
use crate::eval::classifier::DigitClassifier;
use crate::eval::{evaluate, EvalReport, Images};
use crate::plot::{read_curves, training_plot, EvalPoint, TrainingCurves};
use crate::sample::{default_sample_batch, sample, Guidance, SampleRequest, Sampler};

/// How often a run saves, draws and scores, in steps (0: never). The last
/// step always saves a checkpoint and draws a grid, and scores when
/// `eval_every` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    pub checkpoint_every: u64,
    pub sample_every: u64,
    pub eval_every: u64,
}

/// What is due after one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub read_logs: bool,
    pub eval: bool,
    pub checkpoint: bool,
    pub grid: bool,
}

impl Cadence {
    /// What follows step `step` of `total`; `logs_full`: the trainer has no
    /// log slot left for another step.
    pub fn due(&self, step: u64, total: u64, logs_full: bool) -> Due {
        let last = step >= total;
        let every = |n: u64| n > 0 && step.is_multiple_of(n);
        let eval = self.eval_every > 0 && (last || every(self.eval_every));
        let checkpoint = last || every(self.checkpoint_every);
        let grid = last || every(self.sample_every);
        Due { read_logs: logs_full || eval || checkpoint || grid, eval, checkpoint, grid }
    }
}

/// The grids a run draws: DDIM samples from the EMA weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridSettings {
    pub samples: usize,
    pub ddim_steps: usize,
    pub eta: f64,
    /// Classes and guidance of a class-conditional model's grids (and evaluations).
    pub guidance: Guidance,
}

/// Where a run writes and how often.
#[derive(Clone, Debug)]
pub struct RunSettings {
    /// The run folder: `checkpoint/`, `samples/`, `metrics.csv`, `loss.png`.
    pub out: PathBuf,
    pub cadence: Cadence,
    pub grid: GridSettings,
    /// Samples each evaluation scores (with the shipped digit classifier).
    pub eval_samples: usize,
    /// Also keep this many of the newest checkpoints as
    /// `checkpoints/step_NNNNNNN` (0: only `checkpoint/`, the newest).
    pub checkpoints_total_limit: usize,
}

impl RunSettings {
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.out.join("checkpoint")
    }

    /// Where [`RunSettings::checkpoints_total_limit`] checkpoints are kept.
    pub fn kept_checkpoints_dir(&self) -> PathBuf {
        self.out.join("checkpoints")
    }

    pub fn samples_dir(&self) -> PathBuf {
        self.out.join("samples")
    }

    pub fn metrics_csv(&self) -> PathBuf {
        self.out.join("metrics.csv")
    }

    /// An exclusive lock on `out/.lock` (naming the holder's pid), held
    /// while the returned file lives and released by the OS when the
    /// process ends, however it ends; a second run into `out` is refused.
    pub fn lock(&self) -> Result<std::fs::File> {
        use std::io::{Read, Seek, Write};
        let path = self.out.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!("another `ddpm train` (pid {}) is writing to {}", holder.trim(), self.out.display());
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(file)
    }

    /// Everything that could fail later in the run, checked before step 1.
    pub fn validate(&self, data: &Dataset) -> Result<()> {
        let g = &self.grid;
        if g.samples == 0 || g.ddim_steps == 0 {
            bail!("--grid-samples and --grid-ddim-steps must be at least 1");
        }
        if !(g.eta.is_finite() && g.eta >= 0.0) {
            bail!("--grid-eta must be a finite number >= 0, got {}", g.eta);
        }
        if !(g.guidance.scale.is_finite() && g.guidance.scale >= 0.0) {
            bail!("--guidance must be a finite number >= 0, got {}", g.guidance.scale);
        }
        if self.cadence.eval_every > 0 {
            DigitClassifier::accepts_shape(data.channels, data.resolution)
                .context("--eval-every scores samples with the digit classifier")?;
            if self.eval_samples < 2 || self.eval_samples.checked_mul(2).is_none_or(|n| data.len() < n) {
                bail!(
                    "--eval-samples {} needs at least 2 and at most half the {} training images",
                    self.eval_samples,
                    data.len()
                );
            }
        }
        Ok(())
    }
}

/// A readback's summary, for progress output.
#[derive(Clone, Copy, Debug)]
pub struct Readout {
    pub step: u64,
    pub total: u64,
    /// The loss, exponentially smoothed over steps (factor 0.9).
    pub smoothed_loss: f32,
    pub steps_per_second: f64,
    pub images_per_second: f64,
}

/// What a run tells the outside world.
pub trait Observer {
    /// After every step; `readout` is given at each loss-log readback.
    fn step(&mut self, step: u64, readout: Option<&Readout>);
    /// A line worth showing: evaluation results, warnings, memory use.
    fn note(&mut self, line: &str);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The run reached its last step.
    Finished,
    /// `interrupted` was set: the steps so far are logged and checkpointed.
    Interrupted,
}

/// Train until `trainer.options.steps` or until `interrupted` is set,
/// writing into `settings.out`. `spec` says where `data` came from (kept in
/// checkpoints, so `--resume` can reload it).
pub fn run(
    trainer: &mut Trainer,
    data: &Dataset,
    spec: &DataSpec,
    settings: &RunSettings,
    observer: &mut dyn Observer,
    interrupted: &AtomicBool,
) -> Result<Outcome> {
    settings.validate(data)?;
    let root = trainer.world().rank() == 0;
    if root {
        std::fs::create_dir_all(settings.samples_dir())
            .with_context(|| format!("creating {}", settings.samples_dir().display()))?;
        resume_metrics(&settings.out, trainer.step)?;
    }
    let mut curves = read_curves(&settings.metrics_csv());
    curves.loss.retain(|p| p.0 <= trainer.step);
    curves.decile_loss.retain(|p| p.0 <= trainer.step);
    curves.eval.retain(|p| p.step <= trainer.step);
    let evaluator = match settings.cadence.eval_every {
        _ if !root => None,
        0 => None,
        _ => Some((DigitClassifier::shipped(trainer.gpu())?, Images::from_dataset(data))),
    };
    let mut state = RunState {
        // A resumed trainer starts at the step of the checkpoint it came from.
        last_saved: (trainer.step > 0).then_some(trainer.step),
        start_step: trainer.step,
        root,
        started: Instant::now(),
        smoothed: None,
        curves,
        trainer,
        settings,
        spec,
    };
    let total = state.trainer.options.steps;
    while state.trainer.step < total {
        if state.trainer.world().any(interrupted.load(Ordering::SeqCst))? {
            // The steps since the last readback still get their rows and a checkpoint.
            let logs = state.read_logs()?;
            state.record(&logs, None, observer)?;
            if root {
                state.save()?;
                training_plot(&settings.out.join("loss.png"), &state.curves)?;
            }
            return Ok(Outcome::Interrupted);
        }
        state.trainer.train_step(data)?;
        let step = state.trainer.step;
        let due = settings.cadence.due(step, total, state.trainer.logs_full());
        if step == state.start_step + 1 {
            observer.note(&format!("GPU memory after one step: {}", state.trainer.memory()));
        }
        if !due.read_logs {
            observer.step(step, None);
            continue;
        }
        let logs = state.read_logs()?;
        let report = match &evaluator {
            // A failed evaluation is reported, not fatal: the run and its checkpoints go on.
            Some((classifier, real)) if due.eval => state
                .evaluate(classifier, real)
                .inspect_err(|e| observer.note(&format!("warning: evaluation at step {step} failed: {e:#}")))
                .ok(),
            _ => None,
        };
        state.record(&logs, report.as_ref(), observer)?;
        if root && due.checkpoint {
            state.save()?;
        }
        if root && due.grid {
            state.grid(&format!("step_{step:06}.png"))?;
            training_plot(&settings.out.join("loss.png"), &state.curves)?;
        }
    }
    Ok(Outcome::Finished)
}

/// What the loop carries between steps.
struct RunState<'r, 'g> {
    trainer: &'r mut Trainer<'g>,
    settings: &'r RunSettings,
    spec: &'r DataSpec,
    curves: TrainingCurves,
    /// The step of the newest checkpoint on disk.
    last_saved: Option<u64>,
    start_step: u64,
    /// Rank 0 of the job (or the only process): the one that writes.
    root: bool,
    started: Instant,
    smoothed: Option<f32>,
}

impl RunState<'_, '_> {
    /// The logs since the last readback; a non-finite loss stops the run
    /// with the truth about the newest checkpoint.
    fn read_logs(&mut self) -> Result<Vec<StepLog>> {
        self.trainer.read_logs().map_err(|e| match self.last_saved {
            Some(step) => {
                anyhow!(
                    "{e:#}. The last good checkpoint (step {step}) is in {}",
                    self.settings.checkpoint_dir().display()
                )
            }
            None => anyhow!("{e:#}. No checkpoint was saved before it"),
        })
    }

    fn save(&mut self) -> Result<()> {
        let dir = self.settings.checkpoint_dir();
        self.trainer.save_checkpoint(&dir, self.spec)?;
        self.last_saved = Some(self.trainer.step);
        if self.settings.checkpoints_total_limit > 0 {
            let kept = self.settings.kept_checkpoints_dir();
            std::fs::create_dir_all(&kept).with_context(|| format!("creating {}", kept.display()))?;
            checkpoint::keep(&dir, &kept, self.settings.checkpoints_total_limit)?;
        }
        Ok(())
    }

    /// Append `logs` (and the step's evaluation) to metrics.csv and the
    /// curves, and tell the observer.
    fn record(&mut self, logs: &[StepLog], report: Option<&EvalReport>, observer: &mut dyn Observer) -> Result<()> {
        let step = self.trainer.step;
        let steps_per_second = (step - self.start_step) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let images_per_second = steps_per_second * self.trainer.options.images_per_step() as f64;
        let mut eval = BTreeMap::new();
        if let Some(e) = report {
            observer.note(&format!(
                "step {step}: Fréchet {:.2} (floor {:.2}), confident {:.3}, class KL {:.3}",
                e.frechet, e.frechet_floor, e.confident_fraction, e.class_kl
            ));
            eval.insert(step, [e.frechet, e.frechet_floor, e.confident_fraction, e.class_kl]);
            let (frechet, frechet_floor, confident_fraction) = (e.frechet, e.frechet_floor, e.confident_fraction);
            self.curves.eval.push(EvalPoint { step, frechet, frechet_floor, confident_fraction });
        }
        if self.root {
            append_metrics(&self.settings.out, logs, images_per_second, &eval)?;
        }
        for l in logs {
            self.smoothed = Some(self.smoothed.map_or(l.loss, |s| 0.9 * s + 0.1 * l.loss));
            self.curves.loss.push((l.step, l.loss));
            self.curves.decile_loss.push((l.step, l.decile_loss));
        }
        let readout = Readout {
            step,
            total: self.trainer.options.steps,
            smoothed_loss: self.smoothed.unwrap_or(f32::NAN),
            steps_per_second,
            images_per_second,
        };
        observer.step(step, Some(&readout));
        Ok(())
    }

    /// `count` samples from the EMA weights, drawn as the grids are.
    fn draw(&self, count: usize) -> Result<Vec<f32>> {
        let trainer = &*self.trainer;
        let grid = &self.settings.grid;
        let [_, resolution, _] = trainer.sample_shape();
        let request = SampleRequest {
            count,
            resolution,
            sampler: Sampler::Ddim { steps: grid.ddim_steps.min(trainer.scheduler.num_train_timesteps), eta: grid.eta },
            seed: trainer.options.seed,
            keep_every: None,
            batch_size: default_sample_batch(trainer.gpu(), trainer.unet.config(), resolution),
            // Without a "no class" row only the conditional model can be sampled.
            guidance: if trainer.unet.config().null_class.is_some() { grid.guidance } else { Guidance::CONDITIONAL },
        };
        let weights = trainer.ema_store()?;
        Ok(sample(trainer.gpu(), &trainer.unet, &weights, &trainer.scheduler, &request, &mut |_, _| {})?.0)
    }

    fn grid(&self, name: &str) -> Result<()> {
        let [channels, resolution, _] = self.trainer.sample_shape();
        let count = self.settings.grid.samples;
        let cols = (count as f64).sqrt().ceil() as usize;
        let path = self.settings.samples_dir().join(name);
        save_grid(&path, &self.draw(count)?, channels, resolution, cols, grid_scale(resolution))
    }

    fn evaluate(&self, classifier: &DigitClassifier, real: &Images) -> Result<EvalReport> {
        let [channels, resolution, _] = self.trainer.sample_shape();
        let samples = Images { channels, resolution, pixels: self.draw(self.settings.eval_samples)? };
        evaluate(self.trainer.gpu(), classifier, &samples, real, self.trainer.options.seed)
    }
}
