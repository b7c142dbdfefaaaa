//! The DDPM noise schedule, computed once on the host in f64 with the names
//! of the reference code (hojonathanho/diffusion, `diffusion_utils_2.py`),
//! configured with the keys of diffusers' `DDPMScheduler`.
//!
//! # Timestep indexing (the one place this is defined)
//!
//! The paper numbers diffusion steps `t = 1..=T`, with `x_0` the data and
//! `x_T` pure noise. Every table here, every GPU kernel and every timestep
//! buffer uses the diffusers index `i = t - 1` in `0..T`:
//!
//! - `betas[i]` is the paper's `beta_t`, `alphas_cumprod[i]` is `abar_t`;
//! - `alphas_cumprod_prev[i]` is `abar_{t-1}`, with `abar_0 = 1` at `i = 0`;
//! - the last sampling step (paper `t = 1`, no noise added) is `i = 0`.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};

/// How betas are spaced over the timesteps (diffusers' `beta_schedule`;
/// `trained_betas` in the config replaces any of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `betas = linspace(beta_start, beta_end, T)` (the DDPM paper: 1e-4..0.02).
    Linear,
    /// `betas = linspace(sqrt(beta_start), sqrt(beta_end), T)²` (latent diffusion's).
    ScaledLinear,
    /// `betas = sigmoid(linspace(-6, 6, T)) (beta_end - beta_start) + beta_start`
    /// (GeoDiff's; diffusers' DDPMScheduler only).
    Sigmoid,
    /// Cosine schedule of Nichol & Dhariwal: `abar(s) = cos²((s + 0.008) / 1.008 · π/2)`,
    /// `beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)`.
    SquaredCosCapV2,
}

/// The variance of the reverse step `p(x_{t-1} | x_t)` (diffusers' `variance_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarianceType {
    /// `sigma_t² = beta~_t = posterior_variance` (lower bound of the paper's §3.2).
    FixedSmall,
    /// `sigma_t² = beta_t` (upper bound).
    FixedLarge,
}

/// What the model predicts from x_t (diffusers' `prediction_type`). Every
/// sampler and the NLL turn the prediction into eps with
/// [`crate::ops::ddpm::to_epsilon`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PredictionType {
    /// The noise eps (the paper's).
    #[default]
    Epsilon,
    /// v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022): its
    /// scale does not blow up at either end of the schedule.
    VPrediction,
    /// x_0 itself.
    Sample,
}

impl FromStr for PredictionType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "epsilon" => Ok(PredictionType::Epsilon),
            "v_prediction" => Ok(PredictionType::VPrediction),
            "sample" => Ok(PredictionType::Sample),
            other => bail!("unknown prediction_type '{other}': use epsilon, v_prediction or sample"),
        }
    }
}

impl fmt::Display for PredictionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        })
    }
}

impl FromStr for BetaSchedule {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(BetaSchedule::Linear),
            "scaled_linear" => Ok(BetaSchedule::ScaledLinear),
            "sigmoid" => Ok(BetaSchedule::Sigmoid),
            "squaredcos_cap_v2" => Ok(BetaSchedule::SquaredCosCapV2),
            other => bail!("unknown beta_schedule '{other}': use linear, scaled_linear, sigmoid or squaredcos_cap_v2"),
        }
    }
}

impl fmt::Display for BetaSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BetaSchedule::Linear => "linear",
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::Sigmoid => "sigmoid",
            BetaSchedule::SquaredCosCapV2 => "squaredcos_cap_v2",
        })
    }
}

/// Where `set_timesteps(n)` puts the n sampling timesteps among the T
/// training ones (diffusers' `timestep_spacing`, Table 2 of Lin et al. 2023).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimestepSpacing {
    /// `i · (T / n) + steps_offset` for i in 0..n: never reaches T - 1 (the
    /// noisiest step) unless n = T.
    #[default]
    Leading,
    /// `round(T - i · T / n) - 1`: starts at T - 1.
    Trailing,
    /// `round(linspace(0, T - 1, n))`.
    Linspace,
}

impl FromStr for TimestepSpacing {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "leading" => Ok(TimestepSpacing::Leading),
            "trailing" => Ok(TimestepSpacing::Trailing),
            "linspace" => Ok(TimestepSpacing::Linspace),
            other => bail!("unknown timestep_spacing '{other}': use leading, trailing or linspace"),
        }
    }
}

