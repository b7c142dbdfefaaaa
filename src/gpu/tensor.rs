//! An f32 tensor living in a pooled GPU buffer. Cloning a `Tensor` shares
//! the buffer; the buffer returns to the pool when the last clone drops. A
//! tensor may also be a view of part of another's buffer (how parameters sit
//! in one flat buffer so the optimiser is a single dispatch).

use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::pool::{BufferKind, Pool};
use super::Gpu;

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    /// Start of this tensor in the buffer, in elements.
    offset: usize,
    shape: Vec<usize>,
}

/// Views start on 256-byte boundaries, the largest storage-offset alignment
/// WebGPU allows an adapter to ask for.
pub const VIEW_ALIGN_ELEMS: usize = 64;

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
            offset: 0,
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
        Ok(Tensor { storage: self.storage.clone(), offset: self.offset, shape: shape.to_vec() })
    }

    /// A tensor of `shape` that is elements `start..start + len` of this one;
    /// `start` must be a multiple of [`VIEW_ALIGN_ELEMS`]. Writes through
    /// the view land in this tensor.
    pub fn view(&self, start: usize, shape: &[usize]) -> Result<Tensor> {
        let len: usize = shape.iter().product();
        anyhow::ensure!(
            start.is_multiple_of(VIEW_ALIGN_ELEMS),
            "view: start {start} is not a multiple of {VIEW_ALIGN_ELEMS}"
        );
        anyhow::ensure!(
            start + len <= self.len(),
            "view: {start}..{} is outside a tensor of {}",
            start + len,
            self.len()
        );
        Ok(Tensor { storage: self.storage.clone(), offset: self.offset + start, shape: shape.to_vec() })
    }

    /// True when both handles share one buffer (views of one buffer do).
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer.as_ref().expect("tensor buffer is present until drop")
    }

    /// Byte offset of the first element in `buffer()`.
    pub(crate) fn byte_offset(&self) -> u64 {
        (self.offset * 4) as u64
    }

    /// Byte length of the elements (without padding).
    pub(crate) fn byte_len(&self) -> u64 {
        (self.len() * 4) as u64
    }

    /// The binding of this tensor for a kernel: rounded up to whole vec4s,
    /// which stays inside the buffer because buffers and views are padded.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        let size = self.byte_len().max(16).div_ceil(16) * 16;
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer(),
            offset: self.byte_offset(),
            size: wgpu::BufferSize::new(size.min(self.buffer().size() - self.byte_offset())),
        })
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}
