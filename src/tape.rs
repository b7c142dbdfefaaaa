//! Reverse-mode autodiff over GPU ops.
//!
//! Each op on a [`Tape`] runs its forward kernel at once and, when any input
//! needs a gradient, records an [`Op`]: the inputs and what its backward
//! needs (saved tensors, geometry). [`Tape::backward`] walks the records in
//! reverse with one `match`, launching each op's backward kernels and
//! summing gradients where a value feeds several ops (UNet skips,
//! residuals). Activations nothing saved are freed as soon as the caller
//! drops them; saved ones are freed as backward passes their op.

use anyhow::{ensure, Result};

use crate::gpu::{Gpu, Tensor};
use crate::ops::elementwise as ew;
use crate::ops::matmul::{gemm, Gemm};
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

/// An input of a recorded op: which gradient it feeds, if any.
#[derive(Clone, Copy, Debug)]
struct Input {
    id: usize,
    needs_grad: bool,
}

impl From<&Var> for Input {
    fn from(v: &Var) -> Input {
        Input { id: v.id, needs_grad: v.needs_grad }
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
        shape: Vec<usize>,
    },
    /// mean((pred - target)^2); saves pred - target
    MseLoss {
        pred: Input,
        target: Input,
        diff: Tensor,
    },
}

pub struct Tape<'g> {
    gpu: &'g Gpu,
    next_id: usize,
    records: Vec<(usize, Op)>,
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
        Tape { gpu, next_id: 0, records: Vec::new() }
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
        let (xs, ws) = (x.shape(), w.shape());
        ensure!(xs.len() == 2 && ws.len() == 2 && xs[1] == ws[1], "linear: x {xs:?} and weight {ws:?} do not fit");
        ensure!(b.shape() == [ws[0]], "linear: bias {:?} for weight {ws:?}", b.shape());
        let g = Gemm { trans_b: true, ..Gemm::new(xs[0], ws[0], xs[1]) };
        let y = self.gpu.uninit(&[xs[0], ws[0]])?;
        gemm(self.gpu, &g, &y, &x.value, &w.value, Some(&b.value))?;
        let (xv, wv) = (x.value.clone(), w.value.clone());
        Ok(self.output(y, &[x.into(), w.into(), b.into()], || Op::Linear {
            x: x.into(),
            w: w.into(),
            b: b.into(),
            x_value: xv,
            w_value: wv,
        }))
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
        let old = x.shape().to_vec();
        Ok(self.output(y, &[x.into()], || Op::Reshape { x: x.into(), shape: old }))
    }

    /// Mean squared error as a (1) tensor: the DDPM L_simple loss.
    pub fn mse_loss(&mut self, pred: &Var, target: &Var) -> Result<Var> {
        let diff = ew::sub(self.gpu, &pred.value, &target.value)?;
        let sq = ew::mul(self.gpu, &diff, &diff)?;
        let axes: Vec<usize> = (0..sq.shape().len()).collect();
        let loss = reduce::mean(self.gpu, &sq, &axes)?;
        Ok(self.output(loss, &[pred.into(), target.into()], || Op::MseLoss {
            pred: pred.into(),
            target: target.into(),
            diff,
        }))
    }

    /// Gradients of the (1)-element `loss` with respect to every value that
    /// needs one.
    pub fn backward(self, loss: &Var) -> Result<Grads> {
        ensure!(loss.value.len() == 1, "backward: the loss must have one element, got {:?}", loss.shape());
        let gpu = self.gpu;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.next_id];
        grads[loss.id] = Some(gpu.upload(&[1], &[1.0])?);
        for (out, op) in self.records.into_iter().rev() {
            // Taken, not borrowed: an activation's gradient is dropped (back
            // to the pool) once its op has passed it on.
            let Some(dy) = grads[out].take() else { continue };
            let mut give = |input: Input, g: Tensor| -> Result<()> { accumulate(gpu, &mut grads, input, g) };
            match op {
                Op::Linear { x, w, b, x_value, w_value } => {
                    let (n, out_f, in_f) = (x_value.shape()[0], w_value.shape()[0], w_value.shape()[1]);
                    if x.needs_grad {
                        let dx = gpu.uninit(&[n, in_f])?;
                        gemm(gpu, &Gemm::new(n, in_f, out_f), &dx, &dy, &w_value, None)?;
                        give(x, dx)?;
                    }
                    if w.needs_grad {
                        let dw = gpu.uninit(&[out_f, in_f])?;
                        gemm(gpu, &Gemm { trans_a: true, ..Gemm::new(out_f, in_f, n) }, &dw, &dy, &x_value, None)?;
                        give(w, dw)?;
                    }
                    if b.needs_grad {
                        give(b, reduce::sum(gpu, &dy, &[0])?)?;
                    }
                }
                Op::Silu { x, x_value } => give(x, ew::silu_backward(gpu, &dy, &x_value)?)?,
                Op::Add { a, b } => {
                    if a.needs_grad {
                        give(a, dy.clone())?;
                    }
                    if b.needs_grad {
                        give(b, dy)?;
                    }
                }
                Op::AddPerSample { x, v, spatial } => {
                    if v.needs_grad {
                        let rows = dy.len() / spatial;
                        let dv = reduce::sum(gpu, &dy.reshape(&[rows, spatial])?, &[1])?;
                        give(v, dv)?;
                    }
                    if x.needs_grad {
                        give(x, dy)?;
                    }
                }
                Op::Transpose12 { x, dims: [a, b, c, d] } => {
                    let dx = permute::transpose12(gpu, &dy, [a, c, b, d])?;
                    give(x, dx)?;
                }
                Op::Reshape { x, shape } => give(x, dy.reshape(&shape)?)?,
                Op::MseLoss { pred, target, diff } => {
                    // d/dpred = 2 (pred - target) / n, times the upstream scalar.
                    let n = diff.len();
                    let scaled = ew::mul_channel(gpu, &diff.reshape(&[1, 1, n])?, &dy)?;
                    let dpred = ew::scale(gpu, &scaled, 2.0 / n as f32)?.reshape(diff.shape())?;
                    if target.needs_grad {
                        give(target, ew::scale(gpu, &dpred, -1.0)?)?;
                    }
                    if pred.needs_grad {
                        give(pred, dpred)?;
                    }
                }
            }
        }
        Ok(Grads { grads })
    }
}

/// Add `g` to the gradient of `input` (if it needs one).
fn accumulate(gpu: &Gpu, grads: &mut [Option<Tensor>], input: Input, g: Tensor) -> Result<()> {
    if !input.needs_grad {
        return Ok(());
    }
    let slot = &mut grads[input.id];
    *slot = Some(match slot.take() {
        None => g,
        // A new tensor: `existing` or `g` may be shared with another gradient.
        Some(existing) => ew::add(gpu, &existing, &g.reshape(existing.shape())?)?,
    });
    Ok(())
}
