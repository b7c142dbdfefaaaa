//! Data-parallel training's communication: what the ranks of one job
//! exchange, behind [`Collective`]. [`SingleProcess`] is the world of one
//! (every operation the identity); with the `mpi` feature, [`mpi::MpiWorld`]
//! is a job launched by `mpirun`/`srun`.
//!
//! Every operation gives every rank the same bits, computed in an order that
//! depends on the ranks only, never on timing: two runs of a job are
//! bit-identical.

use anyhow::Result;

/// The ranks of a job and the collectives the trainer needs. Every rank
/// calls each operation at the same point with the same lengths.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// `values` becomes the mean over ranks of each rank's `values`: summed
    /// in rank order 0, 1, ..., N-1 in f32, then divided by N.
    fn mean_in_place(&self, values: &mut [f32]) -> Result<()>;
    /// Every rank's `values` (the same length on all), concatenated in rank order.
    fn all_gather(&self, values: &[f32]) -> Result<Vec<f32>>;
    /// True on every rank when `flag` is true on any.
    fn any(&self, flag: bool) -> Result<bool>;
    /// Every rank's `text`, in rank order.
    fn all_gather_text(&self, text: &str) -> Result<Vec<String>>;
}

/// The world of a single process.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn mean_in_place(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }
    fn any(&self, flag: bool) -> Result<bool> {
        Ok(flag)
    }
    fn all_gather_text(&self, text: &str) -> Result<Vec<String>> {
        Ok(vec![text.to_string()])
    }
}

/// The part of `0..len` that rank `rank` of `size` owns: equal shares, the
/// first `len % size` ranks one longer.
pub fn share(len: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / size, len % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The environment variables by which `mpirun` (Open MPI), MPICH's Hydra
/// and Slurm's `srun` tell a process it is one rank of a job, and its size.
const LAUNCHER_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];

/// The job size a launcher announced to this process (None: not launched
/// as a rank; a job of 1 counts as not launched).
pub fn launched_world_size() -> Option<usize> {
    LAUNCHER_SIZE_VARS.iter().find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok()).filter(|&n| n > 1)
}

#[cfg(feature = "mpi")]
pub mod mpi {
    //! An MPI job's world. MPI's default error handler
    //! (`MPI_ERRORS_ARE_FATAL`) is kept: a failed call ends the whole job
    //! with MPI's message, so no rank is left waiting on a dead peer.

    use anyhow::{ensure, Result};
    use mpi::collective::CommunicatorCollectives;
    use mpi::datatype::{Partition, PartitionMut};
    use mpi::topology::{Communicator, SimpleCommunicator};
    use mpi::Count;

    use super::{share, Collective};

    pub struct MpiWorld {
        /// Finalises MPI when dropped.
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
        /// This rank's index among the ranks on its host.
        local_rank: usize,
    }

    impl MpiWorld {
        /// Join the job (MPI_Init). Call once, from the main thread.
        pub fn init() -> Result<MpiWorld> {
            let universe = mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
            let world = universe.world();
            let local_rank = world.split_shared(world.rank()).rank() as usize;
            Ok(MpiWorld { _universe: universe, world, local_rank })
        }

        pub fn local_rank(&self) -> usize {
            self.local_rank
        }

        /// End the whole job now (MPI_Abort): every rank exits with `code`.
        pub fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }

        /// `share` of every rank as MPI counts and displacements.
        fn partition(&self, len: usize) -> Result<(Vec<Count>, Vec<Count>)> {
            ensure!(len <= Count::MAX as usize, "{len} values are too many for one MPI message");
            let n = self.size();
            let parts = (0..n).map(|r| share(len, r, n));
            Ok(parts.map(|p| (p.len() as Count, p.start as Count)).unzip())
        }
    }

    impl Collective for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        fn size(&self) -> usize {
            self.world.size() as usize
        }

        /// A reduce-scatter then an all-gather (each rank sends and receives
        /// 2 (N-1)/N of the buffer, as a ring all-reduce does): rank r
        /// receives part r of every rank's buffer, sums it in rank order,
        /// and every rank gathers the N summed parts.
        fn mean_in_place(&self, values: &mut [f32]) -> Result<()> {
            let n = self.size();
            if n == 1 {
                return Ok(());
            }
            let (counts, displs) = self.partition(values.len())?;
            let mine = share(values.len(), self.rank(), n);
            let part = mine.len();
            let mut received = vec![0.0f32; part * n];
            let (recv_counts, recv_displs): (Vec<Count>, Vec<Count>) =
                (0..n).map(|r| (part as Count, (r * part) as Count)).unzip();
            self.world.all_to_all_varcount_into(
                &Partition::new(&values[..], &counts[..], &displs[..]),
                &mut PartitionMut::new(&mut received[..], &recv_counts[..], &recv_displs[..]),
            );
            let summed: Vec<f32> =
                (0..part).map(|i| (0..n).fold(0.0f32, |sum, r| sum + received[r * part + i]) / n as f32).collect();
            self.world.all_gather_varcount_into(&summed[..], &mut PartitionMut::new(values, &counts[..], &displs[..]));
            Ok(())
        }

        fn all_gather(&self, values: &[f32]) -> Result<Vec<f32>> {
            ensure!(values.len() * self.size() <= Count::MAX as usize, "too many values for one MPI message");
            let mut all = vec![0.0f32; values.len() * self.size()];
            self.world.all_gather_into(values, &mut all[..]);
            Ok(all)
        }

        fn any(&self, flag: bool) -> Result<bool> {
            let mut all = vec![0u8; self.size()];
            self.world.all_gather_into(&u8::from(flag), &mut all[..]);
            Ok(all.contains(&1))
        }

        fn all_gather_text(&self, text: &str) -> Result<Vec<String>> {
            let n = self.size();
            let mut lengths = vec![0 as Count; n];
            self.world.all_gather_into(&(text.len() as Count), &mut lengths[..]);
            let displs: Vec<Count> = lengths.iter().scan(0, |at, &l| Some(std::mem::replace(at, *at + l))).collect();
            let mut bytes = vec![0u8; lengths.iter().map(|&l| l as usize).sum()];
            self.world.all_gather_varcount_into(
                text.as_bytes(),
                &mut PartitionMut::new(&mut bytes[..], &lengths[..], &displs[..]),
            );
            Ok((0..n)
                .map(|r| {
                    let start = displs[r] as usize;
                    String::from_utf8_lossy(&bytes[start..start + lengths[r] as usize]).into_owned()
                })
                .collect())
        }
    }
}
