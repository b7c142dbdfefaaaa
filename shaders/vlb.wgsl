// The DDPM variational bound (the paper's NLL, Table 1) per sample, in bits
// per dimension: the per-element terms fused with a fixed-order per-sample
// sum. Launchers, table layout and the f64 CPU twin: src/ops/vlb.rs; the
// loop over timesteps: src/nll.rs; timestep indexing (index i = paper
// t - 1): src/schedule.rs. Reference: hojonathanho/diffusion,
// diffusion_utils_2.py (`_vb_terms_bpd`, `_prior_bpd`).
//
// Entry points (bindings in order; outputs first):
//   vlb_terms(out, x0, xt, eps, timestep, table)
//     out[n] = decoder NLL of x0 when t_n == 0, else KL(q(x_(t-1)|x_t,x_0) || p(x_(t-1)|x_t)),
//              meaned over the sample's D elements, / ln 2
//   prior_bpd(out, x0)
//     out[n] = mean over D of KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) / ln 2
//
//   out:      (N) f32, read_write
//   x0:       (N, D) f32, the data: 8-bit values rescaled to [-1, 1]
//   xt:       (N, D) f32, x_t = q_sample(x0, t)
//   eps:      (N, D) f32, the model's eps_theta(x_t, t)
//   timestep: (N) f32 holding each sample's index i in 0..T (exact integers, clamped to T - 1)
//   table:    (ROWS, T) f32, per-index values computed in f64 on the host;
//             the row constants below mirror src/ops/vlb.rs
//
// Per element, with x0_hat = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps
// (clamped to [-r, r] when clip), lv1 = posterior_log_variance_clipped_t and
// lv2 = the model's log variance at t (fixed_small or fixed_large):
//   KL   normal_kl(mu, lv1, mu_theta, lv2)
//          = kl_variance_term_t + (mu - mu_theta)^2 / (2 exp(lv2)),
//        where the variance part 0.5 (-1 + lv2 - lv1 + exp(lv1 - lv2)) is the
//        same for every element and comes from the table (f64), and
//        mu - mu_theta = coef1 (x0 - x0_hat) exactly (the coef2 x_t parts of
//        both posterior means cancel), so no cancellation happens in f32.
//   NLL  -log of the mass that N(mu_theta, exp(lv2)) puts on x0's 8-bit bin
//        [x0 - 1/255, x0 + 1/255], the outer bins running to -inf / +inf
//        (x0 < -0.999, x0 > 0.999), each mass clamped at 1e-12; mu_theta =
//        coef1 x0_hat + coef2 x_t. The CDF is the reference's
//        0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), evaluated as the
//        equal sigmoid(2 u), and a bin in the upper tail is measured by
//        symmetry in the lower tail, where f32 keeps its relative precision.
//   prior  0.5 abar_T x0^2 + prior_const, prior_const = 0.5 (-log(1 - abar_T) - abar_T).
//
// One 64-lane workgroup per sample (the grid folds into y past 65535): lane
// l sums items l, l + 64, ... in order (vec4 when D % 4 == 0, else guarded
// scalar loads), then a fixed tree in workgroup memory adds the lanes, so
// results are bit-reproducible (no atomics). Every term is non-negative, so
// the f32 sums are well conditioned. A sample whose inputs hold a NaN or an
// infinity (tested on the bits, which a compiler may not assume away), or
// whose result is not finite, gets NOT_FINITE_MARK (the largest finite f32)
// instead of a value; the host turns that into an error.

