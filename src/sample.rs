//! Sampling: the paper's Algorithm 2 (DDPM, T steps, no noise at the last)
//! or DDIM with fewer steps, with the UNet forward recorded on a tape that
//! keeps nothing (no parameter needs a gradient).
//!
//! Noise is keyed by (seed, step, sample index, element), so sample i is the
//! same whatever the number of samples asked for.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::gpu::{Gpu, Tensor, VIEW_ALIGN_ELEMS};
use crate::ops::ddpm::{self, DdimTables, DdpmTables, NoiseKey};
use crate::schedule::{ddim_timesteps, Schedule, SchedulerConfig};
use crate::tape::Tape;
use crate::unet::{ParamStore, ParamVars, UNet, UNetConfig};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Ancestral sampling over every training timestep.
    Ddpm,
    /// DDIM over `steps` evenly spaced timesteps; `eta` = 0 is deterministic.
    Ddim { steps: usize, eta: f64 },
}

/// The noise step id of x_T: past every timestep index, so it never
/// repeats a denoising step's noise.
const INITIAL_NOISE_STEP: u32 = u32::MAX;

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
        if !dir.is_dir() {
            bail!("checkpoint folder {} does not exist", dir.display());
        }
        let unet_dir = [dir.join("unet"), dir.to_path_buf()]
            .into_iter()
            .find(|d| d.join("config.json").is_file())
            .with_context(|| format!("no config.json in {} or {}/unet", dir.display(), dir.display()))?;
        let config = UNetConfig::load(&unet_dir.join("config.json"))?;
        let unet = UNet::new(&config)?;
        let weights = unet.table.load(&unet_dir.join("diffusion_pytorch_model.safetensors"))?;
        let scheduler_file: Option<PathBuf> = [dir.join("scheduler"), dir.to_path_buf(), unet_dir.clone()]
            .into_iter()
            .map(|d| d.join("scheduler_config.json"))
            .find(|f| f.is_file());
        let scheduler = match scheduler_file {
            Some(f) => SchedulerConfig::from_json(&std::fs::read_to_string(&f)?)
                .with_context(|| format!("in {}", f.display()))?,
            None => SchedulerConfig::default(),
        };
        let weights = ParamStore::upload(gpu, unet.table.clone(), &weights)?;
        Ok(Model { unet, weights, scheduler })
    }
}

/// Progress of a sampling run: (steps done, total).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

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
}

/// Draw samples from `unet`; returns them as (count, C, R, R) values in
/// [-1, 1] (clipped), and the kept intermediate x_t of sample 0.
pub fn sample(
    gpu: &Gpu,
    unet: &UNet,
    weights: &ParamStore,
    scheduler: &SchedulerConfig,
    request: &SampleRequest,
    progress: Progress,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let channels = unet.config().in_channels;
    let mut model = |x: &Tensor, t: &Tensor, _index: usize| predict_noise(gpu, unet, weights, x, t);
    sample_with(gpu, &mut model, channels, scheduler, request, progress)
}

/// Predicts the noise in x_t at timestep index tensor t (scalar index given too).
pub type NoisePredictor<'a> = dyn FnMut(&Tensor, &Tensor, usize) -> Result<Tensor> + 'a;

/// The sampling loop for any noise predictor (the UNet, or an exact one in tests).
pub fn sample_with(
    gpu: &Gpu,
    model: &mut NoisePredictor,
    channels: usize,
    scheduler: &SchedulerConfig,
    request: &SampleRequest,
    progress: Progress,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let SampleRequest { count, resolution, sampler, seed, keep_every } = *request;
    let shape = [count, channels, resolution, resolution];
    let schedule = Schedule::new(scheduler.clone())?;
    let (indices, stride) = match sampler {
        Sampler::Ddpm => ((0..schedule.len()).rev().collect::<Vec<_>>(), 1),
        Sampler::Ddim { steps, .. } => ddim_timesteps(schedule.len(), steps)?,
    };
    let ddpm_tables = DdpmTables::new(gpu, &schedule)?;
    let ddim_tables = match sampler {
        Sampler::Ddim { eta, .. } => Some(DdimTables::new(gpu, &schedule, stride, eta)?),
        Sampler::Ddpm => None,
    };
    // Every step's timestep vector, uploaded once: row k of (steps, row) holds index k's.
    let row = count.div_ceil(VIEW_ALIGN_ELEMS) * VIEW_ALIGN_ELEMS;
    let mut all_t = vec![0.0f32; indices.len() * row];
    for (k, &i) in indices.iter().enumerate() {
        all_t[k * row..k * row + count].fill(i as f32);
    }
    let all_t = gpu.upload(&[all_t.len()], &all_t)?;

    let mut x = ddpm::randn(gpu, &shape, NoiseKey { seed, step: INITIAL_NOISE_STEP })?;
    let mut kept = Vec::new();
    let sample_len = channels * resolution * resolution;
    for (k, &i) in indices.iter().enumerate() {
        let t = all_t.view(k * row, &[count])?;
        let eps = model(&x, &t, i)?;
        let key = NoiseKey { seed, step: i as u32 };
        x = match &ddim_tables {
            Some(tables) => ddpm::ddim_step(gpu, tables, &x, &eps, &t, key)?,
            None => ddpm::p_sample(gpu, &ddpm_tables, &x, &eps, &t, key)?,
        };
        gpu.submit();
        if keep_every.is_some_and(|every| k % every == 0 || k + 1 == indices.len()) {
            kept.push(gpu.read(&x)?[..sample_len].to_vec());
        }
        progress(k + 1, indices.len());
    }
    let mut out = gpu.read(&x)?;
    out.iter_mut().for_each(|v| *v = v.clamp(-1.0, 1.0));
    Ok((out, kept))
}

/// One UNet forward pass, keeping no activations for backward.
pub fn predict_noise(gpu: &Gpu, unet: &UNet, weights: &ParamStore, x: &Tensor, t: &Tensor) -> Result<Tensor> {
    let mut tape = Tape::new(gpu);
    let p = ParamVars::new(&mut tape, weights, false)?;
    let xv = tape.input(x.clone());
    Ok(unet.forward(&mut tape, &p, &xv, t)?.value)
}
