//! The `ddpm` command end to end on the real binary: train a tiny model,
//! checkpoint, resume (continuing exactly as an uninterrupted run), sample a
//! grid and read it back; and bad input gives a one-line error, not a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ddpm(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ddpm")).args(args).output().expect("running ddpm");
    eprintln!("ddpm {}\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    out
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config() -> String {
    format!("{}/tests/fixtures/tiny_unet_28.json", env!("CARGO_MANIFEST_DIR"))
}

/// A tiny run: `config` None is the default recipe's model.
fn train_args<'a>(out: &'a str, config: Option<&'a str>, steps: &'a str) -> Vec<&'a str> {
    let mut args = vec!["train"];
    if let Some(config) = config {
        args.extend(["--config", config]);
    }
    args.extend([
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--limit",
        "32",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "100",
        "--grid-samples",
        "4",
        "--grid-ddim-steps",
        "2",
        "--warmup",
        "2",
    ]);
    args
}

/// (step, loss) rows of a run's metrics.csv.
fn losses(dir: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            (f.next().unwrap().parse().unwrap(), f.next().unwrap().to_string())
        })
        .collect()
}

/// metrics.csv's rows, checked: 19 columns under the header; the loss per
/// timestep decile empty (no sample there) or a positive number, at least
/// one per step, and the step's loss (their count-weighted mean) between
/// the smallest and largest of them; no evaluation cells yet. Returns the
/// rows without the images/s column (which depends on the machine's speed).
fn checked_metrics(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), ddpm_wgpu::train::METRICS_HEADER);
    lines
        .map(|line| {
            let mut cells: Vec<String> = line.split(',').map(str::to_string).collect();
            assert_eq!(cells.len(), 19, "{line}");
            let loss: f64 = cells[1].parse().unwrap();
            let deciles: Vec<f64> = cells[5..15].iter().filter(|c| !c.is_empty()).map(|c| c.parse().unwrap()).collect();
            assert!(!deciles.is_empty() && deciles.iter().all(|v| v.is_finite() && *v > 0.0), "{line}");
            let (lo, hi) = deciles.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(lo * (1.0 - 1e-5) <= loss && loss <= hi * (1.0 + 1e-5), "{line}: loss outside its deciles");
            assert!(cells[15..].iter().all(|c| c.is_empty()), "{line}");
            cells.remove(4);
            cells
        })
        .collect()
}

