//! Text corpora: plain text, JSON Lines and Parquet files streamed as documents.
//!
//! A [`CorpusReader`] opens a list of files (checking up front that each exists, has a known
//! format and, for Parquet, holds a string column of the wanted name), then yields
//! [`CorpusDocument`]s one at a time without ever holding a whole file in memory (except in
//! [`TextMode::Whole`]). Documents that are empty or shorter than
//! [`CorpusOptions::min_chars`] are skipped and counted ([`CorpusStats`]); malformed records
//! are errors that name the file and the line (or Parquet row) and field, or, with
//! [`CorpusOptions::skip_invalid`], are skipped and counted too.
//!
//! The document order is the file order, or a seeded streaming shuffle of it
//! ([`Shuffle`], the scheme of Hugging Face datasets' `shuffle(seed, buffer_size)`), and
//! [`CorpusReader::fingerprint`] hashes exactly what was emitted so a build can record what it
//! read. `docs/corpora.md` states every definition.
//!
//! | extension | format |
//! |---|---|
//! | `.txt` | plain UTF-8 text, split by [`TextMode`] |
//! | `.jsonl`, `.ndjson`, `.json` | JSON Lines: one object per line, the text in [`CorpusOptions::text_field`] |
//! | `.parquet` | a string column named [`CorpusOptions::text_field`] (uncompressed, snappy, gzip, zstd or lz4 pages) |
//!
//! Text and JSON Lines files may carry a `.gz` or `.zst` suffix (`train.jsonl.zst`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parquet::basic::{Compression as ParquetCodec, ConvertedType, LogicalType, Repetition};
use parquet::column::reader::ColumnReaderImpl;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// The extensions [`CorpusReader`] recognises, as listed in its errors.
pub const SUPPORTED_EXTENSIONS: &str =
    ".txt, .jsonl, .ndjson, .json (each optionally followed by .gz or .zst), .parquet";

/// Buffer size of the line readers.
const READ_BUFFER: usize = 1 << 18;

/// Parquet rows decoded per column-reader call.
const PARQUET_BATCH: usize = 1024;

/// How a `.txt` file is split into documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextMode {
    /// One document per line (empty and whitespace-only lines are skipped and counted as empty).
    #[default]
    Lines,
    /// Documents separated by one or more blank (empty or whitespace-only) lines; a document's
    /// lines are joined with `\n`.
    Paragraphs,
    /// The whole file is one document (the only mode that holds a whole file in memory).
    Whole,
}

/// A seeded streaming shuffle: a buffer of `buffer` documents, from which a uniformly random
/// one is emitted and replaced by the next document of the input (see `docs/corpora.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shuffle {
    /// Seed of the random generator (SplitMix64).
    pub seed: u64,
    /// Number of documents held in the buffer (at least 1; 1 keeps the file order).
    pub buffer: usize,
}

/// How a corpus is read and filtered. Deserializing fills missing fields with the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorpusOptions {
    /// The JSON Lines field, or the Parquet column, that holds the text (default `"text"`).
    pub text_field: String,
    /// Documents with fewer Unicode scalar values (`char`s) than this are skipped (default 0).
    pub min_chars: usize,
    /// How `.txt` files are split into documents (default [`TextMode::Lines`]).
    pub text_mode: TextMode,
    /// A seeded shuffle of the document order; `None` keeps the file order (default).
    pub shuffle: Option<Shuffle>,
    /// Skip (and count) malformed records instead of failing on the first one (default false).
    pub skip_invalid: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            text_field: "text".to_string(),
            min_chars: 0,
            text_mode: TextMode::Lines,
            shuffle: None,
            skip_invalid: false,
        }
    }
}

/// One document of a corpus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusDocument {
    /// Position in the emitted document order (0-based; skipped documents are not counted).
    pub index: u64,
    /// Index of the file in the list given to [`CorpusReader::open`].
    pub file: usize,
    /// Where the document starts in its file: the 1-based line for text and JSON Lines files
    /// (the first line of a paragraph, 1 for [`TextMode::Whole`]), the 0-based row for Parquet.
    pub record: u64,
    /// The document's text.
    pub text: String,
}

