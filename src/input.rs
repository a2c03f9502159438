//! Reading input files line by line: JSON Lines (one JSON value a line) or CSV with the
//! spec's column names, UTF-8 with or without a byte-order mark (on any line, as on a
//! message body). Every line that cannot be
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
    #[error("not UTF-8 text (byte {0})")]
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
    /// Longer than the largest event or record line; not parsed.
    #[error("too large: {bytes} bytes, at most {max} are taken (no record is near that size; worker.max_event_bytes for events)")]
    TooLong {
        /// The line's or body's size.
        bytes: u64,
        /// The limit.
        max: usize,
    },
    /// An object that names a field twice: which value was meant cannot be known.
    #[error("the field {0} appears more than once in one object; which value counts would be a guess")]
    DuplicateField(String),
}

/// One line of input: its number (1-based, as an editor shows it) and content.
#[derive(Debug)]
pub struct Line {
    /// Line number in the file.
    pub number: u64,
    /// The object on the line, or why there is none.
    pub content: Result<Map<String, Value>, LineError>,
}

/// The longest line read (64 KiB, far above any valid record or event); a longer one is a
/// [`LineError::TooLong`], skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Reads the lines of one file as JSON objects.
pub struct Lines {
    inner: Inner,
    /// Bytes of the file consumed so far (for progress).
    consumed: u64,
}

enum Inner {
    Jsonl(RawLines<BufReader<File>>),
    Csv { reader: csv::Reader<File>, header: Vec<String>, record: csv::ByteRecord },
}

/// One line as it was written: its number (1-based) and its bytes without the line end and
/// without a byte-order mark, or why they were not kept.
#[derive(Debug)]
pub struct RawLine {
    /// Line number in the file.
    pub number: u64,
    /// The bytes, or [`LineError::TooLong`].
    pub bytes: Result<Vec<u8>, LineError>,
}

/// Reads lines keeping their bytes (for `publish`, which sends them as they are, and for
/// JSON Lines). Blank lines are skipped but counted, so numbers match an editor's; a line
/// longer than [`MAX_LINE_BYTES`] is skipped without being read into memory.
pub struct RawLines<R> {
    reader: R,
    number: u64,
    consumed: u64,
    buffer: Vec<u8>,
}

impl RawLines<BufReader<File>> {
    /// Opens `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(RawLines::new(BufReader::new(File::open(path)?)))
    }
}

impl<R: BufRead> RawLines<R> {
    /// Reads lines from `reader`.
    pub fn new(reader: R) -> Self {
        RawLines { reader, number: 0, consumed: 0, buffer: Vec::new() }
    }

    /// Bytes consumed so far (for progress).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The next line's bytes in the buffer (or why they are not there), `None` at the end.
    fn read_line(&mut self) -> Option<std::io::Result<Result<(), LineError>>> {
        self.buffer.clear();
        let mut line_bytes = match self.reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut self.buffer) {
            Ok(0) => return None,
            Ok(n) => n as u64,
            Err(e) => return Some(Err(e)),
        };
        let mut newline = self.buffer.last() == Some(&b'\n');
        let too_long = self.buffer.len() - usize::from(newline) > MAX_LINE_BYTES;
        if too_long && !newline {
            // Too long to hold: the rest of the line is skipped, not read into memory.
            match skip_line(&mut self.reader) {
                Ok((skipped, ended)) => (line_bytes, newline) = (line_bytes + skipped, ended),
                Err(e) => return Some(Err(e)),
            }
        }
        self.consumed += line_bytes;
        self.number += 1;
        Some(Ok(if too_long { Err(LineError::TooLong { bytes: line_bytes - u64::from(newline), max: MAX_LINE_BYTES }) } else { Ok(()) }))
    }
}

impl<R: BufRead> Iterator for RawLines<R> {
    type Item = std::io::Result<RawLine>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let read = match self.read_line()? {
                Ok(read) => read,
                Err(e) => return Some(Err(e)),
            };
            let number = self.number;
            if let Err(too_long) = read {
                return Some(Ok(RawLine { number, bytes: Err(too_long) }));
            }
            let mut bytes = without_bom(&self.buffer);
            while let [rest @ .., b'\n' | b'\r'] = bytes {
                bytes = rest;
            }
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                return Some(Ok(RawLine { number, bytes: Ok(bytes.to_vec()) }));
            }
        }
    }
}

