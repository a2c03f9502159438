//! The typed records of the six upload transactions, with every field of the spec tables.
//!
//! The spec's drug and consumable rows share most fields; they differ in the product
//! description ([`Drug`] / [`Consumable`]), and the transactions differ in the name of the
//! quantity and time fields (stock-in, stock-out, return). So a record is a movement shape
//! ([`StockIn`], [`StockOut`], [`Return`]) over a product kind, and [`Record`] names the six
//! combinations. Optional fields that are absent are sent as `""`, like unused envelope
//! fields, so that a correction can also clear a field at the platform.

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value};

use super::Infno;
use super::field::{FieldError, FieldReader, PlatformTime, Row, Text};

/// The dictionary of `er_flag`: "0" no, "1" emergency purchase.
pub const ER_FLAG_VALUES: &[&str] = &["0", "1"];

/// The product description of a row: what differs between drug and consumable rows.
pub trait Product: Serialize + Sized {
    /// The kind, as an operator says it ("drug" / "consumable").
    const KIND: &'static str;
    /// Fields only rows of this kind have.
    const OWN_FIELDS: &'static [&'static str];
    /// Maximum length of `prov_plaf_retn_det_id` on return rows of this kind.
    const RETURN_LINE_MAX: usize;
    /// Reads the product fields.
    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>) -> Self;
}

/// A drug's description (ELS7002, ELS7003, ELS7006).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drug {
    pub drug_code: Text,
    pub drug_genname: Text,
    pub dosform: Text,
    pub spec: Text,
    pub convrat: Text,
    pub pacunt: Text,
}

impl Product for Drug {
    const KIND: &'static str = "drug";
    const OWN_FIELDS: &'static [&'static str] = &["drug_code", "drug_genname", "dosform", "convrat", "pacunt"];
    const RETURN_LINE_MAX: usize = 32;

    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>) -> Self {
        Drug {
            drug_code: r.text("drug_code", 23),
            drug_genname: r.text("drug_genname", 128),
            dosform: r.text("dosform", 128),
            spec: r.text("spec", 128),
            convrat: r.text("convrat", 10),
            pacunt: r.text("pacunt", 64),
        }
    }
}

/// A medical consumable's description (ELS7004, ELS7005, ELS7007).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Consumable {
    pub mcs_code: Text,
    pub prod_name: Text,
    pub spec: Text,
    pub mol: Text,
    pub unt: Text,
    pub regcert: Text,
}

impl Product for Consumable {
    const KIND: &'static str = "consumable";
    const OWN_FIELDS: &'static [&'static str] = &["mcs_code", "prod_name", "mol", "unt", "regcert"];
    const RETURN_LINE_MAX: usize = 40;

    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>) -> Self {
        Consumable {
            mcs_code: r.text("mcs_code", 27),
            prod_name: r.text("prod_name", 128),
            spec: r.text("spec", 128),
            mol: r.text("mol", 128),
            unt: r.text("unt", 32),
            regcert: r.text("regcert", 128),
        }
    }
}

/// Who made and delivered the product, at what price, into which warehouse: the same on
/// every row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Supply {
    pub prov_plaf_prod_code: Text,
    pub prodentp_name: Text,
    #[serde(serialize_with = "or_empty")]
    pub prodentp_code: Option<Text>,
    pub delventp_name: Text,
    pub delventp_code: Text,
    #[serde(with = "rust_decimal::serde::str")]
    pub purc_pric: Decimal,
    #[serde(serialize_with = "or_empty")]
    pub stroom_name: Option<Text>,
}

impl Supply {
    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>) -> Self {
        Supply {
            prov_plaf_prod_code: r.text("prov_plaf_prod_code", 32),
            prodentp_name: r.text("prodentp_name", 128),
            prodentp_code: r.optional_text("prodentp_code", 18),
            delventp_name: r.text("delventp_name", 128),
            delventp_code: r.text("delventp_code", 18),
            purc_pric: r.decimal("purc_pric"),
            stroom_name: r.optional_text("stroom_name", 128),
        }
    }
}