/// Counters of a [`CorpusReader`], updated as it reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusStats {
    /// Documents emitted so far.
    pub documents: u64,
    /// Documents skipped because their text is empty or whitespace-only.
    pub skipped_empty: u64,
    /// Documents skipped because they have fewer than `min_chars` characters.
    pub skipped_short: u64,
    /// Malformed records skipped (only with `skip_invalid`).
    pub skipped_invalid: u64,
    /// Input bytes consumed: decompressed bytes of every line read (terminators included) for
    /// text and JSON Lines files, bytes of the text values read for Parquet.
    pub bytes_read: u64,
}

/// The format of a corpus file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusFormat {
    /// `.txt`
    Text,
    /// `.jsonl`, `.ndjson`, `.json`
    JsonLines,
    /// `.parquet`
    Parquet,
}

/// The compression of a text or JSON Lines file, from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression suffix.
    None,
    /// `.gz` (gzip; concatenated members are read in turn).
    Gzip,
    /// `.zst` (Zstandard; concatenated frames are read in turn).
    Zstd,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// The format and compression of `path`, from its (case-insensitive) extension.
pub fn detect_format(path: &Path) -> Result<(CorpusFormat, Compression)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (stem, compression) = if let Some(stem) = name.strip_suffix(".gz") {
        (stem, Compression::Gzip)
    } else if let Some(stem) = name.strip_suffix(".zst") {
        (stem, Compression::Zstd)
    } else {
        (name.as_str(), Compression::None)
    };
    let format = if stem.ends_with(".txt") {
        CorpusFormat::Text
    } else if stem.ends_with(".jsonl") || stem.ends_with(".ndjson") || stem.ends_with(".json") {
        CorpusFormat::JsonLines
    } else if stem.ends_with(".parquet") {
        if compression != Compression::None {
            return Err(Error::format(
                path,
                format!(
                    "a {} compressed Parquet file is not supported (Parquet compresses its pages \
                     itself; decompress the file first)",
                    compression.name()
                ),
            ));
        }
        CorpusFormat::Parquet
    } else {
        return Err(Error::format(
            path,
            format!("unrecognised corpus file extension (supported: {SUPPORTED_EXTENSIONS})"),
        ));
    };
    Ok((format, compression))
}

/// Streams the documents of a list of corpus files, in file order or a seeded shuffle of it.
///
/// After an error the reader is finished: later calls return `Ok(None)`.
pub struct CorpusReader {
    paths: Vec<PathBuf>,
    kinds: Vec<(CorpusFormat, Compression)>,
    options: CorpusOptions,
    /// Index of the next file to open.
    next_file: usize,
    /// The file being read, with its index.
    current: Option<(usize, Source)>,
    shuffle: Option<ShuffleState>,
    /// Every file has been read to its end.
    input_done: bool,
    finished: bool,
    stats: CorpusStats,
    hasher: Sha256,
}

impl CorpusReader {
    /// Opens `paths` (read in this order), checking up front that each file exists and has a
    /// supported format: a recognised extension, the magic bytes of its compression, and for
    /// Parquet a readable footer and a string column named `options.text_field`.
    pub fn open(paths: &[PathBuf], options: CorpusOptions) -> Result<Self> {
        if paths.is_empty() {
            return Err(Error::EmptyInput("no corpus files given".to_string()));
        }
        if options.text_field.is_empty() {
            return Err(Error::param("text_field", "must not be empty"));
        }
        if let Some(shuffle) = options.shuffle {
            if shuffle.buffer == 0 {
                return Err(Error::param(
                    "shuffle buffer",
                    "must hold at least 1 document",
                ));
            }
        }
        let mut kinds = Vec::with_capacity(paths.len());
        for path in paths {
            let kind = detect_format(path)?;
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if meta.is_dir() {
                return Err(Error::format(path, "is a directory, not a corpus file"));
            }
            match kind {
                (CorpusFormat::Parquet, _) => {
                    ParquetSource::open(path, &options.text_field)?;
                }
                (_, compression) => check_magic(path, compression)?,
            }
            kinds.push(kind);
        }
        let shuffle = options.shuffle.map(|s| ShuffleState {
            rng: SplitMix64::new(s.seed),
            capacity: s.buffer,
            buffer: Vec::with_capacity(s.buffer.min(1 << 16)),
        });
        Ok(CorpusReader {
            paths: paths.to_vec(),
            kinds,
            options,
            next_file: 0,
            current: None,
            shuffle,
            input_done: false,
            finished: false,
            stats: CorpusStats::default(),
            hasher: Sha256::new(),
        })
    }

