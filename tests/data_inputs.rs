//! Integration tests of the activation inputs: `.npy` and `.safetensors` files written byte by
//! byte here, provenance sidecars, the stream's batching, errors and fingerprint, and the
//! `.npy`/`.npz` writers.

use exemplar::data::npy::{self, NpyArray, NpyData};
use exemplar::data::{ActivationBatch, ActivationStream, StreamOptions, TokenRef};
use exemplar::Error;
use half::{bf16, f16};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

mod common;
use common::{python, run_python, write_npy_raw};

// ---------------------------------------------------------------------------------------------
// File builders

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
        .collect()
}

fn npy_f32(path: &Path, rows: usize, dim: usize, v: &[f32]) {
    assert_eq!(v.len(), rows * dim);
    write_npy_raw(
        path,
        "<f4",
        false,
        &format!("({rows}, {dim})"),
        &f32_bytes(v),
    );
}

fn npy_f16(path: &Path, rows: usize, dim: usize, v: &[f32]) {
    assert_eq!(v.len(), rows * dim);
    write_npy_raw(
        path,
        "<f2",
        false,
        &format!("({rows}, {dim})"),
        &f16_bytes(v),
    );
}

/// A `.safetensors` file written by hand: tensors `(name, dtype, shape, bytes)` stored in this
/// order, the JSON header padded with `pad` spaces.
fn st_raw(path: &Path, tensors: &[(&str, &str, &[usize], Vec<u8>)], pad: usize) -> usize {
    let mut entries = Vec::new();
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            shape.join(","),
            offset + bytes.len()
        ));
        offset += bytes.len();
    }
    let mut header = format!("{{{}}}", entries.join(","));
    header.push_str(&" ".repeat(pad));
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out).unwrap();
    8 + header.len()
}

fn sidecar(path: &Path, lines: &[&str]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(exemplar::data::provenance::sidecar_path(path), s).unwrap();
}

fn open(paths: &[PathBuf]) -> exemplar::Result<ActivationStream> {
    ActivationStream::open(paths, StreamOptions::default())
}

fn open_one(path: &Path) -> exemplar::Result<ActivationStream> {
    open(&[path.to_path_buf()])
}

/// All batches of `batch` rows, and all the data concatenated.
fn drain(stream: &mut ActivationStream, batch: usize) -> (Vec<ActivationBatch>, Vec<f32>) {
    let mut batches = Vec::new();
    let mut all = Vec::new();
    while let Some(b) = stream.next_batch(batch).unwrap() {
        assert_eq!(b.data.len(), b.rows() * b.dim);
        all.extend_from_slice(&b.data);
        batches.push(b);
    }
    (batches, all)
}

/// The message of a format error, checking that it names `path`.
fn format_error(err: Error, path: &Path) -> String {
    match err {
        Error::Format { path: p, message } => {
            assert_eq!(p, path, "{message}");
            message
        }
        other => panic!(
            "expected a format error naming {}, got {other}",
            path.display()
        ),
    }
}

/// Values exactly representable in f16 and bf16.
fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 - 7.0) * 0.375 + seed).collect()
}

// ---------------------------------------------------------------------------------------------
// Formats and values

#[test]
fn npy_f32_and_f16_round_trip() {
    let dir = TempDir::new().unwrap();
    let v = values(12, 0.5);
    let a = dir.path().join("a.npy");
    npy_f32(&a, 4, 3, &v);
    let b = dir.path().join("b.npy");
    npy_f16(&b, 4, 3, &v);
    for p in [a, b] {
        let mut s = open(&[p]).unwrap();
        assert_eq!((s.dim(), s.total_rows()), (3, 4));
        assert!(!s.has_provenance());
        let (batches, all) = drain(&mut s, 100);
        assert_eq!(batches.len(), 1);
        assert_eq!(all, v);
        assert_eq!(batches[0].stream_rows, [0, 1, 2, 3]);
        assert_eq!(batches[0].new_tokens, 4);
        assert!(batches[0].tokens.is_none() && batches[0].documents.is_empty());
        assert_eq!(s.rows_streamed(), 4);
    }
}

#[test]
fn npy_versions_2_and_3_are_read() {
    let dir = TempDir::new().unwrap();
    for version in [2u8, 3] {
        let p = dir.path().join(format!("v{version}.npy"));
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }\n";
        let mut out = vec![0x93, b'N', b'U', b'M', b'P', b'Y', version, 0];
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(&f32_bytes(&[1.5, -2.0]));
        std::fs::write(&p, out).unwrap();
        let (_, all) = drain(&mut open(&[p]).unwrap(), 8);
        assert_eq!(all, [1.5, -2.0]);
    }
}

