//! Corpus readers: every format round-trips its documents in order, compressed variants,
//! text modes, filtering and counters, the seeded shuffle, the fingerprint, and bad input
//! (each error names the file and the line, row or field).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use exemplar::data::corpus::{
    detect_format, Compression, CorpusDocument, CorpusFormat, CorpusOptions, CorpusReader,
    CorpusStats, Shuffle, TextMode,
};
use exemplar::Error;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}

/// Reads every document (and the stats and fingerprint), or the first error.
fn read_all(
    paths: &[PathBuf],
    options: CorpusOptions,
) -> Result<(Vec<CorpusDocument>, CorpusStats, String), Error> {
    let mut reader = CorpusReader::open(paths, options)?;
    let mut docs = Vec::new();
    while let Some(doc) = reader.next_document()? {
        docs.push(doc);
    }
    Ok((docs, reader.stats(), reader.fingerprint()))
}

fn texts(docs: &[CorpusDocument]) -> Vec<&str> {
    docs.iter().map(|d| d.text.as_str()).collect()
}

fn records(docs: &[CorpusDocument]) -> Vec<u64> {
    docs.iter().map(|d| d.record).collect()
}

/// The error of reading `paths`, as text.
fn error_of(paths: &[PathBuf], options: CorpusOptions) -> String {
    match read_all(paths, options) {
        Ok((docs, ..)) => panic!("expected an error, read {} documents", docs.len()),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error {message:?} does not contain {part:?}"
        );
    }
}

/// Writes a Parquet file with an optional string column `text` (None = null) and an int64
/// column `id`, `group` rows per row group.
fn write_parquet(
    path: &Path,
    texts: &[Option<&str>],
    group: usize,
    compression: parquet::basic::Compression,
) -> TestResult {
    write_parquet_schema(
        path,
        "message m { optional binary text (STRING); required int64 id; }",
        texts,
        group,
        compression,
    )
}

/// Writes `texts` into the first (byte-array) column of `schema`, ids into its int64 columns.
fn write_parquet_schema(
    path: &Path,
    schema: &str,
    texts: &[Option<&str>],
    group: usize,
    compression: parquet::basic::Compression,
) -> TestResult {
    let schema = Arc::new(parquet::schema::parser::parse_message_type(schema)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(compression)
            .set_data_page_row_count_limit(2)
            .set_write_batch_size(2)
            .build(),
    );
    let mut writer = SerializedFileWriter::new(std::fs::File::create(path)?, schema, props)?;
    for (g, chunk) in texts.chunks(group.max(1)).enumerate() {
        let mut rows = writer.next_row_group()?;
        while let Some(mut column) = rows.next_column()? {
            match column.untyped() {
                parquet::column::writer::ColumnWriter::ByteArrayColumnWriter(w) => {
                    let values: Vec<ByteArray> = chunk
                        .iter()
                        .flatten()
                        .map(|t| ByteArray::from(t.as_bytes().to_vec()))
                        .collect();
                    let defs: Vec<i16> = chunk.iter().map(|t| i16::from(t.is_some())).collect();
                    let reps = vec![0i16; chunk.len()];
                    let repeated = w.get_descriptor().max_rep_level() > 0;
                    w.write_batch(&values, Some(&defs), repeated.then_some(&reps[..]))?;
                }
                parquet::column::writer::ColumnWriter::Int64ColumnWriter(w) => {
                    let ids: Vec<i64> = (0..chunk.len()).map(|i| (g * group + i) as i64).collect();
                    w.write_batch(&ids, None, None)?;
                }
                _ => return Err("unexpected column type in the test schema".into()),
            }
            column.close()?;
        }
        rows.close()?;
    }
    writer.close()?;
    Ok(())
}

const JSONL: &str = concat!(
    "{\"id\": 1, \"text\": \"first doc\", \"meta\": {\"text\": \"nested, ignored\"}}\n",
    "\n",
    "{\"text\": \"second \\\"quoted\\\" \\u00e9\\n line\", \"tags\": [1, 2, {\"a\": null}]}\n",
    "   \n",
    "{\"text\": \"third\"}",
);