#[test]
fn train_resume_and_sample() {
    // The default recipe (model, x_0 prediction, cosine schedule), at a tiny
    // scale, with two micro-batches per step and a decaying learning rate.
    let extra = ["--grad-accum", "2", "--lr-schedule", "cosine", "--adam-beta1", "0.95", "--weight-decay", "1e-6"];
    let whole = temp("whole");
    let whole_s = whole.to_str().unwrap();
    assert!(ddpm(&[train_args(whole_s, None, "5"), extra.to_vec()].concat()).status.success());

    let split = temp("split");
    let split_s = split.to_str().unwrap();
    assert!(ddpm(&[train_args(split_s, None, "3"), extra.to_vec()].concat()).status.success());
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("checkpoint/training/state.json")).unwrap()).unwrap();
    let o = &state["options"];
    assert_eq!((o["grad_accum"].as_u64(), o["lr_schedule"].as_str()), (Some(2), Some("cosine")), "{o}");
    assert_eq!((o["adam_beta1"].as_f64(), o["weight_decay"].as_f64()), (Some(0.95), Some(1e-6)));
    let scheduler = std::fs::read_to_string(split.join("checkpoint/scheduler/scheduler_config.json")).unwrap();
    assert!(scheduler.contains("\"prediction_type\": \"sample\""), "{scheduler}");
    assert!(scheduler.contains("\"beta_schedule\": \"squaredcos_cap_v2\""), "{scheduler}");
    assert!(split.join("checkpoint/unet/diffusion_pytorch_model.safetensors").is_file());
    assert!(split.join("checkpoint/scheduler/scheduler_config.json").is_file());
    // Conditioned on the digits' 10 classes plus "no class", a tenth of the labels dropped.
    let unet: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("checkpoint/unet/config.json")).unwrap()).unwrap();
    let classes = (unet["num_class_embeds"].as_u64(), unet["_null_class"].as_u64(), o["class_dropout"].as_f64());
    assert_eq!(classes, (Some(11), Some(10), Some(0.1)), "{unet}");
    // `latest`: the run in --out.
    let resumed = ddpm(&[
        "train",
        "--resume",
        "latest",
        "--out",
        split_s,
        "--steps",
        "5",
        "--sample-every",
        "0",
        "--grid-samples",
        "4",
        "--grid-ddim-steps",
        "2",
    ]);
    assert!(resumed.status.success());
    // Same seed, same adapter: the resumed run's losses are the uninterrupted run's.
    assert_eq!(losses(&whole), losses(&split), "resumed run diverged from the uninterrupted one");
    assert_eq!(losses(&whole).len(), 5);
    // Per-decile losses too: everything but the speed.
    assert_eq!(checked_metrics(&whole), checked_metrics(&split), "resumed run's metrics differ");
    assert!(split.join("loss.png").is_file() && split.join("samples/step_000005.png").is_file());

    let grid = split.join("grid.png");
    let strip = split.join("strip.png");
    let out = ddpm(&[
        "sample",
        "--checkpoint",
        split.join("checkpoint").to_str().unwrap(),
        "--num",
        "3",
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "--out",
        grid.to_str().unwrap(),
        "--strip",
        strip.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let img = image::open(&grid).unwrap().to_rgb8();
    // 3 samples in a 2x2 grid of 32-pixel tiles with 2-pixel borders, all upscaled x4.
    assert_eq!((img.width(), img.height()), (4 * (2 * 34 + 2), 4 * (2 * 34 + 2)));
    assert!(img.pixels().any(|p| p.0[0] > 0 && p.0[0] < 255), "the samples must not be blank");
    // The reverse process of sample 0: one row of tiles, upscaled x4 too.
    let strip = image::open(&strip).unwrap().to_rgb8();
    assert_eq!(strip.height(), 4 * 36, "one row of upscaled tiles");
    assert_eq!(strip.width() % (4 * 34), 4 * 2, "whole upscaled tiles");
    let loss = image::open(split.join("loss.png")).unwrap().to_rgb8();
    assert_eq!((loss.width(), loss.height()), (900, 640), "loss.png: loss and decile panels");
    let checkpoint = split.join("checkpoint");
    let one_class = ["sample", "--checkpoint", checkpoint.to_str().unwrap(), "--num", "2", "--sampler", "ddim"];
    let one_class = [&one_class[..], &["--steps", "2", "--out", grid.to_str().unwrap(), "--guidance", "3"]].concat();
    assert!(ddpm(&[&one_class[..], &["--class", "7"]].concat()).status.success());
    fails_with(&[&one_class[..], &["--class", "10"]].concat(), "class 10: this model has classes 0 to 9");
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&split).unwrap();
}