#[test]
fn safetensors_f32_f16_bf16_round_trip() {
    let dir = TempDir::new().unwrap();
    let v = values(10, 0.25);
    let cases = [
        ("F32", f32_bytes(&v)),
        ("F16", f16_bytes(&v)),
        ("BF16", bf16_bytes(&v)),
    ];
    for (dtype, bytes) in cases {
        let p = dir.path().join(format!("{dtype}.safetensors"));
        st_raw(&p, &[("activations", dtype, &[5, 2], bytes)], 0);
        let mut s = open(&[p]).unwrap();
        assert_eq!((s.dim(), s.total_rows()), (2, 5));
        let (_, all) = drain(&mut s, 3);
        assert_eq!(all, v, "{dtype}");
    }

    // A file written by the safetensors crate itself, with another tensor beside ours.
    let p = dir.path().join("crate.safetensors");
    let acts = f32_bytes(&v);
    let other = f32_bytes(&[1.0, 2.0]);
    let views = [
        (
            "activations",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 5], &acts)
                .unwrap(),
        ),
        (
            "bias",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &other).unwrap(),
        ),
    ];
    std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
    let (_, all) = drain(&mut open(&[p]).unwrap(), 64);
    assert_eq!(all, v);
}

#[test]
fn misaligned_safetensors_data_is_read_correctly() {
    let dir = TempDir::new().unwrap();
    let v = values(6, -1.0);
    let mut offsets = Vec::new();
    for (dtype, bytes) in [
        ("F32", f32_bytes(&v)),
        ("BF16", bf16_bytes(&v)),
        ("F16", f16_bytes(&v)),
    ] {
        for pad in 0..4 {
            let p = dir.path().join(format!("mis-{dtype}-{pad}.safetensors"));
            // An odd-sized F16 tensor first, so the activations start at an odd or merely
            // 2-aligned offset.
            let header_end = st_raw(
                &p,
                &[
                    ("a", "F16", &[3], f16_bytes(&[1.0, 2.0, 3.0])),
                    ("b", "U8", &[1], vec![7]),
                    ("activations", dtype, &[2, 3], bytes.clone()),
                ],
                pad,
            );
            let data_offset = header_end + 6 + 1;
            offsets.push(data_offset % 4);
            let mut s = open_one(&p).unwrap();
            let (_, all) = drain(&mut s, 1);
            assert_eq!(all, v, "{dtype} at offset {data_offset}");
        }
    }
    // The layouts above put the data at every offset modulo 4 (odd ones included).
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets, [0, 1, 2, 3]);
}

