//! Provenance sidecars: `<activation file>.provenance.jsonl`, one JSON object per line and one
//! line per document, in row order (see `docs/inputs.md`):
//!
//! ```json
//! {"doc_id": 0, "tokens": ["<bos>", "The", " cat", " sat"], "positions": [1, 2, 3]}
//! ```
//!
//! The activation file's rows are, in order, one per entry of `positions` of the first line,
//! then of the second line, and so on. [`validate_sidecar`] checks a whole sidecar when the
//! stream opens (without keeping its documents); [`SidecarReader`] then reads it line by line as
//! rows are streamed, so a large sidecar is never held in memory.
//!
//! Every error is an [`Error::Format`] naming the sidecar, with the 1-based line number and the
//! field at fault.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// A document of the provenance sidecar: its id and its token strings (BOS included, at index
/// 0), as the model saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The document's id, unique across every file of a stream.
    pub doc_id: i64,
    /// The document's tokens.
    pub tokens: Vec<String>,
}

/// The sidecar path of an activation file: `<path>.provenance.jsonl`.
pub fn sidecar_path(activation_path: &Path) -> PathBuf {
    let mut s = OsString::from(activation_path.as_os_str());
    s.push(".provenance.jsonl");
    PathBuf::from(s)
}

/// One line of a sidecar: a document and the positions of its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarEntry {
    /// The document.
    pub document: Document,
    /// The token positions with an activation row, strictly increasing, each
    /// `< document.tokens.len()`.
    pub positions: Vec<i64>,
    /// The 1-based line number in the sidecar.
    pub line: u64,
}

/// Reads a sidecar line by line, validating each line.
pub struct SidecarReader {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

impl SidecarReader {
    /// Opens the sidecar `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(SidecarReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            line: 0,
            buf: Vec::new(),
        })
    }

    /// The sidecar's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of lines read so far (the line number of the last entry returned).
    pub fn lines_read(&self) -> u64 {
        self.line
    }

    /// The next document, or `None` at the end of the file.
    pub fn next_entry(&mut self) -> Result<Option<SidecarEntry>> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        parse_line(&self.buf, &self.path, self.line).map(Some)
    }
}

impl Iterator for SidecarReader {
    type Item = Result<SidecarEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

/// The doc_ids seen so far across the sidecars of a stream, with where each was first seen.
#[derive(Debug, Default)]
pub struct DocIdSet {
    first_seen: HashMap<i64, (usize, u64)>,
    sidecars: Vec<PathBuf>,
}

impl DocIdSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of distinct doc_ids.
    pub fn len(&self) -> usize {
        self.first_seen.len()
    }

    /// Whether no doc_id was recorded.
    pub fn is_empty(&self) -> bool {
        self.first_seen.is_empty()
    }
}

/// What [`validate_sidecar`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarSummary {
    /// Number of documents (lines).
    pub documents: u64,
    /// Number of activation rows described (`Σ len(positions)`).
    pub rows: u64,
}

/// Reads and validates the whole sidecar `path`, recording its doc_ids in `doc_ids` (an error
/// if one was already recorded, from this sidecar or an earlier one).
pub fn validate_sidecar(path: &Path, doc_ids: &mut DocIdSet) -> Result<SidecarSummary> {
    let index = doc_ids.sidecars.len();
    doc_ids.sidecars.push(path.to_path_buf());
    let mut reader = SidecarReader::open(path)?;
    let mut summary = SidecarSummary {
        documents: 0,
        rows: 0,
    };
    while let Some(entry) = reader.next_entry()? {
        let id = entry.document.doc_id;
        if let Some(&(first_file, first_line)) = doc_ids.first_seen.get(&id) {
            return Err(Error::format(
                path,
                format!(
                    "line {}: doc_id {id} appears twice (first at line {first_line} of {})",
                    entry.line,
                    doc_ids.sidecars[first_file].display()
                ),
            ));
        }
        doc_ids.first_seen.insert(id, (index, entry.line));
        summary.documents += 1;
        summary.rows += entry.positions.len() as u64;
    }
    Ok(summary)
}