    /// The files, in reading order.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The options the reader was opened with.
    pub fn options(&self) -> &CorpusOptions {
        &self.options
    }

    /// The counters so far.
    pub fn stats(&self) -> CorpusStats {
        self.stats
    }

    /// Lowercase hex SHA-256 of the documents emitted so far, in emitted order: for each
    /// document, its text's UTF-8 length as 8 little-endian bytes, then the text's bytes.
    /// Call it after the last document to fingerprint the whole corpus as read.
    pub fn fingerprint(&self) -> String {
        let digest = self.hasher.clone().finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The next document, `Ok(None)` at the end. Reaching the end without having emitted any
    /// document is [`Error::EmptyInput`].
    pub fn next_document(&mut self) -> Result<Option<CorpusDocument>> {
        if self.finished {
            return Ok(None);
        }
        match self.advance() {
            Ok(Some(record)) => Ok(Some(self.emit(record))),
            Ok(None) => {
                self.finished = true;
                if self.stats.documents == 0 {
                    return Err(self.empty_error());
                }
                Ok(None)
            }
            Err(e) => {
                self.finished = true;
                self.current = None;
                Err(e)
            }
        }
    }

    /// The next record to emit, in the final (possibly shuffled) order.
    fn advance(&mut self) -> Result<Option<Record>> {
        let Some(mut shuffle) = self.shuffle.take() else {
            return self.next_accepted();
        };
        let result = self.advance_shuffled(&mut shuffle);
        self.shuffle = Some(shuffle);
        result
    }

    fn advance_shuffled(&mut self, shuffle: &mut ShuffleState) -> Result<Option<Record>> {
        while !self.input_done && shuffle.buffer.len() < shuffle.capacity {
            match self.next_accepted()? {
                Some(record) => shuffle.buffer.push(record),
                None => self.input_done = true,
            }
        }
        if !self.input_done {
            if let Some(record) = self.next_accepted()? {
                let i = shuffle.rng.below(shuffle.capacity as u64) as usize;
                return Ok(Some(std::mem::replace(&mut shuffle.buffer[i], record)));
            }
            self.input_done = true;
        }
        if shuffle.buffer.is_empty() {
            return Ok(None);
        }
        let i = shuffle.rng.below(shuffle.buffer.len() as u64) as usize;
        Ok(Some(shuffle.buffer.swap_remove(i)))
    }

    fn emit(&mut self, record: Record) -> CorpusDocument {
        let bytes = record.text.as_bytes();
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
        let index = self.stats.documents;
        self.stats.documents += 1;
        CorpusDocument {
            index,
            file: record.file,
            record: record.record,
            text: record.text,
        }
    }

    /// The next document of the input (file order) that passes the filters.
    fn next_accepted(&mut self) -> Result<Option<Record>> {
        loop {
            let Some((file, source)) = self.current.as_mut() else {
                if self.next_file == self.paths.len() {
                    return Ok(None);
                }
                let i = self.next_file;
                self.next_file += 1;
                let source = Source::open(&self.paths[i], self.kinds[i], &self.options)?;
                self.current = Some((i, source));
                continue;
            };
            let file = *file;
            let item = source.next_item(&self.options.text_field, &mut self.stats.bytes_read)?;
            match item {
                None => self.current = None,
                Some(Item::Invalid(error)) => {
                    if !self.options.skip_invalid {
                        return Err(error);
                    }
                    self.stats.skipped_invalid += 1;
                }
                Some(Item::Text { record, text }) => {
                    if text.trim().is_empty() {
                        self.stats.skipped_empty += 1;
                    } else if self.options.min_chars > 0
                        && text.chars().take(self.options.min_chars).count()
                            < self.options.min_chars
                    {
                        self.stats.skipped_short += 1;
                    } else {
                        return Ok(Some(Record { file, record, text }));
                    }
                }
            }
        }
    }

    fn empty_error(&self) -> Error {
        const NAMED: usize = 5;
        let mut files = self
            .paths
            .iter()
            .take(NAMED)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if self.paths.len() > NAMED {
            files += &format!(" and {} more files", self.paths.len() - NAMED);
        }
        let s = &self.stats;
        Error::EmptyInput(format!(
            "no documents in {files} after filtering ({} empty, {} shorter than {} characters, \
             {} invalid skipped)",
            s.skipped_empty, s.skipped_short, self.options.min_chars, s.skipped_invalid
        ))
    }
}

impl Iterator for CorpusReader {
    type Item = Result<CorpusDocument>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_document().transpose()
    }
}