impl Lines {
    /// Opens `path` in `format`.
    pub fn open(path: &Path, format: Format) -> std::io::Result<Lines> {
        let file = File::open(path)?;
        let inner = match format {
            Format::Jsonl => Inner::Jsonl(RawLines::new(BufReader::new(file))),
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

    /// A CSV file's column names (none for JSON Lines).
    pub fn columns(&self) -> Option<&[String]> {
        match &self.inner {
            Inner::Csv { header, .. } => Some(header),
            Inner::Jsonl { .. } => None,
        }
    }
}

impl Iterator for Lines {
    type Item = std::io::Result<Line>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Jsonl(raw) => {
                // Blank lines at the end are consumed too, even though no line comes of them.
                let line = raw.next();
                self.consumed = raw.consumed();
                line.map(|line| {
                    line.map(|line| Line { number: line.number, content: line.bytes.and_then(|bytes| parse_json_object(&bytes)) })
                })
            }
            Inner::Csv { reader, header, record } => match reader.read_byte_record(record) {
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
            },
        }
    }
}

/// Skips the rest of a line: the bytes consumed, and whether a newline ended them (not at
/// the end of the file).
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<(u64, bool)> {
    let mut skipped = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((skipped, false));
        }
        match available.iter().position(|b| *b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok((skipped + at as u64 + 1, true));
            }
            None => {
                let all = available.len();
                reader.consume(all);
                skipped += all as u64;
            }
        }
    }
}

/// `bytes` without a leading UTF-8 byte-order mark, which Windows tools write (and .NET's
/// `Encoding.UTF8` puts before a message body): ignored at the start of every line and body.
pub fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

/// Parses one JSON Lines line (or message body) as an object, ignoring a byte-order mark
/// before it. Numbers keep their exact text; an object anywhere in it that names a field
/// twice is refused.
pub fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, LineError> {
    let text = std::str::from_utf8(without_bom(bytes)).map_err(|e| LineError::NotUtf8(e.valid_up_to() + 1))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => {
            unique_keys::check(text)?;
            Ok(map)
        }
        Ok(other) => Err(LineError::NotObject(excerpt(&other.to_string()))),
        Err(e) => Err(LineError::NotJson(e.to_string())),
    }
}

/// A second pass over a JSON text that only looks at the field names of each object
/// (`serde_json` keeps the last of two equal names, silently).
mod unique_keys {
    use std::borrow::Cow;
    use std::collections::HashSet;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    use super::LineError;
    use crate::spec::field::excerpt;

    /// Refuses `text` (valid JSON) if an object in it names a field twice.
    pub fn check(text: &str) -> Result<(), LineError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        Names.deserialize(&mut deserializer).map_err(|e| match e.to_string().strip_prefix(DUPLICATE) {
            Some(name) => LineError::DuplicateField(name.split(" at line ").next().unwrap_or(name).to_owned()),
            None => LineError::NotJson(e.to_string()),
        })
    }

    const DUPLICATE: &str = "duplicate field ";

    struct Names;

    impl<'de> DeserializeSeed<'de> for Names {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Names {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }

        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }

        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }

        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }

        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }

        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Names)?.is_some() {}
            Ok(())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                if seen.contains(name.as_ref()) {
                    return Err(A::Error::custom(format!("{DUPLICATE}{}", excerpt(&name))));
                }
                map.next_value_seed(Names)?;
                seen.insert(name);
            }
            Ok(())
        }
    }
}

