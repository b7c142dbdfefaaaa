// Sinusoidal timestep embedding, as diffusers' get_timestep_embedding.
// Launcher and CPU reference: src/ops/embedding.rs.
//
// Entry point: timestep_embedding(out, timesteps)
//   out:       (N, dim) read_write
//   timesteps: (N) f32
//   half = dim / 2, freq[i] = exp(freq_coef * i), freq_coef = -ln(max_period) / (half - shift)
//   out[n, j]        = sin(t[n] * freq[j]),        j < half
//   out[n, half + j] = cos(t[n] * freq[j])
//   with flip_sin_to_cos the cos half comes first; an odd dim ends in a zero column.
// One invocation per output element.

struct Params {
    batch: u32,
    dim: u32,
    half: u32,
    flip_sin_to_cos: u32,
    freq_coef: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> timesteps: array<f32>;

// 2 pi split as C1 + C2 with C1 = 6.28125 exact in 8 bits, so k * C1 is
// exact for the k that timesteps reach and the reduction loses no accuracy
// before sin_cos (lib/sin_cos.wgsl, whose series holds on [-pi, pi]).
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

@compute @workgroup_size(64)
fn timestep_embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let o = (wid.x + wid.y * nwg.x) * 64u + li;
    if o >= p.batch * p.dim {
        return;
    }
    let n = o / p.dim;
    let j = o % p.dim;
    if j >= 2u * p.half {
        out[o] = 0.0;
        return;
    }
    let i = j % p.half;
    let arg = timesteps[n] * exp(p.freq_coef * f32(i));
    let k = round(arg * INV_TWO_PI);
    let reduced = (arg - k * TWO_PI_HI) - k * TWO_PI_LO;
    let first_half = j < p.half;
    let sc = sin_cos(reduced);
    out[o] = select(sc.x, sc.y, first_half == (p.flip_sin_to_cos != 0u));
}
