// DDPM noising and sampling steps, fused with a counter-based Gaussian
// generator. Launchers, table layouts and CPU references: src/ops/ddpm.rs;
// schedule and timestep indexing (index i = paper t - 1): src/schedule.rs.
//
// Entry points (bindings in order; outputs first):
//   randn(out)                               out = z
//   random_bits(out)                         out[n] = Philox4x32-10(counter + (n,0,0,0), key), raw words
//   q_sample(out, eps, x, timestep, table)   eps = z;  out = sqrt(abar_t) x + sqrt(1 - abar_t) eps
//   p_sample(out, eps, x, timestep, table)   out = x_(t-1) from x = x_t and eps = eps_theta (DDPM)
//   ddim_step(out, eps, x, timestep, table)  out = x_prev from x = x_t and eps = eps_theta (DDIM)
//   to_epsilon(out, eps, x, timestep, table) out = eps_theta from the model's output in eps
//                                            (v or x_0, p.prediction) and x = x_t
//   velocity(out, eps, x, timestep, table)   out = v = sqrt(abar_t) eps - sqrt(1 - abar_t) x, x = x_0
//
// The same steps with the caller's noise instead of Philox's (to drive the
// fused kernels from a reference or an external sampler):
//   q_sample_given(out, eps, x, timestep, table)             eps holds the noise (read only)
//   p_sample_given(out, eps, x, timestep, table, noise, x0)  z = noise; x0 = the predicted x_0
//   ddim_step_given(out, eps, x, timestep, table, noise, x0) (clipped when clipping is on)
//
//   out:      (N, D) f32, read_write
//   eps:      (N, D) f32, read_write: q_sample writes the noise it drew; the
//             samplers only read the model's prediction from it
//   x:        (N, D) f32: x_0 for q_sample, x_t for the samplers
//   timestep: (N) f32 holding each sample's index i in 0..T (exact integers)
//   table:    (ROWS, T) f32, per-index coefficients computed in f64 on the
//             host; the row constants below mirror src/ops/ddpm.rs
//   For random_bits, out is (count, 4) and the words are f32 bit patterns.
//
// p_sample (diffusers DDPMScheduler.step, epsilon prediction):
//   without clipping  mean = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)   (Algorithm 2)
//   with clipping     x0 = clamp(x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps, -r, r),
//                     mean = posterior_mean_coef1 x0 + posterior_mean_coef2 x_t
//   out = mean + sigma_t z, and no noise at index 0 (paper t = 1).
// ddim_step (diffusers DDIMScheduler.step, eps not re-derived after clipping):
//   out = coef_x0 x0 + coef_eps eps + sigma z, x0 clipped as above.
//
// Noise: z for element e of row n is component e % 4 of
// BoxMuller(Philox4x32-10(counter = (e / 4, first_sample + n, step, 0),
// key = seed)), so a sample's noise depends on its global index only, not
// on the batch or chunk it is in or on the launch geometry. Each invocation handles four consecutive elements of one sample:
// one Philox call, two Box-Muller pairs, vec4 loads when D % 4 == 0.

