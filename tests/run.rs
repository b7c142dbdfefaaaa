//! The training loop's decisions, without the command line: every save
//! follows a readback, so a non-finite loss at step k stops the run before
//! any checkpoint of a later step and names the newest checkpoint
//! truthfully, for any checkpoint interval; an interruption between
//! checkpoints still logs and saves every step; a finished run saves, draws
//! and plots.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ddpm_wgpu::checkpoint;
use ddpm_wgpu::data::Dataset;
use ddpm_wgpu::sample::Guidance;
use ddpm_wgpu::schedule::SchedulerConfig;
use ddpm_wgpu::train::{
    batch_indices, run, Cadence, DataSpec, GridSettings, Observer, Outcome, Readout, RunSettings, TrainOptions, Trainer,
};
use ddpm_wgpu::unet::UNetConfig;

const SEED: u64 = 0;
const BATCH: usize = 2;
const IMAGES: usize = 8;

fn tiny_config() -> UNetConfig {
    UNetConfig::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_unet_28.json"))).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn settings(out: PathBuf, checkpoint_every: u64) -> RunSettings {
    RunSettings {
        out,
        cadence: Cadence { checkpoint_every, sample_every: 0, eval_every: 0 },
        grid: GridSettings { samples: 4, ddim_steps: 2, eta: 1.0, guidance: Guidance::DEFAULT },
        eval_samples: 0,
        checkpoints_total_limit: 0,
    }
}

fn spec() -> DataSpec {
    DataSpec { folder: None, resolution: 28, channels: 1, limit: Some(IMAGES) }
}

/// Eight digits; the images step `nan_step` (1-based, within the first
/// epoch) draws first are NaN, so that step's loss is the first non-finite one.
fn digits(nan_step: Option<u64>) -> Dataset {
    let real = Dataset::mnist(28, Some(IMAGES)).unwrap();
    let mut pixels = real.pixels().to_vec();
    if let Some(k) = nan_step {
        assert!((1..=(IMAGES / BATCH) as u64).contains(&k), "step {k} is not in the first epoch");
        for i in batch_indices(SEED, k - 1, BATCH, IMAGES) {
            pixels[i * 784..(i + 1) * 784].fill(f32::NAN);
        }
    }
    Dataset::from_pixels(1, 28, pixels, "test digits").unwrap()
}

fn options(steps: u64) -> TrainOptions {
    TrainOptions { batch_size: BATCH, steps, warmup: 0, seed: SEED, ..TrainOptions::default() }
}

/// Remembers what it is told; `stop_at` sets the interruption flag after that step.
struct Recorder<'a> {
    readouts: Vec<Readout>,
    stop_at: Option<(u64, &'a AtomicBool)>,
}

impl Observer for Recorder<'_> {
    fn step(&mut self, step: u64, readout: Option<&Readout>) {
        self.readouts.extend(readout.copied());
        if let Some((_, flag)) = self.stop_at.filter(|(at, _)| *at == step) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn note(&mut self, _: &str) {}
}

fn saved_step(out: &Path) -> Option<u64> {
    ddpm_wgpu::checkpoint::completed_step(&out.join("checkpoint"))
}

/// The steps metrics.csv has rows for.
fn metric_steps(out: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    text.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect()
}

#[test]
fn logs_are_read_before_every_save() {
    for checkpoint_every in [0, 1, 3, 7, 10, 25] {
        for sample_every in [0, 4, 10] {
            let cadence = Cadence { checkpoint_every, sample_every, eval_every: 6 };
            for step in 1..=30 {
                let due = cadence.due(step, 30, false);
                assert!(!(due.checkpoint || due.grid || due.eval) || due.read_logs, "{cadence:?} at step {step}");
                assert_eq!(due.checkpoint, step == 30 || (checkpoint_every > 0 && step % checkpoint_every == 0));
                assert_eq!(due.grid, step == 30 || (sample_every > 0 && step % sample_every == 0));
                assert_eq!(due.eval, step == 30 || step % 6 == 0);
                assert!(cadence.due(step, 30, true).read_logs, "full logs must be read");
            }
        }
    }
    // Nothing due between saves: the logs wait for their slots to fill.
    let quiet = Cadence { checkpoint_every: 0, sample_every: 0, eval_every: 0 };
    assert!(!quiet.due(5, 30, false).read_logs);
}