#[test]
fn safetensors_tensor_choice() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("two.safetensors");
    st_raw(
        &p,
        &[
            ("layer1", "F32", &[2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
            ("layer2", "F32", &[1, 3], f32_bytes(&[5.0, 6.0, 7.0])),
        ],
        0,
    );
    let msg = format_error(open_one(&p).unwrap_err(), &p);
    assert!(
        msg.contains("several 2-D tensors") && msg.contains("layer1") && msg.contains("layer2"),
        "{msg}"
    );

    let options = StreamOptions {
        tensor: Some("layer2".into()),
        ..Default::default()
    };
    let mut s = ActivationStream::open(std::slice::from_ref(&p), options).unwrap();
    assert_eq!(s.dim(), 3);
    assert_eq!(drain(&mut s, 10).1, [5.0, 6.0, 7.0]);

    let options = StreamOptions {
        tensor: Some("nope".into()),
        ..Default::default()
    };
    let msg = format_error(
        ActivationStream::open(std::slice::from_ref(&p), options).unwrap_err(),
        &p,
    );
    assert!(
        msg.contains("no tensor named `nope`") && msg.contains("layer1"),
        "{msg}"
    );

    // The only 2-D tensor is chosen.
    let q = dir.path().join("one.safetensors");
    st_raw(
        &q,
        &[
            ("bias", "F32", &[2], f32_bytes(&[0.0, 0.0])),
            ("hidden", "F32", &[1, 2], f32_bytes(&[8.0, 9.0])),
        ],
        0,
    );
    assert_eq!(drain(&mut open(&[q]).unwrap(), 10).1, [8.0, 9.0]);
}

// ---------------------------------------------------------------------------------------------
// Several files

#[test]
fn files_stream_in_order_across_batch_boundaries() {
    let dir = TempDir::new().unwrap();
    let (va, vb, vc) = (values(9, 0.0), values(12, 16.0), values(6, -50.0));
    let a = dir.path().join("a.npy");
    npy_f32(&a, 3, 3, &va);
    let empty = dir.path().join("empty.npy");
    npy_f32(&empty, 0, 3, &[]);
    let b = dir.path().join("b.safetensors");
    st_raw(&b, &[("activations", "BF16", &[4, 3], bf16_bytes(&vb))], 0);
    let c = dir.path().join("c.npy");
    npy_f16(&c, 2, 3, &vc);
    let paths = vec![a.clone(), empty, b.clone(), c.clone()];
    let mut s = open(&paths).unwrap();
    assert_eq!(s.total_rows(), 9);
    assert_eq!(s.paths(), &paths[..]);
    let (batches, all) = drain(&mut s, 4);
    let sizes: Vec<usize> = batches.iter().map(|b| b.rows()).collect();
    assert_eq!(sizes, [4, 4, 1]);
    let rows: Vec<u64> = batches.iter().flat_map(|b| b.stream_rows.clone()).collect();
    assert_eq!(rows, (0..9).collect::<Vec<u64>>());
    let expected: Vec<f32> = [va, vb, vc].concat();
    assert_eq!(all, expected);
    assert_eq!(batches[1].row(0), &expected[12..15]);
    assert_eq!(batches.iter().map(|b| b.new_tokens).sum::<u64>(), 9);
    assert!(s.next_batch(4).unwrap().is_none());

    assert_eq!(s.locate(0), (a.as_path(), 0));
    assert_eq!(s.locate(2), (a.as_path(), 2));
    assert_eq!(s.locate(3), (b.as_path(), 0));
    assert_eq!(s.locate(6), (b.as_path(), 3));
    assert_eq!(s.locate(8), (c.as_path(), 1));
}

#[test]
fn dimension_mismatch_names_the_second_file() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.npy");
    npy_f32(&a, 1, 3, &[1.0, 2.0, 3.0]);
    let b = dir.path().join("b.npy");
    npy_f32(&b, 1, 2, &[1.0, 2.0]);
    match open(&[a, b.clone()]).unwrap_err() {
        Error::DimensionMismatch {
            what,
            expected,
            found,
        } => {
            assert!(what.contains("b.npy"), "{what}");
            assert_eq!((expected, found), (3, 2));
        }
        other => panic!("{other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Bad files

#[test]
fn truncated_and_oversized_files_are_format_errors() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("t.npy");
    let data = f16_bytes(&values(12, 0.0));
    write_npy_raw(&p, "<f2", false, "(4, 3)", &data[..data.len() - 2]);
    let msg = format_error(open_one(&p).unwrap_err(), &p);
    assert_eq!(
        msg,
        "file is truncated: header says 4 × 3 f16 = 24 data bytes, file holds 22"
    );
    write_npy_raw(
        &p,
        "<f2",
        false,
        "(4, 3)",
        &[data.clone(), vec![0, 0]].concat(),
    );
    let msg = format_error(open_one(&p).unwrap_err(), &p);
    assert!(
        msg.contains("extra bytes") && msg.contains("file holds 26"),
        "{msg}"
    );
    // Header cut short.
    write_npy_raw(&p, "<f2", false, "(4, 3)", &data);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..40]).unwrap();
    assert!(format_error(open_one(&p).unwrap_err(), &p).contains("header is truncated"));

    let s = dir.path().join("t.safetensors");
    st_raw(
        &s,
        &[(
            "activations",
            "F32",
            &[2, 2],
            f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        )],
        0,
    );
    let bytes = std::fs::read(&s).unwrap();
    for cut in [bytes.len() - 1, 20, 4] {
        std::fs::write(&s, &bytes[..cut]).unwrap();
        let msg = format_error(open_one(&s).unwrap_err(), &s);
        assert!(msg.contains("safetensors"), "{msg}");
    }
    // Data offsets that disagree with the shape.
    let h = "{\"activations\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}";
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&[0; 12]);
    std::fs::write(&s, out).unwrap();
    format_error(open_one(&s).unwrap_err(), &s);
}

#[test]
fn garbage_files_are_format_errors() {
    let dir = TempDir::new().unwrap();
    let junk: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
    for name in ["g.npy", "g.safetensors", "g.bin"] {
        let p = dir.path().join(name);
        std::fs::write(&p, &junk).unwrap();
        let msg = format_error(open_one(&p).unwrap_err(), &p);
        match name {
            "g.npy" => assert!(msg.contains("not a .npy file (bad magic)"), "{msg}"),
            "g.bin" => assert!(msg.contains("unrecognized input format"), "{msg}"),
            _ => {}
        }
    }
    let empty = dir.path().join("zero.npy");
    std::fs::write(&empty, b"").unwrap();
    format_error(open_one(&empty).unwrap_err(), &empty);
    // A .npy file without its usual extension is recognized by its magic.
    let p = dir.path().join("acts.data");
    npy_f32(&p, 1, 2, &[1.0, 2.0]);
    assert_eq!(drain(&mut open(&[p]).unwrap(), 10).1, [1.0, 2.0]);
    // A missing file is an I/O error naming it.
    let missing = dir.path().join("missing.npy");
    match open_one(&missing).unwrap_err() {
        Error::Io { path, .. } => assert_eq!(path, missing),
        other => panic!("{other}"),
    }
}

