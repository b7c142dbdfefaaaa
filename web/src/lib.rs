//! The engine in a web page: the same kernels on the browser's WebGPU,
//! driven a step at a time from JavaScript (`web/main.js`).
//!
//! Nothing here waits for the GPU: a page's GPU answers arrive through its
//! event loop, so each readback is a promise, and each step records and
//! submits its commands and returns. The page alternates steps and reads.
#![cfg(target_arch = "wasm32")]

mod zip;

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::{ensure, Context, Result};
use ddpm_wgpu::data::{to_u8, Dataset};
use ddpm_wgpu::patch;
use ddpm_wgpu::sample::{Guidance, Model, ReversePlan, SampleRequest, Sampler, Samples, UNetPredictor};
use ddpm_wgpu::train::{settle_class_dropout, DataSpec, Recipe, StepLog, Trainer};
use ddpm_wgpu::unet::{UNet, UNetConfig};
use ddpm_wgpu::{Gpu, GpuOptions, Tensor};
use js_sys::{Promise, Uint8Array};
use serde::Deserialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// One GPU and what the page has made with it.
#[wasm_bindgen]
pub struct Engine {
    state: Rc<RefCell<State>>,
}

struct State {
    /// Opened once per page and kept for its life: trainers borrow it.
    gpu: &'static Gpu,
    /// What sampling draws from: a loaded model, or the training run's EMA weights.
    model: Option<Model>,
    sampling: Option<Sampling>,
    training: Option<Training>,
}

struct Sampling {
    plan: ReversePlan,
    samples: Samples,
    predictor: UNetPredictor,
    /// Height and width of each image (before patching).
    resolution: usize,
}

struct Training {
    trainer: Trainer<'static>,
    data: Dataset,
    spec: DataSpec,
}

/// What the page may change in the default recipe; anything else is the
/// recipe's (`ddpm train` with no arguments).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TrainRequest {
    batch_size: Option<usize>,
    steps: Option<u64>,
    seed: Option<u64>,
    lr: Option<f32>,
    /// Only the first this many digits.
    limit: Option<usize>,
    /// A UNet2DModel config to train instead of the recipe's, as
    /// `ddpm train --config` takes it (its own image size and classes).
    unet_config: Option<serde_json::Value>,
}

/// An `anyhow` error as the page's exception, with its causes.
fn js_error(e: anyhow::Error) -> JsValue {
    JsError::new(&format!("{e:#}")).into()
}

