//! One module per subcommand, plus shared helpers.

pub mod demo;
pub mod eval;
pub mod export;
pub mod firmware;
pub mod fixtures;
pub mod images;
pub mod inspect;
pub mod int8;
pub mod purify;
pub mod summary;
pub mod train;
pub mod upgrade;
pub mod verify;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pursamere_trainer::eval::deployed;

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a file atomically (temporary file `NAME.tmp`, then rename), naming it in
/// the error; on failure neither the file nor the temporary is left behind.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// The temporary name a file is written under before it is renamed into place.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut t = path.as_os_str().to_owned();
    t.push(".tmp");
    PathBuf::from(t)
}

/// The output folder of a command (`--out`). Every command that writes files takes
/// `--out DIR` and writes fixed, documented file names inside it; an existing file
/// is overwritten only with `--force`.
///
/// [`OutDir::prepare`] checks all of that before the command does its work. Files
/// are staged (`NAME.tmp`) by [`OutDir::write`] and renamed into place only by
/// [`OutDir::keep`], when the command has succeeded: a command that fails leaves
/// the folder as it found it — with `--force` too, the files it would have replaced
/// stay — and removes the folders it created (if still empty).
pub struct OutDir {
    dir: PathBuf,
    /// The folders `prepare` created, deepest first.
    created: Vec<PathBuf>,
    kept: bool,
    staged: std::cell::RefCell<Vec<PathBuf>>,
}