#[test]
fn unsupported_dtypes_are_rejected() {
    let dir = TempDir::new().unwrap();
    for (i, (descr, size)) in [("<f8", 8), ("<i4", 4), (">f4", 4), ("<i8", 8), ("|b1", 1)]
        .into_iter()
        .enumerate()
    {
        let p = dir.path().join(format!("d{i}.npy"));
        write_npy_raw(&p, descr, false, "(2, 2)", &vec![0; 4 * size]);
        match open_one(&p).unwrap_err() {
            Error::UnsupportedDtype {
                path,
                dtype,
                supported,
            } => {
                assert_eq!(path, p);
                assert_eq!(dtype, descr);
                assert!(supported.contains("<f4") && supported.contains("<f2"));
            }
            other => panic!("{descr}: {other}"),
        }
    }
    for (dtype, size) in [("I64", 8), ("F64", 8), ("U8", 1)] {
        let p = dir.path().join(format!("{dtype}.safetensors"));
        st_raw(&p, &[("activations", dtype, &[2, 2], vec![0; 4 * size])], 0);
        match open_one(&p).unwrap_err() {
            Error::UnsupportedDtype {
                path,
                dtype: d,
                supported,
            } => {
                assert_eq!(path, p);
                assert!(d.contains(dtype), "{d}");
                assert!(supported.contains("BF16"));
            }
            other => panic!("{dtype}: {other}"),
        }
    }
}

#[test]
fn non_2d_and_fortran_arrays_are_rejected() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("x.npy");
    write_npy_raw(&p, "<f4", false, "(3,)", &f32_bytes(&[1.0, 2.0, 3.0]));
    assert_eq!(
        format_error(open_one(&p).unwrap_err(), &p),
        "shape must be 2-D (N, D), found (3,)"
    );
    write_npy_raw(&p, "<f4", false, "(1, 2, 2)", &f32_bytes(&[1.0; 4]));
    assert_eq!(
        format_error(open_one(&p).unwrap_err(), &p),
        "shape must be 2-D (N, D), found (1, 2, 2)"
    );
    write_npy_raw(&p, "<f4", true, "(2, 2)", &f32_bytes(&[1.0; 4]));
    assert_eq!(
        format_error(open_one(&p).unwrap_err(), &p),
        "fortran_order arrays are not supported; save with np.ascontiguousarray"
    );
    write_npy_raw(&p, "<f4", false, "(2, 0)", &[]);
    assert!(format_error(open_one(&p).unwrap_err(), &p).contains("D must be at least 1"));

    let s = dir.path().join("x.safetensors");
    for shape in [&[4][..], &[1, 2, 2][..]] {
        st_raw(
            &s,
            &[("activations", "F32", shape, f32_bytes(&[1.0; 4]))],
            0,
        );
        let msg = format_error(open_one(&s).unwrap_err(), &s);
        assert!(msg.contains("must be 2-D"), "{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Non-finite rows, empty inputs, parameters

#[test]
fn nonfinite_row_error_names_file_and_row() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.npy");
    npy_f32(&a, 2, 2, &[1.0, 2.0, 3.0, 4.0]);
    let b = dir.path().join("b.npy");
    npy_f32(&b, 3, 2, &[1.0, 2.0, 3.0, f32::NAN, 5.0, 6.0]);
    let mut s = open(&[a, b.clone()]).unwrap();
    let mut err = None;
    while err.is_none() {
        match s.next_batch(2) {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the NaN row was not reported"),
            Err(e) => err = Some(e),
        }
    }
    match err.unwrap() {
        Error::NonFinite { path, row } => {
            assert_eq!(path, b);
            assert_eq!(row, 1);
        }
        other => panic!("{other}"),
    }
    // Inf in an f16 file, too.
    let c = dir.path().join("c.npy");
    npy_f16(&c, 2, 2, &[1.0, f32::INFINITY, 3.0, 4.0]);
    let mut s = open_one(&c).unwrap();
    assert!(matches!(
        s.next_batch(10),
        Err(Error::NonFinite { row: 0, .. })
    ));
}

#[test]
fn skip_nonfinite_drops_and_counts() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.npy");
    let nan = f32::NAN;
    #[rustfmt::skip]
    let v = [
        1.0, 1.0,
        nan, 2.0,
        3.0, 3.0,
        4.0, f32::NEG_INFINITY,
        5.0, 5.0,
        6.0, 6.0,
    ];
    npy_f32(&a, 6, 2, &v);
    let b = dir.path().join("b.npy");
    npy_f32(&b, 2, 2, &[nan, nan, nan, 0.0]);
    let options = StreamOptions {
        skip_nonfinite: true,
        ..Default::default()
    };
    let mut s = ActivationStream::open(&[a, b], options).unwrap();
    let first = s.next_batch(3).unwrap().unwrap();
    assert_eq!(first.stream_rows, [0, 2, 4]);
    assert_eq!(first.data, [1.0, 1.0, 3.0, 3.0, 5.0, 5.0]);
    assert_eq!(first.skipped_nonfinite, 2);
    assert_eq!(first.new_tokens, 3);
    assert_eq!(s.skipped_nonfinite(), 2);
    assert_eq!(s.rows_streamed(), 5);
    let second = s.next_batch(3).unwrap().unwrap();
    assert_eq!(second.stream_rows, [5]);
    assert_eq!(second.skipped_nonfinite, 2);
    assert!(s.next_batch(3).unwrap().is_none());
    assert_eq!(s.skipped_nonfinite(), 4);
    assert_eq!(s.rows_streamed(), 8);
}