#[wasm_bindgen]
impl Engine {
    /// Open the browser's WebGPU adapter. The web path runs the portable
    /// kernels: wgpu's WebGPU backend does not expose subgroups.
    pub async fn open() -> Result<Engine, JsValue> {
        let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_error)?;
        let gpu: &'static Gpu = Box::leak(Box::new(gpu));
        let state = State { gpu, model: None, sampling: None, training: None };
        Ok(Engine { state: Rc::new(RefCell::new(state)) })
    }

    /// The adapter, as JSON: its name, backend, the kernel path chosen and
    /// the limits that size the work.
    pub fn adapter(&self) -> String {
        let info = self.state.borrow().gpu.info().clone();
        serde_json::json!({
            "name": info.name,
            "backend": format!("{:?}", info.backend),
            "driver": info.driver,
            "subgroup_kernels": info.subgroups,
            "few_loads": info.few_loads,
            "device_type": format!("{:?}", info.device_type),
            "subgroup_sizes": [info.subgroup_min_size, info.subgroup_max_size],
            "timestamps": info.timestamps,
            "max_storage_binding_mib": info.max_storage_binding >> 20,
            "max_invocations_per_workgroup": info.max_invocations_per_workgroup,
        })
        .to_string()
    }

    /// Every kernel variant built so far, as JSON [[name, {define: value}]]:
    /// which path (subgroup or portable) each one took.
    pub fn built_kernels(&self) -> String {
        let kernels: Vec<serde_json::Value> = self
            .state
            .borrow()
            .gpu
            .built_kernels()
            .iter()
            .map(|k| {
                let defines: serde_json::Map<String, serde_json::Value> =
                    k.defines.iter().map(|(name, v)| (name.to_string(), (*v).into())).collect();
                serde_json::json!([format!("{}::{}", k.shader.file_name(), k.entry), defines])
            })
            .collect();
        serde_json::Value::from(kernels).to_string()
    }

    /// Sample from a diffusers folder's files: the UNet's `config.json`,
    /// its `diffusion_pytorch_model.safetensors` and, if there is one, the
    /// scheduler's `scheduler_config.json`. Returns the model as JSON.
    pub fn load_model(
        &self,
        config_json: &str,
        weights: &[u8],
        scheduler_json: Option<String>,
    ) -> Result<String, JsValue> {
        let mut state = self.state.borrow_mut();
        let model = Model::from_bytes(state.gpu, config_json, weights, scheduler_json.as_deref()).map_err(js_error)?;
        let described = describe(&model);
        state.sampling = None;
        state.model = Some(model);
        Ok(described)
    }

    /// The model sampling draws from, as JSON: parameters, channels,
    /// resolution, classes and default guidance.
    pub fn model_info(&self) -> Result<String, JsValue> {
        let state = self.state.borrow();
        Ok(describe(state.model.as_ref().context("no model loaded").map_err(js_error)?))
    }

    /// Sample from the training run's EMA weights from now on (they keep
    /// changing while it trains).
    pub fn use_trained_model(&self) -> Result<String, JsValue> {
        let mut state = self.state.borrow_mut();
        let training = state.training.as_ref().context("no training run to sample from").map_err(js_error)?;
        let t = &training.trainer;
        let model = Model {
            unet: UNet::new(t.unet.config()).map_err(js_error)?,
            weights: t.ema_store().map_err(js_error)?,
            scheduler: t.scheduler.clone(),
        };
        let described = describe(&model);
        state.sampling = None;
        state.model = Some(model);
        Ok(described)
    }

    /// Start drawing `count` samples: DDIM over `ddim_steps` steps with
    /// `eta`, or the paper's DDPM sampler over every timestep when
    /// `ddim_steps` is 0; noise keyed by `seed` as `ddpm sample --seed`. A
    /// class-conditional model draws `class` (all classes in turn when None)
    /// at guidance `guidance` (the model's default when None).
    pub fn start_sampling(
        &self,
        count: usize,
        ddim_steps: usize,
        eta: f64,
        seed: u32,
        class: Option<usize>,
        guidance: Option<f32>,
    ) -> Result<(), JsValue> {
        let mut state = self.state.borrow_mut();
        let gpu = state.gpu;
        let model = state.model.as_ref().context("load a model or start training first").map_err(js_error)?;
        let sampling =
            start_sampling(gpu, model, count, ddim_steps, eta, seed as u64, class, guidance).map_err(js_error)?;
        state.sampling = Some(sampling);
        Ok(())
    }

    /// Record and submit the next reverse step; false once every step is done.
    pub fn sample_step(&self) -> Result<bool, JsValue> {
        let mut state = self.state.borrow_mut();
        let State { gpu, model, sampling, .. } = &mut *state;
        let (Some(model), Some(s)) = (model.as_ref(), sampling.as_mut()) else {
            return Err(js_error(anyhow::anyhow!("start sampling first")));
        };
        if s.samples.finished(&s.plan) {
            return Ok(false);
        }
        let predictor = &mut s.predictor;
        let mut predict = |x: &Tensor, t: &Tensor, _: usize, first: usize| {
            predictor.predict(gpu, &model.unet, &model.weights, x, t, first)
        };
        s.samples.step(gpu, &s.plan, &mut predict).map_err(js_error)?;
        Ok(!s.samples.finished(&s.plan))
    }

    /// (steps done, steps in all) of the sampling run.
    pub fn sample_progress(&self) -> Vec<u32> {
        match &self.state.borrow().sampling {
            Some(s) => vec![s.samples.steps_done() as u32, s.plan.steps() as u32],
            None => vec![0, 0],
        }
    }

    /// The samples now (x_t part-way, the images once finished) as a
    /// Float32Array of (count, C, R, R) values clipped to [-1, 1].
    pub fn read_samples(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let (gpu, x, channels, resolution, p) = {
                let state = state.borrow();
                let s = state.sampling.as_ref().context("start sampling first").map_err(js_error)?;
                let config = state.model.as_ref().context("no model").map_err(js_error)?.unet.config();
                (state.gpu, s.samples.x().clone(), config.image_channels(), s.resolution, config.patch_size)
            };
            let raw = gpu.read_async(&x).await.map_err(js_error)?;
            let clipped: Vec<f32> = raw.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
            let images = patch::shuffle(&clipped, channels, resolution, p);
            Ok(js_sys::Float32Array::from(&images[..]).into())
        })
    }

    /// Start training the default recipe on the shipped MNIST digits, with
    /// `request_json`'s changes (batch_size, steps, seed, lr, limit,
    /// unet_config). Returns the run as JSON.
    pub fn start_training(&self, request_json: &str) -> Result<String, JsValue> {
        let request: TrainRequest =
            serde_json::from_str(request_json).context("the training request").map_err(js_error)?;
        let mut state = self.state.borrow_mut();
        let training = start_training(state.gpu, request).map_err(js_error)?;
        let t = &training.trainer;
        let described = serde_json::json!({
            "parameters": t.unet.table.count(),
            "batch_size": t.options.batch_size,
            "steps": t.options.steps,
            "images": training.data.len(),
            "data": training.data.source,
            "classes": t.unet.config().classes(),
        })
        .to_string();
        state.training = Some(training);
        Ok(described)
    }

    /// Record and submit one training step. Read the logs (`read_logs`) at
    /// least every ten steps: the GPU holds ten steps' losses.
    pub fn train_step(&self) -> Result<u32, JsValue> {
        let mut state = self.state.borrow_mut();
        let training = state.training.as_mut().context("start training first").map_err(js_error)?;
        let Training { trainer, data, .. } = training;
        if trainer.logs_full() {
            return Err(js_error(anyhow::anyhow!("read the logs before more steps")));
        }
        if trainer.step >= trainer.options.steps {
            return Err(js_error(anyhow::anyhow!("the run's {} steps are done", trainer.options.steps)));
        }
        trainer.train_step(data).map_err(js_error)?;
        Ok(trainer.step as u32)
    }

    /// The losses of the steps since the last call, as JSON [{step, loss,
    /// grad_norm, lr}] (a NaN or infinite loss is an error naming its step).
    pub fn read_logs(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            // Out of the state while the GPU answers, so no borrow spans the wait.
            let mut training = take_training(&state)?;
            let logs = training.trainer.read_logs_async().await;
            state.borrow_mut().training = Some(training);
            let logs: Vec<serde_json::Value> = logs.map_err(js_error)?.iter().map(log_json).collect();
            Ok(JsValue::from_str(&serde_json::Value::from(logs).to_string()))
        })
    }

    /// The run as a zip of its checkpoint folder: a diffusers DDPMPipeline
    /// (`ddpm sample --checkpoint` reads it) that `ddpm train --resume` continues.
    pub fn checkpoint_zip(&self) -> Promise {
        let state = self.state.clone();
        future_to_promise(async move {
            let training = take_training(&state)?;
            let files = training.trainer.checkpoint_files(&training.spec).await;
            state.borrow_mut().training = Some(training);
            let files = files.map_err(js_error)?;
            let named: Vec<(String, &[u8])> =
                files.iter().map(|(name, bytes)| (format!("checkpoint/{name}"), &bytes[..])).collect();
            Ok(Uint8Array::from(&zip::stored(&named)[..]).into())
        })
    }
}

