//! Reading input files line by line: JSON Lines (one JSON value a line) or CSV with the
//! spec's column names, UTF-8 with or without a byte-order mark. Every line that cannot be
//! read becomes a [`LineError`] for that line; reading never stops early and never panics,
//! and memory is bounded by the longest line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

use crate::spec::field::excerpt;

/// The layout of an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A header line of field names, then one row per line.
    Csv,
}

impl Format {
    /// CSV for `*.csv`, JSON Lines otherwise.
    pub fn guess(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("csv") => Format::Csv,
            _ => Format::Jsonl,
        }
    }
}

/// Why a line could not be read as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Bytes that are not UTF-8.
    #[error("the line is not UTF-8 text (byte {0})")]
    NotUtf8(usize),
    /// Not JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("expected a JSON object {{...}}, found {0}")]
    NotObject(String),
    /// A CSV line that does not fit the header.
    #[error("CSV: {0}")]
    Csv(String),
}

/// One line of input: its number (1-based, as an editor shows it) and content.
#[derive(Debug)]
pub struct Line {
    /// Line number in the file.
    pub number: u64,
    /// The object on the line, or why there is none.
    pub content: Result<Map<String, Value>, LineError>,
}

/// Reads the lines of one file as JSON objects.
pub struct Lines {
    inner: Inner,
    /// Bytes of the file consumed so far (for progress).
    consumed: u64,
}

enum Inner {
    Jsonl { reader: BufReader<File>, number: u64, buffer: Vec<u8> },
    Csv { reader: csv::Reader<File>, header: Vec<String>, record: csv::ByteRecord },
}

impl Lines {
    /// Opens `path` in `format`.
    pub fn open(path: &Path, format: Format) -> std::io::Result<Lines> {
        let file = File::open(path)?;
        let inner = match format {
            Format::Jsonl => Inner::Jsonl { reader: BufReader::new(file), number: 0, buffer: Vec::new() },
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
                let header = reader
                    .byte_headers()
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("CSV header: {e}")))?
                    .iter()
                    .map(|h| String::from_utf8_lossy(h).trim().trim_start_matches('\u{feff}').to_owned())
                    .collect();
                Inner::Csv { reader, header, record: csv::ByteRecord::new() }
            }
        };
        Ok(Lines { inner, consumed: 0 })
    }

    /// Bytes of the file read so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }
}

impl Iterator for Lines {
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Jsonl { reader, number, buffer } => loop {
                buffer.clear();
                match reader.read_until(b'\n', buffer) {
                    Ok(0) => return None,
                    Ok(n) => {
                        self.consumed += n as u64;
                        *number += 1;
                    }
                    Err(e) => return Some(Err(e)),
                }
                let mut bytes = buffer.as_slice();
                if *number == 1 {
                    bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
                }
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(Ok(Line { number: *number, content: parse_json_object(bytes) }));
            },
            Inner::Csv { reader, header, record } => {
                match reader.read_byte_record(record) {
                    Ok(false) => None,
                    Ok(true) => {
                        self.consumed = record.position().map_or(self.consumed, |p| p.byte());
                        let number = record.position().map_or(0, |p| p.line());
                        Some(Ok(Line { number, content: csv_object(header, record) }))
                    }
                    Err(e) => {
                        let number = e.position().map_or(0, |p| p.line());
                        match e.kind() {
                            csv::ErrorKind::Io(_) => Some(Err(std::io::Error::other(e.to_string()))),
                            _ => Some(Ok(Line { number, content: Err(LineError::Csv(e.to_string())) })),
                        }
                    }
                }
            }
        }
    }
}

/// Parses one JSON Lines line as an object.
pub fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, LineError> {
    let text = std::str::from_utf8(bytes).map_err(|e| LineError::NotUtf8(e.valid_up_to() + 1))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(LineError::NotObject(excerpt(&other.to_string()))),
        Err(e) => Err(LineError::NotJson(e.to_string())),
    }
}

/// A CSV row as an object of its non-empty cells, named by the header.
fn csv_object(header: &[String], record: &csv::ByteRecord) -> Result<Map<String, Value>, LineError> {
    if record.len() != header.len() {
        return Err(LineError::Csv(format!("{} cells, but the header has {} columns", record.len(), header.len())));
    }
    let mut row = Map::new();
    for (name, cell) in header.iter().zip(record.iter()) {
        let text = std::str::from_utf8(cell).map_err(|e| LineError::NotUtf8(e.valid_up_to() + 1))?;
        if !text.trim().is_empty() {
            row.insert(name.clone(), Value::String(text.to_owned()));
        }
    }
    Ok(row)
}

/// Reads a whole small file (for tests and tools); lines as with [`Lines`].
pub fn read_all(path: &Path, format: Format) -> std::io::Result<Vec<Line>> {
    Lines::open(path, format)?.collect()
}

/// Whether a file starts like JSON (used to tell events from records); reads 1 KiB at most.
pub fn looks_like_json(path: &Path) -> bool {
    let mut head = [0u8; 1024];
    let n = File::open(path).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    let text = String::from_utf8_lossy(&head[..n]);
    text.trim_start_matches('\u{feff}').trim_start().starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn json_lines_report_each_bad_line_by_number() {
        let f = file(b"\xef\xbb\xbf{\"a\":1}\n\n{bad\n[1]\n\xff\xfe\r\n{\"b\":\"\xe8\x8d\xaf\"}\r\n");
        let lines = read_all(f.path(), Format::Jsonl).unwrap();
        let summary: Vec<_> = lines.iter().map(|l| (l.number, l.content.as_ref().map(|m| m.len()).map_err(|e| e.to_string()))).collect();
        assert_eq!(summary[0], (1, Ok(1)));
        assert_eq!(summary[1].0, 3);
        assert!(summary[1].1.as_ref().unwrap_err().starts_with("not valid JSON"));
        assert!(summary[2].1.as_ref().unwrap_err().starts_with("expected a JSON object"));
        assert_eq!(summary[3], (5, Err("the line is not UTF-8 text (byte 1)".into())));
        assert_eq!(summary[4], (6, Ok(1)));
    }

    #[test]
    fn a_10_mb_line_is_just_a_bad_line() {
        let mut bytes = b"{\"a\":\"".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 10 << 20));
        bytes.extend(b"\n{\"b\":1}\n");
        let f = file(&bytes);
        let lines = read_all(f.path(), Format::Jsonl).unwrap();
        assert_eq!(lines.len(), 2);
        let error = lines[0].content.as_ref().unwrap_err().to_string();
        assert!(error.len() < 200, "{error}");
        assert!(lines[1].content.is_ok());
    }

    #[test]
    fn csv_rows_are_objects_of_their_non_empty_cells() {
        let f = file("\u{feff}drug_code,spec,stroom_name\n\"X1\",\"10mg, 20片\",\nY,\n\"Z\",s,药\n".as_bytes());
        let lines = read_all(f.path(), Format::Csv).unwrap();
        let first = lines[0].content.as_ref().unwrap();
        assert_eq!(lines[0].number, 2);
        assert_eq!(first["drug_code"], "X1");
        assert_eq!(first["spec"], "10mg, 20片");
        assert!(!first.contains_key("stroom_name"));
        assert!(lines[1].content.as_ref().unwrap_err().to_string().contains("header has 3"));
        assert_eq!(lines[2].content.as_ref().unwrap()["stroom_name"], "药");
        assert_eq!(Format::guess(Path::new("a.CSV")), Format::Csv);
        assert_eq!(Format::guess(Path::new("a.jsonl")), Format::Jsonl);
    }
}