impl fmt::Display for TimestepSpacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
            TimestepSpacing::Linspace => "linspace",
        })
    }
}

impl FromStr for VarianceType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fixed_small" => Ok(VarianceType::FixedSmall),
            "fixed_large" => Ok(VarianceType::FixedLarge),
            other => bail!("unknown variance_type '{other}': use fixed_small or fixed_large"),
        }
    }
}

impl fmt::Display for VarianceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VarianceType::FixedSmall => "fixed_small",
            VarianceType::FixedLarge => "fixed_large",
        })
    }
}

/// The longest schedule accepted: diffusers' models use 1000 steps; a
/// config asking for millions is refused before its tables are built.
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// The keys of diffusers' `DDPMScheduler` / `DDIMScheduler` configs. Every
/// key a config file may hold is either one of these or refused by
/// [`SchedulerConfig::from_json`] (see [`SCHEDULER_KEYS`]). Defaults are
/// diffusers' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, one per training timestep, used instead of `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    pub variance_type: VarianceType,
    /// Clip the predicted `x_0` to `[-clip_sample_range, clip_sample_range]`
    /// before forming the posterior mean.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub prediction_type: PredictionType,
    /// DDIM's timesteps (the DDPM sampler visits all T).
    pub timestep_spacing: TimestepSpacing,
    /// Added to `Leading` timesteps.
    pub steps_offset: usize,
    /// DDIM's `abar` after its last step: 1 (`true`, x_0 itself) or `abar`
    /// at index 0 (`false`, as Stable Diffusion's configs).
    pub set_alpha_to_one: bool,
}

/// What [`SchedulerConfig::from_json`] does with each key diffusers may
/// write: read (into a field of the same name), accepted as unused (they
/// only act with thresholding, which is refused), or refused unless off.
/// Keys starting with `_` are metadata; any other key is refused by name.
pub const SCHEDULER_KEYS: &[(&str, KeyUse)] = &[
    ("num_train_timesteps", KeyUse::Read),
    ("beta_start", KeyUse::Read),
    ("beta_end", KeyUse::Read),
    ("beta_schedule", KeyUse::Read),
    ("trained_betas", KeyUse::Read),
    ("variance_type", KeyUse::Read),
    ("clip_sample", KeyUse::Read),
    ("clip_sample_range", KeyUse::Read),
    ("prediction_type", KeyUse::Read),
    ("timestep_spacing", KeyUse::Read),
    ("steps_offset", KeyUse::Read),
    ("set_alpha_to_one", KeyUse::Read),
    ("thresholding", KeyUse::RefusedUnless(Off::False)),
    ("dynamic_thresholding_ratio", KeyUse::UnusedWithout("thresholding")),
    ("sample_max_value", KeyUse::UnusedWithout("thresholding")),
    ("rescale_betas_zero_snr", KeyUse::RefusedUnless(Off::False)),
];

/// The keys of [`SCHEDULER_KEYS`], for messages.
fn key_list() -> String {
    SCHEDULER_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// See [`SCHEDULER_KEYS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyUse {
    Read,
    /// Meaningful only with the named key on (which is refused).
    UnusedWithout(&'static str),
    /// Not implemented: accepted only at its "off" value.
    RefusedUnless(Off),
}

/// The value at which a refused key does nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Off {
    False,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            trained_betas: None,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
        }
    }
}

