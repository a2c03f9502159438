//! The typed reader against the tree-based one: it accepts exactly what that one accepts,
//! as the same event, and nothing it refuses.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::parse;
use crate::event::{Institutions, from_object};
use crate::input::parse_json_object;
use crate::spec::Infno;

/// What the tree-based reader decides.
fn by_tree(body: &[u8], institutions: Institutions) -> Option<crate::event::Event> {
    from_object(&parse_json_object(body).ok()?, institutions).ok()
}

/// Both readers on `body`: the typed one may give up only where the tree refuses, or on an
/// unusual shape; where it accepts, the tree accepts the same event.
fn agree(body: &[u8], institutions: Institutions) -> bool {
    let typed = parse(body, institutions);
    let tree = by_tree(body, institutions);
    if typed.is_some() {
        assert_eq!(typed, tree, "the typed reader accepted what the tree does not, or differently: {}", String::from_utf8_lossy(body));
    }
    typed.is_some()
}

fn row(infno: Infno) -> serde_json::Map<String, Value> {
    let mut row = serde_json::Map::new();
    row.insert(infno.key_field().into(), json!("K-1"));
    let drug = matches!(infno, Infno::Els7002 | Infno::Els7003 | Infno::Els7006);
    let product: &[(&str, &str)] = if drug {
        &[("drug_code", "X1"), ("drug_genname", "阿莫西林"), ("dosform", "胶囊"), ("convrat", "24"), ("pacunt", "盒")]
    } else {
        &[("mcs_code", "C1"), ("prod_name", "注射器"), ("mol", "5ml"), ("unt", "支"), ("regcert", "苏械")]
    };
    let supply: &[(&str, &str)] = &[
        ("prov_plaf_prod_code", "0"),
        ("spec", "0.25g"),
        ("prodentp_name", "某药业"),
        ("delventp_name", "某医药"),
        ("delventp_code", "91320000000000000X"),
        ("purc_pric", "12.34"),
    ];
    for (name, value) in product.iter().chain(supply) {
        row.insert((*name).into(), json!(value));
    }
    let (quantity, time) = match infno {
        Infno::Els7002 | Infno::Els7004 => ("stoin_cnt", "stoin_time"),
        Infno::Els7003 | Infno::Els7005 => ("stoout_cnt", "stoout_time"),
        _ => ("retn_cnt", "retn_time"),
    };
    row.insert(quantity.into(), json!("10"));
    row.insert(time.into(), json!("2026-11-25 09:30:00"));
    if matches!(infno, Infno::Els7006 | Infno::Els7007) {
        row.insert("prov_plaf_retn_det_id".into(), json!("0"));
    } else {
        row.insert("er_flag".into(), json!("0"));
        row.insert("prov_plaf_purc_ord_det_id".into(), json!("0"));
    }
    row
}

fn event(infno: Infno) -> Value {
    json!({"infno": infno.as_str(), "fixmedins_code": "H32128200338", "version": 7, "data": row(infno)})
}

const ONE: Institutions = Institutions::Known(&["H32128200338"]);

#[test]
fn valid_events_of_every_transaction_are_read_without_a_tree() {
    for infno in Infno::UPLOADS {
        let body = event(infno).to_string();
        assert!(agree(body.as_bytes(), ONE), "{infno}: {body}");
        assert!(agree(body.as_bytes(), Institutions::Any), "{infno}: {body}");
    }
}

