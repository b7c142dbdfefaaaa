// Softmax cross-entropy over class logits, and its gradient. Launcher and
// CPU reference: src/ops/cross_entropy.rs.
//
// Entry points (bindings in order; outputs first):
//   softmax_cross_entropy(loss, probs, logits, labels)
//       loss: (1)      = mean over rows n of (logsumexp(logits[n]) - logits[n, labels[n]])
//       probs: (N, K)  = softmax(logits[n]) per row
//   softmax_cross_entropy_backward(d_logits, probs, labels, d_loss)
//       d_logits: (N, K) = (probs[n, k] - [k == labels[n]]) / N * d_loss[0]
//   logits: (N, K) f32; labels: (N) f32 holding class indices 0..K-1 (checked
//   on the host); d_loss: (1).
//
// The two entry points bind different buffers, so each is its own variant
// (define BACKWARD).
//
// The forward is one 256-lane workgroup (N is a batch of images): each lane
// takes rows li, li + 256, ... in order, subtracts the row maximum before
// exponentiating, and a fixed tree in workgroup memory sums the lanes'
// losses, so the loss is bit-reproducible. The backward is one invocation
// per element.

struct Params {
    rows: u32,
    classes: u32,
    inv_rows: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(1) @binding(0) var<storage, read_write> out: array<f32>;
//@if !BACKWARD
@group(1) @binding(1) var<storage, read_write> probs_out: array<f32>;
@group(1) @binding(2) var<storage, read> logits: array<f32>;
@group(1) @binding(3) var<storage, read> labels: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(256)
fn softmax_cross_entropy(@builtin(local_invocation_index) li: u32) {
    let k = p.classes;
    var acc = 0.0;
    for (var n = li; n < p.rows; n += WG) {
        let row = n * k;
        var top = logits[row];
        for (var j = 1u; j < k; j++) {
            top = max(top, logits[row + j]);
        }
        var total = 0.0;
        for (var j = 0u; j < k; j++) {
            let e = exp(logits[row + j] - top);
            probs_out[row + j] = e;
            total += e;
        }
        let inv = 1.0 / total;
        for (var j = 0u; j < k; j++) {
            probs_out[row + j] *= inv;
        }
        let label = u32(labels[n]);
        acc += log(total) + top - logits[row + label];
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s /= 2u) {
        if li < s {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if li == 0u {
        out[0] = partial[0] * p.inv_rows;
    }
}

//@else
@group(1) @binding(1) var<storage, read> probs: array<f32>;
@group(1) @binding(2) var<storage, read> labels: array<f32>;
@group(1) @binding(3) var<storage, read> d_loss: array<f32>;

@compute @workgroup_size(64)
fn softmax_cross_entropy_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wid.x + wid.y * nwg.x) * 64u + li;
    if i >= p.rows * p.classes {
        return;
    }
    let n = i / p.classes;
    let hit = select(0.0, 1.0, i - n * p.classes == u32(labels[n]));
    out[i] = (probs[i] - hit) * (p.inv_rows * d_loss[0]);
}
//@end