#[test]
fn format_detection() {
    let cases = [
        ("a.txt", CorpusFormat::Text, Compression::None),
        ("a.TXT.gz", CorpusFormat::Text, Compression::Gzip),
        ("a.jsonl.zst", CorpusFormat::JsonLines, Compression::Zstd),
        ("a.ndjson", CorpusFormat::JsonLines, Compression::None),
        ("a.json.gz", CorpusFormat::JsonLines, Compression::Gzip),
        (
            "train-00000-of-00001.parquet",
            CorpusFormat::Parquet,
            Compression::None,
        ),
    ];
    for (name, format, compression) in cases {
        let got = detect_format(Path::new(name)).expect(name);
        assert_eq!(got, (format, compression), "{name}");
    }
    for name in ["a.csv", "a.parquet.gz", "a.zst", "noext"] {
        let e = detect_format(Path::new(name)).expect_err(name).to_string();
        assert_contains(&e, &[name]);
    }
}

#[test]
fn unknown_extension_lists_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "corpus.csv", b"text\nhello\n");
    let e = CorpusReader::open(&[path], CorpusOptions::default())
        .err()
        .expect("a .csv is rejected");
    assert!(matches!(e, Error::Format { .. }));
    assert_contains(
        &e.to_string(),
        &[
            "corpus.csv",
            "unrecognised",
            ".txt",
            ".jsonl",
            ".parquet",
            ".zst",
        ],
    );
}

#[test]
fn open_checks_files_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.txt", b"hello\n");
    let missing = dir.path().join("missing.jsonl");
    let e = CorpusReader::open(&[good.clone(), missing], CorpusOptions::default())
        .err()
        .expect("missing file");
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_contains(&e.to_string(), &["missing.jsonl"]);

    let fake_gz = write(dir.path(), "fake.txt.gz", b"plain text\n");
    let e = CorpusReader::open(&[fake_gz], CorpusOptions::default())
        .err()
        .expect("not gzip");
    assert_contains(&e.to_string(), &["fake.txt.gz", "not a gzip file"]);

    let empty_zst = write(dir.path(), "empty.jsonl.zst", b"");
    let e = CorpusReader::open(&[empty_zst], CorpusOptions::default())
        .err()
        .expect("empty zst");
    assert_contains(
        &e.to_string(),
        &["empty.jsonl.zst", "not a zstd file", "empty"],
    );

    let not_parquet = write(dir.path(), "bad.parquet", b"PAR1 this is not parquet");
    let e = CorpusReader::open(&[not_parquet], CorpusOptions::default())
        .err()
        .expect("not parquet");
    assert_contains(&e.to_string(), &["bad.parquet", "Parquet"]);

    let e = CorpusReader::open(&[], CorpusOptions::default())
        .err()
        .expect("no files");
    assert!(matches!(e, Error::EmptyInput(_)));

    let bad = CorpusOptions {
        shuffle: Some(Shuffle { seed: 1, buffer: 0 }),
        ..CorpusOptions::default()
    };
    let e = CorpusReader::open(std::slice::from_ref(&good), bad)
        .err()
        .expect("buffer 0");
    assert!(matches!(e, Error::InvalidParameter { .. }), "{e:?}");
    let bad = CorpusOptions {
        text_field: String::new(),
        ..CorpusOptions::default()
    };
    let e = CorpusReader::open(&[good], bad).err().expect("empty field");
    assert!(matches!(e, Error::InvalidParameter { .. }), "{e:?}");
}

