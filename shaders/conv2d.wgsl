// 2-D convolution, NCHW activations, OIHW weights (PyTorch layout).
//
//   y[n][co][oy][ox] = bias[co] + sum over ci, ky, kx of
//       w[co][ci][ky][kx] * x[n][ci][oy*stride - pad_top + ky][ox*stride - pad_left + kx]
//   (x reads outside the map are zero: padding per side, so TF 'SAME' works)
//
// Launchers, path choice and the CPU twin: src/ops/conv2d.rs. Entry points:
//   conv2d_forward       direct convolution (also grad-input of stride-1 convs,
//                        run on dy with flipped, transposed weights); with
//                        TRANSPOSED, grad-input of a stride-2 conv: src is dy,
//                        out is dx, wgt the transposed (unflipped) weights
//     out:  y (N, C_out, out_h, out_w)                                read_write
//     src:  x (N, C_in, H, W)
//     wgt:  packed weights (C_out/Q, C_in, kh, KW, Q), zero past C_out
//     bias: (C_out)                                                   when BIAS
//   conv2d_pack_weights  out: packed weights as above; src: w (C_out, C_in, kh, kw),
//                        or for grad-input w (C_in, C_out, kh, kw) transposed,
//                        with flip 1 also rotated by 180 degrees (flip 2: not)
//   conv2d_grad_weight   out: dw partials (splits, C_out, C_in, kh, kw); src: x;
//                        wgt: dy. One invocation: TCO output by TCI input
//                        channels by every tap, summed over a slice of the
//                        groups of 4 output pixels
//   conv2d_sum_splits    out: dw (C_out, C_in, kh, kw); src: its partials
//   conv2d_im2col        out: cols (count, out_h*out_w, C_in*kh*kw) for images
//                        n0..n0+count; src: x
//   conv2d_col2im        out: dx (N, C_in, H, W), images n0..n0+count written;
//                        src: dcols (count, C_in*kh*kw, out_h*out_w); dx is the
//                        sum of every column entry that reads the pixel
// The im2col/col2im pair turns the general cases (any kernel width, stride,
// padding; maps whose width is not a multiple of 4 for grad-weight) into
// GEMMs run by shaders/matmul.wgsl.
//
// conv2d_forward: one invocation owns PX (4, 8 or 16) consecutive output
// pixels of a row times Q output channels (Q*PX/4 vec4 accumulators). A
// workgroup is 64 consecutive such pixel groups (the rows of all images in
// turn) of one block of Q output channels. For each input channel and kernel
// row a lane loads the S*PX/4 vec4 of input under its pixels once; the halo
// columns come from the neighbouring lanes by subgroupShuffle (a memory load
// only at the ends of a group of 8 or of a row). The KW*Q weights of a kernel
// row are split over the 8 lanes as vec4 and spread with subgroupBroadcast
// (SG8) or subgroupShuffle within aligned groups of 8. Portable: every lane
// loads its own halo and weights, so wide pixel tiles pay off. Loads dominate
// on lavapipe (see shared/perf/lavapipe.md 4.7).
// TRANSPOSED (stride-2 grad-input): a lane owns 2*PX consecutive dx pixels,
// accumulated as even and odd vec4; each dx column parity takes only the
// kernel columns that reach it, so every FMA is useful, and the dy row values
// are read with stride 1 exactly as the forward reads x. Workgroups hold dx
// rows of one parity, so all lanes share the kernel rows they run.
//
// conv2d_grad_weight: workgroups of 8 lanes; the lanes share input channels
// and pixels and differ in output channels, so they split the input loads and
// broadcast them (or, with LANE_SLICES, take 8 slices of the pixel sum). The
// pixel sum may be cut into slices across workgroups too; conv2d_sum_splits
// adds the partial results.
//
// Template defines (src/gpu/template.rs): FORWARD (1: conv2d_forward; 0: the
// other entry points), GRAD_WEIGHT (conv2d_grad_weight; else the helpers),
// TRANSPOSED, PX (output pixels per lane; when TRANSPOSED, dy columns per
// lane), Q (output channels per lane, multiple of 4), KW (kernel width), S
// (stride), PL and NR (halo columns left and right of a lane's core), NV (row
// values a lane reads), PADL (true left padding when TRANSPOSED), VEC4 (W and
// out_w multiples of 4: vec4 input loads and output stores; else guarded
// scalar ones), BIAS, SUBGROUPS, SG8; for conv2d_grad_weight: TCO and TCI
// (output and input channels per lane), KH, HL and HR (halo vec4 left and
// right of the core), LANE_SLICES, SHARE_X (SUBGROUPS and not LANE_SLICES:
// lanes share their input loads).

