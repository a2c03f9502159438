//! The provincial interface: transaction codes, field rules and the typed records of
//! ELS7002–ELS7007 (see `shared/spec/README.md`).

pub mod field;
pub mod record;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use field::{FieldError, Rule};
pub use record::{Record, RecordErrors};

/// A transaction code of the provincial interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Infno {
    /// Get the access token.
    #[serde(rename = "ELS7001")]
    Els7001,
    /// Drug stock-in.
    #[serde(rename = "ELS7002")]
    Els7002,
    /// Drug stock-out.
    #[serde(rename = "ELS7003")]
    Els7003,
    /// Consumable stock-in.
    #[serde(rename = "ELS7004")]
    Els7004,
    /// Consumable stock-out.
    #[serde(rename = "ELS7005")]
    Els7005,
    /// Drug returned to the supplier.
    #[serde(rename = "ELS7006")]
    Els7006,
    /// Consumable returned to the supplier.
    #[serde(rename = "ELS7007")]
    Els7007,
}

impl Infno {
    /// The six upload transactions, in order.
    pub const UPLOADS: [Infno; 6] = [Infno::Els7002, Infno::Els7003, Infno::Els7004, Infno::Els7005, Infno::Els7006, Infno::Els7007];

    /// The 7-character code sent on the wire, e.g. `ELS7002`.
    pub fn as_str(self) -> &'static str {
        match self {
            Infno::Els7001 => "ELS7001",
            Infno::Els7002 => "ELS7002",
            Infno::Els7003 => "ELS7003",
            Infno::Els7004 => "ELS7004",
            Infno::Els7005 => "ELS7005",
            Infno::Els7006 => "ELS7006",
            Infno::Els7007 => "ELS7007",
        }
    }

    /// Whether this transaction uploads records (everything but ELS7001).
    pub fn is_upload(self) -> bool {
        self != Infno::Els7001
    }

    /// The field that identifies a record of this transaction at the platform.
    pub fn key_field(self) -> &'static str {
        match self {
            Infno::Els7006 | Infno::Els7007 => "hosp_retn_mgt_detl",
            _ => "hosp_purc_mgt_detl",
        }
    }

    /// What the transaction reports, in words an operator knows.
    pub fn describe(self) -> &'static str {
        match self {
            Infno::Els7001 => "access token",
            Infno::Els7002 => "drug stock-in",
            Infno::Els7003 => "drug stock-out",
            Infno::Els7004 => "consumable stock-in",
            Infno::Els7005 => "consumable stock-out",
            Infno::Els7006 => "drug return to supplier",
            Infno::Els7007 => "consumable return to supplier",
        }
    }
}

impl fmt::Display for Infno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A transaction code that the interface does not define.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transaction code {0:?}: expected one of ELS7001 to ELS7007")]
pub struct UnknownInfno(pub String);

impl FromStr for Infno {
    type Err = UnknownInfno;

    /// Any case, blanks around it ignored; read in place (every event names one).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = s.trim().as_bytes();
        let mut upper = [0u8; 7];
        if code.len() == upper.len() {
            upper.copy_from_slice(code);
            upper.make_ascii_uppercase();
        }
        match &upper {
            b"ELS7001" => Ok(Infno::Els7001),
            b"ELS7002" => Ok(Infno::Els7002),
            b"ELS7003" => Ok(Infno::Els7003),
            b"ELS7004" => Ok(Infno::Els7004),
            b"ELS7005" => Ok(Infno::Els7005),
            b"ELS7006" => Ok(Infno::Els7006),
            b"ELS7007" => Ok(Infno::Els7007),
            _ => Err(UnknownInfno(field::excerpt(s))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infno_round_trips_through_text() {
        for infno in Infno::UPLOADS.into_iter().chain([Infno::Els7001]) {
            assert_eq!(infno.as_str().parse::<Infno>(), Ok(infno));
            assert_eq!(serde_json::to_string(&infno).unwrap(), format!("\"{infno}\""));
        }
        assert_eq!("els7003".parse::<Infno>(), Ok(Infno::Els7003));
        assert_eq!(" Els7004\t".parse::<Infno>(), Ok(Infno::Els7004));
        assert!("ELS7008".parse::<Infno>().is_err());
        assert!("7002".parse::<Infno>().is_err());
    }

    #[test]
    fn returns_use_their_own_key() {
        assert_eq!(Infno::Els7006.key_field(), "hosp_retn_mgt_detl");
        assert_eq!(Infno::Els7005.key_field(), "hosp_purc_mgt_detl");
    }
}
