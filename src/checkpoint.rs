//! Where a run's checkpoint lives, and how a save replaces it so that a
//! crash (a kill, a full disk, power) at any moment leaves a complete one.
//!
//! A checkpoint folder `DIR` has two siblings during a save: `DIR.new` (the
//! one being written) and `DIR.old` (the previous one, until the new one is
//! in place). A folder is *complete* when its `training/state.json` parses:
//! that file is written last. Readers take the newest complete one of the
//! three; the saver first puts the newest complete one back at `DIR`, so
//! at every point of every save at least one complete checkpoint exists.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The file written last in a checkpoint folder: its presence marks it complete.
pub const STATE_FILE: &str = "training/state.json";

/// `DIR.suffix`.
pub fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!("{name}.{suffix}"))
}

/// The step a complete checkpoint folder holds, or None when it is missing
/// or incomplete.
pub fn completed_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    state.get("step")?.as_u64()
}

/// The newest complete checkpoint among `dir`, `dir.new` and `dir.old`.
pub fn newest(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), sibling(dir, "new"), sibling(dir, "old")]
        .into_iter()
        .filter_map(|d| completed_step(&d).map(|s| (s, d)))
        // The newest step; on a tie the earlier candidate (`dir` first).
        .fold(None, |best: Option<(u64, PathBuf)>, (s, d)| match best {
            Some((b, _)) if b >= s => best,
            _ => Some((s, d)),
        })
        .map(|(_, d)| d)
}

/// The steps of [`replace`], in order: where a crash can fall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStep {
    /// Put the newest complete checkpoint back at `DIR` (after a crash).
    Recover,
    /// Remove a stale or partial `DIR.new`.
    ClearNew,
    /// Write `DIR.new` (the writer's own steps fall inside this one).
    Write,
    /// Remove `DIR.old`.
    ClearOld,
    /// Rename `DIR` to `DIR.old`.
    Demote,
    /// Rename `DIR.new` to `DIR`.
    Promote,
    /// Remove `DIR.old`.
    ClearDemoted,
}

/// Replace the checkpoint `dir` by what `write` puts into the folder it is
/// given (which must write `training/state.json` last). `before` runs
/// before each step: tests make it fail to stop the save there, as a crash
/// would.
pub fn replace(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<()>,
    before: &mut dyn FnMut(SaveStep) -> Result<()>,
) -> Result<()> {
    let (new, old) = (sibling(dir, "new"), sibling(dir, "old"));
    let remove = |d: &Path| match std::fs::remove_dir_all(d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", d.display()))
        }
        _ => Ok(()),
    };
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
    };
    before(SaveStep::Recover)?;
    if let Some(found) = newest(dir).filter(|found| found != dir) {
        remove(dir)?;
        rename(&found, dir)?;
    }
    before(SaveStep::ClearNew)?;
    remove(&new)?;
    before(SaveStep::Write)?;
    write(&new)?;
    before(SaveStep::ClearOld)?;
    remove(&old)?;
    before(SaveStep::Demote)?;
    if dir.exists() {
        rename(dir, &old)?;
    }
    before(SaveStep::Promote)?;
    rename(&new, dir)?;
    before(SaveStep::ClearDemoted)?;
    remove(&old)
}

/// Keep a copy of the complete checkpoint `dir` as `kept/step_NNNNNNN`
/// (files hard-linked where the file system allows: a save writes new
/// files, so the links keep the old ones), then remove the oldest kept
/// copies beyond `limit` (diffusers' `checkpoints_total_limit`). A copy
/// appears only complete: it is built under a `.tmp` name and renamed.
pub fn keep(dir: &Path, kept: &Path, limit: usize) -> Result<PathBuf> {
    let step = completed_step(dir).with_context(|| format!("{} is not a complete checkpoint", dir.display()))?;
    let target = kept.join(format!("step_{step:07}"));
    let tmp = kept.join(format!("step_{step:07}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    link_tree(dir, &tmp).with_context(|| format!("copying {} to {}", dir.display(), tmp.display()))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).with_context(|| format!("moving {} to {}", tmp.display(), target.display()))?;
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(kept)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some((name.strip_prefix("step_")?.parse().ok()?, e.path()))
        })
        .collect();
    steps.sort();
    for (_, old) in steps.iter().rev().skip(limit) {
        std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(target)
}

/// `from`'s files and folders recreated under `to`, each file a hard link
/// (or a copy where links are not possible).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
