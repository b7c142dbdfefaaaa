//! The variational bound (NLL in bits/dim): the CPU twin's pieces against
//! independent formulas, the fused kernels against the twin, the whole
//! bound of an exact noise predictor against its closed form, and a
//! briefly trained UNet scoring better than the same UNet at init.

mod common;

use common::{assert_close, each_path, rng};
use ddpm_wgpu::nll::{self, NllRequest};
use ddpm_wgpu::ops::ddpm;
use ddpm_wgpu::ops::elementwise as ew;
use ddpm_wgpu::ops::vlb::{self, cpu, VlbTables};
use ddpm_wgpu::schedule::{BetaSchedule, Schedule, SchedulerConfig, VarianceType};
use ddpm_wgpu::{Gpu, Tensor};
use rand::{rngs::StdRng, Rng};
use rand_distr::StandardNormal;

const LN_2: f64 = std::f64::consts::LN_2;

/// Composite Simpson's rule of `f` over [a, b] with `intervals` (even) pieces.
fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, intervals: usize) -> f64 {
    let h = (b - a) / intervals as f64;
    let inner: f64 = (1..intervals).map(|i| f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
    (f(a) + f(b) + inner) * h / 3.0
}

fn normal_pdf(x: f64, mean: f64, var: f64) -> f64 {
    (-(x - mean).powi(2) / (2.0 * var)).exp() / (2.0 * std::f64::consts::PI * var).sqrt()
}

/// Phi(x) by integrating the density from 0.
fn normal_cdf(x: f64) -> f64 {
    0.5 + simpson(|u| normal_pdf(u, 0.0, 1.0), 0.0, x, 2000)
}

/// A value of 8-bit data: level k in 0..=255 rescaled to [-1, 1].
fn level(k: u32) -> f32 {
    k as f32 / 127.5 - 1.0
}

fn normal(r: &mut StdRng) -> f32 {
    r.sample(StandardNormal)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn cpu_normal_kl_matches_known_values_and_a_numeric_integral() {
    assert_eq!(cpu::normal_kl(0.3, -1.2, 0.3, -1.2), 0.0);
    assert!((cpu::normal_kl(1.0, 0.0, 0.0, 0.0) - 0.5).abs() < 1e-15);
    // KL(N(0, 4) || N(0, 1)) = 0.5 (4 - 1 - ln 4).
    assert!((cpu::normal_kl(0.0, 4f64.ln(), 0.0, 0.0) - 0.5 * (3.0 - 4f64.ln())).abs() < 1e-15);
    let mut r = rng();
    for _ in 0..20 {
        let (m1, m2): (f64, f64) = (r.random_range(-2.0..2.0), r.random_range(-2.0..2.0));
        let (lv1, lv2): (f64, f64) = (r.random_range(-3.0..1.5), r.random_range(-3.0..1.5));
        let (v1, v2) = (lv1.exp(), lv2.exp());
        let sd1 = v1.sqrt();
        let log_pdf =
            |x: f64, m: f64, v: f64| -(x - m).powi(2) / (2.0 * v) - 0.5 * (2.0 * std::f64::consts::PI * v).ln();
        let integrand = |x: f64| normal_pdf(x, m1, v1) * (log_pdf(x, m1, v1) - log_pdf(x, m2, v2));
        let numeric = simpson(integrand, m1 - 14.0 * sd1, m1 + 14.0 * sd1, 20000);
        let closed = cpu::normal_kl(m1, lv1, m2, lv2);
        assert!(
            (numeric - closed).abs() < 1e-7 * (1.0 + closed),
            "({m1}, {lv1}) || ({m2}, {lv2}): {closed} vs {numeric}"
        );
    }
}

#[test]
fn cpu_cdf_approximates_the_normal_cdf() {
    let mut worst: f64 = 0.0;
    for i in -80..=80 {
        let x = i as f64 / 10.0;
        let approx = cpu::approx_std_normal_cdf(x);
        worst = worst.max((approx - normal_cdf(x)).abs());
        // Odd about 0: the kernel relies on cdf(-x) = 1 - cdf(x).
        assert!((approx + cpu::approx_std_normal_cdf(-x) - 1.0).abs() < 1e-15);
    }
    eprintln!("tanh CDF approximation: worst error {worst:.2e} on [-8, 8]");
    assert!(worst < 3e-4, "worst error {worst}");
}

#[test]
fn cpu_discretized_likelihood_sums_to_one_over_the_256_bins() {
    let mut r = rng();
    for _ in 0..30 {
        let mean: f64 = r.random_range(-1.2..1.2);
        let log_scale: f64 = r.random_range(-6.0..0.5);
        // Levels in f64, so neighbouring bins share their edges exactly.
        let level64 = |k: u32| k as f64 / 127.5 - 1.0;
        let masses: Vec<f64> =
            (0..256).map(|k| cpu::discretized_gaussian_log_likelihood(level64(k), mean, log_scale).exp()).collect();
        let total: f64 = masses.iter().sum();
        // Clamped bins (mass < 1e-12) count as 1e-12 each.
        assert!((total - 1.0).abs() < 1e-9, "mean {mean}, log_scale {log_scale}: masses sum to {total}");
        // An interior bin's mass is a difference of CDFs at the bin edges.
        let k = r.random_range(1..255);
        let s = log_scale.exp();
        let x = level64(k);
        let want = cpu::approx_std_normal_cdf((x + 1.0 / 255.0 - mean) / s)
            - cpu::approx_std_normal_cdf((x - 1.0 / 255.0 - mean) / s);
        assert!((masses[k as usize] - want.max(1e-12)).abs() < 1e-12);
    }
    // Edge bins run to infinity: a mean far below -1 puts all the mass on level 0.
    assert!(cpu::discretized_gaussian_log_likelihood(-1.0, -5.0, -3.0).abs() < 1e-12);
    assert!(cpu::discretized_gaussian_log_likelihood(1.0, 5.0, -3.0).abs() < 1e-12);
    assert!((cpu::discretized_gaussian_log_likelihood(0.0, 5.0, -3.0) - 1e-12f64.ln()).abs() < 1e-12);
}

/// Random 8-bit data with both extremes, x_t from it at the given timesteps,
/// and the model's eps as the true noise plus an error whose size varies by
/// sample (0: exact; large: the decoder's tails and clipping).
fn random_case(r: &mut StdRng, s: &Schedule, shape: &[usize], t: &[usize]) -> [Vec<f32>; 3] {
    let dim: usize = shape[1..].iter().product();
    let mut x0: Vec<f32> = (0..shape[0] * dim).map(|_| level(r.random_range(0..=255))).collect();
    x0[0] = -1.0;
    x0[dim - 1] = 1.0;
    let eps: Vec<f32> = (0..x0.len()).map(|_| normal(r)).collect();
    let errors = [0.0, 0.05, 0.3, 1.0, 4.0];
    let (mut xt, mut eps_pred) = (Vec::new(), Vec::new());
    for (e, (&x, &z)) in x0.iter().zip(&eps).enumerate() {
        let ti = t[e / dim];
        xt.push((s.sqrt_alphas_cumprod[ti] * x as f64 + s.sqrt_one_minus_alphas_cumprod[ti] * z as f64) as f32);
        let size = errors[(e / dim + ti) % errors.len()];
        eps_pred.push(z + size * normal(r));
    }
    [x0, xt, eps_pred]
}

#[test]
fn gpu_vlb_terms_and_prior_match_the_cpu_twin() {
    let mut r = rng();
    let configs = [
        SchedulerConfig::default(),
        SchedulerConfig { variance_type: VarianceType::FixedLarge, clip_sample: false, ..SchedulerConfig::default() },
        SchedulerConfig { variance_type: VarianceType::FixedLarge, ..SchedulerConfig::default() },
        SchedulerConfig { beta_schedule: BetaSchedule::SquaredCosCapV2, ..SchedulerConfig::default() },
    ];
    let shapes = [vec![3, 1, 7, 5], vec![2, 3, 8, 8], vec![2, 3, 13, 11], vec![1, 1, 1, 1], vec![5, 2, 4, 4]];
    each_path(|gpu, path| {
        let mut worst: f64 = 0.0;
        for config in &configs {
            let s = Schedule::new(config.clone()).unwrap();
            let tables = VlbTables::new(gpu, &s).unwrap();
            let last = s.len() - 1;
            for shape in &shapes {
                for round in 0..4 {
                    let t: Vec<usize> =
                        (0..shape[0]).map(|n| [0, 1, last, r.random_range(2..last)][(n + round) % 4]).collect();
                    let [x0, xt, eps] = random_case(&mut r, &s, shape, &t);
                    let up = |v: &[f32]| gpu.upload(shape, v).unwrap();
                    let (x0_g, xt_g, eps_g) = (up(&x0), up(&xt), up(&eps));
                    let t_g = ddpm::timesteps(gpu, &t).unwrap();
                    let got = gpu.read(&vlb::vlb_terms(gpu, &tables, &x0_g, &xt_g, &eps_g, &t_g).unwrap()).unwrap();
                    let want = cpu::vlb_terms(&s, &x0, &xt, &eps, &t);
                    let what = format!("vlb_terms {shape:?} t={t:?} {config:?} on {path:?}");
                    assert_close(&what, &got, &to_f32(&want), 1e-4, 1e-4);
                    for (g, w) in got.iter().zip(&want) {
                        worst = worst.max((*g as f64 - w).abs() / (1.0 + w.abs()));
                    }
                    let got = gpu.read(&vlb::prior_bpd(gpu, &tables, &x0_g).unwrap()).unwrap();
                    let want = cpu::prior_bpd(&s, &x0, shape[0]);
                    assert_close(
                        &format!("prior_bpd {shape:?} {config:?} on {path:?}"),
                        &got,
                        &to_f32(&want),
                        1e-7,
                        1e-5,
                    );
                }
            }
        }
        eprintln!("{path:?}: worst |gpu - cpu| / (1 + |cpu|) of the terms {worst:.2e}");
    });
}

#[test]
fn non_finite_inputs_mark_their_sample_only() {
    let (_turn, gpu) = common::gpu();
    let mut r = rng();
    let s = Schedule::new(SchedulerConfig::default()).unwrap();
    let tables = VlbTables::new(&gpu, &s).unwrap();
    let shape = [4, 1, 5, 3];
    let t = [0, 7, 0, 500];
    let [x0, xt, mut eps] = random_case(&mut r, &s, &shape, &t);
    eps[15 + 4] = f32::NAN; // sample 1 (KL)
    eps[2 * 15 + 14] = f32::INFINITY; // sample 2 (decoder)
    let up = |v: &[f32]| gpu.upload(&shape, v).unwrap();
    let got = gpu
        .read(
            &vlb::vlb_terms(&gpu, &tables, &up(&x0), &up(&xt), &up(&eps), &ddpm::timesteps(&gpu, &t).unwrap()).unwrap(),
        )
        .unwrap();
    let marked: Vec<bool> = got.iter().map(|&v| vlb::is_not_finite(v)).collect();
    assert_eq!(marked, [false, true, true, false], "terms {got:?}");
    let mut bad_x0 = x0.clone();
    bad_x0[3 * 15] = f32::NAN;
    let prior = gpu.read(&vlb::prior_bpd(&gpu, &tables, &up(&bad_x0)).unwrap()).unwrap();
    assert_eq!(prior.iter().map(|&v| vlb::is_not_finite(v)).collect::<Vec<_>>(), [false, false, false, true]);
}

#[test]
fn kernels_name_the_op_and_shapes_on_mismatch() {
    let (_turn, gpu) = common::gpu();
    let s = Schedule::new(SchedulerConfig::default()).unwrap();
    let tables = VlbTables::new(&gpu, &s).unwrap();
    let x = gpu.zeros(&[2, 1, 4, 4]).unwrap();
    let other = gpu.zeros(&[2, 1, 4, 3]).unwrap();
    let t = ddpm::timesteps(&gpu, &[0, 1]).unwrap();
    let err = vlb::vlb_terms(&gpu, &tables, &x, &x, &other, &t).unwrap_err().to_string();
    assert!(err.contains("vlb_terms") && err.contains("[2, 1, 4, 3]") && err.contains("[2, 1, 4, 4]"), "{err}");
    let t3 = ddpm::timesteps(&gpu, &[0, 1, 2]).unwrap();
    let err = vlb::vlb_terms(&gpu, &tables, &x, &x, &x, &t3).unwrap_err().to_string();
    assert!(err.contains("vlb_terms") && err.contains("[3]"), "{err}");
    let out = gpu.zeros(&[3]).unwrap();
    let err = vlb::prior_bpd_into(&gpu, &tables, &out, &x).unwrap_err().to_string();
    assert!(err.contains("prior_bpd") && err.contains("[3]"), "{err}");
}

#[test]
fn strided_timesteps_are_midpoints_of_equal_strata() {
    assert_eq!(nll::evaluated_timesteps(5, None).unwrap(), [4, 3, 2, 1, 0]);
    // Every timestep when k = T - 1.
    assert_eq!(nll::evaluated_timesteps(50, Some(49)).unwrap(), nll::evaluated_timesteps(50, None).unwrap());
    // T = 1000, k = 10: 1 + floor((2j + 1) 999 / 20).
    assert_eq!(nll::evaluated_timesteps(1000, Some(10)).unwrap(), [950, 850, 750, 650, 550, 450, 350, 250, 150, 50, 0]);
    for (steps, k) in [(50, 7), (1000, 1), (1000, 333), (1000, 998), (4, 2)] {
        let idx = nll::evaluated_timesteps(steps, Some(k)).unwrap();
        assert_eq!(idx.len(), k + 1);
        assert_eq!(*idx.last().unwrap(), 0);
        assert!(idx[..k].windows(2).all(|w| w[0] > w[1]), "{steps}, {k}: {idx:?}");
        assert!(idx[..k].iter().all(|&i| (1..steps).contains(&i)));
    }
    assert!(nll::evaluated_timesteps(50, Some(0)).is_err());
    assert!(nll::evaluated_timesteps(50, Some(50)).is_err());
}

/// The bound of the exact noise predictor for data that is one image x*,
/// in closed form from the schedule: the model's x0 is x* exactly, so the
/// decoder is centred on the data, and each KL term is only the mismatch
/// of the posterior's and the model's variances (zero for fixed_small).
fn closed_form(s: &Schedule, star: &[f32], indices: &[usize]) -> (f64, f64, f64) {
    let abar = s.alphas_cumprod[s.len() - 1];
    let dim = star.len() as f64;
    let prior =
        star.iter().map(|&x| 0.5 * (-1.0 - (1.0 - abar).ln() + (1.0 - abar) + abar * (x as f64).powi(2))).sum::<f64>()
            / dim
            / LN_2;
    let log_scale = 0.5 * s.posterior_variance[1].ln();
    let decoder =
        star.iter().map(|&x| -cpu::discretized_gaussian_log_likelihood(x as f64, x as f64, log_scale)).sum::<f64>()
            / dim
            / LN_2;
    let kl_steps: Vec<usize> = indices.iter().copied().filter(|&i| i > 0).collect();
    let kl_sum: f64 = kl_steps
        .iter()
        .map(|&i| {
            let posterior = s.posterior_variance[i].ln();
            let model = match s.config.variance_type {
                VarianceType::FixedSmall => posterior,
                VarianceType::FixedLarge => s.betas[i].ln(),
            };
            0.5 * (-1.0 + model - posterior + (posterior - model).exp()) / LN_2
        })
        .sum();
    (prior, decoder, kl_sum * (s.len() - 1) as f64 / kl_steps.len() as f64)
}

#[test]
fn exact_predictor_bound_matches_its_closed_form() {
    let (_turn, gpu) = common::gpu();
    let mut r = rng();
    let shape = [3, 2, 5, 6];
    let dim = 60;
    let mut star: Vec<f32> = (0..dim).map(|_| level(r.random_range(0..=255))).collect();
    star[..4].copy_from_slice(&[-1.0, 1.0, -1.0, 1.0]);
    let batch: Vec<f32> = (0..shape[0]).flat_map(|_| star.clone()).collect();
    let star_t = gpu.upload(&shape, &batch).unwrap();
    for variance_type in [VarianceType::FixedSmall, VarianceType::FixedLarge] {
        let scheduler = SchedulerConfig { num_train_timesteps: 50, variance_type, ..SchedulerConfig::default() };
        let s = Schedule::new(scheduler.clone()).unwrap();
        for timesteps in [None, Some(7)] {
            let mut calls = Vec::new();
            let mut exact = |x: &Tensor, _t: &Tensor, i: usize, _first: usize| {
                calls.push(i);
                let centred = ew::axpy(&gpu, x, -s.sqrt_alphas_cumprod[i] as f32, &star_t)?;
                ew::scale(&gpu, &centred, 1.0 / s.sqrt_one_minus_alphas_cumprod[i] as f32)
            };
            let mut shown = Vec::new();
            let request = NllRequest { seed: 9, first_sample: 0, timesteps };
            let report =
                nll::bits_per_dim(&gpu, &mut exact, &scheduler, &star_t, &request, &mut |k, n| shown.push((k, n)))
                    .unwrap();
            let indices = nll::evaluated_timesteps(50, timesteps).unwrap();
            assert_eq!(calls, indices, "one model call per evaluated timestep");
            assert_eq!(shown.last(), Some(&(indices.len(), indices.len())));
            assert_eq!(shown.len(), indices.len());
            assert_eq!((report.evaluated_timesteps, report.strided), (indices.len(), timesteps.is_some()));
            let (prior, decoder, kl) = closed_form(&s, &star, &indices);
            let what = format!("{variance_type:?} timesteps {timesteps:?}");
            eprintln!("{what}: {report:?}; closed form prior {prior:.6} decoder {decoder:.6} kl {kl:.6}");
            let close = |name: &str, got: f64, want: f64| {
                assert!((got - want).abs() <= 1e-5 + 1e-5 * want.abs(), "{what}: {name} {got} vs closed form {want}");
            };
            close("prior", report.prior, prior);
            close("decoder", report.decoder, decoder);
            close("kl", report.kl, kl);
            close("bits/dim", report.bits_per_dim, prior + decoder + kl);
            assert_eq!(report.per_sample.len(), shape[0]);
            for &v in &report.per_sample {
                close("a sample's total", v, prior + decoder + kl);
            }
        }
    }
}

#[test]
fn bits_per_dim_reports_bad_input_and_non_finite_terms() {
    let (_turn, gpu) = common::gpu();
    let scheduler = SchedulerConfig { num_train_timesteps: 40, ..SchedulerConfig::default() };
    let zeros_like = |gpu: &Gpu, x: &Tensor| gpu.zeros(x.shape());
    let request = NllRequest { seed: 1, first_sample: 0, timesteps: None };
    let run = |x0: &Tensor, model: &mut ddpm_wgpu::sample::NoisePredictor| {
        nll::bits_per_dim(&gpu, model, &scheduler, x0, &request, &mut |_, _| {}).unwrap_err().to_string()
    };
    let off_grid = gpu.upload(&[1, 1, 2, 2], &[0.0, 0.5, level(3), -1.0]).unwrap();
    let err = run(&off_grid, &mut |x: &Tensor, _: &Tensor, _, _| zeros_like(&gpu, x));
    assert!(err.contains("8-bit") && err.contains("element 0"), "{err}");
    let x0 = gpu.upload(&[2, 1, 2, 2], &[level(0), level(9), level(128), level(255)].repeat(2)).unwrap();
    let err = run(&x0.reshape(&[2, 4]).unwrap(), &mut |x: &Tensor, _: &Tensor, _, _| zeros_like(&gpu, x));
    assert!(err.contains("(N, C, H, W)"), "{err}");
    // A NaN in the model's output at one timestep is an error naming it.
    for bad in [23, 0] {
        let mut model = |x: &Tensor, _: &Tensor, i: usize, _: usize| {
            let eps = gpu.zeros(x.shape())?;
            if i == bad {
                ew::fill_into(&gpu, &eps, f32::NAN)?;
            }
            Ok(eps)
        };
        let err = run(&x0, &mut model);
        assert!(err.contains(&format!("timestep index {bad} ")), "{err}");
    }
    let err = run(&x0, &mut |_: &Tensor, _: &Tensor, _, _| gpu.zeros(&[2, 1, 2, 3]));
    assert!(err.contains("[2, 1, 2, 3]"), "{err}");
}

/// Four MNIST digits at 16x16, through the folder loader (so the values
/// are 8-bit data): written as 32x32 PNGs and resized by `from_folder`.
fn four_small_digits() -> ddpm_wgpu::data::Dataset {
    use ddpm_wgpu::data::{to_u8, Dataset};
    let dir = std::env::temp_dir().join(format!("ddpm-vlb-digits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let digits = Dataset::mnist(32, Some(4)).unwrap();
    for i in 0..4 {
        let pixels: Vec<u8> = digits.sample(i).iter().map(|&v| to_u8(v)).collect();
        image::GrayImage::from_raw(32, 32, pixels).unwrap().save(dir.join(format!("{i}.png"))).unwrap();
    }
    let data = Dataset::from_folder(&dir, 16, 1).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(data.len(), 4);
    data
}

/// A tiny UNet trained briefly on four digits gives those digits a lower
/// (strided) bound than the same UNet at initialisation.
#[test]
fn a_trained_model_scores_better_than_an_untrained_one() {
    use ddpm_wgpu::sample::predict_noise;
    use ddpm_wgpu::train::{TrainOptions, Trainer};
    use ddpm_wgpu::unet::UNetConfig;
    let (_turn, gpu) = common::gpu();
    let config = UNetConfig::from_json(
        r#"{"sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
            "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8}"#,
    )
    .unwrap();
    let data = four_small_digits();
    let scheduler = SchedulerConfig::default();
    const STEPS: u64 = 150;
    let options =
        TrainOptions { batch_size: 4, steps: STEPS, lr: 3e-3, warmup: 10, ema_decay: 0.0, ..TrainOptions::default() };
    let mut trainer = Trainer::new(&gpu, &config, scheduler.clone(), options, [1, 16, 16]).unwrap();
    let images: Vec<f32> = (0..4).flat_map(|i| data.sample(i).to_vec()).collect();
    let x0 = gpu.upload(&[4, 1, 16, 16], &images).unwrap();
    let request = NllRequest { seed: 5, first_sample: 0, timesteps: Some(10) };
    let score = |trainer: &Trainer| {
        // EMA decay 0: the EMA weights are the trained weights.
        let weights = trainer.ema_store().unwrap();
        let mut model =
            |x: &Tensor, t: &Tensor, _: usize, _: usize| predict_noise(&gpu, &trainer.unet, &weights, x, t, None);
        nll::bits_per_dim(&gpu, &mut model, &scheduler, &x0, &request, &mut |_, _| {}).unwrap()
    };
    let start = std::time::Instant::now();
    let untrained = score(&trainer);
    let scored_in = start.elapsed();
    let mut losses = Vec::new();
    for _ in 0..STEPS {
        trainer.train_step(&data).unwrap();
        if trainer.logs_full() {
            losses.extend(trainer.read_logs().unwrap().iter().map(|l| l.loss));
        }
    }
    losses.extend(trainer.read_logs().unwrap().iter().map(|l| l.loss));
    let trained_in = start.elapsed() - scored_in;
    let trained = score(&trainer);
    let mean_loss = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    eprintln!(
        "strided bits/dim (11 timesteps): at init {:.4} (prior {:.2e}, decoder {:.4}, kl {:.4}); \
         after {STEPS} steps {:.4} (prior {:.2e}, decoder {:.4}, kl {:.4}); \
         mean loss of the first / last 10 steps {:.3} / {:.3}; one evaluation {scored_in:.1?}, training {trained_in:.1?}",
        untrained.bits_per_dim,
        untrained.prior,
        untrained.decoder,
        untrained.kl,
        trained.bits_per_dim,
        trained.prior,
        trained.decoder,
        trained.kl,
        mean_loss(&losses[..10]),
        mean_loss(&losses[losses.len() - 10..]),
    );
    assert!(untrained.strided && trained.strided);
    assert!(
        trained.bits_per_dim < 0.8 * untrained.bits_per_dim,
        "trained {} must beat untrained {} clearly",
        trained.bits_per_dim,
        untrained.bits_per_dim
    );
    assert!(trained.per_sample.iter().zip(&untrained.per_sample).all(|(a, b)| a < b));
}
