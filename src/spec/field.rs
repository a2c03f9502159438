//! Field rules of the spec tables and a reader that applies them to a JSON row, collecting
//! every violation instead of stopping at the first. The row is anything that implements
//! [`Row`]: a parsed `serde_json` object, or the borrowed cells of an event body read
//! without building a tree (`event::typed`).

use std::fmt;

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

/// A text field's value: up to 24 bytes held in place (most codes and names, and Chinese
/// names of up to eight characters), longer ones on the heap; a record has fifteen.
pub type Text = compact_str::CompactString;

/// Whether `text` has more than `max` characters (one of at most `max` bytes never has:
/// the characters are counted only beyond).
fn longer_than(text: &str, max: usize) -> bool {
    text.len() > max && text.chars().count() > max
}

/// Whether `text` has a control character (`char::is_control`: U+0000–U+001F and
/// U+007F–U+009F). Its bytes are looked at first, in one pass without branches: the first
/// 33 are bytes of their own, the rest are encoded as 0xC2 and a second byte, so text
/// without such a byte (Chinese text, or printable ASCII) is not decoded at all.
fn has_control(text: &str) -> bool {
    let suspect = text.bytes().fold(false, |seen, b| seen | (b < 0x20) | (b == 0x7f) | (b == 0xc2));
    suspect && text.chars().any(char::is_control)
}

/// Integer digits allowed in a `D` (numeric 12,4) value.
const DECIMAL_INTEGER_DIGITS: u32 = 8;
/// Fraction digits allowed in a `D` value.
const DECIMAL_SCALE: u32 = 4;
/// How much of an offending value an error message quotes.
const EXCERPT_CHARS: usize = 40;

/// The rule a field value broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// A required field is absent, null or blank (platform code 12).
    Required,
    /// A value outside the field's dictionary (platform code 13).
    Dictionary(&'static [&'static str]),
    /// A string longer than the spec allows, counted in characters (code 14).
    MaxLength(usize),
    /// Not a non-negative decimal with at most 12 digits, 4 after the point (code 14).
    Decimal,
    /// Not a `yyyy-MM-dd HH:mm:ss` time or a bare `yyyy-MM-dd` date (code 14).
    DateTime,
    /// A JSON value of the wrong type, e.g. an object where text belongs (code 14).
    Type,
    /// A field this transaction does not have (code 14).
    Unknown,
    /// A field of the other product kind, e.g. `mcs_code` on a drug row (code 14).
    OtherKind(&'static str),
    /// Text with a control character (NUL, a line break, an escape): no name, code or
    /// specification has one; it is a corrupted or forged value (code 14).
    ControlCharacter,
}

impl Rule {
    /// The returnCode the platform answers for a row breaking this rule.
    pub fn return_code(&self) -> u32 {
        match self {
            Rule::Required => 12,
            Rule::Dictionary(_) => 13,
            _ => 14,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Required => f.write_str("is required but missing or empty"),
            Rule::Dictionary(allowed) => {
                write!(f, "must be one of {}", allowed.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", "))
            }
            Rule::MaxLength(max) => write!(f, "must be at most {max} characters"),
            Rule::Decimal => f.write_str("must be a non-negative decimal with at most 12 digits, 4 of them after the point"),
            Rule::DateTime => {
                f.write_str("must be a time \"yyyy-MM-dd HH:mm:ss\" (or a date \"yyyy-MM-dd\") from the year 1900 on, without leap seconds")
            }
            Rule::Type => f.write_str("must be text or a number"),
            Rule::ControlCharacter => f.write_str("must not contain control characters (NUL, line breaks, tabs, escapes)"),
            Rule::Unknown => f.write_str("is not a field of this transaction"),
            Rule::OtherKind(kind) => write!(f, "is a field of {kind} rows, not of this transaction"),
        }
    }
}

/// One broken rule: which field, which rule, and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}{}", .value.as_ref().map(|v| format!(" (got {v})")).unwrap_or_default())]
pub struct FieldError {
    /// The field name as in the spec tables.
    pub field: String,
    /// The rule it broke.
    pub rule: Rule,
    /// An excerpt of the offending value (JSON text), absent when the field is missing.
    pub value: Option<String>,
}

impl FieldError {
    /// An error for `field` breaking `rule`, quoting an excerpt of `value`.
    pub fn new(field: &str, rule: Rule, value: Option<&Value>) -> Self {
        FieldError { field: excerpt(field), rule, value: value.map(Cell::quote) }
    }
}

