//! DDPM noising (training) and DDPM/DDIM sampling steps, each one dispatch
//! with its Gaussian noise drawn inside the kernel, plus the generator on
//! its own. Kernels: `shaders/ddpm.wgsl`; schedule: [`crate::schedule`].
//!
//! Timesteps are per sample: an (N) f32 tensor of indices `0..T` (paper
//! `t - 1`, see [`crate::schedule`]), so one launch can mix timesteps as
//! training does.
//!
//! Noise is keyed by `(seed, step, sample, element)` through Philox4x32-10
//! and Box-Muller (see the shader header), so sample `n` gets the same noise
//! in any batch, and [`cpu::randn`] reproduces it on the host. The sample
//! index is global: row `r` of a launch is sample `key.first_sample + r`, so
//! a chunk of a larger batch draws the same noise as that batch's rows.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};
use crate::schedule::{PredictionType, Schedule};

kernel_params! {
    /// Mirrors `Params` in `shaders/ddpm.wgsl`.
    #[derive(Default)]
    struct Params {
        batch: u32,
        dim: u32,
        steps: u32,
        clip: u32,
        clip_range: f32,
        seed_lo: u32,
        seed_hi: u32,
        noise_step: u32,
        counter: [u32; 4],
        first_sample: u32,
        /// to_epsilon: 1 = v_prediction, 2 = sample.
        prediction: u32,
        _pad: [u32; 2],
    }
}

// WGSL rounds the struct up to its vec4 alignment: 64 bytes.
const _: () = assert!(std::mem::size_of::<Params>() == 64);

const WORKGROUP: u32 = 64;
const OUT: &[Access] = &[Access::ReadWrite];
const STEP: &[Access] = &[Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read, Access::Read];
/// STEP, then the caller's noise and the predicted x_0 (the `*_given` entries).
const STEP_GIVEN: &[Access] =
    &[Access::ReadWrite, Access::ReadWrite, Access::Read, Access::Read, Access::Read, Access::Read, Access::ReadWrite];

/// Which stream of Gaussian noise to draw: the same key always gives the
/// same numbers. Use a new `step` for every draw of one run (training step,
/// sampling step).
///
/// `first_sample` is the global index of row 0 of the tensor drawn into:
/// row `n` gets sample `first_sample + n`'s noise, so a batch split into
/// chunks (each keyed with its first sample's index) gets exactly the
/// noise of the whole batch drawn at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NoiseKey {
    pub seed: u64,
    pub step: u32,
    pub first_sample: u32,
}

/// Noise step ids: training step s draws at id s; sampling and the NLL draw
/// at ids of their own, past any run's training steps, so an evaluation at
/// the run's seed never redraws the noise training saw (a sampler that did
/// would add, at timestep index i, the very noise training step i asked the
/// model to remove).
pub mod noise_steps {
    /// A sampling step at timestep index i draws at `SAMPLING + i`.
    pub const SAMPLING: u32 = 1 << 31;
    /// The NLL's noising at timestep index i draws at `NLL + i`.
    pub const NLL: u32 = 3 << 30;
    /// A sampler's x_T.
    pub const INITIAL: u32 = u32::MAX;
    // The ranges of ids never meet (timestep indices stay below MAX_TRAIN_TIMESTEPS).
    const _: () = assert!(
        SAMPLING as u64 + crate::schedule::MAX_TRAIN_TIMESTEPS as u64 <= NLL as u64
            && NLL as u64 + crate::schedule::MAX_TRAIN_TIMESTEPS as u64 <= INITIAL as u64
    );
}

impl NoiseKey {
    fn philox_key(self) -> [u32; 2] {
        [self.seed as u32, (self.seed >> 32) as u32]
    }

    fn params(self) -> Params {
        let [seed_lo, seed_hi] = self.philox_key();
        Params { seed_lo, seed_hi, noise_step: self.step, first_sample: self.first_sample, ..Params::default() }
    }
}

