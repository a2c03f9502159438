//! Properties shared by the fuzz targets.

#![allow(dead_code, reason = "each target uses a different part")]

use els_bridge::spec::Record;

/// The longest error message we accept: an error names at most 20 problems, each quoting
/// an excerpt of 40 characters, so anything near this size means input was echoed whole.
pub const MAX_MESSAGE_BYTES: usize = 30_000;

/// An error message must be one short log line: no ASCII control character at all
/// (no `\n`, `\r`, `\t`, ESC ...), so input echoed in it cannot forge a log line or colour
/// a terminal.
pub fn check_message(what: &str, message: &str) {
    if let Some(c) = message.chars().find(|c| c.is_ascii_control()) {
        panic!("{what}: the message carries the control character {c:?}: {message:?}");
    }
    assert!(
        message.len() < MAX_MESSAGE_BYTES,
        "{what}: a message of {} bytes (starts {:?})",
        message.len(),
        message.chars().take(200).collect::<String>()
    );
}

/// A valid record, turned into the row sent to the platform and validated again, is the
/// same record: what was checked is what is sent.
pub fn check_round_trip(record: &Record) {
    for decimals_as_numbers in [false, true] {
        let json = record.to_json(decimals_as_numbers);
        let again = match Record::parse_value(record.infno(), &json) {
            Ok(again) => again,
            Err(errors) => panic!(
                "the row sent for a valid {} record is refused (decimals as numbers: {decimals_as_numbers}): {errors}\nrecord: {record:?}\nrow: {json}",
                record.infno()
            ),
        };
        assert_eq!(again.key(), record.key(), "key after the round trip; row: {json}");
        assert_eq!(again.quantity(), record.quantity(), "quantity after the round trip; row: {json}");
        assert_eq!(again.price(), record.price(), "price after the round trip; row: {json}");
        assert_eq!(again.time(), record.time(), "time after the round trip; row: {json}");
        assert_eq!(&again, record, "record after the round trip; row: {json}");
    }
}
