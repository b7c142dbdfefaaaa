//! Sampling: sample i does not depend on how many samples were asked for
//! or on the chunks they are drawn in, seeds reproduce, the exact noise
//! predictor recovers its data point, and the chunk size the adapter's
//! limits allow is derived from the UNet's activations.

mod common;

use common::assert_close;
use ddpm_wgpu::ops::attention::MAX_PROBS_BYTES;
use ddpm_wgpu::sample::{
    default_sample_batch, forward_footprint, sample, ForwardFootprint, Guidance, SampleRequest, Sampler,
    MAX_SAMPLE_BATCH, SAMPLE_MEMORY_BUDGET, WORKING_ACTIVATIONS,
};
use ddpm_wgpu::schedule::SchedulerConfig;
use ddpm_wgpu::unet::{ParamStore, UNet, UNetConfig};
use ddpm_wgpu::Gpu;

fn tiny_config() -> UNetConfig {
    UNetConfig::load(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_unet_28.json")))
        .unwrap()
}

/// The 28x28 test UNet with random non-zero weights, so the model's output matters.
fn tiny_model(gpu: &Gpu) -> (UNet, ParamStore) {
    tiny_model_of(gpu, &tiny_config())
}

fn tiny_model_of(gpu: &Gpu, config: &UNetConfig) -> (UNet, ParamStore) {
    let unet = UNet::new(config).unwrap();
    let mut flat = unet.table.init(5, ddpm_wgpu::unet::layout::InitScheme::Ddpm);
    for (i, v) in flat.iter_mut().enumerate() {
        *v += 0.02 * ((i * 7919 % 200) as f32 / 100.0 - 1.0);
    }
    let weights = ParamStore::upload(gpu, unet.table.clone(), &flat).unwrap();
    (unet, weights)
}

#[test]
fn samples_do_not_depend_on_batch_size_and_seeds_reproduce() {
    let (_turn, gpu) = common::gpu();
    let (unet, weights) = tiny_model(&gpu);
    let scheduler = SchedulerConfig { num_train_timesteps: 8, ..SchedulerConfig::default() };
    for sampler in [Sampler::Ddpm, Sampler::Ddim { steps: 4, eta: 1.0 }] {
        let run = |count: usize, seed: u64| {
            let request = SampleRequest {
                count,
                resolution: 28,
                sampler,
                seed,
                keep_every: None,
                batch_size: count,
                guidance: Guidance::DEFAULT,
            };
            sample(&gpu, &unet, &weights, &scheduler, &request, &mut |_, _| {}).unwrap().0
        };
        let few = run(2, 11);
        let many = run(5, 11);
        let per = 28 * 28;
        assert_close(&format!("{sampler:?}: first 2 of 5 vs 2"), &many[..2 * per], &few, 1e-5, 1e-4);
        assert_eq!(run(2, 11), few, "{sampler:?}: same seed, same samples");
        let other = run(2, 12);
        let differing = few.iter().zip(&other).filter(|(a, b)| a != b).count();
        assert!(differing > per, "{sampler:?}: another seed must give other samples");
        // Clamped to [-1, 1] by the sampler; an untrained model's samples are not all at the bounds.
        assert!(few.iter().filter(|v| v.abs() < 0.99).count() > per / 4, "{sampler:?}: samples saturated");
    }
}

/// With the exact predictor for data that is a single image x*: eps(x_t) =
/// (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t), and for the other prediction
/// types x* itself or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x*, every
/// sampler must end at x*: this checks the whole sampling chain (tables,
/// indexing, the conversion to eps, the last step) independently of any
/// trained model.
#[test]
fn samplers_recover_the_data_point_with_the_exact_predictor_of_each_prediction_type() {
    use ddpm_wgpu::ops::elementwise as ew;
    use ddpm_wgpu::sample::sample_with;
    use ddpm_wgpu::schedule::{PredictionType, Schedule};
    let (_turn, gpu) = common::gpu();
    let mut r = common::rng();
    let (count, res) = (3, 8);
    let star: Vec<f32> = common::uniform(&mut r, res * res).iter().map(|v| v * 0.9).collect();
    let star_batch: Vec<f32> = (0..count).flat_map(|_| star.clone()).collect();
    let star_t = gpu.upload(&[count, 1, res, res], &star_batch).unwrap();
    let predictions = [PredictionType::Epsilon, PredictionType::VPrediction, PredictionType::Sample];
    for (prediction, clip_sample) in predictions.into_iter().flat_map(|p| [(p, true), (p, false)]) {
        let scheduler = SchedulerConfig { clip_sample, prediction_type: prediction, ..SchedulerConfig::default() };
        let schedule = Schedule::new(scheduler.clone()).unwrap();
        for sampler in [Sampler::Ddpm, Sampler::Ddim { steps: 50, eta: 0.0 }, Sampler::Ddim { steps: 20, eta: 1.0 }] {
            let mut exact = |x: &ddpm_wgpu::Tensor, _t: &ddpm_wgpu::Tensor, i: usize, _first: usize| {
                let (a, b) = (schedule.sqrt_alphas_cumprod[i] as f32, schedule.sqrt_one_minus_alphas_cumprod[i] as f32);
                let eps = ew::scale(&gpu, &ew::axpy(&gpu, x, -a, &star_t)?, 1.0 / b)?;
                match prediction {
                    PredictionType::Epsilon => Ok(eps),
                    PredictionType::Sample => Ok(star_t.clone()),
                    PredictionType::VPrediction => ew::axpy(&gpu, &ew::scale(&gpu, &eps, a)?, -b, &star_t),
                }
            };
            let request = SampleRequest {
                count,
                resolution: res,
                sampler,
                seed: 4,
                keep_every: None,
                batch_size: count,
                guidance: Guidance::DEFAULT,
            };
            let (out, _) = sample_with(&gpu, &mut exact, 1, &scheduler, &request, &mut |_, _| {}).unwrap();
            assert_close(&format!("{prediction} {sampler:?} clip={clip_sample}"), &out, &star_batch, 2e-3, 1e-3);
        }
    }
}

/// Classifier-free guidance as `sample` does it (one UNet pass over the
/// batch doubled, split, combined on the GPU) equals the sampling loop with
/// a predictor that runs the conditional and the "no class" passes apart
/// and combines them on the host, u + w (c - u); samples are drawn 3 at a
/// time there and 7 at once here. Guidance 1 is the conditional pass alone,
/// bit for bit; a fixed class gives, at the samples of that class in the
/// cycle, the cycle's samples, and other classes give other samples.
#[test]
fn guided_sampling_combines_the_conditional_and_unconditional_passes() {
    use ddpm_wgpu::ops::cross_entropy::class_labels;
    use ddpm_wgpu::sample::{predict_noise, sample_with};
    let (_turn, gpu) = common::gpu();
    let (classes, per) = (3, 28 * 28);
    let config = UNetConfig { num_class_embeds: Some(classes + 1), null_class: Some(classes), ..tiny_config() };
    let (unet, weights) = tiny_model_of(&gpu, &config);
    let scheduler = SchedulerConfig { num_train_timesteps: 8, ..SchedulerConfig::default() };
    let sampler = Sampler::Ddim { steps: 4, eta: 1.0 };
    let request = |guidance: Guidance, batch_size: usize| SampleRequest {
        count: 7,
        resolution: 28,
        sampler,
        seed: 3,
        keep_every: None,
        batch_size,
        guidance,
    };
    let guided = |guidance: Guidance| sample(&gpu, &unet, &weights, &scheduler, &request(guidance, 3), &mut |_, _| {});
    let reference = |scale: f32| {
        let mut predictor = |x: &ddpm_wgpu::Tensor, t: &ddpm_wgpu::Tensor, _: usize, first: usize| {
            let n = x.shape()[0];
            let pass = |label: &dyn Fn(usize) -> usize| {
                let labels: Vec<usize> = (first..first + n).map(label).collect();
                let labels = class_labels(&gpu, &labels, classes + 1)?;
                gpu.read(&predict_noise(&gpu, &unet, &weights, x, t, Some(&labels))?)
            };
            let (c, u) = (pass(&|i| i % classes)?, pass(&|_| classes)?);
            let out: Vec<f32> = match scale {
                1.0 => c,
                _ => c.iter().zip(&u).map(|(c, u)| u + scale * (c - u)).collect(),
            };
            gpu.upload(x.shape(), &out)
        };
        let req = request(Guidance { class: None, scale }, 7);
        sample_with(&gpu, &mut predictor, config.in_channels, &scheduler, &req, &mut |_, _| {}).unwrap().0
    };
    let two = guided(Guidance { class: None, scale: 2.0 }).unwrap().0;
    assert_close("guidance 2 vs the two passes combined on the host", &two, &reference(2.0), 1e-4, 1e-3);
    let one = guided(Guidance { class: None, scale: 1.0 }).unwrap().0;
    assert_eq!(one, reference(1.0), "guidance 1 is the conditional pass alone");
    let differing = one.iter().zip(&two).filter(|(a, b)| a != b).count();
    assert!(differing > per, "guidance 2 must change the samples of guidance 1 ({differing} values differ)");
    let of_class_1 = guided(Guidance { class: Some(1), scale: 2.0 }).unwrap().0;
    for i in 0..7 {
        let (a, b) = (&of_class_1[i * per..(i + 1) * per], &two[i * per..(i + 1) * per]);
        if i % classes == 1 {
            assert_close(&format!("sample {i} of class 1 vs the cycle's"), a, b, 1e-6, 1e-6);
        } else {
            assert!(a.iter().zip(b).filter(|(x, y)| x != y).count() > per / 4, "sample {i}: the class must matter");
        }
    }
    let err = guided(Guidance { class: Some(3), scale: 2.0 }).err().unwrap().to_string();
    assert!(err.contains("class 3: this model has classes 0 to 2"), "{err}");
    let err = guided(Guidance { class: None, scale: f32::NAN }).err().unwrap().to_string();
    assert!(err.contains("guidance must be 0 or more"), "{err}");
    // Without a "no class" row every row is a class, and only guidance 1 can be drawn.
    let all_classes = UNetConfig { null_class: None, ..config.clone() };
    let (unet, weights) = tiny_model_of(&gpu, &all_classes);
    let run = |guidance| sample(&gpu, &unet, &weights, &scheduler, &request(guidance, 7), &mut |_, _| {});
    let err = run(Guidance { class: None, scale: 2.0 }).err().unwrap().to_string();
    assert!(err.contains("guidance 2 needs a \"no class\" embedding"), "{err}");
    assert!(run(Guidance { class: Some(classes), scale: 1.0 }).is_ok(), "row {classes} is a class here");
}

/// 7 samples drawn 3 at a time (chunks of 3, 3, 1) are the 7 of one batch,
/// bit for bit: each chunk's noise is keyed by global sample indices. The
/// progress counts every chunk's steps and the kept strip is sample 0's.
#[test]
fn chunked_sampling_equals_one_batch_bit_for_bit() {
    let (_turn, gpu) = common::gpu();
    let (unet, weights) = tiny_model(&gpu);
    let scheduler = SchedulerConfig { num_train_timesteps: 8, ..SchedulerConfig::default() };
    for (sampler, steps) in [(Sampler::Ddpm, 8), (Sampler::Ddim { steps: 4, eta: 1.0 }, 4)] {
        let run = |batch_size: usize| {
            let request = SampleRequest {
                count: 7,
                resolution: 28,
                sampler,
                seed: 21,
                keep_every: Some(3),
                batch_size,
                guidance: Guidance::DEFAULT,
            };
            let mut calls = Vec::new();
            let (images, kept) =
                sample(&gpu, &unet, &weights, &scheduler, &request, &mut |done, total| calls.push((done, total)))
                    .unwrap();
            (images, kept, calls)
        };
        let (whole, whole_kept, whole_calls) = run(7);
        let (chunked, chunked_kept, chunked_calls) = run(3);
        assert_eq!(whole.len(), 7 * 28 * 28);
        let differing = whole.iter().zip(&chunked).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "{sampler:?}: {differing} values differ between chunks of 3 and one batch of 7");
        assert_eq!(chunked, whole, "{sampler:?}: lengths differ");
        assert_eq!(chunked_kept, whole_kept, "{sampler:?}: the kept x_t of sample 0 differ");
        assert_eq!(whole_kept.len(), (0..steps).filter(|k| k % 3 == 0 || k + 1 == steps).count());
        assert_eq!(whole_calls, (1..=steps).map(|d| (d, steps)).collect::<Vec<_>>());
        assert_eq!(chunked_calls, (1..=3 * steps).map(|d| (d, 3 * steps)).collect::<Vec<_>>());
    }
}

