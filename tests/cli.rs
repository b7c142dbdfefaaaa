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

fn train_args<'a>(out: &'a str, config: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        config,
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
    ]
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

#[test]
fn train_resume_and_sample() {
    let config = config();
    let whole = temp("whole");
    let whole_s = whole.to_str().unwrap();
    assert!(ddpm(&train_args(whole_s, &config, "5")).status.success());

    let split = temp("split");
    let split_s = split.to_str().unwrap();
    assert!(ddpm(&train_args(split_s, &config, "3")).status.success());
    assert!(split.join("checkpoint/unet/diffusion_pytorch_model.safetensors").is_file());
    assert!(split.join("checkpoint/scheduler/scheduler_config.json").is_file());
    let resumed = ddpm(&[
        "train",
        "--resume",
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
    // 3 samples in a 2x2 grid of 28-pixel tiles with 2-pixel borders, all upscaled x4.
    assert_eq!((img.width(), img.height()), (4 * (2 * 30 + 2), 4 * (2 * 30 + 2)));
    assert!(img.pixels().any(|p| p.0[0] > 0 && p.0[0] < 255), "the samples must not be blank");
    // The reverse process of sample 0: one row of tiles, upscaled x4 too.
    let strip = image::open(&strip).unwrap().to_rgb8();
    assert_eq!(strip.height(), 4 * 32, "one row of upscaled tiles");
    assert_eq!(strip.width() % (4 * 30), 4 * 2, "whole upscaled tiles");
    let loss = image::open(split.join("loss.png")).unwrap().to_rgb8();
    assert_eq!((loss.width(), loss.height()), (900, 640), "loss.png: loss and decile panels");
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&split).unwrap();
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
    // A learning rate that blows the weights up: training stops at the step the
    // loss stopped being finite, and the last checkpoint (step 5) survives.
    let config = config();
    let blown = format!("{d}/blown");
    let flags =
        "--steps 40 --batch-size 4 --limit 32 --lr 1e30 --warmup 0 --grad-clip 0 --checkpoint-every 5 --sample-every 0";
    let args: Vec<&str> =
        ["train", "--config", &config, "--out", &blown].into_iter().chain(flags.split_whitespace()).collect();
    fails_with(&args, "the loss became");
    let state = std::fs::read_to_string(format!("{blown}/checkpoint/training/state.json")).unwrap();
    assert!(state.contains("\"step\": 5"), "{state}");
    std::fs::remove_dir_all(&dir).unwrap();
}
