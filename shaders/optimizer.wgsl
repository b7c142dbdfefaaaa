// Optimiser kernels over flat parameter buffers: every parameter, its
// gradient and its Adam moments share one layout, so each of these is one
// dispatch per (up to 64 MiB) chunk however many tensors the model has.
// Launchers and CPU references: src/ops/optimizer.rs.
//
// Entry points (bindings in order, outputs first; all (len) f32 unless noted):
//   sum_squares(partial, g)        partial: (workgroups) sum of g^2 over each
//                                  workgroup's contiguous chunk, fixed order
//   adam_step(param, m, v, g, norm_sq)
//                                  norm_sq: (1) squared global gradient norm;
//                                  clip g by max_norm / (norm + 1e-6) when
//                                  max_norm > 0 (as torch's clip_grad_norm_),
//                                  then Adam (L2 weight decay added to g) or
//                                  AdamW (decoupled decay), as torch.optim does
//   ema_update(ema, param)         ema = decay * ema + (1 - decay) * param
// Only the `len` elements are written, never buffer padding.

struct Params {
    len: u32,
    decoupled: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    max_norm: f32,
    decay: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Each entry point uses its own bindings; no two share a slot within one.
@group(1) @binding(0) var<storage, read_write> partial_sums: array<f32>;
@group(1) @binding(1) var<storage, read> squared: array<vec4<f32>>;

@group(1) @binding(0) var<storage, read_write> param: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> moment1: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read_write> moment2: array<vec4<f32>>;
@group(1) @binding(3) var<storage, read> grad: array<vec4<f32>>;
@group(1) @binding(4) var<storage, read> norm_sq: array<f32>;

@group(1) @binding(0) var<storage, read_write> ema: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read> source: array<vec4<f32>>;

const WG: u32 = 64u;
// vec4s summed by one lane of sum_squares.
const PER_LANE: u32 = 16u;
var<workgroup> partial: array<f32, WG>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + li;
}

// The valid components of vec4 number i (zero past `len`).
fn mask(i: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(4u * i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.len));
}

@compute @workgroup_size(WG)
fn sum_squares(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let group = wid.x + wid.y * nwg.x;
    let first = group * WG * PER_LANE;
    let count = (p.len + 3u) / 4u;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < PER_LANE; k++) {
        let i = first + k * WG + li;
        if i < count {
            let g = squared[i] * mask(i);
            acc = fma(g, g, acc);
        }
    }
    partial[li] = acc.x + acc.y + acc.z + acc.w;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if li < s {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if li == 0u {
        partial_sums[group] = partial[0];
    }
}

@compute @workgroup_size(WG)
fn adam_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = index(wid, nwg, li);
    if i >= (p.len + 3u) / 4u {
        return;
    }
    var clip = 1.0;
    if p.max_norm > 0.0 {
        clip = min(1.0, p.max_norm / (sqrt(norm_sq[0]) + 1e-6));
    }
    var w = param[i];
    var g = grad[i] * clip;
    if p.decoupled != 0u {
        w *= 1.0 - p.lr * p.weight_decay;
    } else {
        g = fma(vec4<f32>(p.weight_decay), w, g);
    }
    let m = p.beta1 * moment1[i] + (1.0 - p.beta1) * g;
    let v = p.beta2 * moment2[i] + (1.0 - p.beta2) * g * g;
    let denom = sqrt(v) / sqrt(p.bias_correction2) + p.eps;
    w -= (p.lr / p.bias_correction1) * m / denom;
    if 4u * i + 4u <= p.len {
        param[i] = w;
        moment1[i] = m;
        moment2[i] = v;
    } else {
        for (var e = 0u; 4u * i + e < p.len; e++) {
            param[i][e] = w[e];
            moment1[i][e] = m[e];
            moment2[i][e] = v[e];
        }
    }
}

@compute @workgroup_size(WG)
fn ema_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = index(wid, nwg, li);
    if i >= (p.len + 3u) / 4u {
        return;
    }
    let updated = mix(source[i], ema[i], vec4<f32>(p.decay));
    if 4u * i + 4u <= p.len {
        ema[i] = updated;
    } else {
        for (var e = 0u; 4u * i + e < p.len; e++) {
            ema[i][e] = updated[e];
        }
    }
}
