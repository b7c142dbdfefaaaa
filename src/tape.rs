//! Reverse-mode autodiff over GPU ops.
//!
//! Each op on a [`Tape`] runs its forward kernel at once and, when any input
//! needs a gradient, records an [`Op`]: the inputs and what its backward
//! needs (saved tensors, geometry). [`Tape::backward`] walks the records in
//! reverse with one `match`, launching each op's backward kernels and
//! summing gradients where a value feeds several ops (UNet skips,
//! residuals). Activations nothing saved are freed as soon as the caller
//! drops them; saved ones are freed as backward passes their op.
//!
//! A parameter made with [`Tape::param_into`] has its gradient written by
//! its op's backward kernel straight into a given tensor (a view of the
//! flat gradient buffer the optimiser reads), as llm.c does: no gradient is
//! copied, and a parameter used twice gets its second contribution added in
//! place.

use std::collections::HashMap;

use anyhow::{ensure, Result};

use crate::gpu::{Gpu, Tensor};
use crate::ops::attention::{attention_backward, attention_forward};
use crate::ops::class_embedding::{class_embedding, class_embedding_backward_into};
use crate::ops::concat::{concat, split};
use crate::ops::conv2d::{
    conv2d_forward, conv2d_grad_bias, conv2d_grad_bias_into, conv2d_grad_input, conv2d_grad_weight,
    conv2d_grad_weight_into, Conv2dGeometry,
};
use crate::ops::cross_entropy::{softmax_cross_entropy, softmax_cross_entropy_backward};
use crate::ops::dropout::{dropout, DropoutKey};
use crate::ops::elementwise as ew;
use crate::ops::group_norm::GroupNorm;
use crate::ops::linear::{linear_forward, linear_grad_bias_into, linear_grad_input, linear_grad_weight_into};
use crate::ops::loss::{mse_loss, mse_loss_backward, weighted_mse_loss};
use crate::ops::upsample::{upsample_nearest2x, upsample_nearest2x_backward};
use crate::ops::{permute, reduce};

/// A value on the tape: its tensor, and the id its gradient is kept under.
#[derive(Clone, Debug)]
pub struct Var {
    id: usize,
    needs_grad: bool,
    pub value: Tensor,
}

impl Var {
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    pub fn id(&self) -> usize {
        self.id
    }
}

/// An input of a recorded op: which gradient it feeds, if any, and the
/// shape that gradient takes.
#[derive(Clone, Debug)]
struct Input {
    id: usize,
    needs_grad: bool,
    shape: Vec<usize>,
}

impl From<&Var> for Input {
    fn from(v: &Var) -> Input {
        Input { id: v.id, needs_grad: v.needs_grad, shape: v.shape().to_vec() }
    }
}

/// What each op's backward needs. One variant per op; forward is the
/// method of the same name on [`Tape`].
enum Op {
    /// y = x w^T + b; x (N, in), w (out, in), b (out)
    Linear {
        x: Input,
        w: Input,
        b: Input,
        x_value: Tensor,
        w_value: Tensor,
    },
    Conv2d {
        x: Input,
        w: Input,
        b: Input,
        geometry: Conv2dGeometry,
        x_value: Tensor,
        w_value: Tensor,
    },
    /// Group norm, optionally fused with the SiLU after it; saves x, gamma,
    /// beta and the per-group mean and rstd.
    GroupNorm {
        x: Input,
        gamma: Input,
        beta: Input,
        norm: GroupNorm,
        saved: [Tensor; 4],
    },
    /// softmax(scale q k^T) v over (batch, T, d); saves q, k, v and the probabilities.
    Attention {
        q: Input,
        k: Input,
        v: Input,
        scale: f32,
        saved: [Tensor; 4],
    },
    Upsample2x {
        x: Input,
    },
    /// Rows of a (classes, dim) table picked by the (N) labels.
    ClassEmbedding {
        table: Input,
        labels: Tensor,
    },
    /// Channels of `a` then `b`.
    Concat {
        a: Input,
        b: Input,
        channels_a: usize,
    },
    Dropout {
        x: Input,
        rate: f32,
        key: DropoutKey,
    },
    Silu {
        x: Input,
        x_value: Tensor,
    },
    Add {
        a: Input,
        b: Input,
    },
    /// y[n, c, ...] = x[n, c, ...] + v[n, c]
    AddPerSample {
        x: Input,
        v: Input,
        spatial: usize,
    },
    /// (a, b, c, d) -> (a, c, b, d)
    Transpose12 {
        x: Input,
        dims: [usize; 4],
    },
    Reshape {
        x: Input,
    },
    /// mean((pred - target)^2), each sample's terms weighted when `weights` is set
    MseLoss {
        pred: Input,
        target: Input,
        pred_value: Tensor,
        target_value: Tensor,
        weights: Option<Tensor>,
    },
    /// mean cross-entropy of softmax(logits) (N, K) against class labels (N);
    /// saves the probabilities.
    SoftmaxCrossEntropy {
        logits: Input,
        probs: Tensor,
        labels: Tensor,
    },
}