#[test]
fn text_lines_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let content = "\u{feff}alpha\r\nbeta  \n\n   \n\tgamma δ\nlast line without newline";
    let path = write(dir.path(), "a.txt", content.as_bytes());
    let (docs, stats, _) = read_all(&[path], CorpusOptions::default())?;
    assert_eq!(
        texts(&docs),
        ["alpha", "beta  ", "\tgamma δ", "last line without newline"]
    );
    assert_eq!(records(&docs), [1, 2, 5, 6]);
    assert_eq!(
        docs.iter().map(|d| d.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert!(docs.iter().all(|d| d.file == 0));
    assert_eq!(stats.documents, 4);
    assert_eq!(stats.skipped_empty, 2);
    assert_eq!(stats.bytes_read, content.len() as u64);
    Ok(())
}

#[test]
fn text_modes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let content = "\n\npara one\nstill one\n\n  \n\npara two\r\n\npara three\nend\n\n";
    let path = write(dir.path(), "p.txt", content.as_bytes());

    let paragraphs = CorpusOptions {
        text_mode: TextMode::Paragraphs,
        ..CorpusOptions::default()
    };
    let (docs, stats, _) = read_all(std::slice::from_ref(&path), paragraphs)?;
    assert_eq!(
        texts(&docs),
        ["para one\nstill one", "para two", "para three\nend"]
    );
    assert_eq!(records(&docs), [3, 8, 10]);
    assert_eq!(stats.skipped_empty, 0);

    let whole = CorpusOptions {
        text_mode: TextMode::Whole,
        ..CorpusOptions::default()
    };
    let (docs, stats, _) = read_all(&[path], whole.clone())?;
    assert_eq!(texts(&docs), [content]);
    assert_eq!(records(&docs), [1]);
    assert_eq!(stats.bytes_read, content.len() as u64);

    // An empty file in Whole mode is one empty (skipped) document.
    let empty = write(dir.path(), "empty.txt", b"");
    let other = write(dir.path(), "other.txt", "x\ny".as_bytes());
    let (docs, stats, _) = read_all(&[empty, other], whole)?;
    assert_eq!(texts(&docs), ["x\ny"]);
    assert_eq!(docs[0].file, 1);
    assert_eq!(stats.skipped_empty, 1);
    Ok(())
}

#[test]
fn jsonl_round_trip_and_extensions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let expected = ["first doc", "second \"quoted\" é\n line", "third"];
    for name in ["a.jsonl", "a.ndjson", "a.json"] {
        let path = write(dir.path(), name, JSONL.as_bytes());
        let (docs, stats, _) = read_all(&[path], CorpusOptions::default())?;
        assert_eq!(texts(&docs), expected, "{name}");
        assert_eq!(records(&docs), [1, 3, 5], "{name}");
        assert_eq!(stats.skipped_empty, 0, "blank lines are not records");
        assert_eq!(stats.bytes_read, JSONL.len() as u64);
    }
    // Another field name.
    let path = write(
        dir.path(),
        "content.jsonl",
        b"{\"content\": \"c1\", \"text\": 5}\n{\"content\": \"c2\"}\n",
    );
    let options = CorpusOptions {
        text_field: "content".into(),
        ..CorpusOptions::default()
    };
    let (docs, ..) = read_all(&[path], options)?;
    assert_eq!(texts(&docs), ["c1", "c2"]);
    Ok(())
}

#[test]
fn compressed_variants_read_like_plain_ones() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = "one\ntwo\n\nthree\n";
    let plain = read_all(
        &[write(dir.path(), "p.txt", text.as_bytes())],
        CorpusOptions::default(),
    )?;
    let jsonl = read_all(
        &[write(dir.path(), "p.jsonl", JSONL.as_bytes())],
        CorpusOptions::default(),
    )?;
    // Two concatenated gzip members and two zstd frames are read in turn.
    let mut two_members = gzip(b"one\ntwo\n");
    two_members.extend(gzip(b"\nthree\n"));
    let mut two_frames = zstd(b"one\ntwo\n");
    two_frames.extend(zstd(b"\nthree\n"));
    let variants = [
        ("c.txt.gz", gzip(text.as_bytes()), &plain),
        ("c.txt.zst", zstd(text.as_bytes()), &plain),
        ("m.txt.gz", two_members, &plain),
        ("m.txt.zst", two_frames, &plain),
        ("c.jsonl.gz", gzip(JSONL.as_bytes()), &jsonl),
        ("c.jsonl.zst", zstd(JSONL.as_bytes()), &jsonl),
    ];
    for (name, bytes, expected) in variants {
        let got = read_all(&[write(dir.path(), name, &bytes)], CorpusOptions::default())?;
        assert_eq!(&got, expected, "{name}");
    }
    Ok(())
}

