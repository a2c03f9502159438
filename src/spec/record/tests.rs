//! Every field rule of every transaction, checked against the spec tables restated here
//! independently of the record definitions.

use serde_json::{Map, Value, json};

use super::*;
use crate::spec::Rule;

#[derive(Clone, Copy)]
enum Kind {
    Text(usize),
    Decimal,
    Time,
    ErFlag,
}

/// (field, kind, required) per transaction, as in `shared/spec/README.md`.
fn spec_table(infno: Infno) -> Vec<(&'static str, Kind, bool)> {
    use Kind::*;
    let drug = matches!(infno, Infno::Els7002 | Infno::Els7003 | Infno::Els7006);
    let (key, qty, time) = match infno {
        Infno::Els7002 | Infno::Els7004 => ("hosp_purc_mgt_detl", "stoin_cnt", "stoin_time"),
        Infno::Els7003 | Infno::Els7005 => ("hosp_purc_mgt_detl", "stoout_cnt", "stoout_time"),
        _ => ("hosp_retn_mgt_detl", "retn_cnt", "retn_time"),
    };
    let mut t = vec![(key, Text(64), true)];
    if drug {
        t.extend([
            ("drug_code", Text(23), true),
            ("drug_genname", Text(128), true),
            ("dosform", Text(128), true),
            ("convrat", Text(10), true),
            ("pacunt", Text(64), true),
        ]);
    } else {
        t.extend([
            ("mcs_code", Text(27), true),
            ("prod_name", Text(128), true),
            ("mol", Text(128), true),
            ("unt", Text(32), true),
            ("regcert", Text(128), true),
        ]);
    }
    t.extend([
        ("prov_plaf_prod_code", Text(32), true),
        ("spec", Text(128), true),
        ("prodentp_name", Text(128), true),
        ("prodentp_code", Text(18), false),
        ("delventp_name", Text(128), true),
        ("delventp_code", Text(18), true),
        ("purc_pric", Decimal, true),
        (qty, Decimal, true),
        (time, Time, true),
        ("stroom_name", Text(128), false),
    ]);
    match infno {
        Infno::Els7006 => t.push(("prov_plaf_retn_det_id", Text(32), true)),
        Infno::Els7007 => t.push(("prov_plaf_retn_det_id", Text(40), true)),
        _ => {
            let stock_in = matches!(infno, Infno::Els7002 | Infno::Els7004);
            t.extend([
                ("prov_plaf_prod_id", Text(32), false),
                ("er_flag", ErFlag, true),
                ("prov_plaf_purc_ord_det_id", Text(40), stock_in),
            ]);
        }
    }
    t
}

fn valid_row(infno: Infno) -> Map<String, Value> {
    spec_table(infno)
        .into_iter()
        .map(|(name, kind, _)| {
            let value = match kind {
                Kind::Text(_) => json!(format!("{name}-1")),
                Kind::Decimal => json!("12.5"),
                Kind::Time => json!("2026-11-25 10:00:00"),
                Kind::ErFlag => json!("0"),
            };
            (name.to_owned(), value)
        })
        .collect()
}

fn only_error(infno: Infno, row: &Map<String, Value>) -> FieldError {
    let errors = Record::parse(infno, row).expect_err("row must be refused").0;
    assert_eq!(errors.len(), 1, "{infno}: exactly one error expected, got {errors:?}");
    errors.into_iter().next().unwrap()
}

#[test]
fn a_complete_row_of_each_transaction_is_valid_and_sent_whole() {
    for infno in Infno::UPLOADS {
        let row = valid_row(infno);
        let record = Record::parse(infno, &row).unwrap_or_else(|e| panic!("{infno}: {e}"));
        assert_eq!(record.infno(), infno);
        assert_eq!(record.key(), format!("{}-1", infno.key_field()));
        assert_eq!(record.quantity().to_string(), "12.5");
        let sent = record.to_json(false);
        assert_eq!(sent.as_object().unwrap(), &row, "{infno}: every field is sent as received");
    }
}

#[test]
fn every_required_field_is_required_and_optional_ones_are_sent_empty() {
    for infno in Infno::UPLOADS {
        for (name, _, required) in spec_table(infno) {
            for absent in [None, Some(json!(null)), Some(json!("")), Some(json!("   "))] {
                let mut row = valid_row(infno);
                match &absent {
                    None => row.remove(name),
                    Some(v) => row.insert(name.to_owned(), v.clone()),
                };
                if required {
                    let e = only_error(infno, &row);
                    assert_eq!((e.field.as_str(), e.rule), (name, Rule::Required), "{infno} {absent:?}");
                } else {
                    let record = Record::parse(infno, &row).unwrap_or_else(|e| panic!("{infno} {name}: {e}"));
                    assert_eq!(record.to_json(false)[name], json!(""), "{infno} {name}");
                }
            }
        }
    }
}

