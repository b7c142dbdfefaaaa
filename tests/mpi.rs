//! Data-parallel training on MPI (`--features mpi`), end to end with the
//! real binary under Open MPI's `mpirun` on this machine (loopback, the
//! ranks sharing its adapter): two ranks train as one process does, two
//! runs of a job are bit-identical, a job's checkpoint resumes in one
//! process, and a dead or failing rank ends the whole job at once.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `mpirun -np n ddpm args`: loopback only, allowed as root (CI), ranks
/// yielding while they wait (they share two cores).
fn mpirun(n: usize, args: &[&str], marker: &str) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["-np", &n.to_string(), "--oversubscribe", "--bind-to", "none"])
        .arg(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl", "self,vader")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .env("DDPM_TEST_MARKER", marker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn spawn(mut command: Command) -> Child {
    command.spawn().expect("running mpirun: install Open MPI (openmpi-bin libopenmpi-dev)")
}

/// Wait for `child`, failing the test after `limit` (a hung job).
fn finish(mut child: Child, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the job did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    (out, started.elapsed())
}

fn run(command: Command) -> Output {
    let (out, _) = finish(spawn(command), Duration::from_secs(300));
    assert!(out.status.success(), "the job failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn single(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ddpm"));
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    run(command)
}

const TINY_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_unet_28.json");

/// A tiny run of the UNet `config` with min-SNR weights and 2 micro-batches
/// of a global `batch` (of 8: each rank takes 4 samples of each), into `out`.
fn train_args<'a>(
    config: &'a str,
    out: &'a str,
    steps: &'a str,
    batch: &'a str,
    checkpoint_every: &'a str,
) -> Vec<&'a str> {
    let flags = "--grad-accum 2 --min-snr-gamma 5 --limit 40 --warmup 2 --sample-every 0 --grid-samples 4 \
                 --grid-ddim-steps 2";
    let mut args = vec!["train", "--config", config, "--out", out, "--steps", steps, "--batch-size", batch];
    args.extend(["--checkpoint-every", checkpoint_every]);
    args.extend(flags.split_whitespace());
    args
}

/// metrics.csv's rows: (step, [loss, lr, grad_norm, the ten decile losses]),
/// NaN for an empty decile.
fn metrics(dir: &Path) -> Vec<(u64, Vec<f64>)> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            let value = |c: &str| if c.is_empty() { f64::NAN } else { c.parse().unwrap() };
            let figures = cells[1..4].iter().chain(&cells[5..15]).map(|c| value(c)).collect();
            (cells[0].parse().unwrap(), figures)
        })
        .collect()
}

/// Every figure of `a`'s rows within `tolerance` (relative) of `b`'s, steps
/// and empty deciles matching.
fn assert_close(a: &[(u64, Vec<f64>)], b: &[(u64, Vec<f64>)], tolerance: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: step counts");
    for ((sa, fa), (sb, fb)) in a.iter().zip(b) {
        assert_eq!(sa, sb, "{what}");
        for (x, y) in fa.iter().zip(fb) {
            assert_eq!(x.is_nan(), y.is_nan(), "{what}, step {sa}: {fa:?} vs {fb:?}");
            if !x.is_nan() {
                assert!((x - y).abs() <= tolerance * y.abs().max(1e-12), "{what}, step {sa}: {fa:?} vs {fb:?}");
            }
        }
    }
}

