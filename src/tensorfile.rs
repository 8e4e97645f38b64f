//! Reading and writing safetensors files for the crate's own formats (dictionary, calibration).
//!
//! Writing streams each tensor straight into an atomic temporary file (no second copy of a
//! multi-GB dictionary in memory). Tensors are laid out 8-byte dtypes first, then 4-byte, then
//! 1-byte, behind a header padded to 8 bytes, so every tensor is naturally aligned.
//! Reading maps the file and copies tensors out element by element (safe for any alignment).

use crate::error::{Error, Result};
use crate::output::AtomicFile;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Element types written by the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F64,
    I64,
    F32,
    U8,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::F32 => "F32",
            Dtype::U8 => "U8",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 => 4,
            Dtype::U8 => 1,
        }
    }
}

type Writer<'a> = Box<dyn Fn(&mut dyn Write) -> std::io::Result<()> + 'a>;

/// One tensor to write: its shape and a function that writes exactly its bytes.
pub struct TensorOut<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    write: Writer<'a>,
}

impl<'a> TensorOut<'a> {
    /// A tensor produced by `write`, which must emit `numel(shape) × size(dtype)` bytes.
    pub fn streamed(
        name: &str,
        dtype: Dtype,
        shape: Vec<usize>,
        write: impl Fn(&mut dyn Write) -> std::io::Result<()> + 'a,
    ) -> Self {
        TensorOut {
            name: name.into(),
            dtype,
            shape,
            write: Box::new(write),
        }
    }

    /// An f32 tensor from a slice.
    pub fn f32(name: &str, shape: Vec<usize>, data: &'a [f32]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: shape/len"
        );
        Self::streamed(name, Dtype::F32, shape, move |w| {
            write_le(w, data, |v| v.to_le_bytes())
        })
    }

    /// An f64 tensor from a slice.
    pub fn f64(name: &str, shape: Vec<usize>, data: &'a [f64]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: shape/len"
        );
        Self::streamed(name, Dtype::F64, shape, move |w| {
            write_le(w, data, |v| v.to_le_bytes())
        })
    }

    /// An i64 tensor from a slice.
    pub fn i64(name: &str, shape: Vec<usize>, data: &'a [i64]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "{name}: shape/len"
        );
        Self::streamed(name, Dtype::I64, shape, move |w| {
            write_le(w, data, |v| v.to_le_bytes())
        })
    }

    /// A u8 tensor from a slice.
    pub fn u8(name: &str, data: &'a [u8]) -> Self {
        Self::streamed(name, Dtype::U8, vec![data.len()], move |w| {
            w.write_all(data)
        })
    }

    fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes values as little-endian bytes in blocks.
pub fn write_le<T: Copy, const N: usize>(
    w: &mut dyn Write,
    data: &[T],
    bytes: impl Fn(T) -> [u8; N],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(N * 8192);
    for block in data.chunks(8192) {
        buf.clear();
        for &v in block {
            buf.extend_from_slice(&bytes(v));
        }
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Counts bytes written, to check each tensor writer emits exactly its size.
struct Counting<'w> {
    inner: &'w mut AtomicFile,
    n: usize,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a safetensors file atomically.
pub fn write(
    path: &Path,
    mut tensors: Vec<TensorOut<'_>>,
    metadata: &BTreeMap<String, String>,
    force: bool,
) -> Result<()> {
    tensors.sort_by(|a, b| {
        b.dtype
            .size()
            .cmp(&a.dtype.size())
            .then(a.name.cmp(&b.name))
    });
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(metadata).expect("strings"),
    );
    let mut offset = 0usize;
    for t in &tensors {
        let end = offset + t.nbytes();
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("json");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = AtomicFile::create(path, force)?;
    let io = |e| Error::io(path, e);
    f.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&h).map_err(io)?;
    for t in &tensors {
        let mut c = Counting {
            inner: &mut f,
            n: 0,
        };
        (t.write)(&mut c).map_err(io)?;
        assert_eq!(
            c.n,
            t.nbytes(),
            "tensor {} wrote the wrong number of bytes",
            t.name
        );
    }
    f.commit()
}

/// The `__metadata__` of the crate's own files: `format`, `format_version`, and the header
/// as a JSON object under `exemplar`.
pub fn header_metadata(
    format: &str,
    version: u32,
    header: &impl serde::Serialize,
) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), format.to_string());
    meta.insert("format_version".to_string(), version.to_string());
    meta.insert(
        "exemplar".to_string(),
        serde_json::to_string(header).expect("headers serialise"),
    );
    meta
}