/// Rows of the DDPM table, in the order of the `ROW_*` constants of the
/// shader.
fn ddpm_rows(s: &Schedule) -> Vec<Vec<f64>> {
    let sigma = (0..s.len()).map(|i| s.sigma(i)).collect();
    vec![
        s.sqrt_alphas_cumprod.clone(),
        s.sqrt_one_minus_alphas_cumprod.clone(),
        s.sqrt_recip_alphas_cumprod.clone(),
        s.sqrt_recipm1_alphas_cumprod.clone(),
        s.sqrt_recip_alphas.clone(),
        s.eps_coef.clone(),
        s.posterior_mean_coef1.clone(),
        s.posterior_mean_coef2.clone(),
        sigma,
    ]
}

fn upload_rows(gpu: &Gpu, rows: &[Vec<f64>]) -> Result<Tensor> {
    let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
    gpu.upload(&[rows.len(), rows[0].len()], &flat)
}

/// The schedule's tables on the GPU (uploaded once) with the sampling
/// options of its config.
pub struct DdpmTables {
    /// (9, T): see `ddpm_rows`.
    pub table: Tensor,
    pub steps: usize,
    pub clip_sample: bool,
    pub clip_sample_range: f32,
}

impl DdpmTables {
    pub fn new(gpu: &Gpu, schedule: &Schedule) -> Result<DdpmTables> {
        Ok(DdpmTables {
            table: upload_rows(gpu, &ddpm_rows(schedule))?,
            steps: schedule.len(),
            clip_sample: schedule.config.clip_sample,
            clip_sample_range: schedule.config.clip_sample_range as f32,
        })
    }
}

/// DDIM coefficients for one (stride, eta) on the GPU, with the schedule's
/// clipping options.
pub struct DdimTables {
    /// (5, T): coef_x0, coef_eps, sqrt_recip_alphas_cumprod,
    /// sqrt_recipm1_alphas_cumprod, sigma (the shader's `DDIM_ROW_*`).
    pub table: Tensor,
    pub steps: usize,
    pub stride: usize,
    pub eta: f64,
    pub clip_sample: bool,
    pub clip_sample_range: f32,
}

impl DdimTables {
    /// Tables for steps from index `i` to `i - stride`; see
    /// [`crate::schedule::ddim_timesteps`] for the indices to visit.
    pub fn new(gpu: &Gpu, schedule: &Schedule, stride: usize, eta: f64) -> Result<DdimTables> {
        let c = schedule.ddim_coefficients(stride, eta)?;
        let rows = vec![
            c.coef_x0,
            c.coef_eps,
            schedule.sqrt_recip_alphas_cumprod.clone(),
            schedule.sqrt_recipm1_alphas_cumprod.clone(),
            c.sigma,
        ];
        Ok(DdimTables {
            table: upload_rows(gpu, &rows)?,
            steps: schedule.len(),
            stride,
            eta,
            clip_sample: schedule.config.clip_sample,
            clip_sample_range: schedule.config.clip_sample_range as f32,
        })
    }
}

/// Upload per-sample timestep indices as the (N) f32 tensor the kernels read.
pub fn timesteps(gpu: &Gpu, indices: &[usize]) -> Result<Tensor> {
    ensure!(indices.iter().all(|&i| i < 1 << 24), "timesteps: indices must be below 2^24 to be exact in f32");
    let values: Vec<f32> = indices.iter().map(|&i| i as f32).collect();
    gpu.upload(&[indices.len()], &values)
}

/// (N, D) of a tensor shaped (N, ...), checked for the kernels' u32 indexing.
fn batch_geometry(op: &str, shape: &[usize]) -> Result<(u32, u32)> {
    ensure!(!shape.is_empty() && shape[0] > 0, "{op}: needs a leading batch axis, got {shape:?}");
    let batch = shape[0];
    let dim: usize = shape[1..].iter().product();
    ensure!(dim > 0, "{op}: empty samples in {shape:?}");
    ensure!(batch * dim.div_ceil(4) * 4 < u32::MAX as usize, "{op}: {shape:?} too large for u32 indexing");
    Ok((batch as u32, dim as u32))
}

fn launch_per_quad(
    gpu: &Gpu,
    entry: &'static str,
    bindings: &'static [Access],
    p: Params,
    t: &[&Tensor],
) -> Result<()> {
    let invocations = p.batch * p.dim.div_ceil(4);
    let kernel = Kernel::new(Shader::Ddpm, entry, bindings);
    gpu.launch(&kernel, &p, t, Gpu::grid_1d(invocations.div_ceil(WORKGROUP)))
}

