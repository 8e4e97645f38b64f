//! [`ActivationStream`]: the rows of one or more activation files (`.npy` or `.safetensors`),
//! streamed in order as f32 batches, with the provenance of each row when every file has a
//! sidecar.
//!
//! Every file is opened, memory-mapped and validated up front ([`ActivationStream::open`]):
//! format, dtype, 2-D shape, data size, equal `D` across files, and the provenance sidecars
//! (all or none present, each line valid, `Σ len(positions)` equal to the file's rows, doc_ids
//! unique across the stream). Rows are then decoded chunk by chunk straight from the mapping.

use crate::data::batch::{ActivationBatch, TokenRef};
use crate::data::mapped::{ElemType, MappedMatrix};
use crate::data::provenance::{self, DocIdSet, SidecarEntry, SidecarReader};
use crate::data::{npy, safetensors_input};
use crate::error::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Options of an [`ActivationStream`].
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// The tensor to read from `.safetensors` files (`--tensor`); by default `activations`, or
    /// the file's only 2-D tensor. Ignored for `.npy` files.
    pub tensor: Option<String>,
    /// Drop rows holding NaN or ±Inf (and count them) instead of failing on them.
    pub skip_nonfinite: bool,
}

/// Opens one activation file, by extension (`.npy`, `.safetensors`), else by its first bytes.
fn open_input(path: &Path, options: &StreamOptions) -> Result<MappedMatrix> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("npy") => npy::open_activations(path),
        Some("safetensors") => safetensors_input::open_activations(path, options.tensor.as_deref()),
        _ => {
            let mut head = [0u8; 6];
            let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
            let n = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
            if head[..n] == npy::MAGIC[..n] && n == head.len() {
                npy::open_activations(path)
            } else {
                safetensors_input::open_activations(path, options.tensor.as_deref()).map_err(|e| {
                    match e {
                        Error::Format { .. } => Error::format(
                            path,
                            "unrecognized input format (expected a .npy or .safetensors file)",
                        ),
                        other => other,
                    }
                })
            }
        }
    }
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// One input file of the stream.
struct Input {
    matrix: MappedMatrix,
    /// Stream row of the file's first row.
    first_row: u64,
    /// The provenance sidecar, when the stream has provenance.
    sidecar: Option<PathBuf>,
}

/// The document being streamed from a sidecar.
struct CurrentDoc {
    entry: SidecarEntry,
    /// Index in `entry.positions` of the next row.
    next: usize,
    /// Whether the document's tokens were counted in `new_tokens` (at its first kept row).
    counted: bool,
    /// The batch sequence number in which the document was last listed in `documents`.
    listed_in: u64,
}

/// Reads a sidecar in step with its file's rows.
struct DocCursor {
    reader: SidecarReader,
    current: Option<CurrentDoc>,
    /// Rows of the file, for messages.
    file_rows: u64,
    /// The activation file, for messages.
    file: PathBuf,
}

impl DocCursor {
    fn open(sidecar: &Path, file: &Path, file_rows: u64) -> Result<Self> {
        Ok(DocCursor {
            reader: SidecarReader::open(sidecar)?,
            current: None,
            file_rows,
            file: file.to_path_buf(),
        })
    }

