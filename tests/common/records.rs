//! Valid record rows of every upload transaction, for tests.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use els_bridge::spec::Infno;
use serde_json::{Map, Value, json};

/// Whether `infno` reports drugs (else consumables).
pub fn is_drug(infno: Infno) -> bool {
    matches!(infno, Infno::Els7002 | Infno::Els7003 | Infno::Els7006)
}

/// A complete, valid `data` row of `infno` with record key `key` and quantity `quantity`.
pub fn row(infno: Infno, key: &str, quantity: &str) -> Map<String, Value> {
    let mut row = Map::new();
    row.insert(infno.key_field().into(), json!(key));
    if is_drug(infno) {
        for (k, v) in [
            ("drug_code", "XJ01CAA040A001010101445"),
            ("drug_genname", "阿莫西林胶囊"),
            ("dosform", "胶囊剂"),
            ("convrat", "24"),
            ("pacunt", "盒"),
        ] {
            row.insert(k.into(), json!(v));
        }
    } else {
        for (k, v) in [
            ("mcs_code", "C14010205200000000000000012"),
            ("prod_name", "一次性使用无菌注射器"),
            ("mol", "5ml"),
            ("unt", "支"),
            ("regcert", "苏械注准20152150001"),
        ] {
            row.insert(k.into(), json!(v));
        }
    }
    for (k, v) in [
        ("prov_plaf_prod_code", "0"),
        ("spec", "0.25g*24粒"),
        ("prodentp_name", "江苏某某药业有限公司"),
        ("prodentp_code", "91320000134567890A"),
        ("delventp_name", "国药控股江苏有限公司"),
        ("delventp_code", "91320000134567891B"),
        ("purc_pric", "12.3400"),
        ("stroom_name", "药库"),
    ] {
        row.insert(k.into(), json!(v));
    }
    let (qty, time) = match infno {
        Infno::Els7002 | Infno::Els7004 => ("stoin_cnt", "stoin_time"),
        Infno::Els7003 | Infno::Els7005 => ("stoout_cnt", "stoout_time"),
        _ => ("retn_cnt", "retn_time"),
    };
    row.insert(qty.into(), json!(quantity));
    row.insert(time.into(), json!("2026-11-25 09:30:00"));
    match infno {
        Infno::Els7006 | Infno::Els7007 => {
            row.insert("prov_plaf_retn_det_id".into(), json!("0"));
        }
        _ => {
            row.insert("er_flag".into(), json!("0"));
            row.insert("prov_plaf_purc_ord_det_id".into(), json!("0"));
        }
    }
    row
}

/// An event (contract §1) carrying `row`.
pub fn event(infno: Infno, fixmedins_code: &str, version: Option<u64>, row: Map<String, Value>) -> Value {
    let mut event = json!({ "infno": infno.as_str(), "fixmedins_code": fixmedins_code, "data": row });
    if let Some(version) = version {
        event["version"] = json!(version);
    }
    event
}

/// Rows as JSON Lines text.
pub fn jsonl<'a>(rows: impl IntoIterator<Item = &'a Map<String, Value>>) -> String {
    rows.into_iter().map(|r| format!("{}\n", Value::Object(r.clone()))).collect()
}
