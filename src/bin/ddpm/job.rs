//! The job this process belongs to: alone, or one rank of an MPI job that
//! `mpirun`/`srun` launched (with the `mpi` feature).

use anyhow::Result;
use ddpm_wgpu::distributed::{launched_world_size, Collective, SingleProcess};

pub enum Job {
    Single(SingleProcess),
    #[cfg(feature = "mpi")]
    Mpi(ddpm_wgpu::distributed::mpi::MpiWorld),
}

impl Job {
    /// Join the MPI job the launcher started this process in, if any.
    pub fn join() -> Result<Job> {
        match launched_world_size() {
            None => Ok(Job::Single(SingleProcess)),
            #[cfg(feature = "mpi")]
            Some(_) => Ok(Job::Mpi(ddpm_wgpu::distributed::mpi::MpiWorld::init()?)),
            #[cfg(not(feature = "mpi"))]
            Some(n) => anyhow::bail!(
                "this process is one of {n} ranks of an MPI job, but this ddpm was built without MPI: \
                 build it with `cargo build --release --features mpi`"
            ),
        }
    }

    pub fn world(&self) -> &dyn Collective {
        match self {
            Job::Single(w) => w,
            #[cfg(feature = "mpi")]
            Job::Mpi(w) => w,
        }
    }

    pub fn is_root(&self) -> bool {
        self.world().rank() == 0
    }

    /// This rank's index among the ranks on its host (which adapter it takes).
    pub fn local_rank(&self) -> usize {
        match self {
            Job::Single(_) => 0,
            #[cfg(feature = "mpi")]
            Job::Mpi(w) => w.local_rank(),
        }
    }

    /// "rank r (host h): adapter" for every rank, in rank order.
    pub fn describe_ranks(&self, adapter: &str) -> Result<Vec<String>> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "?".into());
        let line = format!("rank {} (host {}): {adapter}", self.world().rank(), host.trim());
        self.world().all_gather_text(&line)
    }

    /// Report `e` and end the process, and with it the whole job: the other
    /// ranks would otherwise wait for this one forever.
    pub fn fail(&self, e: anyhow::Error) -> ! {
        let world = self.world();
        match world.size() {
            1 => eprintln!("error: {e:#}"),
            n => eprintln!("error on rank {} of {n}: {e:#}", world.rank()),
        }
        match self {
            Job::Single(_) => std::process::exit(1),
            #[cfg(feature = "mpi")]
            Job::Mpi(w) => w.abort(1),
        }
    }
}
