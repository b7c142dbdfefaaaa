//! The UNet on the GPU: the same output as diffusers for a checkpoint saved
//! by diffusers, and gradients of blocks and of a whole tiny UNet against
//! finite differences.

mod common;

use std::path::PathBuf;

use common::{assert_close, check_gradients, rng, uniform};
use ddpm_wgpu::tape::Tape;
use ddpm_wgpu::unet::{ParamStore, ParamVars, UNet, UNetConfig};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_unet").join(name)
}

fn io_tensor(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture("io.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = file.tensor(name).unwrap();
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
}

#[test]
fn forward_matches_diffusers() {
    let (_turn, gpu) = common::gpu();
    let config = UNetConfig::load(&fixture("config.json")).unwrap();
    let unet = UNet::new(&config).unwrap();
    let weights = unet.table.load(&fixture("diffusion_pytorch_model.safetensors")).unwrap();
    let store = ParamStore::upload(&gpu, unet.table.clone(), &weights).unwrap();
    let (shape, sample) = io_tensor("sample");
    let (_, timesteps) = io_tensor("timesteps");
    let (_, want) = io_tensor("output");
    let mut tape = Tape::new(&gpu);
    let p = ParamVars::new(&mut tape, &store, false).unwrap();
    let x = tape.input(gpu.upload(&shape, &sample).unwrap());
    let t = gpu.upload(&[timesteps.len()], &timesteps).unwrap();
    let out = unet.forward(&mut tape, &p, &x, &t, None).unwrap();
    assert_eq!(out.shape(), &shape[..]);
    let got = gpu.read(&out.value).unwrap();
    // f32 through ~40 layers in a different order from PyTorch's.
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    assert_close("UNet output vs diffusers", &got, &want, 2e-4 * scale, 1e-3);
}

/// A two-level UNet at 8x8 with every block type, small enough for finite
/// differences of the whole network.
fn tiny_config() -> UNetConfig {
    UNetConfig::from_json(
        r#"{"sample_size": 8, "in_channels": 2, "out_channels": 2, "block_out_channels": [8, 16],
            "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8}"#,
    )
    .unwrap()
}

#[test]
fn whole_tiny_unet_gradients_match_finite_differences() {
    let (_turn, gpu) = common::gpu();
    let mut r = rng();
    let unet = UNet::new(&tiny_config()).unwrap();
    // Random weights everywhere (the default init zeroes output convs,
    // which would hide the gradients behind them).
    let mut flat = unet.table.init(1, ddpm_wgpu::unet::layout::InitScheme::Ddpm);
    for e in &unet.table.entries {
        for (v, u) in flat[e.offset..e.offset + e.len()].iter_mut().zip(uniform(&mut r, e.len())) {
            *v += 0.3 * u;
        }
    }
    let x = uniform(&mut r, 2 * 2 * 8 * 8);
    let target = uniform(&mut r, 2 * 2 * 8 * 8);
    let timesteps = [3.0, 700.0];
    let loss_of = |flat: &[f32], trainable: bool| {
        let store = ParamStore::upload(&gpu, unet.table.clone(), flat).unwrap();
        let mut tape = Tape::new(&gpu);
        let p = ParamVars::new(&mut tape, &store, trainable).unwrap();
        let xv = tape.input(gpu.upload(&[2, 2, 8, 8], &x).unwrap());
        let tv = tape.input(gpu.upload(&[2, 2, 8, 8], &target).unwrap());
        let t = gpu.upload(&[2], &timesteps).unwrap();
        let out = unet.forward(&mut tape, &p, &xv, &t, None).unwrap();
        let loss = tape.mse_loss(&out, &tv).unwrap();
        (tape, p, loss)
    };
    let (tape, p, loss) = loss_of(&flat, true);
    let grads = tape.backward(&loss).unwrap();
    // One probe in every parameter tensor: a wrong backward anywhere shows.
    let h = 1e-2;
    let (mut got, mut want, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for e in &unet.table.entries {
        let var = p.get(&e.name).unwrap();
        let g = gpu.read(grads.get(var).unwrap_or_else(|| panic!("no gradient for {}", e.name))).unwrap();
        let i = e.offset + (e.len() * 7 / 13);
        let original = flat[i];
        flat[i] = original + h;
        let up = gpu.read(&loss_of(&flat, false).2.value).unwrap()[0] as f64;
        flat[i] = original - h;
        let down = gpu.read(&loss_of(&flat, false).2.value).unwrap()[0] as f64;
        flat[i] = original;
        got.push(g[i - e.offset]);
        want.push(((up - down) / (2.0 * h as f64)) as f32);
        names.push(e.name.clone());
    }
    let failing: Vec<String> = got
        .iter()
        .zip(&want)
        .zip(&names)
        .filter(|((g, w), _)| (**g as f64 - **w as f64).abs() > 2e-3 + 5e-2 * (**w as f64).abs())
        .map(|((g, w), n)| format!("{n}: tape {g}, finite differences {w}"))
        .collect();
    assert!(
        failing.is_empty(),
        "{} of {} parameter gradients disagree:\n{}",
        failing.len(),
        names.len(),
        failing.join("\n")
    );
}

#[test]
fn resblock_and_attention_gradients_match_finite_differences() {
    let (_turn, gpu) = common::gpu();
    let mut r = rng();
    // A ResBlock-shaped graph: norm+SiLU, conv, per-sample add, norm+SiLU, conv, 1x1 shortcut, add.
    let params: Vec<(&[usize], Vec<f32>)> = vec![
        (&[2, 4, 5, 7], uniform(&mut r, 280)),
        (&[4], uniform(&mut r, 4)),
        (&[4], uniform(&mut r, 4)),
        (&[6, 4, 3, 3], uniform(&mut r, 216)),
        (&[6], uniform(&mut r, 6)),
        (&[2, 6], uniform(&mut r, 12)),
        (&[6, 4, 1, 1], uniform(&mut r, 24)),
        (&[6], uniform(&mut r, 6)),
        (&[2, 6, 5, 7], uniform(&mut r, 420)),
    ];
    check_gradients(&gpu, "resblock", &params, 8, 1e-2, (3e-3, 5e-2), |t, v| {
        use ddpm_wgpu::ops::conv2d::Conv2dGeometry;
        let g3 = Conv2dGeometry { n: 2, c_in: 4, h: 5, w: 7, c_out: 6, kh: 3, kw: 3, stride: 1, pad: [1; 4] };
        let g1 = Conv2dGeometry { kh: 1, kw: 1, pad: [0; 4], ..g3 };
        let h = t.group_norm(&v[0], &v[1], &v[2], 2, 1e-5, true)?;
        let h = t.conv2d(&h, &v[3], &v[4], g3)?;
        let h = t.add_per_sample(&h, &v[5])?;
        let sc = t.conv2d(&v[0], &v[6], &v[7], g1)?;
        let y = t.add(&sc, &h)?;
        t.mse_loss(&y, &v[8])
    });
    // Attention over 6 tokens with 2 heads of 3, and an upsample + concat.
    let params: Vec<(&[usize], Vec<f32>)> = vec![
        (&[4, 6, 3], uniform(&mut r, 72)),
        (&[4, 6, 3], uniform(&mut r, 72)),
        (&[4, 6, 3], uniform(&mut r, 72)),
        (&[1, 2, 2, 3], uniform(&mut r, 12)),
        (&[1, 3, 4, 6], uniform(&mut r, 72)),
        (&[1, 5, 4, 6], uniform(&mut r, 120)),
    ];
    check_gradients(&gpu, "attention/upsample/concat", &params, 8, 1e-2, (3e-3, 5e-2), |t, v| {
        let o = t.attention(&v[0], &v[1], &v[2], 0.6)?;
        let u = t.upsample_nearest2x(&v[3])?;
        let u = t.concat(&u, &v[4])?;
        let a = t.mse_loss(&u, &v[5])?;
        let o = t.reshape(&o, &[2, 2, 6, 3])?;
        let zeros = t.input(t.gpu().zeros(&[2, 2, 6, 3])?);
        let b = t.mse_loss(&o, &zeros)?;
        t.add(&a, &b)
    });
}

fn half_output(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture("io_half.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensor(name).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// diffusers' `variant="fp16"` (and bf16) files, as diffusers writes them:
/// each weight is the f32 one rounded to the half type, and the output is
/// diffusers' own from the rounded weights.
#[test]
fn half_precision_variants_load_and_match_diffusers() {
    use ddpm_wgpu::sample::Model;
    let (_turn, gpu) = common::gpu();
    let dir = fixture("");
    let full = Model::load(&gpu, &dir).unwrap();
    let full_weights = gpu.read(&full.weights.flat).unwrap();
    let (shape, sample) = io_tensor("sample");
    let (_, timesteps) = io_tensor("timesteps");
    let (_, full_output) = io_tensor("output");
    let scale = full_output.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    // Relative rounding of one weight: half an ulp of 10 (f16) or 7 (bf16) mantissa bits.
    for (variant, rounding) in [("fp16", 2f32.powi(-11)), ("bf16", 2f32.powi(-8))] {
        let model = Model::load_variant(&gpu, &dir, Some(variant)).unwrap();
        let weights = gpu.read(&model.weights.flat).unwrap();
        let mut rounded = 0;
        for (a, b) in weights.iter().zip(&full_weights) {
            // f16 subnormals (below 2^-14) round to a multiple of 2^-24.
            let bound = rounding * b.abs() + 2f32.powi(-25);
            assert!((a - b).abs() <= bound, "{variant}: weight {b} became {a}");
            rounded += usize::from(a != b);
        }
        assert!(rounded > weights.len() / 2, "{variant}: only {rounded} weights differ from f32");
        let mut tape = Tape::new(&gpu);
        let p = ParamVars::new(&mut tape, &model.weights, false).unwrap();
        let x = tape.input(gpu.upload(&shape, &sample).unwrap());
        let t = gpu.upload(&[timesteps.len()], &timesteps).unwrap();
        let got = gpu.read(&model.unet.forward(&mut tape, &p, &x, &t, None).unwrap().value).unwrap();
        let want = half_output(&format!("{variant}_output"));
        assert_close(&format!("{variant} UNet output vs diffusers"), &got, &want, 2e-4 * scale, 1e-3);
        // And within the weights' rounding of the f32 model's output.
        let drift = got.iter().zip(&full_output).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) as f64;
        assert!(drift > 0.0 && drift < 50.0 * rounding as f64 * scale, "{variant}: output moved {drift:e} of {scale}");
    }
    let err = format!("{:#}", Model::load_variant(&gpu, &dir, Some("fp8")).err().unwrap());
    assert!(err.contains("variants: ") && err.contains("fp16") && err.contains("bf16"), "{err}");
    let err = format!("{:#}", Model::load_variant(&gpu, &dir, Some("../x")).err().unwrap());
    assert!(err.contains("plain name"), "{err}");
}

/// The DDPM paper's UNet family as diffusers ports it (google/ddpm-cifar10-32):
/// TF 'SAME' downsampling, sin-before-cos embedding with freq_shift 1,
/// norm_eps 1e-6, one attention head at 16x16, dropout 0.1 (off in eval
/// mode). Forward, loss and every parameter's gradient against diffusers
/// (`tests/fixtures/make_tiny_paper_unet.py`).
#[test]
fn paper_family_forward_and_gradients_match_diffusers() {
    let config = forward_and_gradients_match_diffusers("tiny_paper_unet");
    assert!(
        (config.downsample_padding, config.flip_sin_to_cos, config.freq_shift, config.norm_eps, config.dropout)
            == (0, false, 1.0, 1e-6, 0.1)
    );
}

/// A class-conditional UNet2DModel (`num_class_embeds`: an embedding row
/// added to the time embedding), with labels that repeat a class and leave
/// two unused (`tests/fixtures/make_tiny_class_unet.py`): forward, loss and
/// every gradient, the class table's included, against diffusers.
#[test]
fn class_conditional_forward_and_gradients_match_diffusers() {
    let config = forward_and_gradients_match_diffusers("tiny_class_unet");
    assert_eq!(config.num_class_embeds, Some(5));
}

/// Load `tests/fixtures/NAME` and compare the forward pass, the loss
/// mean((out - target)^2) and every parameter's gradient with diffusers'
/// (its io.safetensors); returns the config.
fn forward_and_gradients_match_diffusers(name: &str) -> UNetConfig {
    let (_turn, gpu) = common::gpu();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let io = std::fs::read(dir.join("io.safetensors")).unwrap();
    let io = safetensors::SafeTensors::deserialize(&io).unwrap();
    let tensor = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = io.tensor(name).unwrap_or_else(|_| panic!("no {name} in the fixture"));
        (t.shape().to_vec(), t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    };
    let config = UNetConfig::load(&dir.join("config.json")).unwrap();
    let unet = UNet::new(&config).unwrap();
    let weights = unet.table.load(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let store = ParamStore::upload(&gpu, unet.table.clone(), &weights).unwrap();
    let (shape, sample) = tensor("sample");
    let (_, timesteps) = tensor("timesteps");
    let (_, target) = tensor("target");
    let mut tape = Tape::new(&gpu);
    let p = ParamVars::new(&mut tape, &store, true).unwrap();
    let x = tape.input(gpu.upload(&shape, &sample).unwrap());
    let t = gpu.upload(&[timesteps.len()], &timesteps).unwrap();
    let labels = config.num_class_embeds.map(|_| {
        let (label_shape, labels) = tensor("class_labels");
        gpu.upload(&label_shape, &labels).unwrap()
    });
    let out = unet.forward(&mut tape, &p, &x, &t, labels.as_ref()).unwrap();
    let target = tape.input(gpu.upload(&shape, &target).unwrap());
    let loss = tape.mse_loss(&out, &target).unwrap();
    let got = gpu.read(&out.value).unwrap();
    let (_, want) = tensor("output");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    assert_close(&format!("{name} output vs diffusers"), &got, &want, 1e-4 * scale, 1e-3);
    let got_loss = gpu.read(&loss.value).unwrap()[0];
    let want_loss = tensor("loss").1[0];
    assert!(((got_loss - want_loss) / want_loss).abs() < 1e-5, "loss {got_loss} vs diffusers {want_loss}");
    let grads = tape.backward(&loss).unwrap();
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let largest =
        unet.table.entries.iter().map(|e| max_abs(&tensor(&format!("grad.{}", e.name)).1)).fold(0.0, f64::max);
    let mut compared = 0;
    for e in &unet.table.entries {
        let got = gpu.read(grads.get(p.get(&e.name).unwrap()).unwrap()).unwrap();
        let (grad_shape, want) = tensor(&format!("grad.{}", e.name));
        assert_eq!(grad_shape, e.shape, "{}", e.name);
        // Each tensor to 1e-4 of its own scale; a gradient that is zero in
        // exact arithmetic (the key bias: softmax ignores a shift shared by
        // all keys; an unused class's embedding row) is rounding noise or
        // zero, compared at 1e-8 of the largest.
        let scale = max_abs(&want).max(1e-4 * largest);
        assert_close(&format!("{name}: gradient of {}", e.name), &got, &want, 1e-4 * scale, 1e-3);
        compared += 1;
    }
    assert_eq!(compared, unet.table.entries.len());
    assert!(compared > 100, "only {compared} parameters");
    config
}
