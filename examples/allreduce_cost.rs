//! What data-parallel training pays per step to average gradients: the
//! flat gradient of the default and the DDPM CIFAR-10 UNets, averaged
//! across the ranks of an MPI job as `Trainer` does it (host buffers,
//! reduce-scatter + all-gather), timed over repeats. No GPU involved.
//!
//! cargo build --release --features mpi --example allreduce_cost
//! mpirun -np 2 target/release/examples/allreduce_cost

use std::time::Instant;

use anyhow::Result;
use ddpm_wgpu::distributed::mpi::MpiWorld;
use ddpm_wgpu::distributed::Collective;
use ddpm_wgpu::unet::{UNet, UNetConfig};

const CONFIGS: [(&str, &str); 2] = [
    ("default (0.69M)", include_str!("../assets/configs/default_unet.json")),
    ("DDPM CIFAR-10 (35.7M)", include_str!("../assets/configs/ddpm_cifar10_unet.json")),
];

fn main() -> Result<()> {
    let world = MpiWorld::init()?;
    let n = world.size();
    for (name, json) in CONFIGS {
        let len = UNet::new(&UNetConfig::from_json(json)?)?.table.flat_len;
        let mut grads: Vec<f32> = (0..len).map(|i| (i % 97) as f32 * 1e-3 + world.rank() as f32).collect();
        world.mean_in_place(&mut grads)?; // warm-up: buffers, connections
        let repeats = if len > 10_000_000 { 5 } else { 50 };
        let started = Instant::now();
        for _ in 0..repeats {
            world.mean_in_place(&mut grads)?;
        }
        let seconds = started.elapsed().as_secs_f64() / repeats as f64;
        // Each rank sends (and receives) 2 (N-1)/N of the buffer.
        let moved = 2.0 * (n - 1) as f64 / n as f64 * (len * 4) as f64;
        if world.rank() == 0 {
            println!(
                "{name}: {:.1} MiB of gradients, {n} ranks: {:.2} ms per all-reduce, {:.1} MiB sent per rank, {:.2} GB/s per rank",
                (len * 4) as f64 / (1 << 20) as f64,
                seconds * 1e3,
                moved / (1 << 20) as f64,
                moved / seconds / 1e9
            );
        }
    }
    Ok(())
}
