//! DDPM kernels against their f64 CPU twins: noising and both samplers at
//! every timestep of the linear schedule, the Philox generator against the
//! Random123 known answers, and the GPU noise's statistics, keying and
//! reproducibility.

mod common;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::ddpm::{self, cpu, DdimTables, DdpmTables, NoiseKey};
use ddpm_wgpu::schedule::{BetaSchedule, PredictionType, Schedule, SchedulerConfig, VarianceType};
use ddpm_wgpu::Gpu;
use rand::{rngs::StdRng, seq::SliceRandom, Rng};

/// Random123 `kat_vectors`, philox4x32 10: counter, key, expected output.
const PHILOX_KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
    ([u32::MAX; 4], [u32::MAX; 2], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]),
    (
        [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
        [0xa4093822, 0x299f31d0],
        [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ),
];

/// The GPU's f32 log/sin/cos against the twin's f64: a few ulp (the worst
/// seen on lavapipe over 3M values was 4.8e-7 absolute).
const NOISE_ATOL: f64 = 2e-6;
const NOISE_RTOL: f64 = 2e-6;

fn linear(variance_type: VarianceType, clip_sample: bool) -> Schedule {
    Schedule::new(SchedulerConfig { variance_type, clip_sample, ..SchedulerConfig::default() }).unwrap()
}

fn key(r: &mut StdRng) -> NoiseKey {
    // Any first sample, up to the top of u32 (where the row index wraps).
    NoiseKey { seed: r.random(), step: r.random(), first_sample: r.random() }
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Every index 0..T once, in random order, so each sample reads its own.
fn all_timesteps(r: &mut StdRng, steps: usize) -> Vec<usize> {
    let mut t: Vec<usize> = (0..steps).collect();
    t.shuffle(r);
    t
}

fn bits(gpu: &Gpu, t: &ddpm_wgpu::Tensor) -> Vec<u32> {
    gpu.read(t).unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn cpu_philox_matches_random123_known_answers() {
    for (counter, key, want) in PHILOX_KAT {
        assert_eq!(cpu::philox4x32_10(counter, key), want, "counter {counter:08x?} key {key:08x?}");
    }
}

#[test]
fn gpu_philox_matches_known_answers_and_cpu_bit_for_bit() {
    let mut r = rng();
    each_path(|gpu, path| {
        for (counter, key, want) in PHILOX_KAT {
            let got = bits(gpu, &ddpm::random_bits(gpu, 1, counter, key).unwrap());
            assert_eq!(got, want, "{path:?}: counter {counter:08x?} key {key:08x?}");
        }
        // Counters walking through the carry of the first word.
        let (counter, key) = ([u32::MAX - 100, r.random(), r.random(), r.random()], [r.random(), r.random()]);
        let got = bits(gpu, &ddpm::random_bits(gpu, 1000, counter, key).unwrap());
        for (n, words) in got.chunks(4).enumerate() {
            let c = [counter[0].wrapping_add(n as u32), counter[1], counter[2], counter[3]];
            assert_eq!(words, cpu::philox4x32_10(c, key), "{path:?}: row {n}");
        }
    });
}

#[test]
fn gpu_noise_matches_cpu_twin_for_odd_and_aligned_shapes() {
    let mut r = rng();
    each_path(|gpu, path| {
        for shape in [vec![1, 1], vec![3, 5, 7], vec![4, 3, 8, 8], vec![2, 6]] {
            let k = key(&mut r);
            let got = gpu.read(&ddpm::randn(gpu, &shape, k).unwrap()).unwrap();
            let want = cpu::randn(k, shape[0], shape[1..].iter().product());
            assert_close(&format!("randn {shape:?} on {path:?}"), &got, &to_f32(&want), NOISE_ATOL, NOISE_RTOL);
        }
    });
}

/// Standard normal CDF through erfc (Numerical Recipes' Chebyshev fit,
/// relative error < 1.2e-7, far below the KS bound used).
fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

#[test]
fn gpu_noise_is_standard_normal() {
    let mut r = rng();
    let (_turn, gpu) = common::gpu();
    let shape = [16, 65536];
    let k = key(&mut r);
    let mut z: Vec<f64> = gpu.read(&ddpm::randn(&gpu, &shape, k).unwrap()).unwrap().iter().map(|&v| v as f64).collect();
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let kurtosis = z.iter().map(|v| (v - mean).powi(4)).sum::<f64>() / n / (var * var);
    // Six standard errors: sd(mean) = 1/sqrt(n), sd(var) = sqrt(2/n), sd(kurtosis) = sqrt(24/n).
    assert!(mean.abs() < 6.0 / n.sqrt(), "mean {mean}");
    assert!((var - 1.0).abs() < 6.0 * (2.0 / n).sqrt(), "variance {var}");
    assert!((kurtosis - 3.0).abs() < 6.0 * (24.0 / n).sqrt(), "kurtosis {kurtosis}");
    let twin = cpu::randn(k, shape[0], shape[1]);
    assert_close(
        "1M normals against the CPU twin",
        &z.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        &to_f32(&twin),
        NOISE_ATOL,
        NOISE_RTOL,
    );
    z.sort_by(f64::total_cmp);
    let ks = z
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let f = normal_cdf(v);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max);
    // P(sqrt(n) D > 2.7) ~ 1e-6 for a true N(0,1) sample.
    eprintln!("1M GPU normals: mean {mean:.2e}, variance {var:.5}, kurtosis {kurtosis:.4}, KS D {ks:.2e}");
    assert!(ks * n.sqrt() < 2.7, "Kolmogorov-Smirnov D = {ks} for n = {n}");
}

#[test]
fn gpu_noise_is_reproducible_and_keyed_by_seed_step_and_sample() {
    let mut r = rng();
    let (_turn, gpu) = common::gpu();
    let k = key(&mut r);
    let dim = [3, 5, 7];
    let draw =
        |key: NoiseKey, batch: usize| bits(&gpu, &ddpm::randn(&gpu, &[batch, dim[0], dim[1], dim[2]], key).unwrap());
    let base = draw(k, 4);
    assert_eq!(base, draw(k, 4), "same key must give the same bits");
    let per_sample = 105;
    // Sample i's noise does not depend on the batch it is drawn in.
    let big = draw(k, 16);
    assert_eq!(base[..], big[..4 * per_sample], "samples 0..4 differ between batches of 4 and 16");
    let differs = |a: &[u32], b: &[u32]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    for (what, other) in [
        ("seed", NoiseKey { seed: k.seed ^ 1, ..k }),
        ("seed high word", NoiseKey { seed: k.seed ^ (1 << 40), ..k }),
        ("step", NoiseKey { step: k.step.wrapping_add(1), ..k }),
    ] {
        let d = differs(&base, &draw(other, 4));
        assert!(d == base.len(), "changing the {what} left {} of {} values equal", base.len() - d, base.len());
    }
    // Different samples get different noise.
    assert_eq!(differs(&big[..per_sample], &big[per_sample..2 * per_sample]), per_sample);
}

/// A chunk keyed with first_sample k draws rows k.. of the whole batch's
/// noise: on the CPU twin exactly, on the GPU bit for bit, at odd and
/// aligned sample sizes.
#[test]
fn noise_with_a_first_sample_offset_is_the_rows_of_one_batch() {
    let mut r = rng();
    let (_turn, gpu) = common::gpu();
    for dim in [35, 16] {
        let whole_key = NoiseKey { first_sample: 0, ..key(&mut r) };
        let (batch, first, rows) = (9, 4, 3);
        let whole = cpu::randn(whole_key, batch, dim);
        let chunk_key = NoiseKey { first_sample: first as u32, ..whole_key };
        let chunk = cpu::randn(chunk_key, rows, dim);
        assert_eq!(chunk[..], whole[first * dim..(first + rows) * dim], "CPU twin, D={dim}");
        let gpu_whole = bits(&gpu, &ddpm::randn(&gpu, &[batch, dim], whole_key).unwrap());
        let gpu_chunk = bits(&gpu, &ddpm::randn(&gpu, &[rows, dim], chunk_key).unwrap());
        assert_eq!(gpu_chunk[..], gpu_whole[first * dim..(first + rows) * dim], "GPU, D={dim}");
        let got: Vec<f32> = gpu_chunk.iter().map(|&b| f32::from_bits(b)).collect();
        assert_close(&format!("offset randn D={dim} vs twin"), &got, &to_f32(&chunk), NOISE_ATOL, NOISE_RTOL);
        // Another offset is other noise.
        let shifted = bits(&gpu, &ddpm::randn(&gpu, &[rows, dim], NoiseKey { first_sample: 5, ..whole_key }).unwrap());
        assert!(shifted.iter().zip(&gpu_chunk).all(|(a, b)| a != b), "offsets 4 and 5 share values");
    }
}

#[test]
fn q_sample_matches_cpu_at_every_timestep() {
    let mut r = rng();
    let schedule = Schedule::new(SchedulerConfig::default()).unwrap();
    each_path(|gpu, path| {
        let tables = DdpmTables::new(gpu, &schedule).unwrap();
        for dim in [35, 16] {
            let t = all_timesteps(&mut r, schedule.len());
            let x0 = uniform(&mut r, t.len() * dim);
            let k = key(&mut r);
            let (xt, eps) = ddpm::q_sample(
                gpu,
                &tables,
                &gpu.upload(&[t.len(), dim], &x0).unwrap(),
                &ddpm::timesteps(gpu, &t).unwrap(),
                k,
            )
            .unwrap();
            let eps = gpu.read(&eps).unwrap();
            let what = format!("q_sample D={dim} on {path:?}");
            assert_close(&format!("{what}: eps"), &eps, &to_f32(&cpu::randn(k, t.len(), dim)), NOISE_ATOL, NOISE_RTOL);
            let eps64: Vec<f64> = eps.iter().map(|&v| v as f64).collect();
            let want = cpu::q_sample(&schedule, &x0, &eps64, &t);
            assert_close(&format!("{what}: x_t"), &gpu.read(&xt).unwrap(), &to_f32(&want), 1e-6, 1e-5);
        }
    });
}

/// The v target and the conversions of a v or x_0 prediction back to eps
/// against their CPU twins at every timestep, at an odd and an aligned
/// sample size, outputs poisoned; and the round trip: the v of (x0, eps)
/// turned back into eps at x_t gives eps.
#[test]
fn velocity_and_to_epsilon_match_cpu_at_every_timestep() {
    let mut r = rng();
    let schedule = Schedule::new(SchedulerConfig::default()).unwrap();
    each_path(|gpu, path| {
        let tables = DdpmTables::new(gpu, &schedule).unwrap();
        for dim in [35, 16] {
            let t = all_timesteps(&mut r, schedule.len());
            let (x0, eps) = (uniform(&mut r, t.len() * dim), uniform(&mut r, t.len() * dim));
            let shape = [t.len(), dim];
            let (x0_t, eps_t) = (gpu.upload(&shape, &x0).unwrap(), gpu.upload(&shape, &eps).unwrap());
            let tt = ddpm::timesteps(gpu, &t).unwrap();
            let what = format!("D={dim} on {path:?}");
            let v = ddpm::training_target(gpu, &tables, PredictionType::VPrediction, &x0_t, &eps_t, &tt).unwrap();
            let v_host = gpu.read(&v).unwrap();
            assert_close(
                &format!("velocity {what}"),
                &v_host,
                &to_f32(&cpu::velocity(&schedule, &x0, &eps, &t)),
                1e-6,
                1e-5,
            );
            let eps64: Vec<f64> = eps.iter().map(|&e| e as f64).collect();
            let xt = to_f32(&cpu::q_sample(&schedule, &x0, &eps64, &t));
            let xt_t = gpu.upload(&shape, &xt).unwrap();
            for (prediction, output) in [(PredictionType::VPrediction, &v_host), (PredictionType::Sample, &x0)] {
                let out_t = gpu.upload(&shape, output).unwrap();
                let got = gpu.read(&ddpm::to_epsilon(gpu, &tables, prediction, &out_t, &xt_t, &tt).unwrap()).unwrap();
                let want = cpu::to_epsilon(&schedule, prediction, output, &xt, &t);
                assert_close(&format!("to_epsilon {prediction} {what}"), &got, &to_f32(&want), 1e-5, 1e-4);
                if prediction == PredictionType::VPrediction {
                    // x_0 predictions divide by sqrt(1 - abar), ~0.01 at t = 0: exact only in f64.
                    assert_close(&format!("v round trip {what}"), &got, &eps, 1e-5, 1e-4);
                }
            }
            let same = ddpm::to_epsilon(gpu, &tables, PredictionType::Epsilon, &eps_t, &xt_t, &tt).unwrap();
            assert_eq!(gpu.read(&same).unwrap(), eps, "epsilon needs no conversion");
        }
    });
    // The CPU twins invert the targets: eps back from x_0 and from v.
    let t: Vec<usize> = (0..schedule.len()).collect();
    let (x0, eps) = (uniform(&mut r, t.len()), uniform(&mut r, t.len()));
    let eps64: Vec<f64> = eps.iter().map(|&e| e as f64).collect();
    let xt = to_f32(&cpu::q_sample(&schedule, &x0, &eps64, &t));
    let v = to_f32(&cpu::velocity(&schedule, &x0, &eps, &t));
    for (prediction, output) in [(PredictionType::Sample, &x0), (PredictionType::VPrediction, &v)] {
        let back = to_f32(&cpu::to_epsilon(&schedule, prediction, output, &xt, &t));
        assert_close(&format!("cpu {prediction} round trip"), &back, &eps, 1e-4, 1e-4);
    }
}

/// x_t and eps_theta wide enough that the predicted x0 clips at most
/// timesteps but not all.
fn step_inputs(r: &mut StdRng, n: usize) -> (Vec<f32>, Vec<f32>) {
    let scale = |v: Vec<f32>| v.into_iter().map(|x| 2.0 * x).collect::<Vec<f32>>();
    (scale(uniform(r, n)), scale(uniform(r, n)))
}

#[test]
fn p_sample_matches_cpu_at_every_timestep_for_each_variance_and_clipping() {
    let mut r = rng();
    let (_turn, gpu) = common::gpu();
    for dim in [35, 16] {
        let t = all_timesteps(&mut r, 1000);
        let (xt, eps) = step_inputs(&mut r, t.len() * dim);
        let shape = [t.len(), dim];
        let (gxt, geps, gt) =
            (gpu.upload(&shape, &xt).unwrap(), gpu.upload(&shape, &eps).unwrap(), ddpm::timesteps(&gpu, &t).unwrap());
        let k = key(&mut r);
        let z = cpu::randn(k, t.len(), dim);
        let mut clipped_and_not = Vec::new();
        for variance in [VarianceType::FixedSmall, VarianceType::FixedLarge] {
            for clip in [false, true] {
                let schedule = linear(variance, clip);
                let tables = DdpmTables::new(&gpu, &schedule).unwrap();
                let got = gpu.read(&ddpm::p_sample(&gpu, &tables, &gxt, &geps, &gt, k).unwrap()).unwrap();
                let want = cpu::p_sample(&schedule, &xt, &eps, &t, &z);
                assert_close(&format!("p_sample D={dim} {variance} clip={clip}"), &got, &to_f32(&want), 2e-5, 1e-4);
                // The last step (index 0) adds no noise: another key leaves those samples bit-equal. Elsewhere
                // it changes the values (all but a few whose two noise draws round to the same output).
                let other_key = NoiseKey { step: k.step ^ 1, ..k };
                let other = gpu.read(&ddpm::p_sample(&gpu, &tables, &gxt, &geps, &gt, other_key).unwrap()).unwrap();
                let mut unchanged_noisy = 0;
                for (n, &ti) in t.iter().enumerate() {
                    let (a, b) = (&got[n * dim..(n + 1) * dim], &other[n * dim..(n + 1) * dim]);
                    if ti == 0 {
                        assert_eq!(a, b, "noise added at the last step ({variance}, clip={clip})");
                    } else {
                        unchanged_noisy += a.iter().zip(b).filter(|(x, y)| x == y).count();
                    }
                }
                assert!(unchanged_noisy <= 3, "{unchanged_noisy} values got no noise ({variance}, clip={clip})");
                clipped_and_not.push(got);
            }
        }
        // Clipping changed the result somewhere (so the clip path was exercised), but not everywhere.
        let changed =
            clipped_and_not[0].iter().zip(&clipped_and_not[1]).filter(|(a, b)| (*a - *b).abs() > 1e-4).count();
        assert!(changed > 0 && changed < xt.len(), "clipping changed {changed} of {} values", xt.len());
    }
}

#[test]
fn ddim_step_matches_cpu_at_every_timestep() {
    let mut r = rng();
    let (_turn, gpu) = common::gpu();
    let dim = 35;
    let t = all_timesteps(&mut r, 1000);
    let (xt, eps) = step_inputs(&mut r, t.len() * dim);
    let shape = [t.len(), dim];
    let (gxt, geps, gt) =
        (gpu.upload(&shape, &xt).unwrap(), gpu.upload(&shape, &eps).unwrap(), ddpm::timesteps(&gpu, &t).unwrap());
    let k = key(&mut r);
    let z = cpu::randn(k, t.len(), dim);
    for clip in [false, true] {
        let schedule = linear(VarianceType::FixedSmall, clip);
        for (stride, eta) in [(20, 0.0), (20, 1.0), (1, 0.5), (100, 0.3)] {
            let tables = DdimTables::new(&gpu, &schedule, stride, eta).unwrap();
            let got = gpu.read(&ddpm::ddim_step(&gpu, &tables, &gxt, &geps, &gt, k).unwrap()).unwrap();
            let want = cpu::ddim_step(&schedule, stride, eta, &xt, &eps, &t, &z);
            assert_close(&format!("ddim stride={stride} eta={eta} clip={clip}"), &got, &to_f32(&want), 2e-5, 1e-4);
            if eta == 0.0 {
                let other = gpu
                    .read(
                        &ddpm::ddim_step(&gpu, &tables, &gxt, &geps, &gt, NoiseKey { step: k.step ^ 1, ..k }).unwrap(),
                    )
                    .unwrap();
                assert_eq!(got, other, "eta = 0 must be deterministic");
            }
        }
    }
}

#[test]
fn cosine_schedule_steps_match_cpu_at_every_timestep() {
    let mut r = rng();
    let (_turn, gpu) = common::gpu();
    let dim = 35;
    let t = all_timesteps(&mut r, 1000);
    let (x, eps) = step_inputs(&mut r, t.len() * dim);
    let shape = [t.len(), dim];
    let (gx, geps, gt) =
        (gpu.upload(&shape, &x).unwrap(), gpu.upload(&shape, &eps).unwrap(), ddpm::timesteps(&gpu, &t).unwrap());
    let k = key(&mut r);
    let z = cpu::randn(k, t.len(), dim);
    for (variance_type, clip_sample) in [(VarianceType::FixedSmall, true), (VarianceType::FixedLarge, false)] {
        let config = SchedulerConfig {
            beta_schedule: BetaSchedule::SquaredCosCapV2,
            variance_type,
            clip_sample,
            ..SchedulerConfig::default()
        };
        let schedule = Schedule::new(config).unwrap();
        let what = format!("cosine {variance_type} clip={clip_sample}");
        let tables = DdpmTables::new(&gpu, &schedule).unwrap();
        let (xt, _) = ddpm::q_sample(&gpu, &tables, &gx, &gt, k).unwrap();
        let want = cpu::q_sample(&schedule, &x, &z, &t);
        assert_close(&format!("{what}: q_sample"), &gpu.read(&xt).unwrap(), &to_f32(&want), 1e-5, 1e-4);
        let got = gpu.read(&ddpm::p_sample(&gpu, &tables, &gx, &geps, &gt, k).unwrap()).unwrap();
        let want = cpu::p_sample(&schedule, &x, &eps, &t, &z);
        assert_close(&format!("{what}: p_sample"), &got, &to_f32(&want), 2e-5, 1e-4);
        let ddim = DdimTables::new(&gpu, &schedule, 10, 0.7).unwrap();
        let got = gpu.read(&ddpm::ddim_step(&gpu, &ddim, &gx, &geps, &gt, k).unwrap()).unwrap();
        let want = cpu::ddim_step(&schedule, 10, 0.7, &x, &eps, &t, &z);
        assert_close(&format!("{what}: ddim_step"), &got, &to_f32(&want), 2e-5, 1e-4);
    }
}

#[test]
fn launchers_reject_mismatched_shapes() {
    let (_turn, gpu) = common::gpu();
    let schedule = Schedule::new(SchedulerConfig::default()).unwrap();
    let tables = DdpmTables::new(&gpu, &schedule).unwrap();
    let x = gpu.zeros(&[4, 8]).unwrap();
    let t3 = ddpm::timesteps(&gpu, &[0, 1, 2]).unwrap();
    let t4 = ddpm::timesteps(&gpu, &[0, 1, 2, 3]).unwrap();
    let err = ddpm::q_sample(&gpu, &tables, &x, &t3, NoiseKey { seed: 0, step: 0, first_sample: 0 })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("q_sample") && err.contains("[3]"), "{err}");
    let eps = gpu.zeros(&[4, 9]).unwrap();
    let err = ddpm::p_sample(&gpu, &tables, &x, &eps, &t4, NoiseKey { seed: 0, step: 0, first_sample: 0 })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("p_sample") && err.contains("[4, 9]"), "{err}");
}