/// Images in [-1, 1] as 8-bit grey or RGB values, as `ddpm sample` writes them.
#[wasm_bindgen]
pub fn to_bytes(images: &[f32]) -> Vec<u8> {
    images.iter().map(|&v| to_u8(v)).collect()
}

fn take_training(state: &Rc<RefCell<State>>) -> Result<Training, JsValue> {
    let taken = state.borrow_mut().training.take();
    taken.context("start training first (or wait for the last read to finish)").map_err(js_error)
}

fn describe(model: &Model) -> String {
    let c = model.unet.config();
    serde_json::json!({
        "parameters": model.unet.table.count(),
        "channels": c.image_channels(),
        "resolution": c.image_size(),
        "classes": c.classes(),
        "guidance": c.num_class_embeds.map(|_| Guidance::default_for(c).scale),
    })
    .to_string()
}

fn log_json(log: &StepLog) -> serde_json::Value {
    serde_json::json!({ "step": log.step, "loss": log.loss, "grad_norm": log.grad_norm, "lr": log.lr })
}

/// The most samples one page run draws: one chunk, shown as one grid.
const MAX_PAGE_SAMPLES: usize = 256;

#[allow(clippy::too_many_arguments)]
fn start_sampling(
    gpu: &Gpu,
    model: &Model,
    count: usize,
    ddim_steps: usize,
    eta: f64,
    seed: u64,
    class: Option<usize>,
    guidance: Option<f32>,
) -> Result<Sampling> {
    let config = model.unet.config();
    ensure!((1..=MAX_PAGE_SAMPLES).contains(&count), "draw 1 to {MAX_PAGE_SAMPLES} samples, not {count}");
    ensure!(eta.is_finite() && (0.0..=1.0).contains(&eta), "eta must be between 0 and 1, got {eta}");
    let resolution = config.image_size().context("the model's config has no sample_size")?;
    let default = Guidance::default_for(config);
    let guidance = Guidance { class, scale: guidance.unwrap_or(default.scale) };
    let sampler = match ddim_steps {
        0 => Sampler::Ddpm,
        steps => Sampler::Ddim { steps, eta },
    };
    let p = config.patch_size;
    let request = SampleRequest {
        count,
        resolution: resolution / p,
        sampler,
        seed,
        keep_every: None,
        batch_size: count,
        guidance,
    };
    // Checked before the first step: the classes and guidance against the model.
    let predictor = UNetPredictor::new(config, guidance)?;
    let plan = ReversePlan::new(gpu, &model.scheduler, &request, config.in_channels, count)?;
    let samples = plan.start(gpu, 0, count)?;
    Ok(Sampling { plan, samples, predictor, resolution })
}