/// What the field rules see of one JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View<'a> {
    /// `null`.
    Null,
    /// A string, unescaped.
    Text(&'a str),
    /// A number token, exactly as written.
    Number(&'a str),
    /// Anything else: a boolean, an array, an object.
    Other,
}

/// One value of a row, as the field rules read it.
pub trait Cell {
    /// The value's kind and text.
    fn view(&self) -> View<'_>;
    /// An [`excerpt`] of the value as JSON text, for an error message.
    fn quote(&self) -> String;
}

impl Cell for Value {
    fn view(&self) -> View<'_> {
        match self {
            Value::Null => View::Null,
            Value::String(s) => View::Text(s),
            Value::Number(n) => View::Number(n.as_str()),
            _ => View::Other,
        }
    }

    fn quote(&self) -> String {
        excerpt(&self.to_string())
    }
}

/// A row of named values (a `data` object), as the field rules read it.
pub trait Row {
    /// The type of its values.
    type Cell: Cell + ?Sized;
    /// The value named `name`, if the row has one.
    fn get(&self, name: &str) -> Option<&Self::Cell>;
    /// How many fields it has (each name once).
    fn count(&self) -> usize;
    /// Calls `f` with every name and value, in the row's order.
    fn each(&self, f: &mut dyn FnMut(&str, &Self::Cell));
}

impl Row for Map<String, Value> {
    type Cell = Value;

    fn get(&self, name: &str) -> Option<&Value> {
        Map::get(self, name)
    }

    fn count(&self) -> usize {
        self.len()
    }

    fn each(&self, f: &mut dyn FnMut(&str, &Value)) {
        for (name, value) in self {
            f(name, value);
        }
    }
}

/// Shortens text for an error message, so a 10 MB value never ends up in a log line, and
/// escapes control characters (`\n`, `\u{1b}`, ...), so that input echoed in a message
/// can never start a line of its own or colour a terminal.
pub fn excerpt(text: &str) -> String {
    excerpt_of(text, EXCERPT_CHARS)
}

/// [`excerpt_of`], saying how many characters were cut: for long texts shown whole when
/// they can be (error messages in headers and log lines).
pub fn excerpt_counted(text: &str, max: usize) -> String {
    let count = text.chars().count();
    let shown = excerpt_of(text, max);
    if count > max { format!("{shown} ({} more characters)", count - max) } else { shown }
}

/// How many problems a message names: a record with a million unknown fields must not
/// make a message (a log line, a header, a reject file's reason) of a hundred megabytes.
pub const PROBLEMS_SHOWN: usize = 20;

/// The first [`PROBLEMS_SHOWN`] problems joined with `; `, and how many more there were.
pub fn first_problems<T: std::fmt::Display>(problems: &[T]) -> String {
    let mut text = problems.iter().take(PROBLEMS_SHOWN).map(ToString::to_string).collect::<Vec<_>>().join("; ");
    if problems.len() > PROBLEMS_SHOWN {
        text.push_str(&format!("; and {} more problems", problems.len() - PROBLEMS_SHOWN));
    }
    text
}

/// [`excerpt`] at most `max` characters long (before escaping).
pub fn excerpt_of(text: &str, max: usize) -> String {
    let mut shown = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max {
            shown.push('…');
            break;
        }
        if c.is_control() {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// A platform time (`T`), sent as `yyyy-MM-dd HH:mm:ss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlatformTime(pub NaiveDateTime);

impl PlatformTime {
    /// Reads `yyyy-MM-dd HH:mm:ss`, or a bare `yyyy-MM-dd` as midnight (spec decision).
    pub fn parse(text: &str) -> Option<Self> {
        let shape_ok = |pattern: &str| {
            text.len() == pattern.len()
                && text.bytes().zip(pattern.bytes()).all(|(c, p)| if p == b'9' { c.is_ascii_digit() } else { c == p })
        };
        // The digits are where the shape says: read them directly (chrono's format parser
        // takes the same values, a tenth of the time of the whole event's rules).
        let number = |at: usize, digits: usize| text.as_bytes()[at..at + digits].iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        let date = || NaiveDate::from_ymd_opt(i32::try_from(number(0, 4)).ok()?, number(5, 2), number(8, 2));
        let time = if shape_ok("9999-99-99 99:99:99") {
            date()?.and_hms_opt(number(11, 2), number(14, 2), number(17, 2))?
        } else if shape_ok("9999-99-99") {
            date()?.and_hms_opt(0, 0, 0)?
        } else {
            return None;
        };
        // A second of 60 (a leap second, which the platform's clock does not know) is
        // refused by `and_hms_opt`; a year before 1900 is a typing error.
        (time.year() >= FIRST_YEAR).then_some(PlatformTime(time))
    }
}

impl fmt::Display for PlatformTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::beijing::write_time(f, &self.0)
    }
}

