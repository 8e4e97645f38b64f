//! `.safetensors` activation inputs: the file is memory-mapped and its header parsed and checked
//! by the `safetensors` crate; one 2-D `F32`, `F16` or `BF16` tensor is chosen (see
//! [`choose_tensor`]) and later read in place.
//!
//! Tensor data in a safetensors file need not be aligned to its element size (the offsets are
//! only byte offsets), so rows are always decoded from bytes, never cast in place.

use crate::data::mapped::{map_file, ElemType, MappedMatrix};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// The dtypes accepted for activations, as listed in [`Error::UnsupportedDtype`].
const SUPPORTED: &str = "F32, F16, BF16";

/// The name of the tensor chosen by default.
const DEFAULT_TENSOR: &str = "activations";

/// Maps `path` and selects its activation tensor: `tensor` if given, else the tensor named
/// `activations`, else the only 2-D tensor.
pub(crate) fn open_activations(path: &Path, tensor: Option<&str>) -> Result<MappedMatrix> {
    let map = map_file(path)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| {
        Error::format(
            path,
            format!("not a valid .safetensors file (corrupt or truncated): {e}"),
        )
    })?;

    let mut tensors: Vec<(String, Dtype, Vec<usize>)> = st
        .iter()
        .map(|(name, view)| (name.to_string(), view.dtype(), view.shape().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let name = choose_tensor(path, &tensors, tensor)?;
    let view = st
        .tensor(&name)
        .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;

    let elem = match view.dtype() {
        Dtype::F32 => ElemType::F32,
        Dtype::F16 => ElemType::F16,
        Dtype::BF16 => ElemType::BF16,
        other => {
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: format!("{other} (tensor `{name}`)"),
                supported: SUPPORTED,
            })
        }
    };
    let (rows, dim) = match *view.shape() {
        [n, d] => (n, d),
        _ => {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{name}` has shape {:?}; it must be 2-D (N, D)",
                    view.shape()
                ),
            ))
        }
    };
    if dim == 0 {
        return Err(Error::format(
            path,
            format!("tensor `{name}` has shape [{rows}, 0]; D must be at least 1"),
        ));
    }
    let data = view.data();
    // The view borrows from the map, so its start is an offset into the file.
    let offset = (data.as_ptr() as usize) - (map.as_ptr() as usize);
    let expected = rows
        .checked_mul(dim)
        .and_then(|n| n.checked_mul(elem.size()));
    if expected != Some(data.len()) || offset + data.len() > map.len() {
        return Err(Error::format(
            path,
            format!(
                "tensor `{name}`: shape [{rows}, {dim}] does not match its {} data bytes",
                data.len()
            ),
        ));
    }
    drop(st);
    Ok(MappedMatrix {
        path: path.to_path_buf(),
        offset,
        rows: rows as u64,
        dim,
        elem,
        map,
    })
}

/// Picks the activation tensor among `tensors` (name, dtype, shape; sorted by name):
/// `requested` if given (an error listing the available names if absent), else `activations`
/// if present, else the only 2-D tensor (an error listing the candidates if there are none or
/// several).
fn choose_tensor(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>)],
    requested: Option<&str>,
) -> Result<String> {
    let describe = |list: &mut dyn Iterator<Item = &(String, Dtype, Vec<usize>)>| {
        let items: Vec<String> = list.map(|(n, d, s)| format!("`{n}` {d} {s:?}")).collect();
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    if let Some(want) = requested {
        if tensors.iter().any(|(n, _, _)| n == want) {
            return Ok(want.to_string());
        }
        return Err(Error::format(
            path,
            format!(
                "no tensor named `{want}` (available: {})",
                describe(&mut tensors.iter())
            ),
        ));
    }
    if tensors.iter().any(|(n, _, _)| n == DEFAULT_TENSOR) {
        return Ok(DEFAULT_TENSOR.to_string());
    }
    let two_d: Vec<&(String, Dtype, Vec<usize>)> =
        tensors.iter().filter(|(_, _, s)| s.len() == 2).collect();
    match two_d[..] {
        [only] => Ok(only.0.clone()),
        [] => Err(Error::format(
            path,
            format!(
                "no 2-D tensor to read activations from (tensors: {})",
                describe(&mut tensors.iter())
            ),
        )),
        _ => Err(Error::format(
            path,
            format!(
                "several 2-D tensors and none named `{DEFAULT_TENSOR}`; name the one to read \
                 (candidates: {})",
                describe(&mut two_d.into_iter())
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[usize]) -> (String, Dtype, Vec<usize>) {
        (name.to_string(), Dtype::F32, shape.to_vec())
    }

    fn message(r: Result<String>) -> String {
        match r {
            Err(Error::Format { message, .. }) => message,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn chooses_the_tensor() {
        let p = Path::new("x.safetensors");
        let ts = [t("a", &[2, 3]), t("activations", &[4]), t("b", &[5])];
        assert_eq!(choose_tensor(p, &ts, None).unwrap(), "activations");
        assert_eq!(choose_tensor(p, &ts, Some("a")).unwrap(), "a");
        let m = message(choose_tensor(p, &ts, Some("zz")));
        assert!(
            m.contains("no tensor named `zz`") && m.contains("`b` F32 [5]"),
            "{m}"
        );

        let ts = [t("a", &[2, 3]), t("b", &[5])];
        assert_eq!(choose_tensor(p, &ts, None).unwrap(), "a");
        let ts = [t("a", &[2, 3]), t("b", &[5, 1])];
        let m = message(choose_tensor(p, &ts, None));
        assert!(
            m.contains("several 2-D tensors") && m.contains("`a`") && m.contains("`b`"),
            "{m}"
        );
        let ts = [t("a", &[2, 3, 4])];
        assert!(message(choose_tensor(p, &ts, None)).contains("no 2-D tensor"));
        assert!(message(choose_tensor(p, &[], None)).contains("tensors: none"));
    }
}
