// Group normalisation over NCHW tensors, optionally fused with a SiLU.
// Launcher and CPU reference: src/ops/group_norm.rs.
//
//   x viewed as (N, G, cpg * HW); group (n, g) is one contiguous run of
//   group_len = cpg * HW elements, channels g * cpg .. (g + 1) * cpg.
//   mean, var over each group (two passes: mean first, then centred squares)
//   xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps)
//   z    = xhat * gamma[c] + beta[c]
//   y    = z, or silu(z) = z * sigmoid(z) when SILU
//
// Entry points (bindings in order; outputs first):
//   group_norm_forward(y, stats, gamma, beta, x)
//     y:     (N, C, H, W)                      read_write
//     stats: (N * G, 2) mean, rstd per group    read_write
//     gamma, beta: (C)
//     x:     (N, C, H, W)
//   group_norm_backward(dx, partials, gamma, beta, x, dy, stats)
//     dx:       (N, C, H, W)                   read_write
//     partials: (N, 2, C): per image, sum over HW of dz * xhat (dgamma) then
//               of dz (dbeta), where dz = dy (or dy * silu'(z) when SILU)
//     dx = rstd * (gamma[c] dz - mean_group(gamma dz) - xhat mean_group(gamma dz xhat))
//   group_norm_param_grads(dgamma, dbeta, partials)      (scalar variant only)
//     dgamma, dbeta: (C) = partials summed over N in order
//
// One workgroup of 64 lanes per group. Items are vec4 (VEC4: HW % 4 == 0,
// so a vec4 never straddles two channels) or single floats. The first
// 64 * R items of the group stay in registers between the passes; items
// past that (large groups) are read again in each pass. Reductions are
// fixed-order (subgroupAdd plus an in-order sum of the subgroup totals, or a
// workgroup-memory tree): no atomics, so results are bit-reproducible.
//
// Template defines: VEC4, R (items per lane kept in registers), SUBGROUPS, SILU.

struct Params {
    hw: u32,
    channels: u32,
    groups: u32,
    cpg: u32,
    group_len: u32,
    n_groups_total: u32,
    batch: u32,
    eps: f32,
}

//@if VEC4
alias T = vec4<f32>;
const W: u32 = 4u;
fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}
//@else
alias T = f32;
const W: u32 = 1u;
fn hsum(v: f32) -> f32 {
    return v;
}
//@end

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<T>;
// stats (forward), partials (backward) or dbeta (param_grads)
@group(1) @binding(1) var<storage, read_write> aux_out: array<f32>;
// gamma, or the (N, 2, C) partials for param_grads
@group(1) @binding(2) var<storage, read> channel_in: array<f32>;
@group(1) @binding(3) var<storage, read> beta: array<f32>;
@group(1) @binding(4) var<storage, read> x: array<T>;
@group(1) @binding(5) var<storage, read> dy: array<T>;
@group(1) @binding(6) var<storage, read> stats: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<vec2<f32>, WG>;

// Sum of `v` over the workgroup, returned to every lane; same order every run.
fn workgroup_sum(v: vec2<f32>, li: u32, sg_lane: u32, sg_size: u32) -> vec2<f32> {
//@if SUBGROUPS
    let s = subgroupAdd(v);
    if sg_lane == 0u {
        red[li / sg_size] = s;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0);
    for (var i = 0u; i < (WG + sg_size - 1u) / sg_size; i++) {
        total += red[i];
    }
    workgroupBarrier();
    return total;
//@else
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if li < s {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
//@end
}

fn sigmoid(v: T) -> T {
    return 1.0 / (1.0 + exp(-v));
}

// Channel of item i of the group whose first channel is c0.
fn channel_of(c0: u32, i: u32) -> u32 {
    return c0 + (i * W) / p.hw;
}

// Item i of x in the group starting at item base, zero past the group end.
fn load_x(base: u32, i: u32, items: u32) -> T {
    return select(T(0.0), x[base + min(i, items - 1u)], i < items);
}

// Upstream gradient with respect to z (the affine output) at item i.
fn grad_z(at: u32, c: u32, xhat: T) -> T {
//@if SILU
    let z = xhat * channel_in[c] + beta[c];
    let s = sigmoid(z);
    return dy[at] * s * (1.0 + z * (1.0 - s));
//@else
    return dy[at];
//@end
}

fn normalised_output(v: T, c: u32, mean: f32, rstd: f32) -> T {
    let z = (v - mean) * rstd * channel_in[c] + beta[c];
//@if SILU
    return z * sigmoid(z);
//@else
    return z;
//@end
}

@compute @workgroup_size(64)
fn group_norm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
//@if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
//@end
) {
//@if !SUBGROUPS
    let sg_lane = 0u;
    let sg_size = 1u;
//@end
    let grp = wid.x + wid.y * nwg.x;
    if grp >= p.n_groups_total {
        return;
    }
    let items = p.group_len / W;
    let base = grp * items;
    let first_channel = (grp % p.groups) * p.cpg;
    let n = f32(p.group_len);

    // Pass 1: mean.
//@for r in 0..R
    let i{r} = li + {r*64}u;
    let v{r} = load_x(base, i{r}, items);
//@end
    var s = T(0.0);
//@for r in 0..R
    s += v{r};
//@end
    for (var i = li + {64*R}u; i < items; i += WG) {
        s += x[base + i];
    }
    let mean = workgroup_sum(vec2<f32>(hsum(s), 0.0), li, sg_lane, sg_size).x / n;

    // Pass 2: variance from centred squares.
    var q = T(0.0);
//@for r in 0..R
    let d{r} = select(T(0.0), v{r} - mean, i{r} < items);
    q += d{r} * d{r};
//@end
    for (var i = li + {64*R}u; i < items; i += WG) {
        let d = x[base + i] - mean;
        q += d * d;
    }
    let variance = workgroup_sum(vec2<f32>(hsum(q), 0.0), li, sg_lane, sg_size).x / n;
    let rstd = inverseSqrt(variance + p.eps);
    if li == 0u {
        aux_out[2u * grp] = mean;
        aux_out[2u * grp + 1u] = rstd;
    }

    // Pass 3: normalise, scale, shift (and SiLU).
//@for r in 0..R
    if i{r} < items {
        out[base + i{r}] = normalised_output(v{r}, channel_of(first_channel, i{r}), mean, rstd);
    }
//@end
    for (var i = li + {64*R}u; i < items; i += WG) {
        out[base + i] = normalised_output(x[base + i], channel_of(first_channel, i), mean, rstd);
    }
}

