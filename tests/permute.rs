//! Axis swaps against the CPU twin, and that applying one twice (with the
//! swapped dims) gives back the input.

mod common;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::permute::{cpu, transpose12};

#[test]
fn transpose12_matches_reference_and_inverts() {
    let mut r = rng();
    for dims in [[1, 1, 1, 1], [2, 3, 5, 7], [3, 16, 25, 1], [2, 9, 4, 8], [1, 64, 7, 3]] {
        let n: usize = dims.iter().product();
        let x = uniform(&mut r, n);
        each_path(|gpu, path| {
            let t = gpu.upload(&[n], &x).unwrap();
            let y = transpose12(gpu, &t, dims).unwrap();
            assert_eq!(y.shape(), &[dims[0], dims[2], dims[1], dims[3]]);
            assert_close(
                &format!("transpose12 {dims:?} on {path:?}"),
                &gpu.read(&y).unwrap(),
                &cpu::transpose12(&x, dims),
                0.0,
                0.0,
            );
            let back = transpose12(gpu, &y, [dims[0], dims[2], dims[1], dims[3]]).unwrap();
            assert_close("round trip", &gpu.read(&back).unwrap(), &x, 0.0, 0.0);
        });
    }
}