/// Fill `out`, shaped (N, ...), with N(0,1) noise for `key`.
pub fn randn_into(gpu: &Gpu, out: &Tensor, key: NoiseKey) -> Result<()> {
    let (batch, dim) = batch_geometry("randn", out.shape())?;
    launch_per_quad(gpu, "randn", OUT, Params { batch, dim, ..key.params() }, &[out])
}

/// A new (N, ...) tensor of N(0,1) noise for `key`.
pub fn randn(gpu: &Gpu, shape: &[usize], key: NoiseKey) -> Result<Tensor> {
    let out = gpu.uninit(shape)?;
    randn_into(gpu, &out, key)?;
    Ok(out)
}

/// Raw Philox4x32-10 output: row `n` of the (count, 4) result holds the
/// four words for counter `counter + (n, 0, 0, 0)` and `key`, as f32 bit
/// patterns (read back with `f32::to_bits`).
pub fn random_bits(gpu: &Gpu, count: usize, counter: [u32; 4], key: [u32; 2]) -> Result<Tensor> {
    ensure!(count > 0 && count < u32::MAX as usize, "random_bits: count {count} out of range");
    let out = gpu.uninit(&[count, 4])?;
    let p = Params { batch: count as u32, seed_lo: key[0], seed_hi: key[1], counter, ..Params::default() };
    let kernel = Kernel::new(Shader::Ddpm, "random_bits", OUT);
    gpu.launch(&kernel, &p, &[&out], Gpu::grid_1d((count as u32).div_ceil(WORKGROUP)))?;
    Ok(out)
}

fn check_step_inputs(op: &str, steps: usize, x: &Tensor, t: &Tensor, eps: Option<&Tensor>) -> Result<(u32, u32)> {
    let (batch, dim) = batch_geometry(op, x.shape())?;
    ensure!(t.shape() == [batch as usize], "{op}: timesteps {:?} must be one per sample of {:?}", t.shape(), x.shape());
    if let Some(eps) = eps {
        ensure!(eps.shape() == x.shape(), "{op}: eps {:?} and x {:?} differ", eps.shape(), x.shape());
    }
    ensure!(steps > 0, "{op}: empty schedule");
    Ok((batch, dim))
}

/// Training noising (Algorithm 1): draws `eps` for `key` and returns
/// `(x_t, eps)` with `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`, `t` per
/// sample from the (N) index tensor `t`.
pub fn q_sample(gpu: &Gpu, tables: &DdpmTables, x0: &Tensor, t: &Tensor, key: NoiseKey) -> Result<(Tensor, Tensor)> {
    let (batch, dim) = check_step_inputs("q_sample", tables.steps, x0, t, None)?;
    let xt = gpu.uninit(x0.shape())?;
    let eps = gpu.uninit(x0.shape())?;
    let p = Params { batch, dim, steps: tables.steps as u32, ..key.params() };
    launch_per_quad(gpu, "q_sample", STEP, p, &[&xt, &eps, x0, t, &tables.table])?;
    Ok((xt, eps))
}

/// [`q_sample`] with the caller's noise `eps` (same shape as `x0`) instead
/// of Philox's: `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`.
pub fn q_sample_given(gpu: &Gpu, tables: &DdpmTables, x0: &Tensor, t: &Tensor, eps: &Tensor) -> Result<Tensor> {
    let (batch, dim) = check_step_inputs("q_sample_given", tables.steps, x0, t, Some(eps))?;
    let xt = gpu.uninit(x0.shape())?;
    let p = Params { batch, dim, steps: tables.steps as u32, ..Params::default() };
    launch_per_quad(gpu, "q_sample_given", STEP, p, &[&xt, eps, x0, t, &tables.table])?;
    Ok(xt)
}

/// The training target for `prediction`, from the batch `x0`, the noise
/// `eps` [`q_sample`] drew and the timesteps `t`: eps itself, x0 itself, or
/// `v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`.
pub fn training_target(
    gpu: &Gpu,
    tables: &DdpmTables,
    prediction: PredictionType,
    x0: &Tensor,
    eps: &Tensor,
    t: &Tensor,
) -> Result<Tensor> {
    Ok(match prediction {
        PredictionType::Epsilon => eps.clone(),
        PredictionType::Sample => x0.clone(),
        PredictionType::VPrediction => {
            let (batch, dim) = check_step_inputs("velocity", tables.steps, x0, t, Some(eps))?;
            let v = gpu.uninit(x0.shape())?;
            let p = Params { batch, dim, steps: tables.steps as u32, ..Params::default() };
            launch_per_quad(gpu, "velocity", STEP, p, &[&v, eps, x0, t, &tables.table])?;
            v
        }
    })
}