/// A document before it is numbered.
struct Record {
    file: usize,
    record: u64,
    text: String,
}

/// What a source yields: a document's text (not yet filtered) or a malformed record.
enum Item {
    Text { record: u64, text: String },
    Invalid(Error),
}

// ----------------------------------------------------------------------------------------------
// Shuffle

struct ShuffleState {
    rng: SplitMix64,
    capacity: usize,
    buffer: Vec<Record>,
}

// ----------------------------------------------------------------------------------------------
// Sources

enum Source {
    Text(TextSource),
    Json(JsonSource),
    Parquet(Box<ParquetSource>),
}

impl Source {
    fn open(
        path: &Path,
        kind: (CorpusFormat, Compression),
        options: &CorpusOptions,
    ) -> Result<Self> {
        Ok(match kind.0 {
            CorpusFormat::Text => Source::Text(TextSource {
                lines: LineReader::open(path, kind.1)?,
                mode: options.text_mode,
                done: false,
            }),
            CorpusFormat::JsonLines => Source::Json(JsonSource {
                lines: LineReader::open(path, kind.1)?,
            }),
            CorpusFormat::Parquet => {
                Source::Parquet(Box::new(ParquetSource::open(path, &options.text_field)?))
            }
        })
    }

    fn next_item(&mut self, field: &str, bytes_read: &mut u64) -> Result<Option<Item>> {
        match self {
            Source::Text(s) => s.next_item(bytes_read),
            Source::Json(s) => s.next_item(field, bytes_read),
            Source::Parquet(s) => s.next_item(field, bytes_read),
        }
    }
}

/// Checks the magic bytes of a compressed file, so a misnamed file fails at open.
fn check_magic(path: &Path, compression: Compression) -> Result<()> {
    let magic: &[u8] = match compression {
        Compression::None => {
            File::open(path).map_err(|e| Error::io(path, e))?;
            return Ok(());
        }
        Compression::Gzip => &[0x1f, 0x8b],
        Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
    };
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut head[got..magic.len()]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    if head[..got] != *magic {
        let what = if got == 0 { " (the file is empty)" } else { "" };
        return Err(Error::format(
            path,
            format!("not a {} file: bad magic bytes{what}", compression.name()),
        ));
    }
    Ok(())
}

/// A file whose read errors are flagged, so that the errors of a decompressor over it can be
/// told apart from the operating system's.
struct FlaggedFile {
    file: File,
    os_error: Arc<AtomicBool>,
}

impl Read for FlaggedFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let result = self.file.read(buf);
        if let Err(e) = &result {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.os_error.store(true, Ordering::Relaxed);
            }
        }
        result
    }
}

/// Reads the (decompressed) lines of a file as bytes.
struct LineReader {
    path: PathBuf,
    compression: Compression,
    reader: Box<dyn BufRead + Send>,
    os_error: Arc<AtomicBool>,
    /// 1-based number of the last line read (0 before the first).
    line: u64,
    /// Decompressed offset of the start of the last line read.
    offset: u64,
    /// Bytes of the last line read, terminator included.
    last_len: u64,
    /// Bytes of the last line read, terminator stripped.
    buf: Vec<u8>,
}

