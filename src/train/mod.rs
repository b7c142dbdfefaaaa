//! Training (the paper's Algorithm 1): sample t ~ U{1..T} and eps ~ N(0, I),
//! noise the batch with the fused kernel, predict eps with the UNet, L_simple,
//! backward, clip, Adam, EMA — one queue submission per step.
//!
//! Every random choice of step s (data order, flips, timesteps, noise) is a
//! function of (seed, s), so a run resumed from a checkpoint continues
//! exactly as the uninterrupted run would have.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, STATE_FILE};
use crate::data::Dataset;
use crate::distributed::{share, Collective, SingleProcess};
use crate::gpu::{Gpu, Tensor, VIEW_ALIGN_ELEMS};
use crate::ops::cross_entropy::class_labels;
use crate::ops::ddpm::{self, DdpmTables, NoiseKey};
use crate::ops::loss;
use crate::ops::optimizer::{self, Adam};
use crate::patch;
use crate::schedule::{BetaSchedule, PredictionType, Schedule, SchedulerConfig};
use crate::tape::Tape;
use crate::unet::layout::InitScheme;
use crate::unet::params::{write_atomically, ParamStore};
use crate::unet::{ParamVars, UNet, UNetConfig};

// The run loop (files, grids, the wall clock) is native; the web page drives the steps itself.
#[cfg(not(target_arch = "wasm32"))]
mod run;
#[cfg(not(target_arch = "wasm32"))]
pub use run::{run, Cadence, Due, GridSettings, Observer, Outcome, Readout, RunSettings};

/// Hyper-parameters of a run (saved in checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub batch_size: usize,
    /// Total steps of the run (a resumed run continues up to this).
    pub steps: u64,
    pub lr: f32,
    /// Steps of linear learning-rate warm-up from 0.
    pub warmup: u64,
    pub ema_decay: f32,
    pub seed: u64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f32,
    /// Random horizontal flips of training images.
    pub flip: bool,
    /// AdamW's decoupled weight decay (0: plain Adam).
    pub weight_decay: f32,
    /// Adam's moment decays and denominator epsilon (PyTorch's defaults
    /// 0.9, 0.999, 1e-8; diffusers' training script uses beta1 0.95).
    #[serde(default = "default_beta1")]
    pub adam_beta1: f32,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f32,
    #[serde(default = "default_adam_epsilon")]
    pub adam_epsilon: f32,
    /// The learning rate after warm-up.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Where a fresh run's weights start (runs saved before this option
    /// started as the DDPM code's).
    #[serde(default)]
    pub init: InitScheme,
    /// Micro-batches of `batch_size` whose gradients are averaged into one
    /// optimiser step: a step sees `batch_size · grad_accum` images.
    #[serde(default = "default_grad_accum")]
    pub grad_accum: usize,
    /// Min-SNR-gamma loss weighting (Hang et al. 2023): each sample's loss is
    /// weighted by min(SNR_t, gamma) / SNR_t, so the many nearly clean
    /// timesteps stop dominating the gradient; 0 is the paper's L_simple.
    #[serde(default)]
    pub min_snr_gamma: f32,
    /// For a class-conditional UNet: the probability that a sample's label
    /// is replaced by "no class" (the UNet's last class embedding,
    /// `_null_class`), so one model learns both halves of classifier-free
    /// guidance. Unconditional UNets have no labels to drop.
    #[serde(default)]
    pub class_dropout: f32,
}

impl TrainOptions {
    /// Images one optimiser step sees: the batch times the micro-batches.
    pub fn images_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}

fn default_beta1() -> f32 {
    Adam::default().beta1
}
fn default_beta2() -> f32 {
    Adam::default().beta2
}
fn default_adam_epsilon() -> f32 {
    Adam::default().eps
}
fn default_grad_accum() -> usize {
    1
}

/// How the learning rate moves after warm-up (diffusers' `get_scheduler`
/// names, all with the linear warm-up of [`TrainOptions::warmup`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Stays at `lr` (diffusers' `constant_with_warmup`).
    #[default]
    Constant,
    /// Half a cosine from `lr` down to 0 at the last step.
    Cosine,
    /// A straight line from `lr` down to 0 at the last step.
    Linear,
}

impl LrSchedule {
    /// The learning rate of step `s` (0-based) of a `steps`-step run with
    /// `warmup` warm-up steps and peak `lr`.
    pub fn lr_at(self, lr: f32, s: u64, warmup: u64, steps: u64) -> f32 {
        if s < warmup {
            return lr * (s + 1) as f32 / warmup as f32;
        }
        // diffusers' progress: 0 at the end of warm-up, 1 at `steps`.
        let progress = (s - warmup) as f64 / (steps.saturating_sub(warmup)).max(1) as f64;
        let factor = match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
            LrSchedule::Linear => (1.0 - progress).max(0.0),
        };
        lr * factor as f32
    }
}

impl Default for TrainOptions {
    /// The default recipe's.
    fn default() -> TrainOptions {
        Recipe::default().options
    }
}

/// A named starting point for `ddpm train`: the model, the noise schedule
/// and the optimisation settings; flags override any of them.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub name: &'static str,
    /// One line for `--help` and the README.
    pub summary: &'static str,
    /// UNet2DModel config JSON; its channels follow the data.
    pub unet_config: &'static str,
    /// [`crate::unet::UNetConfig::patch_size`] of the recipe's UNet.
    pub patch_size: usize,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    pub options: TrainOptions,
    /// Condition the UNet on the data's class labels where it has them
    /// (`num_class_embeds` = classes + 1, the last for "no class").
    pub class_conditional: bool,
}

