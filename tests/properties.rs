//! Property tests of the value rules (issue 14): any text the validator accepts is sent as
//! the spec form of the very same value, and anything beyond the rules is refused, whatever
//! the digits, zeros, and JSON form (string or number token).

use els_bridge::spec::field::{PlatformTime, parse_decimal};
use proptest::prelude::*;
use serde_json::Value;

/// The exact value of a plain decimal text, as (integer digits, fraction digits) without
/// leading or trailing zeros.
fn exact(text: &str) -> (String, String) {
    let (integer, fraction) = text.split_once('.').unwrap_or((text, ""));
    (integer.trim_start_matches('0').to_owned(), fraction.trim_end_matches('0').to_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Plain decimals with any number of leading and trailing zeros: accepted exactly when
    /// their significant digits fit 8 + 4, and then sent as the same value, as a string or
    /// as a JSON number token.
    #[test]
    fn a_decimal_is_accepted_only_within_its_digits_and_sent_as_the_same_value(
        zeros in 0usize..40, integer in "[0-9]{0,12}", fraction in "[0-9]{0,40}", trailing in 0usize..40, point in any::<bool>(),
    ) {
        let integer = format!("{}{integer}", "0".repeat(zeros));
        let integer = if integer.is_empty() { "0".to_owned() } else { integer };
        let text = if point || !fraction.is_empty() { format!("{integer}.{fraction}{}", "0".repeat(trailing.max(1))) } else { integer };
        let (significant_integer, significant_fraction) = exact(&text);
        let fits = significant_integer.len() <= 8 && significant_fraction.len() <= 4;
        for value in [Value::String(text.clone()), serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)] {
            if value.is_null() { continue; } // not a JSON number token (leading zeros)
            match parse_decimal(&value) {
                Some(decimal) => {
                    prop_assert!(fits, "{text} accepted as {decimal}");
                    prop_assert_eq!(exact(&decimal.to_string()), (significant_integer.clone(), significant_fraction.clone()), "{} sent as {}", text, decimal);
                }
                None => prop_assert!(!fits, "{} refused", text),
            }
        }
    }

    /// Anything with a sign, an exponent, a second point, a space inside or other characters
    /// is refused.
    #[test]
    fn a_decimal_with_anything_but_digits_and_one_point_is_refused(head in "[0-9]{1,4}", odd in "[-+eE ,_x]|\\.\\.", tail in "[0-9]{1,4}") {
        let text = format!("{head}{odd}{tail}");
        prop_assert_eq!(parse_decimal(&Value::String(text.clone())), None, "{}", text);
    }

    /// Every real time from 1900 on is accepted and sent as written; the same shape with
    /// an impossible field is refused.
    #[test]
    fn a_time_is_sent_as_written_and_impossible_ones_are_refused(
        year in 0u32..10000, month in 0u32..14, day in 0u32..33, hour in 0u32..26, minute in 0u32..62, second in 0u32..62,
    ) {
        let text = format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}");
        let real = chrono::NaiveDate::from_ymd_opt(year as i32, month, day).is_some()
            && year >= 1900 && hour < 24 && minute < 60 && second < 60;
        match PlatformTime::parse(&text) {
            Some(time) => {
                prop_assert!(real, "{} accepted", text);
                prop_assert_eq!(time.to_string(), text);
            }
            None => prop_assert!(!real, "{} refused", text),
        }
    }
}
