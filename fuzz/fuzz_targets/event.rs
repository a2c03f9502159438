//! A message body from the broker, as the worker reads it: never a panic; a valid event's
//! record survives the trip to the platform's row format; an invalid one's message is one
//! short line.

#![no_main]

mod common;

use els_bridge::event::{Institutions, MAX_EVENT_BYTES, parse_at_most};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_at_most(data, MAX_EVENT_BYTES, Institutions::Any) {
        Ok(event) => {
            common::check_round_trip(&event.record);
            // Institutions::Any takes a missing code as "" or exactly 12 ASCII alphanumerics.
            let code = &event.fixmedins_code;
            assert!(
                code.is_empty() || (code.len() == 12 && code.bytes().all(|b| b.is_ascii_alphanumeric())),
                "fixmedins_code {code:?} accepted"
            );
        }
        Err(error) => {
            assert!(!error.0.is_empty(), "an invalid event without a problem");
            common::check_message("event", &error.to_string());
        }
    }
});