/// The noise eps_theta a model of `prediction` type predicts, from its
/// `output` at `x_t` and the timesteps `t`: what the samplers and the NLL
/// take.
pub fn to_epsilon(
    gpu: &Gpu,
    tables: &DdpmTables,
    prediction: PredictionType,
    output: &Tensor,
    xt: &Tensor,
    t: &Tensor,
) -> Result<Tensor> {
    let code = match prediction {
        PredictionType::Epsilon => return Ok(output.clone()),
        PredictionType::VPrediction => 1,
        PredictionType::Sample => 2,
    };
    let (batch, dim) = check_step_inputs("to_epsilon", tables.steps, xt, t, Some(output))?;
    let eps = gpu.uninit(xt.shape())?;
    let p = Params { batch, dim, steps: tables.steps as u32, prediction: code, ..Params::default() };
    launch_per_quad(gpu, "to_epsilon", STEP, p, &[&eps, output, xt, t, &tables.table])?;
    Ok(eps)
}

/// One DDPM reverse step (diffusers `DDPMScheduler.step`): `x_{t-1}` from
/// `x_t` and the model's `eps_theta`, with the schedule's variance type and
/// clipping, and noise for `key` except at index 0.
pub fn p_sample(
    gpu: &Gpu,
    tables: &DdpmTables,
    xt: &Tensor,
    eps_theta: &Tensor,
    t: &Tensor,
    key: NoiseKey,
) -> Result<Tensor> {
    let clip = (tables.clip_sample, tables.clip_sample_range);
    reverse_step(gpu, "p_sample", &tables.table, tables.steps, clip, [xt, eps_theta, t], key)
}

/// One DDIM step (diffusers `DDIMScheduler.step`) from index `t` to
/// `t - stride`; noise for `key` only when `eta > 0`.
pub fn ddim_step(
    gpu: &Gpu,
    tables: &DdimTables,
    xt: &Tensor,
    eps_theta: &Tensor,
    t: &Tensor,
    key: NoiseKey,
) -> Result<Tensor> {
    let clip = (tables.clip_sample, tables.clip_sample_range);
    reverse_step(gpu, "ddim_step", &tables.table, tables.steps, clip, [xt, eps_theta, t], key)
}

/// [`p_sample`] with the caller's noise `z` (unused at index 0): returns
/// `x_{t-1}` and the predicted `x_0` (clipped when the schedule clips), as
/// diffusers' `prev_sample` and `pred_original_sample`.
pub fn p_sample_given(
    gpu: &Gpu,
    tables: &DdpmTables,
    xt: &Tensor,
    eps_theta: &Tensor,
    t: &Tensor,
    z: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let clip = (tables.clip_sample, tables.clip_sample_range);
    reverse_step_given(gpu, "p_sample_given", &tables.table, tables.steps, clip, [xt, eps_theta, t, z])
}

/// [`ddim_step`] with the caller's noise `z` (unused when eta is 0): returns
/// `x_prev` and the predicted `x_0`.
pub fn ddim_step_given(
    gpu: &Gpu,
    tables: &DdimTables,
    xt: &Tensor,
    eps_theta: &Tensor,
    t: &Tensor,
    z: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let clip = (tables.clip_sample, tables.clip_sample_range);
    reverse_step_given(gpu, "ddim_step_given", &tables.table, tables.steps, clip, [xt, eps_theta, t, z])
}