impl OutDir {
    /// Checks that `dir` (given as `flag`) is, or can be created as, a folder that
    /// accepts files, and that none of `files` exists in it unless `force`.
    pub fn prepare(dir: &Path, flag: &str, files: &[String], force: bool) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            anyhow::bail!(
                "{flag} {}: is not a folder ({flag} names the output folder; the files written in it are {})",
                dir.display(),
                files.join(", ")
            );
        }
        // `--out x.psm` (a file name, as --out meant for some commands before).
        let ext = dir.extension().and_then(|e| e.to_str());
        if !dir.exists() && ext.is_some_and(|e| files.iter().any(|f| f.ends_with(&format!(".{e}"))))
        {
            anyhow::bail!(
                "{flag} {}: {flag} names the output folder, not a file; the files written in it are {} (e.g. {flag} {})",
                dir.display(),
                files.join(", "),
                dir.with_extension("").display()
            );
        }
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(Path::to_path_buf)
            .collect();
        // Owned by the guard first, so that a failure below removes what was made.
        let guard = OutDir {
            dir: dir.to_owned(),
            created,
            kept: false,
            staged: std::cell::RefCell::new(Vec::new()),
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{flag} {}: cannot create the folder", dir.display()))?;
        let existing: Vec<&String> = files.iter().filter(|f| dir.join(f).exists()).collect();
        if !force && !existing.is_empty() {
            let mut names: Vec<&str> = existing.iter().take(4).map(|s| s.as_str()).collect();
            let more = format!("and {} more", existing.len().saturating_sub(4));
            if existing.len() > 4 {
                names.push(&more);
            }
            anyhow::bail!(
                "{flag} {} already holds {}; add --force to overwrite, or choose another {flag}",
                dir.display(),
                names.join(", ")
            );
        }
        // Probe with a temporary file: a read-only folder fails here, not after the work.
        let probe = dir.join(".pursamere-write-test.tmp");
        std::fs::File::create(&probe)
            .with_context(|| format!("{flag} {}: cannot write in this folder", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(guard)
    }

    /// A file of the folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The folder `name` inside this one, created if missing (and then removed
    /// again, if still empty, when the command fails).
    pub fn subdir(&mut self, name: &str) -> Result<PathBuf> {
        let d = self.dir.join(name);
        if !d.exists() {
            std::fs::create_dir(&d).with_context(|| format!("cannot create {}", d.display()))?;
            self.created.insert(0, d.clone());
        }
        Ok(d)
    }

    /// Stages `path` (a file of this folder, or of a folder in it that exists) as
    /// `path.tmp`; [`OutDir::keep`] moves it into place.
    pub fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = tmp_path(path);
        // Recorded first: a partial temporary is removed on failure too.
        self.staged.borrow_mut().push(path.to_owned());
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The command succeeded: move the staged files into place and keep the folder.
    pub fn keep(mut self) -> Result<()> {
        let staged = std::mem::take(&mut *self.staged.borrow_mut());
        for (k, path) in staged.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp_path(path), path) {
                // Those not yet moved are removed by `drop`.
                *self.staged.borrow_mut() = staged[k..].to_vec();
                return Err(e).with_context(|| format!("cannot write {}", path.display()));
            }
        }
        self.kept = true;
        Ok(())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        for p in self.staged.borrow().iter() {
            let _ = std::fs::remove_file(tmp_path(p));
        }
        if !self.kept {
            // Each fails (harmlessly) unless the folder is empty.
            for d in &self.created {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// The images `--start`/`--count` select among `total`: `start..end`, or an error
/// naming the flags (the same wording in every command).
pub fn select_range(
    start: usize,
    count: usize,
    total: usize,
    what: &str,
) -> Result<(usize, usize)> {
    if count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    match start.checked_add(count).filter(|&e| e <= total) {
        Some(end) => Ok((start, end)),
        None => anyhow::bail!(
            "--start {start} --count {count} is outside the {total} images of {what} (indices 0..{total})"
        ),
    }
}

/// Length of the scratch for the fastest host path of `purify` with `cfg` (all
/// noise samples batched) that also serves `classify`.
pub fn fast_scratch_len(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
) -> usize {
    deployed::fast_scratch_len(model, cfg)
}

/// Scratch of [`fast_scratch_len`], starting on a cache line (the SIMD kernels'
/// vector loads then never straddle two lines).
pub fn fast_scratch(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
) -> pursamere_accel::AlignedF32 {
    pursamere_accel::AlignedF32::zeroed(fast_scratch_len(model, cfg))
}

/// Runs `f` over `0..n` split into one contiguous range per CPU thread and
/// concatenates the results in order.
pub fn parallel_ranges<T: Send>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<Vec<T>> + Sync,
) -> Result<Vec<T>> {
    pursamere_trainer::eval::workers::parallel_ranges(n, f)
}

/// Purifies and classifies every image of `x` (row-major) with the core on all
/// threads: `(purified pixels, labels)`.
pub fn core_purify_classify(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
    x: &[f32],
) -> Result<(Vec<f32>, Vec<usize>)> {
    core_purify_classify_progress(model, cfg, x, None)
}

/// [`core_purify_classify`] advancing a progress bar by one per image.
pub fn core_purify_classify_progress(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
    x: &[f32],
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(Vec<f32>, Vec<usize>)> {
    Ok(deployed::purify_classify(model, cfg, x, &|| {
        if let Some(b) = bar {
            b.inc(1);
        }
    })?)
}

/// Classifies every image with the core (no purification).
pub fn core_classify(model: &pursamere_core::Model<'_>, x: &[f32]) -> Result<Vec<usize>> {
    Ok(deployed::classify(model, x)?)
}

/// Fraction of equal entries.
pub fn accuracy(pred: &[usize], truth: &[usize]) -> f64 {
    pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len().max(1) as f64
}

/// The value parser of a flag that was renamed or removed: it refuses any value,
/// saying what to write instead (a usage error, exit code 2).
pub fn removed_flag(
    instead: &'static str,
) -> impl Fn(&str) -> std::result::Result<String, String> + Clone + Send + Sync + 'static {
    move |_| Err(instead.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that fails leaves the folder as it found it: with `--force` the
    /// files it would have replaced stay, no temporary is left, and the folders it
    /// created (all of them, not just the last) are removed.
    #[test]
    fn a_failed_command_changes_nothing_and_a_kept_one_replaces_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fx");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.psm"), b"the user's model").unwrap();
        let files = ["a.psm".to_owned(), "sub".to_owned()];
        assert!(OutDir::prepare(&dir, "--out", &files, false).is_err());
        {
            let mut out = OutDir::prepare(&dir, "--out", &files, true).unwrap();
            out.write(&out.join("a.psm"), b"new").unwrap();
            let sub = out.subdir("sub").unwrap();
            out.write(&sub.join("b"), b"new").unwrap();
            // The command fails here: `out` is dropped without `keep`.
        }
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a.psm"]);
        assert_eq!(
            std::fs::read(dir.join("a.psm")).unwrap(),
            b"the user's model"
        );

        let out = OutDir::prepare(&dir, "--out", &files, true).unwrap();
        out.write(&out.join("a.psm"), b"new").unwrap();
        out.keep().unwrap();
        assert_eq!(std::fs::read(dir.join("a.psm")).unwrap(), b"new");
        assert!(!dir.join("a.psm.tmp").exists());

        let deep = tmp.path().join("x/y/z");
        {
            let out = OutDir::prepare(&deep, "--out", &files, false).unwrap();
            out.write(&out.join("a.psm"), b"new").unwrap();
        }
        assert!(
            !tmp.path().join("x").exists(),
            "created folders left behind"
        );
    }
}