struct Params {
    batch: u32,
    dim: u32,
    steps: u32,
    clip: u32,
    clip_range: f32,
    inv_dim: f32,
    prior_scale: f32,
    prior_const: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> x0: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read> xt: array<vec4<f32>>;
@group(1) @binding(3) var<storage, read> eps: array<vec4<f32>>;
@group(1) @binding(4) var<storage, read> timestep: array<f32>;
@group(1) @binding(5) var<storage, read> table: array<f32>;

const WG: u32 = 64u;
const INV_LN2: f32 = 1.4426950408889634;
// Half the width of an 8-bit bin in [-1, 1].
const HALF_BIN: f32 = 1.0 / 255.0;
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const MIN_MASS: f32 = 1e-12;
// f32::MAX, mirrored in src/ops/vlb.rs.
const NOT_FINITE_MARK: f32 = 0x1.fffffep+127f;
const EXPONENT_BITS: u32 = 0x7f800000u;

// Rows of the table.
const ROW_SQRT_RECIP_ALPHAS_CUMPROD: u32 = 0u;
const ROW_SQRT_RECIPM1_ALPHAS_CUMPROD: u32 = 1u;
const ROW_POSTERIOR_MEAN_COEF1: u32 = 2u;
const ROW_POSTERIOR_MEAN_COEF2: u32 = 3u;
const ROW_HALF_INV_MODEL_VARIANCE: u32 = 4u;
const ROW_KL_VARIANCE_TERM: u32 = 5u;
const ROW_INV_MODEL_STD: u32 = 6u;

var<workgroup> partial: array<f32, WG>;
var<workgroup> flagged: array<u32, WG>;

// ---- geometry and guarded access: sample n, quad q = elements 4q..4q+3 ----

fn aligned() -> bool {
    return p.dim % 4u == 0u;
}

fn quads_per_sample() -> u32 {
    return (p.dim + 3u) / 4u;
}

// Which elements of quad q exist (the last quad of an unaligned D is partial).
fn live(q: u32) -> vec4<bool> {
    return vec4<u32>(4u * q) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(p.dim);
}

fn load_x0(n: u32, q: u32) -> vec4<f32> {
    if aligned() {
        return x0[n * (p.dim / 4u) + q];
    }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        if 4u * q + k < p.dim {
            let i = n * p.dim + 4u * q + k;
            v[k] = x0[i / 4u][i % 4u];
        }
    }
    return v;
}

fn load_xt(n: u32, q: u32) -> vec4<f32> {
    if aligned() {
        return xt[n * (p.dim / 4u) + q];
    }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        if 4u * q + k < p.dim {
            let i = n * p.dim + 4u * q + k;
            v[k] = xt[i / 4u][i % 4u];
        }
    }
    return v;
}

fn load_eps(n: u32, q: u32) -> vec4<f32> {
    if aligned() {
        return eps[n * (p.dim / 4u) + q];
    }
    var v = vec4<f32>(0.0);
    for (var k = 0u; k < 4u; k++) {
        if 4u * q + k < p.dim {
            let i = n * p.dim + 4u * q + k;
            v[k] = eps[i / 4u][i % 4u];
        }
    }
    return v;
}

fn table_at(row: u32, t: u32) -> f32 {
    return table[row * p.steps + t];
}

// No NaN or infinity among the four values, judged on their bits.
fn finite4(v: vec4<f32>) -> bool {
    return all((bitcast<vec4<u32>>(v) & vec4<u32>(EXPONENT_BITS)) != vec4<u32>(EXPONENT_BITS));
}

fn finite1(v: f32) -> bool {
    return (bitcast<u32>(v) & EXPONENT_BITS) != EXPONENT_BITS;
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// ---- the per-element terms ----

// The reference's approximate standard normal CDF,
// 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// The clamps keep exp finite; beyond them the CDF is below 1e-30 from 0 or 1
// either way, far under the 1e-12 clamp of the masses.
fn approx_std_normal_cdf(x: vec4<f32>) -> vec4<f32> {
    let xc = clamp(x, vec4<f32>(-30.0), vec4<f32>(30.0));
    let u = clamp(SQRT_2_OVER_PI * (xc + 0.044715 * xc * xc * xc), vec4<f32>(-40.0), vec4<f32>(40.0));
    return 1.0 / (1.0 + exp(-2.0 * u));
}

// -log of the discretised Gaussian's mass on the 8-bit bin of x (nats).
fn decoder_nll(x: vec4<f32>, mean: vec4<f32>, inv_std: f32) -> vec4<f32> {
    let centred = x - mean;
    let plus_in = inv_std * (centred + HALF_BIN);
    let min_in = inv_std * (centred - HALF_BIN);
    // approx_std_normal_cdf(-z) = 1 - approx_std_normal_cdf(z) exactly (u is odd).
    let cdf_plus = approx_std_normal_cdf(plus_in);
    let cdf_min = approx_std_normal_cdf(min_in);
    let one_minus_cdf_min = approx_std_normal_cdf(-min_in);
    let one_minus_cdf_plus = approx_std_normal_cdf(-plus_in);
    let cdf_delta = select(cdf_plus - cdf_min, one_minus_cdf_min - one_minus_cdf_plus, min_in > vec4<f32>(0.0));
    let log_cdf_plus = log(max(cdf_plus, vec4<f32>(MIN_MASS)));
    let log_one_minus_cdf_min = log(max(one_minus_cdf_min, vec4<f32>(MIN_MASS)));
    let log_delta = log(max(cdf_delta, vec4<f32>(MIN_MASS)));
    let inner = select(log_delta, log_one_minus_cdf_min, x > vec4<f32>(0.999));
    return -select(inner, log_cdf_plus, x < vec4<f32>(-0.999));
}

// ---- the per-sample sum: a fixed tree over the lanes' partial sums ----

// Leaves the sum in partial[0] and the OR of the flags in flagged[0].
fn workgroup_sum(li: u32, value: f32, flag: u32) {
    partial[li] = value;
    flagged[li] = flag;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if li < s {
            partial[li] += partial[li + s];
            flagged[li] |= flagged[li + s];
        }
        workgroupBarrier();
    }
}