#[test]
fn every_text_field_has_its_length_limit_in_characters() {
    for infno in Infno::UPLOADS {
        for (name, kind, _) in spec_table(infno) {
            let Kind::Text(max) = kind else { continue };
            let mut row = valid_row(infno);
            row.insert(name.to_owned(), json!("药".repeat(max)));
            assert!(Record::parse(infno, &row).is_ok(), "{infno} {name}: {max} characters fit");
            row.insert(name.to_owned(), json!("a".repeat(max + 1)));
            let e = only_error(infno, &row);
            assert_eq!((e.field.as_str(), e.rule), (name, Rule::MaxLength(max)), "{infno}");
        }
    }
}

#[test]
fn decimal_and_time_fields_check_their_format() {
    for infno in Infno::UPLOADS {
        for (name, kind, _) in spec_table(infno) {
            let (bad, good, sent, rule) = match kind {
                Kind::Decimal => (json!("-1"), json!(7.25), json!("7.25"), Rule::Decimal),
                Kind::Time => (json!("2026/11/25"), json!("2022-07-14"), json!("2022-07-14 00:00:00"), Rule::DateTime),
                _ => continue,
            };
            let mut row = valid_row(infno);
            row.insert(name.to_owned(), bad);
            let e = only_error(infno, &row);
            assert_eq!((e.field.as_str(), e.rule), (name, rule), "{infno}");
            row.insert(name.to_owned(), good);
            assert_eq!(Record::parse(infno, &row).unwrap().to_json(false)[name], sent, "{infno} {name}");
        }
    }
}

#[test]
fn er_flag_is_a_dictionary_of_0_and_1() {
    for infno in [Infno::Els7002, Infno::Els7003, Infno::Els7004, Infno::Els7005] {
        for (value, ok) in [(json!("0"), true), (json!("1"), true), (json!(1), true), (json!("2"), false), (json!("Y"), false)] {
            let mut row = valid_row(infno);
            row.insert("er_flag".into(), value.clone());
            match Record::parse(infno, &row) {
                Ok(r) => assert!(ok && r.to_json(false)["er_flag"].is_string(), "{infno} {value}"),
                Err(e) => {
                    assert!(!ok, "{infno} {value}: {e}");
                    assert_eq!(e.return_code(), 13);
                }
            }
        }
    }
}

#[test]
fn unknown_fields_and_fields_of_the_other_kind_are_errors() {
    for infno in Infno::UPLOADS {
        let mut row = valid_row(infno);
        row.insert("colour".into(), json!("red"));
        assert_eq!(only_error(infno, &row).rule, Rule::Unknown);

        let drug = matches!(infno, Infno::Els7002 | Infno::Els7003 | Infno::Els7006);
        let (foreign, kind) = if drug { ("mcs_code", "consumable") } else { ("drug_code", "drug") };
        let mut row = valid_row(infno);
        row.insert(foreign.into(), json!("X"));
        let e = only_error(infno, &row);
        assert_eq!((e.field.as_str(), e.rule), (foreign, Rule::OtherKind(kind)));
    }
    // Returns have no purchase fields.
    let mut row = valid_row(Infno::Els7006);
    row.insert("er_flag".into(), json!("0"));
    assert_eq!(only_error(Infno::Els7006, &row).rule, Rule::Unknown);
}

#[test]
fn all_errors_of_a_row_are_reported_together() {
    let mut row = valid_row(Infno::Els7002);
    row.remove("drug_code");
    row.insert("stoin_cnt".into(), json!("lots"));
    row.insert("er_flag".into(), json!("9"));
    row.insert("mcs_code".into(), json!("X"));
    let errors = Record::parse(Infno::Els7002, &row).unwrap_err();
    let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["drug_code", "stoin_cnt", "er_flag", "mcs_code"]);
    assert_eq!(errors.return_code(), 12);
}

#[test]
fn wrong_json_types_are_errors_not_panics() {
    for infno in Infno::UPLOADS {
        for (name, _, _) in spec_table(infno) {
            for value in [json!([1, 2]), json!({"a": 1}), json!(true)] {
                let mut row = valid_row(infno);
                row.insert(name.to_owned(), value);
                let e = only_error(infno, &row);
                assert_eq!(e.field, name);
            }
        }
        assert!(Record::parse_value(infno, &json!([1])).is_err());
        assert!(Record::parse_value(infno, &json!("row")).is_err());
    }
}

#[test]
fn decimals_can_be_sent_as_numbers_when_configured() {
    let record = Record::parse(Infno::Els7004, &valid_row(Infno::Els7004)).unwrap();
    let row = record.to_json(true);
    assert_eq!(row["purc_pric"], json!(12.5));
    assert_eq!(row["stoin_cnt"], json!(12.5));
    assert_eq!(row["mcs_code"], json!("mcs_code-1"));
}

#[test]
fn a_rows_message_names_twenty_problems_and_counts_the_rest() {
    let mut row = serde_json::Map::new();
    for n in 0..600 {
        row.insert(format!("c{n}"), serde_json::json!("1"));
    }
    let errors = Record::parse(Infno::Els7002, &row).unwrap_err();
    let message = errors.to_string();
    assert!(errors.0.len() > 600 && message.len() < 3_000, "{} bytes", message.len());
    assert!(message.ends_with(&format!("; and {} more problems", errors.0.len() - crate::spec::field::PROBLEMS_SHOWN)), "{message}");
}