fn start_training(gpu: &'static Gpu, request: TrainRequest) -> Result<Training> {
    let recipe = Recipe::default();
    let mut options = recipe.options.clone();
    options.batch_size = request.batch_size.unwrap_or(options.batch_size);
    options.steps = request.steps.unwrap_or(options.steps);
    options.seed = request.seed.unwrap_or(options.seed);
    options.lr = request.lr.unwrap_or(options.lr);
    ensure!(options.batch_size >= 1 && options.steps >= 1, "batch_size and steps must be at least 1");
    ensure!(options.lr.is_finite() && options.lr > 0.0, "lr must be above 0, got {}", options.lr);
    // As `ddpm train`: the recipe's UNet at 32x32, conditioned on the digits'
    // classes, or as `ddpm train --config`: the config's own images and classes.
    let given = match request.unet_config {
        Some(json) => Some(UNetConfig::from_json(&json.to_string()).context("in unet_config")?),
        None => None,
    };
    let resolution = match &given {
        Some(config) => config.image_size().context("the UNet config has no sample_size")?,
        None => 32,
    };
    let spec = DataSpec { folder: None, resolution, channels: 1, limit: request.limit };
    let data = spec.load()?;
    let mut config = match given {
        Some(config) => config,
        None => recipe.unet_config_for(1, resolution, data.classes())?,
    };
    ensure!(config.image_channels() == 1, "the shipped digits are grey: the UNet must model 1 channel");
    settle_class_dropout(&mut config, &mut options);
    config.validate()?;
    let trainer = Trainer::new(gpu, &config, recipe.scheduler(), options, [1, resolution, resolution])?;
    Ok(Training { trainer, data, spec })
}
