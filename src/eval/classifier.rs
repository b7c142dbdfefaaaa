//! The digit classifier `ddpm eval` scores samples with: a small LeNet-style
//! network trained by this engine on the shipped MNIST digits
//! (`cargo run --release --example digit_classifier` retrains it; the
//! weights are `assets/classifier/`, embedded in the binary).
//!
//! 28x28 grey in [-1, 1] -> four 3x3 convs with SiLU (16 channels at 28x28,
//! then stride 2: 32 at 14x14, 64 at 7x7, 64 at 4x4) -> linear 1024 -> 128
//! with SiLU (the features the Fréchet distance uses) -> linear 128 -> 10.

use anyhow::{bail, ensure, Context, Result};
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{Extracted, FeatureExtractor, Images};
use crate::gpu::Gpu;
use crate::ops::conv2d::Conv2dGeometry;
use crate::ops::cross_entropy::class_labels;
use crate::ops::optimizer::{self, Adam};
use crate::tape::{Tape, Var};
use crate::unet::layout::{Init, InitScheme, ParamSpec};
use crate::unet::params::{ParamStore, ParamTable};
use crate::unet::ParamVars;

/// The weights shipped in `assets/classifier/` (see its README).
const SHIPPED: &[u8] = include_bytes!("../../assets/classifier/digit_classifier.safetensors");

pub const SIZE: usize = 28;
pub const CLASSES: usize = 10;
pub const FEATURES: usize = 128;
const HIDDEN: usize = 64 * 4 * 4;

/// (name, c_in, c_out, stride, input size) of each conv.
const CONVS: [(&str, usize, usize, usize, usize); 4] =
    [("conv1", 1, 16, 1, 28), ("conv2", 16, 32, 2, 28), ("conv3", 32, 64, 2, 14), ("conv4", 64, 64, 2, 7)];
/// (name, in, out) of each linear layer.
const LINEARS: [(&str, usize, usize); 2] = [("fc1", HIDDEN, FEATURES), ("fc2", FEATURES, CLASSES)];

fn table() -> ParamTable {
    let mut specs = Vec::new();
    let mut add = |name: &str, weight: Vec<usize>, out: usize| {
        let fan_in = weight[1..].iter().product();
        specs.push(ParamSpec { name: format!("{name}.weight"), shape: weight, init: Init::Uniform { fan_in } });
        specs.push(ParamSpec { name: format!("{name}.bias"), shape: vec![out], init: Init::Uniform { fan_in } });
    };
    for (name, c_in, c_out, _, _) in CONVS {
        add(name, vec![c_out, c_in, 3, 3], c_out);
    }
    for (name, inp, out) in LINEARS {
        add(name, vec![out, inp], out);
    }
    ParamTable::new(&specs)
}

/// The classifier's weights on the GPU.
pub struct DigitClassifier {
    pub weights: ParamStore,
}

impl DigitClassifier {
    /// Grey 28x28 images, or 32x32 ones (the padded digits `ddpm train`
    /// uses), which it centre-crops to 28x28.
    pub fn accepts_shape(channels: usize, resolution: usize) -> Result<()> {
        ensure!(channels == 1, "the digit classifier takes grey images, not {channels} channels");
        ensure!(
            resolution == SIZE || resolution == 32,
            "the digit classifier takes 28x28 or 32x32 images, not {resolution}x{resolution}"
        );
        Ok(())
    }

    /// The shipped, trained classifier.
    pub fn shipped(gpu: &Gpu) -> Result<DigitClassifier> {
        let table = table();
        let values = table.load_bytes(SHIPPED).context("loading the shipped digit classifier")?;
        Ok(DigitClassifier { weights: ParamStore::upload(gpu, table, &values)? })
    }

    /// Freshly initialised weights (for training).
    pub fn init(gpu: &Gpu, seed: u64) -> Result<DigitClassifier> {
        let table = table();
        let values = table.init(seed, InitScheme::PyTorch);
        Ok(DigitClassifier { weights: ParamStore::upload(gpu, table, &values)? })
    }

