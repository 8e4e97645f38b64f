//! The numpy `.npy` format: a header parser for activation inputs and the `.npy`/`.npz` writers
//! used for per-row outputs.
//!
//! A `.npy` file is the magic string `\x93NUMPY`, a two-byte version (1.0, 2.0 or 3.0), the
//! length of the header (2 bytes little-endian in v1.0, 4 bytes in v2.0/3.0), and the header: a
//! Python dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 384), }`
//! padded with spaces and a newline. The array's raw bytes follow. The header is parsed here by a
//! small hand-written parser of Python literals (never evaluated).
//!
//! Activation inputs must be 2-D `(N, D)`, C order, dtype `<f4` or `<f2` (checked when a stream
//! opens). The writers handle 1-D and 2-D arrays of `i64` (`<i8`), `f32` (`<f4`) and `bool`
//! (`|b1`), as [`NpyArray`]; [`write_npy_file`] and [`write_npz`] (an uncompressed zip of
//! `name.npy` members, as `numpy.savez` writes) write atomically.

use crate::data::mapped::{map_file, ElemType, MappedMatrix};
use crate::error::{Error, Result};
use crate::output::AtomicFile;
use std::io::{Read, Seek, Write};
use std::path::Path;

/// The magic string that opens every `.npy` file.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The dtypes accepted for activation inputs, as listed in [`Error::UnsupportedDtype`].
const SUPPORTED_ACTIVATION_DTYPES: &str = "<f4 (float32), <f2 (float16)";

/// The parsed header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version `(major, minor)`: `(1, 0)`, `(2, 0)` or `(3, 0)`.
    pub version: (u8, u8),
    /// The numpy dtype string, for example `<f4`. A structured dtype (a list) is kept as the text
    /// of its literal.
    pub descr: String,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Byte offset of the data from the start of the file.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements (`Π shape`), or `None` on overflow.
    pub fn element_count(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
    }
}

/// Formats a shape as Python does: `(3,)`, `(1000, 384)`, `()`.
pub fn format_shape(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// Parses the header of a `.npy` file from its first bytes (the whole file, or at least the
/// magic, version, length and header). `path` names the file in errors.
///
/// Any dtype and shape are accepted here; the activation reader and [`read_npy`] check them.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let fmt = |m: String| Error::format(path, m);
    if bytes.is_empty() {
        return Err(fmt("file is empty (not a .npy file)".into()));
    }
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(fmt("not a .npy file (bad magic)".into()));
    }
    if bytes.len() < MAGIC.len() + 2 {
        return Err(fmt("header is truncated".into()));
    }
    let version = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match version {
        (1, 0) => (2usize, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        (major, minor) => {
            return Err(fmt(format!(
                "unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)"
            )))
        }
    };
    let start = 8 + len_bytes;
    let Some(len_field) = bytes.get(8..start) else {
        return Err(fmt("header is truncated".into()));
    };
    let header_len = len_field
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let data_offset = start + header_len;
    let Some(raw) = bytes.get(start..data_offset) else {
        return Err(fmt(format!(
            "header is truncated: it declares {header_len} header bytes, the file holds {}",
            bytes.len() - start
        )));
    };
    let text: String = if utf8 {
        std::str::from_utf8(raw)
            .map_err(|_| fmt("header is not valid UTF-8".into()))?
            .to_string()
    } else {
        // Versions 1.0 and 2.0 use latin-1.
        raw.iter().map(|&b| char::from(b)).collect()
    };
    let dict = literal::parse_dict(&text).map_err(|m| {
        // The header as the message shows it: at most its first 200 characters.
        let shown = text.trim_end();
        let shown = match shown.char_indices().nth(200) {
            Some((cut, _)) => format!("{}… ({} bytes)", &shown[..cut], shown.len()),
            None => shown.to_string(),
        };
        fmt(format!("malformed header {shown}: {m}"))
    })?;

    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    for (key, value) in dict {
        match key.as_str() {
            "descr" => {
                descr = Some(match value.value {
                    literal::Value::Str(s) => s,
                    _ => value.text.to_string(),
                })
            }
            "fortran_order" => match value.value {
                literal::Value::Bool(b) => fortran_order = Some(b),
                _ => {
                    return Err(fmt(format!(
                        "header field 'fortran_order' must be True or False, found {}",
                        value.text
                    )))
                }
            },
            "shape" => {
                let dims = match value.value {
                    literal::Value::Tuple(items) => items,
                    _ => {
                        return Err(fmt(format!(
                            "header field 'shape' must be a tuple, found {}",
                            value.text
                        )))
                    }
                };
                let mut parsed = Vec::with_capacity(dims.len());
                for d in dims {
                    match d.value {
                        literal::Value::Int(n) => match usize::try_from(n) {
                            Ok(n) => parsed.push(n),
                            Err(_) => {
                                return Err(fmt(format!(
                                    "header field 'shape' holds an invalid dimension {n}"
                                )))
                            }
                        },
                        _ => {
                            return Err(fmt(format!(
                                "header field 'shape' must hold integers, found {}",
                                d.text
                            )))
                        }
                    }
                }
                shape = Some(parsed);
            }
            _ => {} // tolerated: numpy never writes other keys
        }
    }
    let missing = |k: &str| fmt(format!("header lacks the '{k}' field"));
    Ok(NpyHeader {
        version,
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
        data_offset,
    })
}

