//! Buffer pool: GPU buffers are recycled by (size, kind), so a loop that uses
//! the same shapes every iteration creates no buffers after its first pass.
//! A request takes the oldest free buffer of its size, so a loop that takes
//! and returns buffers in the same order every iteration gets the same
//! buffer for each tensor every time, and its bind groups come from the
//! cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BufferKind {
    /// Tensor storage: bound to kernels, copied to and from.
    Storage,
    /// Host-mappable staging for reads back to the CPU.
    Readback,
}

impl BufferKind {
    fn usage(self) -> wgpu::BufferUsages {
        match self {
            BufferKind::Storage => {
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
            }
            BufferKind::Readback => wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        }
    }
}

/// Counters a caller can watch to see that a steady-state loop allocates
/// nothing and how much memory it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes in buffers currently held by tensors (or in-flight readbacks).
    pub live_bytes: u64,
    /// Largest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Bytes in all buffers the pool owns, live or free.
    pub reserved_bytes: u64,
    /// Buffers created since start: stops growing in a steady-state loop.
    pub allocations: u64,
}

#[derive(Default)]
pub(crate) struct Pool {
    /// Free buffers by (size, kind), by creation number.
    free: HashMap<(u64, BufferKind), BTreeMap<u64, wgpu::Buffer>>,
    /// The creation number of every buffer the pool made.
    serials: HashMap<wgpu::Buffer, u64>,
    stats: PoolStats,
}

/// Buffers are sized in 16-byte steps so every tensor can be read as vec4.
pub(crate) fn rounded_size(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

impl Pool {
    pub(crate) fn stats(&self) -> PoolStats {
        self.stats
    }

    pub(crate) fn take(
        pool: &Arc<Mutex<Pool>>,
        device: &wgpu::Device,
        bytes: u64,
        kind: BufferKind,
    ) -> Result<wgpu::Buffer> {
        let size = rounded_size(bytes);
        let mut p = pool.lock().unwrap();
        p.stats.live_bytes += size;
        p.stats.peak_live_bytes = p.stats.peak_live_bytes.max(p.stats.live_bytes);
        if let Some((_, buffer)) = p.free.get_mut(&(size, kind)).and_then(BTreeMap::pop_first) {
            return Ok(buffer);
        }
        p.stats.allocations += 1;
        p.stats.reserved_bytes += size;
        drop(p);
        // Out-of-memory surfaces as a validation/OOM error scope, not a panic.
        let (buffer, error) = super::scoped(device, wgpu::ErrorFilter::OutOfMemory, || {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(match kind {
                    BufferKind::Storage => "tensor",
                    BufferKind::Readback => "readback",
                }),
                size,
                usage: kind.usage(),
                mapped_at_creation: false,
            })
        });
        if let Some(err) = error {
            let mut p = pool.lock().unwrap();
            p.stats.live_bytes -= size;
            p.stats.reserved_bytes -= size;
            return Err(anyhow!("out of GPU memory allocating {} bytes ({} MiB): {err}", size, size >> 20));
        }
        let mut p = pool.lock().unwrap();
        let serial = p.stats.allocations;
        p.serials.insert(buffer.clone(), serial);
        Ok(buffer)
    }

    pub(crate) fn give_back(pool: &Arc<Mutex<Pool>>, buffer: wgpu::Buffer, kind: BufferKind) {
        let size = buffer.size();
        let mut p = pool.lock().unwrap();
        p.stats.live_bytes -= size;
        let serial = *p.serials.get(&buffer).expect("every pooled buffer was made by `take`");
        p.free.entry((size, kind)).or_default().insert(serial, buffer);
    }

    pub(crate) fn trim(&mut self) {
        for (_, buffers) in self.free.drain() {
            // Dropped, not destroyed: work already recorded may still use them,
            // and wgpu frees each buffer once nothing refers to it.
            for b in buffers.into_values() {
                self.stats.reserved_bytes -= b.size();
                self.serials.remove(&b);
            }
        }
    }
}