impl Default for Recipe {
    /// Sized so `ddpm train` learns the MNIST digits in 10 minutes on two CPU
    /// cores (lavapipe); NOTES.md has the experiments that chose it.
    fn default() -> Recipe {
        Recipe {
            name: "default",
            summary:
                "a 0.69M-parameter UNet on 2x2 patches predicting x_0, cosine schedule, conditioned on the digits' classes (10% dropped, for classifier-free guidance), batch 64, 500 steps: 10 minutes on 2 CPU cores",
            unet_config: include_str!("../../assets/configs/default_unet.json"),
            patch_size: 2,
            beta_schedule: BetaSchedule::SquaredCosCapV2,
            prediction_type: PredictionType::Sample,
            options: TrainOptions {
                batch_size: 64,
                steps: 500,
                lr: 2e-3,
                warmup: 100,
                ema_decay: 0.99,
                seed: 0,
                grad_clip: 1.0,
                flip: false,
                weight_decay: 0.0,
                adam_beta1: 0.9,
                adam_beta2: 0.999,
                adam_epsilon: 1e-8,
                lr_schedule: LrSchedule::Constant,
                init: InitScheme::PyTorch,
                grad_accum: 1,
                min_snr_gamma: 0.0,
                class_dropout: 0.1,
            },
            class_conditional: true,
        }
    }
}

impl Recipe {
    /// Every recipe `--preset` accepts, the default first.
    pub fn all() -> Vec<Recipe> {
        vec![Recipe::default(), Recipe::paper()]
    }

    /// Ho et al. 2020 (CIFAR-10): their 35.7M-parameter UNet with dropout
    /// 0.1, linear betas 1e-4..0.02 over T = 1000,
    /// L_simple, Adam lr 2e-4 with 5000 warm-up steps, batch 128, gradient
    /// clipping at 1, EMA 0.9999, 800k steps.
    pub fn paper() -> Recipe {
        Recipe {
            name: "paper",
            summary: "Ho et al. 2020: their 35.7M-parameter CIFAR-10 UNet, lr 2e-4, batch 128, EMA 0.9999, 800k steps",
            unet_config: include_str!("../../assets/configs/ddpm_cifar10_unet.json"),
            patch_size: 1,
            beta_schedule: BetaSchedule::Linear,
            prediction_type: PredictionType::Epsilon,
            options: TrainOptions {
                batch_size: 128,
                steps: 800_000,
                lr: 2e-4,
                warmup: 5000,
                ema_decay: 0.9999,
                seed: 0,
                grad_clip: 1.0,
                flip: false,
                weight_decay: 0.0,
                adam_beta1: 0.9,
                adam_beta2: 0.999,
                adam_epsilon: 1e-8,
                lr_schedule: LrSchedule::Constant,
                init: InitScheme::Ddpm,
                grad_accum: 1,
                min_snr_gamma: 0.0,
                class_dropout: 0.0,
            },
            class_conditional: false,
        }
    }

    /// The recipe's UNet for images of `channels` x `resolution`² in its
    /// patches, conditioned on `classes` labels (plus a "no class" row, the
    /// last: see [`settle_class_dropout`]) where the recipe conditions and
    /// the data has them.
    pub fn unet_config_for(&self, channels: usize, resolution: usize, classes: Option<usize>) -> Result<UNetConfig> {
        let p = self.patch_size;
        ensure!(resolution.is_multiple_of(p), "resolution {resolution} does not split into {p}x{p} patches");
        let mut config = UNetConfig::from_json(self.unet_config)?;
        config.in_channels = channels * p * p;
        config.out_channels = channels * p * p;
        config.patch_size = p;
        config.sample_size = Some(resolution / p);
        config.num_class_embeds = classes.filter(|_| self.class_conditional).map(|k| k + 1);
        config.validate()?;
        Ok(config)
    }

    /// The recipe's noise schedule and prediction target.
    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            beta_schedule: self.beta_schedule,
            prediction_type: self.prediction_type,
            ..SchedulerConfig::default()
        }
    }

    pub fn named(name: &str) -> Result<Recipe> {
        let all = Recipe::all();
        let names: Vec<&str> = all.iter().map(|r| r.name).collect();
        let found = all.iter().find(|r| r.name == name).cloned();
        found.with_context(|| format!("no recipe '{name}' (there are: {})", names.join(", ")))
    }
}

/// Labels dropped with `options.class_dropout` train the class embedding's
/// last row as "no class" (`config.null_class`); an unconditional UNet has
/// no labels to drop, so its runs drop none.
pub fn settle_class_dropout(config: &mut UNetConfig, options: &mut TrainOptions) {
    match config.num_class_embeds {
        Some(embeds) => config.null_class = (options.class_dropout > 0.0).then_some(embeds - 1),
        None => options.class_dropout = 0.0,
    }
}

/// Which training images, so a resumed run reads the same ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    /// An image folder, or None for the shipped MNIST digits.
    pub folder: Option<PathBuf>,
    pub resolution: usize,
    pub channels: usize,
    /// Only the first `limit` images.
    pub limit: Option<usize>,
}

impl DataSpec {
    pub fn load(&self) -> Result<Dataset> {
        ensure!(self.limit != Some(0), "--limit must be at least 1");
        ensure!(
            (1..=MAX_RESOLUTION).contains(&self.resolution),
            "--resolution must be between 1 and {MAX_RESOLUTION}, got {}",
            self.resolution
        );
        ensure!(
            self.folder.is_some() || self.channels == 1,
            "the MNIST digits are grey, but this run has {} channels (--channels, or the config's in_channels): \
             use 1, or give colour images with --data",
            self.channels
        );
        Ok(match &self.folder {
            Some(dir) => {
                let data = Dataset::from_folder(dir, self.resolution, self.channels)?;
                match self.limit {
                    Some(n) => data.truncated(n),
                    None => data,
                }
            }
            None => Dataset::mnist(self.resolution, self.limit)?,
        })
    }
}