/// Maps an activation `.npy` file and validates it: dtype `<f4`/`<f2`, C order, 2-D `(N, D)`
/// with `D ≥ 1`, and exactly `N × D` elements of data after the header.
pub(crate) fn open_activations(path: &Path) -> Result<MappedMatrix> {
    let map = map_file(path)?;
    let header = parse_header(&map, path)?;
    let elem = match header.descr.as_str() {
        "<f4" => ElemType::F32,
        "<f2" => ElemType::F16,
        _ => {
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: header.descr,
                supported: SUPPORTED_ACTIVATION_DTYPES,
            })
        }
    };
    if header.fortran_order {
        return Err(Error::format(
            path,
            "fortran_order arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let (rows, dim) = match header.shape[..] {
        [n, d] => (n, d),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "shape must be 2-D (N, D), found {}",
                    format_shape(&header.shape)
                ),
            ))
        }
    };
    if dim == 0 {
        return Err(Error::format(
            path,
            format!("shape ({rows}, 0) has no columns (D must be at least 1)"),
        ));
    }
    let expected = rows
        .checked_mul(dim)
        .and_then(|n| n.checked_mul(elem.size()))
        .ok_or_else(|| {
            Error::format(
                path,
                format!("shape {} is too large", format_shape(&header.shape)),
            )
        })?;
    let held = map.len() - header.data_offset;
    if held != expected {
        let what = if held < expected {
            "file is truncated"
        } else {
            "file has extra bytes after the data"
        };
        return Err(Error::format(
            path,
            format!(
                "{what}: header says {rows} × {dim} {} = {expected} data bytes, file holds {held}",
                elem.name()
            ),
        ));
    }
    Ok(MappedMatrix {
        path: path.to_path_buf(),
        offset: header.data_offset,
        rows: rows as u64,
        dim,
        elem,
        map,
    })
}