    /// Advances by one row; when the row is kept, records its document in `batch` and returns
    /// its token reference.
    fn next_row(
        &mut self,
        kept: bool,
        batch_seq: u64,
        batch: &mut ActivationBatch,
        row_in_file: u64,
    ) -> Result<Option<TokenRef>> {
        loop {
            if let Some(doc) = &self.current {
                if doc.next < doc.entry.positions.len() {
                    break;
                }
            }
            match self.reader.next_entry()? {
                Some(entry) => {
                    self.current = Some(CurrentDoc {
                        entry,
                        next: 0,
                        counted: false,
                        listed_in: 0,
                    })
                }
                None => {
                    return Err(Error::format(
                        self.reader.path(),
                        format!(
                            "the sidecar ends at row {row_in_file} of {} ({} rows); it changed \
                             since the stream was opened",
                            self.file.display(),
                            self.file_rows
                        ),
                    ))
                }
            }
        }
        let Some(doc) = self.current.as_mut() else {
            unreachable!("the loop above leaves a current document");
        };
        let position = doc.entry.positions[doc.next];
        doc.next += 1;
        if !kept {
            return Ok(None);
        }
        if doc.listed_in != batch_seq {
            doc.listed_in = batch_seq;
            batch.documents.push(doc.entry.document.clone());
        }
        if !doc.counted {
            doc.counted = true;
            batch.new_tokens += doc.entry.document.tokens.len() as u64;
        }
        Ok(Some(TokenRef {
            doc_id: doc.entry.document.doc_id,
            position,
        }))
    }
}

/// The rows of one or more activation files, in order, as f32 batches.
///
/// ```no_run
/// # fn main() -> exemplar::Result<()> {
/// use exemplar::data::{ActivationStream, StreamOptions};
/// let paths = vec!["a.npy".into(), "b.safetensors".into()];
/// let mut stream = ActivationStream::open(&paths, StreamOptions::default())?;
/// while let Some(batch) = stream.next_batch(4096)? {
///     for i in 0..batch.rows() {
///         let _row: &[f32] = batch.row(i);
///     }
/// }
/// println!("sha256 of the rows streamed: {}", stream.fingerprint());
/// # Ok(())
/// # }
/// ```
pub struct ActivationStream {
    inputs: Vec<Input>,
    paths: Vec<PathBuf>,
    dim: usize,
    total_rows: u64,
    options: StreamOptions,
    has_provenance: bool,
    /// Index of the current input.
    file: usize,
    /// Next row within the current input.
    row_in_file: u64,
    /// Whether the current input's dtype was hashed and its sidecar opened.
    entered: bool,
    docs: Option<DocCursor>,
    rows_streamed: u64,
    skipped_nonfinite: u64,
    batch_seq: u64,
    hasher: Sha256,
}

impl fmt::Debug for ActivationStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivationStream")
            .field("paths", &self.paths)
            .field("dim", &self.dim)
            .field("total_rows", &self.total_rows)
            .field("has_provenance", &self.has_provenance)
            .field("rows_streamed", &self.rows_streamed)
            .field("skipped_nonfinite", &self.skipped_nonfinite)
            .finish_non_exhaustive()
    }
}

/// Runs over at least this many elements are decoded in parallel.
const PARALLEL_ELEMENTS: usize = 1 << 18;

/// Runs over at least this many bytes are hashed while they are decoded.
const PARALLEL_BYTES: usize = 1 << 16;