struct Params {
    batch: u32,
    dim: u32,
    steps: u32,
    clip: u32,
    clip_range: f32,
    seed_lo: u32,
    seed_hi: u32,
    noise_step: u32,
    counter: vec4<u32>,
    // Global index of row 0: row n draws sample first_sample + n's noise.
    first_sample: u32,
    // to_epsilon: 1 = v_prediction, 2 = sample (x_0).
    prediction: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read_write> eps: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(1) @binding(3) var<storage, read> timestep: array<f32>;
@group(1) @binding(4) var<storage, read> table: array<f32>;
// Only the *_given entry points bind these.
@group(1) @binding(5) var<storage, read> noise: array<vec4<f32>>;
@group(1) @binding(6) var<storage, read_write> x0_out: array<vec4<f32>>;

const WG: u32 = 64u;
const PI: f32 = 3.14159265358979;

// Rows of the DDPM table (q_sample, p_sample).
const ROW_SQRT_ALPHAS_CUMPROD: u32 = 0u;
const ROW_SQRT_ONE_MINUS_ALPHAS_CUMPROD: u32 = 1u;
const ROW_SQRT_RECIP_ALPHAS_CUMPROD: u32 = 2u;
const ROW_SQRT_RECIPM1_ALPHAS_CUMPROD: u32 = 3u;
const ROW_SQRT_RECIP_ALPHAS: u32 = 4u;
const ROW_EPS_COEF: u32 = 5u;
const ROW_POSTERIOR_MEAN_COEF1: u32 = 6u;
const ROW_POSTERIOR_MEAN_COEF2: u32 = 7u;
const ROW_SIGMA: u32 = 8u;
// Rows of the DDIM table (ddim_step); rows 2 and 3 as above.
const DDIM_ROW_COEF_X0: u32 = 0u;
const DDIM_ROW_COEF_EPS: u32 = 1u;
const DDIM_ROW_SIGMA: u32 = 4u;

// ---- Box-Muller over Philox4x32-10 (shaders/lib/philox.wgsl, appended) ----

// The top 23 bits as a uniform in (0, 1), exactly representable, so log()
// never sees 0 and the CPU twin can rebuild the same f32.
fn open_uniform(bits: u32) -> f32 {
    return (f32(bits >> 9u) + 0.5) * (1.0 / 8388608.0);
}

// -2 ln(u) to f32 relative precision for u in (0, 1). Near u = 1 the result
// is tiny and log()'s absolute error (about 1e-7 on lavapipe, up to 2^-21 by
// the WGSL spec) would swamp it, so there it comes from the series
// ln(u) = 2 atanh(s), s = (u - 1) / (u + 1), |s| < 1/7 (truncation < 1e-9).
fn minus_two_log(u: f32) -> f32 {
    if u < 0.75 {
        return -2.0 * log(u);
    }
    let s = (u - 1.0) / (u + 1.0);
    let s2 = s * s;
    return -4.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))));
}

// Two independent N(0,1) values. The angle lies in (-pi, pi), where the
// series of sin_cos (lib/sin_cos.wgsl) holds.
fn box_muller(a: u32, b: u32) -> vec2<f32> {
    let radius = sqrt(minus_two_log(open_uniform(a)));
    let angle = PI * (2.0 * open_uniform(b) - 1.0);
    return radius * sin_cos(angle).yx;
}

// N(0,1) noise for elements 4q..4q+3 of row n (global sample first_sample + n).
fn normal4(n: u32, q: u32) -> vec4<f32> {
    let bits = philox4x32_10(vec4<u32>(q, p.first_sample + n, p.noise_step, 0u), vec2<u32>(p.seed_lo, p.seed_hi));
    return vec4<f32>(box_muller(bits.x, bits.y), box_muller(bits.z, bits.w));
}

// ---- geometry and guarded access: invocation -> (sample n, quad q) ----

fn quads_per_sample() -> u32 {
    return (p.dim + 3u) / 4u;
}

fn invocation(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + li;
}

fn aligned() -> bool {
    return p.dim % 4u == 0u;
}

// Flat element index of element 4q + k of sample n, or a value past the
// tensor when that element does not exist (last quad of an unaligned D).
fn element(n: u32, q: u32, k: u32) -> u32 {
    if 4u * q + k < p.dim {
        return n * p.dim + 4u * q + k;
    }
    return 0xFFFFFFFFu;
}

fn load_x(n: u32, q: u32) -> vec4<f32> {
    if aligned() {
        return x[(n * p.dim) / 4u + q];
    }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let i = element(n, q, k);
        if i != 0xFFFFFFFFu {
            v[k] = x[i / 4u][i % 4u];
        }
    }
    return v;
}

fn load_eps(n: u32, q: u32) -> vec4<f32> {
    if aligned() {
        return eps[(n * p.dim) / 4u + q];
    }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let i = element(n, q, k);
        if i != 0xFFFFFFFFu {
            v[k] = eps[i / 4u][i % 4u];
        }
    }
    return v;
}

