//! `ddpm`: the command-line tool.

use anyhow::Result;
use clap::{Parser, Subcommand};
use ddpm_wgpu::gpu::{enumerate_adapters, Gpu, GpuOptions};

#[derive(Parser)]
#[command(name = "ddpm", version, about = "Train and sample DDPM diffusion models on any GPU wgpu reaches")]
struct Cli {
    /// Graphics backend: vulkan, metal, dx12 or gl (default: WGPU_BACKEND, else the best found).
    #[arg(long, global = true)]
    backend: Option<String>,
    /// Pick the adapter whose name contains this (default: WGPU_ADAPTER_NAME).
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu can see, with the limits and features the engine uses.
    Devices,
}

fn main() {
    let cli = Cli::parse();
    let options =
        GpuOptions { backend: cli.backend.clone(), adapter_name: cli.adapter.clone(), ..GpuOptions::default() };
    let result = match cli.command {
        Command::Devices => devices(&options),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn devices(options: &GpuOptions) -> Result<()> {
    let adapters = enumerate_adapters(options)?;
    if adapters.is_empty() {
        // Gpu::new explains how to get an adapter.
        Gpu::new(options)?;
    }
    let chosen = Gpu::new(options).map(|g| g.info().clone()).ok();
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
    if chosen.is_some() {
        println!("* = the adapter the engine uses with these settings");
    }
    Ok(())
}