#[test]
fn parquet_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rows: Vec<String> = (0..23).map(|i| format!("document number {i} ✓")).collect();
    let values: Vec<Option<&str>> = rows.iter().map(|s| Some(s.as_str())).collect();
    let compressions = [
        ("plain.parquet", parquet::basic::Compression::UNCOMPRESSED),
        ("snappy.parquet", parquet::basic::Compression::SNAPPY),
        (
            "zstd.parquet",
            parquet::basic::Compression::ZSTD(Default::default()),
        ),
        (
            "gzip.parquet",
            parquet::basic::Compression::GZIP(Default::default()),
        ),
    ];
    for (name, compression) in compressions {
        let path = dir.path().join(name);
        write_parquet(&path, &values, 5, compression)?;
        let (docs, stats, _) = read_all(&[path], CorpusOptions::default())?;
        assert_eq!(texts(&docs), rows, "{name}");
        assert_eq!(records(&docs), (0..23).collect::<Vec<u64>>(), "{name}");
        let bytes: usize = rows.iter().map(String::len).sum();
        assert_eq!(stats.bytes_read, bytes as u64);
    }

    // Empty strings are skipped and counted; row indices stay those of the file.
    let path = dir.path().join("gaps.parquet");
    write_parquet(
        &path,
        &[Some("a"), Some(""), Some("  "), Some("b")],
        3,
        parquet::basic::Compression::SNAPPY,
    )?;
    let (docs, stats, _) = read_all(&[path], CorpusOptions::default())?;
    assert_eq!(texts(&docs), ["a", "b"]);
    assert_eq!(records(&docs), [0, 3]);
    assert_eq!(stats.skipped_empty, 2);

    // A required (non-nullable) column and a LargeUtf8-style legacy UTF8 annotation.
    let path = dir.path().join("required.parquet");
    write_parquet_schema(
        &path,
        "message m { required binary text (UTF8); }",
        &[Some("x"), Some("y")],
        1,
        parquet::basic::Compression::UNCOMPRESSED,
    )?;
    let (docs, ..) = read_all(&[path], CorpusOptions::default())?;
    assert_eq!(texts(&docs), ["x", "y"]);
    Ok(())
}

/// Found by tests/fuzz_parsers.rs (`fuzz_corpus_parquet`): one flipped bit in a Parquet
/// dictionary page made the `parquet` crate panic (`assertion failed: size <= src.len()` in
/// `bit_util::read_num_bytes`, decoding a value length that runs past the page) instead of
/// returning an error. Every single-bit flip of the text column's dictionary page must now be
/// read or refused with an error naming the file, never a panic.
#[test]
fn corrupt_parquet_pages_are_errors_not_panics() -> TestResult {
    use parquet::file::reader::FileReader;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.parquet");
    let texts: Vec<Option<&str>> = ["alpha", "beta", "gamma", "alpha", "delta", "beta"]
        .iter()
        .map(|t| Some(*t))
        .collect();
    write_parquet(&good, &texts, 6, parquet::basic::Compression::UNCOMPRESSED)?;
    let bytes = std::fs::read(&good)?;
    let reader =
        parquet::file::serialized_reader::SerializedFileReader::new(std::fs::File::open(&good)?)?;
    let chunk = reader.metadata().row_group(0).column(0);
    let start = chunk.dictionary_page_offset().ok_or("no dictionary page")? as usize;
    let end = chunk.data_page_offset() as usize;
    assert!(start < end && end <= bytes.len());
    let bad = dir.path().join("bad.parquet");
    let mut panics = 0;
    for byte in start..end {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[byte] ^= 1 << bit;
            std::fs::write(&bad, &b)?;
            let read = std::panic::catch_unwind(|| {
                read_all(std::slice::from_ref(&bad), CorpusOptions::default())
            });
            let result = read.map_err(|_| format!("byte {byte} bit {bit}: the reader panicked"))?;
            if let Err(e) = result {
                let e = e.to_string();
                assert_contains(&e, &["bad.parquet"]);
                panics += usize::from(e.contains("the Parquet decoder panicked"));
            }
        }
    }
    // The guard was exercised: some flips hit the decoder's assertion.
    assert!(panics > 0, "no flip reached the decoder's panic");
    Ok(())
}