impl LineReader {
    fn open(path: &Path, compression: Compression) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let os_error = Arc::new(AtomicBool::new(false));
        let flagged = FlaggedFile {
            file,
            os_error: Arc::clone(&os_error),
        };
        let reader: Box<dyn BufRead + Send> = match compression {
            Compression::None => Box::new(BufReader::with_capacity(READ_BUFFER, flagged)),
            Compression::Gzip => Box::new(BufReader::with_capacity(
                READ_BUFFER,
                flate2::read::MultiGzDecoder::new(flagged),
            )),
            Compression::Zstd => Box::new(BufReader::with_capacity(
                READ_BUFFER,
                zstd::stream::read::Decoder::new(flagged).map_err(|e| Error::io(path, e))?,
            )),
        };
        Ok(LineReader {
            path: path.to_path_buf(),
            compression,
            reader,
            os_error,
            line: 0,
            offset: 0,
            last_len: 0,
            buf: Vec::new(),
        })
    }

    /// Reads the next line into `self.buf` (terminator stripped); false at the end of the file.
    fn next_line(&mut self, bytes_read: &mut u64) -> Result<bool> {
        self.offset += self.last_len;
        self.last_len = 0;
        self.buf.clear();
        let n = match self.reader.read_until(b'\n', &mut self.buf) {
            Ok(n) => n,
            Err(e) => return Err(self.read_error(e)),
        };
        if n == 0 {
            return Ok(false);
        }
        *bytes_read += n as u64;
        self.last_len = n as u64;
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        Ok(true)
    }

    fn read_error(&self, e: std::io::Error) -> Error {
        if self.compression == Compression::None || self.os_error.load(Ordering::Relaxed) {
            return Error::io(&self.path, e);
        }
        Error::format(
            &self.path,
            format!(
                "truncated or corrupt {} stream ({e}) while reading line {}",
                self.compression.name(),
                self.line + 1
            ),
        )
    }

    /// The last line as UTF-8 (a leading byte-order mark stripped from line 1), or the error
    /// naming the line and the first bad byte.
    fn line_text(&self) -> std::result::Result<&str, Error> {
        match std::str::from_utf8(&self.buf) {
            Ok(text) if self.line == 1 => Ok(text.strip_prefix('\u{feff}').unwrap_or(text)),
            Ok(text) => Ok(text),
            Err(e) => Err(self.utf8_error(self.line, e.valid_up_to(), self.offset)),
        }
    }

    fn utf8_error(&self, line: u64, byte_in_line: usize, line_offset: u64) -> Error {
        let stream = if self.compression == Compression::None {
            "file"
        } else {
            "decompressed stream"
        };
        Error::format(
            &self.path,
            format!(
                "line {line}: invalid UTF-8 at byte {byte_in_line} of the line (byte offset {} in \
                 the {stream})",
                line_offset + byte_in_line as u64
            ),
        )
    }

    /// The rest of the (decompressed) file, for [`TextMode::Whole`].
    fn read_rest(&mut self, bytes_read: &mut u64) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        if let Err(e) = self.reader.read_to_end(&mut bytes) {
            return Err(self.read_error(e));
        }
        *bytes_read += bytes.len() as u64;
        Ok(bytes)
    }
}

/// A `.txt` file split by a [`TextMode`].
struct TextSource {
    lines: LineReader,
    mode: TextMode,
    done: bool,
}

impl TextSource {
    fn next_item(&mut self, bytes_read: &mut u64) -> Result<Option<Item>> {
        if self.done {
            return Ok(None);
        }
        match self.mode {
            TextMode::Lines => {
                if !self.lines.next_line(bytes_read)? {
                    self.done = true;
                    return Ok(None);
                }
                let record = self.lines.line;
                Ok(Some(match self.lines.line_text() {
                    Ok(text) => Item::Text {
                        record,
                        text: text.to_string(),
                    },
                    Err(e) => Item::Invalid(e),
                }))
            }
            TextMode::Paragraphs => self.next_paragraph(bytes_read),
            TextMode::Whole => {
                self.done = true;
                let bytes = self.lines.read_rest(bytes_read)?;
                match String::from_utf8(bytes) {
                    Ok(mut text) => {
                        if text.starts_with('\u{feff}') {
                            text.drain(..'\u{feff}'.len_utf8());
                        }
                        Ok(Some(Item::Text { record: 1, text }))
                    }
                    Err(e) => {
                        let bad = e.utf8_error().valid_up_to();
                        let before = &e.as_bytes()[..bad];
                        let line = 1 + before.iter().filter(|&&b| b == b'\n').count() as u64;
                        let line_start = before
                            .iter()
                            .rposition(|&b| b == b'\n')
                            .map_or(0, |i| i + 1);
                        Ok(Some(Item::Invalid(self.lines.utf8_error(
                            line,
                            bad - line_start,
                            line_start as u64,
                        ))))
                    }
                }
            }
        }
    }