/// The activation estimate for the default config walks its layout: the
/// widest tensor is the last up level's first concat at full resolution
/// (32 and 16 channels at 32x32), the largest attention the 8x8 level's
/// one head (64 x 64 probabilities). The chunk picked fits every bound and
/// is the largest that does (or the cap).
#[test]
fn default_sample_batch_follows_the_widest_activation() {
    let default = UNetConfig::from_json(include_str!("../assets/configs/default_unet.json")).unwrap();
    let f = forward_footprint(&default, 32);
    assert_eq!(f.largest_activation, 48 * 32 * 32);
    assert_eq!(f.largest_attention, 64 * 64);
    assert!(f.peak > WORKING_ACTIVATIONS * f.largest_activation + f.largest_attention, "{f:?}");
    // The CIFAR-10 model: 256 + 128 channels into its last up level's first resnet.
    let cifar = UNetConfig::from_json(include_str!("../assets/configs/ddpm_cifar10_unet.json")).unwrap();
    assert_eq!(forward_footprint(&cifar, 32).largest_activation, 384 * 32 * 32);

    let (_turn, gpu) = common::gpu();
    let binding = gpu.info().max_storage_binding.min(gpu.info().max_buffer_size);
    let fits = |b: usize, f: &ForwardFootprint| {
        (b * 4 * f.largest_activation) as u64 <= binding
            && (b * 4 * f.largest_attention) as u64 <= binding.min(MAX_PROBS_BYTES)
            && (b * 4 * f.peak) as u64 <= SAMPLE_MEMORY_BUDGET
    };
    for (config, res) in [(&default, 32), (&cifar, 32), (&tiny_config(), 28)] {
        let b = default_sample_batch(&gpu, config, res);
        let f = forward_footprint(config, res);
        eprintln!("{res}x{res}, channels {:?}: {f:?}, chunk {b}", config.block_out_channels);
        assert!((1..=MAX_SAMPLE_BATCH).contains(&b) && fits(b, &f), "chunk {b} for {f:?}, binding {binding}");
        assert!(b == MAX_SAMPLE_BATCH || !fits(b + 1, &f), "chunk {b} for {f:?}: {} fits too", b + 1);
    }
    assert_eq!(default_sample_batch(&gpu, &tiny_config(), 28), MAX_SAMPLE_BATCH);
}