impl Serialize for PlatformTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The earliest year a platform time may have.
pub const FIRST_YEAR: i32 = 1900;

/// Reads a `D` value: a non-negative decimal of at most 8 integer and 4 fraction digits,
/// from a JSON number or a string of plain decimal notation. The digits are counted on the
/// exact text (a JSON number token as it was written), before anything is rounded:
/// `1.00000000000000001` has 17 fraction digits, however close it is to 1.
pub fn parse_decimal(value: &Value) -> Option<Decimal> {
    decimal_of(value.view())
}

/// [`parse_decimal`] of a [`View`].
fn decimal_of(value: View) -> Option<Decimal> {
    let text = match value {
        View::Text(s) => s.trim(),
        View::Number(n) => n,
        View::Null | View::Other => return None,
    };
    let (integer, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if integer.is_empty() || !digits(integer) || !digits(fraction) || (text.contains('.') && fraction.is_empty()) {
        return None;
    }
    let integer = integer.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    if integer.len() > DECIMAL_INTEGER_DIGITS as usize || fraction.len() > DECIMAL_SCALE as usize {
        return None;
    }
    let exact = format!("{}.{fraction}", if integer.is_empty() { "0" } else { integer });
    Some(exact.parse::<Decimal>().ok()?.normalize())
}

/// Takes fields out of one JSON row, checking each against its rule and remembering every
/// violation; [`FieldReader::finish`] then reports fields that were not asked for.
pub struct FieldReader<'a, R: Row + ?Sized = Map<String, Value>> {
    row: &'a R,
    taken: Vec<&'static str>,
    /// How many of the fields asked for the row has.
    found: usize,
    errors: Vec<FieldError>,
}

impl<'a, R: Row + ?Sized> FieldReader<'a, R> {
    /// Starts reading `row`.
    pub fn new(row: &'a R) -> Self {
        FieldReader { row, taken: Vec::with_capacity(24), found: 0, errors: Vec::new() }
    }

