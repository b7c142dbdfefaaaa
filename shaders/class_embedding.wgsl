// Class-label embedding (diffusers' `class_embedding`, an nn.Embedding)
// and its backward. Launcher and CPU reference: src/ops/class_embedding.rs.
//
// Entry points (bindings in order; outputs first):
//   class_embedding(out, table, labels)            out: (N, D), table: (K, D), labels: (N)
//     out[n, d] = table[labels[n], d]
//   class_embedding_backward(dtable, dy, labels)   dtable: (K, D), dy: (N, D)
//     dtable[k, d] = sum of dy[n, d] over the n with labels[n] == k, in n order
// Labels are class indices stored as f32 (exact below 2^24), as the
// cross-entropy kernels read them; callers make them with class_labels,
// which checks each against the class count (an index past the table would
// read what WGSL's bounds clamping gives, not fault).
// One invocation per output element: the backward gathers rather than
// scatters, so it needs no atomics and every sum has one fixed order.

struct Params {
    rows: u32,
    classes: u32,
    dim: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
@group(1) @binding(1) var<storage, read> src: array<f32>;
@group(1) @binding(2) var<storage, read> labels: array<f32>;

fn slot(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + li;
}

@compute @workgroup_size(64)
fn class_embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let o = slot(wid, nwg, li);
    if o >= p.rows * p.dim {
        return;
    }
    let n = o / p.dim;
    let d = o % p.dim;
    out[o] = src[u32(labels[n]) * p.dim + d];
}

@compute @workgroup_size(64)
fn class_embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let o = slot(wid, nwg, li);
    if o >= p.classes * p.dim {
        return;
    }
    let k = f32(o / p.dim);
    let d = o % p.dim;
    var total = 0.0;
    for (var n = 0u; n < p.rows; n++) {
        if labels[n] == k {
            total += src[n * p.dim + d];
        }
    }
    out[o] = total;
}
