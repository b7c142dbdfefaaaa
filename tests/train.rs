//! The trainer's logs: each step's loss per timestep decile comes from the
//! per-sample losses, with a count-weighted mean equal to the step's loss;
//! steady-state steps (readbacks included) allocate no GPU buffer; and
//! `metrics.csv` gets one 19-column row per step; min-SNR weights each
//! sample's loss by its timestep.

mod common;

use std::collections::BTreeMap;

use ddpm_wgpu::data::Dataset;
use ddpm_wgpu::schedule::SchedulerConfig;
use ddpm_wgpu::train::{
    append_metrics, decile_of, resume_metrics, StepLog, TrainOptions, Trainer, DECILES, METRICS_HEADER,
};
use ddpm_wgpu::unet::UNetConfig;

fn tiny_config() -> UNetConfig {
    UNetConfig::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_unet_28.json")))
        .unwrap()
}

#[test]
fn deciles_split_timesteps_evenly() {
    assert_eq!([0, 99, 100, 999].map(|t| decile_of(t, 1000)), [0, 0, 1, 9]);
    assert_eq!([0, 1, 2, 19].map(|t| decile_of(t, 20)), [0, 0, 1, 9]);
    // T = 15: buckets of 1 or 2 timesteps, all ten used.
    let used: std::collections::BTreeSet<usize> = (0..15).map(|t| decile_of(t, 15)).collect();
    assert_eq!(used.len(), DECILES);
}