/// The `*_given` steps with Philox's own noise give exactly the fused
/// steps' results, and return diffusers' `pred_original_sample` (clipped
/// when the schedule clips); with other noise they move elsewhere.
#[test]
fn the_steps_take_the_callers_noise_and_return_the_predicted_x0() {
    let mut r = rng();
    for (shape, clip) in [([6usize, 1, 5, 7], true), ([4, 3, 8, 8], false)] {
        let n: usize = shape.iter().product();
        let schedule = linear(VarianceType::FixedSmall, clip);
        let (x, eps_theta) = (uniform(&mut r, n), uniform(&mut r, n).iter().map(|v| 3.0 * v).collect::<Vec<_>>());
        let t_index: Vec<usize> = (0..shape[0]).map(|i| if i == 0 { 0 } else { r.random_range(0..1000) }).collect();
        let k = key(&mut r);
        each_path(|gpu, path| {
            let what = |op: &str| format!("{op} {shape:?} clip {clip} on {path:?}");
            let tables = DdpmTables::new(gpu, &schedule).unwrap();
            let ddim = DdimTables::new(gpu, &schedule, 20, 0.7).unwrap();
            let (tx, te) = (gpu.upload(&shape, &x).unwrap(), gpu.upload(&shape, &eps_theta).unwrap());
            let t = ddpm::timesteps(gpu, &t_index).unwrap();
            let z = ddpm::randn(gpu, &shape, k).unwrap();
            let (xt, _) = ddpm::q_sample(gpu, &tables, &tx, &t, k).unwrap();
            let given = ddpm::q_sample_given(gpu, &tables, &tx, &t, &z).unwrap();
            assert_eq!(bits(gpu, &given), bits(gpu, &xt), "{}", what("q_sample_given"));
            let want_x0: Vec<f32> = (0..n)
                .map(|i| {
                    let abar = schedule.alphas_cumprod[t_index[i / (n / shape[0])]];
                    let x0 = (x[i] as f64 - (1.0 - abar).sqrt() * eps_theta[i] as f64) / abar.sqrt();
                    (if clip { x0.clamp(-1.0, 1.0) } else { x0 }) as f32
                })
                .collect();
            let zeros = gpu.zeros(&shape).unwrap();
            for (op, fused, (prev, x0), (prev_zero, _)) in [
                (
                    "p_sample_given",
                    ddpm::p_sample(gpu, &tables, &tx, &te, &t, k).unwrap(),
                    ddpm::p_sample_given(gpu, &tables, &tx, &te, &t, &z).unwrap(),
                    ddpm::p_sample_given(gpu, &tables, &tx, &te, &t, &zeros).unwrap(),
                ),
                (
                    "ddim_step_given",
                    ddpm::ddim_step(gpu, &ddim, &tx, &te, &t, k).unwrap(),
                    ddpm::ddim_step_given(gpu, &ddim, &tx, &te, &t, &z).unwrap(),
                    ddpm::ddim_step_given(gpu, &ddim, &tx, &te, &t, &zeros).unwrap(),
                ),
            ] {
                assert_eq!(bits(gpu, &prev), bits(gpu, &fused), "{}", what(op));
                assert_close(&what(op), &gpu.read(&x0).unwrap(), &want_x0, 1e-4, 1e-4);
                // Sample 0 is at index 0, where DDPM adds no noise; the others move with z.
                let (a, b) = (gpu.read(&prev).unwrap(), gpu.read(&prev_zero).unwrap());
                let per = n / shape[0];
                assert!(a[per..] != b[per..], "{}: the caller's noise changed nothing", what(op));
            }
        });
    }
}