/// `--num` above `--batch-size` samples in chunks: the same grid as one
/// batch, with progress over every chunk's steps.
#[test]
fn sample_in_chunks_gives_the_one_batch_grid() {
    let dir = temp("chunks");
    std::fs::create_dir_all(&dir).unwrap();
    let checkpoint = format!("{}/tests/fixtures/tiny_unet", env!("CARGO_MANIFEST_DIR"));
    let run = |batch: &str| {
        let out = dir.join(format!("grid_{batch}.png"));
        let args = [
            "sample",
            "--checkpoint",
            &checkpoint,
            "--num",
            "5",
            "--batch-size",
            batch,
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--eta",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        let result = ddpm(&args);
        assert!(result.status.success(), "ddpm {args:?}");
        (image::open(&out).unwrap().to_rgb8(), String::from_utf8_lossy(&result.stderr).to_string())
    };
    let (chunked, log) = run("2");
    // Chunks of 2, 2, 1: three chunks of 3 steps.
    assert!(log.contains("step 9/9"), "{log}");
    let (whole, _) = run("5");
    // 5 samples in a 3x2 grid of 8-pixel tiles with 2-pixel borders, drawn at grid_scale(8) = 16x.
    let s = ddpm_wgpu::data::grid_scale(8) as u32;
    assert_eq!((chunked.width(), chunked.height()), ((3 * 10 + 2) * s, (2 * 10 + 2) * s));
    assert!(chunked == whole, "chunks of 2 and one batch of 5 gave different grids");
    assert!(chunked.pixels().any(|p| p.0[0] > 0 && p.0[0] < 255), "the samples must not be blank");
    let out = dir.join("guided.png");
    let guided = ["sample", "--checkpoint", &checkpoint, "--num", "1", "--out", out.to_str().unwrap()];
    fails_with(&[&guided[..], &["--guidance", "2"]].concat(), "--guidance and --class need a class-conditional model");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failed command: non-zero exit, one `error:` line naming the cause, no panic.
fn fails_with(args: &[&str], expected: &str) {
    let out = ddpm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ddpm {args:?} should fail");
    assert!(stderr.contains("error:") && stderr.contains(expected), "ddpm {args:?}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "ddpm {args:?} panicked: {stderr}");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = temp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    fails_with(&["train", "--data", &format!("{d}/missing"), "--out", &format!("{d}/o1")], "does not exist");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    fails_with(&["train", "--data", &format!("{d}/empty"), "--out", &format!("{d}/o2")], "no image files");
    let bad_config = dir.join("bad.json");
    std::fs::write(&bad_config, r#"{"block_out_channels": [24, 48], "norm_num_groups": 32, "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}"#).unwrap();
    fails_with(&["train", "--config", bad_config.to_str().unwrap(), "--out", &format!("{d}/o3")], "norm_num_groups");
    // An output path under a regular file cannot be created.
    std::fs::write(dir.join("file"), b"x").unwrap();
    fails_with(&["train", "--out", &format!("{d}/file/sub")], "output folder");
    fails_with(&["sample", "--checkpoint", &format!("{d}/nothing")], "does not exist");
    fails_with(
        &["sample", "--checkpoint", &format!("{d}/nothing"), "--batch-size", "0"],
        "--batch-size must be at least 1",
    );
    fails_with(&["--adapter", "no-such-adapter-anywhere", "devices"], "no adapter whose name contains");
    fails_with(&["--backend", "vulcan", "devices"], "unknown backend 'vulcan'");
    // A truncated weights file.
    let ckpt = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::copy(config(), ckpt.join("config.json")).unwrap();
    std::fs::write(ckpt.join("diffusion_pytorch_model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
        .unwrap();
    fails_with(&["sample", "--checkpoint", ckpt.to_str().unwrap(), "--num", "1"], "truncated or corrupt");
    fails_with(&["train", "--resume", &format!("{d}/nothing")], "no resumable checkpoint");
    fails_with(
        &["train", "--resume", &format!("{d}/nothing"), "--lr", "1e-3", "--preset", "paper"],
        "--preset, --lr cannot change on --resume",
    );
    fails_with(&["train", "--preset", "fast", "--out", &format!("{d}/o4")], "invalid value 'fast'");
    fails_with(&["train", "--grad-accum", "0", "--out", &format!("{d}/o5")], "--grad-accum must be at least 1");
    fails_with(&["train", "--adam-beta2", "1", "--out", &format!("{d}/o6")], "--adam-beta2 must be in [0, 1)");
    fails_with(&["train", "--weight-decay=-1", "--out", &format!("{d}/o7")], "--weight-decay must be 0");
    fails_with(&["train", "--resume", "latest", "--out", &format!("{d}/o8")], "no resumable checkpoint");
    // A learning rate that blows the weights up at once: training stops at the
    // first non-finite loss (step 2), before the checkpoint due at step 5,
    // and says that no checkpoint was saved.
    let config = config();
    let blown = format!("{d}/blown");
    let flags =
        "--steps 40 --batch-size 4 --limit 32 --lr 1e30 --warmup 0 --grad-clip 0 --checkpoint-every 5 --sample-every 0";
    let args: Vec<&str> =
        ["train", "--config", &config, "--out", &blown].into_iter().chain(flags.split_whitespace()).collect();
    fails_with(&args, "at step 2: training stopped (lower --lr or check the data). No checkpoint was saved before it");
    assert!(!Path::new(&format!("{blown}/checkpoint")).exists(), "a diverged run saved a checkpoint");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Metrics JSON written by `ddpm eval --json`.
fn eval_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn eval_scores_a_folder_of_real_digits_near_the_floor() {
    let dir = temp("eval-folder");
    std::fs::create_dir_all(&dir).unwrap();
    // 100 real digits (the classifier's held-out tiles, 10 of each), padded to 32x32 as `train` does.
    let data = ddpm_wgpu::data::Dataset::mnist(32, Some(100)).unwrap();
    for i in 0..data.len() {
        ddpm_wgpu::data::save_image(&dir.join(format!("{i:03}.png")), data.sample(i), 1, 32).unwrap();
    }
    let json = dir.join("metrics.json");
    let out = ddpm(&["eval", "--samples", dir.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("Fréchet distance") && table.contains("100 images"), "{table}");
    let m = eval_json(&json);
    let (frechet, floor) = (m["frechet"].as_f64().unwrap(), m["frechet_floor"].as_f64().unwrap());
    assert!(frechet < 3.0 * floor, "real digits: frechet {frechet}, floor {floor}");
    assert!(m["confident_fraction"].as_f64().unwrap() > 0.9, "{m}");
    assert!(m["class_kl"].as_f64().unwrap() < 0.05, "{m}");
    let histogram: Vec<u64> = m["class_histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(histogram.iter().sum::<u64>(), 100);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_samples_a_checkpoint() {
    let config = config();
    let run = temp("eval-run");
    let run_s = run.to_str().unwrap();
    assert!(ddpm(&train_args(run_s, Some(&config), "2")).status.success());
    let json = run.join("eval.json");
    let checkpoint = run.join("checkpoint");
    let out = ddpm(&[
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--num",
        "64",
        "--steps",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let m = eval_json(&json);
    // Two training steps make noise, not digits (at N = 64 the floor itself is still large).
    let (frechet, floor) = (m["frechet"].as_f64().unwrap(), m["frechet_floor"].as_f64().unwrap());
    assert!(frechet.is_finite() && frechet > floor, "untrained model: frechet {frechet}, floor {floor}");
    assert!(m["confident_fraction"].as_f64().unwrap() < 0.5, "untrained model: {m}");
    assert_eq!(m["samples"].as_u64(), Some(64));

    // `sample --individual` writes what `eval --samples` reads.
    let folder = run.join("individual");
    let grid = run.join("grid.png");
    let out = ddpm(&[
        "sample",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--individual",
        folder.to_str().unwrap(),
        "--num",
        "4",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = ddpm(&["eval", "--samples", folder.to_str().unwrap()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("4 images"));
    std::fs::remove_dir_all(&run).unwrap();
}

#[test]
fn eval_rejects_bad_input() {
    let empty = temp("eval-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = ddpm(&["eval", "--samples", empty.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no PNG files"));
    let big = temp("eval-big");
    std::fs::create_dir_all(&big).unwrap();
    image::GrayImage::new(64, 64).save(big.join("a.png")).unwrap();
    let out = ddpm(&["eval", "--samples", big.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("must all be 28x28 or all 32x32"));
    let out = ddpm(&["eval"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--checkpoint"));
    let out = ddpm(&["eval", "--samples", empty.to_str().unwrap(), "--batch-size", "0"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--batch-size must be at least 1"));
    fails_with(&["eval", "--samples", empty.to_str().unwrap(), "--guidance", "2"], "--guidance samples --checkpoint");
    // A colour sample among grey ones is an error, not a silent conversion.
    let mixed = temp("eval-mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    image::GrayImage::new(28, 28).save(mixed.join("a.png")).unwrap();
    image::RgbImage::from_pixel(28, 28, image::Rgb([200, 0, 0])).save(mixed.join("b.png")).unwrap();
    let out = ddpm(&["eval", "--samples", mixed.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("b.png is in colour"));
    for dir in [empty, big, mixed] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn eval_every_logs_sample_quality_and_eval_nll_reports_bits_per_dim() {
    let config = config();
    let run = temp("eval-every");
    let run_s = run.to_str().unwrap();
    let mut args = train_args(run_s, Some(&config), "4");
    args.extend(["--eval-every", "2", "--eval-samples", "4"]);
    let out = ddpm(&args);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("step 2: Fréchet"));
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let evaluated = cells[0] == "2" || cells[0] == "4";
        for name in ["frechet", "frechet_floor", "confident_fraction", "class_kl"] {
            let cell = cells[col(name)];
            if evaluated {
                let v: f64 = cell.parse().unwrap_or_else(|_| panic!("step {}: {name} = '{cell}'", cells[0]));
                assert!(v.is_finite() && v >= 0.0, "step {}: {name} = {v}", cells[0]);
            } else {
                assert!(cell.is_empty(), "step {}: {name} = '{cell}'", cells[0]);
            }
        }
    }
    assert!(run.join("loss.png").is_file());

    let json = run.join("nll.json");
    let checkpoint = run.join("checkpoint");
    let out = ddpm(&[
        "eval",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--num",
        "4",
        "--steps",
        "2",
        "--nll",
        "--nll-num",
        "3",
        "--nll-timesteps",
        "3",
        "--batch-size",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("strided estimate over 4 timesteps"));
    let bpd = eval_json(&json)["bits_per_dim"].as_f64().unwrap();
    // An untrained model is far from the ~1-2 bits/dim of a trained one, and the bound is positive.
    assert!(bpd.is_finite() && bpd > 1.0, "bits/dim {bpd}");

    let out = ddpm(&["eval", "--samples", run.join("samples").to_str().unwrap(), "--nll"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--nll needs --checkpoint"));
    let mut args = train_args(run_s, Some(&config), "4");
    args.extend(["--eval-every", "2", "--eval-samples", "20"]);
    let out = ddpm(&args);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--eval-samples 20"));
    std::fs::remove_dir_all(&run).unwrap();
}

/// A tiny config's checkpoint folder (config, weights, scheduler), with
/// `edit` applied to the weights, config JSON and scheduler JSON.
fn checkpoint_with(dir: &Path, edit: impl FnOnce(&mut Vec<f32>, &mut String, &mut String)) {
    use ddpm_wgpu::unet::{UNet, UNetConfig};
    std::fs::create_dir_all(dir).unwrap();
    let config = UNetConfig::load(Path::new(&config())).unwrap();
    let unet = UNet::new(&config).unwrap();
    let mut weights = unet.table.init(0, ddpm_wgpu::unet::layout::InitScheme::Ddpm);
    let mut config_json = config.to_json();
    let mut scheduler = ddpm_wgpu::schedule::SchedulerConfig::default().to_json();
    edit(&mut weights, &mut config_json, &mut scheduler);
    let safetensors = unet.table.to_safetensors(&weights, None).unwrap();
    std::fs::write(dir.join("diffusion_pytorch_model.safetensors"), safetensors).unwrap();
    std::fs::write(dir.join("config.json"), config_json).unwrap();
    std::fs::write(dir.join("scheduler_config.json"), scheduler).unwrap();
}

#[test]
fn hostile_input_is_refused_before_any_work() {
    let dir = temp("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let out = |name: &str| format!("{d}/{name}");
    fails_with(&["train", "--limit", "0", "--out", &out("o1")], "--limit must be at least 1");
    fails_with(&["train", "--channels", "5", "--out", &out("o2")], "the MNIST digits are grey, but this run has 5");
    fails_with(&["train", "--channels", "0", "--out", &out("o3")], "in_channels and out_channels must be at least 1");
    fails_with(&["train", "--resolution", "0", "--out", &out("o4")], "--resolution must be between 1 and");
    fails_with(&["train", "--lr", "NaN", "--steps", "1", "--out", &out("o5")], "--lr must be a positive number");
    fails_with(&["train", "--lr=-1", "--steps", "1", "--out", &out("o6")], "--lr must be a positive number");
    fails_with(&["train", "--grid-ddim-steps", "0", "--out", &out("o7")], "--grid-samples and --grid-ddim-steps");
    fails_with(&["train", "--grid-eta=-1", "--out", &out("o8")], "--grid-eta must be");
    fails_with(&["train", "--resume", &out("o1"), "--out", &out("o9")], "--out (the run stays in its folder)");
    // Checkpoints people download: non-finite weights, a bad config, an absurd schedule.
    let ckpt = |name: &str| format!("{d}/ckpt-{name}");
    checkpoint_with(Path::new(&ckpt("nan")), |w, _, _| {
        let middle = w.len() / 2;
        w[middle] = f32::NAN;
    });
    fails_with(&["sample", "--checkpoint", &ckpt("nan"), "--num", "1", "--out", &out("s.png")], "holds NaN");
    let set = |json: &mut String, key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v[key] = value;
        *json = v.to_string();
    };
    checkpoint_with(Path::new(&ckpt("eps")), |_, c, _| set(c, "norm_eps", (-1.0).into()));
    fails_with(&["sample", "--checkpoint", &ckpt("eps"), "--out", &out("s.png")], "norm_eps must be a positive");
    checkpoint_with(Path::new(&ckpt("long")), |_, _, s| set(s, "num_train_timesteps", 100_000_000.into()));
    fails_with(
        &["sample", "--checkpoint", &ckpt("long"), "--out", &out("s.png")],
        "num_train_timesteps must be between 2 and 100000, got 100000000",
    );
    // Options and output paths are checked before sampling.
    fails_with(&["sample", "--checkpoint", &ckpt("nan"), "--eta", "inf"], "--eta must be a finite number");
    fails_with(&["sample", "--checkpoint", &ckpt("nan"), "--out", d], "is a folder");
    std::fs::write(dir.join("file"), b"x").unwrap();
    fails_with(&["sample", "--checkpoint", &ckpt("nan"), "--individual", &out("file")], "cannot create output folder");
    assert!(!dir.join("s.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_data_walk_skips_fifos_and_folder_links_and_a_second_run_is_refused() {
    let dir = temp("walk");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * y) % 256) as u8]))
        .save(data.join("sub/a.png"))
        .unwrap();
    // A FIFO named like an image, and folder links that would loop.
    assert!(Command::new("mkfifo").arg(data.join("pipe.png")).status().unwrap().success());
    std::os::unix::fs::symlink(".", data.join("self")).unwrap();
    std::os::unix::fs::symlink("..", data.join("sub/up")).unwrap();
    let run = dir.join("run");
    let (data_s, run_s, config) = (data.to_str().unwrap(), run.to_str().unwrap(), config());
    let args = |steps: &'static str| {
        let mut a = vec!["train", "--config", &config, "--data", data_s, "--channels", "1", "--resolution", "28"];
        a.extend(["--batch-size", "1", "--steps", steps, "--sample-every", "0", "--grid-samples", "1"]);
        a.extend(["--grid-ddim-steps", "1", "--out", run_s]);
        a
    };
    let first = ddpm(&args("1"));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(stderr.contains("data: 1 images"), "the walk found other than the one image: {stderr}");
    assert!(stderr.contains("pipe.png: not a regular file") && stderr.contains("not following the folder link"));
    // While one run holds the folder, a second is refused with its pid.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args("100000").iter().map(|a| {
            if *a == run_s {
                dir.join("long").to_str().unwrap().to_string()
            } else {
                a.to_string()
            }
        }))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.join("long/.lock");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |pid| pid.trim() != holder.id().to_string()) {
        assert!(started.elapsed().as_secs() < 60, "the first run never took its lock");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let long = dir.join("long");
    let second: Vec<&str> =
        args("1").into_iter().map(|a| if a == run_s { long.to_str().unwrap() } else { a }).collect();
    fails_with(&second, &format!("another `ddpm train` (pid {}) is writing to", holder.id()));
    holder.kill().unwrap();
    holder.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tiny training run into `out` in the background (stderr captured when `capture`).
fn spawn_train(config: &str, steps: &str, extra: &[&str], out: &Path, capture: bool) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(["train", "--config", config, "--limit", "8", "--batch-size", "1", "--steps", steps])
        .args(extra)
        .args(["--out", out.to_str().unwrap()])
        .stderr(if capture { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .spawn()
        .unwrap()
}

/// Poll `ready` for up to two minutes.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !ready() {
        assert!(started.elapsed().as_secs() < 120, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn signal(child: &std::process::Child, which: &str) {
    assert!(Command::new("kill").args([which, &child.id().to_string()]).status().unwrap().success());
}

#[test]
fn sigterm_saves_every_step_and_a_config_beyond_the_adapter_is_refused_before_allocating() {
    let dir = temp("term");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("run");
    let config = config();
    let run = spawn_train(&config, "100000", &["--checkpoint-every", "1000000", "--sample-every", "0"], &out, true);
    // Past the first readback (10 steps), then SIGTERM, as `docker stop` sends.
    wait_for("a logged step", || {
        std::fs::read_to_string(out.join("metrics.csv")).is_ok_and(|t| t.lines().count() >= 2)
    });
    signal(&run, "-TERM");
    let result = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success() && stderr.contains("interrupted at step"), "{stderr}");
    let step = ddpm_wgpu::checkpoint::completed_step(&out.join("checkpoint")).expect("a checkpoint after SIGTERM");
    assert_eq!(losses(&out).len() as u64, step, "metrics.csv must have a row for each of the {step} steps");

    // A second Ctrl-C during the (long) final grid stops at once.
    let grid_run = dir.join("grid");
    let mut run = spawn_train(&config, "10", &["--grid-samples", "256", "--grid-ddim-steps", "1000"], &grid_run, false);
    wait_for("the last checkpoint", || grid_run.join("checkpoint/training/state.json").is_file());
    let stopping = std::time::Instant::now();
    for _ in 0..2 {
        signal(&run, "-INT");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(130), "a second Ctrl-C must stop the run");
    assert!(stopping.elapsed().as_secs() < 10, "stopping took {:?}", stopping.elapsed());

    // 2048-channel convs: 0.6G parameters, each 3x3 weight 144 MiB.
    let huge = dir.join("huge");
    std::fs::create_dir_all(&huge).unwrap();
    let json = r#"{"block_out_channels": [2048], "layers_per_block": 1, "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"], "sample_size": 32, "in_channels": 1, "out_channels": 1}"#;
    std::fs::write(huge.join("config.json"), json).unwrap();
    std::fs::write(huge.join("diffusion_pytorch_model.safetensors"), b"").unwrap();
    // Which limit refuses it depends on the adapter; on lavapipe the whole buffer (2.4 GiB).
    let info = ddpm_wgpu::Gpu::new(&Default::default()).unwrap().info().clone();
    let flat_bytes =
        ddpm_wgpu::unet::UNet::new(&ddpm_wgpu::unet::UNetConfig::from_json(json).unwrap()).unwrap().table.flat_len
            as u64
            * 4;
    let expected = match () {
        _ if flat_bytes > info.max_buffer_size => "largest buffer",
        _ if info.max_storage_binding < 2048 * 2048 * 9 * 4 => "largest storage binding",
        _ => "truncated or corrupt",
    };
    fails_with(&["sample", "--checkpoint", huge.to_str().unwrap(), "--num", "1"], expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_patched_model_trains_resumes_samples_and_evaluates_at_the_image_resolution() {
    let whole = temp("patched-whole");
    let split = temp("patched-split");
    let (whole_s, split_s) = (whole.to_str().unwrap(), split.to_str().unwrap());
    let patch = ["--patch-size", "2"];
    assert!(ddpm(&[train_args(whole_s, None, "3"), patch.to_vec()].concat()).status.success());
    assert!(ddpm(&[train_args(split_s, None, "2"), patch.to_vec()].concat()).status.success());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("checkpoint/unet/config.json")).unwrap()).unwrap();
    // The UNet sees 2x2 blocks of the 32x32 digits as 4 channels of 16x16.
    assert_eq!(
        (config["_patch_size"].as_u64(), config["in_channels"].as_u64(), config["sample_size"].as_u64()),
        (Some(2), Some(4), Some(16)),
        "{config}"
    );
    let resumed = ddpm(&["train", "--resume", split_s, "--steps", "3", "--sample-every", "0", "--grid-samples", "4"]);
    assert!(resumed.status.success());
    assert_eq!(losses(&whole), losses(&split), "the resumed patched run diverged");
    // --unconditional: the same recipe without the class embedding.
    let plain = temp("patched-unconditional");
    assert!(ddpm(&[train_args(plain.to_str().unwrap(), None, "1"), vec!["--unconditional"]].concat()).status.success());
    let plain_config = std::fs::read_to_string(plain.join("checkpoint/unet/config.json")).unwrap();
    assert!(plain_config.contains("\"num_class_embeds\": null"), "{plain_config}");
    let class_config = format!("{}/tests/fixtures/tiny_class_unet/config.json", env!("CARGO_MANIFEST_DIR"));
    let refused = temp("patched-refused");
    fails_with(
        &[train_args(refused.to_str().unwrap(), Some(&class_config), "1"), vec!["--unconditional"]].concat(),
        "--unconditional with a --config that has num_class_embeds",
    );
    fails_with(
        &[train_args(refused.to_str().unwrap(), None, "1"), vec!["--unconditional", "--class-dropout", "0.2"]].concat(),
        "--class-dropout needs a class-conditional UNet",
    );
    std::fs::remove_dir_all(&plain).unwrap();
    let _ = std::fs::remove_dir_all(&refused);
    let grid = split.join("grid.png");
    let checkpoint = split.join("checkpoint");
    let checkpoint_s = checkpoint.to_str().unwrap();
    let out = ddpm(&[
        "sample",
        "--checkpoint",
        checkpoint_s,
        "--num",
        "4",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let img = image::open(&grid).unwrap().to_rgb8();
    // Four 32-pixel digits (not 16-pixel 4-channel samples) in a 2x2 grid, upscaled x4.
    assert_eq!((img.width(), img.height()), (4 * (2 * 34 + 2), 4 * (2 * 34 + 2)));
    let json = split.join("eval.json");
    let out = ddpm(&[
        "eval",
        "--checkpoint",
        checkpoint_s,
        "--num",
        "8",
        "--steps",
        "2",
        "--nll",
        "--nll-num",
        "2",
        "--nll-timesteps",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let m = eval_json(&json);
    assert_eq!(m["samples"].as_u64(), Some(8), "{m}");
    let bits = m["bits_per_dim"].as_f64().unwrap();
    assert!(bits.is_finite() && bits > 0.0, "{m}");
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&split).unwrap();
}

/// An image folder with one subfolder per class trains the default recipe
/// class-conditional on those classes, named at the start, and samples one.
#[test]
fn class_subfolders_make_a_class_conditional_run() {
    let dir = temp("folder-classes");
    for (class, v) in [("circles", 40u8), ("squares", 200)] {
        std::fs::create_dir_all(dir.join("data").join(class)).unwrap();
        for i in 0..3u8 {
            image::GrayImage::from_pixel(32, 32, image::Luma([v + i]))
                .save(dir.join(format!("data/{class}/{i}.png")))
                .unwrap();
        }
    }
    let (data, out) = (dir.join("data"), dir.join("run"));
    let mut args = train_args(out.to_str().unwrap(), None, "1");
    args.extend(["--data", data.to_str().unwrap(), "--channels", "1"]);
    let run = ddpm(&args);
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && log.contains("classes: 0 circles, 1 squares"), "{log}");
    let config = std::fs::read_to_string(out.join("checkpoint/unet/config.json")).unwrap();
    assert!(config.contains("\"num_class_embeds\": 3") && config.contains("\"_null_class\": 2"), "{config}");
    let (grid, checkpoint) = (dir.join("grid.png"), out.join("checkpoint"));
    let sample = ["sample", "--checkpoint", checkpoint.to_str().unwrap(), "--num", "2"];
    let sample =
        [&sample[..], &["--sampler", "ddim", "--steps", "2", "--class", "1", "--out", grid.to_str().unwrap()]].concat();
    assert!(ddpm(&sample).status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}
