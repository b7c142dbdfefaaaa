//! Patching (Hoogeboom et al. 2023, "simple diffusion"): the UNet can see
//! each p x p block of pixels as p² channels of one pixel, so a (C, R, R)
//! image is diffused as a (C·p², R/p, R/p) sample. The top level of the
//! UNet then costs p² times less, and the noise, schedule and loss are the
//! same per element (the rearrangement is a permutation).
//!
//! The order is PyTorch's `pixel_unshuffle` / `pixel_shuffle`: channel
//! `c·p² + i·p + j` of output pixel (y, x) is input channel c at pixel
//! (y·p + i, x·p + j). It runs on the host, on the batch the trainer
//! uploads and on the samples read back.

/// (N, C, R, R) images to (N, C·p², R/p, R/p) samples; `resolution` is R.
pub fn unshuffle(images: &[f32], channels: usize, resolution: usize, p: usize) -> Vec<f32> {
    rearrange(images, channels, resolution, p, true)
}

/// (N, C·p², R/p, R/p) samples back to (N, C, R, R) images; `resolution` is R.
pub fn shuffle(samples: &[f32], channels: usize, resolution: usize, p: usize) -> Vec<f32> {
    rearrange(samples, channels, resolution, p, false)
}

fn rearrange(from: &[f32], channels: usize, resolution: usize, p: usize, to_patches: bool) -> Vec<f32> {
    assert!(p >= 1 && resolution.is_multiple_of(p), "patch size {p} does not divide {resolution}");
    if p == 1 {
        return from.to_vec();
    }
    let (r, small) = (resolution, resolution / p);
    let image_len = channels * r * r;
    let mut out = vec![0.0; from.len()];
    for (src, dst) in from.chunks_exact(image_len).zip(out.chunks_exact_mut(image_len)) {
        for c in 0..channels {
            for y in 0..r {
                for x in 0..r {
                    let pixel = c * r * r + y * r + x;
                    let (i, j) = (y % p, x % p);
                    let patch = ((c * p + i) * p + j) * small * small + (y / p) * small + x / p;
                    if to_patches {
                        dst[patch] = src[pixel];
                    } else {
                        dst[pixel] = src[patch];
                    }
                }
            }
        }
    }
    out
}