/// The largest training image side accepted (beyond it one image's
/// activations outgrow any adapter's storage binding).
pub const MAX_RESOLUTION: usize = 1024;

/// What a checkpoint records besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Steps completed.
    pub step: u64,
    pub options: TrainOptions,
    pub data: DataSpec,
    /// The adapter it ran on, for the record (resuming elsewhere works but
    /// may not reproduce the same losses bit for bit).
    pub adapter: String,
}

/// Read the state saved in the checkpoint `dir` (or the one kept beside it).
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let dir = existing_checkpoint(dir)?;
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Losses and gradient norms of the steps since the last readback.
const LOG_SLOTS: usize = 10;

/// Buckets of the timestep range in which [`StepLog::decile_loss`] averages.
pub const DECILES: usize = 10;

/// The decile of timestep index `t` in `0..steps`: `floor(10 t / steps)`.
pub fn decile_of(t: usize, steps: usize) -> usize {
    (t * DECILES / steps).min(DECILES - 1)
}

pub struct Trainer<'g> {
    gpu: &'g Gpu,
    pub unet: UNet,
    pub scheduler: SchedulerConfig,
    pub options: TrainOptions,
    tables: DdpmTables,
    /// Min-SNR-gamma's loss weight of each timestep index; None for L_simple.
    min_snr_weights: Option<Vec<f32>>,
    /// The ranks this trainer shares each step with (data parallelism).
    world: &'g dyn Collective,
    weights: ParamStore,
    grads: Tensor,
    /// Where micro-batches after the first put their gradients before they
    /// are added to `grads` (only with gradient accumulation).
    micro_grads: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    ema: Tensor,
    /// Steps completed.
    pub step: u64,
    shard: ShardBuffers,
    norm_log: Tensor,
    /// Steps whose loss is in the logs but not yet read, with the timestep
    /// index of each sample of the (global) step.
    pending: Vec<(u64, Vec<usize>)>,
    /// Time spent averaging gradients across ranks (the exchange, waiting
    /// for the slowest rank included, and the upload), summed over steps.
    pub communication: std::time::Duration,
}

/// The buffers sized by the micro-batch this process trains on: its share
/// of the global one.
struct ShardBuffers {
    /// Each micro-batch's images (all written before the step's first command).
    x0: Vec<Tensor>,
    /// Each micro-batch's min-SNR sample weights (none for L_simple).
    loss_weights: Vec<Tensor>,
    /// (LOG_SLOTS · grad_accum) micro-batch losses, one per view slot.
    loss_log: Tensor,
    /// (LOG_SLOTS · grad_accum, row) per-sample losses, row = the batch
    /// rounded up to a view boundary.
    sample_log: Tensor,
}

impl ShardBuffers {
    /// For micro-batches of `batch` (C, H, W) model inputs, `accum` per step.
    fn new(gpu: &Gpu, batch: usize, accum: usize, input: [usize; 3], weighted: bool) -> Result<ShardBuffers> {
        let [c, h, w] = input;
        let per_micro = |shape: &[usize]| (0..accum).map(|_| gpu.uninit(shape)).collect::<Result<Vec<_>>>();
        Ok(ShardBuffers {
            x0: per_micro(&[batch, c, h, w])?,
            loss_weights: if weighted { per_micro(&[batch])? } else { Vec::new() },
            loss_log: gpu.zeros(&[LOG_SLOTS * accum * VIEW_ALIGN_ELEMS])?,
            sample_log: gpu.zeros(&[LOG_SLOTS * accum * sample_log_row(batch)])?,
        })
    }

    fn batch(&self) -> usize {
        self.x0[0].shape()[0]
    }
}

/// The world of one process, for trainers not given another.
static SINGLE_PROCESS: SingleProcess = SingleProcess;

/// GPU memory of a training run, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct MemoryReport {
    pub parameters: u64,
    pub gradients: u64,
    /// Adam's two moments.
    pub optimizer_state: u64,
    pub ema: u64,
    /// Most bytes held at once by the pool (all of the above, activations and temporaries).
    pub peak: u64,
}

impl MemoryReport {
    /// What the peak held beyond the persistent buffers: activations saved for
    /// backward, gradients in flight and temporaries.
    pub fn activations(&self) -> u64 {
        self.peak.saturating_sub(self.parameters + self.gradients + self.optimizer_state + self.ema)
    }
}

impl std::fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "parameters {:.1} MiB, gradients {:.1} MiB, Adam state {:.1} MiB, EMA {:.1} MiB, activations and temporaries {:.1} MiB; peak {:.1} MiB",
            mib(self.parameters),
            mib(self.gradients),
            mib(self.optimizer_state),
            mib(self.ema),
            mib(self.activations()),
            mib(self.peak)
        )
    }
}

/// One step's figures, read back from the GPU.
#[derive(Clone, Copy, Debug)]
pub struct StepLog {
    pub step: u64,
    pub loss: f32,
    pub grad_norm: f32,
    pub lr: f32,
    /// Mean loss of the step's samples whose timestep index t lies in
    /// decile d of `0..T` ([`decile_of`]); NaN where the step had none.
    pub decile_loss: [f32; DECILES],
    /// How many of the step's samples fell in each decile.
    pub decile_count: [u32; DECILES],
}

