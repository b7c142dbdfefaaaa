// Dropout (Srivastava et al. 2014) with a mask that is drawn, never stored.
// Launcher, CPU twin and the key: src/ops/dropout.rs.
//
// Entry point (bindings in order):
//   dropout(out, x)   out = x * keep / (1 - rate), element by element
//
//   x, out: (N, D) f32 (D = C * H * W of one sample)
//
// keep for element e of row n is word e % 4 of Philox4x32-10(counter =
// (e / 4, first_sample + n, step, STREAM + layer), key = seed) compared
// with rate * 2^32 (p.threshold): the mask depends on the sample's global
// index, the training step and the layer only, so a sample's mask is the same
// in any batch, a resumed run redraws it exactly, and the backward pass is
// this same kernel applied to dy. The Gaussian noise of shaders/ddpm.wgsl
// uses stream 0 of the same counters; dropout streams start at 1.

struct Params {
    batch: u32,
    dim: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    first_sample: u32,
    layer: u32,
    // Elements whose word is below this are dropped: round(rate * 2^32).
    threshold: u32,
    // 1 / (1 - rate).
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> x: array<f32>;

const WG: u32 = 64u;
const STREAM: u32 = 1u;

// One invocation per four consecutive elements of one sample: one Philox call.
@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = (wid.x + wid.y * nwg.x) * WG + li;
    let quads = (p.dim + 3u) / 4u;
    if g >= p.batch * quads {
        return;
    }
    let n = g / quads;
    let q = g % quads;
    let bits = philox4x32_10(vec4<u32>(q, p.first_sample + n, p.step, STREAM + p.layer), vec2<u32>(p.seed_lo, p.seed_hi));
    for (var k = 0u; k < 4u; k++) {
        let e = 4u * q + k;
        if e < p.dim {
            let i = n * p.dim + e;
            out[i] = select(0.0, x[i] * p.scale, bits[k] >= p.threshold);
        }
    }
}