fn store_term(n: u32, value: f32, flag: u32) {
    out[n] = select(value, NOT_FINITE_MARK, flag != 0u || !finite1(value));
}

// ---- entry points ----

@compute @workgroup_size(WG)
fn vlb_terms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wid.x + wid.y * nwg.x;
    if n >= p.batch {
        return;
    }
    let t = min(u32(timestep[n]), p.steps - 1u);
    let recip = table_at(ROW_SQRT_RECIP_ALPHAS_CUMPROD, t);
    let recipm1 = table_at(ROW_SQRT_RECIPM1_ALPHAS_CUMPROD, t);
    let coef1 = table_at(ROW_POSTERIOR_MEAN_COEF1, t);
    let coef2 = table_at(ROW_POSTERIOR_MEAN_COEF2, t);
    let half_inv_variance = table_at(ROW_HALF_INV_MODEL_VARIANCE, t);
    let inv_std = table_at(ROW_INV_MODEL_STD, t);
    var acc = vec4<f32>(0.0);
    var flag = 0u;
    for (var q = li; q < quads_per_sample(); q += WG) {
        let data = load_x0(n, q);
        let noisy = load_xt(n, q);
        let e = load_eps(n, q);
        if !(finite4(data) && finite4(noisy) && finite4(e)) {
            flag = 1u;
        }
        var x0_hat = recip * noisy - recipm1 * e;
        if p.clip != 0u {
            x0_hat = clamp(x0_hat, vec4<f32>(-p.clip_range), vec4<f32>(p.clip_range));
        }
        var term: vec4<f32>;
        if t == 0u {
            term = decoder_nll(data, coef1 * x0_hat + coef2 * noisy, inv_std);
        } else {
            let mean_gap = coef1 * (data - x0_hat);
            term = mean_gap * mean_gap * half_inv_variance;
        }
        acc += select(vec4<f32>(0.0), term, live(q));
    }
    workgroup_sum(li, hsum(acc), flag);
    if li == 0u {
        var nats = partial[0] * p.inv_dim;
        if t != 0u {
            nats += table_at(ROW_KL_VARIANCE_TERM, t);
        }
        store_term(n, nats * INV_LN2, flagged[0]);
    }
}

@compute @workgroup_size(WG)
fn prior_bpd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let n = wid.x + wid.y * nwg.x;
    if n >= p.batch {
        return;
    }
    var acc = vec4<f32>(0.0);
    var flag = 0u;
    for (var q = li; q < quads_per_sample(); q += WG) {
        let data = load_x0(n, q);
        if !finite4(data) {
            flag = 1u;
        }
        acc += select(vec4<f32>(0.0), data * data, live(q));
    }
    workgroup_sum(li, hsum(acc), flag);
    if li == 0u {
        store_term(n, (p.prior_const + p.prior_scale * (partial[0] * p.inv_dim)) * INV_LN2, flagged[0]);
    }
}