impl ActivationStream {
    /// Opens and validates every file of `paths` (see the module documentation).
    ///
    /// Errors: [`Error::EmptyInput`] for no paths or no rows at all; [`Error::Io`],
    /// [`Error::Format`] or [`Error::UnsupportedDtype`] for an unreadable or invalid file or
    /// sidecar; [`Error::DimensionMismatch`] naming the first file whose `D` differs from the
    /// first file's.
    pub fn open(paths: &[PathBuf], options: StreamOptions) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::EmptyInput("no input files".into()));
        }
        let mut inputs: Vec<Input> = Vec::with_capacity(paths.len());
        let mut total_rows = 0u64;
        for path in paths {
            let matrix = open_input(path, &options)?;
            if let Some(first) = inputs.first() {
                if matrix.dim != first.matrix.dim {
                    return Err(Error::DimensionMismatch {
                        what: path.display().to_string(),
                        expected: first.matrix.dim,
                        found: matrix.dim,
                    });
                }
            }
            let first_row = total_rows;
            total_rows += matrix.rows;
            inputs.push(Input {
                matrix,
                first_row,
                sidecar: None,
            });
        }

        // Sidecars: every file has one, or none does.
        let sidecars: Vec<PathBuf> = paths.iter().map(|p| provenance::sidecar_path(p)).collect();
        let present: Vec<bool> = sidecars.iter().map(|s| s.exists()).collect();
        let has_provenance = present.iter().any(|&p| p);
        if has_provenance {
            if let Some(lacking) = present.iter().position(|&p| !p) {
                let with = present.iter().position(|&p| p).unwrap_or(0);
                return Err(Error::format(
                    &paths[lacking],
                    format!(
                        "has no provenance sidecar ({} not found), but {} has one; give every \
                         input file a sidecar, or none",
                        sidecars[lacking].display(),
                        paths[with].display()
                    ),
                ));
            }
            let mut doc_ids = DocIdSet::new();
            for (input, sidecar) in inputs.iter_mut().zip(sidecars) {
                let summary = provenance::validate_sidecar(&sidecar, &mut doc_ids)?;
                if summary.rows != input.matrix.rows {
                    return Err(Error::format(
                        &sidecar,
                        format!(
                            "describes {} rows (Σ len(positions) over {} documents), but {} has \
                             {} rows",
                            summary.rows,
                            summary.documents,
                            input.matrix.path.display(),
                            input.matrix.rows
                        ),
                    ));
                }
                input.sidecar = Some(sidecar);
            }
        }

        if total_rows == 0 {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::EmptyInput(format!(
                "no rows in {}",
                names.join(", ")
            )));
        }
        let dim = inputs[0].matrix.dim;
        Ok(ActivationStream {
            inputs,
            paths: paths.to_vec(),
            dim,
            total_rows,
            options,
            has_provenance,
            file: 0,
            row_in_file: 0,
            entered: false,
            docs: None,
            rows_streamed: 0,
            skipped_nonfinite: 0,
            batch_seq: 0,
            hasher: Self::new_hasher(dim),
        })
    }

    fn new_hasher(dim: usize) -> Sha256 {
        let mut h = Sha256::new();
        h.update((dim as u64).to_le_bytes());
        h
    }

    /// The width `D` of every row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows of all files, skipped non-finite rows included.
    pub fn total_rows(&self) -> u64 {
        self.total_rows
    }

    /// The input files, in stream order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Whether every file has a provenance sidecar (batches then carry `tokens` and
    /// `documents`).
    pub fn has_provenance(&self) -> bool {
        self.has_provenance
    }

    /// The file holding stream row `stream_row`, and the row's index within that file.
    ///
    /// # Panics
    ///
    /// If `stream_row >= self.total_rows()`.
    pub fn locate(&self, stream_row: u64) -> (&Path, u64) {
        assert!(
            stream_row < self.total_rows,
            "stream row {stream_row} is out of range ({} rows)",
            self.total_rows
        );
        let i = self
            .inputs
            .partition_point(|input| input.first_row <= stream_row)
            - 1;
        let input = &self.inputs[i];
        (&input.matrix.path, stream_row - input.first_row)
    }

    /// Stream rows consumed so far (kept and skipped).
    pub fn rows_streamed(&self) -> u64 {
        self.rows_streamed
    }

    /// Non-finite rows dropped so far (only with `skip_nonfinite`).
    pub fn skipped_nonfinite(&self) -> u64 {
        self.skipped_nonfinite
    }

    /// The sha256 of the rows streamed, as lowercase hex: the hash of `D` (u64 little-endian),
    /// then, for each file in order from which rows were read, its dtype name (`f32`, `f16` or
    /// `bf16`) and a newline followed by the raw bytes of the rows read from it (skipped rows
    /// included). After a full pass it identifies the input data; it restarts with
    /// [`ActivationStream::rewind`].
    pub fn fingerprint(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Goes back to the first row, resetting the fingerprint and the counters.
    pub fn rewind(&mut self) -> Result<()> {
        self.file = 0;
        self.row_in_file = 0;
        self.entered = false;
        self.docs = None;
        self.rows_streamed = 0;
        self.skipped_nonfinite = 0;
        self.hasher = Self::new_hasher(self.dim);
        Ok(())
    }

    /// The next batch of up to `max_rows` kept rows, crossing file boundaries; `None` when
    /// every row was streamed.
    ///
    /// A row holding NaN or ±Inf is dropped and counted with `skip_nonfinite`, else it is an
    /// [`Error::NonFinite`] naming its file and its row in that file. After an error, the
    /// stream must be rewound before it is read again.
    pub fn next_batch(&mut self, max_rows: usize) -> Result<Option<ActivationBatch>> {
        if max_rows == 0 {
            return Err(Error::param("batch size", "must be at least 1 row"));
        }
        let remaining = self.total_rows - self.rows_streamed;
        if remaining == 0 {
            return Ok(None);
        }
        let dim = self.dim;
        let capacity = (max_rows as u64).min(remaining) as usize;
        self.batch_seq += 1;
        let mut batch = ActivationBatch {
            dim,
            data: Vec::with_capacity(capacity * dim),
            stream_rows: Vec::with_capacity(capacity),
            tokens: self.has_provenance.then(|| Vec::with_capacity(capacity)),
            ..Default::default()
        };

        while batch.stream_rows.len() < max_rows && self.file < self.inputs.len() {
            let input = &self.inputs[self.file];
            if self.row_in_file == input.matrix.rows {
                self.file += 1;
                self.row_in_file = 0;
                self.entered = false;
                self.docs = None;
                continue;
            }
            if !self.entered {
                self.hasher.update(input.matrix.elem.name().as_bytes());
                self.hasher.update(b"\n");
                if let Some(sidecar) = &input.sidecar {
                    self.docs = Some(DocCursor::open(
                        sidecar,
                        &input.matrix.path,
                        input.matrix.rows,
                    )?);
                }
                self.entered = true;
            }
            let take = ((max_rows - batch.stream_rows.len()) as u64)
                .min(input.matrix.rows - self.row_in_file) as usize;
            let bytes = input.matrix.row_bytes(self.row_in_file, take);
            let start = batch.data.len();
            batch.data.resize(start + take * dim, 0.0);
            let hasher = &mut self.hasher;
            let out = &mut batch.data[start..];
            let mut decode_and_check = || {
                decode(input.matrix.elem, bytes, out);
                rows_finite(out, dim)
            };
            let finite = if bytes.len() >= PARALLEL_BYTES {
                // Hashing costs about as much as decoding: do both at once.
                rayon::join(|| hasher.update(bytes), decode_and_check).1
            } else {
                hasher.update(bytes);
                decode_and_check()
            };

            let mut kept = 0usize;
            for (i, &ok) in finite.iter().enumerate() {
                let row_in_file = self.row_in_file + i as u64;
                if !ok && !self.options.skip_nonfinite {
                    return Err(Error::NonFinite {
                        path: input.matrix.path.clone(),
                        row: row_in_file,
                    });
                }
                if let Some(docs) = self.docs.as_mut() {
                    let token = docs.next_row(ok, self.batch_seq, &mut batch, row_in_file)?;
                    if let (Some(token), Some(tokens)) = (token, batch.tokens.as_mut()) {
                        tokens.push(token);
                    }
                }
                if !ok {
                    batch.skipped_nonfinite += 1;
                    continue;
                }
                if kept != i {
                    let src = start + i * dim;
                    batch.data.copy_within(src..src + dim, start + kept * dim);
                }
                batch.stream_rows.push(input.first_row + row_in_file);
                kept += 1;
            }
            batch.data.truncate(start + kept * dim);
            if !self.has_provenance {
                batch.new_tokens += kept as u64;
            }
            self.row_in_file += take as u64;
            self.rows_streamed += take as u64;
        }
        self.skipped_nonfinite += batch.skipped_nonfinite;

        if batch.stream_rows.is_empty() {
            // Every remaining row was skipped (they are counted in `skipped_nonfinite()`).
            return Ok(None);
        }
        Ok(Some(batch))
    }
}

