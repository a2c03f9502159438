//! An event body read straight into its typed record (issue 19): one pass of the JSON
//! parser over the body, with the envelope's four fields and the `data` row's strings
//! borrowed from it, no `serde_json::Value` tree and no second pass for field names named
//! twice.
//!
//! This reader only says "valid, and here is the event" or "not sure": whatever it does not
//! accept (a syntax error, a field named twice, an unknown field, a nested array or object,
//! any broken rule) is read again by the tree-based reader, which words the problems. So
//! the messages are those of that reader by construction, and this one must only never
//! accept what that one refuses; it reads the row with the same [`FieldReader`] rules.
//!
//! [`FieldReader`]: crate::spec::field::FieldReader

use std::borrow::Cow;
use std::cell::Cell as Hint;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{Event, Institutions};
use crate::input::without_bom;
use crate::spec::field::{Cell, Row, View, excerpt};
use crate::spec::{Infno, Record};

/// The event in `body` if it is valid and of the plain shape this reader knows; `None`
/// when it is invalid or unusual (then the tree-based reader decides, and says why).
pub fn parse(body: &[u8], institutions: Institutions) -> Option<Event> {
    let text = std::str::from_utf8(without_bom(body)).ok()?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let envelope = deserializer.deserialize_map(EnvelopeVisitor).ok()?;
    deserializer.end().ok()?;
    envelope.into_event(institutions)
}

/// Why this reader gave up: never shown, the tree-based reader words the problem.
const NOT_PLAIN: &str = "not a plain valid event";

/// One scalar value as it stood in the body.
#[derive(Debug)]
enum Scalar<'de> {
    Null,
    Text(Cow<'de, str>),
    /// A number token, exactly as written.
    Number(String),
}

impl Cell for Scalar<'_> {
    fn view(&self) -> View<'_> {
        match self {
            Scalar::Null => View::Null,
            Scalar::Text(text) => View::Text(text),
            Scalar::Number(number) => View::Number(number),
        }
    }

    fn quote(&self) -> String {
        match self {
            Scalar::Null => "null".to_owned(),
            Scalar::Text(text) => excerpt(&serde_json::to_string(text).unwrap_or_default()),
            Scalar::Number(number) => excerpt(number),
        }
    }
}

/// The `data` object: its fields in the body's order, each named once.
#[derive(Debug, Default)]
struct DataRow<'de> {
    cells: Vec<(Cow<'de, str>, Scalar<'de>)>,
    /// Where the last field asked for was: the field rules ask in about the order that
    /// producers write, so the next one is usually just after it.
    hint: Hint<usize>,
}

impl<'de> Row for DataRow<'de> {
    type Cell = Scalar<'de>;

    fn get(&self, name: &str) -> Option<&Scalar<'de>> {
        let count = self.cells.len();
        let start = self.hint.get();
        let at = (0..count).map(|step| (start + step) % count).find(|&at| self.cells[at].0 == name)?;
        self.hint.set(at + 1);
        Some(&self.cells[at].1)
    }

    fn count(&self) -> usize {
        self.cells.len()
    }

    fn each(&self, f: &mut dyn FnMut(&str, &Scalar<'de>)) {
        for (name, value) in &self.cells {
            f(name, value);
        }
    }
}

/// The envelope's fields as they stood; `data` either read (the infno came first) or kept
/// as its text to read once the infno is known.
#[derive(Default)]
struct Envelope<'de> {
    infno: Option<Scalar<'de>>,
    fixmedins_code: Option<Scalar<'de>>,
    version: Option<Scalar<'de>>,
    record: Option<Record>,
    raw_data: Option<&'de RawValue>,
}

impl<'de> Envelope<'de> {
    /// The upload transaction named, if the value names one.
    fn infno(&self) -> Option<Infno> {
        match &self.infno {
            Some(Scalar::Text(text)) => text.parse::<Infno>().ok().filter(|infno| infno.is_upload()),
            _ => None,
        }
    }

    /// The event, if every field is valid (the rules of `event::from_object`).
    fn into_event(self, institutions: Institutions) -> Option<Event> {
        let infno = self.infno()?;
        let fixmedins_code = institution(self.fixmedins_code.as_ref(), institutions)?;
        let version = match self.version {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Number(number)) => Some(number.parse::<u64>().ok()?),
            Some(Scalar::Text(_)) => return None,
        };
        let record = match (self.record, self.raw_data) {
            (Some(record), _) => record,
            (None, raw) => read_data(raw?.get(), infno)?,
        };
        Some(Event { fixmedins_code, version, record })
    }
}