fn store_out(n: u32, q: u32, v: vec4<f32>) {
    if aligned() {
        out[(n * p.dim) / 4u + q] = v;
        return;
    }
    for (var k = 0u; k < 4u; k++) {
        let i = element(n, q, k);
        if i != 0xFFFFFFFFu {
            out[i / 4u][i % 4u] = v[k];
        }
    }
}

fn load_noise(n: u32, q: u32) -> vec4<f32> {
    if aligned() {
        return noise[(n * p.dim) / 4u + q];
    }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        let i = element(n, q, k);
        if i != 0xFFFFFFFFu {
            v[k] = noise[i / 4u][i % 4u];
        }
    }
    return v;
}

fn store_x0(n: u32, q: u32, v: vec4<f32>) {
    if aligned() {
        x0_out[(n * p.dim) / 4u + q] = v;
        return;
    }
    for (var k = 0u; k < 4u; k++) {
        let i = element(n, q, k);
        if i != 0xFFFFFFFFu {
            x0_out[i / 4u][i % 4u] = v[k];
        }
    }
}

fn store_eps(n: u32, q: u32, v: vec4<f32>) {
    if aligned() {
        eps[(n * p.dim) / 4u + q] = v;
        return;
    }
    for (var k = 0u; k < 4u; k++) {
        let i = element(n, q, k);
        if i != 0xFFFFFFFFu {
            eps[i / 4u][i % 4u] = v[k];
        }
    }
}

// This sample's timestep index, clamped into the table.
fn sample_timestep(n: u32) -> u32 {
    return min(u32(timestep[n]), p.steps - 1u);
}

fn table_at(row: u32, t: u32) -> f32 {
    return table[row * p.steps + t];
}

// x0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps, clipped when asked.
fn predict_x0(t: u32, xt: vec4<f32>, e: vec4<f32>) -> vec4<f32> {
    let x0 = table_at(ROW_SQRT_RECIP_ALPHAS_CUMPROD, t) * xt - table_at(ROW_SQRT_RECIPM1_ALPHAS_CUMPROD, t) * e;
    if p.clip != 0u {
        return clamp(x0, vec4<f32>(-p.clip_range), vec4<f32>(p.clip_range));
    }
    return x0;
}

// ---- entry points ----

@compute @workgroup_size(WG)
fn randn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g >= p.batch * quads {
        return;
    }
    let n = g / quads;
    let q = g % quads;
    store_out(n, q, normal4(n, q));
}

@compute @workgroup_size(WG)
fn random_bits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    if g >= p.batch {
        return;
    }
    let bits = philox4x32_10(p.counter + vec4<u32>(g, 0u, 0u, 0u), vec2<u32>(p.seed_lo, p.seed_hi));
    out[g] = bitcast<vec4<f32>>(bits);
}

@compute @workgroup_size(WG)
fn q_sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g >= p.batch * quads {
        return;
    }
    let n = g / quads;
    let q = g % quads;
    let z = normal4(n, q);
    store_eps(n, q, z);
    store_out(n, q, noised(n, q, z));
}

// sqrt(abar_t) x_0 + sqrt(1 - abar_t) z for row n's timestep.
fn noised(n: u32, q: u32, z: vec4<f32>) -> vec4<f32> {
    let t = sample_timestep(n);
    return table_at(ROW_SQRT_ALPHAS_CUMPROD, t) * load_x(n, q) + table_at(ROW_SQRT_ONE_MINUS_ALPHAS_CUMPROD, t) * z;
}

@compute @workgroup_size(WG)
fn q_sample_given(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g >= p.batch * quads {
        return;
    }
    let n = g / quads;
    let q = g % quads;
    store_out(n, q, noised(n, q, load_eps(n, q)));
}

// The prediction types of `p.prediction` (0, epsilon, needs no conversion).
const PREDICTION_V: u32 = 1u;
const PREDICTION_SAMPLE: u32 = 2u;

