// Group normalisation over NCHW tensors, optionally fused with a SiLU.
// Launcher and CPU reference: src/ops/group_norm.rs.
//
//   x viewed as (N, G, cpg * HW); group (n, g) is one contiguous run of
//   group_len = cpg * HW elements, channels g * cpg .. (g + 1) * cpg.
//   mean, var over each group (Welford per lane, merged with Chan's formula)
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
// A team of 8 lanes per group, 8 groups per 64-lane workgroup. Items are
// vec4 (VEC4: HW % 4 == 0, so a vec4 never straddles two channels) or
// floats; lane s of a team takes items s, s + 8, ... Forward: one Welford
// pass for the statistics, one pass writing y channel by channel (gamma and
// beta loaded once per channel). Backward: one pass for the per-channel
// sums, one writing dx. Team sums use an xor butterfly of subgroup shuffles
// (within aligned groups of 8 lanes, so any subgroup size >= 8 works; float
// addition is commutative, so all 8 lanes get the same bits) and, on the
// portable path, workgroup memory read back in lane order. No barriers on
// the subgroup path (on lavapipe each barrier costs ~1 us per workgroup);
// no atomics anywhere, so results are bit-reproducible.
//
// Template defines: VEC4, SUBGROUPS, SILU.

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
const TEAM: u32 = 8u;

//@if SUBGROUPS
fn team_sum(v: vec2<f32>, li: u32) -> vec2<f32> {
    var s = v + subgroupShuffleXor(v, 1u);
    s += subgroupShuffleXor(s, 2u);
    return s + subgroupShuffleXor(s, 4u);
}
//@else
var<workgroup> red: array<vec2<f32>, WG>;

fn team_sum(v: vec2<f32>, li: u32) -> vec2<f32> {
    red[li] = v;
    workgroupBarrier();
    let first = li - li % TEAM;
    var s = vec2<f32>(0.0);
    for (var i = 0u; i < TEAM; i++) {
        s += red[first + i];
    }
    workgroupBarrier();
    return s;
}
//@end

fn sigmoid(v: T) -> T {
    return 1.0 / (1.0 + exp(-v));
}

// Upstream gradient with respect to z (the affine output), from dy.
fn grad_z(dy_value: T, xhat: T, gamma: f32, beta_c: f32) -> T {
//@if SILU
    let z = xhat * gamma + beta_c;
    let s = sigmoid(z);
    return dy_value * s * (1.0 + z * (1.0 - s));
//@else
    return dy_value;
//@end
}

fn activation(z: T) -> T {
//@if SILU
    return z * sigmoid(z);
//@else
    return z;
//@end
}

// The first item at or after `lo` that belongs to team lane `lane`.
fn first_item(lo: u32, lane: u32) -> u32 {
    return lo + (lane + TEAM - lo % TEAM) % TEAM;
}

struct Team {
    // Group index (clamped in range) and whether this team has a real group;
    // teams past the end still run so that every lane reaches the barriers.
    grp: u32,
    live: bool,
    lane: u32,
    items: u32,
    base: u32,
    first_channel: u32,
}

fn team(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> Team {
    let g = (wid.x + wid.y * nwg.x) * (WG / TEAM) + li / TEAM;
    let grp = min(g, p.n_groups_total - 1u);
    let items = p.group_len / W;
    return Team(grp, g < p.n_groups_total, li % TEAM, items, grp * items, (grp % p.groups) * p.cpg);
}

@compute @workgroup_size(64)
fn group_norm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = team(wid, nwg, li);

    // Welford per lane; the components of a vec4 are four accumulators
    // sharing one count.
    var count = 0.0;
    var m = T(0.0);
    var m2 = T(0.0);
    for (var i = t.lane; i < t.items; i += TEAM) {
        let v = x[t.base + i];
        count += 1.0;
        let d = v - m;
        m += d / count;
        m2 += d * (v - m);
    }
    // Chan's merge: the group mean, then M2 = sum(M2_lane + count_lane (m_lane - mean)^2).
    let n = f32(p.group_len);
    let mean = team_sum(vec2<f32>(count * hsum(m), 0.0), li).x / n;
    let spread = m - mean;
    let variance = team_sum(vec2<f32>(hsum(m2 + count * spread * spread), 0.0), li).x / n;
    let rstd = inverseSqrt(variance + p.eps);
    if t.live && t.lane == 0u {
        aux_out[2u * t.grp] = mean;
        aux_out[2u * t.grp + 1u] = rstd;
    }

    // y = activation(x * scale + shift), channel by channel.
    let items_per_channel = p.hw / W;
    for (var cl = 0u; cl < p.cpg; cl++) {
        let c = t.first_channel + cl;
        let scale = channel_in[c] * rstd;
        let shift = beta[c] - mean * scale;
        let lo = cl * items_per_channel;
        for (var i = first_item(lo, t.lane); i < lo + items_per_channel && t.live; i += TEAM) {
            out[t.base + i] = activation(x[t.base + i] * scale + shift);
        }
    }
}

@compute @workgroup_size(64)
fn group_norm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = team(wid, nwg, li);
    let image = t.grp / p.groups;
    let mean = stats[2u * t.grp];
    let rstd = stats[2u * t.grp + 1u];
    let items_per_channel = p.hw / W;

    // Per channel: sums of dz * xhat and dz (the parameter gradients'
    // per-image parts); the group sums weight them by gamma.
    var sum_g_dz_xhat = 0.0;
    var sum_g_dz = 0.0;
    for (var cl = 0u; cl < p.cpg; cl++) {
        let c = t.first_channel + cl;
        let gamma_c = channel_in[c];
        let beta_c = beta[c];
        let lo = cl * items_per_channel;
        var a = T(0.0);
        var b = T(0.0);
        for (var i = first_item(lo, t.lane); i < lo + items_per_channel; i += TEAM) {
            let xh = (x[t.base + i] - mean) * rstd;
            let g = grad_z(dy[t.base + i], xh, gamma_c, beta_c);
            a += g * xh;
            b += g;
        }
        let sums = team_sum(vec2<f32>(hsum(a), hsum(b)), li);
        if t.live && t.lane == 0u {
            aux_out[image * 2u * p.channels + c] = sums.x;
            aux_out[image * 2u * p.channels + p.channels + c] = sums.y;
        }
        sum_g_dz_xhat += gamma_c * sums.x;
        sum_g_dz += gamma_c * sums.y;
    }
    let mean_g_dz_xhat = sum_g_dz_xhat / f32(p.group_len);
    let mean_g_dz = sum_g_dz / f32(p.group_len);

    for (var cl = 0u; cl < p.cpg; cl++) {
        let c = t.first_channel + cl;
        let gamma_c = channel_in[c];
        let beta_c = beta[c];
        let lo = cl * items_per_channel;
        for (var i = first_item(lo, t.lane); i < lo + items_per_channel && t.live; i += TEAM) {
            let xh = (x[t.base + i] - mean) * rstd;
            let g = grad_z(dy[t.base + i], xh, gamma_c, beta_c);
            out[t.base + i] = rstd * (gamma_c * g - mean_g_dz - xh * mean_g_dz_xhat);
        }
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