#[test]
fn parquet_bad_columns_and_nulls() -> TestResult {
    let dir = tempfile::tempdir()?;
    let none = parquet::basic::Compression::UNCOMPRESSED;

    let path = dir.path().join("other.parquet");
    write_parquet_schema(
        &path,
        "message m { optional binary body (STRING); required int64 id; }",
        &[Some("x")],
        1,
        none,
    )?;
    let e = error_of(&[path], CorpusOptions::default());
    assert_contains(&e, &["other.parquet", "no column `text`", "`body`", "`id`"]);

    let path = dir.path().join("int.parquet");
    write_parquet_schema(
        &path,
        "message m { required binary body (STRING); required int64 text; }",
        &[Some("x")],
        1,
        none,
    )?;
    let e = CorpusReader::open(&[path], CorpusOptions::default())
        .err()
        .expect("int column");
    assert!(matches!(e, Error::UnsupportedDtype { .. }), "{e:?}");
    assert_contains(&e.to_string(), &["int.parquet", "column `text`", "INT64"]);

    let path = dir.path().join("binary.parquet");
    write_parquet_schema(
        &path,
        "message m { optional binary text; }",
        &[Some("x")],
        1,
        none,
    )?;
    let e = error_of(&[path], CorpusOptions::default());
    assert_contains(
        &e,
        &["binary.parquet", "column `text`", "BYTE_ARRAY", "binary"],
    );

    let path = dir.path().join("list.parquet");
    write_parquet_schema(
        &path,
        "message m { repeated binary text (STRING); }",
        &[Some("x")],
        1,
        none,
    )?;
    let e = error_of(&[path], CorpusOptions::default());
    assert_contains(&e, &["list.parquet", "column `text` is repeated"]);

    // A null is an invalid record: an error naming the row, or skipped and counted.
    let path = dir.path().join("nulls.parquet");
    write_parquet(&path, &[Some("a"), None, Some("c"), None], 3, none)?;
    let e = error_of(std::slice::from_ref(&path), CorpusOptions::default());
    assert_contains(&e, &["nulls.parquet", "row 1", "field `text` is null"]);
    let skip = CorpusOptions {
        skip_invalid: true,
        ..CorpusOptions::default()
    };
    let (docs, stats, _) = read_all(&[path], skip)?;
    assert_eq!(texts(&docs), ["a", "c"]);
    assert_eq!(records(&docs), [0, 2]);
    assert_eq!(stats.skipped_invalid, 2);

    // Invalid UTF-8 in a string column: "fine" patched to "f\xffne" wherever it occurs in the
    // uncompressed file (data or dictionary page, statistics).
    let path = dir.path().join("utf8.parquet");
    write_parquet(&path, &[Some("ok"), Some("fine")], 2, none)?;
    let mut bytes = std::fs::read(&path)?;
    let mut patched = 0;
    for at in 0..bytes.len().saturating_sub(3) {
        if &bytes[at..at + 4] == b"fine" {
            bytes[at + 1] = 0xff;
            patched += 1;
        }
    }
    assert!(patched > 0, "value not found in the file");
    std::fs::write(&path, &bytes)?;
    let e = error_of(&[path], CorpusOptions::default());
    assert_contains(&e, &["utf8.parquet", "row 1", "field `text`", "UTF-8"]);
    Ok(())
}

#[test]
fn several_files_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = write(dir.path(), "a.txt", b"a1\na2\n");
    let b = write(
        dir.path(),
        "b.jsonl.gz",
        &gzip(b"{\"text\":\"b1\"}\n{\"text\":\"b2\"}\n"),
    );
    let c = dir.path().join("c.parquet");
    write_parquet(
        &c,
        &[Some("c1"), Some("c2")],
        1,
        parquet::basic::Compression::SNAPPY,
    )?;
    let d = write(dir.path(), "d.txt.zst", &zstd(b"d1\n"));
    let (docs, stats, _) = read_all(&[a, b, c, d], CorpusOptions::default())?;
    assert_eq!(texts(&docs), ["a1", "a2", "b1", "b2", "c1", "c2", "d1"]);
    assert_eq!(
        docs.iter().map(|d| d.file).collect::<Vec<_>>(),
        [0, 0, 1, 1, 2, 2, 3]
    );
    assert_eq!(records(&docs), [1, 2, 1, 2, 0, 1, 1]);
    assert_eq!(
        docs.iter().map(|d| d.index).collect::<Vec<_>>(),
        (0..7).collect::<Vec<u64>>()
    );
    assert_eq!(stats.documents, 7);
    Ok(())
}

