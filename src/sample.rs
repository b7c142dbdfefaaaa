//! Sampling: the paper's Algorithm 2 (DDPM, T steps, no noise at the last)
//! or DDIM with fewer steps, with the UNet forward recorded on a tape that
//! keeps nothing (no parameter needs a gradient).
//!
//! Noise is keyed by (seed, step, sample index, element), so sample i is the
//! same whatever the number of samples asked for, and samples are drawn in
//! chunks (one UNet batch each, sized to the adapter by
//! [`default_sample_batch`]) that give exactly what one big batch would.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::gpu::{Gpu, Tensor, VIEW_ALIGN_ELEMS};
use crate::ops::attention::MAX_PROBS_BYTES;
use crate::ops::concat::{concat, split};
use crate::ops::cross_entropy::class_labels;
use crate::ops::ddpm::{self, noise_steps, DdimTables, DdpmTables, NoiseKey};
use crate::ops::elementwise as ew;
#[cfg(not(target_arch = "wasm32"))]
use crate::patch;
use crate::schedule::{ddim_timesteps, PredictionType, Schedule, SchedulerConfig};
use crate::tape::Tape;
use crate::unet::layout::{AttnBlock, UNetLayout};
use crate::unet::{ParamStore, ParamVars, UNet, UNetConfig};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Ancestral sampling over every training timestep.
    Ddpm,
    /// DDIM over `steps` evenly spaced timesteps; `eta` = 0 is deterministic.
    Ddim { steps: usize, eta: f64 },
}

/// A model ready to sample: the UNet, its weights on the GPU, the schedule.
pub struct Model {
    pub unet: UNet,
    pub weights: ParamStore,
    pub scheduler: SchedulerConfig,
}

impl Model {
    /// Load a checkpoint written by `train` or a diffusers UNet2DModel
    /// folder: `config.json` and `diffusion_pytorch_model.safetensors` in
    /// `dir` or `dir/unet`, and `scheduler_config.json` in `dir`,
    /// `dir/scheduler` or beside the weights (the default DDPM scheduler
    /// when there is none).
    pub fn load(gpu: &Gpu, dir: &Path) -> Result<Model> {
        Model::load_variant(gpu, dir, None)
    }

    /// [`Model::load`] with diffusers' weight `variant`: `Some("fp16")`
    /// reads `diffusion_pytorch_model.fp16.safetensors` (F16, BF16 or F32
    /// tensors are all converted to f32).
    pub fn load_variant(gpu: &Gpu, dir: &Path, variant: Option<&str>) -> Result<Model> {
        // A training checkpoint whose save was cut short is beside `dir`.
        let found = crate::checkpoint::newest(dir);
        let dir = match &found {
            Some(found) if !dir.is_dir() => {
                eprintln!("note: {} is missing; using {} (a save was cut short)", dir.display(), found.display());
                found.as_path()
            }
            _ => dir,
        };
        if !dir.is_dir() {
            bail!("checkpoint folder {} does not exist", dir.display());
        }
        let unet_dir = [dir.join("unet"), dir.to_path_buf()]
            .into_iter()
            .find(|d| d.join("config.json").is_file())
            .with_context(|| format!("no config.json in {} or {}/unet", dir.display(), dir.display()))?;
        let config = UNetConfig::load(&unet_dir.join("config.json"))?;
        let unet = UNet::new(&config)?;
        unet.table.check_fits(gpu)?;
        let weights = unet.table.load(&weights_file(&unet_dir, variant)?)?;
        let scheduler_file: Option<PathBuf> = [dir.join("scheduler"), dir.to_path_buf(), unet_dir.clone()]
            .into_iter()
            .map(|d| d.join("scheduler_config.json"))
            .find(|f| f.is_file());
        let scheduler = match scheduler_file {
            Some(f) => SchedulerConfig::from_json(&std::fs::read_to_string(&f)?)
                .with_context(|| format!("in {}", f.display()))?,
            None => SchedulerConfig::default(),
        };
        Model::upload(gpu, unet, &weights, scheduler)
    }

