//! `ddpm devices`: every adapter wgpu can see, with what the engine uses;
//! under `mpirun`, the job's size and the adapter each rank opens.

use anyhow::Result;
use ddpm_wgpu::gpu::{enumerate_adapters, Gpu, GpuOptions};

use crate::job::Job;

pub fn devices(options: &GpuOptions, job: &Job) -> Result<()> {
    let adapters = enumerate_adapters(options)?;
    if adapters.is_empty() {
        // Gpu::new explains how to get an adapter.
        Gpu::new(options)?;
    }
    // Listed even when the requested adapter is missing; that error comes after the list.
    let opened = Gpu::new(options).map(|g| g.info().clone());
    if job.world().size() > 1 {
        let mine = match &opened {
            Ok(info) => info.to_string(),
            Err(e) => format!("no adapter ({e:#})"),
        };
        let ranks = job.describe_ranks(&mine)?;
        if !job.is_root() {
            return opened.map(|_| ());
        }
        println!("MPI job of {} ranks:", ranks.len());
        ranks.iter().for_each(|r| println!("  {r}"));
        println!("adapters on rank 0's host:");
    }
    let chosen = opened.as_ref().ok();
    for adapter in &adapters {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let is_chosen = chosen.as_ref().is_some_and(|c| c.name == info.name && c.backend == info.backend);
        println!("{} {} [{:?}]", if is_chosen { "*" } else { " " }, info.name, info.backend);
        println!("    type: {:?}, driver: {} {}", info.device_type, info.driver, info.driver_info);
        let has = |f: wgpu::Features| if features.contains(f) { "yes" } else { "no" };
        println!(
            "    subgroups: {} (size {}-{}), timestamps: {}, f16: {}",
            has(wgpu::Features::SUBGROUP),
            info.subgroup_min_size,
            info.subgroup_max_size,
            has(wgpu::Features::TIMESTAMP_QUERY),
            has(wgpu::Features::SHADER_F16)
        );
        println!(
            "    max storage binding: {} MiB, max buffer: {} MiB, workgroup storage: {} KiB, invocations/workgroup: {}, storage buffers/stage: {}",
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20,
            limits.max_compute_workgroup_storage_size >> 10,
            limits.max_compute_invocations_per_workgroup,
            limits.max_storage_buffers_per_shader_stage
        );
    }
    opened?;
    println!("* = the adapter the engine uses with these settings");
    Ok(())
}