#[test]
fn min_chars_filter_and_counters() -> TestResult {
    let dir = tempfile::tempdir()?;
    // "héllo" is 5 chars but 6 bytes; "日本語" is 3 chars, 9 bytes.
    let path = write(
        dir.path(),
        "m.txt",
        "héllo\nhi\n\n日本語\nlonger text\n   \n".as_bytes(),
    );
    let options = CorpusOptions {
        min_chars: 5,
        ..CorpusOptions::default()
    };
    let (docs, stats, _) = read_all(&[path], options)?;
    assert_eq!(texts(&docs), ["héllo", "longer text"]);
    assert_eq!(
        stats,
        CorpusStats {
            documents: 2,
            skipped_empty: 2,
            skipped_short: 2,
            skipped_invalid: 0,
            bytes_read: "héllo\nhi\n\n日本語\nlonger text\n   \n".len() as u64,
        }
    );
    let json = serde_json::to_value(stats)?;
    assert_eq!(json["skipped_short"], 2);
    Ok(())
}

#[test]
fn shuffle_is_a_seeded_permutation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let lines: Vec<String> = (0..200).map(|i| format!("doc {i}")).collect();
    let a = write(dir.path(), "a.txt", lines[..120].join("\n").as_bytes());
    let b = write(
        dir.path(),
        "b.jsonl",
        {
            let mut s = String::new();
            for l in &lines[120..] {
                s += &format!("{{\"text\": \"{l}\"}}\n");
            }
            s
        }
        .as_bytes(),
    );
    let paths = [a, b];
    let shuffled = |seed: u64, buffer: usize| {
        let options = CorpusOptions {
            shuffle: Some(Shuffle { seed, buffer }),
            ..CorpusOptions::default()
        };
        read_all(&paths, options).expect("shuffled read")
    };
    let (plain, _, plain_fp) = read_all(&paths, CorpusOptions::default())?;
    assert_eq!(texts(&plain), lines);

    let (first, stats, fp1) = shuffled(7, 32);
    let (again, _, fp1_again) = shuffled(7, 32);
    assert_eq!(first, again, "same seed, same order");
    assert_eq!(fp1, fp1_again);
    assert_eq!(stats.documents, 200);
    assert_ne!(texts(&first), lines, "a 32-document buffer moves documents");
    assert_ne!(fp1, plain_fp, "the fingerprint follows the emitted order");
    let mut sorted: Vec<&str> = texts(&first);
    sorted.sort_unstable();
    let mut expected: Vec<&str> = lines.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(sorted, expected, "a permutation of the input");
    assert_eq!(
        first.iter().map(|d| d.index).collect::<Vec<_>>(),
        (0..200).collect::<Vec<u64>>()
    );
    // Provenance travels with the document.
    for d in &first {
        let n: usize = d.text["doc ".len()..].parse()?;
        if n < 120 {
            assert_eq!((d.file, d.record), (0, n as u64 + 1));
        } else {
            assert_eq!((d.file, d.record), (1, (n - 120) as u64 + 1));
        }
    }

    let (other, ..) = shuffled(8, 32);
    assert_ne!(texts(&other), texts(&first), "another seed, another order");

    // A buffer of 1 keeps the file order; a buffer larger than the corpus is a full shuffle.
    let (one, _, fp_one) = shuffled(7, 1);
    assert_eq!(texts(&one), lines);
    assert_eq!(fp_one, plain_fp);
    let (full, ..) = shuffled(7, 10_000);
    assert_ne!(texts(&full), lines);
    assert_eq!(full.len(), 200);
    Ok(())
}