impl SchedulerConfig {
    /// Parse diffusers' `scheduler_config.json` (DDPMScheduler's or
    /// DDIMScheduler's keys): every key is read or refused by name (see
    /// [`SCHEDULER_KEYS`]), and the schedule it describes is checked (and
    /// refused with its numbers) before anything is allocated.
    pub fn from_json(text: &str) -> Result<SchedulerConfig> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("parsing scheduler config: {e}"))?;
        let Some(object) = v.as_object() else { bail!("the scheduler config is not a JSON object") };
        for (key, value) in object {
            if key.starts_with('_') {
                continue;
            }
            match SCHEDULER_KEYS.iter().find(|(k, _)| k == key).map(|(_, u)| *u) {
                None => bail!("unknown scheduler key '{key}' (= {value}): this engine reads {}", key_list()),
                Some(KeyUse::RefusedUnless(Off::False)) if !value.is_null() && value != &serde_json::json!(false) => {
                    bail!("scheduler key {key} = {value} is not supported (only false)")
                }
                _ => {}
            }
        }
        let d = SchedulerConfig::default();
        let present = |k: &str| v.get(k).filter(|x| !x.is_null());
        let number = |k: &str, default: f64| -> Result<f64> {
            present(k).map_or(Ok(default), |x| x.as_f64().with_context(|| format!("{k} must be a number, got {x}")))
        };
        let count = |k: &str, default: usize| -> Result<usize> {
            present(k).map_or(Ok(default), |x| {
                x.as_u64().map(|n| n as usize).with_context(|| format!("{k} must be a whole number >= 0, got {x}"))
            })
        };
        let flag = |k: &str, default: bool| -> Result<bool> {
            present(k)
                .map_or(Ok(default), |x| x.as_bool().with_context(|| format!("{k} must be true or false, got {x}")))
        };
        let name = |k: &str| -> Result<Option<&str>> {
            present(k).map(|x| x.as_str().with_context(|| format!("{k} must be a string, got {x}"))).transpose()
        };
        let trained_betas = match present("trained_betas") {
            None => None,
            Some(list) => Some(
                list.as_array()
                    .and_then(|a| a.iter().map(|b| b.as_f64()).collect::<Option<Vec<f64>>>())
                    .with_context(|| "trained_betas must be a list of numbers")?,
            ),
        };
        let config = SchedulerConfig {
            num_train_timesteps: count("num_train_timesteps", d.num_train_timesteps)?,
            beta_start: number("beta_start", d.beta_start)?,
            beta_end: number("beta_end", d.beta_end)?,
            beta_schedule: name("beta_schedule")?.map_or(Ok(d.beta_schedule), str::parse)?,
            trained_betas,
            variance_type: name("variance_type")?.map_or(Ok(d.variance_type), str::parse)?,
            clip_sample: flag("clip_sample", d.clip_sample)?,
            clip_sample_range: number("clip_sample_range", d.clip_sample_range)?,
            prediction_type: name("prediction_type")?.map_or(Ok(d.prediction_type), str::parse)?,
            timestep_spacing: name("timestep_spacing")?.map_or(Ok(d.timestep_spacing), str::parse)?,
            steps_offset: count("steps_offset", d.steps_offset)?,
            set_alpha_to_one: flag("set_alpha_to_one", d.set_alpha_to_one)?,
        };
        config.check()?;
        Ok(config)
    }

    /// The bounds [`Schedule::new`] relies on, with the offending value.
    fn check(&self) -> Result<()> {
        ensure!(
            (2..=MAX_TRAIN_TIMESTEPS).contains(&self.num_train_timesteps),
            "num_train_timesteps must be between 2 and {MAX_TRAIN_TIMESTEPS}, got {}",
            self.num_train_timesteps
        );
        if let Some(b) = &self.trained_betas {
            ensure!(
                b.len() == self.num_train_timesteps,
                "trained_betas has {} values for num_train_timesteps = {}",
                b.len(),
                self.num_train_timesteps
            );
        }
        ensure!(
            self.clip_sample_range.is_finite() && self.clip_sample_range > 0.0,
            "clip_sample_range must be positive, got {}",
            self.clip_sample_range
        );
        ensure!(
            self.steps_offset < self.num_train_timesteps,
            "steps_offset {} is not below num_train_timesteps {}",
            self.steps_offset,
            self.num_train_timesteps
        );
        Ok(())
    }

    pub fn to_json(&self) -> String {
        let v = serde_json::json!({
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": self.beta_schedule.to_string(),
            "variance_type": self.variance_type.to_string(),
            "clip_sample": self.clip_sample,
            "clip_sample_range": self.clip_sample_range,
            "prediction_type": self.prediction_type.to_string(),
            "trained_betas": self.trained_betas,
            "timestep_spacing": self.timestep_spacing.to_string(),
            "steps_offset": self.steps_offset,
            "set_alpha_to_one": self.set_alpha_to_one,
        });
        serde_json::to_string_pretty(&v).expect("config serialises")
    }
}