/// A CSV row as an object of its non-empty cells, named by the header.
/// A row longer than [`MAX_LINE_BYTES`], a byte-order mark before its first cell and a
/// header that names a column twice are treated as in JSON Lines: too large, ignored, and
/// refused (which cell was meant would be a guess).
fn csv_object(header: &[String], record: &csv::ByteRecord) -> Result<Map<String, Value>, LineError> {
    let bytes = record.as_slice().len();
    if bytes > MAX_LINE_BYTES {
        return Err(LineError::TooLong { bytes: bytes as u64, max: MAX_LINE_BYTES });
    }
    if record.len() != header.len() {
        return Err(LineError::Csv(format!("{} cells, but the header has {} columns", record.len(), header.len())));
    }
    if let Some(twice) = header.iter().enumerate().find(|(at, name)| !name.is_empty() && header[..*at].contains(name)) {
        return Err(LineError::DuplicateField(excerpt(twice.1)));
    }
    let mut row = Map::new();
    for (at, (name, cell)) in header.iter().zip(record.iter()).enumerate() {
        let cell = if at == 0 { without_bom(cell) } else { cell };
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
        assert_eq!(summary[3], (5, Err("not UTF-8 text (byte 1)".into())));
        assert_eq!(summary[4], (6, Ok(1)));
    }

    #[test]
    fn every_byte_is_consumed_blank_lines_at_the_end_included() {
        let bytes = b"{\"a\":1}\n\n  \r\n";
        let f = file(bytes);
        let mut lines = Lines::open(f.path(), Format::Jsonl).unwrap();
        assert!(lines.next().is_some());
        assert!(lines.next().is_none());
        assert_eq!(lines.consumed(), bytes.len() as u64, "found by the record_lines fuzz target");
    }

    #[test]
    fn csv_rows_follow_the_json_lines_rules() {
        let f = file("drug_code,spec\n\u{feff}X1,s\n".as_bytes());
        assert_eq!(read_all(f.path(), Format::Csv).unwrap()[0].content.as_ref().unwrap()["drug_code"], "X1", "a BOM on a data row");
        let twice = file(b"stoin_cnt,spec,stoin_cnt\n-5,s,60\n");
        assert_eq!(read_all(twice.path(), Format::Csv).unwrap()[0].content, Err(LineError::DuplicateField("stoin_cnt".into())));
        let long = file(format!("spec\n{}\n", "x".repeat(MAX_LINE_BYTES + 1)).as_bytes());
        assert!(matches!(read_all(long.path(), Format::Csv).unwrap()[0].content, Err(LineError::TooLong { .. })));
    }

    #[test]
    fn a_field_named_twice_is_refused_at_any_depth() {
        let twice = parse_json_object(br#"{"data":{"stoin_cnt":"-5","x":1,"stoin_cnt":"10"}}"#).unwrap_err();
        assert_eq!(twice, LineError::DuplicateField("stoin_cnt".into()), "{twice}");
        assert!(parse_json_object(br#"{"a":1,"a":1}"#).is_err());
        assert!(parse_json_object(br#"{"a":[{"b":1},{"b":2}],"c":{"b":3}}"#).is_ok(), "the same name in different objects");
        assert!(parse_json_object(br#"{"a\u0062":1,"ab":2}"#).is_err(), "names compare after unescaping");
        let number = parse_json_object(b"{\"n\":1.00000000000000001}").unwrap();
        assert_eq!(number["n"].to_string(), "1.00000000000000001", "numbers keep their exact text");
    }

    #[test]
    fn a_10_mb_line_is_just_a_bad_line() {
        let mut bytes = b"{\"a\":\"".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 10 << 20));
        bytes.extend(b"\n{\"b\":1}\n");
        let f = file(&bytes);
        let lines = read_all(f.path(), Format::Jsonl).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].content.as_ref().unwrap_err(), &LineError::TooLong { bytes: (10 << 20) + 6, max: MAX_LINE_BYTES });
        assert_eq!((lines[1].number, lines[1].content.is_ok()), (2, true));
        let mut at_the_limit = b"{\"a\":\"".to_vec();
        at_the_limit.resize(MAX_LINE_BYTES - 2, b'x');
        at_the_limit.extend(b"\"}\n");
        assert!(read_all(file(&at_the_limit).path(), Format::Jsonl).unwrap()[0].content.is_ok());
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
