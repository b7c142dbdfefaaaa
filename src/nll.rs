//! Negative log-likelihood in bits per dimension, the DDPM paper's Table 1
//! metric: the variational bound of the reference code's `calc_bpd_loop`
//! (hojonathanho/diffusion, `diffusion_utils_2.py`),
//!
//! `L = L_T + sum_{t=2..T} L_{t-1} + L_0`, with
//! `L_T = KL(q(x_T | x_0) || N(0, I))` (the prior term),
//! `L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))` and
//! `L_0 = -log p(x_0 | x_1)` under the discretised Gaussian decoder on
//! 8-bit data, each meaned over the dimensions of a sample and divided by
//! ln 2. In the diffusers indexing of [`crate::schedule`] the terms sit at
//! indices `T-1..=1` (KL) and 0 (decoder).
//!
//! The exact bound costs one model call per training timestep (T UNet
//! forwards per batch of images); [`NllRequest::timesteps`] evaluates a
//! strided subset instead and scales up their KL sum (a midpoint-rule
//! estimate of the sum, reported as such). `x_t` at index `i` is
//! [`ddpm::q_sample`] with the noise key `(seed, i)` and sample index
//! `first_sample + row`, so chunks of a dataset get one batch's noise.

use anyhow::{bail, ensure, Context, Result};

use crate::data::Dataset;
use crate::gpu::{Gpu, Tensor, VIEW_ALIGN_ELEMS};
use crate::ops::cross_entropy::class_labels;
use crate::ops::ddpm::{self, noise_steps, DdpmTables, NoiseKey};
use crate::ops::vlb::{self, VlbTables};
use crate::sample::{predict_noise, Model, NoisePredictor, Progress};
use crate::schedule::{Schedule, SchedulerConfig};

/// Rows of per-sample terms read back (and checked for NaN) at a time.
const CHECK_EVERY: usize = 16;

/// How to evaluate the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NllRequest {
    /// Key of the noise that forms each `x_t`.
    pub seed: u64,
    /// Global index of `x0`'s first image: noise is keyed by global sample
    /// index, so a dataset evaluated in chunks gets the noise of one batch.
    pub first_sample: u32,
    /// None: every timestep (the exact bound). Some(k): k evenly spaced
    /// timesteps of 1..T-1 plus t = 0, the KL sum scaled by (T-1)/k — a
    /// strided estimate (exact when k = T-1).
    pub timesteps: Option<usize>,
}

/// The bound of a batch of images, in bits per dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct NllReport {
    /// Mean over samples of the total `prior + decoder + kl`.
    pub bits_per_dim: f64,
    /// Mean over samples of the prior term `L_T`.
    pub prior: f64,
    /// Mean over samples of the decoder term `L_0`.
    pub decoder: f64,
    /// Mean over samples of `L_1 + ... + L_{T-1}`, or of its strided estimate.
    pub kl: f64,
    /// Each sample's total.
    pub per_sample: Vec<f64>,
    /// Model calls made: the KL timesteps evaluated plus t = 0.
    pub evaluated_timesteps: usize,
    /// True when `kl` is a strided estimate, not the exact sum.
    pub strided: bool,
}

impl NllReport {
    /// One report for the samples of several (chunks of a dataset evaluated
    /// with the same request): the means weighted by sample count.
    pub fn combine(parts: &[NllReport]) -> Result<NllReport> {
        let first = parts.first().context("nll: no reports to combine")?;
        ensure!(
            parts.iter().all(|p| p.evaluated_timesteps == first.evaluated_timesteps && p.strided == first.strided),
            "nll: reports of different timestep selections cannot be combined"
        );
        let count: usize = parts.iter().map(|p| p.per_sample.len()).sum();
        let mean = |f: &dyn Fn(&NllReport) -> f64| {
            parts.iter().map(|p| f(p) * p.per_sample.len() as f64).sum::<f64>() / count as f64
        };
        let per_sample: Vec<f64> = parts.iter().flat_map(|p| p.per_sample.iter().copied()).collect();
        Ok(NllReport {
            bits_per_dim: per_sample.iter().sum::<f64>() / count as f64,
            prior: mean(&|p| p.prior),
            decoder: mean(&|p| p.decoder),
            kl: mean(&|p| p.kl),
            per_sample,
            evaluated_timesteps: first.evaluated_timesteps,
            strided: first.strided,
        })
    }
}