#[test]
fn a_non_finite_loss_stops_before_any_later_checkpoint() {
    let (_turn, gpu) = common::gpu();
    let config = tiny_config();
    for nan_step in [1, 3] {
        let data = digits(Some(nan_step));
        for checkpoint_every in [1, 2, 5] {
            let out = temp(&format!("nan{nan_step}-every{checkpoint_every}"));
            let settings = settings(out.clone(), checkpoint_every);
            let mut trainer = Trainer::new(&gpu, &config, SchedulerConfig::default(), options(8), [1, 28, 28]).unwrap();
            let mut observer = Recorder { readouts: Vec::new(), stop_at: None };
            let never = AtomicBool::new(false);
            let err = run(&mut trainer, &data, &spec(), &settings, &mut observer, &never).unwrap_err().to_string();
            let case = format!("NaN at step {nan_step}, checkpoint every {checkpoint_every}: {err}");
            assert!(err.contains(&format!("at step {nan_step}: training stopped")), "{case}");
            // The newest checkpoint is the last multiple of the interval before the NaN step.
            let good = (nan_step - 1) / checkpoint_every * checkpoint_every;
            if good == 0 {
                assert!(err.contains("No checkpoint was saved before it"), "{case}");
                assert_eq!(saved_step(&out), None, "{case}");
            } else {
                assert!(err.contains(&format!("last good checkpoint (step {good})")), "{case}");
                assert_eq!(saved_step(&out), Some(good), "{case}");
                let weights = trainer.unet.table.load(&out.join("checkpoint/training/weights.safetensors")).unwrap();
                assert!(weights.iter().all(|w| w.is_finite()), "{case}: the checkpoint holds non-finite weights");
            }
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
}

#[test]
fn an_interruption_logs_and_saves_every_step_then_the_run_resumes_to_the_end() {
    let (_turn, gpu) = common::gpu();
    let config = tiny_config();
    let data = digits(None);
    let out = temp("interrupt");
    // No checkpoint is due before the interruption at step 3.
    let settings = settings(out.clone(), 100);
    let mut trainer = Trainer::new(&gpu, &config, SchedulerConfig::default(), options(5), [1, 28, 28]).unwrap();
    let flag = AtomicBool::new(false);
    let mut observer = Recorder { readouts: Vec::new(), stop_at: Some((3, &flag)) };
    let outcome = run(&mut trainer, &data, &spec(), &settings, &mut observer, &flag).unwrap();
    assert_eq!((outcome, trainer.step), (Outcome::Interrupted, 3));
    assert_eq!(saved_step(&out), Some(3));
    assert_eq!(metric_steps(&out), [1, 2, 3]);
    assert!(out.join("loss.png").is_file());
    assert_eq!(observer.readouts.last().map(|r| (r.step, r.total)), Some((3, 5)));

    let (mut resumed, _) = Trainer::resume(&gpu, &settings.checkpoint_dir(), None, [1, 28, 28]).unwrap();
    let never = AtomicBool::new(false);
    let mut observer = Recorder { readouts: Vec::new(), stop_at: None };
    let outcome = run(&mut resumed, &data, &spec(), &settings, &mut observer, &never).unwrap();
    assert_eq!((outcome, resumed.step), (Outcome::Finished, 5));
    assert_eq!(saved_step(&out), Some(5));
    assert_eq!(metric_steps(&out), [1, 2, 3, 4, 5]);
    assert!(out.join("samples/step_000005.png").is_file());
    assert!(observer.readouts.iter().all(|r| r.smoothed_loss.is_finite() && r.images_per_second > 0.0));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_run_folder_takes_one_run_at_a_time() {
    let out = temp("lock");
    std::fs::create_dir_all(&out).unwrap();
    let settings = settings(out.clone(), 1);
    let held = settings.lock().unwrap();
    let err = settings.lock().unwrap_err().to_string();
    assert!(err.contains(&format!("(pid {})", std::process::id())) && err.contains("is writing to"), "{err}");
    drop(held);
    drop(settings.lock().expect("the lock is free once its holder is gone"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_save_cut_short_at_any_step_leaves_a_checkpoint_that_loads_and_resumes() {
    use ddpm_wgpu::checkpoint::{self, SaveStep};
    use ddpm_wgpu::sample::Model;
    let (_turn, gpu) = common::gpu();
    let data = digits(None);
    let out = temp("crash");
    let dir = out.join("checkpoint");
    let mut trainer =
        Trainer::new(&gpu, &tiny_config(), SchedulerConfig::default(), options(100), [1, 28, 28]).unwrap();
    trainer.train_step(&data).unwrap();
    trainer.save_checkpoint(&dir, &spec()).unwrap();
    let steps = [
        SaveStep::Recover,
        SaveStep::ClearNew,
        SaveStep::Write,
        SaveStep::ClearOld,
        SaveStep::Demote,
        SaveStep::Promote,
        SaveStep::ClearDemoted,
    ];
    // Every crash point once, then each again on top of the state the first
    // crash at the riskiest point (between the renames) left behind.
    let plan = steps.iter().map(|&s| (SaveStep::Demote, s)).chain(steps.iter().map(|&s| (s, s)));
    for (first, second) in plan {
        for crash in [first, second] {
            let before = checkpoint::completed_step(&checkpoint::newest(&dir).unwrap()).unwrap();
            trainer.train_step(&data).unwrap();
            let mut at = |step: SaveStep| if step == crash { anyhow::bail!("crash at {step:?}") } else { Ok(()) };
            assert!(trainer.save_checkpoint_with(&dir, &spec(), &mut at).is_err());
            if crash == SaveStep::Write {
                // A kill in the middle of writing leaves a partial folder.
                std::fs::create_dir_all(checkpoint::sibling(&dir, "new").join("unet")).unwrap();
            }
            let case = format!("crash at {crash:?} (after {first:?})");
            let newest = checkpoint::newest(&dir).unwrap_or_else(|| panic!("{case}: no complete checkpoint left"));
            let step = checkpoint::completed_step(&newest).unwrap();
            assert!(step == before || step == trainer.step, "{case}: newest is step {step}");
            let (resumed, _) = Trainer::resume(&gpu, &dir, None, [1, 28, 28]).unwrap();
            assert_eq!(resumed.step, step, "{case}");
            Model::load(&gpu, &dir).unwrap_or_else(|e| panic!("{case}: sampling cannot load it: {e:#}"));
        }
        // The resumed run saves cleanly over whatever was left.
        let (resumed, _) = Trainer::resume(&gpu, &dir, None, [1, 28, 28]).unwrap();
        trainer = resumed;
        trainer.save_checkpoint(&dir, &spec()).unwrap();
        assert!(!checkpoint::sibling(&dir, "new").exists() && !checkpoint::sibling(&dir, "old").exists());
        assert_eq!(checkpoint::completed_step(&dir), Some(trainer.step));
    }
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_newest_checkpoints_are_kept_up_to_the_total_limit() {
    let (_turn, gpu) = common::gpu();
    let data = digits(None);
    let out = temp("kept");
    let settings = RunSettings { checkpoints_total_limit: 2, ..settings(out.clone(), 2) };
    let mut trainer = Trainer::new(&gpu, &tiny_config(), SchedulerConfig::default(), options(5), [1, 28, 28]).unwrap();
    let never = AtomicBool::new(false);
    let mut observer = Recorder { readouts: Vec::new(), stop_at: None };
    run(&mut trainer, &data, &spec(), &settings, &mut observer, &never).unwrap();
    // Saved at steps 2, 4 and 5 (the end): the two newest are kept.
    let kept = settings.kept_checkpoints_dir();
    let mut names: Vec<String> =
        std::fs::read_dir(&kept).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["step_0000004", "step_0000005"]);
    for (name, step) in [("step_0000004", 4), ("step_0000005", 5)] {
        assert_eq!(checkpoint::completed_step(&kept.join(name)), Some(step));
        // Each is a whole checkpoint: it resumes at its step.
        let (resumed, _) = Trainer::resume(&gpu, &kept.join(name), None, [1, 28, 28]).unwrap();
        assert_eq!(resumed.step, step);
    }
    // The older copy kept its own weights when checkpoint/ was replaced.
    let table = &trainer.unet.table;
    let read = |dir: &Path| table.load(&dir.join("training/weights.safetensors")).unwrap();
    assert!(read(&kept.join("step_0000004")) != read(&settings.checkpoint_dir()));
    assert!(read(&kept.join("step_0000005")) == read(&settings.checkpoint_dir()));
    std::fs::remove_dir_all(&out).unwrap();
}