impl<'g> Trainer<'g> {
    /// A fresh run: weights initialised from `options.seed`.
    pub fn new(
        gpu: &'g Gpu,
        config: &UNetConfig,
        scheduler: SchedulerConfig,
        options: TrainOptions,
        sample_shape: [usize; 3],
    ) -> Result<Trainer<'g>> {
        let unet = UNet::new(config)?;
        unet.table.check_fits(gpu)?;
        let init = unet.table.init(options.seed, options.init);
        Trainer::with_weights(gpu, unet, scheduler, options, sample_shape, &init, &init, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn with_weights(
        gpu: &'g Gpu,
        unet: UNet,
        scheduler: SchedulerConfig,
        options: TrainOptions,
        sample_shape: [usize; 3],
        weights: &[f32],
        ema: &[f32],
        moments: Option<(&[f32], &[f32])>,
    ) -> Result<Trainer<'g>> {
        let c = unet.config();
        let [channels, h, w] = sample_shape;
        let p = c.patch_size;
        ensure!(
            channels * p * p == c.in_channels && c.in_channels == c.out_channels,
            "the data has {channels} channels but the UNet config has in_channels {} and out_channels {}{}",
            c.in_channels,
            c.out_channels,
            if p > 1 { format!(" (with _patch_size {p}: {} per image channel)", p * p) } else { String::new() }
        );
        ensure!(h == w && h % p == 0, "images of {h}x{w} do not split into {p}x{p} patches");
        ensure!(options.batch_size >= 1, "--batch-size must be at least 1");
        ensure!(options.lr.is_finite() && options.lr > 0.0, "--lr must be a positive number, got {}", options.lr);
        ensure!(
            (0.0..=1.0).contains(&options.ema_decay),
            "--ema-decay must be between 0 and 1, got {}",
            options.ema_decay
        );
        ensure!(
            options.grad_clip.is_finite() && options.grad_clip >= 0.0,
            "--grad-clip must be 0 (off) or positive, got {}",
            options.grad_clip
        );
        ensure!(
            options.min_snr_gamma >= 0.0 && options.min_snr_gamma.is_finite(),
            "--min-snr-gamma must be 0 (off) or positive, got {}",
            options.min_snr_gamma
        );
        ensure!(options.grad_accum >= 1, "--grad-accum must be at least 1");
        ensure!(
            (0.0..1.0).contains(&options.class_dropout),
            "--class-dropout must be in [0, 1), got {}",
            options.class_dropout
        );
        // Dropped labels need the "no class" row, and that row is trained only by them.
        ensure!(
            c.num_class_embeds.is_none() || (options.class_dropout > 0.0) == c.null_class.is_some(),
            "--class-dropout {} with a UNet {} a \"no class\" embedding (_null_class in config.json)",
            options.class_dropout,
            if c.null_class.is_some() { "that has" } else { "without" }
        );
        ensure!(
            options.steps <= ddpm::noise_steps::SAMPLING as u64,
            "--steps must be at most {} (each step's noise has an id of its own)",
            ddpm::noise_steps::SAMPLING
        );
        ensure!(
            options.batch_size.checked_mul(options.grad_accum).is_some_and(|n| n <= u32::MAX as usize),
            "--batch-size x --grad-accum ({} x {}) is too large",
            options.batch_size,
            options.grad_accum
        );
        for (flag, beta) in [("--adam-beta1", options.adam_beta1), ("--adam-beta2", options.adam_beta2)] {
            ensure!((0.0..1.0).contains(&beta), "{flag} must be in [0, 1), got {beta}");
        }
        ensure!(
            options.adam_epsilon.is_finite() && options.adam_epsilon > 0.0,
            "--adam-epsilon must be positive, got {}",
            options.adam_epsilon
        );
        ensure!(
            options.weight_decay.is_finite() && options.weight_decay >= 0.0,
            "--weight-decay must be 0 (off) or positive, got {}",
            options.weight_decay
        );
        let factor = p << (c.block_out_channels.len() - 1);
        ensure!(h % factor == 0 && w % factor == 0, "resolution {h}x{w} must be a multiple of {factor} for this UNet");
        let (channels, h, w) = (c.in_channels, h / p, w / p);
        let flat = unet.table.flat_len;
        let weights = ParamStore::upload(gpu, unet.table.clone(), weights)?;
        let (exp_avg, exp_avg_sq) = match moments {
            Some((m, v)) => (gpu.upload(&[flat], m)?, gpu.upload(&[flat], v)?),
            None => (gpu.zeros(&[flat])?, gpu.zeros(&[flat])?),
        };
        let schedule = Schedule::new(scheduler.clone())?;
        let tables = DdpmTables::new(gpu, &schedule)?;
        let min_snr_weights = match options.min_snr_gamma {
            0.0 => None,
            gamma => Some(min_snr_weights(&schedule, gamma)),
        };
        let accum = options.grad_accum;
        let input = [channels, h, w];
        Ok(Trainer {
            gpu,
            tables,
            shard: ShardBuffers::new(gpu, options.batch_size, accum, input, min_snr_weights.is_some())?,
            min_snr_weights,
            world: &SINGLE_PROCESS,
            grads: gpu.zeros(&[flat])?,
            // Zeros: the padding between parameters is never written, and is summed.
            micro_grads: if accum > 1 { Some(gpu.zeros(&[flat])?) } else { None },
            exp_avg,
            exp_avg_sq,
            ema: gpu.upload(&[flat], ema)?,
            weights,
            step: 0,
            norm_log: gpu.zeros(&[LOG_SLOTS * VIEW_ALIGN_ELEMS])?,
            pending: Vec::new(),
            communication: std::time::Duration::ZERO,
            unet,
            scheduler,
            options,
        })
    }