    /// The next run of non-blank lines, joined with `\n`; a paragraph with a non-UTF-8 line is
    /// invalid as a whole (its first bad line is reported).
    fn next_paragraph(&mut self, bytes_read: &mut u64) -> Result<Option<Item>> {
        let mut text = String::new();
        let mut start = None;
        let mut invalid = None;
        loop {
            if !self.lines.next_line(bytes_read)? {
                self.done = true;
                break;
            }
            let line = self.lines.line;
            match self.lines.line_text() {
                Ok(t) if t.trim().is_empty() => {
                    if start.is_some() {
                        break;
                    }
                }
                Ok(t) => {
                    if start.is_none() {
                        start = Some(line);
                    } else {
                        text.push('\n');
                    }
                    text.push_str(t);
                }
                Err(e) => {
                    start.get_or_insert(line);
                    invalid.get_or_insert(e);
                }
            }
        }
        Ok(start.map(|record| match invalid {
            Some(e) => Item::Invalid(e),
            None => Item::Text { record, text },
        }))
    }
}

/// A JSON Lines file: one object per line, the text in a string field. Blank lines are not
/// records and are passed over.
struct JsonSource {
    lines: LineReader,
}

impl JsonSource {
    fn next_item(&mut self, field: &str, bytes_read: &mut u64) -> Result<Option<Item>> {
        loop {
            if !self.lines.next_line(bytes_read)? {
                return Ok(None);
            }
            let line = self.lines.line;
            let json = match self.lines.line_text() {
                Ok(json) => json,
                Err(e) => return Ok(Some(Item::Invalid(e))),
            };
            if json.trim().is_empty() {
                continue;
            }
            return Ok(Some(match text_of_json_line(json, field) {
                Ok(text) => Item::Text { record: line, text },
                Err(message) => Item::Invalid(Error::format(
                    &self.lines.path,
                    format!("line {line}: {message}"),
                )),
            }));
        }
    }
}

