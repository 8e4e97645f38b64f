//! Atomic output files: a result is written to a temporary file in the destination's directory
//! and renamed into place only when complete, so a failed or interrupted write never leaves a
//! half-written file, and an existing output is never replaced unless the caller says `force`.

use crate::error::{Error, Result};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Fails with [`Error::OutputExists`] when `path` exists and `force` is false.
pub fn check_writable(path: &Path, force: bool) -> Result<()> {
    if !force && path.exists() {
        return Err(Error::OutputExists(path.to_path_buf()));
    }
    Ok(())
}

/// A file being written atomically. Dropping it without [`AtomicFile::commit`] removes the
/// temporary file and leaves the destination untouched.
pub struct AtomicFile {
    path: PathBuf,
    force: bool,
    writer: BufWriter<tempfile::NamedTempFile>,
}

impl AtomicFile {
    /// Starts writing `path`. Checks `force` now, so the caller learns of a clash before doing
    /// any work, and again at commit.
    pub fn create(path: &Path, force: bool) -> Result<Self> {
        check_writable(path, force)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::io(
                &dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "output directory does not exist",
                ),
            ));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".exemplar-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            force,
            writer: BufWriter::with_capacity(1 << 20, tmp),
        })
    }

    /// The destination path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, syncs and renames the temporary file onto the destination.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .writer
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        // Temporary files are created 0600; results are ordinary files others may read.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(|e| Error::io(&path, e))?;
        }
        tmp.as_file().sync_all().map_err(|e| Error::io(&path, e))?;
        if self.force {
            tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        } else {
            // persist_noclobber fails if the destination appeared meanwhile.
            tmp.persist_noclobber(&path).map_err(|e| {
                if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::OutputExists(path.clone())
                } else {
                    Error::io(&path, e.error)
                }
            })?;
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// Seeking within the temporary file (after flushing what is buffered), for writers that patch
/// a header once its data is written (`zip::ZipWriter`).
impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.writer.seek(pos)
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let mut f = AtomicFile::create(path, force)?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overwrites_without_force_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.bin");
        write_atomic(&p, b"first", false).unwrap();
        let err = write_atomic(&p, b"second", false).unwrap_err();
        assert!(matches!(err, Error::OutputExists(_)), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second", true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        // An abandoned write leaves nothing behind.
        let q = dir.path().join("abandoned.bin");
        {
            let mut f = AtomicFile::create(&q, false).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!q.exists());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only out.bin remains");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "results are readable by others");
        }
    }
}