    /// A model from a diffusers folder's files in memory (as a web page
    /// receives them): the UNet's `config.json`, its safetensors weights and
    /// the scheduler's config (the default DDPM scheduler when None).
    pub fn from_bytes(gpu: &Gpu, config_json: &str, safetensors: &[u8], scheduler_json: Option<&str>) -> Result<Model> {
        let config = UNetConfig::from_json(config_json).context("in config.json")?;
        let unet = UNet::new(&config)?;
        unet.table.check_fits(gpu)?;
        let weights = unet.table.load_bytes(safetensors).context("in the safetensors weights")?;
        let scheduler = match scheduler_json {
            Some(text) => SchedulerConfig::from_json(text).context("in scheduler_config.json")?,
            None => SchedulerConfig::default(),
        };
        Model::upload(gpu, unet, &weights, scheduler)
    }

    fn upload(gpu: &Gpu, unet: UNet, weights: &[f32], scheduler: SchedulerConfig) -> Result<Model> {
        let weights = ParamStore::upload(gpu, unet.table.clone(), weights)?;
        Ok(Model { unet, weights, scheduler })
    }
}

/// diffusers' weights file in `dir` for `variant` (`diffusion_pytorch_model.VARIANT.safetensors`).
fn weights_file(dir: &Path, variant: Option<&str>) -> Result<PathBuf> {
    const STEM: &str = "diffusion_pytorch_model";
    let name = match variant {
        Some(v) => {
            ensure!(
                !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "--variant must be a plain name such as fp16, got '{v}'"
            );
            format!("{STEM}.{v}.safetensors")
        }
        None => format!("{STEM}.safetensors"),
    };
    let path = dir.join(&name);
    if path.is_file() {
        return Ok(path);
    }
    // Name the variants that are there.
    let variants: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            let v = file.strip_prefix(&format!("{STEM}."))?.strip_suffix(".safetensors")?.to_string();
            Some(v)
        })
        .collect();
    match variants.is_empty() {
        true => bail!("no {name} in {}", dir.display()),
        false => bail!("no {name} in {}; it has the variants: {} (give --variant)", dir.display(), variants.join(", ")),
    }
}

/// Progress of a sampling run: (steps done, total).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// How a class-conditional model is sampled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guidance {
    /// Every sample of this class; None: sample i of class i mod the
    /// model's classes (every class equally, in grid order).
    pub class: Option<usize>,
    /// Classifier-free guidance weight w (Ho & Salimans 2022): the model's
    /// output is u + w (c - u), c at the sample's class and u at "no class"
    /// (the config's `_null_class` row). 1 is the conditional model alone
    /// (one UNet pass; the only choice for a model without that row), 0 the
    /// unconditional one; above 1 trades variety for class-typical samples.
    pub scale: f32,
}

impl Guidance {
    /// What `ddpm sample`, `ddpm eval` and the training grids use unless told
    /// otherwise: all classes at guidance 1.75 (NOTES.md, "Third round").
    pub const DEFAULT: Guidance = Guidance { class: None, scale: 1.75 };

    /// The conditional model alone, all classes.
    pub const CONDITIONAL: Guidance = Guidance { class: None, scale: 1.0 };

    /// [`Guidance::DEFAULT`] where `config` has a "no class" row, else
    /// [`Guidance::CONDITIONAL`].
    pub fn default_for(config: &UNetConfig) -> Guidance {
        if config.null_class.is_some() {
            Guidance::DEFAULT
        } else {
            Guidance::CONDITIONAL
        }
    }
}

