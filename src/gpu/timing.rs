//! Timing a batch of GPU work for benchmarks: GPU timestamps around the
//! recorded commands where the adapter has them, wall clock always.

use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use super::Gpu;

/// Duration of one timed batch, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Between timestamps written before and after the commands.
    pub gpu_ms: Option<f64>,
    /// From submitting the recorded commands to their completion.
    pub wall_ms: f64,
}

impl Timing {
    /// The most precise figure available.
    pub fn ms(&self) -> f64 {
        self.gpu_ms.unwrap_or(self.wall_ms)
    }
}

impl Gpu {
    /// Run `record` (which records launches), submit, wait, and time it.
    /// Work recorded before the call is submitted and finished first.
    pub fn time(&self, record: impl FnOnce() -> Result<()>) -> Result<Timing> {
        self.submit();
        self.wait()?;
        let queries = self.info.timestamps.then(|| {
            let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timing resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timing readback"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, readback)
        });
        if let Some((set, _, _)) = &queries {
            self.with_encoder(|e| e.write_timestamp(set, 0));
        }
        record()?;
        if let Some((set, resolve, readback)) = &queries {
            self.with_encoder(|e| {
                e.write_timestamp(set, 1);
                e.resolve_query_set(set, 0..2, resolve, 0);
                e.copy_buffer_to_buffer(resolve, 0, readback, 0, 16);
            });
        }
        let start = Instant::now();
        self.submit();
        self.wait()?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let gpu_ms = match &queries {
            None => None,
            Some((_, _, readback)) => {
                let slice = readback.slice(..);
                let (tx, rx) = std::sync::mpsc::channel();
                slice.map_async(wgpu::MapMode::Read, move |r| {
                    let _ = tx.send(r);
                });
                self.wait()?;
                rx.recv().context("timestamp readback dropped")?.context("mapping timestamps")?;
                let view = slice.get_mapped_range().map_err(|e| anyhow!("reading timestamps: {e:?}"))?;
                let ticks: &[u64] = bytemuck::cast_slice(&view);
                let ns = ticks[1].saturating_sub(ticks[0]) as f64 * self.queue.get_timestamp_period() as f64;
                Some(ns * 1e-6)
            }
        };
        Ok(Timing { gpu_ms, wall_ms })
    }
}
