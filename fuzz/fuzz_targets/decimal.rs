//! `D` values (numeric 12,4: quantities and prices), as JSON strings and as JSON number
//! tokens: never a panic; a value taken is exactly the value written, with at most 8
//! integer and 4 fraction digits; and every plain decimal within those limits is taken.
//!
//! Input: the bytes as text, as they come; and a structured variant that reaches long runs
//! of zeros, which byte mutation rarely writes: byte 0 = leading zeros / 40, byte 1 =
//! trailing zeros / 40, the rest one character each of `0123456789.`.

#![no_main]

use els_bridge::spec::field::parse_decimal;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The exact value of plain decimal notation `digits[.digits]`, normalised: the integer
/// part without leading zeros ("0" when nothing is left), the fraction without trailing
/// zeros; `None` for anything else (signs, exponents, a bare point, other digits).
fn exact(text: &str) -> Option<(String, String)> {
    let (integer, fraction) = match text.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (text, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(integer) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    let integer = match integer.trim_start_matches('0') {
        "" => "0",
        rest => rest,
    };
    Some((integer.to_owned(), fraction.unwrap_or("").trim_end_matches('0').to_owned()))
}

fn check(value: &Value, written: &str) {
    let taken = parse_decimal(value);
    let expected = exact(written);
    match (&taken, &expected) {
        (Some(decimal), Some((integer, fraction))) => {
            let shown = if fraction.is_empty() { integer.clone() } else { format!("{integer}.{fraction}") };
            assert_eq!(decimal.to_string(), shown, "{value} read as another value");
            assert_eq!(decimal.scale() as usize, fraction.len(), "{value}: scale of {decimal}");
            let mantissa: i128 = format!("{integer}{fraction}").parse().expect("at most 12 digits");
            assert_eq!(decimal.mantissa(), mantissa, "{value}: mantissa of {decimal}");
            assert!(!decimal.is_sign_negative(), "{value} read as {decimal}, negative");
            assert!(integer.len() <= 8 && fraction.len() <= 4, "{value} taken, but it has {} integer and {} fraction digits", integer.len(), fraction.len());
        }
        (Some(decimal), None) => panic!("{value} is not plain decimal notation, yet read as {decimal}"),
        (None, Some((integer, fraction))) => {
            assert!(
                integer.len() > 8 || fraction.len() > 4,
                "{value} refused, but it is {integer}.{fraction}: {} integer and {} fraction digits",
                integer.len(),
                fraction.len()
            );
        }
        (None, None) => {}
    }
}

fn check_text(text: &str) {
    // As a JSON string: surrounding white space is ignored (Rust's trim, Unicode-aware).
    check(&Value::String(text.to_owned()), text.trim());
    // As a JSON number token. serde_json (arbitrary_precision) keeps the digits of a plain
    // decimal token as written, which is what lets the library count them; an exponent it
    // rewrites (`1E2` becomes `1e+2`), but such a token is refused either way.
    if let Ok(number @ Value::Number(_)) = serde_json::from_str::<Value>(text) {
        let token = text.trim_matches([' ', '\t', '\n', '\r']);
        if exact(token).is_some() {
            assert_eq!(number.to_string(), token, "serde_json did not keep a plain decimal token");
        }
        check(&number, token);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    }
    if let [leading, trailing, rest @ ..] = data {
        let mut text = "0".repeat(usize::from(*leading) * 40);
        text.extend(rest.iter().map(|b| b"0123456789."[usize::from(*b) % 11] as char));
        text.push_str(&"0".repeat(usize::from(*trailing) * 40));
        check_text(&text);
    }
});