/// What to draw.
#[derive(Clone, Copy, Debug)]
pub struct SampleRequest {
    pub count: usize,
    /// Height and width of each sample.
    pub resolution: usize,
    pub sampler: Sampler,
    pub seed: u64,
    /// Keep sample 0's x_t every this many steps (a strip of the reverse process).
    pub keep_every: Option<usize>,
    /// Samples per chunk: the samples are drawn `batch_size` at a time (the
    /// last chunk may be smaller). Noise is keyed by the global sample index,
    /// so the result does not depend on it; [`default_sample_batch`] picks
    /// the largest the adapter holds.
    pub batch_size: usize,
    /// Classes and guidance, for a class-conditional model (ignored by others).
    pub guidance: Guidance,
}

/// Draw samples from `unet`; returns them as (count, C, R, R) images in
/// [-1, 1] (clipped), and the kept intermediate x_t of sample 0. With
/// patching the samples are drawn at (C·p², R/p, R/p) and rearranged.
#[cfg(not(target_arch = "wasm32"))]
pub fn sample(
    gpu: &Gpu,
    unet: &UNet,
    weights: &ParamStore,
    scheduler: &SchedulerConfig,
    request: &SampleRequest,
    progress: Progress,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let config = unet.config();
    let p = config.patch_size;
    ensure!(
        request.resolution.is_multiple_of(p),
        "sample: resolution {} does not split into the model's {p}x{p} patches",
        request.resolution
    );
    let mut predictor = UNetPredictor::new(config, request.guidance)?;
    let mut model = |x: &Tensor, t: &Tensor, _: usize, first: usize| predictor.predict(gpu, unet, weights, x, t, first);
    let patched = SampleRequest { resolution: request.resolution / p, ..*request };
    let (samples, kept) = sample_with(gpu, &mut model, config.in_channels, scheduler, &patched, progress)?;
    let image = |x: &[f32]| patch::shuffle(x, config.image_channels(), request.resolution, p);
    Ok((image(&samples), kept.iter().map(|x| image(x)).collect()))
}

/// `unet`'s noise prediction for sampling: one UNet pass per step, or for a
/// class-conditional model the classes and guidance asked for, with each
/// chunk's class labels made once (at its first step) and kept.
pub struct UNetPredictor {
    guidance: Guidance,
    /// The chunk (its first sample) the labels are for, and the labels.
    chunk_labels: Option<(usize, GuidedLabels)>,
}

impl UNetPredictor {
    /// `guidance` for a model of `config`, checked against its classes.
    pub fn new(config: &UNetConfig, guidance: Guidance) -> Result<UNetPredictor> {
        if let Some(classes) = config.classes() {
            let g = guidance;
            ensure!(classes >= 1, "this model's class embedding has only its \"no class\" row: no classes to sample");
            if let Some(c) = g.class {
                ensure!(c < classes, "class {c}: this model has classes 0 to {}", classes - 1);
                ensure!(g.scale != 0.0, "class {c} at guidance 0: guidance 0 samples no class");
            }
            ensure!(g.scale.is_finite() && g.scale >= 0.0, "guidance must be 0 or more, got {}", g.scale);
            ensure!(
                g.scale == 1.0 || config.null_class.is_some(),
                "guidance {} needs a \"no class\" embedding (_null_class in config.json), which this model has not: use 1",
                g.scale
            );
        }
        Ok(UNetPredictor { guidance, chunk_labels: None })
    }

    /// The model's output at `x` and timesteps `t` for the chunk starting
    /// at global sample `first` (a [`NoisePredictor`] once `unet` and
    /// `weights` are bound).
    pub fn predict(
        &mut self,
        gpu: &Gpu,
        unet: &UNet,
        weights: &ParamStore,
        x: &Tensor,
        t: &Tensor,
        first: usize,
    ) -> Result<Tensor> {
        let config = unet.config();
        if config.num_class_embeds.is_none() {
            return predict_noise(gpu, unet, weights, x, t, None);
        }
        if self.chunk_labels.as_ref().is_none_or(|(f, _)| *f != first) {
            let labels = GuidedLabels::new(gpu, config, first, x.shape()[0], &self.guidance)?;
            self.chunk_labels = Some((first, labels));
        }
        let labels = &self.chunk_labels.as_ref().expect("made above").1;
        predict_guided(gpu, unet, weights, x, t, labels)
    }
}