    /// Train as one rank of `world`: each step this process takes its share
    /// of the global batch (`batch_size` / N consecutive samples of each
    /// micro-batch, rank order), with exactly the images, flips, timesteps
    /// and noise those samples get in a single-process run, and the
    /// gradients are averaged across ranks before clipping, Adam and EMA,
    /// which then run identically everywhere.
    pub fn with_world(mut self, world: &'g dyn Collective) -> Result<Trainer<'g>> {
        let (batch, n) = (self.options.batch_size, world.size());
        ensure!(
            batch.is_multiple_of(n),
            "--batch-size {batch} is the global batch and must divide by the {n} ranks of the job"
        );
        if n > 1 {
            let shape = self.shard.x0[0].shape();
            let input = [shape[1], shape[2], shape[3]];
            let weighted = self.min_snr_weights.is_some();
            self.shard = ShardBuffers::new(self.gpu, batch / n, self.options.grad_accum, input, weighted)?;
        }
        self.world = world;
        Ok(self)
    }

    pub fn world(&self) -> &'g dyn Collective {
        self.world
    }

    /// This rank's samples within each micro-batch of `batch_size`.
    fn shard_range(&self) -> std::ops::Range<usize> {
        share(self.options.batch_size, self.world.rank(), self.world.size())
    }

    /// Learning rate of step `s` (0-based): linear warm-up, then the run's
    /// [`LrSchedule`].
    pub fn lr_at(&self, s: u64) -> f32 {
        let o = &self.options;
        o.lr_schedule.lr_at(o.lr, s, o.warmup, o.steps)
    }

    /// EMA decay of step `s`, warmed up as diffusers' EMAModel does so early
    /// weights are not frozen in.
    fn ema_decay_at(&self, s: u64) -> f32 {
        self.options.ema_decay.min((1 + s) as f32 / (10 + s) as f32)
    }

    /// Record and submit one training step on a batch from `data`: with
    /// `grad_accum` k, k micro-batches of `batch_size` whose mean gradient
    /// is that of one batch of k · `batch_size` (same images, timesteps and
    /// noise: every draw is made for the whole step, the noise keyed by the
    /// sample's index in it). In a job of several ranks
    /// ([`Trainer::with_world`]) this process computes its share of each
    /// micro-batch, and the step waits for the gradient exchange.
    pub fn train_step(&mut self, data: &Dataset) -> Result<()> {
        let gpu = self.gpu;
        let s = self.step;
        let o = &self.options;
        let (micro, accum) = (o.batch_size, o.grad_accum);
        let mut rng = step_rng(o.seed, s);
        // The whole step's draws, on every rank, so each takes the same ones a single process would.
        let indices = batch_indices(o.seed, s, micro * accum, data.len());
        let p = self.unet.config().patch_size;
        let batch = patch::unshuffle(&data.batch(&indices, o.flip, &mut rng), data.channels, data.resolution, p);
        let t_indices: Vec<usize> = (0..micro * accum).map(|_| rng.random_range(0..self.tables.steps)).collect();
        let labels = self.step_labels(data, &indices, &mut rng)?;
        let mine = self.shard_range();
        let micro_shard = |j: usize| j * micro + mine.start..j * micro + mine.end;
        // Every upload comes before the first command, so the step is one submission.
        let image_floats = batch.len() / indices.len();
        for (j, x0) in self.shard.x0.iter().enumerate() {
            let samples = micro_shard(j);
            gpu.write(x0, &batch[samples.start * image_floats..samples.end * image_floats])?;
        }
        if let Some(per_timestep) = &self.min_snr_weights {
            for (j, dest) in self.shard.loss_weights.iter().enumerate() {
                let weights: Vec<f32> = t_indices[micro_shard(j)].iter().map(|&i| per_timestep[i]).collect();
                gpu.write(dest, &weights)?;
            }
        }
        let ts: Vec<Tensor> =
            (0..accum).map(|j| ddpm::timesteps(gpu, &t_indices[micro_shard(j)])).collect::<Result<_>>()?;
        let classes: Vec<Option<Tensor>> = (0..accum)
            .map(|j| labels.as_ref().map(|(l, embeds)| class_labels(gpu, &l[micro_shard(j)], *embeds)).transpose())
            .collect::<Result<_>>()?;

        let row = sample_log_row(mine.len());
        for (j, t) in ts.iter().enumerate() {
            let x0 = &self.shard.x0[j];
            let key = NoiseKey { seed: o.seed, step: s as u32, first_sample: micro_shard(j).start as u32 };
            let (xt, eps) = ddpm::q_sample(gpu, &self.tables, x0, t, key)?;
            let grads = match (j, &self.micro_grads) {
                (0, _) | (_, None) => &self.grads,
                (_, Some(g)) => g,
            };
            let mut tape = Tape::new(gpu);
            let p = ParamVars::with_grads_into(&mut tape, &self.weights, grads)?;
            let target = ddpm::training_target(gpu, &self.tables, self.scheduler.prediction_type, x0, &eps, t)?;
            let x = tape.input(xt);
            let target = tape.input(target);
            let pred = self.unet.forward_train(&mut tape, &p, &x, t, classes[j].as_ref(), key)?;
            let loss = match self.shard.loss_weights.get(j) {
                Some(w) => tape.weighted_mse_loss(&pred, &target, w)?,
                None => tape.mse_loss(&pred, &target)?,
            };
            // Each sample's loss, straight into its log slot (no gradient).
            let slot = self.pending.len() * accum + j;
            loss::mse_loss_per_sample_into(
                gpu,
                &pred.value,
                &target.value,
                &self.shard.sample_log.view(slot * row, &[mine.len()])?,
            )?;
            gpu.copy(&loss.value, &self.shard.loss_log.view(slot * VIEW_ALIGN_ELEMS, &[1])?)?;
            drop(tape.backward_scaled(&loss, 1.0 / accum as f32)?);
            if j > 0 {
                optimizer::accumulate_grads(gpu, &self.grads, grads)?;
            }
        }

        // Only native builds have ranks (MPI).
        #[cfg(not(target_arch = "wasm32"))]
        if self.world.size() > 1 {
            // Staged through host memory: wgpu devices cannot share buffers.
            let mut grads = gpu.read(&self.grads)?;
            let started = std::time::Instant::now();
            self.world.mean_in_place(&mut grads)?;
            gpu.write(&self.grads, &grads)?;
            self.communication += started.elapsed();
        }
        let o = &self.options;
        let norm_sq = optimizer::grad_norm_sq(gpu, &self.grads)?;
        let adam = Adam {
            beta1: o.adam_beta1,
            beta2: o.adam_beta2,
            eps: o.adam_epsilon,
            weight_decay: o.weight_decay,
            decoupled: o.weight_decay > 0.0,
            max_grad_norm: o.grad_clip,
        };
        let lr = self.lr_at(s);
        let w = &self.weights.flat;
        optimizer::adam_step(gpu, &adam, s + 1, lr, w, &self.exp_avg, &self.exp_avg_sq, &self.grads, &norm_sq)?;
        optimizer::ema_update(gpu, &self.ema, w, self.ema_decay_at(s))?;

        gpu.copy(&norm_sq, &self.norm_log.view(self.pending.len() * VIEW_ALIGN_ELEMS, &[1])?)?;
        self.pending.push((s, t_indices));
        gpu.submit();
        self.step += 1;
        Ok(())
    }

