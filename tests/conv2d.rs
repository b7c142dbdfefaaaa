//! conv2d forward and every gradient against the CPU twin on every kernel
//! path, at odd and aligned shapes, strides 1 and 2 with TF 'SAME' and
//! symmetric padding, 1x1 convs and image-like inputs (1 or 3 channels); the
//! CPU backward against central finite differences in f64.

mod common;
mod gradcheck;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::gpu::{Caps, Shader};
use ddpm_wgpu::ops;
use ddpm_wgpu::ops::conv2d::{self, cpu, Conv2dGeometry, ForwardPlan, GradInputPlan, GradWeightPlan};
use gradcheck::numeric_grad;

/// Conv of x (n, c_in, h, w) by `k` x `k` weights.
fn geom([n, c_in, h, w]: [usize; 4], c_out: usize, k: usize, stride: usize, pad: [usize; 4]) -> Conv2dGeometry {
    Conv2dGeometry { n, c_in, h, w, c_out, kh: k, kw: k, stride, pad }
}

/// f32 sums of `terms` products against an f64 reference.
fn tolerance(terms: usize) -> (f64, f64) {
    (2e-6 * (terms as f64).sqrt().max(1.0), 1e-4)
}

/// Forward (with and without bias) and all three gradients of `g` on every path.
fn check(g: Conv2dGeometry) {
    let mut r = rng();
    let x = uniform(&mut r, g.x_shape().iter().product());
    let w = uniform(&mut r, g.w_shape().iter().product());
    let bias = uniform(&mut r, g.c_out);
    let dy = uniform(&mut r, g.y_shape().iter().product());
    let want_y = cpu::forward(&g, &x, &w, Some(&bias));
    let want_y_plain = cpu::forward(&g, &x, &w, None);
    let want_dx = cpu::grad_input(&g, &dy, &w);
    let want_dw = cpu::grad_weight(&g, &dy, &x);
    let want_db = cpu::grad_bias(&g, &dy);
    let taps = g.kh * g.kw;
    let (fwd_atol, rtol) = tolerance(g.c_in * taps);
    let (dx_atol, _) = tolerance(g.c_out * taps);
    let (dw_atol, _) = tolerance(g.n * g.out_h() * g.out_w());
    each_path(|gpu, path| {
        let caps = gpu.caps();
        let plans = format!(
            "forward {:?}, grad-input {:?}, grad-weight {:?}",
            conv2d::forward_plan(&g, true, caps),
            conv2d::grad_input_plan(&g, caps),
            conv2d::grad_weight_plan(&g, caps)
        );
        let what = |t: &str| format!("{t} of {g:?} ({plans}) on {path:?}");
        let tx = gpu.upload(&g.x_shape(), &x).unwrap();
        let tw = gpu.upload(&g.w_shape(), &w).unwrap();
        let tb = gpu.upload(&[g.c_out], &bias).unwrap();
        let tdy = gpu.upload(&g.y_shape(), &dy).unwrap();
        let y = conv2d::conv2d_forward(gpu, &g, &tx, &tw, Some(&tb)).unwrap();
        assert_eq!(y.shape(), g.y_shape());
        assert_close(&what("forward+bias"), &gpu.read(&y).unwrap(), &want_y, fwd_atol, rtol);
        let y = conv2d::conv2d_forward(gpu, &g, &tx, &tw, None).unwrap();
        assert_close(&what("forward"), &gpu.read(&y).unwrap(), &want_y_plain, fwd_atol, rtol);
        let (dx, dw, db) = conv2d::conv2d_backward(gpu, &g, &tdy, &tx, &tw, true).unwrap();
        assert_eq!((dx.shape(), dw.shape()), (&g.x_shape()[..], &g.w_shape()[..]));
        assert_close(&what("grad-input"), &gpu.read(&dx).unwrap(), &want_dx, dx_atol, rtol);
        assert_close(&what("grad-weight"), &gpu.read(&dw).unwrap(), &want_dw, dw_atol, rtol);
        assert_close(&what("grad-bias"), &gpu.read(&db.unwrap()).unwrap(), &want_db, dw_atol, rtol);
        // What ran is what the plans name, and the naga check translated it.
        let named = conv2d::plan_kernels(&g, caps);
        let (conv_variants, matmul_variants) = (ops::variants(Shader::Conv2d), ops::variants(Shader::Matmul));
        for k in gpu.built_kernels().into_iter().filter(|k| k.shader == Shader::Conv2d) {
            assert!(conv_variants.contains(&k.defines), "{} {:?} is in no plan's variants", k.entry, k.defines);
        }
        for k in &named {
            let variants = if k.shader == Shader::Conv2d { &conv_variants } else { &matmul_variants };
            assert!(variants.contains(&k.defines), "{}: {} {:?} is not translated", what("plan"), k.entry, k.defines);
        }
    });
}