#[test]
fn step_logs_split_the_loss_by_timestep_decile() {
    let (_turn, gpu) = common::gpu();
    let config = tiny_config();
    let data = Dataset::mnist(28, Some(16)).unwrap();
    let batch = 6;
    let options = TrainOptions { batch_size: batch, steps: 100, warmup: 2, ..TrainOptions::default() };
    // 20 timesteps: deciles two wide, so a batch of 6 lands in several.
    let scheduler = SchedulerConfig { num_train_timesteps: 20, ..SchedulerConfig::default() };
    let mut trainer = Trainer::new(&gpu, &config, scheduler, options, [1, 28, 28]).unwrap();
    let mut logs = Vec::new();
    let mut allocations = 0;
    for round in 0..3 {
        for _ in 0..2 {
            trainer.train_step(&data).unwrap();
        }
        logs.extend(trainer.read_logs().unwrap());
        if round == 0 {
            allocations = gpu.pool_stats().allocations;
        }
    }
    assert_eq!(gpu.pool_stats().allocations, allocations, "steady-state training steps allocated GPU buffers");
    assert_eq!(logs.iter().map(|l| l.step).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    let mut split = 0;
    for l in &logs {
        assert_eq!(l.decile_count.iter().sum::<u32>(), batch as u32, "{l:?}");
        let mut weighted = 0.0;
        for d in 0..DECILES {
            let (mean, count) = (l.decile_loss[d], l.decile_count[d]);
            if count == 0 {
                assert!(mean.is_nan(), "step {}: decile {d} has no sample but loss {mean}", l.step);
            } else {
                assert!(mean.is_finite() && mean > 0.0, "step {}: decile {d} loss {mean}", l.step);
                weighted += count as f64 * mean as f64;
            }
        }
        let mean = weighted / batch as f64;
        let rel = (mean - l.loss as f64).abs() / l.loss as f64;
        assert!(
            rel < 1e-5,
            "step {}: deciles average {mean}, the step's loss is {} (relative {rel:e})",
            l.step,
            l.loss
        );
        split += usize::from(l.decile_count.iter().filter(|&&c| c > 0).count() > 1);
    }
    assert!(split > 0, "no step had samples in two deciles: {logs:?}");
}

/// Min-SNR weighting for each prediction type: with T = 10 every decile is
/// one timestep, so each step's (weighted) loss must be the logged
/// unweighted per-timestep losses times that timestep's weight, averaged.
#[test]
fn min_snr_loss_weights_each_sample_by_its_timestep() {
    use ddpm_wgpu::schedule::{PredictionType, Schedule};
    use ddpm_wgpu::train::min_snr_weights;
    let (_turn, gpu) = common::gpu();
    let config = tiny_config();
    let data = Dataset::mnist(28, Some(16)).unwrap();
    let batch = 6;
    let gamma = 2.0;
    for prediction in [PredictionType::Epsilon, PredictionType::VPrediction, PredictionType::Sample] {
        let options = TrainOptions { batch_size: batch, steps: 100, min_snr_gamma: gamma, ..TrainOptions::default() };
        // Betas up to 0.3: the SNR falls from ~1e4 to below gamma, so every type's weights vary.
        let scheduler = SchedulerConfig {
            num_train_timesteps: DECILES,
            beta_end: 0.3,
            prediction_type: prediction,
            ..SchedulerConfig::default()
        };
        let weights = min_snr_weights(&Schedule::new(scheduler.clone()).unwrap(), gamma);
        let (lo, hi) = weights.iter().fold((f32::INFINITY, 0.0f32), |(lo, hi), &w| (lo.min(w), hi.max(w)));
        assert!(lo > 0.0 && hi > 1.5 * lo, "{prediction}: weights {weights:?} barely vary");
        let mut trainer = Trainer::new(&gpu, &config, scheduler, options, [1, 28, 28]).unwrap();
        for _ in 0..3 {
            trainer.train_step(&data).unwrap();
        }
        for l in trainer.read_logs().unwrap() {
            let weighted: f64 = (0..DECILES)
                .filter(|&d| l.decile_count[d] > 0)
                .map(|d| l.decile_count[d] as f64 * weights[d] as f64 * l.decile_loss[d] as f64)
                .sum::<f64>()
                / batch as f64;
            let rel = (weighted - l.loss as f64).abs() / l.loss as f64;
            assert!(rel < 1e-5, "{prediction} step {}: weighted {weighted} vs loss {} ({rel:e})", l.step, l.loss);
        }
    }
}

fn log(step: u64, decile_loss: [f32; DECILES]) -> StepLog {
    let decile_count = decile_loss.map(|v| u32::from(!v.is_nan()));
    StepLog { step, loss: 0.5, grad_norm: 2.0, lr: 1e-3, decile_loss, decile_count }
}

#[test]
fn metrics_rows_have_the_decile_and_eval_columns() {
    let dir = std::env::temp_dir().join(format!("ddpm-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut deciles = [f32::NAN; DECILES];
    deciles[0] = 0.25;
    deciles[9] = 0.125;
    let eval = BTreeMap::from([(2, [12.5, 3.0, 0.75, 0.0625])]);
    append_metrics(&dir, &[log(1, deciles), log(2, [0.5; DECILES])], 10.0, &eval).unwrap();
    append_metrics(&dir, &[log(3, deciles)], 10.0, &BTreeMap::new()).unwrap();
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], METRICS_HEADER);
    assert_eq!(METRICS_HEADER.split(',').count(), 19);
    assert_eq!(lines[1], "1,0.5,0.001,2,10.00,0.25,,,,,,,,,0.125,,,,");
    assert_eq!(lines[2], "2,0.5,0.001,2,10.00,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,12.5,3,0.75,0.0625");
    assert_eq!(lines[3], "3,0.5,0.001,2,10.00,0.25,,,,,,,,,0.125,,,,");
    assert_eq!(lines.len(), 4);

    // Resuming at step 2 drops the rows after it.
    resume_metrics(&dir, 2).unwrap();
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert_eq!(text.lines().collect::<Vec<_>>(), lines[..3].to_vec());

    // A file from an older run (5 columns) is rewritten under the new header, columns by name.
    let old = "step,loss,lr,grad_norm,images_per_second\n1,0.9,0.001,1,5.00\n2,0.8,0.001,1,5.00\n";
    std::fs::write(dir.join("metrics.csv"), old).unwrap();
    resume_metrics(&dir, 1).unwrap();
    append_metrics(&dir, &[log(2, deciles)], 10.0, &BTreeMap::new()).unwrap();
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], METRICS_HEADER);
    assert_eq!(lines[1], "1,0.9,0.001,1,5.00,,,,,,,,,,,,,,");
    assert_eq!(lines[2], "2,0.5,0.001,2,10.00,0.25,,,,,,,,,0.125,,,,");
    assert_eq!(lines.len(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_training_step_is_one_submission_copies_no_gradient_and_reuses_its_bind_groups() {
    let (_turn, gpu) = common::gpu();
    let data = Dataset::mnist(28, Some(16)).unwrap();
    let options = TrainOptions { batch_size: 4, steps: 100, warmup: 2, min_snr_gamma: 5.0, ..TrainOptions::default() };
    let mut trainer = Trainer::new(&gpu, &tiny_config(), SchedulerConfig::default(), options, [1, 28, 28]).unwrap();
    // Steady state is a cycle through the log slots (each step writes the
    // next one, read back when they are full): the first cycle fills the
    // pool and the bind-group cache.
    let mut step = |measure: bool| {
        let before = (gpu.copy_count(), gpu.bind_group_count(), gpu.submission_count(), gpu.launch_count());
        trainer.train_step(&data).unwrap();
        let after = (gpu.copy_count(), gpu.bind_group_count(), gpu.submission_count(), gpu.launch_count());
        if measure {
            // Two copies: the loss and gradient norm into their log slots; no gradient is copied.
            assert_eq!(after.0 - before.0, 2, "copies in one step");
            assert_eq!(after.1 - before.1, 0, "bind groups created in a steady-state step");
            assert_eq!(after.2 - before.2, 1, "queue submissions in one step");
            assert!(after.3 - before.3 > 50, "the step launched only {} kernels", after.3 - before.3);
        }
        if trainer.logs_full() {
            assert!(trainer.read_logs().unwrap().iter().all(|l| l.loss.is_finite()));
        }
    };
    for s in 0..25 {
        step(s >= 12);
    }
}

#[test]
fn gradient_accumulation_gives_the_gradient_of_one_large_batch() {
    let (_turn, gpu) = common::gpu();
    let config = tiny_config();
    let data = Dataset::mnist(28, Some(40)).unwrap();
    let first_step = |batch_size: usize, grad_accum: usize, min_snr_gamma: f32| {
        let options =
            TrainOptions { batch_size, grad_accum, steps: 10, warmup: 0, min_snr_gamma, ..TrainOptions::default() };
        let mut trainer = Trainer::new(&gpu, &config, SchedulerConfig::default(), options, [1, 28, 28]).unwrap();
        trainer.train_step(&data).unwrap();
        let log = trainer.read_logs().unwrap()[0];
        (trainer.read_gradients().unwrap(), log)
    };
    for gamma in [0.0, 5.0] {
        let (whole, whole_log) = first_step(16, 1, gamma);
        let (accumulated, accumulated_log) = first_step(4, 4, gamma);
        let norm = |g: &[f32]| g.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let diff: Vec<f32> = whole.iter().zip(&accumulated).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(&whole);
        // f32 sums over 16 samples against four sums of four.
        assert!(norm(&whole) > 0.0 && rel < 1e-5, "gamma {gamma}: gradients differ by {rel:e} relative");
        let max_diff = diff.iter().fold(0f32, |m, d| m.max(d.abs()));
        let max = whole.iter().fold(0f32, |m, d| m.max(d.abs()));
        assert!(max_diff <= 1e-5 * max, "gamma {gamma}: largest difference {max_diff:e} of {max:e}");
        let close = |a: f32, b: f32| ((a - b) / b).abs() < 1e-5;
        assert!(close(accumulated_log.loss, whole_log.loss), "{accumulated_log:?} vs {whole_log:?}");
        assert!(close(accumulated_log.grad_norm, whole_log.grad_norm), "{accumulated_log:?} vs {whole_log:?}");
        assert_eq!(accumulated_log.decile_count, whole_log.decile_count);
    }
}

#[test]
fn learning_rate_schedules_follow_diffusers_after_the_warm_up() {
    use ddpm_wgpu::train::LrSchedule::{Constant, Cosine, Linear};
    let (lr, warmup, steps) = (1e-3f32, 10, 110);
    for schedule in [Constant, Cosine, Linear] {
        // Warm-up: step s (0-based) trains at lr (s + 1) / warmup.
        assert_eq!(schedule.lr_at(lr, 0, warmup, steps), lr / 10.0);
        assert_eq!(schedule.lr_at(lr, 9, warmup, steps), lr);
        assert_eq!(schedule.lr_at(lr, 10, warmup, steps), lr, "{schedule:?} starts its decay from lr");
    }
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * lr;
    // diffusers: progress = (s - warmup) / (steps - warmup); cosine 0.5 (1 + cos(pi progress)).
    assert!(close(Cosine.lr_at(lr, 60, warmup, steps), 0.5 * lr));
    assert!(close(Cosine.lr_at(lr, 35, warmup, steps), lr * (0.5 + 0.5 * std::f32::consts::FRAC_1_SQRT_2)));
    assert!(close(Linear.lr_at(lr, 35, warmup, steps), 0.75 * lr));
    assert!(close(Linear.lr_at(lr, 110, warmup, steps), 0.0) && close(Cosine.lr_at(lr, 110, warmup, steps), 0.0));
    assert_eq!(Constant.lr_at(lr, 109, warmup, steps), lr);
    for schedule in [Cosine, Linear] {
        let lrs: Vec<f32> = (warmup..steps).map(|s| schedule.lr_at(lr, s, warmup, steps)).collect();
        assert!(lrs.windows(2).all(|w| w[1] < w[0]), "{schedule:?} does not decrease: {lrs:?}");
        assert!(*lrs.last().unwrap() > 0.0, "{schedule:?}: the last step trains at lr 0");
    }
}

#[test]
fn dropout_acts_in_training_only_and_a_resumed_run_redraws_its_masks() {
    use ddpm_wgpu::tape::Tape;
    use ddpm_wgpu::train::DataSpec;
    use ddpm_wgpu::unet::{ParamStore, ParamVars, UNet};
    let (_turn, gpu) = common::gpu();
    let data = Dataset::mnist(28, Some(16)).unwrap();
    let spec = DataSpec { folder: None, resolution: 28, channels: 1, limit: Some(16) };
    let with_dropout = UNetConfig { dropout: 0.3, ..tiny_config() };
    let options = TrainOptions { batch_size: 4, steps: 10, warmup: 0, ..TrainOptions::default() };
    let losses = |config: &UNetConfig, steps: usize| {
        let mut t = Trainer::new(&gpu, config, SchedulerConfig::default(), options.clone(), [1, 28, 28]).unwrap();
        (0..steps).for_each(|_| t.train_step(&data).unwrap());
        (t.read_logs().unwrap().iter().map(|l| l.loss.to_bits()).collect::<Vec<_>>(), t)
    };
    let (straight, _) = losses(&with_dropout, 3);
    let (without, _) = losses(&tiny_config(), 3);
    assert!(straight != without, "dropout 0.3 left the losses unchanged");
    let (again, _) = losses(&with_dropout, 3);
    assert!(straight == again, "dropout masks are not reproducible");
    // Two steps, a checkpoint, a resume and the third step: the same losses.
    let dir = std::env::temp_dir().join(format!("ddpm-dropout-resume-{}", std::process::id()));
    let (first, trainer) = losses(&with_dropout, 2);
    trainer.save_checkpoint(&dir, &spec).unwrap();
    drop(trainer);
    let (mut resumed, _) = Trainer::resume(&gpu, &dir, None, [1, 28, 28]).unwrap();
    assert_eq!(resumed.unet.config().dropout, 0.3);
    resumed.train_step(&data).unwrap();
    let third = resumed.read_logs().unwrap()[0].loss.to_bits();
    assert!([first, vec![third]].concat() == straight, "the resumed run drew other masks");
    // Eval mode: the same output as the model without dropout.
    let unet = UNet::new(&with_dropout).unwrap();
    // Perturbed: the default init zeroes every conv2 (and conv_out), hiding what comes before.
    let mut r = common::rng();
    let weights: Vec<f32> = unet
        .table
        .init(1, ddpm_wgpu::unet::layout::InitScheme::Ddpm)
        .iter()
        .map(|w| w + 0.05 * (rand::Rng::random::<f32>(&mut r) - 0.5))
        .collect();
    let store = ParamStore::upload(&gpu, unet.table.clone(), &weights).unwrap();
    let x = gpu.upload(&[2, 1, 28, 28], &data.pixels()[..2 * 784]).unwrap();
    let t = ddpm_wgpu::ops::ddpm::timesteps(&gpu, &[10, 500]).unwrap();
    let run = |unet: &UNet, train: bool| {
        let mut tape = Tape::new(&gpu);
        let p = ParamVars::new(&mut tape, &store, false).unwrap();
        let xv = tape.input(x.clone());
        let key = ddpm_wgpu::ops::ddpm::NoiseKey { seed: 0, step: 0, first_sample: 0 };
        let out = if train {
            unet.forward_train(&mut tape, &p, &xv, &t, None, key)
        } else {
            unet.forward(&mut tape, &p, &xv, &t, None)
        };
        gpu.read(&out.unwrap().value).unwrap()
    };
    let plain = UNet::new(&tiny_config()).unwrap();
    let eval = run(&unet, false);
    assert!(eval.iter().any(|&v| v != 0.0) && eval == run(&plain, false), "eval mode must not drop");
    assert!(run(&plain, true) == run(&plain, false), "dropout 0 must not change training mode");
    assert!(run(&unet, true) != eval, "training mode must drop");
    std::fs::remove_dir_all(&dir).unwrap();
}
