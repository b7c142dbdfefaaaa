//! An f32 tensor living in a pooled GPU buffer. Cloning a `Tensor` shares
//! the buffer; the buffer returns to the pool when the last clone drops.

use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::pool::{BufferKind, Pool};
use super::Gpu;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
}

struct Storage {
    buffer: Option<wgpu::Buffer>,
    pool: Arc<Mutex<Pool>>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            Pool::give_back(&self.pool, buffer, BufferKind::Storage);
        }
    }
}

impl Tensor {
    /// A pooled tensor with undefined contents; use [`Gpu::uninit`],
    /// [`Gpu::zeros`] or [`Gpu::upload`] from outside the context.
    pub(super) fn new(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        let buffer = gpu.pooled_buffer((len * 4) as u64, BufferKind::Storage)?;
        Ok(Tensor {
            storage: Arc::new(Storage { buffer: Some(buffer), pool: gpu.pool.clone() }),
            shape: shape.to_vec(),
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same buffer seen with another shape of equal size.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        anyhow::ensure!(len == self.len(), "reshape: {:?} to {:?} changes the element count", self.shape, shape);
        Ok(Tensor { storage: self.storage.clone(), shape: shape.to_vec() })
    }

    /// True when both handles share one buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer.as_ref().expect("tensor buffer is present until drop")
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}