    /// Features (N, 128) and logits (N, 10) of `x` (N, 1, 28, 28).
    pub fn forward(&self, tape: &mut Tape, p: &ParamVars, x: &Var) -> Result<(Var, Var)> {
        let n = x.shape()[0];
        ensure!(x.shape() == [n, 1, SIZE, SIZE], "digit classifier: input {:?} must be (N, 1, 28, 28)", x.shape());
        let mut h = x.clone();
        for (name, c_in, c_out, stride, size) in CONVS {
            let geometry = Conv2dGeometry::square(n, c_in, size, c_out, 3, stride, 1);
            let y = tape.conv2d(&h, p.get(&format!("{name}.weight"))?, p.get(&format!("{name}.bias"))?, geometry)?;
            h = tape.silu(&y)?;
        }
        let flat = tape.reshape(&h, &[n, HIDDEN])?;
        let hidden = tape.linear(&flat, p.get("fc1.weight")?, p.get("fc1.bias")?)?;
        let features = tape.silu(&hidden)?;
        let logits = tape.linear(&features, p.get("fc2.weight")?, p.get("fc2.bias")?)?;
        Ok((features, logits))
    }

    /// Features and class probabilities of 28x28 images, `batch` at a time.
    pub fn run(&self, gpu: &Gpu, pixels: &[f32], batch: usize) -> Result<Extracted> {
        let per = SIZE * SIZE;
        let count = pixels.len() / per;
        let mut out = Extracted { features: Vec::new(), dim: FEATURES, probs: Some(Vec::new()), classes: CLASSES };
        for start in (0..count).step_by(batch.max(1)) {
            let n = batch.min(count - start);
            let mut tape = Tape::new(gpu);
            let p = ParamVars::new(&mut tape, &self.weights, false)?;
            let x = tape.input(gpu.upload(&[n, 1, SIZE, SIZE], &pixels[start * per..(start + n) * per])?);
            let (features, logits) = self.forward(&mut tape, &p, &x)?;
            out.features.extend(gpu.read(&features.value)?);
            let logits: Vec<f64> = gpu.read(&logits.value)?.iter().map(|&v| v as f64).collect();
            let probs = crate::ops::cross_entropy::cpu::softmax(&logits, CLASSES);
            out.probs.as_mut().unwrap().extend(probs);
        }
        if out.features.iter().any(|v| !v.is_finite()) {
            bail!("the digit classifier produced non-finite features (corrupt weights?)");
        }
        Ok(out)
    }
}

impl FeatureExtractor for DigitClassifier {
    fn name(&self) -> &str {
        "digit classifier (LeNet-style, 128 features)"
    }

    fn accepts(&self, channels: usize, resolution: usize) -> Result<()> {
        DigitClassifier::accepts_shape(channels, resolution)
    }

    fn extract(&self, gpu: &Gpu, images: &Images) -> Result<Extracted> {
        self.accepts(images.channels, images.resolution)?;
        let r = images.resolution;
        let pixels: Vec<f32> = match r {
            SIZE => images.pixels.clone(),
            32 => images
                .pixels
                .chunks_exact(r * r)
                .flat_map(|img| (2..30).flat_map(move |y| img[y * r + 2..y * r + 30].iter().copied()))
                .collect(),
            _ => unreachable!("accepts() allows 28 and 32"),
        };
        self.run(gpu, &pixels, 256)
    }
}

/// How the classifier is trained (the example's defaults are the shipped run).
#[derive(Clone, Debug)]
pub struct TrainClassifier {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub seed: u64,
    /// Random shifts of up to this many pixels (augmentation).
    pub max_shift: usize,
}

impl Default for TrainClassifier {
    fn default() -> TrainClassifier {
        TrainClassifier { epochs: 12, batch_size: 64, lr: 2e-3, seed: 0, max_shift: 2 }
    }
}

/// Shift a 28x28 image by (dy, dx), filling with black (-1).
fn shifted(img: &[f32], dy: isize, dx: isize) -> impl Iterator<Item = f32> + '_ {
    (0..SIZE as isize).flat_map(move |y| {
        (0..SIZE as isize).map(move |x| {
            let (sy, sx) = (y - dy, x - dx);
            if (0..SIZE as isize).contains(&sy) && (0..SIZE as isize).contains(&sx) {
                img[sy as usize * SIZE + sx as usize]
            } else {
                -1.0
            }
        })
    })
}