/// The timestep indices the bound evaluates, in the order it visits them
/// (largest first, index 0 — the decoder — last) for `steps` = T training
/// timesteps. `None`: all of `T-1..=0`. `Some(k)`, `1 <= k <= T-1`: the
/// midpoints of k equal strata of `1..=T-1`, `1 + floor((2j+1)(T-1) / 2k)`
/// for `j` in `0..k`, then 0.
pub fn evaluated_timesteps(steps: usize, timesteps: Option<usize>) -> Result<Vec<usize>> {
    ensure!(steps >= 2, "nll: the schedule needs at least 2 timesteps, got {steps}");
    let kl_steps = steps - 1;
    let mut indices: Vec<usize> = match timesteps {
        None => (1..steps).collect(),
        Some(k) => {
            ensure!(
                (1..=kl_steps).contains(&k),
                "nll: --nll-timesteps must be in 1..={kl_steps} for {steps} training timesteps, got {k}"
            );
            (0..k).map(|j| 1 + (2 * j + 1) * kl_steps / (2 * k)).collect()
        }
    };
    indices.reverse();
    indices.push(0);
    Ok(indices)
}

/// Error unless every value is finite, in [-1, 1] and on the 8-bit grid
/// `k / 127.5 - 1` that the decoder's bins assume.
fn check_8bit_data(values: &[f32]) -> Result<()> {
    for (i, &v) in values.iter().enumerate() {
        let level = (v as f64 + 1.0) * 127.5;
        if !(-1.0..=1.0).contains(&v) || (level - level.round()).abs() > 1e-3 {
            bail!(
                "nll: x0 must be 8-bit data rescaled to [-1, 1] (k / 127.5 - 1), but element {i} is {v}; \
                 quantise images first (e.g. with data::to_u8)"
            );
        }
    }
    Ok(())
}

/// The variational bound in bits/dim of the images `x0` ((N,C,H,W) values
/// in [-1,1], 8-bit data) under `model`. Costs one model call per
/// evaluated timestep: T calls for the exact bound, k + 1 for a strided
/// request. All N images go through the model together at each timestep
/// (the caller chunks a dataset); `progress` gets (timesteps done, total).
///
/// Each timestep's work (noising, the model, the fused term kernel writing
/// row k of a (timesteps, N) buffer) is one submission; the rows are read
/// back 16 at a time, so the progress shown follows the GPU and a NaN or
/// infinity in any term stops the run with an error naming its timestep.
pub fn bits_per_dim(
    gpu: &Gpu,
    model: &mut NoisePredictor,
    scheduler: &SchedulerConfig,
    x0: &Tensor,
    request: &NllRequest,
    progress: Progress,
) -> Result<NllReport> {
    let shape = x0.shape().to_vec();
    ensure!(shape.len() == 4 && shape.iter().all(|&d| d > 0), "nll: x0 must be (N, C, H, W), got {shape:?}");
    let batch = shape[0];
    check_8bit_data(&gpu.read(x0)?)?;
    let schedule = Schedule::new(scheduler.clone())?;
    let indices = evaluated_timesteps(schedule.len(), request.timesteps)?;
    let ddpm_tables = DdpmTables::new(gpu, &schedule)?;
    let vlb_tables = VlbTables::new(gpu, &schedule)?;

    // Row k of (timesteps, row) holds index k's timestep vector, and its terms.
    let row = batch.div_ceil(VIEW_ALIGN_ELEMS) * VIEW_ALIGN_ELEMS;
    let mut all_t = vec![0.0f32; indices.len() * row];
    for (k, &i) in indices.iter().enumerate() {
        all_t[k * row..k * row + batch].fill(i as f32);
    }
    let all_t = gpu.upload(&[all_t.len()], &all_t)?;
    let terms = gpu.uninit(&[indices.len() * row])?;
    let prior = vlb::prior_bpd(gpu, &vlb_tables, x0)?;

    let mut values: Vec<f32> = Vec::with_capacity(indices.len() * row);
    for (k, &i) in indices.iter().enumerate() {
        let t = all_t.view(k * row, &[batch])?;
        let (xt, _) = ddpm::q_sample(
            gpu,
            &ddpm_tables,
            x0,
            &t,
            NoiseKey { seed: request.seed, step: noise_steps::NLL + i as u32, first_sample: request.first_sample },
        )?;
        let output = model(&xt, &t, i, request.first_sample as usize)
            .with_context(|| format!("nll: the model at timestep index {i}"))?;
        ensure!(
            output.shape() == x0.shape(),
            "nll: the model returned {:?} for x_t {:?} at timestep index {i}",
            output.shape(),
            x0.shape()
        );
        let eps = ddpm::to_epsilon(gpu, &ddpm_tables, schedule.config.prediction_type, &output, &xt, &t)?;
        vlb::vlb_terms_into(gpu, &vlb_tables, &terms.view(k * row, &[batch])?, x0, &xt, &eps, &t)?;
        gpu.submit();
        if (k + 1) % CHECK_EVERY == 0 || k + 1 == indices.len() {
            let done = values.len() / row;
            values.extend(gpu.read(&terms.view(done * row, &[(k + 1 - done) * row])?)?);
            for (kk, &ii) in indices.iter().enumerate().take(k + 1).skip(done) {
                if let Some(n) = values[kk * row..kk * row + batch].iter().position(|&v| vlb::is_not_finite(v)) {
                    bail!(
                        "nll: the term at timestep index {ii} (paper t = {}) of sample {n} is not finite \
                         (NaN or infinity in the model's output or the data)",
                        ii + 1
                    );
                }
            }
        }
        progress(k + 1, indices.len());
    }

    let prior = gpu.read(&prior)?;
    if let Some(n) = prior.iter().position(|&v| vlb::is_not_finite(v)) {
        bail!("nll: the prior term of sample {n} is not finite");
    }
    let kl_steps = schedule.len() - 1;
    let evaluated_kl = indices.len() - 1;
    let kl_scale = kl_steps as f64 / evaluated_kl as f64;
    let (mut sum_prior, mut sum_decoder, mut sum_kl) = (0.0, 0.0, 0.0);
    let mut per_sample = Vec::with_capacity(batch);
    for n in 0..batch {
        let mut kl = 0.0;
        let mut decoder = 0.0;
        for (k, &i) in indices.iter().enumerate() {
            let v = values[k * row + n] as f64;
            if i == 0 {
                decoder = v;
            } else {
                kl += v;
            }
        }
        kl *= kl_scale;
        let prior = prior[n] as f64;
        per_sample.push(prior + decoder + kl);
        sum_prior += prior;
        sum_decoder += decoder;
        sum_kl += kl;
    }
    let mean = |s: f64| s / batch as f64;
    Ok(NllReport {
        bits_per_dim: mean(per_sample.iter().sum()),
        prior: mean(sum_prior),
        decoder: mean(sum_decoder),
        kl: mean(sum_kl),
        per_sample,
        evaluated_timesteps: indices.len(),
        strided: evaluated_kl < kl_steps,
    })
}