fn reverse_step_given(
    gpu: &Gpu,
    entry: &'static str,
    table: &Tensor,
    steps: usize,
    (clip, clip_range): (bool, f32),
    [xt, eps_theta, t, z]: [&Tensor; 4],
) -> Result<(Tensor, Tensor)> {
    let (batch, dim) = check_step_inputs(entry, steps, xt, t, Some(eps_theta))?;
    ensure!(z.shape() == xt.shape(), "{entry}: noise {:?} and x {:?} differ", z.shape(), xt.shape());
    let (out, x0) = (gpu.uninit(xt.shape())?, gpu.uninit(xt.shape())?);
    let p = Params { batch, dim, steps: steps as u32, clip: clip as u32, clip_range, ..Params::default() };
    launch_per_quad(gpu, entry, STEP_GIVEN, p, &[&out, eps_theta, xt, t, table, z, &x0])?;
    Ok((out, x0))
}

/// Launch a sampler step `entry` on (x_t, eps_theta, t) with its schedule table.
fn reverse_step(
    gpu: &Gpu,
    entry: &'static str,
    table: &Tensor,
    steps: usize,
    (clip, clip_range): (bool, f32),
    [xt, eps_theta, t]: [&Tensor; 3],
    key: NoiseKey,
) -> Result<Tensor> {
    let (batch, dim) = check_step_inputs(entry, steps, xt, t, Some(eps_theta))?;
    let out = gpu.uninit(xt.shape())?;
    let p = Params { batch, dim, steps: steps as u32, clip: clip as u32, clip_range, ..key.params() };
    launch_per_quad(gpu, entry, STEP, p, &[&out, eps_theta, xt, t, table])?;
    Ok(out)
}

/// CPU twins: the generator bit for bit (up to the f32 rounding of the
/// GPU's log/cos/sin) and the steps written from diffusers' formulas in f64.
pub mod cpu {
    use super::NoiseKey;
    use crate::schedule::{PredictionType, Schedule, VarianceType};

    const PHILOX_M0: u32 = 0xD251_1F53;
    const PHILOX_M1: u32 = 0xCD9E_8D57;
    const PHILOX_W0: u32 = 0x9E37_79B9;
    const PHILOX_W1: u32 = 0xBB67_AE85;