fn bytes(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn two_ranks_train_as_one_process_bit_identically_and_resume_in_one() {
    let dir = temp("parity");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (one, job_a, job_b, split) = (path("one"), path("job_a"), path("job_b"), path("split"));
    // With dropout, whose masks are keyed by the sample's index in the global batch, and
    // class labels, a third of them dropped to "no class" by draws made for the whole batch.
    let config = path("dropout.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(TINY_CONFIG).unwrap()).unwrap();
    json["dropout"] = 0.1.into();
    json["num_class_embeds"] = 11.into();
    fn classes(args: Vec<&str>) -> Vec<&str> {
        [args, vec!["--class-dropout", "0.3"]].concat()
    }
    std::fs::write(&config, json.to_string()).unwrap();
    single(&classes(train_args(&config, &one, "5", "8", "1000")));
    let out = run(mpirun(2, &classes(train_args(&config, &job_a, "5", "8", "1000")), "parity"));
    let banner = String::from_utf8_lossy(&out.stderr);
    assert!(banner.contains("MPI job of 2 ranks") && banner.contains("rank 1 (host"), "{banner}");
    assert!(banner.contains("4 per rank"), "{banner}");
    run(mpirun(2, &classes(train_args(&config, &job_b, "5", "8", "1000")), "parity"));
    // `ddpm devices` under mpirun: the job's size and each rank's adapter, once (from rank 0).
    let listing = String::from_utf8_lossy(&run(mpirun(2, &["devices"], "devices")).stdout).into_owned();
    assert!(listing.contains("MPI job of 2 ranks") && listing.contains("rank 0 (host"), "{listing}");
    assert!(listing.contains("rank 1 (host") && listing.matches("MPI job").count() == 1, "{listing}");

    let single_rows = metrics(Path::new(&one));
    assert_eq!(single_rows.len(), 5);
    assert_close(&metrics(Path::new(&job_a)), &single_rows, 1e-5, "2 ranks vs 1 process");
    // Training moved the loss: the comparison is not of constants.
    assert!(single_rows[4].1[0] < 0.9 * single_rows[0].1[0], "{single_rows:?}");

    // Two runs of the job: the same bits, in the log and in every saved tensor.
    let text = |d: &str| std::fs::read_to_string(Path::new(d).join("metrics.csv")).unwrap();
    let without_speed = |t: String| {
        t.lines()
            .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != 4).map(|(_, c)| c.to_string()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(without_speed(text(&job_a)), without_speed(text(&job_b)));
    for file in [
        "unet/diffusion_pytorch_model.safetensors",
        "training/weights.safetensors",
        "training/exp_avg.safetensors",
        "training/exp_avg_sq.safetensors",
    ] {
        let (a, b) = (Path::new(&job_a).join("checkpoint"), Path::new(&job_b).join("checkpoint"));
        assert!(bytes(a.join(file)) == bytes(b.join(file)), "{file} differs between two runs of the job");
    }

    // 3 steps as a 2-rank job, then 2 more in one process: the job's losses.
    run(mpirun(2, &classes(train_args(&config, &split, "3", "8", "1000")), "parity"));
    single(&["train", "--resume", &split, "--steps", "5", "--sample-every", "0", "--grid-samples", "4"]);
    assert_close(&metrics(Path::new(&split)), &metrics(Path::new(&job_a)), 1e-5, "resumed in 1 process vs the job");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The pid of the process whose environment has `DDPM_TEST_MARKER=marker`
/// and `OMPI_COMM_WORLD_RANK=rank`.
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    let wanted = [format!("DDPM_TEST_MARKER={marker}"), format!("OMPI_COMM_WORLD_RANK={rank}")];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let environ = std::fs::read(entry.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        wanted.iter().all(|w| vars.contains(&w.as_bytes())).then_some(pid)
    })
}

#[test]
fn a_killed_or_failing_rank_ends_the_job_at_once_naming_the_rank() {
    let dir = temp("kill");
    let out = dir.join("run");
    let marker = format!("kill-{}", std::process::id());
    let out_s = out.to_str().unwrap();
    let job = spawn(mpirun(2, &train_args(TINY_CONFIG, out_s, "100000", "8", "1"), &marker));
    let started = Instant::now();
    // Both ranks past their first exchange (a checkpoint is written after each step).
    while !out.join("checkpoint/training/state.json").is_file() {
        assert!(started.elapsed() < Duration::from_secs(120), "the job never saved a checkpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = rank_pid(&marker, 1).expect("rank 1's process");
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let (result, took) = finish(job, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "the job must fail when a rank dies");
    assert!(stderr.contains("rank 1"), "the error must name the dead rank: {stderr}");
    assert!(took < Duration::from_secs(15), "the job took {took:?} to end after its rank died");
    // The checkpoint on disk is a complete one.
    assert!(ddpm_wgpu::checkpoint::completed_step(&out.join("checkpoint")).is_some());

    // An error on the ranks (here all of them) ends the job with it, no hang.
    let bad_out = dir.join("bad");
    let bad = train_args(TINY_CONFIG, bad_out.to_str().unwrap(), "5", "7", "1000");
    let (result, _) = finish(spawn(mpirun(2, &bad, "bad")), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success() && stderr.contains("must divide by the 2 ranks"), "{stderr}");
    let (result, _) = finish(spawn(mpirun(2, &["sample", "--checkpoint", out_s], "sample")), Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success() && stderr.contains("runs in one process"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
