//! Trains the digit classifier `ddpm eval` uses, with this engine's own
//! kernels and tape, on the shipped MNIST digits: the first 1,000 atlas
//! tiles (100 of each digit, see assets/mnist/README.md) held out, the
//! other 9,000 for training. Writes
//! `assets/classifier/digit_classifier.safetensors` (or the path given as
//! the first argument) with the held-out accuracy in its metadata, and fails
//! if that accuracy is under 98%.
//!
//! cargo run --release --example digit_classifier

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{ensure, Result};
use ddpm_wgpu::data::{mnist_labels, Dataset};
use ddpm_wgpu::eval::classifier::{DigitClassifier, TrainClassifier, SIZE};
use ddpm_wgpu::{Gpu, GpuOptions};

const HELD_OUT: usize = 1000;

fn main() -> Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "assets/classifier/digit_classifier.safetensors".into());
    let gpu = Gpu::new(&GpuOptions::default())?;
    eprintln!("adapter: {}", gpu.info());
    let data = Dataset::mnist(SIZE, None)?;
    let labels = mnist_labels();
    let train = HELD_OUT..data.len();
    let pixels = |range: std::ops::Range<usize>| -> Vec<f32> { range.flat_map(|i| data.sample(i).to_vec()).collect() };
    let options = TrainClassifier::default();
    let classifier = DigitClassifier::init(&gpu, options.seed)?;
    let started = Instant::now();
    classifier.train(&gpu, &pixels(train.clone()), &labels[train.clone()], &options, &mut |epoch, loss| {
        eprintln!("epoch {epoch}/{}: loss {loss:.4} ({:.0} s)", options.epochs, started.elapsed().as_secs_f64());
    })?;
    let train_accuracy = classifier.accuracy(&gpu, &pixels(train.clone()), &labels[train.clone()])?;
    let accuracy = classifier.accuracy(&gpu, &pixels(0..HELD_OUT), &labels[..HELD_OUT])?;
    eprintln!(
        "accuracy: {:.2}% on the {} training digits, {:.2}% on the {HELD_OUT} held out",
        100.0 * train_accuracy,
        train.len(),
        100.0 * accuracy
    );
    ensure!(accuracy >= 0.98, "held-out accuracy {:.2}% is under 98%: not written", 100.0 * accuracy);
    let metadata = HashMap::from([
        ("held_out_accuracy".to_string(), format!("{accuracy:.4}")),
        ("train_accuracy".to_string(), format!("{train_accuracy:.4}")),
        ("trained_with".to_string(), "cargo run --release --example digit_classifier".to_string()),
        ("options".to_string(), format!("{options:?}")),
        ("data".to_string(), format!("assets/mnist tiles {}..{}; held out 0..{HELD_OUT}", train.start, train.end)),
        ("adapter".to_string(), gpu.info().to_string()),
    ]);
    std::fs::write(&out, classifier.to_safetensors(&gpu, metadata)?)?;
    eprintln!("wrote {out} in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