    /// The class label of each of the step's samples for a class-conditional
    /// UNet (each replaced by "no class" with probability `class_dropout`,
    /// drawn from the step's generator), with the UNet's class-embedding count.
    fn step_labels(&self, data: &Dataset, indices: &[usize], rng: &mut StdRng) -> Result<Option<(Vec<usize>, usize)>> {
        let c = self.unet.config();
        let (Some(embeds), Some(classes)) = (c.num_class_embeds, c.classes()) else { return Ok(None) };
        let labels = data.labels_of(indices).with_context(|| {
            format!(
                "this UNet is class-conditional (num_class_embeds {embeds}), but {} has no class labels",
                data.source
            )
        })?;
        ensure!(
            data.classes() == Some(classes),
            "this UNet is conditioned on {classes} classes (num_class_embeds {embeds}), but {} has {}",
            data.source,
            data.classes().unwrap_or(0)
        );
        let labels: Vec<usize> = match c.null_class {
            Some(null) => {
                let p = self.options.class_dropout as f64;
                labels.into_iter().map(|l| if rng.random_bool(p) { null } else { l }).collect()
            }
            None => labels,
        };
        Ok(Some((labels, embeds)))
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// (channels, height, width) of one training image (before patching).
    pub fn sample_shape(&self) -> [usize; 3] {
        let s = self.shard.x0[0].shape();
        let p = self.unet.config().patch_size;
        [s[1] / (p * p), s[2] * p, s[3] * p]
    }

    /// Memory held so far (the peak includes every step run).
    pub fn memory(&self) -> MemoryReport {
        let flat = (self.unet.table.flat_len * 4) as u64;
        MemoryReport {
            parameters: flat,
            gradients: flat * (1 + self.micro_grads.is_some() as u64),
            optimizer_state: 2 * flat,
            ema: flat,
            peak: self.gpu.pool_stats().peak_live_bytes,
        }
    }

    /// True when the loss logs are full and must be read before the next step.
    pub fn logs_full(&self) -> bool {
        self.pending.len() == LOG_SLOTS
    }

    /// Read back the losses of the steps since the last call (waits for the
    /// GPU). A NaN or infinite loss is an error naming its step. In a job,
    /// every rank calls this after the same steps and gets the whole job's
    /// logs (each rank's losses are gathered).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_logs(&mut self) -> Result<Vec<StepLog>> {
        pollster::block_on(self.read_logs_async())
    }

