//! The buffer pool: a loop with the same shapes every iteration stops
//! creating GPU buffers after its first pass.

mod common;

use ddpm_wgpu::ops::{elementwise as ew, matmul, reduce};

#[test]
fn steady_state_loop_allocates_nothing_after_first_pass() {
    let (_turn, gpu) = common::gpu();
    let w = gpu.upload(&[32, 48], &vec![0.01; 32 * 48]).unwrap();
    let bias = gpu.upload(&[48], &[0.1; 48]).unwrap();
    let mut allocations = Vec::new();
    let mut losses = Vec::new();
    for step in 0..10 {
        let x = gpu.upload(&[16, 32], &vec![step as f32 * 0.1; 16 * 32]).unwrap();
        let h = matmul::matmul(&gpu, &x, &w, false, false).unwrap();
        let h = ew::silu(&gpu, &h).unwrap();
        let h = ew::add_channel(&gpu, &h, &bias).unwrap();
        let sq = ew::mul(&gpu, &h, &h).unwrap();
        let loss = reduce::mean(&gpu, &sq, &[0, 1]).unwrap();
        losses.push(gpu.read(&loss).unwrap()[0]);
        allocations.push(gpu.pool_stats().allocations);
    }
    assert!(allocations[0] > 0);
    assert!(allocations.windows(2).all(|w| w[0] == w[1]), "allocations kept growing: {allocations:?}");
    assert!(
        losses.iter().all(|l| l.is_finite()) && losses[9] > losses[0],
        "the loop must compute something: {losses:?}"
    );
    let stats = gpu.pool_stats();
    // The pool owns every live buffer, and the peak was reached.
    assert!(stats.reserved_bytes >= stats.live_bytes && stats.peak_live_bytes >= stats.live_bytes, "{stats:?}");
    assert!(stats.peak_live_bytes > 0, "{stats:?}");
}

#[test]
fn dropped_tensors_return_to_the_pool() {
    let (_turn, gpu) = common::gpu();
    let before = gpu.pool_stats();
    let t = gpu.zeros(&[1000, 37]).unwrap();
    let during = gpu.pool_stats();
    assert_eq!(during.live_bytes - before.live_bytes, 1000 * 37 * 4);
    drop(t);
    assert_eq!(gpu.pool_stats().live_bytes, before.live_bytes);
    let again = gpu.zeros(&[37, 1000]).unwrap();
    assert_eq!(gpu.pool_stats().allocations, during.allocations, "same size must reuse the freed buffer");
    assert_eq!(gpu.read(&again).unwrap(), vec![0.0; 37_000]);
}

#[test]
fn oversized_tensor_is_a_clear_error() {
    let (_turn, gpu) = common::gpu();
    let too_big = (gpu.info().max_buffer_size / 4 + 1) as usize;
    let err = gpu.uninit(&[too_big]).unwrap_err().to_string();
    assert!(err.contains("exceeds"), "{err}");
    // Bigger than one binding: allowed as a buffer, refused when bound whole.
    let wide = gpu.zeros(&[(gpu.info().max_storage_binding / 4 + 64) as usize]).unwrap();
    let err = ddpm_wgpu::ops::elementwise::scale(&gpu, &wide, 2.0).unwrap_err().to_string();
    assert!(err.contains("largest storage binding"), "{err}");
    drop(wide);
    gpu.trim_pool();
}

#[test]
fn copies_clears_and_reads_respect_views() {
    let (_turn, gpu) = common::gpu();
    let flat = gpu.zeros(&[256]).unwrap();
    for k in 0..3 {
        let v = gpu.upload(&[2], &[k as f32 + 1.0, -(k as f32)]).unwrap();
        gpu.copy(&v, &flat.view(64 * k, &[2]).unwrap()).unwrap();
    }
    let other = gpu.zeros(&[256]).unwrap();
    gpu.copy(&flat.view(0, &[2]).unwrap(), &other.view(64, &[2]).unwrap()).unwrap();
    gpu.copy_region(&other.view(64, &[2]).unwrap(), 0, &flat.view(192, &[64]).unwrap(), 10, 2).unwrap();
    gpu.clear(&flat.view(128, &[1]).unwrap()).unwrap();
    let all = gpu.read(&flat).unwrap();
    assert_eq!(&all[0..2], &[1.0, 0.0]);
    assert_eq!(&all[64..66], &[2.0, -1.0]);
    assert_eq!(&all[128..130], &[0.0, -2.0]);
    assert_eq!(&all[202..204], &[1.0, 0.0]);
    assert_eq!(gpu.read(&flat.view(64, &[2]).unwrap()).unwrap(), vec![2.0, -1.0]);
    assert_eq!(all.iter().filter(|&&v| v != 0.0).count(), 5);
}