/// Every per-timestep table, indexed `0..T` (see the module doc), in f64.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub config: SchedulerConfig,
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    /// `abar_{t-1}`, with 1 at index 0.
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    /// `1 / sqrt(abar_t)`.
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    /// `sqrt(1 / abar_t - 1)`; `x_0 = sqrt_recip · x_t - sqrt_recipm1 · eps`.
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    /// `1 / sqrt(alpha_t)`, the outer factor of the paper's Algorithm 2.
    pub sqrt_recip_alphas: Vec<f64>,
    /// `beta_t / sqrt(1 - abar_t)`, the factor of `eps_theta` in Algorithm 2.
    pub eps_coef: Vec<f64>,
    /// `beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)` (0 at index 0).
    pub posterior_variance: Vec<f64>,
    /// `log(beta~_t)` with index 0 replaced by index 1, as the reference
    /// does, since `beta~` is 0 there.
    pub posterior_log_variance_clipped: Vec<f64>,
    /// The posterior mean is `coef1 · x_0 + coef2 · x_t`.
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
}

/// diffusers computes betas in float32 (`torch.linspace(..., dtype=torch.float32)`);
/// these are the same formulas in f64, within f32 rounding of them.
fn betas_for(config: &SchedulerConfig) -> Vec<f64> {
    let steps = config.num_train_timesteps;
    if let Some(b) = &config.trained_betas {
        return b.clone();
    }
    let (start, end) = (config.beta_start, config.beta_end);
    let linspace = |a: f64, b: f64| (0..steps).map(move |i| a + (b - a) * i as f64 / (steps - 1) as f64);
    match config.beta_schedule {
        BetaSchedule::Linear => linspace(start, end).collect(),
        BetaSchedule::ScaledLinear => linspace(start.sqrt(), end.sqrt()).map(|b| b * b).collect(),
        BetaSchedule::Sigmoid => {
            linspace(-6.0, 6.0).map(|x| 1.0 / (1.0 + (-x).exp()) * (end - start) + start).collect()
        }
        BetaSchedule::SquaredCosCapV2 => {
            const MAX_BETA: f64 = 0.999;
            let alpha_bar = |s: f64| ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
            (0..steps)
                .map(|i| {
                    let (s1, s2) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
                    (1.0 - alpha_bar(s2) / alpha_bar(s1)).min(MAX_BETA)
                })
                .collect()
        }
    }
}

impl Schedule {
    pub fn new(config: SchedulerConfig) -> Result<Schedule> {
        config.check().context("schedule")?;
        let betas = betas_for(&config);
        ensure!(
            betas.iter().all(|&b| b > 0.0 && b < 1.0),
            "schedule: every beta must lie in (0, 1); {} gives {:?}..{:?}",
            config.beta_schedule,
            betas.first(),
            betas.last()
        );
        let map = |v: &[f64], f: &dyn Fn(f64) -> f64| v.iter().map(|&x| f(x)).collect::<Vec<f64>>();
        let alphas = map(&betas, &|b| 1.0 - b);
        let alphas_cumprod: Vec<f64> = alphas
            .iter()
            .scan(1.0, |prod, &a| {
                *prod *= a;
                Some(*prod)
            })
            .collect();
        let alphas_cumprod_prev: Vec<f64> =
            std::iter::once(1.0).chain(alphas_cumprod[..alphas_cumprod.len() - 1].iter().copied()).collect();
        let zip = |a: &[f64], b: &[f64], c: &[f64], f: &dyn Fn(f64, f64, f64) -> f64| {
            a.iter().zip(b).zip(c).map(|((&x, &y), &z)| f(x, y, z)).collect::<Vec<f64>>()
        };
        let posterior_variance =
            zip(&betas, &alphas_cumprod_prev, &alphas_cumprod, &|b, ap, a| b * (1.0 - ap) / (1.0 - a));
        let posterior_log_variance_clipped: Vec<f64> = std::iter::once(posterior_variance[1])
            .chain(posterior_variance[1..].iter().copied())
            .map(f64::ln)
            .collect();
        Ok(Schedule {
            sqrt_alphas_cumprod: map(&alphas_cumprod, &f64::sqrt),
            sqrt_one_minus_alphas_cumprod: map(&alphas_cumprod, &|a| (1.0 - a).sqrt()),
            log_one_minus_alphas_cumprod: map(&alphas_cumprod, &|a| (1.0 - a).ln()),
            sqrt_recip_alphas_cumprod: map(&alphas_cumprod, &|a| (1.0 / a).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&alphas_cumprod, &|a| (1.0 / a - 1.0).sqrt()),
            sqrt_recip_alphas: map(&alphas, &|a| 1.0 / a.sqrt()),
            eps_coef: zip(&betas, &alphas_cumprod, &betas, &|b, a, _| b / (1.0 - a).sqrt()),
            posterior_mean_coef1: zip(&betas, &alphas_cumprod_prev, &alphas_cumprod, &|b, ap, a| {
                b * ap.sqrt() / (1.0 - a)
            }),
            posterior_mean_coef2: zip(&alphas, &alphas_cumprod_prev, &alphas_cumprod, &|al, ap, a| {
                (1.0 - ap) * al.sqrt() / (1.0 - a)
            }),
            posterior_variance,
            posterior_log_variance_clipped,
            alphas_cumprod_prev,
            alphas_cumprod,
            alphas,
            betas,
            config,
        })
    }