#[test]
fn three_by_three_stride_one() {
    // Aligned maps (vec4 path), padding 1 as diffusers uses.
    check(geom([2, 8, 8, 16], 40, 3, 1, [1; 4]));
    // Rows of 64 pixels span two subgroups: halo loads at subgroup ends.
    check(geom([1, 5, 4, 64], 9, 3, 1, [1; 4]));
    // Odd maps and channel counts, batch 3 (scalar path).
    check(geom([3, 5, 5, 7], 6, 3, 1, [1; 4]));
    // Odd widths past one pixel tile of a lane (8 or 16 pixels).
    check(geom([2, 2, 5, 11], 6, 3, 1, [1; 4]));
    check(geom([1, 3, 3, 19], 10, 3, 1, [1; 4]));
    // Image-like inputs: one and three channels.
    check(geom([2, 1, 8, 12], 33, 3, 1, [1; 4]));
    check(geom([1, 3, 9, 6], 16, 3, 1, [1; 4]));
    // Few channels over many pixels: grad-weight splits its pixel sum.
    check(geom([2, 3, 16, 32], 4, 3, 1, [1; 4]));
    // The default run's top level: 16 channels at 16x16.
    check(geom([2, 16, 16, 16], 16, 3, 1, [1; 4]));
    // Many output channels (not a multiple of any tile): wider grad-weight tiles.
    check(geom([1, 3, 4, 8], 70, 3, 1, [1; 4]));
    // Asymmetric padding: no left halo and two halo columns on the right.
    check(geom([2, 4, 6, 12], 7, 3, 1, [0, 2, 0, 2]));
    // Valid (no) padding.
    check(geom([1, 3, 7, 10], 5, 3, 1, [0; 4]));
}

#[test]
fn stride_two_downsampling() {
    // TF 'SAME' as in the DDPM paper: pad only bottom and right.
    check(geom([2, 4, 16, 16], 12, 3, 2, [0, 1, 0, 1]));
    check(geom([3, 3, 5, 7], 5, 3, 2, [0, 1, 0, 1]));
    // Symmetric padding 1 as in diffusers.
    check(geom([1, 6, 8, 8], 35, 3, 2, [1; 4]));
    check(geom([1, 2, 9, 7], 4, 3, 2, [1; 4]));
    // Odd widths past one lane's 16 or 32 dx pixels in the stride-2 grad-input.
    check(geom([1, 4, 5, 21], 5, 3, 2, [0, 1, 0, 1]));
    check(geom([1, 2, 3, 37], 6, 3, 2, [1; 4]));
    // dx rows of 128 pixels span two subgroups in the stride-2 grad-input.
    check(geom([1, 3, 4, 128], 5, 3, 2, [0, 1, 0, 1]));
}

#[test]
fn one_by_one_and_other_kernels() {
    check(geom([3, 7, 6, 8], 9, 1, 1, [0; 4]));
    check(geom([1, 64, 4, 4], 3, 1, 1, [0; 4]));
    check(geom([2, 5, 4, 4], 65, 1, 1, [0; 4]));
    check(geom([2, 5, 5, 7], 4, 1, 2, [0; 4]));
    // Unpadded 1x1 runs as a plain GEMM, padded 1x1 on the direct kernels.
    check(geom([1, 6, 4, 8], 10, 1, 1, [0, 0, 0, 0]));
    check(geom([2, 3, 3, 5], 5, 1, 1, [1, 0, 0, 1]));
    // A 2x2 kernel takes the GEMM path; a 5x1 one the direct kernel (kh is a loop).
    check(geom([2, 3, 6, 7], 5, 2, 1, [0, 1, 0, 1]));
    check(Conv2dGeometry { kh: 5, kw: 1, ..geom([1, 4, 9, 8], 6, 1, 1, [2, 2, 0, 0]) });
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let (_turn, gpu) = common::gpu();
    let g = geom([1, 3, 8, 8], 4, 3, 1, [1; 4]);
    let x = gpu.zeros(&[1, 3, 8, 7]).unwrap();
    let w = gpu.zeros(&g.w_shape()).unwrap();
    let err = conv2d::conv2d_forward(&gpu, &g, &x, &w, None).unwrap_err().to_string();
    assert!(err.contains("conv2d_forward") && err.contains("[1, 3, 8, 7]") && err.contains("[1, 3, 8, 8]"), "{err}");
    let too_big = Conv2dGeometry { kh: 11, ..g };
    assert!(too_big.validate().unwrap_err().to_string().contains("larger than the padded map"));
}