#[test]
fn empty_inputs_and_bad_parameters() {
    let dir = TempDir::new().unwrap();
    assert!(matches!(open(&[]).unwrap_err(), Error::EmptyInput(_)));
    let a = dir.path().join("a.npy");
    npy_f32(&a, 0, 4, &[]);
    let b = dir.path().join("b.safetensors");
    st_raw(&b, &[("activations", "F16", &[0, 4], vec![])], 0);
    match open(&[a.clone(), b.clone()]).unwrap_err() {
        Error::EmptyInput(m) => assert!(m.contains("a.npy") && m.contains("b.safetensors"), "{m}"),
        other => panic!("{other}"),
    }
    let c = dir.path().join("c.npy");
    npy_f32(&c, 1, 4, &[1.0; 4]);
    let mut s = open(&[a, c]).unwrap();
    assert!(matches!(
        s.next_batch(0).unwrap_err(),
        Error::InvalidParameter { .. }
    ));
    assert_eq!(s.next_batch(usize::MAX).unwrap().unwrap().rows(), 1);
}

// ---------------------------------------------------------------------------------------------
// Provenance

#[test]
fn provenance_attaches_to_rows_across_batches() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.npy");
    npy_f32(&a, 5, 1, &[0.0, 1.0, 2.0, 3.0, 4.0]);
    sidecar(
        &a,
        &[
            r#"{"doc_id": 10, "tokens": ["<bos>", "x", "y", "z"], "positions": [1, 2, 3], "text": "xyz"}"#,
            r#"{"doc_id": 11, "tokens": ["<bos>"], "positions": []}"#,
            r#"{"doc_id": 12, "tokens": ["<bos>", "p", "q"], "positions": [0, 2]}"#,
        ],
    );
    let b = dir.path().join("b.safetensors");
    st_raw(
        &b,
        &[("activations", "F32", &[2, 1], f32_bytes(&[5.0, 6.0]))],
        0,
    );
    sidecar(
        &b,
        &[r#"{"doc_id": 3, "tokens": ["<bos>", "k", "l", "m", "n"], "positions": [2, 4]}"#],
    );

    let mut s = open(&[a, b]).unwrap();
    assert!(s.has_provenance());
    let (batches, all) = drain(&mut s, 2);
    assert_eq!(all, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let tokens: Vec<TokenRef> = batches
        .iter()
        .flat_map(|b| b.tokens.clone().unwrap())
        .collect();
    let expected: Vec<TokenRef> = [(10, 1), (10, 2), (10, 3), (12, 0), (12, 2), (3, 2), (3, 4)]
        .into_iter()
        .map(|(doc_id, position)| TokenRef { doc_id, position })
        .collect();
    assert_eq!(tokens, expected);
    let docs: Vec<Vec<i64>> = batches
        .iter()
        .map(|b| b.documents.iter().map(|d| d.doc_id).collect())
        .collect();
    assert_eq!(docs, [vec![10], vec![10, 12], vec![12, 3], vec![3]]);
    assert_eq!(batches[0].documents[0].tokens, ["<bos>", "x", "y", "z"]);
    let new_tokens: Vec<u64> = batches.iter().map(|b| b.new_tokens).collect();
    // Each document's tokens (BOS included) are counted once, in the batch of its first row;
    // document 11 has no row and is never counted.
    assert_eq!(new_tokens, [4, 3, 5, 0]);
}

#[test]
fn provenance_skips_documents_whose_rows_are_all_dropped() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.npy");
    npy_f32(&a, 3, 1, &[f32::NAN, 1.0, 2.0]);
    sidecar(
        &a,
        &[
            r#"{"doc_id": 0, "tokens": ["<bos>", "a"], "positions": [1]}"#,
            r#"{"doc_id": 1, "tokens": ["<bos>", "b", "c"], "positions": [1, 2]}"#,
        ],
    );
    let options = StreamOptions {
        skip_nonfinite: true,
        ..Default::default()
    };
    let mut s = ActivationStream::open(&[a], options).unwrap();
    let b = s.next_batch(10).unwrap().unwrap();
    assert_eq!(b.stream_rows, [1, 2]);
    assert_eq!(b.documents.len(), 1);
    assert_eq!(b.documents[0].doc_id, 1);
    assert_eq!(b.new_tokens, 3);
    assert_eq!(
        b.tokens.unwrap(),
        [
            TokenRef {
                doc_id: 1,
                position: 1
            },
            TokenRef {
                doc_id: 1,
                position: 2
            }
        ]
    );
}

