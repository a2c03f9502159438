//! Dead letters as spreadsheet rows (`dlq peek --csv`), for the purchasing office: why the
//! record failed (reason, return code and its meaning, error), which record and product it
//! is (codes, name, specification, manufacturer, distributor), the quantity, price and
//! movement time, and when it failed (Beijing time).

use serde::Serialize;
use serde_json::Value;

use super::letter::DeadLetter;
use crate::beijing;
use crate::platform::outcome::meaning;
use crate::sheet_lang::Lang;

/// One row of the sheet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SheetRow {
    message_id: String,
    reason: &'static str,
    return_code: Option<i64>,
    meaning: String,
    error: String,
    infno: String,
    institution: String,
    key: String,
    prov_plaf_prod_code: String,
    national_code: String,
    product_name: String,
    spec: String,
    manufacturer: String,
    distributor: String,
    quantity: String,
    price: String,
    movement_time: String,
    attempts: Option<i64>,
    first_failed_beijing: String,
    last_failed_beijing: String,
}

/// The first of `fields` the record has, as text (empty when none).
fn first(record: &Value, fields: &[&str]) -> String {
    fields
        .iter()
        .find_map(|field| match record.get(*field)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

impl SheetRow {
    /// The row of `letter`.
    pub fn of(letter: &DeadLetter) -> Self {
        let record = letter.record();
        let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(beijing::format).unwrap_or_default();
        SheetRow {
            message_id: letter.message_id.clone().unwrap_or_default(),
            reason: letter.reason.as_str(),
            return_code: letter.return_code,
            meaning: letter.return_code.map(meaning).unwrap_or_default().to_owned(),
            error: letter.error.clone().unwrap_or_default(),
            infno: letter.infno.clone().unwrap_or_default(),
            institution: letter.institution.clone().unwrap_or_default(),
            key: letter.key.clone().unwrap_or_default(),
            prov_plaf_prod_code: first(&record, &["prov_plaf_prod_code"]),
            national_code: first(&record, &["drug_code", "mcs_code"]),
            product_name: first(&record, &["drug_genname", "prod_name"]),
            spec: first(&record, &["spec"]),
            manufacturer: first(&record, &["prodentp_name"]),
            distributor: first(&record, &["delventp_name"]),
            quantity: first(&record, &["stoin_cnt", "stoout_cnt", "retn_cnt"]),
            price: first(&record, &["purc_pric"]),
            movement_time: first(&record, &["stoin_time", "stoout_time", "retn_time"]),
            attempts: letter.attempts,
            first_failed_beijing: time(letter.first_failed_at),
            last_failed_beijing: time(letter.last_failed_at),
        }
    }
}

/// Writes dead letters as CSV (UTF-8, header line first).
pub struct Sheet<W: std::io::Write> {
    writer: csv::Writer<W>,
    rows: u64,
    lang: Lang,
}

impl<W: std::io::Write> Sheet<W> {
    /// A sheet writing to `out`, with README's column names.
    pub fn new(out: W) -> Self {
        Self::in_lang(out, Lang::En)
    }

    /// A sheet writing to `out`, its header line in `lang`.
    pub fn in_lang(out: W, lang: Lang) -> Self {
        Sheet { writer: csv::WriterBuilder::new().has_headers(false).from_writer(out), rows: 0, lang }
    }

    fn header(&mut self) -> Result<(), csv::Error> {
        let lang = self.lang;
        self.writer.write_record(HEADER.iter().map(|c| lang.column(c)))
    }

    /// Writes the row of `letter` (after the header, before the first).
    pub fn add(&mut self, letter: &DeadLetter) -> Result<(), csv::Error> {
        if self.rows == 0 {
            self.header()?;
        }
        self.rows += 1;
        self.writer.serialize(SheetRow::of(letter))
    }

    /// Writes the header if no row was written, and flushes.
    pub fn finish(mut self) -> Result<(), csv::Error> {
        if self.rows == 0 {
            self.header()?;
        }
        self.writer.flush()?;
        Ok(())
    }
}

/// The columns, in order.
const HEADER: [&str; 20] = [
    "message_id",
    "reason",
    "return_code",
    "meaning",
    "error",
    "infno",
    "institution",
    "key",
    "prov_plaf_prod_code",
    "national_code",
    "product_name",
    "spec",
    "manufacturer",
    "distributor",
    "quantity",
    "price",
    "movement_time",
    "attempts",
    "first_failed_beijing",
    "last_failed_beijing",
];

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable, LongString};

    #[test]
    fn a_refused_drug_becomes_one_row_that_reads_back_and_an_empty_sheet_has_its_header() {
        let mut headers = FieldTable::default();
        headers.insert("x-els-reason".into(), AMQPValue::LongString(LongString::from("rejected")));
        headers.insert(
            "x-els-error".into(),
            AMQPValue::LongString(LongString::from("the platform refused record IN-1: returnCode 15: 数据不存在, \"x\"")),
        );
        headers.insert("x-els-return-code".into(), AMQPValue::LongLongInt(15));
        headers.insert("x-els-last-failed-at".into(), AMQPValue::LongString(LongString::from("2026-11-25T02:00:00Z")));
        let body = r#"{"infno":"ELS7002","fixmedins_code":"H1","data":{"hosp_purc_mgt_detl":"IN-1","prov_plaf_prod_code":"P-9","drug_code":"X1","drug_genname":"阿莫西林胶囊","stoin_cnt":"10","purc_pric":12.34,"stoin_time":"2026-11-25 09:30:00"}}"#;
        let letter = DeadLetter::read(&BasicProperties::default().with_headers(headers), body.as_bytes(), None);
        let mut out = Vec::new();
        let mut sheet = Sheet::new(&mut out);
        sheet.add(&letter).unwrap();
        sheet.finish().unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), HEADER);
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1);
        let row: Vec<&str> = rows[0].iter().collect();
        assert_eq!(&row[..4], ["", "rejected", "15", "data not found"]);
        assert!(row[4].ends_with("数据不存在, \"x\""), "quotes and commas survive: {row:?}");
        assert_eq!(&row[7..11], ["IN-1", "P-9", "X1", "阿莫西林胶囊"]);
        assert_eq!(&row[14..17], ["10", "12.34", "2026-11-25 09:30:00"]);
        assert_eq!(row[19], "2026-11-25 10:00:00");

        let mut empty = Vec::new();
        Sheet::new(&mut empty).finish().unwrap();
        assert_eq!(String::from_utf8(empty).unwrap(), format!("{}\n", HEADER.join(",")));

        // --lang zh-CN: the same rows under Chinese column names, every column named.
        let mut chinese = Vec::new();
        let mut sheet = Sheet::in_lang(&mut chinese, Lang::ZhCn);
        sheet.add(&letter).unwrap();
        sheet.finish().unwrap();
        let mut reader = csv::Reader::from_reader(chinese.as_slice());
        let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header[..4], ["消息ID", "死信原因", "返回码", "返回码含义"]);
        assert!(header.iter().zip(HEADER).all(|(zh, en)| zh != en), "a column left in English: {header:?}");
        let again: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(again, rows, "only the header differs");
    }
}