    /// The field's value, treating null and blank text as absent. Each field is asked for
    /// once (which [`FieldReader::finish`] relies on).
    fn present(&mut self, name: &'static str) -> Option<&'a R::Cell> {
        debug_assert!(!self.taken.contains(&name), "the field {name} is read twice");
        self.taken.push(name);
        let value = self.row.get(name)?;
        self.found += 1;
        match value.view() {
            View::Null => None,
            View::Text(s) if s.trim().is_empty() => None,
            _ => Some(value),
        }
    }

    fn fail(&mut self, name: &str, rule: Rule, value: Option<&R::Cell>) {
        self.errors.push(FieldError { field: excerpt(name), rule, value: value.map(Cell::quote) });
    }

    /// An optional `S max` field; numbers are taken as their text.
    pub fn optional_text(&mut self, name: &'static str, max: usize) -> Option<Text> {
        let value = self.present(name)?;
        let text = match value.view() {
            View::Text(s) | View::Number(s) => s,
            View::Null | View::Other => {
                self.fail(name, Rule::Type, Some(value));
                return None;
            }
        };
        if longer_than(text, max) {
            self.fail(name, Rule::MaxLength(max), Some(value));
            return None;
        }
        if has_control(text) {
            self.fail(name, Rule::ControlCharacter, Some(value));
            return None;
        }
        Some(Text::from(text))
    }

    /// A required `S max` field.
    pub fn text(&mut self, name: &'static str, max: usize) -> Text {
        let known_bad = self.errors.len();
        let text = self.optional_text(name, max);
        if text.is_none() && self.errors.len() == known_bad {
            self.fail(name, Rule::Required, None);
        }
        text.unwrap_or_default()
    }

    /// A required text field whose value must be one of `allowed`.
    pub fn dictionary(&mut self, name: &'static str, max: usize, allowed: &'static [&'static str]) -> Text {
        let text = self.text(name, max);
        if !text.is_empty() && !allowed.contains(&text.as_str()) {
            let value = self.row.get(name);
            self.fail(name, Rule::Dictionary(allowed), value);
        }
        text
    }

    /// A required `D` field.
    pub fn decimal(&mut self, name: &'static str) -> Decimal {
        match self.present(name) {
            None => self.fail(name, Rule::Required, None),
            Some(value) => match decimal_of(value.view()) {
                Some(number) => return number,
                None => self.fail(name, Rule::Decimal, Some(value)),
            },
        }
        Decimal::ZERO
    }

    /// A required `T` field.
    pub fn time(&mut self, name: &'static str) -> PlatformTime {
        match self.present(name) {
            None => self.fail(name, Rule::Required, None),
            Some(value) => match value.view() {
                View::Text(text) => match PlatformTime::parse(text) {
                    Some(time) => return time,
                    None => self.fail(name, Rule::DateTime, Some(value)),
                },
                _ => self.fail(name, Rule::DateTime, Some(value)),
            },
        }
        PlatformTime(NaiveDateTime::default())
    }

    /// Ends the row: fields not taken are errors, naming `other_kind` when a field belongs
    /// to the other product kind. Returns every error found, in field order.
    pub fn finish(mut self, other_kind: (&'static str, &[&str])) -> Result<(), Vec<FieldError>> {
        if self.found == self.row.count() {
            // Every field of the row was asked for: each name once, and the row has each
            // name once.
            return if self.errors.is_empty() { Ok(()) } else { Err(self.errors) };
        }
        let (kind, other_fields) = other_kind;
        let (taken, errors) = (&self.taken, &mut self.errors);
        self.row.each(&mut |name, value| {
            if !taken.contains(&name) {
                let rule = if other_fields.contains(&name) { Rule::OtherKind(kind) } else { Rule::Unknown };
                errors.push(FieldError { field: excerpt(name), rule, value: Some(value.quote()) });
            }
        });
        if self.errors.is_empty() { Ok(()) } else { Err(self.errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beijing::TIME_FORMAT;
    use chrono::Timelike;
    use serde_json::json;

    fn dec(v: Value) -> Option<String> {
        parse_decimal(&v).map(|d| d.to_string())
    }

    #[test]
    fn decimals_accept_numbers_and_strings_within_12_4() {
        assert_eq!(dec(json!("12.4")), Some("12.4".into()));
        assert_eq!(dec(json!(12.4)), Some("12.4".into()));
        assert_eq!(dec(json!(3)), Some("3".into()));
        assert_eq!(dec(json!("0")), Some("0".into()));
        assert_eq!(dec(json!("99999999.9999")), Some("99999999.9999".into()));
        assert_eq!(dec(json!("1.50000")), Some("1.5".into()), "trailing zeros are not digits that count");
        assert_eq!(dec(json!("00012.5")), Some("12.5".into()));
        assert_eq!(dec(json!(format!("{}1.5", "0".repeat(10_000)))), Some("1.5".into()), "leading zeros do not count");
    }

    #[test]
    fn json_number_tokens_are_judged_on_their_exact_text() {
        for (token, expected) in
            [("12.3400", Some("12.34")), ("1.00000000000000001", None), ("12.3400000000000001", None), ("1e2", None), ("1E2", None)]
        {
            let number: Value = serde_json::from_str(token).unwrap();
            assert_eq!(dec(number).as_deref(), expected, "{token}");
        }
        let long: Value = serde_json::from_str(&format!("0.{}1", "0".repeat(9_999))).unwrap();
        assert_eq!(dec(long), None);
    }

    #[test]
    fn decimals_reject_negative_too_long_and_non_numbers() {
        for bad in [
            json!("-1"),
            json!(-1),
            json!("123456789"),
            json!("1.23456"),
            json!("1e3"),
            json!("abc"),
            json!(""),
            json!("1."),
            json!(".5"),
            json!("1,5"),
            json!(true),
            json!({"v": 1}),
            json!("NaN"),
            json!("0.00000000000000000000000000001"),
            json!("1.00000000000000001"),
            json!(format!("0.{}1", "0".repeat(9_999))),
            json!("1.2.3"),
        ] {
            assert_eq!(dec(bad.clone()), None, "{bad} must be refused");
        }
    }

    #[test]
    fn times_accept_full_times_and_bare_dates_only() {
        assert_eq!(PlatformTime::parse("2022-07-14 08:09:10").unwrap().to_string(), "2022-07-14 08:09:10");
        assert_eq!(PlatformTime::parse("2022-07-14").unwrap().to_string(), "2022-07-14 00:00:00");
        for bad in [
            "2022-7-14",
            "2022-07-14T08:09:10",
            "2022-07-14 8:09:10",
            "2022-02-30",
            "2022-07-14 24:00:00",
            "",
            "20220714",
            "2016-12-31 23:59:60",
            "0000-01-01",
            "1899-12-31 23:59:59",
        ] {
            assert_eq!(PlatformTime::parse(bad), None, "{bad:?} must be refused");
        }
    }

    /// What chrono's format parser makes of a time, as `PlatformTime::parse` did before it
    /// read the digits itself.
    fn by_chrono(text: &str) -> Option<PlatformTime> {
        let time = NaiveDateTime::parse_from_str(text, TIME_FORMAT)
            .ok()
            .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0))?;
        (time.year() >= FIRST_YEAR && time.nanosecond() < 1_000_000_000).then_some(PlatformTime(time))
    }

    #[test]
    fn times_are_read_as_chrono_reads_them() {
        let mut checked = 0;
        for year in ["0000", "1899", "1900", "2000", "2024", "2026", "2100", "9999"] {
            for month in ["00", "01", "02", "04", "12", "13", "99"] {
                for day in ["00", "01", "28", "29", "30", "31", "32"] {
                    let date = format!("{year}-{month}-{day}");
                    assert_eq!(PlatformTime::parse(&date), by_chrono(&date), "{date}");
                    for (hour, minute, second) in [
                        ("00", "00", "00"),
                        ("23", "59", "59"),
                        ("24", "00", "00"),
                        ("12", "60", "00"),
                        ("23", "59", "60"),
                        ("10", "11", "99"),
                    ] {
                        let time = format!("{date} {hour}:{minute}:{second}");
                        assert_eq!(PlatformTime::parse(&time), by_chrono(&time), "{time}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 8 * 7 * 7 * 6);
    }

    #[test]
    fn reader_collects_every_error_of_a_row() {
        let row = json!({"a": "", "b": "x".repeat(11), "c": "-3", "d": "yesterday", "e": "2", "f": [1], "zzz": 1});
        let row = row.as_object().unwrap();
        let mut r = FieldReader::new(row);
        r.text("a", 10);
        r.text("b", 10);
        r.decimal("c");
        r.time("d");
        r.dictionary("e", 10, &["0", "1"]);
        r.optional_text("f", 10);
        r.text("g", 10);
        let errors = r.finish(("consumable", &["zzz"])).unwrap_err();
        let rules: Vec<_> = errors.iter().map(|e| (e.field.as_str(), e.rule.clone())).collect();
        assert_eq!(
            rules,
            vec![
                ("a", Rule::Required),
                ("b", Rule::MaxLength(10)),
                ("c", Rule::Decimal),
                ("d", Rule::DateTime),
                ("e", Rule::Dictionary(&["0", "1"])),
                ("f", Rule::Type),
                ("g", Rule::Required),
                ("zzz", Rule::OtherKind("consumable")),
            ]
        );
        assert_eq!(
            errors[2].to_string(),
            "c: must be a non-negative decimal with at most 12 digits, 4 of them after the point (got \"-3\")"
        );
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let name = "靖".repeat(128);
        let row = json!({ "n": name });
        let mut r = FieldReader::new(row.as_object().unwrap());
        assert_eq!(r.text("n", 128).chars().count(), 128);
        assert!(r.finish(("", &[])).is_ok());
    }

    #[test]
    fn control_characters_and_lengths_are_found_in_the_bytes_as_by_decoding() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let text = format!("a{c}b");
            assert_eq!(has_control(&text), text.chars().any(char::is_control), "{:x}", c as u32);
        }
        for text in ["", "abc", "药品", "药品名称", "é\u{85}"] {
            for max in 0..10 {
                assert_eq!(longer_than(text, max), text.chars().count() > max, "{text:?} {max}");
            }
        }
    }

    #[test]
    fn text_with_a_control_character_is_refused() {
        for bad in ["a\u{0}b", "line\nbreak", "tab\there", "\u{1b}[31m", "a\u{85}b"] {
            let row = json!({"name": bad});
            let mut reader = FieldReader::new(row.as_object().unwrap());
            assert_eq!(reader.optional_text("name", 50), None, "{bad:?}");
            assert_eq!(reader.errors[0].rule, Rule::ControlCharacter);
        }
    }

    #[test]
    fn echoed_input_never_carries_control_characters() {
        assert_eq!(excerpt("a\nINFO forged\r\u{1b}[31m"), "a\\nINFO forged\\r\\u{1b}[31m");
        assert_eq!(excerpt("药品"), "药品");
    }

    #[test]
    fn long_values_are_quoted_as_an_excerpt() {
        let row = json!({ "n": "x".repeat(10_000_000) });
        let mut r = FieldReader::new(row.as_object().unwrap());
        r.text("n", 64);
        let message = r.finish(("", &[])).unwrap_err()[0].to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn return_codes_follow_the_spec() {
        assert_eq!(Rule::Required.return_code(), 12);
        assert_eq!(Rule::Dictionary(&["0"]).return_code(), 13);
        assert_eq!(Rule::MaxLength(3).return_code(), 14);
        assert_eq!(Rule::Unknown.return_code(), 14);
    }
}