#[test]
fn fingerprint_definition() -> TestResult {
    let dir = tempfile::tempdir()?;
    let txt = write(dir.path(), "f.txt", "ab\nc\n\n".as_bytes());
    let jsonl = write(
        dir.path(),
        "f.jsonl",
        b"{\"text\": \"ab\"}\n{\"text\": \"\"}\n{\"text\": \"c\", \"x\": 1}\n",
    );
    let (_, _, fp_txt) = read_all(&[txt], CorpusOptions::default())?;
    let (_, _, fp_jsonl) = read_all(&[jsonl], CorpusOptions::default())?;
    let mut h = Sha256::new();
    for t in ["ab", "c"] {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let expected: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(fp_txt, expected);
    assert_eq!(fp_jsonl, expected, "same documents, same fingerprint");
    Ok(())
}

#[test]
fn jsonl_bad_records_name_file_line_and_field() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &[u8], &[&str]); 6] = [
        (
            "invalid.jsonl",
            b"{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n",
            &["invalid.jsonl", "line 2", "invalid JSON:"],
        ),
        (
            "missing.jsonl",
            b"{\"text\": \"ok\"}\n\n{\"body\": \"no text\"}\n",
            &["missing.jsonl", "line 3", "missing field `text`"],
        ),
        (
            "number.jsonl",
            b"{\"text\": 42}\n",
            &[
                "number.jsonl",
                "line 1",
                "field `text` is not a string (found number)",
            ],
        ),
        (
            "null.jsonl",
            b"{\"text\": \"a\"}\n{\"text\": null}\n",
            &[
                "null.jsonl",
                "line 2",
                "field `text` is not a string (found null)",
            ],
        ),
        (
            "array.json",
            b"[{\"text\": \"a\"},\n {\"text\": \"b\"}]\n",
            &[
                "array.json",
                "line 1",
                "invalid JSON",
                "top-level JSON array",
            ],
        ),
        (
            "scalar.jsonl",
            b"\"just a string\"\n",
            &[
                "scalar.jsonl",
                "line 1",
                "expected a JSON object, found string",
            ],
        ),
    ];
    for (name, bytes, parts) in cases {
        let path = write(dir.path(), name, bytes);
        let e = read_all(&[path], CorpusOptions::default()).expect_err(name);
        assert!(matches!(e, Error::Format { .. }), "{name}: {e:?}");
        assert_contains(&e.to_string(), parts);
    }
    // Trailing garbage after the object is invalid JSON too.
    let path = write(dir.path(), "trailing.jsonl", b"{\"text\": \"a\"} x\n");
    let e = error_of(&[path], CorpusOptions::default());
    assert_contains(&e, &["trailing.jsonl", "line 1", "invalid JSON"]);
    Ok(())
}

#[test]
fn skip_invalid_counts_bad_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"{\"text\": \"one\"}\n");
    bytes.extend_from_slice(b"not json\n");
    bytes.extend_from_slice(b"{\"other\": 1}\n");
    bytes.extend_from_slice(b"{\"text\": [\"a\"]}\n");
    bytes.extend_from_slice(b"{\"text\": \"bad \xff byte\"}\n");
    bytes.extend_from_slice(b"{\"text\": \"\"}\n");
    bytes.extend_from_slice(b"{\"text\": \"two\"}\n");
    let path = write(dir.path(), "dirty.jsonl", &bytes);
    let options = CorpusOptions {
        skip_invalid: true,
        ..CorpusOptions::default()
    };
    let (docs, stats, _) = read_all(&[path], options)?;
    assert_eq!(texts(&docs), ["one", "two"]);
    assert_eq!(records(&docs), [1, 7]);
    assert_eq!(stats.skipped_invalid, 4);
    assert_eq!(stats.skipped_empty, 1);
    assert_eq!(stats.documents, 2);
    Ok(())
}

#[test]
fn non_utf8_names_file_and_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let txt = write(dir.path(), "latin1.txt", b"fine\ncaf\xe9 au lait\n");
    let e = error_of(std::slice::from_ref(&txt), CorpusOptions::default());
    assert_contains(
        &e,
        &[
            "latin1.txt",
            "line 2",
            "invalid UTF-8",
            "byte 3 of the line",
            "offset 8",
        ],
    );

    let whole = CorpusOptions {
        text_mode: TextMode::Whole,
        ..CorpusOptions::default()
    };
    let e = error_of(std::slice::from_ref(&txt), whole);
    assert_contains(&e, &["latin1.txt", "line 2", "invalid UTF-8", "offset 8"]);

    let paragraphs = CorpusOptions {
        text_mode: TextMode::Paragraphs,
        skip_invalid: true,
        ..CorpusOptions::default()
    };
    let para = write(dir.path(), "para.txt", b"a\n\nb\n\xff\nc\n\nd\n");
    let (docs, stats, _) = read_all(&[para], paragraphs)?;
    assert_eq!(texts(&docs), ["a", "d"]);
    assert_eq!(stats.skipped_invalid, 1);

    let jsonl = write(
        dir.path(),
        "latin1.jsonl",
        b"{\"text\": \"ok\"}\n{\"text\": \"caf\xe9\"}\n",
    );
    let e = error_of(&[jsonl], CorpusOptions::default());
    assert_contains(&e, &["latin1.jsonl", "line 2", "invalid UTF-8"]);

    let zst = write(dir.path(), "latin1.txt.zst", &zstd(b"fine\ncaf\xe9\n"));
    let e = error_of(&[zst], CorpusOptions::default());
    assert_contains(
        &e,
        &["latin1.txt.zst", "line 2", "invalid UTF-8", "decompressed"],
    );
    Ok(())
}