    /// [`Trainer::read_logs`] once the GPU has finished the steps (the web's way).
    pub async fn read_logs_async(&mut self) -> Result<Vec<StepLog>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let accum = self.options.grad_accum;
        let logged = self.pending.len() * accum;
        let shard = self.shard.batch();
        // This rank's logs as [slot losses | slot samples], then every rank's.
        let mut mine: Vec<f32> = self
            .gpu
            .read_async(&self.shard.loss_log)
            .await?
            .into_iter()
            .step_by(VIEW_ALIGN_ELEMS)
            .take(logged)
            .collect();
        let row = sample_log_row(shard);
        let per_sample = self.gpu.read_async(&self.shard.sample_log).await?;
        mine.extend((0..logged).flat_map(|j| per_sample[j * row..j * row + shard].iter().copied()));
        let all = self.world.all_gather(&mine)?;
        let ranks: Vec<&[f32]> = all.chunks(mine.len()).collect();
        let norms = self.gpu.read_async(&self.norm_log).await?;
        let mut out = Vec::new();
        for (i, (s, t)) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let slots = i * accum..(i + 1) * accum;
            // Equal shares: the mean of the ranks' means is the batch's mean.
            let loss =
                slots.clone().flat_map(|j| ranks.iter().map(move |r| r[j])).sum::<f32>() / (accum * ranks.len()) as f32;
            let norm = norms[i * VIEW_ALIGN_ELEMS];
            if !(loss.is_finite() && norm.is_finite()) {
                let what = if loss.is_finite() {
                    format!("gradient norm became {}", norm.sqrt())
                } else {
                    format!("loss became {loss}")
                };
                bail!("the {what} at step {}: training stopped (lower --lr or check the data)", s + 1);
            }
            // In the step's sample order: micro-batch, then rank.
            let step_losses: Vec<f32> = slots
                .flat_map(|j| ranks.iter().flat_map(move |r| r[logged + j * shard..][..shard].iter()))
                .copied()
                .collect();
            let (decile_loss, decile_count) = decile_means(&step_losses, &t, self.tables.steps);
            out.push(StepLog {
                step: s + 1,
                loss,
                grad_norm: norm.sqrt(),
                lr: self.lr_at(s),
                decile_loss,
                decile_count,
            });
        }
        Ok(out)
    }

    /// The flat gradient of the last step (the mean over all its images,
    /// before clipping), in the parameter table's order. Waits for the GPU.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_gradients(&self) -> Result<Vec<f32>> {
        self.gpu.read(&self.grads)
    }

    /// The EMA weights as a store, for sampling.
    pub fn ema_store(&self) -> Result<ParamStore> {
        Ok(ParamStore { table: self.unet.table.clone(), flat: self.ema.clone() })
    }

    /// Write a resumable checkpoint to `dir`: the files of
    /// [`Trainer::checkpoint_files`]. Crash-safe at every point: see
    /// [`checkpoint`](crate::checkpoint).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint(&self, dir: &Path, data: &DataSpec) -> Result<()> {
        self.save_checkpoint_with(dir, data, &mut |_| Ok(()))
    }

    /// [`Trainer::save_checkpoint`], running `before` before each step of
    /// the swap (a test's crash points).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_checkpoint_with(
        &self,
        dir: &Path,
        data: &DataSpec,
        before: &mut dyn FnMut(checkpoint::SaveStep) -> Result<()>,
    ) -> Result<()> {
        // Everything is read back before the swap starts.
        let files = pollster::block_on(self.checkpoint_files(data))?;
        let write = |tmp: &Path| -> Result<()> {
            for (name, bytes) in &files {
                let path = tmp.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
                }
                // The state goes last, atomically: its presence marks the folder complete.
                match *name == STATE_FILE {
                    true => write_atomically(&path, bytes)?,
                    false => std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?,
                }
            }
            Ok(())
        };
        checkpoint::replace(dir, write, before)
    }

    /// A resumable checkpoint as (path, contents) pairs, [`STATE_FILE`]
    /// last: a diffusers DDPMPipeline folder (EMA weights in `unet/`,
    /// `scheduler/`; a class-conditional UNet loads there but needs
    /// `class_labels`, which the pipeline's `__call__` does not pass) plus
    /// `training/` with the raw weights, Adam moments and state.
    pub async fn checkpoint_files(&self, data: &DataSpec) -> Result<Vec<(&'static str, Vec<u8>)>> {
        let gpu = self.gpu;
        let table = &self.unet.table;
        let model_index = serde_json::json!({
            "_class_name": "DDPMPipeline",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        });
        let state = TrainState {
            step: self.step,
            options: self.options.clone(),
            data: data.clone(),
            adapter: gpu.info().to_string(),
        };
        Ok(vec![
            ("model_index.json", serde_json::to_string_pretty(&model_index)?.into_bytes()),
            ("unet/config.json", self.unet.config().to_json().into_bytes()),
            (
                "unet/diffusion_pytorch_model.safetensors",
                table.to_safetensors(&gpu.read_async(&self.ema).await?, None)?,
            ),
            ("scheduler/scheduler_config.json", self.scheduler.to_json().into_bytes()),
            ("training/weights.safetensors", table.to_safetensors(&gpu.read_async(&self.weights.flat).await?, None)?),
            ("training/exp_avg.safetensors", table.to_safetensors(&gpu.read_async(&self.exp_avg).await?, None)?),
            ("training/exp_avg_sq.safetensors", table.to_safetensors(&gpu.read_async(&self.exp_avg_sq).await?, None)?),
            (STATE_FILE, serde_json::to_string_pretty(&state)?.into_bytes()),
        ])
    }

    /// Continue the run saved in checkpoint `dir`. `steps` may extend it.
    pub fn resume(
        gpu: &'g Gpu,
        dir: &Path,
        steps: Option<u64>,
        sample_shape: [usize; 3],
    ) -> Result<(Trainer<'g>, TrainState)> {
        let dir = existing_checkpoint(dir)?;
        let read = |p: &str| {
            std::fs::read_to_string(dir.join(p)).with_context(|| format!("reading {}", dir.join(p).display()))
        };
        let mut state: TrainState =
            serde_json::from_str(&read(STATE_FILE)?).with_context(|| format!("parsing {STATE_FILE}"))?;
        let config = UNetConfig::from_json(&read("unet/config.json")?)?;
        let scheduler = SchedulerConfig::from_json(&read("scheduler/scheduler_config.json")?)?;
        let unet = UNet::new(&config)?;
        unet.table.check_fits(gpu)?;
        let table = unet.table.clone();
        let weights = table.load(&dir.join("training/weights.safetensors"))?;
        let ema = table.load(&dir.join("unet/diffusion_pytorch_model.safetensors"))?;
        let m = table.load(&dir.join("training/exp_avg.safetensors"))?;
        let v = table.load(&dir.join("training/exp_avg_sq.safetensors"))?;
        if let Some(steps) = steps {
            state.options.steps = steps;
        }
        let mut trainer = Trainer::with_weights(
            gpu,
            unet,
            scheduler,
            state.options.clone(),
            sample_shape,
            &weights,
            &ema,
            Some((&m, &v)),
        )?;
        trainer.step = state.step;
        Ok((trainer, state))
    }
}

