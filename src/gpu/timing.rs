//! Timing a batch of GPU work for benchmarks: GPU timestamps around the
//! recorded commands where the adapter has them, wall clock always; and a
//! per-kernel profile, each launch timestamped in a compute pass of its own.
//! Native only: timing waits for the GPU.

#[cfg(not(target_arch = "wasm32"))]
use std::time::Instant;

#[cfg(not(target_arch = "wasm32"))]
use anyhow::bail;
use anyhow::{ensure, Result};

#[cfg(not(target_arch = "wasm32"))]
use super::Gpu;
use super::Kernel;

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

#[cfg(not(target_arch = "wasm32"))]
impl Gpu {
    /// Run `record` (which records launches), submit, wait, and time it.
    /// Work recorded before the call is submitted and finished first.
    pub fn time(&self, record: impl FnOnce() -> Result<()>) -> Result<Timing> {
        self.submit();
        self.wait()?;
        let queries = self.info.timestamps.then(|| self.timestamp_queries("timing", 2));
        if let Some(set) = &queries {
            self.with_encoder(|e| e.write_timestamp(set, 0));
        }
        record()?;
        if let Some(set) = &queries {
            self.with_encoder(|e| e.write_timestamp(set, 1));
        }
        let start = Instant::now();
        self.submit();
        self.wait()?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let gpu_ms = match &queries {
            None => None,
            Some(set) => {
                let ticks = self.read_timestamps(set, 2)?;
                Some(ticks[1].saturating_sub(ticks[0]) as f64 * self.timestamp_period_ms())
            }
        };
        Ok(Timing { gpu_ms, wall_ms })
    }

    fn timestamp_queries(&self, label: &str, count: u32) -> wgpu::QuerySet {
        self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some(label),
            ty: wgpu::QueryType::Timestamp,
            count,
        })
    }

    /// Milliseconds per timestamp tick.
    fn timestamp_period_ms(&self) -> f64 {
        self.queue.get_timestamp_period() as f64 * 1e-6
    }

    /// The first `count` timestamps of `set`, once the work that writes
    /// them has been submitted (waits for the GPU).
    fn read_timestamps(&self, set: &wgpu::QuerySet, count: u32) -> Result<Vec<u64>> {
        let bytes = count as u64 * 8;
        let buffer = |label, usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolve = buffer("timestamps resolve", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let readback = buffer("timestamps readback", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        self.with_encoder(|e| {
            e.resolve_query_set(set, 0..count, &resolve, 0);
            e.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
        });
        self.submit();
        self.map_read(&readback, bytes)
    }
}

/// The GPU time of one kernel variant (entry point and defines) over a
/// profiled batch of work.
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// `shader::entry` and the defines it was built with.
    pub kernel: String,
    pub launches: usize,
    pub ms: f64,
}

/// Where a batch of work spent its GPU time, by kernel, largest first.
#[derive(Clone, Debug)]
pub struct Profile {
    pub kernels: Vec<KernelTime>,
    /// The sum over launches (no gaps between them).
    pub total_ms: f64,
    /// Wall clock from submit to completion, with one pass per launch.
    pub wall_ms: f64,
}

/// A profile being recorded: the query set and which kernel each pair of
/// its timestamps belongs to.
pub(super) struct Profiling {
    pub(super) queries: wgpu::QuerySet,
    kernels: Vec<String>,
}

/// Timestamps one profile can hold (wgpu's most per query set, two per launch).
const PROFILE_QUERIES: u32 = wgpu::QUERY_SET_MAX_QUERIES;

impl Profiling {
    /// The index of the first of the two timestamps of `kernel`'s launch.
    pub(super) fn next(&mut self, kernel: &Kernel) -> Result<u32> {
        let first = 2 * self.kernels.len() as u32;
        ensure!(first + 2 <= PROFILE_QUERIES, "a profile holds at most {} launches", PROFILE_QUERIES / 2);
        let defines: Vec<String> = kernel.defines.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let name = match defines.is_empty() {
            true => format!("{:?}::{}", kernel.shader, kernel.entry),
            false => format!("{:?}::{} [{}]", kernel.shader, kernel.entry, defines.join(",")),
        };
        self.kernels.push(name);
        Ok(first)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Gpu {
    /// Run `record` with every launch in a compute pass of its own, its
    /// start and end timestamped, and sum the GPU time by kernel. One pass
    /// per launch adds a little overhead: compare profiles with each
    /// other, and [`Gpu::time`] figures with each other.
    pub fn profile(&self, record: impl FnOnce() -> Result<()>) -> Result<Profile> {
        if !self.info.timestamps {
            bail!("this adapter has no timestamp queries: no per-kernel profile");
        }
        self.submit();
        self.wait()?;
        let queries = self.timestamp_queries("profile", PROFILE_QUERIES);
        self.recording.lock().unwrap().profiling = Some(Profiling { queries, kernels: Vec::new() });
        let recorded = record();
        let profiling = self.recording.lock().unwrap().profiling.take().expect("profiling was set");
        recorded?;
        let start = Instant::now();
        self.submit();
        self.wait()?;
        let wall_ms = start.elapsed().as_secs_f64() * 1e3;
        let stamps = 2 * profiling.kernels.len() as u32;
        if stamps == 0 {
            return Ok(Profile { kernels: Vec::new(), total_ms: 0.0, wall_ms });
        }
        let ticks = self.read_timestamps(&profiling.queries, stamps)?;
        let period_ms = self.timestamp_period_ms();
        let mut by_kernel: std::collections::HashMap<&str, (usize, f64)> = Default::default();
        for (name, pair) in profiling.kernels.iter().zip(ticks.chunks_exact(2)) {
            let entry = by_kernel.entry(name).or_default();
            entry.0 += 1;
            entry.1 += pair[1].saturating_sub(pair[0]) as f64 * period_ms;
        }
        let mut kernels: Vec<KernelTime> = by_kernel
            .into_iter()
            .map(|(kernel, (launches, ms))| KernelTime { kernel: kernel.to_string(), launches, ms })
            .collect();
        kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        let total_ms = kernels.iter().map(|k| k.ms).sum();
        Ok(Profile { kernels, total_ms, wall_ms })
    }
}