/// The provincial purchase a stock-in or stock-out row refers to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Purchase {
    #[serde(serialize_with = "or_empty")]
    pub prov_plaf_prod_id: Option<Text>,
    pub er_flag: Text,
    /// Required on stock-in ("0" when not a platform order), optional on stock-out.
    #[serde(serialize_with = "or_empty")]
    pub prov_plaf_purc_ord_det_id: Option<Text>,
}

impl Purchase {
    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>, order_line_required: bool) -> Self {
        Purchase {
            prov_plaf_prod_id: r.optional_text("prov_plaf_prod_id", 32),
            er_flag: r.dictionary("er_flag", 10, ER_FLAG_VALUES),
            prov_plaf_purc_ord_det_id: if order_line_required {
                Some(r.text("prov_plaf_purc_ord_det_id", 40))
            } else {
                r.optional_text("prov_plaf_purc_ord_det_id", 40)
            },
        }
    }
}

/// A stock-in row: ELS7002 (drugs) and ELS7004 (consumables).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StockIn<P> {
    pub hosp_purc_mgt_detl: Text,
    #[serde(flatten)]
    pub product: P,
    #[serde(flatten)]
    pub supply: Supply,
    #[serde(with = "rust_decimal::serde::str")]
    pub stoin_cnt: Decimal,
    pub stoin_time: PlatformTime,
    #[serde(flatten)]
    pub purchase: Purchase,
}

/// A stock-out row, net of internal returns: ELS7003 (drugs) and ELS7005 (consumables).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StockOut<P> {
    pub hosp_purc_mgt_detl: Text,
    #[serde(flatten)]
    pub product: P,
    #[serde(flatten)]
    pub supply: Supply,
    #[serde(with = "rust_decimal::serde::str")]
    pub stoout_cnt: Decimal,
    pub stoout_time: PlatformTime,
    #[serde(flatten)]
    pub purchase: Purchase,
}

/// A return to the supplier: ELS7006 (drugs) and ELS7007 (consumables).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Return<P> {
    pub hosp_retn_mgt_detl: Text,
    #[serde(flatten)]
    pub product: P,
    #[serde(flatten)]
    pub supply: Supply,
    #[serde(with = "rust_decimal::serde::str")]
    pub retn_cnt: Decimal,
    pub retn_time: PlatformTime,
    /// The provincial return line ("0" when not a platform return).
    pub prov_plaf_retn_det_id: Text,
}

impl<P: Product> StockIn<P> {
    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>) -> Self {
        StockIn {
            hosp_purc_mgt_detl: r.text("hosp_purc_mgt_detl", 64),
            product: P::read(r),
            supply: Supply::read(r),
            stoin_cnt: r.decimal("stoin_cnt"),
            stoin_time: r.time("stoin_time"),
            purchase: Purchase::read(r, true),
        }
    }
}

impl<P: Product> StockOut<P> {
    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>) -> Self {
        StockOut {
            hosp_purc_mgt_detl: r.text("hosp_purc_mgt_detl", 64),
            product: P::read(r),
            supply: Supply::read(r),
            stoout_cnt: r.decimal("stoout_cnt"),
            stoout_time: r.time("stoout_time"),
            purchase: Purchase::read(r, false),
        }
    }
}

impl<P: Product> Return<P> {
    fn read<R: Row + ?Sized>(r: &mut FieldReader<R>) -> Self {
        Return {
            hosp_retn_mgt_detl: r.text("hosp_retn_mgt_detl", 64),
            product: P::read(r),
            supply: Supply::read(r),
            retn_cnt: r.decimal("retn_cnt"),
            retn_time: r.time("retn_time"),
            prov_plaf_retn_det_id: r.text("prov_plaf_retn_det_id", P::RETURN_LINE_MAX),
        }
    }
}