/// Min-SNR-gamma's loss weight of each timestep index: min(SNR_t, gamma) /
/// SNR_t on the eps error, SNR_t = abar_t / (1 - abar_t); the same weight on
/// the v error is min(SNR_t, gamma) / (SNR_t + 1) and on the x_0 error
/// min(SNR_t, gamma) (as diffusers' training scripts).
pub fn min_snr_weights(schedule: &Schedule, gamma: f32) -> Vec<f32> {
    schedule
        .alphas_cumprod
        .iter()
        .map(|&abar| {
            let snr = abar / (1.0 - abar);
            let scale = match schedule.config.prediction_type {
                PredictionType::Epsilon => snr,
                PredictionType::VPrediction => snr + 1.0,
                PredictionType::Sample => 1.0,
            };
            (snr.min(gamma as f64) / scale) as f32
        })
        .collect()
}

/// Floats per step in the per-sample loss log: the batch, rounded up so
/// every step's slot is a view.
fn sample_log_row(batch: usize) -> usize {
    batch.div_ceil(VIEW_ALIGN_ELEMS) * VIEW_ALIGN_ELEMS
}

/// Mean of `losses[j]` over the samples j whose timestep `t[j]` (in
/// `0..steps`) falls in each decile (NaN for none), and the counts.
pub fn decile_means(losses: &[f32], t: &[usize], steps: usize) -> ([f32; DECILES], [u32; DECILES]) {
    let mut sum = [0.0f64; DECILES];
    let mut count = [0u32; DECILES];
    for (&l, &ti) in losses.iter().zip(t) {
        let d = decile_of(ti, steps);
        sum[d] += l as f64;
        count[d] += 1;
    }
    let mean = std::array::from_fn(|d| if count[d] == 0 { f32::NAN } else { (sum[d] / count[d] as f64) as f32 });
    (mean, count)
}

/// The newest complete checkpoint: `dir`, or one a cut-short save left beside it.
pub fn existing_checkpoint(dir: &Path) -> Result<PathBuf> {
    checkpoint::newest(dir)
        .with_context(|| format!("no resumable checkpoint in {} (expected {STATE_FILE})", dir.display()))
}

/// The generator for step `s`'s host-side choices (flips, timesteps).
fn step_rng(seed: u64, s: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ s.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
}

/// Sample indices of step `s`: epochs are seeded permutations of the
/// dataset, read `batch` at a time.
pub fn batch_indices(seed: u64, s: u64, batch: usize, len: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(batch);
    let mut position = s as usize * batch;
    while out.len() < batch {
        let epoch = position / len;
        let mut order: Vec<usize> = (0..len).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(0xDA7A).wrapping_mul(epoch as u64 + 1)));
        let start = position % len;
        let take = (len - start).min(batch - out.len());
        out.extend_from_slice(&order[start..start + take]);
        position += take;
    }
    out
}

/// The columns of `metrics.csv`.
pub const METRICS_HEADER: &str = "step,loss,lr,grad_norm,images_per_second,\
loss_t0,loss_t1,loss_t2,loss_t3,loss_t4,loss_t5,loss_t6,loss_t7,loss_t8,loss_t9,\
frechet,frechet_floor,confident_fraction,class_kl";

/// Append step logs to `metrics.csv` in `out` (with [`METRICS_HEADER`] when
/// new): the step's figures, its loss per timestep decile (empty where the
/// step had no sample there) and the evaluation `eval` holds for that step
/// as (frechet, frechet_floor, confident_fraction, class_kl) (empty cells
/// for steps it does not hold). A resumed run first calls
/// [`resume_metrics`], so the file always has [`METRICS_HEADER`].
pub fn append_metrics(
    out: &Path,
    logs: &[StepLog],
    images_per_second: f64,
    eval: &std::collections::BTreeMap<u64, [f64; 4]>,
) -> Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let path = out.join("metrics.csv");
    let new = !path.exists();
    let mut text = String::new();
    if new {
        writeln!(text, "{METRICS_HEADER}")?;
    }
    for l in logs {
        write!(text, "{},{},{},{},{:.2}", l.step, l.loss, l.lr, l.grad_norm, images_per_second)?;
        for v in l.decile_loss {
            text.push(',');
            if !v.is_nan() {
                write!(text, "{v}")?;
            }
        }
        match eval.get(&l.step) {
            Some(e) => e.iter().try_for_each(|v| write!(text, ",{v}"))?,
            None => text.push_str(",,,,"),
        }
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Make `out`'s metrics.csv fit a run resumed at `step`: rows past `step`
/// (written after the checkpoint a crash fell back to) are dropped, and a
/// file from an older version is rewritten under [`METRICS_HEADER`], its
/// columns matched by name (missing ones left empty). Written atomically.
pub fn resume_metrics(out: &Path, step: u64) -> Result<()> {
    let path = out.join("metrics.csv");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').map(str::trim).collect();
    let columns: Vec<Option<usize>> =
        METRICS_HEADER.split(',').map(|name| header.iter().position(|h| *h == name)).collect();
    let mut kept = format!("{METRICS_HEADER}\n");
    for line in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let Some(row_step) = cells.first().and_then(|c| c.parse::<u64>().ok()) else { continue };
        if row_step > step {
            continue;
        }
        let row: Vec<&str> = columns.iter().map(|c| c.and_then(|i| cells.get(i).copied()).unwrap_or("")).collect();
        kept.push_str(&row.join(","));
        kept.push('\n');
    }
    write_atomically(&path, kept.as_bytes())
}