/// The elements of an [`NpyArray`].
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// 64-bit signed integers, written as `<i8`.
    I64(Vec<i64>),
    /// 32-bit floats, written as `<f4`.
    F32(Vec<f32>),
    /// Booleans, written as `|b1`.
    Bool(Vec<bool>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::I64(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::Bool(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numpy dtype string: `<i8`, `<f4` or `|b1`.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::I64(_) => "<i8",
            NpyData::F32(_) => "<f4",
            NpyData::Bool(_) => "|b1",
        }
    }

    /// Size in bytes of one element.
    fn elem_size(&self) -> usize {
        match self {
            NpyData::I64(_) => 8,
            NpyData::F32(_) => 4,
            NpyData::Bool(_) => 1,
        }
    }

    /// Calls `f` with the little-endian bytes of the elements, in order, in chunks.
    fn for_each_le_chunk<E>(
        &self,
        mut f: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        const CHUNK: usize = 1 << 14;
        let mut buf = Vec::new();
        match self {
            NpyData::I64(v) if cfg!(target_endian = "little") => {
                for c in v.chunks(CHUNK * 4) {
                    f(bytemuck::cast_slice(c))?;
                }
            }
            NpyData::F32(v) if cfg!(target_endian = "little") => {
                for c in v.chunks(CHUNK * 8) {
                    f(bytemuck::cast_slice(c))?;
                }
            }
            NpyData::I64(v) => {
                for c in v.chunks(CHUNK) {
                    buf.clear();
                    buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
                    f(&buf)?;
                }
            }
            NpyData::F32(v) => {
                for c in v.chunks(CHUNK) {
                    buf.clear();
                    buf.extend(c.iter().flat_map(|x| x.to_le_bytes()));
                    f(&buf)?;
                }
            }
            NpyData::Bool(v) => {
                for c in v.chunks(CHUNK * 8) {
                    buf.clear();
                    buf.extend(c.iter().map(|&b| u8::from(b)));
                    f(&buf)?;
                }
            }
        }
        Ok(())
    }
}

impl From<Vec<i64>> for NpyData {
    fn from(v: Vec<i64>) -> Self {
        NpyData::I64(v)
    }
}

impl From<Vec<f32>> for NpyData {
    fn from(v: Vec<f32>) -> Self {
        NpyData::F32(v)
    }
}

impl From<Vec<bool>> for NpyData {
    fn from(v: Vec<bool>) -> Self {
        NpyData::Bool(v)
    }
}

/// A 1-D or 2-D array to write as `.npy` (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    shape: Vec<usize>,
    data: NpyData,
}

impl NpyArray {
    /// An array of the given shape (1-D or 2-D) whose element count matches `data`.
    pub fn new(shape: Vec<usize>, data: impl Into<NpyData>) -> Result<Self> {
        let data = data.into();
        if shape.is_empty() || shape.len() > 2 {
            return Err(Error::param(
                "array shape",
                format!("must be 1-D or 2-D, found {}", format_shape(&shape)),
            ));
        }
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if count != Some(data.len()) {
            return Err(Error::param(
                "array shape",
                format!(
                    "{} does not hold {} elements",
                    format_shape(&shape),
                    data.len()
                ),
            ));
        }
        Ok(NpyArray { shape, data })
    }

    /// A 1-D array holding `data`.
    pub fn vector(data: impl Into<NpyData>) -> Self {
        let data = data.into();
        NpyArray {
            shape: vec![data.len()],
            data,
        }
    }

    /// A 2-D `(rows, cols)` array of row-major `data`.
    pub fn matrix(data: impl Into<NpyData>, rows: usize, cols: usize) -> Result<Self> {
        Self::new(vec![rows, cols], data)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &NpyData {
        &self.data
    }

    /// The elements, row-major, by value.
    pub fn into_data(self) -> NpyData {
        self.data
    }

    /// The numpy dtype string: `<i8`, `<f4` or `|b1`.
    pub fn descr(&self) -> &'static str {
        self.data.descr()
    }

    /// The header (magic to newline), padded so that the data starts at a multiple of 64 bytes.
    fn header_bytes(&self) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
            self.descr(),
            format_shape(&self.shape)
        );
        // Version 1.0: the header of a 1-D or 2-D array is far below its 64 KiB limit.
        const PREFIX: usize = 10;
        let total = (PREFIX + dict.len() + 1).div_ceil(64) * 64;
        let header_len = (total - PREFIX) as u16;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&header_len.to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        out
    }

    /// Total size in bytes of the `.npy` encoding.
    fn encoded_len(&self) -> u64 {
        self.header_bytes().len() as u64 + (self.data.len() * self.data.elem_size()) as u64
    }
}