pub struct Tape<'g> {
    gpu: &'g Gpu,
    next_id: usize,
    records: Vec<(usize, Op)>,
    /// Where the gradients of `param_into` leaves go, by id.
    grad_into: HashMap<usize, Tensor>,
}

/// Gradients after [`Tape::backward`], by [`Var`].
pub struct Grads {
    grads: Vec<Option<Tensor>>,
}

impl Grads {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.grads.get(v.id).and_then(Option::as_ref)
    }
}

impl<'g> Tape<'g> {
    pub fn new(gpu: &'g Gpu) -> Tape<'g> {
        Tape { gpu, next_id: 0, records: Vec::new(), grad_into: HashMap::new() }
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    fn var(&mut self, value: Tensor, needs_grad: bool) -> Var {
        self.next_id += 1;
        Var { id: self.next_id - 1, needs_grad, value }
    }

    /// A value that gets no gradient (data, timesteps, noise).
    pub fn input(&mut self, value: Tensor) -> Var {
        self.var(value, false)
    }

    /// A leaf whose gradient `backward` returns (a parameter).
    pub fn param(&mut self, value: Tensor) -> Var {
        self.var(value, true)
    }

    /// A parameter whose gradient `backward` writes into `grad` (its shape;
    /// zero when it gets none), and returns as that tensor.
    pub fn param_into(&mut self, value: Tensor, grad: Tensor) -> Result<Var> {
        ensure!(grad.shape() == value.shape(), "param_into: gradient {:?} for {:?}", grad.shape(), value.shape());
        let v = self.var(value, true);
        self.grad_into.insert(v.id, grad);
        Ok(v)
    }

    /// The output of an op: recorded only when some input needs a gradient,
    /// so a forward pass for sampling records nothing.
    fn output(&mut self, value: Tensor, inputs: &[Input], op: impl FnOnce() -> Op) -> Var {
        let needs_grad = inputs.iter().any(|i| i.needs_grad);
        let v = self.var(value, needs_grad);
        if needs_grad {
            self.records.push((v.id, op()));
        }
        v
    }

    pub fn linear(&mut self, x: &Var, w: &Var, b: &Var) -> Result<Var> {
        let y = linear_forward(self.gpu, &x.value, &w.value, Some(&b.value))?;
        let (x_value, w_value) = (x.value.clone(), w.value.clone());
        Ok(self.output(y, &[x.into(), w.into(), b.into()], || Op::Linear {
            x: x.into(),
            w: w.into(),
            b: b.into(),
            x_value,
            w_value,
        }))
    }

    pub fn conv2d(&mut self, x: &Var, w: &Var, b: &Var, geometry: Conv2dGeometry) -> Result<Var> {
        let y = conv2d_forward(self.gpu, &geometry, &x.value, &w.value, Some(&b.value))?;
        let (x_value, w_value) = (x.value.clone(), w.value.clone());
        Ok(self.output(y, &[x.into(), w.into(), b.into()], || Op::Conv2d {
            x: x.into(),
            w: w.into(),
            b: b.into(),
            geometry,
            x_value,
            w_value,
        }))
    }

    /// Group norm of `x` (N, C, ...) with affine `gamma`, `beta` (C), then
    /// SiLU when `silu` (one fused kernel).
    pub fn group_norm(&mut self, x: &Var, gamma: &Var, beta: &Var, groups: usize, eps: f32, silu: bool) -> Result<Var> {
        let norm = GroupNorm { fuse_silu: silu, ..GroupNorm::new(groups, eps) };
        let (y, stats) = norm.forward(self.gpu, &x.value, &gamma.value, &beta.value)?;
        let saved = [x.value.clone(), gamma.value.clone(), beta.value.clone(), stats];
        Ok(self.output(y, &[x.into(), gamma.into(), beta.into()], || Op::GroupNorm {
            x: x.into(),
            gamma: gamma.into(),
            beta: beta.into(),
            norm,
            saved,
        }))
    }

    /// `softmax(scale q k^T) v` for q, k, v of shape (batch, T, d).
    pub fn attention(&mut self, q: &Var, k: &Var, v: &Var, scale: f32) -> Result<Var> {
        let (out, probs) = attention_forward(self.gpu, &q.value, &k.value, &v.value, scale)?;
        let saved = [q.value.clone(), k.value.clone(), v.value.clone(), probs];
        Ok(self.output(out, &[q.into(), k.into(), v.into()], || Op::Attention {
            q: q.into(),
            k: k.into(),
            v: v.into(),
            scale,
            saved,
        }))
    }

    pub fn upsample_nearest2x(&mut self, x: &Var) -> Result<Var> {
        let y = upsample_nearest2x(self.gpu, &x.value)?;
        Ok(self.output(y, &[x.into()], || Op::Upsample2x { x: x.into() }))
    }

    /// The rows of `table` (classes, dim) for `labels`, the (N) class-index
    /// tensor of [`crate::ops::cross_entropy::class_labels`].
    pub fn class_embedding(&mut self, table: &Var, labels: &Tensor) -> Result<Var> {
        let y = class_embedding(self.gpu, &table.value, labels)?;
        let labels = labels.clone();
        Ok(self.output(y, &[table.into()], || Op::ClassEmbedding { table: table.into(), labels }))
    }

    /// Channel concatenation of two (N, C, H, W) maps (the UNet's skips).
    pub fn concat(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = concat(self.gpu, &a.value, &b.value)?;
        let channels_a = a.shape()[1];
        Ok(self.output(y, &[a.into(), b.into()], || Op::Concat { a: a.into(), b: b.into(), channels_a }))
    }

    /// Dropout with the mask of `key` (drawn again, not stored, for backward).
    pub fn dropout(&mut self, x: &Var, rate: f32, key: DropoutKey) -> Result<Var> {
        let y = dropout(self.gpu, &x.value, rate, key)?;
        Ok(self.output(y, &[x.into()], || Op::Dropout { x: x.into(), rate, key }))
    }

    pub fn silu(&mut self, x: &Var) -> Result<Var> {
        let y = ew::silu(self.gpu, &x.value)?;
        let xv = x.value.clone();
        Ok(self.output(y, &[x.into()], || Op::Silu { x: x.into(), x_value: xv }))
    }

    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = ew::add(self.gpu, &a.value, &b.value)?;
        Ok(self.output(y, &[a.into(), b.into()], || Op::Add { a: a.into(), b: b.into() }))
    }

    /// `x` (N, C, ...) plus `v` (N, C) broadcast over the trailing axes (the
    /// time embedding added inside every ResBlock).
    pub fn add_per_sample(&mut self, x: &Var, v: &Var) -> Result<Var> {
        let s = x.shape().to_vec();
        ensure!(s.len() >= 2 && v.shape() == [s[0], s[1]], "add_per_sample: {:?} over {s:?}", v.shape());
        let spatial: usize = s[2..].iter().product();
        // Seen as one image of N*C channels, this is a per-channel add.
        let flat = x.value.reshape(&[1, s[0] * s[1], spatial])?;
        let y = ew::add_channel(self.gpu, &flat, &v.value.reshape(&[s[0] * s[1]])?)?.reshape(&s)?;
        Ok(self.output(y, &[x.into(), v.into()], || Op::AddPerSample { x: x.into(), v: v.into(), spatial }))
    }

    /// `x` seen as (a, b, c, d) to (a, c, b, d).
    pub fn transpose12(&mut self, x: &Var, dims: [usize; 4]) -> Result<Var> {
        let y = permute::transpose12(self.gpu, &x.value, dims)?;
        Ok(self.output(y, &[x.into()], || Op::Transpose12 { x: x.into(), dims }))
    }

    pub fn reshape(&mut self, x: &Var, shape: &[usize]) -> Result<Var> {
        let y = x.value.reshape(shape)?;
        Ok(self.output(y, &[x.into()], || Op::Reshape { x: x.into() }))
    }

    /// Mean squared error as a (1) tensor: the DDPM L_simple loss.
    pub fn mse_loss(&mut self, pred: &Var, target: &Var) -> Result<Var> {
        let loss = mse_loss(self.gpu, &pred.value, &target.value)?;
        Ok(self.record_mse(loss, pred, target, None))
    }

    /// `mean(w[n] (pred - target)^2)` of (N, ...) values with the (N) weights
    /// `w` (no gradient): a per-sample weighted loss.
    pub fn weighted_mse_loss(&mut self, pred: &Var, target: &Var, w: &Tensor) -> Result<Var> {
        let loss = weighted_mse_loss(self.gpu, &pred.value, &target.value, w)?;
        Ok(self.record_mse(loss, pred, target, Some(w.clone())))
    }

    fn record_mse(&mut self, loss: Tensor, pred: &Var, target: &Var, weights: Option<Tensor>) -> Var {
        let (pred_value, target_value) = (pred.value.clone(), target.value.clone());
        self.output(loss, &[pred.into(), target.into()], || Op::MseLoss {
            pred: pred.into(),
            target: target.into(),
            pred_value,
            target_value,
            weights,
        })
    }

    /// Mean softmax cross-entropy of `logits` (N, K) against `labels`, the (N)
    /// class-index tensor of [`crate::ops::cross_entropy::class_labels`].
    pub fn softmax_cross_entropy(&mut self, logits: &Var, labels: &Tensor) -> Result<Var> {
        let (loss, probs) = softmax_cross_entropy(self.gpu, &logits.value, labels)?;
        let labels = labels.clone();
        Ok(self.output(loss, &[logits.into()], || Op::SoftmaxCrossEntropy { logits: logits.into(), probs, labels }))
    }

    /// Gradients of the (1)-element `loss` with respect to every value that
    /// needs one.
    pub fn backward(self, loss: &Var) -> Result<Grads> {
        self.backward_scaled(loss, 1.0)
    }

    /// Gradients of `scale · loss` (gradient accumulation: each of k
    /// micro-batches' mean loss weighs 1/k).
    pub fn backward_scaled(self, loss: &Var, scale: f32) -> Result<Grads> {
        ensure!(loss.value.len() == 1, "backward: the loss must have one element, got {:?}", loss.shape());
        let gpu = self.gpu;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.next_id];
        // Filled by a kernel, not uploaded: an upload would submit the step so far.
        let seed = gpu.uninit(&[1])?;
        ew::fill_into(gpu, &seed, scale)?;
        grads[loss.id] = Some(seed);
        let mut unwritten = self.grad_into;
        let mut written: HashMap<usize, Tensor> = HashMap::new();
        for (out, op) in self.records.into_iter().rev() {
            // Taken, not borrowed: an activation's gradient is dropped (back
            // to the pool) once its op has passed it on.
            let Some(dy) = grads[out].take() else { continue };
            let mut give = |input: Input, g: Tensor| -> Result<()> { accumulate(gpu, &mut grads, input, g) };
            // A parameter's own gradient tensor, the first time it gets a gradient.
            let mut into = |input: &Input| -> Option<Tensor> {
                let t = unwritten.remove(&input.id).filter(|_| input.needs_grad)?;
                written.insert(input.id, t.clone());
                Some(t)
            };
            match op {
                Op::Linear { x, w, b, x_value, w_value } => {
                    if x.needs_grad {
                        give(x, linear_grad_input(gpu, &dy, &x_value, &w_value)?)?;
                    }
                    if w.needs_grad {
                        match into(&w) {
                            Some(dw) => linear_grad_weight_into(gpu, &dy, &x_value, &w_value, &dw)?,
                            None => {
                                let dw = gpu.uninit(w_value.shape())?;
                                linear_grad_weight_into(gpu, &dy, &x_value, &w_value, &dw)?;
                                give(w, dw)?;
                            }
                        }
                    }
                    if b.needs_grad {
                        match into(&b) {
                            Some(db) => linear_grad_bias_into(gpu, &dy, &db)?,
                            None => {
                                let db = gpu.uninit(&b.shape)?;
                                linear_grad_bias_into(gpu, &dy, &db)?;
                                give(b, db)?;
                            }
                        }
                    }
                }
                Op::Conv2d { x, w, b, geometry, x_value, w_value } => {
                    if x.needs_grad {
                        give(x, conv2d_grad_input(gpu, &geometry, &dy, &w_value)?)?;
                    }
                    if w.needs_grad {
                        match into(&w) {
                            Some(dw) => conv2d_grad_weight_into(gpu, &geometry, &dy, &x_value, &dw)?,
                            None => give(w, conv2d_grad_weight(gpu, &geometry, &dy, &x_value)?)?,
                        }
                    }
                    if b.needs_grad {
                        match into(&b) {
                            Some(db) => conv2d_grad_bias_into(gpu, &geometry, &dy, &db)?,
                            None => give(b, conv2d_grad_bias(gpu, &geometry, &dy)?)?,
                        }
                    }
                }
                Op::GroupNorm { x, gamma, beta, norm, saved: [xv, gv, bv, stats] } => {
                    let (dgamma, dbeta) = (into(&gamma), into(&beta));
                    let (dgamma_new, dbeta_new) = (dgamma.is_none(), dbeta.is_none());
                    let dgamma = dgamma.map_or_else(|| gpu.uninit(gv.shape()), Ok)?;
                    let dbeta = dbeta.map_or_else(|| gpu.uninit(bv.shape()), Ok)?;
                    let dx = norm.backward_into(gpu, &dy, &xv, &gv, &bv, &stats, [&dgamma, &dbeta])?;
                    give(x, dx)?;
                    if dgamma_new {
                        give(gamma, dgamma)?;
                    }
                    if dbeta_new {
                        give(beta, dbeta)?;
                    }
                }
                Op::Attention { q, k, v, scale, saved: [qv, kv, vv, probs] } => {
                    let g = attention_backward(gpu, &dy, &qv, &kv, &vv, &probs, scale)?;
                    give(q, g.dq)?;
                    give(k, g.dk)?;
                    give(v, g.dv)?;
                }
                Op::Upsample2x { x } => give(x, upsample_nearest2x_backward(gpu, &dy)?)?,
                Op::ClassEmbedding { table, labels } => match into(&table) {
                    Some(dtable) => class_embedding_backward_into(gpu, &dy, &labels, &dtable)?,
                    None => {
                        let dtable = gpu.uninit(&table.shape)?;
                        class_embedding_backward_into(gpu, &dy, &labels, &dtable)?;
                        give(table, dtable)?;
                    }
                },
                Op::Concat { a, b, channels_a } => {
                    let (da, db) = split(gpu, &dy, channels_a)?;
                    give(a, da)?;
                    give(b, db)?;
                }
                Op::Silu { x, x_value } => give(x, ew::silu_backward(gpu, &dy, &x_value)?)?,
                Op::Dropout { x, rate, key } => give(x, dropout(gpu, &dy, rate, key)?)?,
                Op::Add { a, b } => {
                    give(a, dy.clone())?;
                    give(b, dy)?;
                }
                Op::AddPerSample { x, v, spatial } => {
                    if v.needs_grad {
                        let rows = dy.len() / spatial;
                        let dv = reduce::sum(gpu, &dy.reshape(&[rows, spatial])?, &[1])?;
                        give(v, dv)?;
                    }
                    give(x, dy)?;
                }
                Op::Transpose12 { x, dims: [a, b, c, d] } => {
                    let dx = permute::transpose12(gpu, &dy, [a, c, b, d])?;
                    give(x, dx)?;
                }
                Op::Reshape { x } => give(x, dy)?,
                Op::MseLoss { pred, target, pred_value, target_value, weights } => {
                    let dpred = mse_loss_backward(gpu, &pred_value, &target_value, weights.as_ref(), &dy)?;
                    if target.needs_grad {
                        give(target, ew::scale(gpu, &dpred, -1.0)?)?;
                    }
                    give(pred, dpred)?;
                }
                Op::SoftmaxCrossEntropy { logits, probs, labels } => {
                    give(logits, softmax_cross_entropy_backward(gpu, &probs, &labels, &dy)?)?;
                }
            }
        }
        // A parameter's later contributions are added in place; one that
        // got no gradient is zero.
        for (id, dest) in written {
            if let Some(extra) = grads[id].take() {
                ew::accumulate(gpu, &dest, 1.0, &extra)?;
            }
            grads[id] = Some(dest);
        }
        for (id, dest) in unwritten {
            match grads[id].take() {
                Some(g) => gpu.copy(&g, &dest)?,
                None => gpu.clear(&dest)?,
            }
            grads[id] = Some(dest);
        }
        Ok(Grads { grads })
    }
}

/// Add `g` to the gradient of `input` (if it needs one).
fn accumulate(gpu: &Gpu, grads: &mut [Option<Tensor>], input: Input, g: Tensor) -> Result<()> {
    if !input.needs_grad {
        return Ok(());
    }
    let g = g.reshape(&input.shape)?;
    let slot = &mut grads[input.id];
    *slot = Some(match slot.take() {
        None => g,
        // A new tensor: `existing` or `g` may be shared with another gradient.
        Some(existing) => ew::add(gpu, &existing, &g)?,
    });
    Ok(())
}
