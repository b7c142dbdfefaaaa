//! Patching's rearrangement is PyTorch's pixel_unshuffle / pixel_shuffle
//! (channel c·p² + i·p + j of pixel (y, x) is channel c at (y·p + i, x·p + j)),
//! and the two undo each other.

use ddpm_wgpu::patch::{shuffle, unshuffle};
use rand::Rng;

mod common;

#[test]
fn unshuffle_is_pytorchs_pixel_unshuffle() {
    // torch.arange(16.).view(1, 1, 4, 4) through pixel_unshuffle(x, 2).
    let image: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let want = [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15].map(|v| v as f32);
    assert_eq!(unshuffle(&image, 1, 4, 2), want);
    assert_eq!(shuffle(&want, 1, 4, 2), image);
    // Two channels: channel 1's patches follow all of channel 0's.
    let two: Vec<f32> = (0..32).map(|v| v as f32).collect();
    let patched = unshuffle(&two, 2, 4, 2);
    assert_eq!(&patched[..16], &want);
    assert_eq!(patched[16..].iter().map(|v| v - 16.0).collect::<Vec<_>>(), want);
}

#[test]
fn shuffle_undoes_unshuffle_at_any_patch_size() {
    let mut rng = common::rng();
    for (n, channels, resolution, p) in [(2, 3, 12, 3), (1, 1, 32, 2), (3, 2, 8, 4), (2, 3, 6, 1)] {
        let images: Vec<f32> = (0..n * channels * resolution * resolution).map(|_| rng.random::<f32>()).collect();
        let patched = unshuffle(&images, channels, resolution, p);
        assert_eq!(shuffle(&patched, channels, resolution, p), images, "C {channels} R {resolution} p {p}");
        // A permutation: the same values, and (p > 1) moved.
        let mut a = images.clone();
        let mut b = patched.clone();
        a.sort_by(f32::total_cmp);
        b.sort_by(f32::total_cmp);
        assert_eq!(a, b);
        assert_eq!(patched == images, p == 1, "C {channels} R {resolution} p {p}");
    }
}