/// Writes `array` in `.npy` format (version 1.0) to `w`.
pub fn write_npy<W: Write>(w: &mut W, array: &NpyArray) -> std::io::Result<()> {
    w.write_all(&array.header_bytes())?;
    array.data.for_each_le_chunk(|c| w.write_all(c))
}

/// Writes `array` to the `.npy` file `path` atomically; an existing file is replaced only when
/// `force` is true (otherwise [`Error::OutputExists`]).
pub fn write_npy_file(path: &Path, array: &NpyArray, force: bool) -> Result<()> {
    let mut file = AtomicFile::create(path, force)?;
    write_npy(&mut file, array).map_err(|e| Error::io(path, e))?;
    file.commit()
}

/// Writes the `.npz` file `path` atomically: an uncompressed zip archive holding one member
/// `name.npy` per array, in order, as `numpy.savez` does (read back with `numpy.load`). ZIP64
/// records are used where sizes, offsets or the number of members need them, and the bytes
/// depend only on the arrays (fixed timestamps). An existing file is replaced only when `force`
/// is true (otherwise [`Error::OutputExists`]).
pub fn write_npz(path: &Path, arrays: &[(&str, NpyArray)], force: bool) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(arrays.len());
    for (name, _) in arrays {
        if name.is_empty() || name.contains(['/', '\\']) || name.len() > 60_000 {
            return Err(Error::param(
                "npz member name",
                format!("{name:?} must be a non-empty file name without slashes"),
            ));
        }
        if !seen.insert(name) {
            return Err(Error::param(
                "npz member name",
                format!("{name:?} appears twice"),
            ));
        }
    }
    let mut file = AtomicFile::create(path, force)?;
    write_stored_zip(&mut file, arrays).map_err(|e| match e {
        zip::result::ZipError::Io(e) => Error::io(path, e),
        other => Error::io(path, std::io::Error::other(other)),
    })?;
    file.commit()
}

/// Writes the `.npz` archive of `arrays` (members `name.npy`, uncompressed) to `w` with
/// [`zip::ZipWriter`]. Every member gets the same fixed timestamp (1980-01-01 00:00, the
/// earliest a zip file can hold) and mode (`rw-r--r--`), so equal arrays give equal bytes. A
/// member of 4 GiB or more is written with ZIP64 sizes; the writer adds ZIP64 records by itself
/// where offsets or the member count need them.
fn write_stored_zip<W: Write + Seek>(
    w: W,
    arrays: &[(&str, NpyArray)],
) -> zip::result::ZipResult<W> {
    let mut zip = zip::ZipWriter::new(w);
    for (name, array) in arrays {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(0o644)
            .large_file(array.encoded_len() >= zip::ZIP64_BYTES_THR);
        zip.start_file(format!("{name}.npy"), options)?;
        write_npy(&mut zip, array)?;
    }
    zip.finish()
}

/// Reads a whole `.npy` array of dtype `<i8`, `<f4` or `|b1` (1-D or 2-D, C order) from `bytes`;
/// the counterpart of [`write_npy`]. `path` names the source in errors.
pub fn read_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let header = parse_header(bytes, path)?;
    if header.fortran_order {
        return Err(Error::format(
            path,
            "fortran_order arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let count = header
        .element_count()
        .ok_or_else(|| Error::format(path, "shape is too large"))?;
    let size = match header.descr.as_str() {
        "<i8" => 8,
        "<f4" => 4,
        "|b1" => 1,
        _ => {
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: header.descr,
                supported: "<i8, <f4, |b1",
            })
        }
    };
    let data = &bytes[header.data_offset..];
    if Some(data.len()) != count.checked_mul(size) {
        return Err(Error::format(
            path,
            format!(
                "header says {} × {} bytes of data, file holds {}",
                count,
                size,
                data.len()
            ),
        ));
    }
    let values = match header.descr.as_str() {
        "<i8" => NpyData::I64(
            data.chunks_exact(8)
                .map(|c| i64::from_le_bytes(bytemuck::pod_read_unaligned(c)))
                .collect(),
        ),
        "<f4" => NpyData::F32(
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes(bytemuck::pod_read_unaligned(c)))
                .collect(),
        ),
        _ => {
            if let Some(bad) = data.iter().find(|&&b| b > 1) {
                return Err(Error::format(path, format!("invalid boolean byte {bad}")));
            }
            NpyData::Bool(data.iter().map(|&b| b == 1).collect())
        }
    };
    NpyArray::new(header.shape, values).map_err(|e| Error::format(path, e.to_string()))
}