impl DigitClassifier {
    /// Train on 28x28 `pixels` with `labels`: Adam with a cosine learning-rate
    /// decay, random shifts. Calls `progress(epoch, mean loss)` after each epoch.
    pub fn train(
        &self,
        gpu: &Gpu,
        pixels: &[f32],
        labels: &[usize],
        o: &TrainClassifier,
        progress: &mut dyn FnMut(usize, f64),
    ) -> Result<()> {
        let per = SIZE * SIZE;
        let count = labels.len();
        ensure!(pixels.len() == count * per && count >= o.batch_size, "train: {count} labels for the pixels given");
        let table = &self.weights.table;
        let flat = table.flat_len;
        let (m, v, grads) = (gpu.zeros(&[flat])?, gpu.zeros(&[flat])?, gpu.zeros(&[flat])?);
        let adam = Adam { max_grad_norm: 5.0, ..Adam::default() };
        let steps_per_epoch = count / o.batch_size;
        let total = (o.epochs * steps_per_epoch) as f32;
        let mut rng = StdRng::seed_from_u64(o.seed);
        let mut step = 0u64;
        for epoch in 0..o.epochs {
            let mut order: Vec<usize> = (0..count).collect();
            order.shuffle(&mut rng);
            let mut loss_sum = gpu.zeros(&[1])?;
            for b in 0..steps_per_epoch {
                let idx = &order[b * o.batch_size..(b + 1) * o.batch_size];
                let s = o.max_shift as i32;
                let mut batch = Vec::with_capacity(idx.len() * per);
                for &i in idx {
                    let (dy, dx) = (rng.random_range(-s..=s), rng.random_range(-s..=s));
                    batch.extend(shifted(&pixels[i * per..(i + 1) * per], dy as isize, dx as isize));
                }
                let batch_labels: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
                let mut tape = Tape::new(gpu);
                let p = ParamVars::with_grads_into(&mut tape, &self.weights, &grads)?;
                let x = tape.input(gpu.upload(&[idx.len(), 1, SIZE, SIZE], &batch)?);
                let (_, logits) = self.forward(&mut tape, &p, &x)?;
                let loss = tape.softmax_cross_entropy(&logits, &class_labels(gpu, &batch_labels, CLASSES)?)?;
                loss_sum = crate::ops::elementwise::add(gpu, &loss_sum, &loss.value)?;
                drop(tape.backward(&loss)?);
                let norm_sq = optimizer::grad_norm_sq(gpu, &grads)?;
                let lr = o.lr * 0.5 * (1.0 + (std::f32::consts::PI * step as f32 / total).cos());
                step += 1;
                optimizer::adam_step(gpu, &adam, step, lr, &self.weights.flat, &m, &v, &grads, &norm_sq)?;
                gpu.submit();
            }
            let mean = gpu.read(&loss_sum)?[0] as f64 / steps_per_epoch as f64;
            if !mean.is_finite() {
                bail!("the classifier's loss became {mean} in epoch {}", epoch + 1);
            }
            progress(epoch + 1, mean);
        }
        Ok(())
    }

    /// Fraction of `pixels` (28x28) whose most likely class is `labels`'.
    pub fn accuracy(&self, gpu: &Gpu, pixels: &[f32], labels: &[usize]) -> Result<f64> {
        let probs = self.run(gpu, pixels, 256)?.probs.unwrap_or_default();
        let hits = probs.chunks_exact(CLASSES).zip(labels).filter(|(p, &l)| argmax(p) == l).count();
        Ok(hits as f64 / labels.len().max(1) as f64)
    }

    /// The weights as safetensors bytes, with `metadata` (provenance).
    pub fn to_safetensors(&self, gpu: &Gpu, metadata: std::collections::HashMap<String, String>) -> Result<Vec<u8>> {
        self.weights.table.to_safetensors(&gpu.read(&self.weights.flat)?, Some(metadata))
    }
}

/// Index of the largest value.
pub fn argmax(values: &[f64]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}