/// The model's output at x_t and the timestep index tensor t (scalar index
/// given too) for the chunk of samples starting at the given global sample
/// index: the noise, or what the scheduler's `prediction_type` names.
pub type NoisePredictor<'a> = dyn FnMut(&Tensor, &Tensor, usize, usize) -> Result<Tensor> + 'a;

/// The sampling loop for any noise predictor (the UNet, or an exact one in
/// tests), run over chunks of `request.batch_size` samples. Progress counts
/// the steps of every chunk: (done, steps x chunks).
#[cfg(not(target_arch = "wasm32"))]
pub fn sample_with(
    gpu: &Gpu,
    model: &mut NoisePredictor,
    channels: usize,
    scheduler: &SchedulerConfig,
    request: &SampleRequest,
    progress: Progress,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let SampleRequest { count, resolution, keep_every, batch_size, .. } = *request;
    ensure!(count >= 1, "sample: asked for no samples");
    ensure!(batch_size >= 1, "sample: batch_size must be at least 1");
    ensure!(count <= u32::MAX as usize, "sample: {count} samples exceed the noise generator's u32 sample index");
    let chunk = batch_size.min(count);
    let plan = ReversePlan::new(gpu, scheduler, request, channels, chunk)?;
    let sample_len = channels * resolution * resolution;
    let total = count.div_ceil(chunk) * plan.steps();
    let mut out = Vec::with_capacity(count * sample_len);
    let mut kept = Vec::new();
    for (c, first) in (0..count).step_by(chunk).enumerate() {
        let mut samples = plan.start(gpu, first, chunk.min(count - first))?;
        while !samples.finished(&plan) {
            let k = samples.steps_done();
            samples.step(gpu, &plan, model)?;
            // Sample 0 is row 0 of the first chunk.
            if first == 0 && keep_every.is_some_and(|every| k % every == 0 || k + 1 == plan.steps()) {
                kept.push(gpu.read(samples.x())?[..sample_len].to_vec());
            }
            progress(c * plan.steps() + k + 1, total);
        }
        out.extend(gpu.read(samples.x())?.into_iter().map(|v| v.clamp(-1.0, 1.0)));
    }
    Ok((out, kept))
}

/// What every chunk of a sampling run shares: the timestep indices the
/// sampler visits (from T-1 down), the tables its steps read, and every
/// step's timestep vector, uploaded once.
pub struct ReversePlan {
    prediction_type: PredictionType,
    indices: Vec<usize>,
    ddpm_tables: DdpmTables,
    ddim_tables: Option<DdimTables>,
    /// Row k of (steps, row) holds index k's timestep for a whole chunk (a
    /// smaller last chunk reads the start of each row).
    all_t: Tensor,
    row: usize,
    seed: u64,
    /// The shape of one sample as the model sees it: (C, R, R).
    sample_shape: [usize; 3],
    chunk: usize,
}