/// Reads every member `name.npy` of the `.npz` file `path` (as written by [`write_npz`], or by
/// `numpy.savez` for the dtypes [`read_npy`] handles), in archive order, names without `.npy`.
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| Error::format(path, format!("not a valid .npz (zip) file: {e}")))?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut member = archive
            .by_index(i)
            .map_err(|e| Error::format(path, format!("bad zip member {i}: {e}")))?;
        let name = member.name().to_string();
        let mut bytes = Vec::new();
        member
            .read_to_end(&mut bytes)
            .map_err(|e| Error::format(path, format!("bad zip member {name}: {e}")))?;
        let member_path = path.join(&name);
        let array = read_npy(&bytes, &member_path)?;
        let short = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        out.push((short, array));
    }
    Ok(out)
}

/// A parser of the Python literals found in `.npy` headers: dicts, tuples, lists, strings,
/// integers, `True`, `False` and `None`.
mod literal {
    /// A parsed literal.
    #[derive(Debug)]
    pub(super) enum Value<'a> {
        Str(String),
        Int(i128),
        Bool(bool),
        None,
        Tuple(Vec<Spanned<'a>>),
        /// A list (its items are parsed, then dropped: only structured dtypes use lists).
        List,
        Dict(Vec<(Spanned<'a>, Spanned<'a>)>),
    }