/// A safetensors file opened for reading.
pub struct TensorFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// Maps and validates the file's header.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is only read. Another process truncating the file while it is mapped
        // could fault; that is the usual, documented limitation of reading via mmap. The
        // header and every tensor range are validated by safetensors before use.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        // Full validation (offsets inside the buffer, contiguous).
        safetensors::SafeTensors::deserialize(&mmap)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(TensorFile {
            path: path.to_path_buf(),
            mmap,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>> {
        let st = safetensors::SafeTensors::deserialize(&self.mmap)
            .map_err(|e| Error::format(&self.path, e.to_string()))?;
        st.tensor(name)
            .map_err(|_| Error::format(&self.path, format!("missing tensor `{name}`")))
    }

    /// Checks the crate's header keys — `format` must equal `format`, `format_version` must be
    /// at most `version` — and parses the `exemplar` JSON object. `what` names the kind of file
    /// in errors ("dictionary", "calibration").
    pub fn header<T: serde::de::DeserializeOwned>(
        &self,
        format: &str,
        version: u32,
        what: &str,
    ) -> Result<T> {
        let path = &self.path;
        match self.metadata.get("format").map(String::as_str) {
            Some(f) if f == format => {}
            Some(other) => {
                return Err(Error::format(
                    path,
                    format!("this is a `{other}` file, not an exemplar {what}"),
                ))
            }
            None => {
                return Err(Error::format(
                    path,
                    format!("not an exemplar {what} (no `format` in the safetensors metadata)"),
                ))
            }
        }
        let found: u32 = self
            .metadata
            .get("format_version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::format(path, "missing or invalid `format_version`"))?;
        if found > version {
            return Err(Error::format(
                path,
                format!("format version {found} is newer than this exemplar reads ({version}); upgrade exemplar"),
            ));
        }
        let json = self
            .metadata
            .get("exemplar")
            .ok_or_else(|| Error::format(path, "missing `exemplar` metadata"))?;
        serde_json::from_str(json)
            .map_err(|e| Error::format(path, format!("invalid `exemplar` metadata: {e}")))
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.view(name).is_ok()
    }

    fn read<T, const N: usize>(
        &self,
        name: &str,
        dtype: safetensors::Dtype,
        shape: &[usize],
        conv: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let v = self.view(name)?;
        if v.dtype() != dtype {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor `{name}` has dtype {:?}, expected {dtype:?}",
                    v.dtype()
                ),
            ));
        }
        if v.shape() != shape {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    v.shape()
                ),
            ));
        }
        Ok(v.data()
            .chunks_exact(N)
            .map(|c| conv(c.try_into().expect("chunk of N")))
            .collect())
    }

    /// The shape of a tensor.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.view(name)?.shape().to_vec())
    }

    /// An f32 tensor of the given shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.read(name, safetensors::Dtype::F32, shape, f32::from_le_bytes)
    }

    /// A float tensor of any float dtype (F32, F16, BF16, F64) up- or down-cast to f32, with its
    /// shape. For files other tools wrote (SAE weights), whose dtype we do not choose.
    pub fn f32_any(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        use safetensors::Dtype;
        let v = self.view(name)?;
        let shape = v.shape().to_vec();
        let data = v.data();
        let out: Vec<f32> = match v.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::format(
                    &self.path,
                    format!("tensor `{name}` has dtype {other:?}; expected a float tensor"),
                ))
            }
        };
        Ok((out, shape))
    }

    /// An f64 tensor of the given shape.
    pub fn f64(&self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        self.read(name, safetensors::Dtype::F64, shape, f64::from_le_bytes)
    }

    /// An i64 tensor of the given shape.
    pub fn i64(&self, name: &str, shape: &[usize]) -> Result<Vec<i64>> {
        self.read(name, safetensors::Dtype::I64, shape, i64::from_le_bytes)
    }

    /// A 1-D u8 tensor of any length.
    pub fn u8(&self, name: &str) -> Result<Vec<u8>> {
        let n = self.shape(name)?;
        self.read(name, safetensors::Dtype::U8, &n, |b: [u8; 1]| b[0])
    }
}
