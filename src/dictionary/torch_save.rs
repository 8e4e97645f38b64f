//! A small `torch.save` writer: the zip layout PyTorch reads (`archive/data.pkl`, a pickle of
//! protocol 2; `archive/data/N`, one little-endian storage per tensor, 64-byte aligned;
//! `archive/byteorder`; `archive/version`) for a value made of `None`, booleans, integers,
//! floats, strings, lists, dicts, ordered dicts and f32 CPU tensors. It uses only the opcodes and
//! globals `torch.load(weights_only=True)` accepts (`torch._utils._rebuild_tensor_v2`,
//! `torch.FloatStorage`, `collections.OrderedDict`), so the file loads under PyTorch's safe
//! default.

use crate::error::{Error, Result};
use crate::output::AtomicFile;
use std::io::{Seek, Write};
use std::path::Path;

/// A Python value for [`write`].
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i32),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    Dict(Vec<(String, PyValue)>),
    /// A `collections.OrderedDict` (what `state_dict()` returns).
    OrderedDict(Vec<(String, PyValue)>),
    /// A contiguous f32 tensor of `shape` (row-major `data`).
    Tensor {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
}

impl PyValue {
    pub fn str(s: impl Into<String>) -> Self {
        PyValue::Str(s.into())
    }
}

/// Pickle opcodes (protocol 2).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_LIST: u8 = b']';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEMS: u8 = b'u';
    pub const MARK: u8 = b'(';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const GLOBAL: u8 = b'c';
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
}

struct Pickler {
    out: Vec<u8>,
    storages: Vec<Vec<f32>>,
}

impl Pickler {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(op::GLOBAL);
        self.out
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn int(&mut self, v: i32) {
        self.out.push(op::BININT);
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.out.push(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn items(&mut self, items: &[(String, PyValue)]) -> Result<()> {
        if !items.is_empty() {
            self.out.push(op::MARK);
            for (k, v) in items {
                self.str(k);
                self.value(v)?;
            }
            self.out.push(op::SETITEMS);
        }
        Ok(())
    }

    fn ints(&mut self, v: &[usize]) -> Result<()> {
        self.out.push(op::MARK);
        for &x in v {
            self.int(small(x)?);
        }
        self.out.push(op::TUPLE);
        Ok(())
    }

    fn value(&mut self, v: &PyValue) -> Result<()> {
        match v {
            PyValue::None => self.out.push(op::NONE),
            PyValue::Bool(b) => self.out.push(if *b { op::NEWTRUE } else { op::NEWFALSE }),
            PyValue::Int(i) => self.int(*i),
            PyValue::Float(f) => {
                self.out.push(op::BINFLOAT);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            PyValue::Str(s) => self.str(s),
            PyValue::List(l) => {
                self.out.push(op::EMPTY_LIST);
                if !l.is_empty() {
                    self.out.push(op::MARK);
                    for x in l {
                        self.value(x)?;
                    }
                    self.out.push(op::APPENDS);
                }
            }
            PyValue::Dict(items) => {
                self.out.push(op::EMPTY_DICT);
                self.items(items)?;
            }
            PyValue::OrderedDict(items) => {
                self.global("collections", "OrderedDict");
                self.out.push(op::EMPTY_TUPLE);
                self.out.push(op::REDUCE);
                self.items(items)?;
            }
            PyValue::Tensor { shape, data } => {
                let n: usize = shape.iter().product();
                if n != data.len() {
                    return Err(Error::param(
                        "tensor",
                        format!("shape {shape:?} holds {n} values, the data {}", data.len()),
                    ));
                }
                let key = self.storages.len();
                self.storages.push(data.clone());
                let mut stride = vec![1usize; shape.len()];
                for i in (0..shape.len().saturating_sub(1)).rev() {
                    stride[i] = stride[i + 1] * shape[i + 1];
                }
                // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
                self.global("torch._utils", "_rebuild_tensor_v2");
                self.out.push(op::MARK);
                self.out.push(op::MARK);
                self.str("storage");
                self.global("torch", "FloatStorage");
                self.str(&key.to_string());
                self.str("cpu");
                self.int(small(n)?);
                self.out.push(op::TUPLE);
                self.out.push(op::BINPERSID);
                self.int(0);
                self.ints(shape)?;
                self.ints(&stride)?;
                self.out.push(op::NEWFALSE);
                self.global("collections", "OrderedDict");
                self.out.push(op::EMPTY_TUPLE);
                self.out.push(op::REDUCE);
                self.out.push(op::TUPLE);
                self.out.push(op::REDUCE);
            }
        }
        Ok(())
    }
}

fn small(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| {
        Error::param(
            "tensor",
            format!("{n} is too large for this writer (at most 2^31 - 1)"),
        )
    })
}

/// The pickle bytes of `v` and the storages its tensors refer to (key = index).
fn pickle(v: &PyValue) -> Result<(Vec<u8>, Vec<Vec<f32>>)> {
    let mut p = Pickler {
        out: vec![op::PROTO, 2],
        storages: vec![],
    };
    p.value(v)?;
    p.out.push(op::STOP);
    Ok((p.out, p.storages))
}

fn write_zip<W: Write + Seek>(
    w: W,
    pkl: &[u8],
    storages: &[Vec<f32>],
) -> zip::result::ZipResult<W> {
    let mut zip = zip::ZipWriter::new(w);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644)
        .with_alignment(64);
    zip.start_file("archive/data.pkl", options)?;
    zip.write_all(pkl)?;
    zip.start_file("archive/byteorder", options)?;
    zip.write_all(b"little")?;
    for (i, s) in storages.iter().enumerate() {
        zip.start_file(
            format!("archive/data/{i}"),
            options.large_file(s.len() * 4 >= zip::ZIP64_BYTES_THR as usize),
        )?;
        zip.write_all(bytemuck::cast_slice(s))?;
    }
    zip.start_file("archive/version", options)?;
    zip.write_all(b"3\n")?;
    zip.finish()
}

/// Writes `v` to `path` as `torch.save` would (atomically; an existing file only with
/// `force`).
pub fn write(path: &Path, v: &PyValue, force: bool) -> Result<()> {
    let (pkl, storages) = pickle(v)?;
    let mut file = AtomicFile::create(path, force)?;
    write_zip(&mut file, &pkl, &storages).map_err(|e| match e {
        zip::result::ZipError::Io(e) => Error::io(path, e),
        other => Error::io(path, std::io::Error::other(other)),
    })?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickles_a_dict_with_a_tensor() {
        let v = PyValue::Dict(vec![
            ("a".into(), PyValue::Int(3)),
            (
                "t".into(),
                PyValue::Tensor {
                    shape: vec![2, 3],
                    data: vec![0.0; 6],
                },
            ),
        ]);
        let (p, s) = pickle(&v).unwrap();
        assert_eq!(&p[..3], &[0x80, 2, b'}']);
        assert_eq!(*p.last().unwrap(), b'.');
        assert_eq!(s.len(), 1);
        let bad = PyValue::Tensor {
            shape: vec![2],
            data: vec![0.0; 3],
        };
        assert!(pickle(&bad).is_err());
    }
}
