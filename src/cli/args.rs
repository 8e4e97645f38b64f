//! Argument groups that several commands flatten, declared once: where a command writes
//! ([`OutFile`], [`OutDir`], [`ReportOut`]) with the one output check every command runs before
//! any work ([`check_output`]), and the text-model flags of the evaluation commands
//! ([`TextModelArgs`]). A command that needs its own words for `--out` (what the file holds)
//! says them with `#[command(mut_arg("out", ...))]`; the flag itself stays declared here.

use anyhow::{bail, Result};
use clap::Args;
use exemplar::dictionary::Basis;
use std::path::{Path, PathBuf};

/// `--out FILE` and `--force`: the one file a command writes.
#[derive(Args, Debug, Clone)]
pub struct OutFile {
    /// Output file.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite the output if it exists.
    #[arg(long)]
    pub force: bool,
}

impl OutFile {
    /// [`check_output`] on `--out`.
    pub fn check(&self) -> Result<()> {
        check_output(&self.out, self.force)
    }
}

/// `--out DIR` and `--force`: a directory of outputs, made if missing (its parent must exist).
#[derive(Args, Debug, Clone)]
pub struct OutDir {
    /// Output directory.
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
}

impl OutDir {
    /// Checks, before any work, that the directory can receive `files` (relative paths in it):
    /// `--out` is a directory or does not exist, the directory that will hold it exists and is
    /// writable, and no file exists unless `--force`.
    pub fn check<P: AsRef<Path>>(&self, files: &[P]) -> Result<()> {
        check_output_dir(&self.out)?;
        for f in files {
            let path = self.out.join(f);
            exemplar::output::check_writable(&path, self.force)?;
        }
        Ok(())
    }
}

/// `--json`, `--out FILE` and `--force`: a report printed as a table (or JSON), and written as
/// JSON when asked.
#[derive(Args, Debug, Clone)]
pub struct ReportOut {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
}

impl ReportOut {
    /// [`check_output`] on `--out`, when given.
    pub fn check(&self) -> Result<()> {
        match &self.out {
            Some(out) => check_output(out, self.force),
            None => Ok(()),
        }
    }

    /// Writes `value` as pretty JSON to `--out` (when given), and prints it with `--json`, or
    /// else prints `table` and where the report went.
    pub fn emit(&self, value: &serde_json::Value, table: &str) -> Result<()> {
        let text = serde_json::to_string_pretty(value)? + "\n";
        if let Some(out) = &self.out {
            exemplar::output::write_atomic(out, text.as_bytes(), self.force)?;
        }
        if self.json {
            print!("{text}");
        } else {
            print!("{table}");
            if let Some(out) = &self.out {
                println!("report written to {}", out.display());
            }
        }
        Ok(())
    }
}

/// The one output check, run before any work: `path` must not exist unless `force` (the
/// library's typed [`exemplar::Error::OutputExists`], which the CLI's hint turns into
/// `--force`), and the directory that will hold it must exist and accept a new file. The
/// errors name the output and the directory, so a long run never ends in an error it could
/// have reported at the start.
pub fn check_output(path: &Path, force: bool) -> Result<()> {
    exemplar::output::check_writable(path, force)?;
    check_dir_writable(path, parent_dir(path))
}

/// The directory output `dir` can be made or filled: it is a directory or does not exist, and
/// the directory that holds it (itself, when it exists) exists and is writable.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!(
                "cannot write into {}: it is a file, not a directory",
                dir.display()
            );
        }
        return check_dir_writable(dir, dir);
    }
    check_dir_writable(dir, parent_dir(dir))
}

/// The file name of `p` (for tables and legends), or the whole path where it has none.
pub fn name_of(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The `--basis` value (`exemplar` or `mean`; clap has checked it) as the library's [`Basis`].
pub fn basis(name: &str) -> Basis {
    match name {
        "mean" => Basis::Mean,
        _ => Basis::Exemplar,
    }
}

/// `v` with `digits` decimals, or `-` where there is none (table cells).
pub fn fixed_or_dash(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The directory `path` goes in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// `dir` exists and a file can be created in it (a temporary one is, and removed), for the
/// output `path`.
fn check_dir_writable(path: &Path, dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        bail!(
            "cannot write {}: the directory {} {what}",
            path.display(),
            dir.display()
        );
    }
    if let Err(e) = tempfile::Builder::new()
        .prefix(".exemplar-check-")
        .tempfile_in(dir)
    {
        bail!(
            "cannot write {}: the directory {} is not writable ({e})",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Text mode of the evaluation commands (`probe`, `detect`, `ood`): the texts are run through
/// a Gemma checkpoint and the activations at `--hook` are used (feature `torch`).
#[cfg(feature = "torch")]
#[derive(Args, Debug, Clone)]
pub struct TextModelArgs {
    /// Text mode: a Gemma-2 checkpoint directory; the texts are run through it (CPU, f32).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "activations",
        requires = "hook"
    )]
    pub model: Option<PathBuf>,
    /// Text mode: the hook whose activations are used (e.g. blocks.12.hook_resid_post).
    #[arg(long, value_name = "HOOK", requires = "model")]
    pub hook: Option<String>,
    /// Text mode: tokens kept per text after the BOS.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub ctx: usize,
    /// Text mode: texts per forward pass.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub batch_prompts: usize,
}

#[cfg(feature = "torch")]
impl TextModelArgs {
    /// True in text mode (`--model` given; clap then requires `--hook`).
    pub fn text_mode(&self) -> bool {
        self.model.is_some()
    }

    /// Token activations of `texts` at the hook, document `i` = `texts[i]` (text mode only).
    pub fn documents(
        &self,
        texts: &[String],
    ) -> Result<exemplar::eval::documents::DocumentActivations> {
        let (Some(model), Some(hook)) = (&self.model, &self.hook) else {
            bail!("text mode needs --model DIR and --hook H");
        };
        Ok(exemplar::eval::documents::texts_through_model(
            model,
            hook,
            texts,
            self.ctx,
            self.batch_prompts,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked_with_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.json");
        check_output(&file, false).unwrap();
        std::fs::write(&file, b"{}").unwrap();
        let e = check_output(&file, false).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<exemplar::Error>(),
                Some(exemplar::Error::OutputExists(_))
            ),
            "{e}"
        );
        check_output(&file, true).unwrap();
        let missing = dir.path().join("missing").join("out.json");
        let e = check_output(&missing, true).unwrap_err().to_string();
        assert!(
            e.contains(&missing.display().to_string()) && e.contains("does not exist"),
            "{e}"
        );
        let under_file = file.join("x.json");
        let e = check_output(&under_file, false).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        // Directory outputs: made if missing, with an existing parent.
        check_output_dir(&dir.path().join("new")).unwrap();
        check_output_dir(dir.path()).unwrap();
        let e = check_output_dir(&dir.path().join("a").join("b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_output_dir(&file).unwrap_err().to_string();
        assert!(e.contains("it is a file"), "{e}");
        // The probe leaves nothing behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only out.json remains");
        // A bare file name goes in the current directory.
        assert_eq!(parent_dir(Path::new("x.npy")), Path::new("."));
    }
}