impl ReversePlan {
    /// For `request`'s sampler and seed, samples of `channels` x
    /// `request.resolution`² as the model sees them, at most `chunk` at a time.
    pub fn new(
        gpu: &Gpu,
        scheduler: &SchedulerConfig,
        request: &SampleRequest,
        channels: usize,
        chunk: usize,
    ) -> Result<ReversePlan> {
        ensure!(chunk >= 1, "sample: a chunk of no samples");
        let schedule = Schedule::new(scheduler.clone())?;
        let (indices, stride) = match request.sampler {
            Sampler::Ddpm => {
                // diffusers' set_timesteps(T) would add the offset and index past the table.
                ensure!(
                    scheduler.steps_offset == 0,
                    "the DDPM sampler visits every timestep, so steps_offset must be 0 (the config has {}): use DDIM",
                    scheduler.steps_offset
                );
                ((0..schedule.len()).rev().collect::<Vec<_>>(), 1)
            }
            Sampler::Ddim { steps, .. } => ddim_timesteps(scheduler, steps)?,
        };
        let ddpm_tables = DdpmTables::new(gpu, &schedule)?;
        let ddim_tables = match request.sampler {
            Sampler::Ddim { eta, .. } => Some(DdimTables::new(gpu, &schedule, stride, eta)?),
            Sampler::Ddpm => None,
        };
        let row = chunk.div_ceil(VIEW_ALIGN_ELEMS) * VIEW_ALIGN_ELEMS;
        let mut all_t = vec![0.0f32; indices.len() * row];
        for (k, &i) in indices.iter().enumerate() {
            all_t[k * row..k * row + chunk].fill(i as f32);
        }
        let all_t = gpu.upload(&[all_t.len()], &all_t)?;
        Ok(ReversePlan {
            prediction_type: scheduler.prediction_type,
            indices,
            ddpm_tables,
            ddim_tables,
            all_t,
            row,
            seed: request.seed,
            sample_shape: [channels, request.resolution, request.resolution],
            chunk,
        })
    }

    /// Reverse steps per sample.
    pub fn steps(&self) -> usize {
        self.indices.len()
    }

    /// Samples `first..first + n` at x_T (n at most the plan's chunk): row r
    /// is global sample `first + r`, with the noise of one big batch.
    pub fn start(&self, gpu: &Gpu, first: usize, n: usize) -> Result<Samples> {
        ensure!((1..=self.chunk).contains(&n), "sample: {n} samples in a plan for chunks of {}", self.chunk);
        ensure!(first + n <= u32::MAX as usize, "sample: sample index past the noise generator's u32");
        let [c, h, w] = self.sample_shape;
        let x = ddpm::randn(gpu, &[n, c, h, w], self.key(first, noise_steps::INITIAL))?;
        Ok(Samples { first, steps_done: 0, x })
    }

    fn key(&self, first: usize, step: u32) -> NoiseKey {
        NoiseKey { seed: self.seed, step, first_sample: first as u32 }
    }
}

/// A chunk of samples part-way through the reverse process.
pub struct Samples {
    first: usize,
    steps_done: usize,
    x: Tensor,
}

impl Samples {
    /// x_t now: noise at the start, the samples (unclipped) once finished.
    pub fn x(&self) -> &Tensor {
        &self.x
    }

    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    pub fn finished(&self, plan: &ReversePlan) -> bool {
        self.steps_done == plan.steps()
    }

    /// Record the next reverse step with `model`'s prediction, and submit it.
    pub fn step(&mut self, gpu: &Gpu, plan: &ReversePlan, model: &mut NoisePredictor) -> Result<()> {
        ensure!(!self.finished(plan), "sample: every step of this chunk is done");
        let (k, i) = (self.steps_done, plan.indices[self.steps_done]);
        let t = plan.all_t.view(k * plan.row, &[self.x.shape()[0]])?;
        let x = &self.x;
        let prediction = model(x, &t, i, self.first)?;
        let eps = ddpm::to_epsilon(gpu, &plan.ddpm_tables, plan.prediction_type, &prediction, x, &t)?;
        let key = plan.key(self.first, noise_steps::SAMPLING + i as u32);
        self.x = match &plan.ddim_tables {
            Some(tables) => ddpm::ddim_step(gpu, tables, x, &eps, &t, key)?,
            None => ddpm::p_sample(gpu, &plan.ddpm_tables, x, &eps, &t, key)?,
        };
        gpu.submit();
        self.steps_done += 1;
        Ok(())
    }
}