/// One validated row of an upload transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Record {
    /// ELS7002.
    DrugStockIn(StockIn<Drug>),
    /// ELS7003.
    DrugStockOut(StockOut<Drug>),
    /// ELS7004.
    ConsumableStockIn(StockIn<Consumable>),
    /// ELS7005.
    ConsumableStockOut(StockOut<Consumable>),
    /// ELS7006.
    DrugReturn(Return<Drug>),
    /// ELS7007.
    ConsumableReturn(Return<Consumable>),
}

/// Every rule a row broke, in field order (its message names the first
/// [`PROBLEMS_SHOWN`](crate::spec::field::PROBLEMS_SHOWN) and counts the rest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::spec::field::first_problems(.0))]
pub struct RecordErrors(pub Vec<FieldError>);

impl RecordErrors {
    /// The returnCode the platform answers for such a row: that of the first broken rule.
    pub fn return_code(&self) -> u32 {
        self.0.first().map_or(14, |e| e.rule.return_code())
    }
}

fn read_with<R: Row + ?Sized, T>(
    row: &R,
    read: impl FnOnce(&mut FieldReader<R>) -> T,
    other: (&'static str, &[&str]),
) -> Result<T, RecordErrors> {
    let mut reader = FieldReader::new(row);
    let record = read(&mut reader);
    reader.finish(other).map(|()| record).map_err(RecordErrors)
}

impl Record {
    /// Validates one `data` row of `infno`, reporting every broken rule.
    ///
    /// # Panics
    /// Never on input; `infno` must be an upload transaction (ELS7001 has no records and is
    /// answered with an error naming it).
    pub fn parse(infno: Infno, row: &Map<String, Value>) -> Result<Record, RecordErrors> {
        Record::parse_row(infno, row)
    }

    /// [`Record::parse`] of any [`Row`]: a parsed object, or the borrowed cells of an event
    /// body read without a tree.
    pub fn parse_row<R: Row + ?Sized>(infno: Infno, row: &R) -> Result<Record, RecordErrors> {
        // A drug row names consumable-only fields as such, and the other way round.
        const NOT_DRUG: (&str, &[&str]) = (Consumable::KIND, Consumable::OWN_FIELDS);
        const NOT_CONSUMABLE: (&str, &[&str]) = (Drug::KIND, Drug::OWN_FIELDS);
        match infno {
            Infno::Els7002 => read_with(row, StockIn::read, NOT_DRUG).map(Record::DrugStockIn),
            Infno::Els7003 => read_with(row, StockOut::read, NOT_DRUG).map(Record::DrugStockOut),
            Infno::Els7004 => read_with(row, StockIn::read, NOT_CONSUMABLE).map(Record::ConsumableStockIn),
            Infno::Els7005 => read_with(row, StockOut::read, NOT_CONSUMABLE).map(Record::ConsumableStockOut),
            Infno::Els7006 => read_with(row, Return::read, NOT_DRUG).map(Record::DrugReturn),
            Infno::Els7007 => read_with(row, Return::read, NOT_CONSUMABLE).map(Record::ConsumableReturn),
            Infno::Els7001 => Err(RecordErrors(vec![FieldError::new("infno", super::Rule::Unknown, None)])),
        }
    }

    /// The names among `columns` (a CSV header) that are not fields of `infno`, each with
    /// why.
    pub fn unknown_columns(infno: Infno, columns: &[String]) -> Vec<FieldError> {
        let row: Map<String, Value> = columns.iter().map(|name| (name.clone(), Value::Null)).collect();
        let errors = Record::parse(infno, &row).err().map(|e| e.0).unwrap_or_default();
        errors
            .into_iter()
            .filter(|e| matches!(e.rule, super::Rule::Unknown | super::Rule::OtherKind(_)))
            .map(|e| FieldError { value: None, ..e })
            .collect()
    }

    /// Validates a row given as any JSON value (it must be an object).
    pub fn parse_value(infno: Infno, row: &Value) -> Result<Record, RecordErrors> {
        match row.as_object() {
            Some(map) => Record::parse(infno, map),
            None => Err(RecordErrors(vec![FieldError::new("data", super::Rule::Type, Some(row))])),
        }
    }

    /// The transaction this record is uploaded with.
    pub fn infno(&self) -> Infno {
        match self {
            Record::DrugStockIn(_) => Infno::Els7002,
            Record::DrugStockOut(_) => Infno::Els7003,
            Record::ConsumableStockIn(_) => Infno::Els7004,
            Record::ConsumableStockOut(_) => Infno::Els7005,
            Record::DrugReturn(_) => Infno::Els7006,
            Record::ConsumableReturn(_) => Infno::Els7007,
        }
    }

    /// The hospital-side key (`hosp_purc_mgt_detl` or `hosp_retn_mgt_detl`) by which the
    /// platform upserts.
    pub fn key(&self) -> &str {
        match self {
            Record::DrugStockIn(r) => &r.hosp_purc_mgt_detl,
            Record::DrugStockOut(r) => &r.hosp_purc_mgt_detl,
            Record::ConsumableStockIn(r) => &r.hosp_purc_mgt_detl,
            Record::ConsumableStockOut(r) => &r.hosp_purc_mgt_detl,
            Record::DrugReturn(r) => &r.hosp_retn_mgt_detl,
            Record::ConsumableReturn(r) => &r.hosp_retn_mgt_detl,
        }
    }

    /// The moved quantity.
    pub fn quantity(&self) -> Decimal {
        match self {
            Record::DrugStockIn(r) => r.stoin_cnt,
            Record::DrugStockOut(r) => r.stoout_cnt,
            Record::ConsumableStockIn(r) => r.stoin_cnt,
            Record::ConsumableStockOut(r) => r.stoout_cnt,
            Record::DrugReturn(r) => r.retn_cnt,
            Record::ConsumableReturn(r) => r.retn_cnt,
        }
    }

    /// The unit purchase price.
    pub fn price(&self) -> Decimal {
        self.supply().purc_pric
    }

    /// When the movement happened (Beijing wall-clock time).
    pub fn time(&self) -> PlatformTime {
        match self {
            Record::DrugStockIn(r) => r.stoin_time,
            Record::DrugStockOut(r) => r.stoout_time,
            Record::ConsumableStockIn(r) => r.stoin_time,
            Record::ConsumableStockOut(r) => r.stoout_time,
            Record::DrugReturn(r) => r.retn_time,
            Record::ConsumableReturn(r) => r.retn_time,
        }
    }

    fn supply(&self) -> &Supply {
        match self {
            Record::DrugStockIn(r) => &r.supply,
            Record::DrugStockOut(r) => &r.supply,
            Record::ConsumableStockIn(r) => &r.supply,
            Record::ConsumableStockOut(r) => &r.supply,
            Record::DrugReturn(r) => &r.supply,
            Record::ConsumableReturn(r) => &r.supply,
        }
    }

    /// The row as sent to the platform: every field, decimals as strings and times as
    /// `yyyy-MM-dd HH:mm:ss`; with `decimals_as_numbers`, decimals as JSON numbers instead.
    pub fn to_json(&self, decimals_as_numbers: bool) -> Value {
        let mut row = serde_json::to_value(self).unwrap_or(Value::Null);
        if decimals_as_numbers && let Value::Object(fields) = &mut row {
            for name in ["purc_pric", "stoin_cnt", "stoout_cnt", "retn_cnt"] {
                if let Some(value) = fields.get_mut(name)
                    && let Some(number) = value.as_str().and_then(|s| s.parse::<serde_json::Number>().ok())
                {
                    *value = Value::Number(number);
                }
            }
        }
        row
    }
}

/// Serializes an absent optional field as `""`.
fn or_empty<S: serde::Serializer>(value: &Option<Text>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_deref().unwrap_or(""))
}

#[cfg(test)]
mod tests;
