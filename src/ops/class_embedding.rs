//! Class-label embedding (diffusers' `class_embedding`, an `nn.Embedding`
//! of `num_class_embeds` rows) and its backward. Kernel:
//! `shaders/class_embedding.wgsl`.

use anyhow::{ensure, Result};

use crate::gpu::{kernel_params, Access, Gpu, Kernel, Shader, Tensor};

kernel_params! {
    /// Mirrors `Params` in `shaders/class_embedding.wgsl`.
    struct Params {
        rows: u32,
        classes: u32,
        dim: u32,
        _pad: u32,
    }
}

const BINDINGS: &[Access] = &[Access::ReadWrite, Access::Read, Access::Read];

fn params(op: &str, table_shape: &[usize], labels: &Tensor) -> Result<Params> {
    ensure!(table_shape.len() == 2, "{op}: table {table_shape:?} must be (classes, dim)");
    ensure!(labels.shape().len() == 1, "{op}: labels {:?} must be (N)", labels.shape());
    Ok(Params { rows: labels.len() as u32, classes: table_shape[0] as u32, dim: table_shape[1] as u32, _pad: 0 })
}

/// The (N, dim) rows of `table` (classes, dim) picked by `labels`, the (N)
/// class-index tensor of [`crate::ops::cross_entropy::class_labels`] (which
/// checks each index against the class count).
pub fn class_embedding(gpu: &Gpu, table: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let p = params("class_embedding", table.shape(), labels)?;
    let out = gpu.uninit(&[labels.len(), p.dim as usize])?;
    let kernel = Kernel::new(Shader::ClassEmbedding, "class_embedding", BINDINGS);
    gpu.launch(&kernel, &p, &[&out, table, labels], Gpu::grid_1d(out.len().div_ceil(64) as u32))?;
    Ok(out)
}

/// Gradient of the table, written into `dtable` (classes, dim): each row
/// the sum of the `dy` (N, dim) rows of its label (zero for unused classes).
pub fn class_embedding_backward_into(gpu: &Gpu, dy: &Tensor, labels: &Tensor, dtable: &Tensor) -> Result<()> {
    let p = params("class_embedding backward", dtable.shape(), labels)?;
    ensure!(
        dy.shape() == [labels.len(), p.dim as usize],
        "class_embedding backward: dy {:?} for {} labels of dim {}",
        dy.shape(),
        labels.len(),
        p.dim
    );
    let kernel = Kernel::new(Shader::ClassEmbedding, "class_embedding_backward", BINDINGS);
    gpu.launch(&kernel, &p, &[dtable, dy, labels], Gpu::grid_1d(dtable.len().div_ceil(64) as u32))
}

/// CPU twins, in f64. `table` is (classes, dim) row-major.
pub mod cpu {
    pub fn class_embedding(table: &[f64], dim: usize, labels: &[usize]) -> Vec<f64> {
        labels.iter().flat_map(|&l| table[l * dim..(l + 1) * dim].iter().copied()).collect()
    }

    pub fn class_embedding_backward(dy: &[f64], dim: usize, labels: &[usize], classes: usize) -> Vec<f64> {
        let mut dtable = vec![0.0; classes * dim];
        for (row, &l) in dy.chunks_exact(dim).zip(labels) {
            for (acc, g) in dtable[l * dim..(l + 1) * dim].iter_mut().zip(row) {
                *acc += g;
            }
        }
        dtable
    }
}
