//! The command line: every subcommand's options, and how they become the
//! library's settings.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::ValueEnum;
use ddpm_wgpu::sample::{Guidance, Sampler};
use ddpm_wgpu::schedule::{BetaSchedule, PredictionType, SchedulerConfig};
use ddpm_wgpu::train::{Cadence, GridSettings, LrSchedule, Recipe, RunSettings, TrainOptions};
use ddpm_wgpu::unet::layout::InitScheme;
use ddpm_wgpu::unet::UNetConfig;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Folder of training images (png, jpg, ...; searched recursively). Default: MNIST digits.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where the model, schedule and optimisation settings start: default (sized for a
    /// 10-minute run on two CPU cores) or paper (Ho et al. 2020); the flags below override
    /// [default: default].
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(
        Recipe::all().iter().map(|r| clap::builder::PossibleValue::new(r.name).help(r.summary)).collect::<Vec<_>>()))]
    pub preset: Option<String>,
    /// UNet2DModel config JSON (default: the preset's, assets/configs/default_unet.json or
    /// ddpm_cifar10_unet.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Training image size (default: the config's sample_size).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Diffuse each PxP block of pixels as P² channels of one pixel (patching, Hoogeboom et al.
    /// 2023): the UNet runs at 1/P the resolution, P² times cheaper at its top level; saved as
    /// `_patch_size` in the UNet's config.json [default: the preset's, or the config's].
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// 1 = grey, 3 = RGB (default: 1 for MNIST, 3 for --data).
    #[arg(long)]
    pub channels: Option<usize>,
    #[arg(long, help = preset_help("Images per step", |o| o.batch_size.to_string()))]
    pub batch_size: Option<usize>,
    #[arg(long, help = preset_help("Training steps (on --resume: the new total)", |o| o.steps.to_string()))]
    pub steps: Option<u64>,
    #[arg(long, help = preset_help("Adam learning rate", |o| o.lr.to_string()))]
    pub lr: Option<f32>,
    #[arg(long, help = preset_help("Steps of linear learning-rate warm-up", |o| o.warmup.to_string()))]
    pub warmup: Option<u64>,
    /// The learning rate after warm-up: constant, or cosine / linear decay to 0 at the last step
    /// (diffusers' constant_with_warmup, cosine, linear) [default: the preset's].
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrScheduleArg>,
    #[arg(long, help = preset_help("Adam's first-moment decay", |o| o.adam_beta1.to_string()))]
    pub adam_beta1: Option<f32>,
    #[arg(long, help = preset_help("Adam's second-moment decay", |o| o.adam_beta2.to_string()))]
    pub adam_beta2: Option<f32>,
    #[arg(long, help = preset_help("Adam's epsilon", |o| o.adam_epsilon.to_string()))]
    pub adam_epsilon: Option<f32>,
    #[arg(long, help = preset_help("AdamW's decoupled weight decay (0: plain Adam)", |o| o.weight_decay.to_string()))]
    pub weight_decay: Option<f32>,
    #[arg(long, help = preset_help(
        "Micro-batches of --batch-size whose gradients make one step (a step sees batch x this many images)",
        |o| o.grad_accum.to_string()))]
    pub grad_accum: Option<usize>,
    #[arg(long, help = preset_help("Decay of the weights' EMA (the weights checkpoints and grids use)", |o| o.ema_decay.to_string()))]
    pub ema_decay: Option<f32>,
    /// Seed of the initial weights, the data order and all noise [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, help = preset_help("Clip the global gradient norm (0: off)", |o| o.grad_clip.to_string()))]
    pub grad_clip: Option<f32>,
    #[arg(long, help = preset_help(
        "Min-SNR-gamma loss weighting (Hang et al. 2023): each sample's loss times min(SNR_t, gamma) / SNR_t (0: the paper's L_simple)",
        |o| o.min_snr_gamma.to_string()))]
    pub min_snr_gamma: Option<f32>,
    /// Where a fresh run's weights start: pytorch (PyTorch's defaults everywhere, as diffusers
    /// builds a UNet2DModel) or ddpm (the DDPM code's: each residual branch's last layer and the
    /// output conv zeroed) [default: the preset's: default pytorch, paper ddpm].
    #[arg(long, value_enum)]
    pub init: Option<InitArg>,
    /// Random horizontal flips (not for digits).
    #[arg(long)]
    pub flip: bool,
    /// Ignore the data's class labels: an unconditional UNet (the default preset conditions on
    /// the classes of the MNIST digits or of a folder with one subfolder per class, for
    /// classifier-free guidance; a folder of loose images has no labels).
    #[arg(long)]
    pub unconditional: bool,
    #[arg(long, help = preset_help(
        "Probability that a training label is replaced by \"no class\" (what guidance contrasts with)",
        |o| o.class_dropout.to_string()))]
    pub class_dropout: Option<f32>,
    /// Classifier-free guidance weight of a class-conditional run's grids and evaluations
    /// (1: the conditional model alone, what a run without class dropout always uses; above 1:
    /// more typical of the class, less varied).
    #[arg(long, default_value_t = Guidance::DEFAULT.scale)]
    pub guidance: f32,
    /// Noise schedule: linear (the paper's) or cosine [default: the preset's].
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// What the UNet predicts: epsilon (the noise, the paper's), v-prediction (Salimans & Ho
    /// 2022) or sample (x_0); saved in scheduler_config.json [default: the preset's].
    #[arg(long, value_enum)]
    pub prediction_type: Option<Prediction>,
    /// Where checkpoints, sample grids, metrics.csv and loss.png go [default: runs/mnist].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run whose output folder is this (same seed and data); `latest`: the run in
    /// --out (default runs/mnist).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write a sample grid from the EMA weights every this many steps (0: only at the end).
    #[arg(long, default_value_t = 300)]
    pub sample_every: u64,
    /// Write a checkpoint every this many steps (and at the end, and on Ctrl-C).
    #[arg(long, default_value_t = 300)]
    pub checkpoint_every: u64,
    /// Also keep the N newest checkpoints as checkpoints/step_NNNNNNN (each a complete diffusers
    /// folder `ddpm sample` reads; files hard-linked where possible); 0: only checkpoint/.
    #[arg(long, default_value_t = 0)]
    pub checkpoints_total_limit: usize,
    /// Samples in each grid.
    #[arg(long, default_value_t = 25)]
    pub grid_samples: usize,
    /// DDIM steps used for the grids written during training.
    #[arg(long, default_value_t = 50)]
    pub grid_ddim_steps: usize,
    /// DDIM eta of those grids: 1 (fresh noise each step, like the paper's sampler) gives much
    /// cleaner samples than 0 from a briefly trained model.
    #[arg(long, default_value_t = 1.0)]
    pub grid_eta: f64,
    /// Use only the first N training images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Every this many steps (and at the end), score --eval-samples samples drawn as the grids
    /// are with `ddpm eval`'s metrics (grey 28x28 or 32x32 digits only) into metrics.csv and
    /// loss.png (0: off; each evaluation costs a sampling run).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Samples per evaluation during training (the training data needs twice as many images;
    /// below the classifier's 128 features the Fréchet distance is mostly small-N bias).
    #[arg(long, default_value_t = 256)]
    pub eval_samples: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Schedule {
    Linear,
    Cosine,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum InitArg {
    Pytorch,
    Ddpm,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LrScheduleArg {
    Constant,
    Cosine,
    Linear,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Prediction {
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
pub enum SamplerKind {
    Ddpm,
    Ddim,
}

#[derive(clap::Args)]
pub struct SampleArgs {
    /// A checkpoint folder from `train` (runs/NAME/checkpoint) or a diffusers model folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// diffusers' weight variant: fp16 reads diffusion_pytorch_model.fp16.safetensors (F16 and
    /// BF16 weights are converted to f32).
    #[arg(long)]
    pub variant: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub num: usize,
    /// The grid PNG to write.
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// ddpm: the paper's Algorithm 2 over every timestep; ddim: --steps steps.
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddpm)]
    pub sampler: SamplerKind,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM eta (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Also write each sample as its own PNG into this folder.
    #[arg(long)]
    pub individual: Option<PathBuf>,
    /// Also write the samples as a float32 NumPy array (num, C, H, W) in [-1, 1]: the values
    /// before the PNGs round them to 8 bits.
    #[arg(long)]
    pub npy: Option<PathBuf>,
    /// Also write a strip of sample 0's reverse process (x_t every few steps) to this PNG.
    #[arg(long)]
    pub strip: Option<PathBuf>,
    /// Image size (default: the config's sample_size).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Samples per UNet batch; any --num is drawn in chunks of this many, with the same result
    /// (default: the most this adapter's limits allow, at most 256).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[command(flatten)]
    pub guidance: GuidanceArgs,
    /// Draw every sample of this class (class-conditional models; default: sample i of class
    /// i mod the number of classes, so a grid holds every class).
    #[arg(long)]
    pub class: Option<usize>,
}

/// Guidance for sampling a class-conditional model.
#[derive(clap::Args, Clone, Copy)]
pub struct GuidanceArgs {
    /// Classifier-free guidance weight (class-conditional models): 1 samples the conditional
    /// model alone, 0 the unconditional one; above 1, more typical of the class, less varied
    /// [default: 1.75 for a model trained with class dropout (a "no class" row), else 1].
    #[arg(long)]
    pub guidance: Option<f32>,
}

impl GuidanceArgs {
    /// The guidance for `class` with the model of `config`; refused for a
    /// model without classes.
    pub fn for_model(self, config: &UNetConfig, class: Option<usize>) -> Result<Guidance> {
        if config.num_class_embeds.is_none() && (self.guidance.is_some() || class.is_some()) {
            bail!("--guidance and --class need a class-conditional model (num_class_embeds in its config.json)");
        }
        Ok(Guidance { class, scale: self.guidance.unwrap_or(Guidance::default_for(config).scale) })
    }
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["checkpoint", "samples"])))]
pub struct EvalArgs {
    /// Sample from this checkpoint (runs/NAME/checkpoint or a diffusers model folder).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// diffusers' weight variant of --checkpoint (e.g. fp16).
    #[arg(long)]
    pub variant: Option<String>,
    /// Score the PNGs in this folder instead (grey, 28x28 or 32x32).
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Samples to draw from --checkpoint (the real reference needs twice as many images).
    #[arg(long, default_value_t = 512)]
    pub num: usize,
    /// Sampler for --checkpoint (default: DDIM, as the training grids).
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    pub sampler: SamplerKind,
    /// DDIM steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM eta (1: the training grids' setting).
    #[arg(long, default_value_t = 1.0)]
    pub eta: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Real images to compare with (default: the shipped MNIST digits).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Also write the metrics to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Samples per UNet batch (default: the most this adapter's limits allow, at most 256).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Also compute the paper's NLL bound in bits/dim on real images (needs --checkpoint). The
    /// exact bound costs T UNet forwards (T = num_train_timesteps, 1000 by default) per batch of
    /// images; --nll-timesteps K costs K+1 and gives a strided estimate that runs low.
    #[arg(long)]
    pub nll: bool,
    /// Real images the NLL is computed on (the first N of the data).
    #[arg(long, default_value_t = 64)]
    pub nll_num: usize,
    /// Evaluate the KL terms at K evenly spaced timesteps only: a strided estimate, labelled so.
    #[arg(long)]
    pub nll_timesteps: Option<usize>,
    #[command(flatten)]
    pub guidance: GuidanceArgs,
}

impl TrainArgs {
    pub fn recipe(&self) -> Result<Recipe> {
        Recipe::named(self.preset.as_deref().unwrap_or(Recipe::default().name))
    }