/// Decodes little-endian `elem` values from `src` (any alignment) into `dst`
/// (`src.len() == dst.len() * elem.size()`), in parallel for large runs.
fn decode(elem: ElemType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * elem.size());
    if dst.len() >= PARALLEL_ELEMENTS {
        const CHUNK: usize = 1 << 15;
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK * elem.size()))
            .for_each(|(d, s)| decode_serial(elem, s, d));
    } else {
        decode_serial(elem, src, dst);
    }
}

fn decode_serial(elem: ElemType, src: &[u8], dst: &mut [f32]) {
    match elem {
        ElemType::F32 => {
            if cfg!(target_endian = "little") {
                // Byte copy into the aligned destination: no alignment needed on the source.
                bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(src);
            } else {
                for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
        ElemType::F16 => {
            // Through an aligned scratch buffer, so the (SIMD where available) slice
            // conversion of `half` can be used.
            const SCRATCH: usize = 1024;
            let mut scratch = [f16::ZERO; SCRATCH];
            for (d, s) in dst.chunks_mut(SCRATCH).zip(src.chunks(SCRATCH * 2)) {
                let halves = &mut scratch[..d.len()];
                for (h, c) in halves.iter_mut().zip(s.chunks_exact(2)) {
                    *h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                }
                halves.convert_to_f32_slice(d);
            }
        }
        ElemType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
    }
}

/// For each `dim`-wide row of `data`, whether all its values are finite.
fn rows_finite(data: &[f32], dim: usize) -> Vec<bool> {
    // A value is NaN or ±Inf exactly when its exponent bits are all ones; this branch-free
    // form vectorizes.
    fn finite(row: &[f32]) -> bool {
        const EXP: u32 = 0x7f80_0000;
        !row.iter()
            .fold(false, |acc, x| acc | (x.to_bits() & EXP == EXP))
    }
    if data.len() >= PARALLEL_ELEMENTS {
        data.par_chunks(dim).map(finite).collect()
    } else {
        data.chunks(dim).map(finite).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_type_at_any_alignment() {
        let values = [0.0f32, -1.5, 2.25, 1024.0, -0.125, 3.0, 49152.0];
        for elem in [ElemType::F32, ElemType::F16, ElemType::BF16] {
            let mut bytes = vec![0xAAu8]; // misalign
            for &v in &values {
                match elem {
                    ElemType::F32 => bytes.extend(v.to_le_bytes()),
                    ElemType::F16 => bytes.extend(f16::from_f32(v).to_le_bytes()),
                    ElemType::BF16 => bytes.extend(half::bf16::from_f32(v).to_le_bytes()),
                }
            }
            let mut out = vec![0.0; values.len()];
            decode(elem, &bytes[1..], &mut out);
            assert_eq!(out, values, "{elem:?}");
        }
        // A long f16 run goes through several scratch chunks (and the parallel path).
        let n = PARALLEL_ELEMENTS + 1500;
        let src: Vec<u8> = (0..n)
            .flat_map(|i| f16::from_f32((i % 2000) as f32).to_le_bytes())
            .collect();
        let mut out = vec![0.0; n];
        decode(ElemType::F16, &src, &mut out);
        assert!(out.iter().enumerate().all(|(i, &v)| v == (i % 2000) as f32));
    }

    #[test]
    fn finds_nonfinite_rows() {
        let data = [
            1.0,
            2.0,
            f32::NAN,
            0.0,
            f32::INFINITY,
            1.0,
            -f32::INFINITY,
            3.0,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        assert_eq!(rows_finite(&data, 2), [true, false, false, false, true]);
    }
}