#[test]
fn bad_sidecars_name_the_sidecar_and_line() {
    let dir = TempDir::new().unwrap();
    let good = r#"{"doc_id": 1, "tokens": ["<bos>", "a", "b"], "positions": [1, 2]}"#;
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                good,
                r#"{"doc_id": 2, "tokens": ["<bos>"], "positions": [0]"#,
            ],
            "line 2: invalid JSON",
        ),
        (
            &[r#"{"doc_id": 2, "positions": [0, 1, 2]}"#],
            "line 1: missing field `tokens`",
        ),
        (
            &[r#"{"doc_id": 2, "tokens": ["a","b","c","d","e","f"], "positions": [0, 5, 5]}"#],
            "line 1: `positions` must be strictly increasing (5 after 5)",
        ),
        (
            &[
                good,
                r#"{"doc_id": 2, "tokens": ["<bos>"], "positions": [1]}"#,
            ],
            "line 2: `positions[0]` = 1 is out of range",
        ),
        (
            &[
                good,
                "",
                r#"{"doc_id": 2, "tokens": ["<bos>"], "positions": [0]}"#,
            ],
            "line 2: blank line",
        ),
        (
            &[
                good,
                r#"{"doc_id": 1, "tokens": ["<bos>"], "positions": [0]}"#,
            ],
            "line 2: doc_id 1 appears twice (first at line 1 of",
        ),
        (&[good], "describes 2 rows"),
        (
            &[
                good,
                r#"{"doc_id": 2, "tokens": ["<bos>", "a"], "positions": [0, 1]}"#,
            ],
            "describes 4 rows",
        ),
    ];
    let a = dir.path().join("a.npy");
    npy_f32(&a, 3, 1, &[1.0, 2.0, 3.0]);
    let side = exemplar::data::provenance::sidecar_path(&a);
    for (lines, want) in cases {
        sidecar(&a, lines);
        let msg = format_error(open_one(&a).unwrap_err(), &side);
        assert!(msg.contains(want), "{want}: {msg}");
    }
    // Not UTF-8.
    std::fs::write(
        &side,
        b"{\"doc_id\": 1, \"tokens\": [\"\xff\xfe\"], \"positions\": [0]}\n",
    )
    .unwrap();
    assert!(format_error(open_one(&a).unwrap_err(), &side).contains("line 1: not valid UTF-8"));

    // A doc_id repeated across files names both sidecars.
    sidecar(
        &a,
        &[r#"{"doc_id": 7, "tokens": ["<bos>", "a", "b"], "positions": [0, 1, 2]}"#],
    );
    let b = dir.path().join("b.npy");
    npy_f32(&b, 1, 1, &[4.0]);
    sidecar(
        &b,
        &[
            r#"{"doc_id": 8, "tokens": ["x"], "positions": [0]}"#,
            r#"{"doc_id": 7, "tokens": ["x"], "positions": []}"#,
        ],
    );
    let side_b = exemplar::data::provenance::sidecar_path(&b);
    let msg = format_error(open(&[a.clone(), b.clone()]).unwrap_err(), &side_b);
    assert!(
        msg.starts_with("line 2: doc_id 7 appears twice (first at line 1 of")
            && msg.contains("a.npy.provenance.jsonl"),
        "{msg}"
    );

    // Mixed presence names the file lacking a sidecar.
    std::fs::remove_file(&side_b).unwrap();
    let msg = format_error(open(&[a.clone(), b.clone()]).unwrap_err(), &b);
    assert!(msg.contains("no provenance sidecar"), "{msg}");
    let msg = format_error(open(&[b.clone(), a.clone()]).unwrap_err(), &b);
    assert!(msg.contains("no provenance sidecar"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Rewind and fingerprint

#[test]
fn rewind_restarts_and_fingerprint_is_stable() {
    let dir = TempDir::new().unwrap();
    let a = dir.path().join("a.npy");
    let v = values(12, 0.0);
    npy_f32(&a, 4, 3, &v);
    let b = dir.path().join("b.safetensors");
    st_raw(
        &b,
        &[("activations", "F16", &[2, 3], f16_bytes(&v[..6]))],
        3,
    );
    let paths = vec![a.clone(), b];

    let mut s = open(&paths).unwrap();
    let empty_fp = s.fingerprint();
    assert_eq!(empty_fp.len(), 64);
    let (_, first) = drain(&mut s, 5);
    let fp = s.fingerprint();
    assert_ne!(fp, empty_fp);
    assert_eq!(s.rows_streamed(), 6);
    s.rewind().unwrap();
    assert_eq!(s.rows_streamed(), 0);
    assert_eq!(s.fingerprint(), empty_fp);
    let (_, second) = drain(&mut s, 2);
    assert_eq!(first, second);
    assert_eq!(
        s.fingerprint(),
        fp,
        "same data, other batch size: same fingerprint"
    );
    let mut fresh = open(&paths).unwrap();
    drain(&mut fresh, 100);
    assert_eq!(fresh.fingerprint(), fp);

    // One value changed: another fingerprint.
    let mut w = v.clone();
    w[7] += 1.0;
    npy_f32(&a, 4, 3, &w);
    let mut changed = open(&paths).unwrap();
    drain(&mut changed, 100);
    assert_ne!(changed.fingerprint(), fp);
}

// ---------------------------------------------------------------------------------------------
// Writers

#[test]
fn npz_writer_round_trips_and_never_overwrites_without_force() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("out.npz");
    let arrays = [
        ("assignments", NpyArray::vector(vec![0i64, -1, 5, 2])),
        (
            "scores",
            NpyArray::matrix(vec![0.5f32, -1.25, 2.0, 3.5, 4.0, 5.0], 3, 2).unwrap(),
        ),
        ("mask", NpyArray::vector(vec![true, false, true])),
    ];
    npy::write_npz(&p, &arrays, false).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(&bytes[..4], b"PK\x03\x04");

    // Read back through the zip crate, parsing each member with the header parser.
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    assert_eq!(names.len(), 3);
    for (name, array) in &arrays {
        let mut member = zip.by_name(&format!("{name}.npy")).unwrap();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut buf).unwrap();
        let header = npy::parse_header(&buf, Path::new(name)).unwrap();
        assert_eq!(header.descr, array.descr());
        assert!(!header.fortran_order);
        assert_eq!(header.shape, array.shape());
        assert_eq!(header.data_offset % 64, 0);
        assert_eq!(&npy::read_npy(&buf, Path::new(name)).unwrap(), array);
    }
    let back = npy::read_npz(&p).unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back[0].0, "assignments");
    assert_eq!(back[0].1.data(), &NpyData::I64(vec![0, -1, 5, 2]));

    // No overwrite without force; the file is unchanged.
    let other = [("x", NpyArray::vector(vec![1.0f32]))];
    assert!(matches!(
        npy::write_npz(&p, &other, false).unwrap_err(),
        Error::OutputExists(_)
    ));
    assert_eq!(std::fs::read(&p).unwrap(), bytes);
    npy::write_npz(&p, &other, true).unwrap();
    assert_eq!(npy::read_npz(&p).unwrap()[0].0, "x");

    // Bad member names.
    let q = dir.path().join("bad.npz");
    let dup = [
        ("a", NpyArray::vector(vec![1i64])),
        ("a", NpyArray::vector(vec![2i64])),
    ];
    assert!(matches!(
        npy::write_npz(&q, &dup, false).unwrap_err(),
        Error::InvalidParameter { .. }
    ));
    assert!(!q.exists());

    // An empty archive is valid.
    npy::write_npz(&q, &[], false).unwrap();
    assert!(npy::read_npz(&q).unwrap().is_empty());

    // Single .npy files.
    let n = dir.path().join("rows.npy");
    let arr = NpyArray::vector(vec![3i64, 1, 4, 1, 5]);
    npy::write_npy_file(&n, &arr, false).unwrap();
    assert_eq!(npy::read_npy(&std::fs::read(&n).unwrap(), &n).unwrap(), arr);
    assert!(matches!(
        npy::write_npy_file(&n, &arr, false).unwrap_err(),
        Error::OutputExists(_)
    ));
    npy::write_npy_file(&n, &NpyArray::vector(vec![9i64]), true).unwrap();
    assert_eq!(
        npy::read_npy(&std::fs::read(&n).unwrap(), &n)
            .unwrap()
            .data(),
        &NpyData::I64(vec![9])
    );
    // Written f32 matrices are valid activation inputs.
    let m = dir.path().join("m.npy");
    npy::write_npy_file(
        &m,
        &NpyArray::matrix(vec![1.0f32, 2.0, 3.0, 4.0], 2, 2).unwrap(),
        false,
    )
    .unwrap();
    assert_eq!(drain(&mut open(&[m]).unwrap(), 1).1, [1.0, 2.0, 3.0, 4.0]);
}

/// The arrays of the numpy checks below: every dtype and rank the writer handles, empty ones,
/// and values numpy must read back exactly.
fn numpy_check_arrays() -> Vec<(&'static str, NpyArray)> {
    vec![
        (
            "ids",
            NpyArray::vector(vec![0i64, -1, i64::MAX, i64::MIN, 7]),
        ),
        (
            "distances",
            NpyArray::vector(vec![0.0f32, 1.5, -2.25, f32::NAN, f32::INFINITY]),
        ),
        (
            "codes",
            NpyArray::matrix((0..12).map(|i| i as f32 * 0.5).collect::<Vec<f32>>(), 3, 4).unwrap(),
        ),
        (
            "within_threshold",
            NpyArray::vector(vec![true, false, true]),
        ),
        ("empty", NpyArray::vector(Vec::<i64>::new())),
        (
            "no_rows",
            NpyArray::matrix(Vec::<f32>::new(), 0, 3).unwrap(),
        ),
    ]
}

#[test]
fn npz_bytes_are_reproducible_with_fixed_timestamps() {
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a.npz"), dir.path().join("b.npz"));
    npy::write_npz(&a, &numpy_check_arrays(), false).unwrap();
    npy::write_npz(&b, &numpy_check_arrays(), false).unwrap();
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(
        bytes,
        std::fs::read(&b).unwrap(),
        "equal arrays, equal bytes"
    );
    // Stored members with the fixed 1980-01-01 00:00 timestamp and mode rw-r--r--, so the bytes
    // do not depend on when (or by whom) the file was written.
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&a).unwrap()).unwrap();
    for i in 0..zip.len() {
        let member = zip.by_index(i).unwrap();
        assert_eq!(member.compression(), zip::CompressionMethod::Stored);
        assert_eq!(
            member.last_modified(),
            Some(zip::DateTime::default()),
            "{}",
            member.name()
        );
        assert_eq!(member.unix_mode().map(|m| m & 0o777), Some(0o644));
    }
    // The local header of the first member: DOS time 0, DOS date 1980-01-01 (0x0021).
    assert_eq!(&bytes[10..14], &[0, 0, 0x21, 0]);
}