/// Per-sample sizes, in floats, of what one UNet forward pass (sampling:
/// nothing kept for backward) allocates, estimated from the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardFootprint {
    /// The largest tensor one kernel binds: channels x pixels of the widest
    /// activation. In diffusers' UNet that is usually an up-path skip concat
    /// (its resnets' `c_in` = the level's channels + the skip's) at full
    /// resolution; attention's token rows and q/k/v are channels x tokens,
    /// the same size as its input.
    pub largest_activation: usize,
    /// The largest attention probability matrix, heads x T x T with T = H x W
    /// at that level (0 without attention).
    pub largest_attention: usize,
    /// A rough peak of what is held at once: every skip the down path keeps
    /// for the up path, [`WORKING_ACTIVATIONS`] working tensors the size of
    /// the largest activation (a resblock holds its input, the normalised
    /// and convolved values, the shortcut and the sum; attention its input,
    /// the normalised tokens, q, k, v and output) and one probability matrix.
    pub peak: usize,
}

/// Working tensors counted at the largest activation's size in
/// [`ForwardFootprint::peak`].
pub const WORKING_ACTIVATIONS: usize = 8;

/// Most samples [`default_sample_batch`] puts in one chunk: beyond this the
/// GPU is busy anyway and memory is better left to others.
pub const MAX_SAMPLE_BATCH: usize = 256;

/// The bound on [`ForwardFootprint::peak`] of a chunk (wgpu does not tell
/// how much memory an adapter has): 1 GiB, which any GPU this runs on holds
/// beside a model's weights.
pub const SAMPLE_MEMORY_BUDGET: u64 = 1 << 30;

/// What a forward pass of `config` on images of `resolution` x `resolution`
/// (before patching) allocates per sample; see [`ForwardFootprint`].
pub fn forward_footprint(config: &UNetConfig, resolution: usize) -> ForwardFootprint {
    let layout = UNetLayout::new(config);
    let resolution = resolution / config.patch_size;
    let levels = config.block_out_channels.len();
    let pixels: Vec<usize> = (0..levels).map(|i| (resolution >> i).pow(2)).collect();
    let mut largest = config.in_channels.max(config.out_channels) * pixels[0];
    let mut attention = 0;
    let mut skips = 0;
    let mut see = |channels: usize, pixels: usize| largest = largest.max(channels * pixels);
    let mut attend = |a: &AttnBlock, tokens: usize| attention = attention.max(a.heads * tokens * tokens);
    let c0 = config.block_out_channels[0];
    see(c0, pixels[0]);
    skips += c0 * pixels[0];
    for (i, level) in layout.down.iter().enumerate() {
        for r in &level.resnets {
            see(r.c_in.max(r.c_out), pixels[i]);
            skips += r.c_out * pixels[i];
        }
        level.attentions.iter().for_each(|a| attend(a, pixels[i]));
        if level.downsample.is_some() {
            skips += level.channels * pixels[i + 1];
        }
    }
    let last = levels - 1;
    if let Some(a) = layout.mid.as_ref().and_then(|m| m.attention.as_ref()) {
        attend(a, pixels[last]);
    }
    for (i, level) in layout.up.iter().enumerate() {
        let li = last - i;
        for r in &level.resnets {
            see(r.c_in.max(r.c_out), pixels[li]);
        }
        level.attentions.iter().for_each(|a| attend(a, pixels[li]));
        if level.upsample.is_some() {
            see(level.channels, pixels[li - 1]);
        }
    }
    ForwardFootprint {
        largest_activation: largest,
        largest_attention: attention,
        peak: skips + WORKING_ACTIVATIONS * largest + attention,
    }
}

/// The largest chunk of samples (at most [`MAX_SAMPLE_BATCH`]) whose UNet
/// forward fits this adapter: its largest activation within one storage
/// binding (and buffer), its attention probabilities within what the
/// attention op allows, and its estimated peak within
/// [`SAMPLE_MEMORY_BUDGET`]; half that for a model with a "no class" row,
/// whose guided passes double the batch. At least 1. See [`forward_footprint`].
pub fn default_sample_batch(gpu: &Gpu, config: &UNetConfig, resolution: usize) -> usize {
    let f = forward_footprint(config, resolution);
    let info = gpu.info();
    let binding = info.max_storage_binding.min(info.max_buffer_size);
    let fits =
        |bytes: u64, floats: usize| if floats == 0 { usize::MAX } else { (bytes / (4 * floats as u64)) as usize };
    let fitting = fits(binding, f.largest_activation)
        .min(fits(binding.min(MAX_PROBS_BYTES), f.largest_attention))
        .min(fits(SAMPLE_MEMORY_BUDGET, f.peak))
        .min(MAX_SAMPLE_BATCH);
    // Guided sampling runs the UNet on each chunk twice over.
    let passes = if config.null_class.is_some() { 2 } else { 1 };
    (fitting / passes).max(1)
}