    /// `T`, the number of training timesteps.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// Standard deviation `sigma_t` of the reverse step at index `i` for the
    /// configured variance type. Sampling adds no noise at `i = 0` whatever
    /// this returns.
    pub fn sigma(&self, i: usize) -> f64 {
        match self.config.variance_type {
            VarianceType::FixedSmall => self.posterior_variance[i].sqrt(),
            VarianceType::FixedLarge => self.betas[i].sqrt(),
        }
    }

    /// DDIM's `abar` past the last step ([`SchedulerConfig::set_alpha_to_one`]).
    pub fn final_alpha_cumprod(&self) -> f64 {
        if self.config.set_alpha_to_one {
            1.0
        } else {
            self.alphas_cumprod[0]
        }
    }

    /// DDIM step coefficients for every index `i` when each step jumps from
    /// `i` to `i - stride` (diffusers' `DDIMScheduler.step`: `abar` of a
    /// negative index is [`Schedule::final_alpha_cumprod`]):
    /// `x_prev = coef_x0 · x0_hat + coef_eps · eps + sigma · z` with
    /// `coef_x0 = sqrt(abar_prev)`, `sigma = eta · sqrt((1 - abar_prev)/(1 - abar_t) · (1 - abar_t/abar_prev))`,
    /// `coef_eps = sqrt(1 - abar_prev - sigma²)`.
    pub fn ddim_coefficients(&self, stride: usize, eta: f64) -> Result<DdimCoefficients> {
        ensure!(stride >= 1 && stride <= self.len(), "ddim: stride {stride} outside 1..={}", self.len());
        ensure!(eta >= 0.0, "ddim: eta must be >= 0, got {eta}");
        let mut c = DdimCoefficients { stride, eta, coef_x0: vec![], coef_eps: vec![], sigma: vec![] };
        for i in 0..self.len() {
            let abar = self.alphas_cumprod[i];
            let abar_prev = if i >= stride { self.alphas_cumprod[i - stride] } else { self.final_alpha_cumprod() };
            let variance = (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev);
            let sigma = eta * variance.sqrt();
            c.coef_x0.push(abar_prev.sqrt());
            c.coef_eps.push((1.0 - abar_prev - sigma * sigma).max(0.0).sqrt());
            c.sigma.push(sigma);
        }
        Ok(c)
    }
}

/// Per-index DDIM coefficients for one (stride, eta); see
/// [`Schedule::ddim_coefficients`].
#[derive(Clone, Debug)]
pub struct DdimCoefficients {
    pub stride: usize,
    pub eta: f64,
    pub coef_x0: Vec<f64>,
    pub coef_eps: Vec<f64>,
    pub sigma: Vec<f64>,
}