    /// A literal and its source text (for error messages), borrowed from the header, so that
    /// nested literals never copy their text once per level.
    #[derive(Debug)]
    pub(super) struct Spanned<'a> {
        pub value: Value<'a>,
        pub text: &'a str,
    }

    /// The deepest nesting of containers accepted. numpy's headers nest a few levels (a
    /// structured dtype's fields); the limit keeps a hostile header from exhausting the stack.
    pub(super) const MAX_DEPTH: usize = 128;

    /// Parses a dict with string keys, the whole of `s` (surrounding whitespace allowed).
    pub(super) fn parse_dict(s: &str) -> Result<Vec<(String, Spanned<'_>)>, String> {
        let mut p = Parser {
            s,
            pos: 0,
            depth: 0,
        };
        let v = p.value()?;
        p.skip_ws();
        if p.pos != s.len() {
            return Err(format!("unexpected text after the dict at byte {}", p.pos));
        }
        let Value::Dict(items) = v.value else {
            return Err("the header is not a dict".into());
        };
        let mut out = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        for (k, v) in items {
            match k.value {
                Value::Str(k) => {
                    if !seen.insert(k.clone()) {
                        return Err(format!("key '{k}' appears twice"));
                    }
                    out.push((k, v));
                }
                _ => return Err(format!("dict key {} is not a string", k.text)),
            }
        }
        Ok(out)
    }

    struct Parser<'a> {
        s: &'a str,
        pos: usize,
        /// Containers open around the current position.
        depth: usize,
    }

    impl<'a> Parser<'a> {
        fn peek(&self) -> Option<u8> {
            self.s.as_bytes().get(self.pos).copied()
        }

        fn skip_ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.pos += 1;
            }
        }

        fn value(&mut self) -> Result<Spanned<'a>, String> {
            self.skip_ws();
            let start = self.pos;
            let container = matches!(self.peek(), Some(b'{' | b'(' | b'['));
            if container {
                if self.depth == MAX_DEPTH {
                    return Err(format!(
                        "containers nested deeper than {MAX_DEPTH} levels at byte {}",
                        self.pos
                    ));
                }
                self.depth += 1;
            }
            let value = match self.peek() {
                None => return Err("unexpected end of header".into()),
                Some(b'{') => {
                    self.pos += 1;
                    let mut items = Vec::new();
                    loop {
                        self.skip_ws();
                        if self.peek() == Some(b'}') {
                            self.pos += 1;
                            break;
                        }
                        let k = self.value()?;
                        self.skip_ws();
                        if self.peek() != Some(b':') {
                            return Err(format!("expected ':' at byte {}", self.pos));
                        }
                        self.pos += 1;
                        let v = self.value()?;
                        items.push((k, v));
                        if !self.separator(b'}')? {
                            break;
                        }
                    }
                    Value::Dict(items)
                }
                Some(open @ (b'(' | b'[')) => {
                    let close = if open == b'(' { b')' } else { b']' };
                    self.pos += 1;
                    let mut items = Vec::new();
                    loop {
                        self.skip_ws();
                        if self.peek() == Some(close) {
                            self.pos += 1;
                            break;
                        }
                        items.push(self.value()?);
                        if !self.separator(close)? {
                            break;
                        }
                    }
                    if open == b'(' {
                        Value::Tuple(items)
                    } else {
                        Value::List
                    }
                }
                Some(q @ (b'\'' | b'"')) => Value::Str(self.string(q)?),
                Some(b'-' | b'+' | b'0'..=b'9') => Value::Int(self.int()?),
                Some(c) if c.is_ascii_alphabetic() || c == b'_' => {
                    let word_end = self.s[self.pos..]
                        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                        .map_or(self.s.len(), |i| self.pos + i);
                    let word = &self.s[self.pos..word_end];
                    self.pos = word_end;
                    match word {
                        "True" => Value::Bool(true),
                        "False" => Value::Bool(false),
                        "None" => Value::None,
                        _ => return Err(format!("unexpected name {word}")),
                    }
                }
                Some(_) => {
                    let c = self.s[self.pos..].chars().next().unwrap_or('?');
                    return Err(format!("unexpected character {c:?} at byte {}", self.pos));
                }
            };
            if container {
                self.depth -= 1;
            }
            Ok(Spanned {
                value,
                text: &self.s[start..self.pos],
            })
        }

        /// After an item: consumes `,` (returns true: more may follow) or `close` (returns
        /// false: the container is done).
        fn separator(&mut self, close: u8) -> Result<bool, String> {
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    Ok(true)
                }
                Some(c) if c == close => {
                    self.pos += 1;
                    Ok(false)
                }
                None => Err("unexpected end of header".into()),
                Some(_) => Err(format!(
                    "expected ',' or '{}' at byte {}",
                    char::from(close),
                    self.pos
                )),
            }
        }

        fn string(&mut self, quote: u8) -> Result<String, String> {
            self.pos += 1;
            let mut out = String::new();
            let mut chars = self.s[self.pos..].char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    c if c as u32 == u32::from(quote) => {
                        self.pos += i + 1;
                        return Ok(out);
                    }
                    '\\' => match chars.next() {
                        Some((_, e @ ('\\' | '\'' | '"'))) => out.push(e),
                        Some((_, 'n')) => out.push('\n'),
                        Some((_, 't')) => out.push('\t'),
                        Some((_, e)) => {
                            out.push('\\');
                            out.push(e);
                        }
                        None => break,
                    },
                    c => out.push(c),
                }
            }
            Err("unterminated string".into())
        }

        fn int(&mut self) -> Result<i128, String> {
            let start = self.pos;
            if matches!(self.peek(), Some(b'-' | b'+')) {
                self.pos += 1;
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
            let digits = &self.s[start..self.pos];
            // Python 2 long suffix, as very old numpy wrote.
            if matches!(self.peek(), Some(b'L' | b'l')) {
                self.pos += 1;
            }
            digits
                .parse::<i128>()
                .map_err(|_| format!("invalid integer {digits:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn npy_bytes(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[version, 0]);
        let header = format!("{dict}\n");
        if version == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn p() -> PathBuf {
        PathBuf::from("x.npy")
    }

    fn format_msg(r: Result<NpyHeader>) -> String {
        match r {
            Err(Error::Format { path, message }) => {
                assert_eq!(path, p());
                message
            }
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn parses_all_versions() {
        for v in [1u8, 2, 3] {
            let b = npy_bytes(
                v,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
                &[],
            );
            let h = parse_header(&b, &p()).unwrap();
            assert_eq!(h.version, (v, 0));
            assert_eq!(h.descr, "<f4");
            assert!(!h.fortran_order);
            assert_eq!(h.shape, vec![3, 4]);
            assert_eq!(h.data_offset, b.len());
        }
    }

    #[test]
    fn tolerates_formatting_variants() {
        let cases = [
            (
                "{\"descr\":\"<f2\",\"fortran_order\":True,\"shape\":(2,3)}",
                vec![2, 3],
                true,
            ),
            (
                "{ 'shape' : ( 7 , ) , 'descr' : '<f2' , 'fortran_order' : False }",
                vec![7],
                false,
            ),
            (
                "{'descr': '<f2', 'fortran_order': False, 'shape': (5L, 2L), }",
                vec![5, 2],
                false,
            ),
            (
                "{'descr': '<f2', 'fortran_order': False, 'shape': (), }",
                vec![],
                false,
            ),
        ];
        for (dict, shape, fortran) in cases {
            let h = parse_header(&npy_bytes(1, dict, &[]), &p()).unwrap();
            assert_eq!(h.shape, shape, "{dict}");
            assert_eq!(h.fortran_order, fortran, "{dict}");
            assert_eq!(h.descr, "<f2");
        }
        // Structured dtypes are kept as text.
        let h = parse_header(
            &npy_bytes(
                1,
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                &[],
            ),
            &p(),
        )
        .unwrap();
        assert_eq!(h.descr, "[('a', '<f4')]");
    }

    #[test]
    fn reports_bad_headers() {
        assert!(format_msg(parse_header(b"PK\x03\x04garbage", &p())).contains("bad magic"));
        assert!(format_msg(parse_header(b"", &p())).contains("empty"));
        assert!(format_msg(parse_header(b"\x93NUM", &p())).contains("header is truncated"));
        assert!(format_msg(parse_header(b"\x93NUMPY\x01", &p())).contains("truncated"));
        assert!(format_msg(parse_header(b"\x93NUMPY\x01\x00\x50", &p())).contains("truncated"));
        assert!(
            format_msg(parse_header(b"\x93NUMPY\x04\x00\x00\x00", &p())).contains("version 4.0")
        );
        let full = npy_bytes(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
            &[],
        );
        assert!(format_msg(parse_header(&full[..30], &p())).contains("header is truncated"));
        let bad = [
            (
                "{'descr': '<f4', 'fortran_order': False}",
                "lacks the 'shape'",
            ),
            (
                "{'descr': '<f4', 'shape': (1, 2)}",
                "lacks the 'fortran_order'",
            ),
            (
                "{'fortran_order': False, 'shape': (1, 2)}",
                "lacks the 'descr'",
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (1, 2)}",
                "True or False",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': [1, 2]}",
                "must be a tuple",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2)}",
                "invalid dimension",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': ('a', 2)}",
                "must hold integers",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2)",
                "unexpected end",
            ),
            ("{'descr': '<f4' 'fortran_order': False}", "expected ','"),
            (
                "{'descr': '<f4, 'fortran_order': False}",
                "malformed header",
            ),
            ("{'descr': '<f4'}, 1", "unexpected text"),
            ("('descr', '<f4')", "not a dict"),
            ("{'descr': __import__('os')}", "unexpected name"),
            ("{'descr': '<f4', 'descr': '<f2'}", "appears twice"),
        ];
        for (dict, want) in bad {
            let msg = format_msg(parse_header(&npy_bytes(1, dict, &[]), &p()));
            assert!(msg.contains(want), "{dict}: {msg}");
        }
    }

    /// Deeply nested containers are an error, not a stack overflow: the literal parser recurses
    /// once per level, and a v2/v3 header may be up to 4 GiB of `(`.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = |levels: usize| {
            format!(
                "{{'descr': {}'<f4'{}, 'fortran_order': False, 'shape': (1,), }}",
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        // Up to the limit (the dict itself is one level), nesting parses; the descr is kept as
        // the text of its literal.
        let h = parse_header(&npy_bytes(2, &deep(literal::MAX_DEPTH - 1), &[]), &p()).unwrap();
        assert!(h.descr.starts_with("[[[") && h.descr.ends_with("]]]"));
        for levels in [literal::MAX_DEPTH, 1_000_000] {
            let msg = format_msg(parse_header(&npy_bytes(2, &deep(levels), &[]), &p()));
            assert!(msg.contains("nested deeper than 128 levels"), "{levels}");
        }
    }

    /// A header of many keys parses in linear time (duplicate keys were found by comparing
    /// each key with every earlier one).
    #[test]
    fn many_keys_parse_in_linear_time() {
        let n = 200_000;
        let mut dict = String::from("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ");
        for i in 0..n {
            dict += &format!("'k{i}': {i}, ");
        }
        dict.push('}');
        let start = std::time::Instant::now();
        let h = parse_header(&npy_bytes(3, &dict, &[]), &p()).unwrap();
        assert_eq!(h.shape, [2]);
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
        dict.insert_str(dict.len() - 1, "'k7': 0, ");
        let msg = format_msg(parse_header(&npy_bytes(3, &dict, &[]), &p()));
        assert!(
            msg.contains("key 'k7' appears twice"),
            "{}",
            &msg[msg.len() - 40..]
        );
    }

    #[test]
    fn shapes_format_like_python() {
        assert_eq!(format_shape(&[]), "()");
        assert_eq!(format_shape(&[3]), "(3,)");
        assert_eq!(format_shape(&[1000, 384]), "(1000, 384)");
    }

    #[test]
    fn writer_pads_to_64_and_round_trips() {
        let arrays = [
            NpyArray::vector(vec![1i64, -2, 3]),
            NpyArray::matrix(vec![1.5f32, -0.25, 3.0, 4.0, 5.0, 6.0], 2, 3).unwrap(),
            NpyArray::vector(vec![true, false, true]),
            NpyArray::vector(Vec::<i64>::new()),
        ];
        for a in arrays {
            let mut buf = Vec::new();
            write_npy(&mut buf, &a).unwrap();
            let h = parse_header(&buf, &p()).unwrap();
            assert_eq!(h.data_offset % 64, 0);
            assert_eq!(buf[h.data_offset - 1], b'\n');
            assert_eq!(h.descr, a.descr());
            assert_eq!(h.shape, a.shape());
            assert_eq!(read_npy(&buf, &p()).unwrap(), a);
        }
    }

    #[test]
    fn array_shape_is_checked() {
        assert!(NpyArray::matrix(vec![1i64, 2, 3], 2, 2).is_err());
        assert!(NpyArray::new(vec![1, 1, 3], vec![1i64, 2, 3]).is_err());
        assert!(NpyArray::new(vec![], vec![1i64]).is_err());
        assert!(NpyArray::new(vec![3, 0], Vec::<f32>::new()).is_ok());
    }
}