    /// A resumed run continues its own recipe; only its length may change.
    pub fn check_resume(&self) -> Result<()> {
        let fixed = [
            ("--preset", self.preset.is_some()),
            ("--config", self.config.is_some()),
            ("--data", self.data.is_some()),
            ("--resolution", self.resolution.is_some()),
            ("--channels", self.channels.is_some()),
            ("--patch-size", self.patch_size.is_some()),
            ("--limit", self.limit.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--warmup", self.warmup.is_some()),
            ("--lr-schedule", self.lr_schedule.is_some()),
            ("--adam-beta1", self.adam_beta1.is_some()),
            ("--adam-beta2", self.adam_beta2.is_some()),
            ("--adam-epsilon", self.adam_epsilon.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--grad-accum", self.grad_accum.is_some()),
            ("--init", self.init.is_some()),
            ("--ema-decay", self.ema_decay.is_some()),
            ("--grad-clip", self.grad_clip.is_some()),
            ("--min-snr-gamma", self.min_snr_gamma.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--prediction-type", self.prediction_type.is_some()),
            ("--flip", self.flip),
            ("--unconditional", self.unconditional),
            ("--class-dropout", self.class_dropout.is_some()),
            ("--seed", self.seed.is_some()),
            ("--out (the run stays in its folder)", self.out.is_some() && !self.resumes_latest()),
        ];
        let given: Vec<&str> = fixed.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect();
        if !given.is_empty() {
            bail!("{} cannot change on --resume: the run keeps its recipe (only --steps may grow)", given.join(", "));
        }
        Ok(())
    }

    fn resumes_latest(&self) -> bool {
        self.resume.as_deref() == Some(std::path::Path::new("latest"))
    }

    /// The run folder: --resume's (`latest`: --out's), or --out, by default runs/mnist.
    pub fn out(&self) -> PathBuf {
        match &self.resume {
            Some(_) if self.resumes_latest() => None,
            resume => resume.clone(),
        }
        .or_else(|| self.out.clone())
        .unwrap_or_else(|| "runs/mnist".into())
    }

    /// The recipe's options, overridden by the flags given.
    pub fn options(&self, recipe: &Recipe) -> TrainOptions {
        let r = &recipe.options;
        TrainOptions {
            batch_size: self.batch_size.unwrap_or(r.batch_size),
            steps: self.steps.unwrap_or(r.steps),
            lr: self.lr.unwrap_or(r.lr),
            warmup: self.warmup.unwrap_or(r.warmup),
            ema_decay: self.ema_decay.unwrap_or(r.ema_decay),
            seed: self.seed.unwrap_or(0),
            grad_clip: self.grad_clip.unwrap_or(r.grad_clip),
            flip: self.flip,
            weight_decay: self.weight_decay.unwrap_or(r.weight_decay),
            adam_beta1: self.adam_beta1.unwrap_or(r.adam_beta1),
            adam_beta2: self.adam_beta2.unwrap_or(r.adam_beta2),
            adam_epsilon: self.adam_epsilon.unwrap_or(r.adam_epsilon),
            lr_schedule: match self.lr_schedule {
                Some(LrScheduleArg::Constant) => LrSchedule::Constant,
                Some(LrScheduleArg::Cosine) => LrSchedule::Cosine,
                Some(LrScheduleArg::Linear) => LrSchedule::Linear,
                None => r.lr_schedule,
            },
            grad_accum: self.grad_accum.unwrap_or(r.grad_accum),
            init: match self.init {
                Some(InitArg::Pytorch) => InitScheme::PyTorch,
                Some(InitArg::Ddpm) => InitScheme::Ddpm,
                None => r.init,
            },
            min_snr_gamma: self.min_snr_gamma.unwrap_or(r.min_snr_gamma),
            class_dropout: self.class_dropout.unwrap_or(r.class_dropout),
        }
    }

    /// The recipe's noise schedule and prediction type, overridden by the flags given.
    pub fn scheduler(&self, recipe: &Recipe) -> SchedulerConfig {
        let base = recipe.scheduler();
        SchedulerConfig {
            beta_schedule: match self.schedule {
                Some(Schedule::Linear) => BetaSchedule::Linear,
                Some(Schedule::Cosine) => BetaSchedule::SquaredCosCapV2,
                None => base.beta_schedule,
            },
            prediction_type: match self.prediction_type {
                Some(Prediction::Epsilon) => PredictionType::Epsilon,
                Some(Prediction::V) => PredictionType::VPrediction,
                Some(Prediction::Sample) => PredictionType::Sample,
                None => base.prediction_type,
            },
            ..base
        }
    }

    pub fn run_settings(&self, out: PathBuf) -> RunSettings {
        RunSettings {
            out,
            cadence: Cadence {
                checkpoint_every: self.checkpoint_every,
                sample_every: self.sample_every,
                eval_every: self.eval_every,
            },
            grid: GridSettings {
                samples: self.grid_samples,
                ddim_steps: self.grid_ddim_steps,
                eta: self.grid_eta,
                guidance: Guidance { class: None, scale: self.guidance },
            },
            eval_samples: self.eval_samples,
            checkpoints_total_limit: self.checkpoints_total_limit,
        }
    }
}

impl SamplerKind {
    pub fn sampler(self, steps: usize, eta: f64) -> Sampler {
        match self {
            SamplerKind::Ddpm => Sampler::Ddpm,
            SamplerKind::Ddim => Sampler::Ddim { steps, eta },
        }
    }
}