#[test]
fn data_before_the_infno_escapes_and_numbers_are_read_too() {
    let data = row(Infno::Els7004);
    let mut body = format!(r#"{{"data": {}, "version": 18446744073709551615, "infno": "els7004"}}"#, Value::Object(data.clone()));
    assert!(agree(body.as_bytes(), ONE), "{body}");
    body = body.replace(r#""mol":"5ml""#, r#""mol":"5\u006dl""#).replace(r#""purc_pric":"12.34""#, r#""purc_pric":12.3400"#);
    assert!(body.contains("\\u006d") && body.contains("12.3400"), "{body}");
    assert!(agree(body.as_bytes(), ONE), "{body}");
    let nulls = body.replace(r#""version": 18446744073709551615"#, r#""version": null, "fixmedins_code": null"#);
    assert!(agree(nulls.as_bytes(), ONE), "{nulls}");
    assert!(agree(format!("\u{feff}{nulls}").as_bytes(), ONE), "a byte-order mark");
}

#[test]
fn whatever_the_tree_refuses_the_typed_reader_gives_up() {
    let valid = event(Infno::Els7002).to_string();
    let data = r#""data":{"#;
    let broken = [
        valid.replacen(data, r#""data":{"spec":"x","#, 1),
        valid.replacen(data, r#""data":{"extra":null,"#, 1),
        valid.replacen(data, r#""data":{"n":[1],"#, 1),
        valid.replacen(data, r#""data":{"mcs_code":"C1","#, 1),
        valid.replacen(r#""version":7"#, r#""version":"7""#, 1),
        valid.replacen(r#""version":7"#, r#""version":-7"#, 1),
        valid.replacen(r#""version":7"#, r#""version":7.0"#, 1),
        valid.replacen(r#""version":7"#, r#""version":7,"infno":"ELS7002""#, 1),
        valid.replacen(r#""infno":"ELS7002""#, r#""infno":"ELS7001""#, 1),
        valid.replacen(r#""infno":"ELS7002""#, r#""infno":7002"#, 1),
        valid.replacen(r#""fixmedins_code":"H32128200338""#, r#""fixmedins_code":"H32128200339""#, 1),
        valid.replacen(r#""stoin_cnt":"10""#, r#""stoin_cnt":"1e1""#, 1),
        valid.replacen(r#""stoin_cnt":"10""#, r#""stoin_cnt":true"#, 1),
        valid.replacen(r#""spec":"0.25g""#, r#""spec":"a\nb""#, 1),
        valid.replacen(r#""spec":"0.25g""#, r#""spec":"\ud800""#, 1),
        valid.replacen(data, r#""data":{"s":{"a":1,"a":2},"#, 1),
        format!("[{valid}]"),
        format!("{valid} x"),
        valid[..valid.len() - 1].to_owned(),
        valid.replacen(r#""data":"#, r#""extra":1,"data":"#, 1),
        valid.replacen(r#""data":"#, r#""$serde_json::private::Number":"1","data":"#, 1),
    ];
    for body in &broken {
        assert_ne!(&valid, body, "the test changed nothing");
        assert!(!agree(body.as_bytes(), ONE), "{body}");
        assert!(by_tree(body.as_bytes(), ONE).is_none(), "{body}");
    }
    // serde_json's tree takes an object of its private number token for a number; the
    // typed reader leaves such a body to it, and the event is what the tree says.
    for forged in [
        valid.replacen(r#""version":7"#, r#""version":{"$serde_json::private::Number":"7"}"#, 1),
        valid.replacen(r#""stoin_cnt":"10""#, r#""stoin_cnt":{"$serde_json::private::Number":"10"}"#, 1),
    ] {
        assert!(!agree(forged.as_bytes(), ONE), "{forged}");
        assert_eq!(crate::event::parse(forged.as_bytes(), ONE).ok(), by_tree(forged.as_bytes(), ONE), "{forged}");
    }
    let two = Institutions::Known(&["H32128200338", "H32128200339"]);
    let without_code = valid.replacen(r#""fixmedins_code":"H32128200338","#, "", 1);
    assert!(!agree(without_code.as_bytes(), two));
    assert!(agree(without_code.as_bytes(), ONE));
    assert!(!agree(b"\xff", ONE));
}

/// A JSON value that fits where a field's value goes, with the tokens that have tripped
/// readers before: escapes, number notations, blanks, control characters, nesting.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just(r#"{"a":1}"#.to_owned()),
        Just(r#"{"$serde_json::private::Number":"1"}"#.to_owned()),
        prop::sample::select(vec!["0", "1", "-1", "1.5", "12.3400", "1e2", "1E2", "-0", "18446744073709551616", "99999999.9999"])
            .prop_map(str::to_owned),
        prop::sample::select(vec![
            "",
            " ",
            "0",
            "1",
            "10",
            " 7 ",
            "1.",
            ".5",
            "1e3",
            "-5",
            "12.34567",
            "2026-11-25",
            "2026-11-25 09:30:00",
            "2016-12-31 23:59:60",
            "1899-12-31",
            "H32128200338",
            "ELS7003",
            "els7005",
            "ELS7001",
            "阿莫西林",
        ])
        .prop_map(|s| serde_json::to_string(s).unwrap_or_default()),
        "[a-z0-9 \\n\\t\u{1b}靖]{0,70}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        Just(r#""\u0041\/\"""#.to_owned()),
    ]
}

/// An edit of a valid event's text: a field (of the envelope or of the data) replaced,
/// removed, added or named twice.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, String),
    Remove(usize),
    Add(String, String),
    Twice(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let names = prop::sample::select(vec![
        "extra",
        "spec",
        "mcs_code",
        "drug_code",
        "stroom_name",
        "prodentp_code",
        "prov_plaf_prod_id",
        "infno",
        "a\\nb",
    ]);
    prop_oneof![
        (0usize..30, value()).prop_map(|(at, v)| Edit::Replace(at, v)),
        (0usize..30).prop_map(Edit::Remove),
        (names, value()).prop_map(|(n, v)| Edit::Add(n.to_owned(), v)),
        (0usize..30).prop_map(Edit::Twice),
    ]
}

/// The event as a list of (field, value text), the data's fields after the envelope's
/// (data itself last), then edited and written out.
fn body(infno: Infno, edits: &[Edit], data_first: bool) -> String {
    let mut envelope: Vec<(String, String)> = vec![
        ("infno".into(), format!("\"{infno}\"")),
        ("fixmedins_code".into(), "\"H32128200338\"".into()),
        ("version".into(), "7".into()),
    ];
    let mut data: Vec<(String, String)> = row(infno).into_iter().map(|(k, v)| (k, v.to_string())).collect();
    for edit in edits {
        let in_envelope = |at: usize| at.is_multiple_of(5);
        let (list, at) = match edit {
            Edit::Replace(at, _) | Edit::Remove(at) | Edit::Twice(at) if in_envelope(*at) => (&mut envelope, at / 5),
            Edit::Replace(at, _) | Edit::Remove(at) | Edit::Twice(at) => (&mut data, *at),
            Edit::Add(..) => (&mut data, 0),
        };
        if list.is_empty() && !matches!(edit, Edit::Add(..)) {
            continue;
        }
        let at = if list.is_empty() { 0 } else { at % list.len() };
        match edit {
            Edit::Replace(_, value) => list[at].1 = value.clone(),
            Edit::Remove(_) => {
                list.remove(at);
            }
            Edit::Add(name, value) => list.insert(at.min(list.len()), (name.clone(), value.clone())),
            Edit::Twice(_) => {
                let twice = list[at].clone();
                list.push(twice);
            }
        }
    }
    let object = |fields: &[(String, String)]| {
        let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", inner.join(","))
    };
    let data = ("data".to_owned(), object(&data));
    if data_first {
        envelope.insert(0, data);
    } else {
        envelope.push(data);
    }
    object(&envelope)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn the_typed_reader_never_accepts_what_the_tree_refuses(
        infno in prop::sample::select(Infno::UPLOADS.to_vec()),
        edits in prop::collection::vec(edit(), 0..4),
        data_first in any::<bool>(),
    ) {
        let body = body(infno, &edits, data_first);
        let accepted = agree(body.as_bytes(), ONE);
        // Both readers take an unedited event; an edit may make it invalid or unusual.
        if edits.is_empty() {
            prop_assert!(accepted, "{}", body);
        }
        agree(body.as_bytes(), Institutions::Any);
    }
}