#[test]
fn numpy_reads_every_npz_we_write() {
    let Some(py) = python() else { return };
    let dir = TempDir::new().unwrap();
    npy::write_npz(&dir.path().join("small.npz"), &numpy_check_arrays(), false).unwrap();
    // More members than a zip without ZIP64 records can count (65,535), each a small array
    // whose values name it: numpy must read the ZIP64 end-of-central-directory records.
    const MANY: usize = 70_000;
    let names: Vec<String> = (0..MANY).map(|i| format!("m{i}")).collect();
    let many: Vec<(&str, NpyArray)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), NpyArray::vector(vec![i as i64, -(i as i64)])))
        .collect();
    let many_path = dir.path().join("many.npz");
    npy::write_npz(&many_path, &many, false).unwrap();
    let bytes = std::fs::read(&many_path).unwrap();
    let eocd64 = b"PK\x06\x06";
    assert!(
        bytes.windows(4).any(|w| w == eocd64),
        "{MANY} members need the ZIP64 end record"
    );
    assert_eq!(npy::read_npz(&many_path).unwrap().len(), MANY);

    let out = run_python(
        &py,
        dir.path(),
        r#"
import numpy as np, sys
with np.load("small.npz") as z:
    assert list(z.keys()) == ["ids", "distances", "codes", "within_threshold", "empty", "no_rows"], list(z.keys())
    assert z["ids"].dtype == np.int64 and z["ids"].tolist() == [0, -1, 2**63 - 1, -2**63, 7]
    d = z["distances"]
    assert d.dtype == np.float32 and d.shape == (5,)
    assert d[:3].tolist() == [0.0, 1.5, -2.25] and np.isnan(d[3]) and d[4] == np.inf
    c = z["codes"]
    assert c.dtype == np.float32 and c.shape == (3, 4) and c.flags["C_CONTIGUOUS"]
    assert (c == np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5).all()
    w = z["within_threshold"]
    assert w.dtype == np.bool_ and w.tolist() == [True, False, True]
    assert z["empty"].dtype == np.int64 and z["empty"].shape == (0,)
    assert z["no_rows"].dtype == np.float32 and z["no_rows"].shape == (0, 3)
n = int(sys.argv[1])
with np.load("many.npz") as z:
    keys = list(z.keys())
    assert len(keys) == n and keys[0] == "m0" and keys[-1] == f"m{n - 1}", (len(keys), keys[:2], keys[-2:])
    # Every member is listed; a sample of them (reading all 70,000 takes numpy seconds) is read.
    for i in list(range(0, n, 71)) + list(range(n - 5, n)):
        a = z[f"m{i}"]
        assert a.dtype == np.int64 and a.tolist() == [i, -i], (i, a)
print("ok", n)
"#,
        &[&MANY.to_string()],
    );
    assert_eq!(out.trim(), format!("ok {MANY}"));
}