@compute @workgroup_size(64)
fn group_norm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
//@if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
//@end
) {
//@if !SUBGROUPS
    let sg_lane = 0u;
    let sg_size = 1u;
//@end
    let grp = wid.x + wid.y * nwg.x;
    if grp >= p.n_groups_total {
        return;
    }
    let items = p.group_len / W;
    let base = grp * items;
    let first_channel = (grp % p.groups) * p.cpg;
    let image = grp / p.groups;
    let mean = stats[2u * grp];
    let rstd = stats[2u * grp + 1u];

    // Registers: xhat and dz for the first 64 * R items (zero past the end).
//@for r in 0..R
    let i{r} = li + {r*64}u;
    let c{r} = channel_of(first_channel, min(i{r}, items - 1u));
    let xhat{r} = select(T(0.0), (x[base + min(i{r}, items - 1u)] - mean) * rstd, i{r} < items);
    let dz{r} = select(T(0.0), grad_z(base + min(i{r}, items - 1u), c{r}, xhat{r}), i{r} < items);
//@end

    // Per channel: sums of dz * xhat and dz; the group sums weight them by gamma.
    let items_per_channel = p.hw / W;
    var sum_g_dz_xhat = 0.0;
    var sum_g_dz = 0.0;
    for (var cl = 0u; cl < p.cpg; cl++) {
        let lo = cl * items_per_channel;
        let hi = lo + items_per_channel;
        var a = T(0.0);
        var b = T(0.0);
//@for r in 0..R
        let in{r} = i{r} >= lo && i{r} < hi;
        a += select(T(0.0), dz{r} * xhat{r}, in{r});
        b += select(T(0.0), dz{r}, in{r});
//@end
        let c = first_channel + cl;
        // Items of this channel past the register block, strided by lane.
        let start = max(lo, {64*R}u);
        for (var i = start + (li + WG - start % WG) % WG; i < hi; i += WG) {
            let xh = (x[base + i] - mean) * rstd;
            let g = grad_z(base + i, c, xh);
            a += g * xh;
            b += g;
        }
        let sums = workgroup_sum(vec2<f32>(hsum(a), hsum(b)), li, sg_lane, sg_size);
        if li == 0u {
            aux_out[image * 2u * p.channels + c] = sums.x;
            aux_out[image * 2u * p.channels + p.channels + c] = sums.y;
        }
        sum_g_dz_xhat += channel_in[c] * sums.x;
        sum_g_dz += channel_in[c] * sums.y;
    }
    let mean_g_dz_xhat = sum_g_dz_xhat / f32(p.group_len);
    let mean_g_dz = sum_g_dz / f32(p.group_len);

//@for r in 0..R
    if i{r} < items {
        out[base + i{r}] = rstd * (channel_in[c{r}] * dz{r} - mean_g_dz - xhat{r} * mean_g_dz_xhat);
    }
//@end
    for (var i = li + {64*R}u; i < items; i += WG) {
        let c = channel_of(first_channel, i);
        let xh = (x[base + i] - mean) * rstd;
        out[base + i] = rstd * (channel_in[c] * grad_z(base + i, c, xh) - mean_g_dz - xh * mean_g_dz_xhat);
    }
}

//@if !VEC4
@compute @workgroup_size(64)
fn group_norm_param_grads(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.channels {
        return;
    }
    var dgamma = 0.0;
    var dbeta = 0.0;
    for (var image = 0u; image < p.batch; image++) {
        dgamma += channel_in[image * 2u * p.channels + c];
        dbeta += channel_in[image * 2u * p.channels + p.channels + c];
    }
    out[c] = dgamma;
    aux_out[c] = dbeta;
}
//@end