struct Params {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad_top: u32,
    pad_left: u32,
    out_h: u32,
    out_w: u32,
    // Groups of 4 output pixels per output row (forward).
    row_groups: u32,
    // Channels per packed block (pack_weights).
    q: u32,
    // First image of the chunk and images in it (im2col, col2im).
    n0: u32,
    count: u32,
    // pack_weights: 0 plain; 1 transposed and rotated (stride-1 grad-input);
    // 2 transposed (stride-2 grad-input).
    flip: u32,
    // grad_weight: slices of the pixel sum, each written as its own partial
    // dw (sum_splits adds them).
    splits: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
//@if FORWARD
//@if VEC4
@group(1) @binding(0) var<storage, read_write> out: array<vec4<f32>>;
@group(1) @binding(1) var<storage, read> src: array<vec4<f32>>;
//@else
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> src: array<f32>;
//@end
@group(1) @binding(2) var<storage, read> wgt: array<vec4<f32>>;
//@if BIAS
@group(1) @binding(3) var<storage, read> bias: array<f32>;
//@end

// x at column col of the row starting at flat index row; zero outside the
// map (col wraps to a huge value when the true column is negative).
fn load_px(row_ok: bool, row: u32, col: u32) -> f32 {
    let at = row + min(col, p.w - 1u);
//@if VEC4
    let v = src[at / 4u][at % 4u];
//@else
    let v = src[at];
//@end
    return select(0.0, v, row_ok && col < p.w);
}

//@if TRANSPOSED
// Pixels ow0..ow0+8 of a dx row: even ones from a, odd ones from b.
fn store_pairs(at: u32, co: u32, ow0: u32, a: vec4<f32>, b: vec4<f32>) {
    if co >= p.c_out || ow0 >= p.out_w {
        return;
    }
//@if VEC4
    out[at / 4u] = vec4<f32>(a.x, b.x, a.y, b.y);
    out[at / 4u + 1u] = vec4<f32>(a.z, b.z, a.w, b.w);
//@else
    for (var e = 0u; e < 8u; e++) {
        if ow0 + e < p.out_w {
            out[at + e] = select(a[e / 2u], b[e / 2u], e % 2u == 1u);
        }
    }
//@end
}
//@end

fn store(at: u32, co: u32, ow0: u32, acc: vec4<f32>) {
    if co >= p.c_out || ow0 >= p.out_w {
        return;
    }
//@if BIAS
    let v = acc + vec4<f32>(bias[co]);
//@else
    let v = acc;
//@end
//@if VEC4
    out[at / 4u] = v;
//@else
    for (var e = 0u; e < 4u; e++) {
        if ow0 + e < p.out_w {
            out[at + e] = v[e];
        }
    }
//@end
}

@compute @workgroup_size(64)
fn conv2d_forward(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
//@if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
//@end
) {
    // Lanes past the last pixel group still run: they take part in the
    // subgroup exchanges, and only skip the stores.
    // Pixel groups of all images are numbered consecutively, so small maps
    // still fill the workgroup.
    let g = wid.x * 64u + li;
//@if TRANSPOSED
    // A workgroup holds dx rows of one parity (wid.z), so all its lanes run
    // the same kernel rows and share their weights.
    let per_image = (p.out_h + 1u) / 2u * p.row_groups;
    let img = min(g / per_image, p.n - 1u);
    let oy = (g % per_image) / p.row_groups * 2u + wid.z;
    let live = g < p.n * per_image && oy < p.out_h;
//@else
    let per_image = p.out_h * p.row_groups;
    let live = g < p.n * per_image;
    let img = min(g / per_image, p.n - 1u);
    let oy = (g % per_image) / p.row_groups;
//@end
    let gx = g % p.row_groups;
    let ow0 = gx * {PX+PX*TRANSPOSED}u;
    let cob = wid.y;
    // First input column of this lane's core (its S vec4).
    let xc = gx * {PX*S}u;
    let last_in_row = gx + 1u >= p.row_groups;
//@if SUBGROUPS
    let slot = sg_lane % 8u;
    let group = sg_lane - slot;
    let left_lane = select(sg_lane, sg_lane - 1u, slot > 0u);
    let right_lane = select(sg_lane, sg_lane + 1u, slot < 7u);
    // Halo columns a neighbour lane cannot supply: at the ends of the group
    // of 8, and right of a row's last group when that still lies in the map.
    let load_left = slot == 0u && gx > 0u;
    let load_right = slot == 7u || (last_in_row && {PX*S}u * p.row_groups < p.w);
//@end
//@for c in 0..Q
//@for h in 0..PX/4
    var acc{c}_{h} = vec4<f32>(0.0);
//@if TRANSPOSED
    var odd{c}_{h} = vec4<f32>(0.0);
//@end
//@end
//@end

    for (var ci = 0u; ci < p.c_in; ci++) {
        let plane = (img * p.c_in + ci) * p.h * p.w;
//@if TRANSPOSED
        // dx row oy takes dy row (oy + pad_top - ky) / 2 for the kernel rows
        // of matching parity.
        for (var ky = (oy + p.pad_top) % 2u; ky < p.kh; ky += 2u) {
            let iy = (oy + p.pad_top - ky) / 2u;
            let row_ok = oy + p.pad_top >= ky && iy < p.h;
//@else
        for (var ky = 0u; ky < p.kh; ky++) {
            // Rows above the map wrap to huge values and fail row_ok.
            let iy = oy * {S}u + ky - p.pad_top;
            let row_ok = iy < p.h;
//@end
            let row = plane + min(iy, p.h - 1u) * p.w;
            // Input columns xc - PL + t for t in 0..NV, named v_t.
//@if VEC4
//@for m in 0..S*PX/4
            let core{m} = select(vec4<f32>(0.0), src[(row + min(xc + {4*m}u, p.w - 4u)) / 4u], row_ok && xc + {4*m}u < p.w);
//@end
//@for t in 0..PL
//@if SUBGROUPS
            var v{t} = select(subgroupShuffle(core{(PX*S-PL+t)/4}[{(PX*S-PL+t)%4}], left_lane), 0.0, gx == 0u);
            if load_left {
                v{t} = load_px(row_ok, row, xc + {t}u - {PL}u);
            }
//@else
            let v{t} = load_px(row_ok, row, xc + {t}u - {PL}u);
//@end
//@end
//@for u in 0..PX*S
            let v{PL+u} = core{u/4}[{u%4}];
//@end
//@for r in 0..NR
//@if SUBGROUPS
            var v{PL+PX*S+r} = select(subgroupShuffle(core0[{r}], right_lane), 0.0, last_in_row);
            if load_right {
                v{PL+PX*S+r} = load_px(row_ok, row, xc + {PX*S+r}u);
            }
//@else
            let v{PL+PX*S+r} = load_px(row_ok, row, xc + {PX*S+r}u);
//@end
//@end
//@else
//@for t in 0..NV
            let v{t} = load_px(row_ok, row, xc + {t}u - {PL}u);
//@end
//@end
            let wbase = ((cob * p.c_in + ci) * p.kh + ky) * {KW*Q/4}u;
//@if SUBGROUPS
            // The KW*Q/4 weight vec4 of this kernel row: item k is loaded by
            // lane k % 8 as its load number k / 8.
//@for l in 0..(KW*Q/4+7)/8
            let wl{l} = wgt[wbase + min({8*l}u + slot, {KW*Q/4-1}u)];
//@end
//@end
//@for kx in 0..KW
//@if !TRANSPOSED
//@for h in 0..PX/4
            let xv{kx}_{h} = vec4<f32>(v{kx+4*h*S}, v{kx+(4*h+1)*S}, v{kx+(4*h+2)*S}, v{kx+(4*h+3)*S});
//@end
//@end
//@for j in 0..Q/4
//@if SUBGROUPS
//@if SG8
            let w{kx}_{j} = subgroupBroadcast(wl{(kx*Q/4+j)/8}, {(kx*Q/4+j)%8}u);
//@else
            let w{kx}_{j} = subgroupShuffle(wl{(kx*Q/4+j)/8}, group + {(kx*Q/4+j)%8}u);
//@end
//@else
            let w{kx}_{j} = wgt[wbase + {kx*Q/4+j}u];
//@end
//@if TRANSPOSED
            // dx pixel ow0 + 2i + px takes dy column xc + i + (px + PADL - kx) / 2
            // when that is a whole number.
//@if !(PADL-kx)%2
//@for e in 0..4
//@for h in 0..PX/4
            acc{4*j+e}_{h} = fma(vec4<f32>(v{PL+(PADL-kx)/2+4*h}, v{PL+(PADL-kx)/2+4*h+1}, v{PL+(PADL-kx)/2+4*h+2}, v{PL+(PADL-kx)/2+4*h+3}), vec4<f32>(w{kx}_{j}[{e}]), acc{4*j+e}_{h});
//@end
//@end
//@else
//@for e in 0..4
//@for h in 0..PX/4
            odd{4*j+e}_{h} = fma(vec4<f32>(v{PL+(1+PADL-kx)/2+4*h}, v{PL+(1+PADL-kx)/2+4*h+1}, v{PL+(1+PADL-kx)/2+4*h+2}, v{PL+(1+PADL-kx)/2+4*h+3}), vec4<f32>(w{kx}_{j}[{e}]), odd{4*j+e}_{h});
//@end
//@end
//@end
//@else
//@for e in 0..4
//@for h in 0..PX/4
            acc{4*j+e}_{h} = fma(xv{kx}_{h}, vec4<f32>(w{kx}_{j}[{e}]), acc{4*j+e}_{h});
//@end
//@end
//@end
//@end
//@end
        }
    }

    if live {
        let co0 = cob * {Q}u;
        let out_plane = p.out_h * p.out_w;
        let at = (img * p.c_out + co0) * out_plane + oy * p.out_w + ow0;
//@for c in 0..Q
//@if TRANSPOSED
//@for h in 0..PX/4
        store_pairs(at + {c}u * out_plane + {8*h}u, co0 + {c}u, ow0 + {8*h}u, acc{c}_{h}, odd{c}_{h});
//@end
//@else
//@for h in 0..PX/4
        store(at + {c}u * out_plane + {4*h}u, co0 + {c}u, ow0 + {4*h}u, acc{c}_{h});
//@end
//@end
//@end
    }
}
//@else
//@if GRAD_WEIGHT
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(1) @binding(2) var<storage, read> dy: array<vec4<f32>>;

// Four input columns col..col+4 of channel ci, row iy of image img; zero
// outside the map (negative rows and columns wrap to huge values).
fn load_item(img: u32, ci: u32, iy: u32, col: u32) -> vec4<f32> {
    let at = ((img * p.c_in + min(ci, p.c_in - 1u)) * p.h + min(iy, p.h - 1u)) * p.w + min(col, p.w - 4u);
    return select(vec4<f32>(0.0), src[at / 4u], ci < p.c_in && iy < p.h && col < p.w);
}

// Items (vec4 of input columns) per input channel and kernel row: the S
// core vec4 under a lane's 4 output pixels, plus one each side for halos.
const ITEMS_PER_ROW: u32 = {S+HL+HR}u;

@compute @workgroup_size(8)
fn conv2d_grad_weight(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
//@if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
//@end
) {
    let ci0 = wid.y * {TCI}u;
//@if LANE_SLICES
    // Too few output channels to spread over the lanes: the 8 lanes take
    // 8 slices of the pixel sum instead, each loading its own inputs.
    let co0 = wid.x * {TCO}u;
    let slice = wid.z * 8u + li;
//@else
    // The 8 lanes share the input channels and pixels and differ in output
    // channels, so they split the input loads and broadcast them. wid.z is
    // this workgroup's slice of the pixel groups.
    let co0 = (wid.x * 8u + li) * {TCO}u;
    let slice = wid.z;
//@end
//@if SUBGROUPS
    let slot = sg_lane % 8u;
    let group = sg_lane - slot;
//@end
//@for c in 0..TCO
    let dy_row{c} = min(co0 + {c}u, p.c_out - 1u) * p.out_h * p.out_w;
//@end
//@for c in 0..TCO
//@for i in 0..TCI
//@for t in 0..KH*KW
    var acc{c}_{i}_{t} = 0.0;
//@end
//@end
//@end
    let groups = p.out_h * p.row_groups;
    let per_split = (p.n * groups + p.splits - 1u) / p.splits;
    let g_end = min(p.n * groups, (slice + 1u) * per_split);
    for (var g = slice * per_split; g < g_end; g++) {
        let img = g / groups;
        let oy = (g % groups) / p.row_groups;
        let ow0 = (g % p.row_groups) * 4u;
        let dy_at = img * p.c_out * p.out_h * p.out_w + oy * p.out_w + ow0;
//@for c in 0..TCO
        let d{c} = dy[(dy_at + dy_row{c}) / 4u];
//@end
        let xc = ow0 * {S}u;
        let iy0 = oy * {S}u - p.pad_top;
//@if SHARE_X
        // Item k = (ci * KH + ky) * ITEMS_PER_ROW + m is loaded by lane k % 8.
//@for l in 0..(TCI*KH*(S+HL+HR)+7)/8
        let k{l} = {8*l}u + slot;
        let ld{l} = load_item(img, ci0 + k{l} / {KH}u / ITEMS_PER_ROW, iy0 + (k{l} / ITEMS_PER_ROW) % {KH}u, xc + 4u * (k{l} % ITEMS_PER_ROW) - {4*HL}u);
//@end
//@end
//@for i in 0..TCI
//@for ky in 0..KH
//@for m in 0..S+HL+HR
//@if SHARE_X
//@if SG8
        let it{i}_{ky}_{m} = subgroupBroadcast(ld{((i*KH+ky)*(S+HL+HR)+m)/8}, {((i*KH+ky)*(S+HL+HR)+m)%8}u);
//@else
        let it{i}_{ky}_{m} = subgroupShuffle(ld{((i*KH+ky)*(S+HL+HR)+m)/8}, group + {((i*KH+ky)*(S+HL+HR)+m)%8}u);
//@end
//@else
        let it{i}_{ky}_{m} = load_item(img, ci0 + {i}u, iy0 + {ky}u, xc + {4*m}u - {4*HL}u);
//@end
//@end
        // Columns xc - PL + t for t in 0..3*S+KW.
//@for t in 0..PL
        let v{i}_{ky}_{t} = it{i}_{ky}_0[{4-PL+t}];
//@end
//@for u in 0..4*S
        let v{i}_{ky}_{PL+u} = it{i}_{ky}_{HL+u/4}[{u%4}];
//@end
//@for r in 0..NR
        let v{i}_{ky}_{PL+4*S+r} = it{i}_{ky}_{HL+S}[{r}];
//@end
//@for kx in 0..KW
        let xv{i}_{ky}_{kx} = vec4<f32>(v{i}_{ky}_{kx}, v{i}_{ky}_{S+kx}, v{i}_{ky}_{2*S+kx}, v{i}_{ky}_{3*S+kx});
//@for c in 0..TCO
        acc{c}_{i}_{ky*KW+kx} = fma(d{c}.w, xv{i}_{ky}_{kx}.w, fma(d{c}.z, xv{i}_{ky}_{kx}.z, fma(d{c}.y, xv{i}_{ky}_{kx}.y, fma(d{c}.x, xv{i}_{ky}_{kx}.x, acc{c}_{i}_{ky*KW+kx}))));
//@end
//@end
//@end
//@end
    }
//@for c in 0..TCO
//@for i in 0..TCI
    if co0 + {c}u < p.c_out && ci0 + {i}u < p.c_in {
        let at = ((slice * p.c_out + co0 + {c}u) * p.c_in + ci0 + {i}u) * {KH*KW}u;
//@for t in 0..KH*KW
        out[at + {t}u] = acc{c}_{i}_{t};
//@end
    }
//@end
//@end
}
//@else
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> src: array<f32>;

fn flat_index(li: u32, wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + li;
}

@compute @workgroup_size(64)
fn conv2d_pack_weights(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(li, wid, nwg);
    let taps = p.kh * p.kw;
    let blocks = (p.c_out + p.q - 1u) / p.q;
    if i >= blocks * p.q * p.c_in * taps {
        return;
    }
    let q = i % p.q;
    let tap = (i / p.q) % taps;
    let ci = (i / (p.q * taps)) % p.c_in;
    let co = (i / (p.q * taps * p.c_in)) * p.q + q;
    var v = 0.0;
    if co < p.c_out {
        if p.flip == 1u {
            v = src[(ci * p.c_out + co) * taps + taps - 1u - tap];
        } else if p.flip == 2u {
            v = src[(ci * p.c_out + co) * taps + tap];
        } else {
            v = src[(co * p.c_in + ci) * taps + tap];
        }
    }
    out[i] = v;
}

@compute @workgroup_size(64)
fn conv2d_sum_splits(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(li, wid, nwg);
    let len = p.c_out * p.c_in * p.kh * p.kw;
    if i >= len {
        return;
    }
    var sum = 0.0;
    for (var split = 0u; split < p.splits; split++) {
        sum += src[split * len + i];
    }
    out[i] = sum;
}

@compute @workgroup_size(64)
fn conv2d_im2col(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(li, wid, nwg);
    let taps = p.kh * p.kw;
    let ck = p.c_in * taps;
    let pixels = p.out_h * p.out_w;
    if i >= p.count * pixels * ck {
        return;
    }
    let k = i % ck;
    let pix = (i / ck) % pixels;
    let z = i / (ck * pixels);
    let ci = k / taps;
    let ky = (k % taps) / p.kw;
    let kx = k % p.kw;
    // Negative coordinates wrap to huge values and read as padding.
    let iy = (pix / p.out_w) * p.stride + ky - p.pad_top;
    let ix = (pix % p.out_w) * p.stride + kx - p.pad_left;
    let inside = iy < p.h && ix < p.w;
    let at = (((p.n0 + z) * p.c_in + ci) * p.h + min(iy, p.h - 1u)) * p.w + min(ix, p.w - 1u);
    out[i] = select(0.0, src[at], inside);
}

@compute @workgroup_size(64)
fn conv2d_col2im(
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = flat_index(li, wid, nwg);
    let plane = p.h * p.w;
    if i >= p.count * p.c_in * plane {
        return;
    }
    let ix = i % p.w;
    let iy = (i / p.w) % p.h;
    let ci = (i / plane) % p.c_in;
    let z = i / (plane * p.c_in);
    let taps = p.kh * p.kw;
    let pixels = p.out_h * p.out_w;
    var sum = 0.0;
    for (var ky = 0u; ky < p.kh; ky++) {
        // This input row is read by kernel row ky of output row oy when
        // oy * stride + ky - pad_top == iy.
        let ty = iy + p.pad_top - ky;
        let oy = ty / p.stride;
        if iy + p.pad_top < ky || ty % p.stride != 0u || oy >= p.out_h {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let tx = ix + p.pad_left - kx;
            let ox = tx / p.stride;
            if ix + p.pad_left < kx || tx % p.stride != 0u || ox >= p.out_w {
                continue;
            }
            sum += src[((z * p.c_in + ci) * taps + ky * p.kw + kx) * pixels + oy * p.out_w + ox];
        }
    }
    out[p.n0 * p.c_in * plane + i] = sum;
}
//@end
//@end