// eps = sqrt(abar) v + sqrt(1 - abar) x_t = (v + sqrt(1/abar - 1) x_t) / sqrt(1/abar)
// eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar) = (sqrt(1/abar) x_t - x_0) / sqrt(1/abar - 1)
@compute @workgroup_size(WG)
fn to_epsilon(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g >= p.batch * quads {
        return;
    }
    let n = g / quads;
    let q = g % quads;
    let t = sample_timestep(n);
    let xt = load_x(n, q);
    let predicted = load_eps(n, q);
    let recip = table_at(ROW_SQRT_RECIP_ALPHAS_CUMPROD, t);
    let recipm1 = table_at(ROW_SQRT_RECIPM1_ALPHAS_CUMPROD, t);
    if p.prediction == PREDICTION_V {
        store_out(n, q, (predicted + recipm1 * xt) / recip);
    } else {
        store_out(n, q, (recip * xt - predicted) / recipm1);
    }
}

@compute @workgroup_size(WG)
fn velocity(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g >= p.batch * quads {
        return;
    }
    let n = g / quads;
    let q = g % quads;
    let t = sample_timestep(n);
    store_out(n, q, table_at(ROW_SQRT_ALPHAS_CUMPROD, t) * load_eps(n, q) - table_at(ROW_SQRT_ONE_MINUS_ALPHAS_CUMPROD, t) * load_x(n, q));
}

// A reverse step without its noise: the mean x_prev moves to, the noise's
// scale, and the predicted x_0 (clipped when clipping is on).
struct Step {
    mean: vec4<f32>,
    sigma: f32,
    x0: vec4<f32>,
}

// diffusers DDPMScheduler.step; no noise at index 0 (paper t = 1).
fn p_sample_step(n: u32, q: u32) -> Step {
    let t = sample_timestep(n);
    let xt = load_x(n, q);
    let e = load_eps(n, q);
    let x0 = predict_x0(t, xt, e);
    var mean: vec4<f32>;
    if p.clip != 0u {
        mean = table_at(ROW_POSTERIOR_MEAN_COEF1, t) * x0 + table_at(ROW_POSTERIOR_MEAN_COEF2, t) * xt;
    } else {
        mean = table_at(ROW_SQRT_RECIP_ALPHAS, t) * (xt - table_at(ROW_EPS_COEF, t) * e);
    }
    return Step(mean, select(0.0, table_at(ROW_SIGMA, t), t > 0u), x0);
}

// diffusers DDIMScheduler.step.
fn ddim_step_step(n: u32, q: u32) -> Step {
    let t = sample_timestep(n);
    let xt = load_x(n, q);
    let e = load_eps(n, q);
    let x0 = predict_x0(t, xt, e);
    return Step(table_at(DDIM_ROW_COEF_X0, t) * x0 + table_at(DDIM_ROW_COEF_EPS, t) * e, table_at(DDIM_ROW_SIGMA, t), x0);
}

// The step with Philox noise, drawn only where it is added.
fn with_philox(n: u32, q: u32, s: Step) -> vec4<f32> {
    if s.sigma > 0.0 {
        return s.mean + s.sigma * normal4(n, q);
    }
    return s.mean;
}

// The step with the caller's noise; writes the predicted x_0 too.
fn with_given(n: u32, q: u32, s: Step) -> vec4<f32> {
    store_x0(n, q, s.x0);
    if s.sigma > 0.0 {
        return s.mean + s.sigma * load_noise(n, q);
    }
    return s.mean;
}

@compute @workgroup_size(WG)
fn p_sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g < p.batch * quads {
        store_out(g / quads, g % quads, with_philox(g / quads, g % quads, p_sample_step(g / quads, g % quads)));
    }
}

@compute @workgroup_size(WG)
fn ddim_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g < p.batch * quads {
        store_out(g / quads, g % quads, with_philox(g / quads, g % quads, ddim_step_step(g / quads, g % quads)));
    }
}

@compute @workgroup_size(WG)
fn p_sample_given(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g < p.batch * quads {
        store_out(g / quads, g % quads, with_given(g / quads, g % quads, p_sample_step(g / quads, g % quads)));
    }
}

@compute @workgroup_size(WG)
fn ddim_step_given(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = invocation(wid, nwg, li);
    let quads = quads_per_sample();
    if g < p.batch * quads {
        store_out(g / quads, g % quads, with_given(g / quads, g % quads, ddim_step_step(g / quads, g % quads)));
    }
}