/// One UNet forward pass, keeping no activations for backward: the model's
/// output, eps or what its scheduler's `prediction_type` names. A
/// class-conditional UNet takes the (N) class-index tensor `classes`.
pub fn predict_noise(
    gpu: &Gpu,
    unet: &UNet,
    weights: &ParamStore,
    x: &Tensor,
    t: &Tensor,
    classes: Option<&Tensor>,
) -> Result<Tensor> {
    let mut tape = Tape::new(gpu);
    let p = ParamVars::new(&mut tape, weights, false)?;
    let xv = tape.input(x.clone());
    Ok(unet.forward(&mut tape, &p, &xv, t, classes)?.value)
}

/// What one chunk's guided passes need: the labels of the one pass (each
/// sample's class, or "no class" for all) at guidance 1 or 0, else those of
/// the doubled batch (the classes, then as many "no class"), and the weight.
struct GuidedLabels {
    labels: Tensor,
    scale: f32,
}

impl GuidedLabels {
    /// For samples `first..first + n` of `config`'s class-conditional model;
    /// guidance other than 1 needs its `null_class` (checked by `sample`).
    fn new(gpu: &Gpu, config: &UNetConfig, first: usize, n: usize, g: &Guidance) -> Result<GuidedLabels> {
        let (Some(embeds), Some(classes)) = (config.num_class_embeds, config.classes()) else {
            bail!("guided sampling of a model without classes")
        };
        let own = (first..first + n).map(|i| g.class.unwrap_or(i % classes));
        let none = || -> Result<std::iter::RepeatN<usize>> {
            let null = config.null_class.context("guided sampling without a \"no class\" row")?;
            Ok(std::iter::repeat_n(null, n))
        };
        let labels: Vec<usize> = match g.scale {
            1.0 => own.collect(),
            0.0 => none()?.collect(),
            _ => own.chain(none()?).collect(),
        };
        Ok(GuidedLabels { labels: class_labels(gpu, &labels, embeds)?, scale: g.scale })
    }
}

/// Classifier-free guidance: u + scale (c - u), with c the UNet's output at
/// each sample's class and u at "no class", from one pass over the batch
/// doubled (one pass of the conditional or unconditional half when scale is
/// 1 or 0).
fn predict_guided(
    gpu: &Gpu,
    unet: &UNet,
    weights: &ParamStore,
    x: &Tensor,
    t: &Tensor,
    labels: &GuidedLabels,
) -> Result<Tensor> {
    if labels.scale == 1.0 || labels.scale == 0.0 {
        return predict_noise(gpu, unet, weights, x, t, Some(&labels.labels));
    }
    let n = x.shape()[0];
    // Twice along the batch: concatenated as two "channels" of one row.
    let twice = |v: &Tensor, shape: &[usize]| -> Result<Tensor> {
        let row = v.reshape(&[1, 1, v.len()])?;
        concat(gpu, &row, &row)?.reshape(shape)
    };
    let mut shape = x.shape().to_vec();
    shape[0] = 2 * n;
    let out = predict_noise(gpu, unet, weights, &twice(x, &shape)?, &twice(t, &[2 * n])?, Some(&labels.labels))?;
    let (c, u) = split(gpu, &out.reshape(&[1, 2, x.len()])?, 1)?;
    let lift = ew::axpy(gpu, &c, -1.0, &u)?;
    ew::axpy(gpu, &u, labels.scale, &lift)?.reshape(x.shape())
}