/// The fields of a line, kept as JSON values so each can be checked with a precise message.
/// Other fields are skipped without being stored.
#[derive(Deserialize)]
struct RawLine {
    #[serde(default, deserialize_with = "present")]
    doc_id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    tokens: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    positions: Option<Value>,
}

/// Deserializes a field that is present (even when `null`) as `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A serde_json error message without its " at line L column C" suffix (a sidecar line is
/// always JSON line 1), with the column added back in the sidecar's terms.
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = full.strip_suffix(&suffix).unwrap_or(&full);
    if e.column() > 0 {
        format!("{msg} (column {})", e.column())
    } else {
        msg.to_string()
    }
}

/// Parses and validates one line (`raw` may end with `\n` or `\r\n`).
fn parse_line(raw: &[u8], path: &Path, line: u64) -> Result<SidecarEntry> {
    let err = |m: String| Error::format(path, format!("line {line}: {m}"));
    let text = std::str::from_utf8(raw).map_err(|e| {
        err(format!(
            "not valid UTF-8 (invalid byte at column {})",
            e.valid_up_to() + 1
        ))
    })?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Err(err(
            "blank line (the sidecar needs exactly one JSON object per line, one line per document)"
                .into(),
        ));
    }
    let invalid = |e: serde_json::Error| err(format!("invalid JSON: {}", json_message(&e)));
    if !text.trim_start().starts_with('{') {
        // Serde would accept a JSON array for a struct: reject every non-object here.
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(invalid)?;
        return Err(err(
            "expected a JSON object with fields `doc_id`, `tokens` and `positions`".into(),
        ));
    }
    let parsed: RawLine = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            err(json_message(&e))
        } else {
            invalid(e)
        }
    })?;
    let missing = |f: &str| err(format!("missing field `{f}`"));

    let doc_id = parsed.doc_id.ok_or_else(|| missing("doc_id"))?;
    let doc_id = match doc_id.as_i64() {
        Some(id) if id >= 0 => id,
        _ => {
            return Err(err(format!(
                "`doc_id` must be an integer ≥ 0, found {doc_id}"
            )))
        }
    };

    let tokens = match parsed.tokens.ok_or_else(|| missing("tokens"))? {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, t)| match t {
                Value::String(s) => Ok(s),
                other => Err(err(format!(
                    "`tokens[{i}]` must be a string, found {other}"
                ))),
            })
            .collect::<Result<Vec<String>>>()?,
        other => {
            return Err(err(format!(
                "`tokens` must be an array of strings, found {other}"
            )))
        }
    };

    let positions = match parsed.positions.ok_or_else(|| missing("positions"))? {
        Value::Array(items) => items,
        other => {
            return Err(err(format!(
                "`positions` must be an array of integers, found {other}"
            )))
        }
    };
    let mut out = Vec::with_capacity(positions.len());
    for (i, p) in positions.iter().enumerate() {
        let pos = match p.as_i64() {
            Some(v) if v >= 0 => v,
            _ => {
                return Err(err(format!(
                    "`positions[{i}]` must be an integer ≥ 0, found {p}"
                )))
            }
        };
        if let Some(&prev) = out.last() {
            if pos <= prev {
                return Err(err(format!(
                    "`positions` must be strictly increasing ({pos} after {prev})"
                )));
            }
        }
        if pos as u64 >= tokens.len() as u64 {
            return Err(err(format!(
                "`positions[{i}]` = {pos} is out of range: the document has {} tokens",
                tokens.len()
            )));
        }
        out.push(pos);
    }
    Ok(SidecarEntry {
        document: Document { doc_id, tokens },
        positions: out,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(line: &str) -> String {
        match parse_line(line.as_bytes(), Path::new("s.jsonl"), 7) {
            Err(Error::Format { message, .. }) => message,
            other => panic!("expected an error for {line}, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_line_and_ignores_extra_fields() {
        let e = parse_line(
            br#"{"doc_id": 3, "text": "x", "tokens": ["<bos>", "a", "b"], "positions": [0, 2]}
"#,
            Path::new("s"),
            1,
        )
        .unwrap();
        assert_eq!(e.document.doc_id, 3);
        assert_eq!(e.document.tokens, ["<bos>", "a", "b"]);
        assert_eq!(e.positions, [0, 2]);
        // CRLF and empty positions are fine.
        let e = parse_line(
            b"{\"doc_id\": 0, \"tokens\": [], \"positions\": []}\r\n",
            Path::new("s"),
            1,
        )
        .unwrap();
        assert!(e.positions.is_empty());
    }

    #[test]
    fn reports_bad_lines() {
        let cases = [
            ("", "line 7: blank line"),
            ("   ", "line 7: blank line"),
            ("{\"doc_id\": 1,", "line 7: invalid JSON"),
            ("[1, 2]", "line 7: expected a JSON object"),
            ("[1, 2", "line 7: invalid JSON"),
            (
                "{\"doc_id\": 1, \"doc_id\": 2}",
                "line 7: duplicate field `doc_id`",
            ),
            (
                r#"{"tokens": ["a"], "positions": [0]}"#,
                "line 7: missing field `doc_id`",
            ),
            (
                r#"{"doc_id": 1, "positions": [0]}"#,
                "line 7: missing field `tokens`",
            ),
            (
                r#"{"doc_id": 1, "tokens": ["a"]}"#,
                "line 7: missing field `positions`",
            ),
            (
                r#"{"doc_id": -1, "tokens": ["a"], "positions": [0]}"#,
                "`doc_id` must be an integer ≥ 0, found -1",
            ),
            (
                r#"{"doc_id": 1.5, "tokens": ["a"], "positions": [0]}"#,
                "`doc_id` must be an integer",
            ),
            (
                r#"{"doc_id": null, "tokens": ["a"], "positions": [0]}"#,
                "found null",
            ),
            (
                r#"{"doc_id": 1, "tokens": "a", "positions": [0]}"#,
                "`tokens` must be an array",
            ),
            (
                r#"{"doc_id": 1, "tokens": ["a", 2], "positions": [0]}"#,
                "`tokens[1]` must be a string",
            ),
            (
                r#"{"doc_id": 1, "tokens": ["a"], "positions": 0}"#,
                "`positions` must be an array",
            ),
            (
                r#"{"doc_id": 1, "tokens": ["a", "b"], "positions": [-1]}"#,
                "`positions[0]` must be an integer ≥ 0",
            ),
            (
                r#"{"doc_id": 1, "tokens": ["a","b","c","d","e","f"], "positions": [5, 5]}"#,
                "`positions` must be strictly increasing (5 after 5)",
            ),
            (
                r#"{"doc_id": 1, "tokens": ["a","b"], "positions": [1, 0]}"#,
                "strictly increasing (0 after 1)",
            ),
            (
                r#"{"doc_id": 1, "tokens": ["a","b"], "positions": [2]}"#,
                "`positions[0]` = 2 is out of range: the document has 2 tokens",
            ),
        ];
        for (line, want) in cases {
            let m = msg(line);
            assert!(m.contains(want), "{line}: {m}");
        }
        match parse_line(
            b"{\"doc_id\": 1, \"tokens\": [\"\xff\"]}",
            Path::new("s"),
            2,
        ) {
            Err(Error::Format { message, .. }) => {
                assert!(message.contains("line 2: not valid UTF-8"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sidecar_path_appends_the_suffix() {
        assert_eq!(
            sidecar_path(Path::new("/d/acts.safetensors")),
            PathBuf::from("/d/acts.safetensors.provenance.jsonl")
        );
    }
}