/// The DDIM sampling indices, largest first, for `num_inference_steps` out
/// of the config's `num_train_timesteps` T, placed by its
/// `timestep_spacing` (and `steps_offset`) as diffusers'
/// `DDIMScheduler.set_timesteps`; and the stride `T / steps` (integer
/// division) each step moves back by, as diffusers' `step` does whatever the
/// spacing.
pub fn ddim_timesteps(config: &SchedulerConfig, num_inference_steps: usize) -> Result<(Vec<usize>, usize)> {
    let t = config.num_train_timesteps;
    let n = num_inference_steps;
    ensure!((1..=t).contains(&n), "ddim: {n} inference steps for {t} training timesteps");
    let steps: Vec<usize> = match config.timestep_spacing {
        TimestepSpacing::Leading => (0..n).rev().map(|i| i * (t / n) + config.steps_offset).collect(),
        TimestepSpacing::Trailing => {
            let ratio = t as f64 / n as f64;
            // np.round(np.arange(T, 0, -ratio)) - 1; round half to even, as numpy.
            (0..n).map(|i| (t as f64 - i as f64 * ratio).round_ties_even() as usize - 1).collect()
        }
        TimestepSpacing::Linspace => (0..n)
            .rev()
            .map(|i| if n == 1 { 0.0 } else { i as f64 * (t - 1) as f64 / (n - 1) as f64 }.round_ties_even() as usize)
            .collect(),
    };
    ensure!(
        steps[0] < t,
        "ddim: timestep_spacing {} with steps_offset {} puts a step at t = {} of {t} training timesteps",
        config.timestep_spacing,
        config.steps_offset,
        steps[0]
    );
    Ok((steps, t / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_matches_the_paper() {
        let s = Schedule::new(SchedulerConfig::default()).unwrap();
        assert_eq!(s.len(), 1000);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
        // abar_T for the paper's schedule is about 4.04e-5.
        assert!((s.alphas_cumprod[999] - 4.0358e-5).abs() < 1e-8, "{}", s.alphas_cumprod[999]);
        assert_eq!(s.alphas_cumprod_prev[0], 1.0);
        assert_eq!(s.posterior_variance[0], 0.0);
        assert_eq!(s.posterior_log_variance_clipped[0], s.posterior_variance[1].ln());
        for i in 0..s.len() {
            // The posterior mean of x_t = sqrt(abar) x0 + sqrt(1-abar) eps written
            // through x0_hat equals Algorithm 2's mean.
            let (x0, eps) = (0.3, -1.1);
            let xt = s.sqrt_alphas_cumprod[i] * x0 + s.sqrt_one_minus_alphas_cumprod[i] * eps;
            let x0_hat = s.sqrt_recip_alphas_cumprod[i] * xt - s.sqrt_recipm1_alphas_cumprod[i] * eps;
            let mean_posterior = s.posterior_mean_coef1[i] * x0_hat + s.posterior_mean_coef2[i] * xt;
            let mean_alg2 = s.sqrt_recip_alphas[i] * (xt - s.eps_coef[i] * eps);
            assert!((mean_posterior - mean_alg2).abs() < 1e-12, "i={i}: {mean_posterior} vs {mean_alg2}");
            assert!((x0_hat - x0).abs() < 1e-9);
        }
    }

    #[test]
    fn cosine_schedule_is_capped_and_decreasing() {
        let config = SchedulerConfig { beta_schedule: BetaSchedule::SquaredCosCapV2, ..SchedulerConfig::default() };
        let s = Schedule::new(config).unwrap();
        assert_eq!(*s.betas.last().unwrap(), 0.999);
        assert!(s.betas.windows(2).all(|w| w[1] >= w[0]));
        // First beta from diffusers' betas_for_alpha_bar(1000), in float64.
        let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        assert!((s.betas[0] - (1.0 - f(0.001) / f(0.0))).abs() < 1e-18);
        assert!(s.betas[0] > 4e-5 && s.betas[0] < 4.2e-5, "{}", s.betas[0]);
    }

    #[test]
    fn names_parse_like_diffusers() {
        assert_eq!("squaredcos_cap_v2".parse::<BetaSchedule>().unwrap(), BetaSchedule::SquaredCosCapV2);
        assert_eq!("fixed_large".parse::<VarianceType>().unwrap(), VarianceType::FixedLarge);
        assert_eq!("scaled_linear".parse::<BetaSchedule>().unwrap(), BetaSchedule::ScaledLinear);
        assert!("exp".parse::<BetaSchedule>().is_err());
        assert_eq!(BetaSchedule::Linear.to_string(), "linear");
    }

    #[test]
    fn ddim_with_stride_one_and_eta_one_is_ddpm_fixed_small() {
        let s = Schedule::new(SchedulerConfig::default()).unwrap();
        let c = s.ddim_coefficients(1, 1.0).unwrap();
        for i in 0..s.len() {
            assert!((c.sigma[i] - s.posterior_variance[i].sqrt()).abs() < 1e-12, "i={i}");
            assert!((c.coef_x0[i] - s.alphas_cumprod_prev[i].sqrt()).abs() < 1e-15);
        }
        let (steps, stride) = ddim_timesteps(&SchedulerConfig::default(), 50).unwrap();
        assert_eq!((steps[0], steps[49], stride), (980, 0, 20));
    }
}
