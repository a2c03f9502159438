//! Any HTTP answer (status, body) is classified without a panic.

#![no_main]

use els_bridge::platform::Outcome;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [high, low, body @ ..] => (u16::from_be_bytes([*high, *low]), body),
        _ => return,
    };
    let outcome = Outcome::from_http(status, body);
    // Everything a caller does with an outcome must not panic either.
    let _ = (outcome.to_string(), outcome.kind(), outcome.return_code(), outcome.is_accepted());
    if !(200..=299).contains(&status) {
        assert!(!outcome.is_accepted(), "HTTP {status} taken as accepted: {outcome:?}");
    }
});