/// The string in `field` of the JSON object `json`, or what is wrong with the line. Only that
/// field is materialised; the others are parsed and dropped.
fn text_of_json_line(json: &str, field: &str) -> std::result::Result<String, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let found = FieldSeed(field)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found));
    match found {
        Err(e) => {
            let message = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            let hint = if json.trim_start().starts_with('[') {
                "; a file is read as JSON Lines, one object per line, so a top-level JSON array \
                 is not supported"
            } else if e.is_eof() {
                "; JSON Lines holds one complete object per line"
            } else {
                ""
            };
            Err(format!(
                "invalid JSON: {message} (column {}){hint}",
                e.column()
            ))
        }
        Ok(Found::NotObject(kind)) => Err(format!("expected a JSON object, found {kind}")),
        Ok(Found::Missing) => Err(format!("missing field `{field}`")),
        Ok(Found::Value(serde_json::Value::String(text))) => Ok(text),
        Ok(Found::Value(value)) => Err(format!(
            "field `{field}` is not a string (found {})",
            json_kind(&value)
        )),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// What a JSON line holds under the wanted field.
enum Found {
    Missing,
    Value(serde_json::Value),
    NotObject(&'static str),
}

/// Deserializes a JSON value, keeping only the (last) value of the field named `.0` of an object.
struct FieldSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Found;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        de: D,
    ) -> std::result::Result<Found, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = Found;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Found, A::Error> {
        let mut found = Found::Missing;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted {
                found = Found::Value(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Found, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::NotObject("array"))
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Found, E> {
        Ok(Found::NotObject("boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> std::result::Result<Found, E> {
        Ok(Found::NotObject("number"))
    }

    fn visit_u64<E>(self, _: u64) -> std::result::Result<Found, E> {
        Ok(Found::NotObject("number"))
    }

    fn visit_f64<E>(self, _: f64) -> std::result::Result<Found, E> {
        Ok(Found::NotObject("number"))
    }

    fn visit_str<E>(self, _: &str) -> std::result::Result<Found, E> {
        Ok(Found::NotObject("string"))
    }

    fn visit_unit<E>(self) -> std::result::Result<Found, E> {
        Ok(Found::NotObject("null"))
    }
}

/// Deserializes an object key to whether it equals `.0`, without allocating.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        de: D,
    ) -> std::result::Result<bool, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> std::result::Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Runs a call into the `parquet` crate, turning a panic into an error. Its decoders assert
/// instead of returning an error on some corrupt inputs (a dictionary page whose value lengths
/// run past the page: `assertion failed: size <= src.len()` in `bit_util::read_num_bytes`;
/// upstream apache/arrow-rs#9705 is of the same kind), and a corrupt file must be an error
/// naming it, not a crash. After such a panic the file's reader is dropped (the error ends the
/// corpus), so no state it left half-updated is used again.
fn parquet_guard<T>(
    call: impl FnOnce() -> parquet::errors::Result<T>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            Err(format!(
                "corrupt data (the Parquet decoder panicked: {what})"
            ))
        }
    }
}

/// The page compressions the Parquet reader decodes.
const PARQUET_CODECS: &str = "uncompressed, snappy, gzip, zstd, lz4, lz4_raw";

/// What a Parquet text column must be.
const PARQUET_STRING: &str = "strings: BYTE_ARRAY annotated STRING or UTF8";

/// A Parquet file's text column, read a batch of rows at a time, one row group after another.
struct ParquetSource {
    path: PathBuf,
    reader: SerializedFileReader<File>,
    column: usize,
    descr: parquet::schema::types::ColumnDescPtr,
    next_row_group: usize,
    column_reader: Option<ColumnReaderImpl<ByteArrayType>>,
    /// The non-null values of the current batch.
    values: Vec<ByteArray>,
    /// The definition levels of the current batch (empty for a required column).
    defs: Vec<i16>,
    /// Rows in the current batch.
    batch_len: usize,
    /// Next row of the batch.
    pos: usize,
    /// Next value of the batch.
    value_pos: usize,
    /// 0-based index in the file of the next row.
    row: u64,
}

impl ParquetSource {
    /// Opens `path` and finds the top-level string column `field`.
    fn open(path: &Path, field: &str) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader = parquet_guard(|| SerializedFileReader::new(file))
            .map_err(|e| Error::format(path, format!("not a readable Parquet file: {e}")))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let fields = schema.root_schema().get_fields();
        let Some(top) = fields.iter().find(|f| f.name() == field) else {
            let names = fields
                .iter()
                .map(|f| format!("`{}`", f.name()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::format(
                path,
                format!("no column `{field}` (columns: {names})"),
            ));
        };
        if top.is_group() {
            return Err(Error::format(
                path,
                format!("column `{field}` is a group (struct, list or map), not a string column"),
            ));
        }
        let info = top.get_basic_info();
        if info.has_repetition() && info.repetition() == Repetition::REPEATED {
            return Err(Error::format(
                path,
                format!("column `{field}` is repeated (a list), not a string column"),
            ));
        }
        let column = (0..schema.num_columns())
            .find(|&i| schema.column(i).path().parts() == [field])
            .ok_or_else(|| Error::format(path, format!("no leaf column `{field}`")))?;
        let descr = schema.column(column);
        let is_string = descr.physical_type() == parquet::basic::Type::BYTE_ARRAY
            && (matches!(descr.logical_type_ref(), Some(LogicalType::String))
                || descr.converted_type() == ConvertedType::UTF8);
        if !is_string {
            let mut dtype = format!("{}", descr.physical_type());
            if let Some(logical) = descr.logical_type_ref() {
                dtype += &format!(" ({logical:?})");
            } else if descr.converted_type() != ConvertedType::NONE {
                dtype += &format!(" ({})", descr.converted_type());
            } else if descr.physical_type() == parquet::basic::Type::BYTE_ARRAY {
                dtype += " (binary)";
            }
            return Err(Error::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: format!("{dtype} in column `{field}`"),
                supported: PARQUET_STRING,
            });
        }
        for (group, meta) in reader.metadata().row_groups().iter().enumerate() {
            let codec = meta.column(column).compression();
            if !matches!(
                codec,
                ParquetCodec::UNCOMPRESSED
                    | ParquetCodec::SNAPPY
                    | ParquetCodec::GZIP(_)
                    | ParquetCodec::ZSTD(_)
                    | ParquetCodec::LZ4
                    | ParquetCodec::LZ4_RAW
            ) {
                return Err(Error::format(
                    path,
                    format!(
                        "row group {group}: column `{field}` is compressed with {codec}, which \
                         this build does not read (supported: {PARQUET_CODECS})"
                    ),
                ));
            }
        }
        Ok(ParquetSource {
            path: path.to_path_buf(),
            reader,
            column,
            descr,
            next_row_group: 0,
            column_reader: None,
            values: Vec::new(),
            defs: Vec::new(),
            batch_len: 0,
            pos: 0,
            value_pos: 0,
            row: 0,
        })
    }

    fn next_item(&mut self, field: &str, bytes_read: &mut u64) -> Result<Option<Item>> {
        loop {
            if self.pos < self.batch_len {
                let row = self.row;
                self.row += 1;
                let i = self.pos;
                self.pos += 1;
                let max_def = self.descr.max_def_level();
                if max_def > 0 && self.defs.get(i).is_none_or(|&d| d < max_def) {
                    return Ok(Some(Item::Invalid(Error::format(
                        &self.path,
                        format!("row {row}: field `{field}` is null"),
                    ))));
                }
                let Some(value) = self.values.get(self.value_pos) else {
                    return Err(Error::format(
                        &self.path,
                        format!("row {row}: column `{field}` has fewer values than rows"),
                    ));
                };
                self.value_pos += 1;
                *bytes_read += value.len() as u64;
                return Ok(Some(match std::str::from_utf8(value.data()) {
                    Ok(text) => Item::Text {
                        record: row,
                        text: text.to_string(),
                    },
                    Err(e) => Item::Invalid(Error::format(
                        &self.path,
                        format!(
                            "row {row}: field `{field}` is not valid UTF-8 (invalid byte at \
                             offset {} of the value)",
                            e.valid_up_to()
                        ),
                    )),
                }));
            }
            if !self.refill()? {
                return Ok(None);
            }
        }
    }

    /// Decodes the next batch of rows, opening the next row group when needed; false at the end
    /// of the file.
    fn refill(&mut self) -> Result<bool> {
        loop {
            let column_reader = match &mut self.column_reader {
                Some(reader) => reader,
                None => {
                    if self.next_row_group >= self.reader.num_row_groups() {
                        return Ok(false);
                    }
                    let group = self.next_row_group;
                    self.next_row_group += 1;
                    let (reader, column) = (&self.reader, self.column);
                    let pages = parquet_guard(|| {
                        reader
                            .get_row_group(group)
                            .and_then(|g| g.get_column_page_reader(column))
                    })
                    .map_err(|e| Error::format(&self.path, format!("row group {group}: {e}")))?;
                    self.column_reader
                        .insert(ColumnReaderImpl::new(self.descr.clone(), pages))
                }
            };
            self.values.clear();
            self.defs.clear();
            self.pos = 0;
            self.value_pos = 0;
            let (defs, values) = (&mut self.defs, &mut self.values);
            let (rows, _, _) = parquet_guard(|| {
                column_reader.read_records(PARQUET_BATCH, Some(defs), None, values)
            })
            .map_err(|e| {
                Error::format(
                    &self.path,
                    format!("row {}: cannot decode Parquet data: {e}", self.row),
                )
            })?;
            self.batch_len = rows;
            if rows > 0 {
                return Ok(true);
            }
            self.column_reader = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_extraction() {
        let get = |json: &str| text_of_json_line(json, "text");
        assert_eq!(get(r#"{"text": "a"}"#), Ok("a".to_string()));
        assert_eq!(
            get(r#"{"a": {"text": 1}, "text": "\u00e9\n", "b": [1, {"text": 2}]}"#),
            Ok("é\n".to_string())
        );
        assert_eq!(
            get(r#"{"text": "first", "text": "last"}"#),
            Ok("last".to_string())
        );
        assert_eq!(get(r#"{"a": 1}"#), Err("missing field `text`".to_string()));
        assert_eq!(
            get(r#"{"text": {"x": 1}}"#),
            Err("field `text` is not a string (found object)".to_string())
        );
        assert_eq!(
            get("[1, 2]"),
            Err("expected a JSON object, found array".to_string())
        );
        assert_eq!(
            get("12"),
            Err("expected a JSON object, found number".to_string())
        );
        let e = get(r#"{"text": "a",}"#).unwrap_err();
        assert!(e.starts_with("invalid JSON: "), "{e}");
        assert!(!e.contains("at line"), "{e}");
    }

    #[test]
    fn format_of_paths() {
        assert_eq!(
            detect_format(Path::new("dir.v2/x.JSONL.ZST")).ok(),
            Some((CorpusFormat::JsonLines, Compression::Zstd))
        );
        assert!(detect_format(Path::new("x.txt.bz2")).is_err());
    }
}
