//! A message's fingerprint: 63 bits of the SHA-1 of its `message_id` and body, written in
//! the receipt of its record. A delivery whose fingerprint was accepted before is a copy of
//! that message (redelivered by the broker after a lost ack, or re-sent by its publisher),
//! not a new event; see [`crate::ledger::Index::turns`] for what that decides.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use sha1::{Digest, Sha1};

/// The fingerprint of one message; written as 16 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(NonZeroU64);

impl Fingerprint {
    /// The fingerprint of a message with `message_id` (if it has one) and `body`.
    pub fn of_message(message_id: Option<&str>, body: &[u8]) -> Self {
        let id = message_id.unwrap_or_default();
        let mut hasher = Sha1::new();
        // The length first, so that no split of the same bytes between id and body collides.
        hasher.update((id.len() as u64).to_be_bytes());
        hasher.update(id.as_bytes());
        hasher.update(body);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize()[..8]);
        Fingerprint::from_bits(u64::from_be_bytes(first))
    }

    /// The lowest bit is always set: never zero, so that an `Option<Fingerprint>` takes
    /// no more room than the fingerprint (the index holds one per key).
    fn from_bits(bits: u64) -> Self {
        Fingerprint(NonZeroU64::MIN | bits)
    }
}

/// 16 lower-case hexadecimal digits, written digit by digit (one per receipt row; the
/// formatter's padding machinery cost more than the digits).
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let bits = self.0.get();
        let mut text = [0u8; 16];
        for (at, digit) in text.iter_mut().enumerate() {
            *digit = DIGITS[((bits >> (60 - 4 * at)) & 0xf) as usize];
        }
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

/// Written straight into the entry (one per receipt row).
impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let digits = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
        match u64::from_str_radix(text, 16) {
            Ok(value) if digits => Ok(Fingerprint::from_bits(value)),
            _ => Err(format!("a fingerprint is 16 hexadecimal digits, not {text:?}")),
        }
    }
}

/// Read from the entry's text in place (the index reads one per receipt row).
impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FingerprintVisitor)
    }
}

struct FingerprintVisitor;

impl Visitor<'_> for FingerprintVisitor {
    type Value = Fingerprint;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a fingerprint (16 hexadecimal digits)")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Fingerprint, E> {
        text.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_and_the_body_both_count_and_the_text_form_reads_back() {
        let a = Fingerprint::of_message(Some("m-1"), b"{}");
        assert_eq!(a, Fingerprint::of_message(Some("m-1"), b"{}"));
        assert_ne!(a, Fingerprint::of_message(Some("m-2"), b"{}"));
        assert_ne!(a, Fingerprint::of_message(Some("m-1"), b"{ }"));
        assert_ne!(Fingerprint::of_message(Some("ab"), b"c"), Fingerprint::of_message(Some("a"), b"bc"));
        assert_eq!(a.to_string().parse(), Ok(a));
        assert!("xyz".parse::<Fingerprint>().is_err());
        assert!("+0000000000000001".parse::<Fingerprint>().is_err());
        let quoted = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Fingerprint>(&quoted).unwrap(), a);
        let escaped = quoted.replacen(&quoted[1..2], &format!("\\u{:04x}", u32::from(quoted.as_bytes()[1])), 1);
        assert_eq!(serde_json::from_str::<Fingerprint>(&escaped).unwrap(), a, "{escaped}");
        assert!(serde_json::from_str::<Fingerprint>("12").is_err());
        assert_eq!(quoted, format!("\"{a}\""));
        for bits in [1, 0x0123_4567_89ab_cdef, u64::MAX, 1 << 63 | 1] {
            assert_eq!(Fingerprint::from_bits(bits).to_string(), format!("{:016x}", bits | 1));
        }
        assert_eq!(size_of::<Option<Fingerprint>>(), 8);
    }
}