#[test]
fn truncated_compressed_streams_are_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut content = String::new();
    for i in 0..2000 {
        content += &format!(
            "{{\"text\": \"line {i} with some words to compress {}\"}}\n",
            i * 7
        );
    }
    let cases = [
        ("cut.jsonl.zst", zstd(content.as_bytes()), "zstd"),
        ("cut.jsonl.gz", gzip(content.as_bytes()), "gzip"),
        ("cut.txt.zst", zstd(content.as_bytes()), "zstd"),
        ("cut.txt.gz", gzip(content.as_bytes()), "gzip"),
    ];
    for (name, bytes, codec) in cases {
        let half = &bytes[..bytes.len() / 2];
        let path = write(dir.path(), name, half);
        let mut reader = CorpusReader::open(&[path], CorpusOptions::default())?;
        let mut read = 0;
        let e = loop {
            match reader.next_document() {
                Ok(Some(_)) => read += 1,
                Ok(None) => panic!("{name}: a truncated stream read as complete ({read} docs)"),
                Err(e) => break e,
            }
        };
        assert!(matches!(e, Error::Format { .. }), "{name}: {e:?}");
        assert_contains(
            &e.to_string(),
            &[name, &format!("truncated or corrupt {codec} stream")],
        );
        assert!(read < 2000, "{name}");
        // The reader is finished after an error.
        assert!(reader.next_document()?.is_none());
    }
    // Only the last byte cut off: the stream's end is still missing.
    let bytes = zstd(content.as_bytes());
    let path = write(dir.path(), "tail.txt.zst", &bytes[..bytes.len() - 1]);
    let e = error_of(&[path], CorpusOptions::default());
    assert_contains(&e, &["tail.txt.zst", "truncated or corrupt zstd stream"]);
    let bytes = gzip(content.as_bytes());
    let path = write(dir.path(), "tail.txt.gz", &bytes[..bytes.len() - 1]);
    let e = error_of(&[path], CorpusOptions::default());
    assert_contains(&e, &["tail.txt.gz", "truncated or corrupt gzip stream"]);
    Ok(())
}

#[test]
fn empty_corpus_is_an_error_naming_the_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = write(dir.path(), "blank.txt", b"\n  \n\n");
    let b = write(dir.path(), "short.jsonl", b"{\"text\": \"hi\"}\n");
    let options = CorpusOptions {
        min_chars: 10,
        ..CorpusOptions::default()
    };
    let mut reader = CorpusReader::open(&[a, b], options)?;
    let e = reader.next_document().expect_err("empty corpus");
    assert!(matches!(e, Error::EmptyInput(_)), "{e:?}");
    assert_contains(
        &e.to_string(),
        &["blank.txt", "short.jsonl", "3 empty", "1 shorter"],
    );
    assert_eq!(reader.stats().skipped_empty, 3);
    assert!(reader.next_document()?.is_none());

    let empty = write(dir.path(), "nothing.jsonl", b"");
    let e = error_of(&[empty], CorpusOptions::default());
    assert_contains(&e, &["empty input", "nothing.jsonl"]);
    Ok(())
}

#[test]
fn iterator_and_send() -> TestResult {
    fn assert_send<T: Send>() {}
    assert_send::<CorpusReader>();
    let dir = tempfile::tempdir()?;
    let path = write(dir.path(), "i.txt", b"x\ny\n");
    let reader = CorpusReader::open(&[path], CorpusOptions::default())?;
    let docs: Result<Vec<_>, _> = reader.collect();
    assert_eq!(texts(&docs?), ["x", "y"]);
    Ok(())
}