    /// Philox4x32 with 10 rounds (Random123's `philox4x32_R(10, ...)`).
    pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
        let (mut c, mut k) = (counter, key);
        for _ in 0..10 {
            let p0 = PHILOX_M0 as u64 * c[0] as u64;
            let p1 = PHILOX_M1 as u64 * c[2] as u64;
            c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
            k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        }
        c
    }

    /// The shader's `open_uniform`: the f32 it builds, exactly.
    fn open_uniform(bits: u32) -> f32 {
        ((bits >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
    }

    fn box_muller(a: u32, b: u32) -> [f64; 2] {
        let radius = (-2.0 * (open_uniform(a) as f64).ln()).sqrt();
        // The angle is formed in f32 as the shader does, then taken exactly.
        let angle = std::f32::consts::PI * (2.0 * open_uniform(b) - 1.0);
        [radius * (angle as f64).cos(), radius * (angle as f64).sin()]
    }

    /// Noise for elements `4q..4q+3` of row `n` (global sample
    /// `key.first_sample + n`, wrapping as the shader's u32 does).
    pub fn normal4(key: NoiseKey, n: u32, q: u32) -> [f64; 4] {
        let sample = key.first_sample.wrapping_add(n);
        let bits = philox4x32_10([q, sample, key.step, 0], key.philox_key());
        let [z0, z1] = box_muller(bits[0], bits[1]);
        let [z2, z3] = box_muller(bits[2], bits[3]);
        [z0, z1, z2, z3]
    }

    /// What `randn` puts in a (batch, dim) tensor, flattened.
    pub fn randn(key: NoiseKey, batch: usize, dim: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(batch * dim);
        for n in 0..batch {
            for e in 0..dim {
                out.push(normal4(key, n as u32, (e / 4) as u32)[e % 4]);
            }
        }
        out
    }

    /// `sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`; x0, eps: (N, D); t: (N).
    pub fn q_sample(s: &Schedule, x0: &[f32], eps: &[f64], t: &[usize]) -> Vec<f64> {
        let dim = x0.len() / t.len();
        (0..x0.len())
            .map(|i| {
                let abar = s.alphas_cumprod[t[i / dim]];
                abar.sqrt() * x0[i] as f64 + (1.0 - abar).sqrt() * eps[i]
            })
            .collect()
    }

    /// `sqrt(abar_t) eps - sqrt(1 - abar_t) x0`; x0, eps: (N, D); t: (N).
    pub fn velocity(s: &Schedule, x0: &[f32], eps: &[f32], t: &[usize]) -> Vec<f64> {
        let dim = x0.len() / t.len();
        (0..x0.len())
            .map(|i| {
                let abar = s.alphas_cumprod[t[i / dim]];
                abar.sqrt() * eps[i] as f64 - (1.0 - abar).sqrt() * x0[i] as f64
            })
            .collect()
    }

    /// eps from a model's `output` at x_t (diffusers' conversions): v:
    /// `sqrt(abar) v + sqrt(1 - abar) x_t`; x_0: `(x_t - sqrt(abar) x_0) / sqrt(1 - abar)`.
    pub fn to_epsilon(s: &Schedule, prediction: PredictionType, output: &[f32], xt: &[f32], t: &[usize]) -> Vec<f64> {
        let dim = xt.len() / t.len();
        (0..xt.len())
            .map(|i| {
                let abar = s.alphas_cumprod[t[i / dim]];
                let (o, x) = (output[i] as f64, xt[i] as f64);
                match prediction {
                    PredictionType::Epsilon => o,
                    PredictionType::VPrediction => abar.sqrt() * o + (1.0 - abar).sqrt() * x,
                    PredictionType::Sample => (x - abar.sqrt() * o) / (1.0 - abar).sqrt(),
                }
            })
            .collect()
    }

    /// x0 predicted from x_t and eps at index t, clipped when configured.
    fn predicted_x0(s: &Schedule, abar: f64, xt: f64, eps: f64) -> f64 {
        let x0 = (xt - (1.0 - abar).sqrt() * eps) / abar.sqrt();
        if s.config.clip_sample {
            x0.clamp(-s.config.clip_sample_range, s.config.clip_sample_range)
        } else {
            x0
        }
    }

    /// diffusers `DDPMScheduler.step` (epsilon prediction) with the given
    /// standard-normal `z` (ignored at index 0). All (N, D) except t: (N).
    pub fn p_sample(s: &Schedule, xt: &[f32], eps: &[f32], t: &[usize], z: &[f64]) -> Vec<f64> {
        let dim = xt.len() / t.len();
        (0..xt.len())
            .map(|i| {
                let ti = t[i / dim];
                let abar = s.alphas_cumprod[ti];
                let abar_prev = if ti > 0 { s.alphas_cumprod[ti - 1] } else { 1.0 };
                let beta = 1.0 - abar / abar_prev;
                let x0 = predicted_x0(s, abar, xt[i] as f64, eps[i] as f64);
                let mean = abar_prev.sqrt() * beta / (1.0 - abar) * x0
                    + (1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar) * xt[i] as f64;
                let variance = match s.config.variance_type {
                    VarianceType::FixedSmall => ((1.0 - abar_prev) / (1.0 - abar) * beta).max(1e-20),
                    VarianceType::FixedLarge => beta,
                };
                if ti > 0 {
                    mean + variance.sqrt() * z[i]
                } else {
                    mean
                }
            })
            .collect()
    }

    /// diffusers `DDIMScheduler.step` (epsilon prediction, its `set_alpha_to_one`,
    /// `use_clipped_model_output = False`) from index t to t - stride.
    pub fn ddim_step(
        s: &Schedule,
        stride: usize,
        eta: f64,
        xt: &[f32],
        eps: &[f32],
        t: &[usize],
        z: &[f64],
    ) -> Vec<f64> {
        let dim = xt.len() / t.len();
        (0..xt.len())
            .map(|i| {
                let ti = t[i / dim];
                let abar = s.alphas_cumprod[ti];
                let abar_prev = if ti >= stride { s.alphas_cumprod[ti - stride] } else { s.final_alpha_cumprod() };
                let x0 = predicted_x0(s, abar, xt[i] as f64, eps[i] as f64);
                let variance = (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev);
                let std_dev = eta * variance.sqrt();
                let direction = (1.0 - abar_prev - std_dev * std_dev).sqrt() * eps[i] as f64;
                let prev = abar_prev.sqrt() * x0 + direction;
                if eta > 0.0 {
                    prev + std_dev * z[i]
                } else {
                    prev
                }
            })
            .collect()
    }
}
