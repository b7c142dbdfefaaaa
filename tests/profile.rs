//! The per-kernel profile (`Gpu::profile`): every launch is counted under
//! its kernel, the times add up, and profiling changes no result.

mod common;

use common::{rng, uniform};
use ddpm_wgpu::ops::matmul::matmul;

#[test]
fn a_profile_counts_every_launch_by_kernel_and_leaves_results_unchanged() {
    let (_turn, gpu) = common::gpu();
    let mut r = rng();
    let (m, k, n) = (67, 45, 33);
    let a = gpu.upload(&[m, k], &uniform(&mut r, m * k)).unwrap();
    let b = gpu.upload(&[k, n], &uniform(&mut r, k * n)).unwrap();
    let chain = || -> anyhow::Result<ddpm_wgpu::Tensor> {
        let c = matmul(&gpu, &a, &b, false, false)?;
        // c (m, n) x b^T (n, k): a second, differently shaped launch.
        matmul(&gpu, &c, &b, false, true)
    };
    let plain = gpu.read(&chain().unwrap()).unwrap();
    if !gpu.info().timestamps {
        let e = gpu.profile(|| chain().map(drop)).unwrap_err();
        assert!(format!("{e}").contains("no timestamp queries"), "{e}");
        return;
    }
    let before = gpu.launch_count();
    let mut result = None;
    let profile = gpu
        .profile(|| {
            result = Some(chain()?);
            Ok(())
        })
        .unwrap();
    let launches = (gpu.launch_count() - before) as usize;
    let profiled = gpu.read(&result.unwrap()).unwrap();
    assert!(plain.iter().zip(&profiled).all(|(x, y)| x.to_bits() == y.to_bits()), "profiling changed the result");

    eprintln!("{profile:#?}");
    assert!(launches >= 2);
    assert_eq!(profile.kernels.iter().map(|k| k.launches).sum::<usize>(), launches);
    assert!(profile.kernels.iter().any(|k| k.kernel.starts_with("Matmul::matmul")), "{profile:?}");
    assert!(profile.kernels.iter().all(|k| k.ms.is_finite() && k.ms >= 0.0));
    assert!(profile.total_ms > 0.0 && profile.total_ms.is_finite());
    let sum: f64 = profile.kernels.iter().map(|k| k.ms).sum();
    assert!((sum - profile.total_ms).abs() <= 1e-9 * sum.max(1.0));
    assert!(profile.kernels.windows(2).all(|w| w[0].ms >= w[1].ms), "largest first");
    // An empty batch of work is an empty profile.
    let empty = gpu.profile(|| Ok(())).unwrap();
    assert!(empty.kernels.is_empty() && empty.total_ms == 0.0);
}
