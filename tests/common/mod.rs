//! Shared by the GPU tests: one device per kernel path, used by one test at
//! a time (two CPU cores running lavapipe do not gain from parallel tests),
//! fresh random inputs, and a tolerance check that names what failed.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard, OnceLock};

use ddpm_wgpu::{Gpu, GpuOptions};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// The kernel paths an adapter can take; tests run each that this adapter has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Path {
    /// Subgroup kernels as the adapter runs them.
    Subgroups,
    /// Subgroup kernels using shuffles, as on adapters wider than 8 lanes.
    SubgroupShuffle,
    /// No subgroup operations (GL, WebGPU without subgroups, small subgroups).
    Portable,
    /// The portable path with the tiles SwiftShader's compiler needs
    /// (Chrome's software WebGPU).
    FewLoads,
}

fn open(path: Path) -> &'static Mutex<Gpu> {
    static GPUS: [OnceLock<Mutex<Gpu>>; 4] = [OnceLock::new(), OnceLock::new(), OnceLock::new(), OnceLock::new()];
    GPUS[path as usize].get_or_init(|| {
        let options = GpuOptions {
            no_subgroups: matches!(path, Path::Portable | Path::FewLoads),
            few_loads: path == Path::FewLoads,
            force_subgroup_shuffle: path == Path::SubgroupShuffle,
            poison_uninit: true,
            ..GpuOptions::default()
        };
        // A missing adapter fails the test: CI always has lavapipe.
        let gpu = Gpu::new(&options).unwrap_or_else(|e| panic!("no GPU adapter for tests: {e:#}"));
        // Straight to stderr (not the captured eprintln!) so every run shows the adapter.
        use std::io::Write;
        let _ =
            writeln!(std::io::stderr(), "[{path:?}] running on {} (subgroups: {})", gpu.info(), gpu.info().subgroups);
        Mutex::new(gpu)
    })
}

/// Serialises GPU tests across threads of one test binary.
static TURN: Mutex<()> = Mutex::new(());

/// Run `f` on every kernel path this adapter supports.
pub fn each_path(mut f: impl FnMut(&Gpu, Path)) {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let default = gpu_on(Path::Portable);
    let has_subgroups = {
        let sg = gpu_on(Path::Subgroups);
        sg.info().subgroups
    };
    drop(default);
    let paths: &[Path] = if has_subgroups {
        &[Path::Subgroups, Path::SubgroupShuffle, Path::Portable, Path::FewLoads]
    } else {
        &[Path::Portable, Path::FewLoads]
    };
    for &path in paths {
        let gpu = gpu_on(path);
        f(&gpu, path);
    }
}

fn gpu_on(path: Path) -> MutexGuard<'static, Gpu> {
    open(path).lock().unwrap_or_else(|e| e.into_inner())
}

/// The default device (subgroups where the adapter has them), for tests of
/// one path only.
pub fn gpu() -> (MutexGuard<'static, ()>, MutexGuard<'static, Gpu>) {
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    (turn, gpu_on(Path::Subgroups))
}

/// A fresh seed each run (printed, and fixed by `TEST_SEED` to reproduce).
pub fn rng() -> StdRng {
    let seed =
        std::env::var("TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("TEST_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-1, 1).
pub fn uniform(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Pass when `|got - want| <= atol + rtol * |want|` everywhere; NaN never
/// passes. On failure, name the case, the worst index and how many failed.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let mut failed = 0;
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w as f64).abs();
        let ok = err <= atol + rtol * (w as f64).abs();
        if !ok || g.is_nan() {
            failed += 1;
        }
        let score = if g.is_nan() { f64::INFINITY } else { err };
        if worst.is_none_or(|(_, e)| score > e) {
            worst = Some((i, score));
        }
    }
    if failed > 0 {
        let (i, err) = worst.unwrap();
        panic!(
            "{what}: {failed} of {} elements out of tolerance (atol {atol:e}, rtol {rtol:e}); worst at {i}: got {} want {} (err {err:e})",
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// Check the tape's gradients of a scalar loss against central finite
/// differences of the GPU forward pass: for each parameter, `probes`
/// coordinates (all if fewer) are nudged by ±h. The loss is built by
/// `build` from the parameter vars in order.
pub fn check_gradients(
    gpu: &Gpu,
    what: &str,
    params: &[(&[usize], Vec<f32>)],
    probes: usize,
    h: f32,
    tolerance: (f64, f64),
    build: impl Fn(&mut ddpm_wgpu::tape::Tape, &[ddpm_wgpu::tape::Var]) -> anyhow::Result<ddpm_wgpu::tape::Var>,
) {
    use ddpm_wgpu::tape::Tape;
    let loss_at = |values: &[Vec<f32>]| -> f64 {
        let mut tape = Tape::new(gpu);
        let vars: Vec<_> =
            params.iter().zip(values).map(|((shape, _), v)| tape.input(gpu.upload(shape, v).unwrap())).collect();
        let loss = build(&mut tape, &vars).unwrap();
        gpu.read(&loss.value).unwrap()[0] as f64
    };
    let mut tape = Tape::new(gpu);
    let vars: Vec<_> = params.iter().map(|(shape, v)| tape.param(gpu.upload(shape, v).unwrap())).collect();
    let loss = build(&mut tape, &vars).unwrap();
    let grads = tape.backward(&loss).unwrap();
    let mut values: Vec<Vec<f32>> = params.iter().map(|(_, v)| v.clone()).collect();
    let mut r = StdRng::seed_from_u64(7);
    for (p, var) in vars.iter().enumerate() {
        let analytic =
            gpu.read(grads.get(var).unwrap_or_else(|| panic!("{what}: no gradient for parameter {p}"))).unwrap();
        let n = values[p].len();
        let coords: Vec<usize> =
            if n <= probes { (0..n).collect() } else { (0..probes).map(|_| r.random_range(0..n)).collect() };
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for &i in &coords {
            let original = values[p][i];
            values[p][i] = original + h;
            let up = loss_at(&values);
            values[p][i] = original - h;
            let down = loss_at(&values);
            values[p][i] = original;
            got.push(analytic[i]);
            want.push(((up - down) / (2.0 * h as f64)) as f32);
        }
        assert_close(&format!("{what}: d loss / d param {p} {:?}", params[p].0), &got, &want, tolerance.0, tolerance.1);
    }
}