#[test]
fn geometry_sizes() {
    let same = geom([1, 1, 16, 16], 1, 3, 2, [0, 1, 0, 1]);
    assert_eq!((same.out_h(), same.out_w()), (8, 8));
    let sym = geom([1, 1, 16, 16], 1, 3, 2, [1; 4]);
    assert_eq!((sym.out_h(), sym.out_w()), (8, 8));
    let odd = geom([2, 3, 5, 7], 4, 3, 2, [0, 1, 0, 1]);
    assert_eq!(odd.y_shape(), [2, 4, 2, 3]);
    assert_eq!(odd.flops(), 2.0 * (2 * 4 * 2 * 3 * 3 * 9) as f64);
    // The shapes in the tests above reach every kind of plan.
    let caps = Caps::ALL[0];
    assert!(matches!(conv2d::forward_plan(&sym, false, caps), ForwardPlan::Direct(_)));
    assert!(matches!(conv2d::grad_input_plan(&sym, caps), GradInputPlan::Transposed(_)));
    let stride2_k2 = geom([1, 1, 5, 5], 1, 2, 2, [0; 4]);
    assert!(matches!(conv2d::grad_input_plan(&stride2_k2, caps), GradInputPlan::Col2im(_)));
    let odd_width = geom([1, 1, 5, 7], 1, 3, 1, [1; 4]);
    assert!(matches!(conv2d::grad_weight_plan(&odd_width, caps), GradWeightPlan::Im2col(_)));
    let aligned = geom([1, 1, 8, 8], 1, 3, 1, [1; 4]);
    assert!(matches!(conv2d::grad_weight_plan(&aligned, caps), GradWeightPlan::Direct { .. }));
    let stride1 = geom([1, 1, 5, 5], 1, 3, 1, [1; 4]);
    assert!(matches!(conv2d::grad_input_plan(&stride1, caps), GradInputPlan::Flipped { .. }));
    let k2 = geom([1, 1, 5, 5], 1, 2, 1, [0; 4]);
    assert!(matches!(conv2d::forward_plan(&k2, true, caps), ForwardPlan::Im2col(_)));
    let pointwise = geom([1, 1, 5, 5], 1, 1, 1, [0; 4]);
    assert!(matches!(conv2d::forward_plan(&pointwise, false, caps), ForwardPlan::Pointwise(_)));
    assert!(matches!(conv2d::forward_plan(&pointwise, true, caps), ForwardPlan::Direct(_)));
    assert!(matches!(conv2d::grad_input_plan(&pointwise, caps), GradInputPlan::Pointwise(_)));
    let strided_pointwise = geom([1, 1, 5, 5], 1, 1, 2, [0; 4]);
    assert!(matches!(conv2d::forward_plan(&strided_pointwise, false, caps), ForwardPlan::Direct(_)));
}

fn assert_close_f64(what: &str, got: &[f64], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-7 + 1e-6 * w.abs(), "{what}: at {i} analytic {g} vs numeric {w}");
    }
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let mut r = rng();
    for g in [
        geom([2, 2, 5, 4], 3, 3, 1, [1; 4]),
        geom([1, 2, 5, 6], 2, 3, 2, [0, 1, 0, 1]),
        geom([2, 3, 4, 4], 2, 1, 1, [0; 4]),
        Conv2dGeometry { kh: 2, kw: 3, ..geom([1, 2, 5, 5], 2, 1, 2, [1, 0, 0, 2]) },
    ] {
        let x = cpu::widen(&uniform(&mut r, g.x_shape().iter().product()));
        let w = cpu::widen(&uniform(&mut r, g.w_shape().iter().product()));
        let b = cpu::widen(&uniform(&mut r, g.c_out));
        let dy = cpu::widen(&uniform(&mut r, g.y_shape().iter().product()));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            cpu::forward_f64(&g, x, w, Some(b)).iter().zip(&dy).map(|(y, d)| y * d).sum()
        };
        let what = |t: &str| format!("{t} of {g:?}");
        assert_close_f64(&what("dx"), &cpu::grad_input_f64(&g, &dy, &w), &numeric_grad(&x, |v| loss(v, &w, &b)));
        assert_close_f64(&what("dw"), &cpu::grad_weight_f64(&g, &dy, &x), &numeric_grad(&w, |v| loss(&x, v, &b)));
        assert_close_f64(&what("db"), &cpu::grad_bias_f64(&g, &dy), &numeric_grad(&b, |v| loss(&x, &w, v)));
    }
}