/// The institution an event names, or the only one configured when it names none.
fn institution(value: Option<&Scalar>, institutions: Institutions) -> Option<String> {
    match (value, institutions) {
        (None | Some(Scalar::Null), Institutions::Known([only])) => Some((*only).to_owned()),
        (None | Some(Scalar::Null), Institutions::Known(_)) => None,
        (None | Some(Scalar::Null), Institutions::Any) => Some(String::new()),
        (Some(Scalar::Text(code)), Institutions::Known(known)) => known.contains(&code.as_ref()).then(|| code.to_string()),
        (Some(Scalar::Text(code)), Institutions::Any) => {
            (code.chars().count() == 12 && code.chars().all(|c| c.is_ascii_alphanumeric())).then(|| code.to_string())
        }
        (Some(Scalar::Number(_)), _) => None,
    }
}

/// Reads a `data` object kept as text (it came before the infno).
fn read_data(text: &str, infno: Infno) -> Option<Record> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let record = DataSeed(infno).deserialize(&mut deserializer).ok()?;
    deserializer.end().ok()?;
    Some(record)
}

/// A field name, borrowed from the body when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(name)))
    }

    fn visit_str<E>(self, name: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(name.to_owned())))
    }

    fn visit_string<E>(self, name: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(name)))
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(Key(name)) = map.next_key()? {
            let slot = match name.as_ref() {
                "infno" => &mut envelope.infno,
                "fixmedins_code" => &mut envelope.fixmedins_code,
                "version" => &mut envelope.version,
                "data" => {
                    if envelope.record.is_some() || envelope.raw_data.is_some() {
                        return Err(A::Error::custom(NOT_PLAIN));
                    }
                    match envelope.infno() {
                        Some(infno) => envelope.record = Some(map.next_value_seed(DataSeed(infno))?),
                        None => envelope.raw_data = Some(map.next_value()?),
                    }
                    continue;
                }
                _ => return Err(A::Error::custom(NOT_PLAIN)),
            };
            if slot.replace(map.next_value_seed(ScalarSeed)?).is_some() {
                return Err(A::Error::custom(NOT_PLAIN));
            }
        }
        Ok(envelope)
    }
}

/// Reads the `data` object of `infno` into its record.
struct DataSeed(Infno);

impl<'de> DeserializeSeed<'de> for DataSeed {
    type Value = Record;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Record, D::Error> {
        let row = deserializer.deserialize_map(DataVisitor)?;
        Record::parse_row(self.0, &row).map_err(|_| D::Error::custom(NOT_PLAIN))
    }
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = DataRow<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a data object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DataRow<'de>, A::Error> {
        let mut row = DataRow { cells: Vec::with_capacity(24), ..DataRow::default() };
        let mut names_seen = 0u64;
        while let Some(Key(name)) = map.next_key()? {
            let bit = name_bit(&name);
            if names_seen & bit != 0 && row.cells.iter().any(|(seen, _)| *seen == name) {
                return Err(A::Error::custom(NOT_PLAIN));
            }
            names_seen |= bit;
            let value = map.next_value_seed(ScalarSeed)?;
            row.cells.push((name, value));
        }
        Ok(row)
    }
}

/// One of 64 bits for a field name, from its length and last byte: a name whose bit is not
/// set yet was not seen in the row, so only the others are looked for among the fields read
/// (the field names of a row mostly differ in both).
fn name_bit(name: &str) -> u64 {
    let last = name.as_bytes().last().copied().unwrap_or(0);
    1 << ((name.len() * 7 + usize::from(last)) % 64)
}

/// Reads a null, a string or a number; anything else gives up.
struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scalar<'de>, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null, a string or a number")
    }

    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Borrowed(text)))
    }

    /// An integer that fits 64 bits (its token has only one spelling, which this is).
    fn visit_u64<E>(self, number: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(number.to_string()))
    }

    /// A negative integer that fits 64 bits.
    fn visit_i64<E>(self, number: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(number.to_string()))
    }

    fn visit_str<E>(self, text: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Text(Cow::Owned(text)))
    }

    /// With `arbitrary_precision`, serde_json hands any other number over as a map of one
    /// entry (its private token, the number's text as an owned string); an object in the
    /// body that merely looks like that gives its value as a borrowed string and is refused.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        match map.next_key::<Key>()? {
            Some(Key(name)) if name == NUMBER_TOKEN => Ok(Scalar::Number(map.next_value_seed(NumberText)?)),
            _ => Err(A::Error::custom(NOT_PLAIN)),
        }
    }
}

/// The key serde_json's `arbitrary_precision` numbers are handed over under.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// The text of a number token (only ever an owned string from serde_json itself).
struct NumberText;

impl<'de> DeserializeSeed<'de> for NumberText {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for NumberText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number token")
    }

    fn visit_string<E>(self, text: String) -> Result<String, E> {
        Ok(text)
    }

    /// A borrowed string here is an object in the body that looks like a number: the tree
    /// decides what it is.
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<String, E> {
        Err(E::custom(NOT_PLAIN))
    }
}

#[cfg(test)]
mod tests;
