//! Memory-mapped activation matrices: the leaf the activation readers share. [`map_file`] maps a
//! file read-only, and a reader (`npy.rs`, `safetensors_input.rs`) that has validated the
//! file's header against its size describes the data as a [`MappedMatrix`] of [`ElemType`]
//! values, which `stream.rs` decodes. This module imports nothing else from `data`.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The element type of an activation file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemType {
    F32,
    F16,
    BF16,
}

impl ElemType {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::F16 | ElemType::BF16 => 2,
        }
    }

    /// Short name (`f32`, `f16`, `bf16`), as used in messages and the fingerprint.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
        }
    }
}

/// A validated, memory-mapped `(rows, dim)` matrix of `elem` values, row-major and
/// little-endian, starting at byte `offset` of the mapping (not necessarily aligned).
///
/// Whoever builds one has checked that `offset + rows × dim × elem.size()` is exactly the end
/// of the data and lies inside `map`.
pub(crate) struct MappedMatrix {
    pub(crate) path: PathBuf,
    pub(crate) map: Mmap,
    pub(crate) offset: usize,
    pub(crate) rows: u64,
    pub(crate) dim: usize,
    pub(crate) elem: ElemType,
}

impl MappedMatrix {
    /// The raw bytes of rows `start .. start + count` (validated to lie inside the mapping).
    pub(crate) fn row_bytes(&self, start: u64, count: usize) -> &[u8] {
        let row_len = self.dim * self.elem.size();
        let begin = self.offset + start as usize * row_len;
        &self.map[begin..begin + count * row_len]
    }
}

/// Memory-maps the whole file `path` read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is only ever read, and every size and offset is validated against
    // its length before any access. Another process could still modify or truncate the file
    // while it is mapped; modified bytes would only change the values read (the data are
    // plain numbers, any bit pattern is valid), and truncation would raise SIGBUS, which is the
    // accepted cost of reading multi-gigabyte inputs without copying them.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    {
        // Only a hint: rows are read front to back.
        let _ = map.advise(memmap2::Advice::Sequential);
    }
    Ok(map)
}