/// The bound of `model` on the first `count` images of `real`, in chunks of
/// `batch` images; `progress` gets (timesteps done, total) over all chunks.
pub fn dataset_bits_per_dim(
    gpu: &Gpu,
    model: &Model,
    real: &Dataset,
    count: usize,
    batch: usize,
    request: &NllRequest,
    progress: Progress,
) -> Result<NllReport> {
    let config = model.unet.config();
    let resolution = config.image_size().context("the checkpoint's config has no sample_size")?;
    ensure!(
        real.resolution == resolution && real.channels == config.image_channels(),
        "the NLL needs real images of the model's shape {}x{resolution}x{resolution}; {} is {}x{}x{}",
        config.image_channels(),
        real.source,
        real.channels,
        real.resolution,
        real.resolution
    );
    ensure!(count >= 1 && batch >= 1, "the NLL needs at least one image and a batch of at least one");
    let count = count.min(real.len());
    let per_chunk = evaluated_timesteps(model.scheduler.num_train_timesteps, request.timesteps)?.len();
    let chunks = count.div_ceil(batch);
    let len = real.sample_len();
    let mut parts = Vec::new();
    for (c, first) in (0..count).step_by(batch).enumerate() {
        let n = batch.min(count - first);
        // Bits per dimension are the same in patch space: the rearrangement is a permutation.
        let p = config.patch_size;
        let images =
            crate::patch::unshuffle(&real.pixels()[first * len..(first + n) * len], real.channels, resolution, p);
        let x0 = gpu.upload(&[n, config.in_channels, resolution / p, resolution / p], &images)?;
        let chunk = NllRequest { first_sample: request.first_sample + first as u32, ..*request };
        // A class-conditional model's bound is that of its "no class" half: p(x), not p(x | y).
        let unconditional = match (config.num_class_embeds, config.null_class) {
            (Some(embeds), Some(null)) => Some(class_labels(gpu, &vec![null; n], embeds)?),
            (Some(_), None) => bail!(
                "the NLL of a class-conditional model is that of its \"no class\" row (_null_class), which this one has not"
            ),
            (None, _) => None,
        };
        let mut predictor = |x: &Tensor, t: &Tensor, _: usize, _: usize| {
            predict_noise(gpu, &model.unet, &model.weights, x, t, unconditional.as_ref())
        };
        parts.push(bits_per_dim(gpu, &mut predictor, &model.scheduler, &x0, &chunk, &mut |done, _| {
            progress(c * per_chunk + done, chunks * per_chunk)
        })?);
    }
    NllReport::combine(&parts)
}