/// Writes a > 4 GiB `.npz` to exercise the ZIP64 records (about 20 s, and as long again for the
/// numpy check; needs ~10 GB of memory and ~5 GB of disk; run with
/// `cargo test --test data_inputs -- --ignored`).
#[test]
#[ignore]
fn npz_writer_zip64() {
    let dir = TempDir::new().unwrap();
    let p = dir.path().join("big.npz");
    let n = (1usize << 32) + 100;
    let mut big = vec![false; n];
    big[n - 1] = true;
    let arrays = [
        ("small", NpyArray::vector(vec![1i64, 2])),
        ("big", NpyArray::vector(big)),
        ("after", NpyArray::vector(vec![7i64, 8, 9])),
    ];
    npy::write_npz(&p, &arrays, false).unwrap();
    drop(arrays);
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    assert_eq!(zip.by_name("big.npy").unwrap().size(), n as u64 + 128);
    let mut after = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("after.npy").unwrap(), &mut after).unwrap();
    assert_eq!(
        npy::read_npy(&after, Path::new("after")).unwrap().data(),
        &NpyData::I64(vec![7, 8, 9])
    );
    drop(zip);
    if let Some(py) = python() {
        let out = run_python(
            &py,
            dir.path(),
            r#"
import numpy as np
with np.load("big.npz") as z:
    assert z["small"].tolist() == [1, 2] and z["after"].tolist() == [7, 8, 9]
    b = z["big"]
    assert b.dtype == np.bool_ and b.shape == (2**32 + 100,) and b[-1] and not b[:-1].any()
print("ok")
"#,
            &[],
        );
        assert_eq!(out.trim(), "ok");
    }
}
