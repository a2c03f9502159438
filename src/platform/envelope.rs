//! The request envelope every transaction is wrapped in, and its unique `msgid`.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::beijing;
use crate::config::Institution;
use crate::spec::Infno;

/// How many processes may send at once without sharing a msgid space (each claims a slot).
pub const MSGID_SLOTS: u16 = 20;
/// Messages one process may number within one second; the 4-digit sequence is
/// `slot * MSGIDS_PER_SLOT + counter`.
pub const MSGIDS_PER_SLOT: u16 = 500;

/// The request body: the envelope fields in the spec's order, then `input` (any
/// serializable value, so that rows are written straight into the body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<I = Value> {
    pub infno: String,
    pub msgid: String,
    pub mdtrtarea_admvs: String,
    pub insuplc_admdvs: String,
    pub recer_sys_code: String,
    pub dev_no: String,
    pub dev_safe_info: String,
    pub cainfo: String,
    pub signtype: String,
    pub infver: String,
    pub opter_type: String,
    pub opter: String,
    pub opter_name: String,
    pub inf_time: String,
    pub fixmedins_code: String,
    pub fixmedins_name: String,
    pub sign_no: String,
    pub fixmedins_soft_fcty: String,
    pub input: I,
}

impl<I> Envelope<I> {
    /// Wraps `input` for `infno` with the institution's settings; unused fields are `""`.
    pub fn new(institution: &Institution, infno: Infno, msgid: String, now: DateTime<Utc>, input: I) -> Self {
        let i = institution;
        Envelope {
            infno: infno.as_str().to_owned(),
            msgid,
            mdtrtarea_admvs: i.mdtrtarea_admvs.clone(),
            insuplc_admdvs: i.insuplc_admdvs.clone(),
            recer_sys_code: i.recer_sys_code.clone(),
            dev_no: i.dev_no.clone(),
            dev_safe_info: i.dev_safe_info.clone(),
            cainfo: i.cainfo.clone(),
            signtype: i.signtype.clone(),
            infver: i.infver.clone(),
            opter_type: i.opter_type.clone(),
            opter: i.opter.clone(),
            opter_name: i.opter_name.clone(),
            inf_time: beijing::format(now),
            fixmedins_code: i.fixmedins_code.clone(),
            fixmedins_name: i.fixmedins_name.clone(),
            sign_no: i.sign_no.clone(),
            fixmedins_soft_fcty: i.fixmedins_soft_fcty.clone(),
            input,
        }
    }
}

/// Numbers messages: `fixmedins_code` + Beijing `yyyyMMddHHmmss` + 4-digit sequence.
///
/// Processes sending at the same time own distinct slots (see [`MsgIdSlot`]), so their
/// sequences never meet; within a process a counter numbers up to [`MSGIDS_PER_SLOT`]
/// messages a second and waits for the next second beyond that. The clock never runs
/// backwards here: after a clock step back, the last second used keeps counting.
#[derive(Debug)]
pub struct MsgIds {
    slot: u16,
    state: Mutex<(i64, u16)>,
}

impl MsgIds {
    /// A numbering for the process that owns `slot` (below [`MSGID_SLOTS`]).
    pub fn new(slot: u16) -> Self {
        assert!(slot < MSGID_SLOTS, "msgid slot {slot} out of range");
        // Start in the next second, so a slot freed and claimed again within one second
        // cannot repeat its predecessor's numbers.
        MsgIds { slot, state: Mutex::new((Utc::now().timestamp(), MSGIDS_PER_SLOT)) }
    }

    /// The next msgid for `fixmedins_code`, waiting for the next second if this one's
    /// numbers are used up.
    pub async fn next(&self, fixmedins_code: &str) -> String {
        loop {
            let now = Utc::now();
            match self.take(now.timestamp()) {
                Some((second, counter)) => {
                    let time = DateTime::from_timestamp(second, 0).unwrap_or(now);
                    let sequence = self.slot * MSGIDS_PER_SLOT + counter;
                    return format!("{fixmedins_code}{}{sequence:04}", beijing::at(time).format("%Y%m%d%H%M%S"));
                }
                None => {
                    let into_second = now.timestamp_subsec_millis() as u64;
                    tokio::time::sleep(Duration::from_millis(1000 - into_second.min(999))).await;
                }
            }
        }
    }

    fn take(&self, now_second: i64) -> Option<(i64, u16)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (second, counter) = &mut *state;
        if now_second > *second {
            *second = now_second;
            *counter = 0;
        }
        if *counter >= MSGIDS_PER_SLOT {
            return None;
        }
        *counter += 1;
        Some((*second, *counter - 1))
    }
}

/// A msgid slot held by this process for as long as the value lives.
#[derive(Debug)]
pub struct MsgIdSlot {
    /// The slot number.
    pub slot: u16,
    _lock: File,
}

impl MsgIdSlot {
    /// Claims a free slot among the lock files in `dir`, shared by the processes of one
    /// host (the operating system releases the lock when the process ends).
    pub fn claim_local(dir: &Path) -> std::io::Result<MsgIdSlot> {
        std::fs::create_dir_all(dir)?;
        for slot in 0..MSGID_SLOTS {
            let file = File::options().create(true).truncate(false).write(true).open(dir.join(format!("msgid-slot-{slot}.lock")))?;
            if file.try_lock().is_ok() {
                return Ok(MsgIdSlot { slot, _lock: file });
            }
        }
        Err(std::io::Error::other(format!("all {MSGID_SLOTS} msgid slots in {} are held by other els-bridge processes", dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[tokio::test]
    async fn msgid_is_code_beijing_time_and_sequence() {
        let ids = MsgIds::new(3);
        let before = beijing::now().format("%Y%m%d%H%M%S").to_string();
        let id = ids.next("H32128200338").await;
        let after = beijing::now().format("%Y%m%d%H%M%S").to_string();
        assert_eq!(id.len(), 30);
        assert!(id.starts_with("H32128200338"));
        let time = &id[12..26];
        assert!(before.as_str() <= time && time <= after.as_str(), "{time} not within {before}..{after}");
        let sequence: u16 = id[26..].parse().unwrap();
        assert!((3 * MSGIDS_PER_SLOT..4 * MSGIDS_PER_SLOT).contains(&sequence));
    }

    #[tokio::test]
    async fn msgids_never_repeat_across_slots_even_past_a_seconds_capacity() {
        let a = MsgIds::new(0);
        let b = MsgIds::new(1);
        let mut seen = HashSet::new();
        for _ in 0..(MSGIDS_PER_SLOT as usize + 50) {
            assert!(seen.insert(a.next("H32128200338").await));
            assert!(seen.insert(b.next("H32128200338").await));
        }
    }

    #[test]
    fn counting_survives_a_clock_step_back() {
        let ids = MsgIds::new(0);
        let (second, _) = ids.take(i64::MAX / 2).unwrap();
        let (later, counter) = ids.take(1).unwrap();
        assert_eq!((later, counter), (second, 1));
    }

    #[test]
    fn local_slots_are_exclusive_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let first = MsgIdSlot::claim_local(dir.path()).unwrap();
        let second = MsgIdSlot::claim_local(dir.path()).unwrap();
        assert_ne!(first.slot, second.slot);
        let again = first.slot;
        drop(first);
        assert_eq!(MsgIdSlot::claim_local(dir.path()).unwrap().slot, again);
    }

    #[test]
    fn unused_envelope_fields_are_empty_strings() {
        let config = crate::config::Config::from_toml(
            r#"[[institutions]]
            fixmedins_code = "H32128200338"
            fixmedins_name = "靖江市人民医院"
            app_code = "a"
            auth_code = "b"
            csb_access_key = "c"
            csb_secret_key = "d"
            mdtrtarea_admvs = "321282"
            recer_sys_code = "ELS"
            cainfo = "ca"
            infver = "V1.0"
            opter_type = "3"
            opter = "o"
            opter_name = "o"
            fixmedins_soft_fcty = "f""#,
            Vec::new(),
        )
        .unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-25T16:30:00Z").unwrap().with_timezone(&Utc);
        let e = Envelope::new(&config.institutions[0], Infno::Els7002, "m".into(), now, Value::Null);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["dev_no"], "");
        assert_eq!(json["insuplc_admdvs"], "");
        assert_eq!(json["sign_no"], "");
        assert_eq!(json["infver"], "V1.0");
        assert_eq!(json["infno"], "ELS7002");
        assert_eq!(json["inf_time"], "2026-11-26 00:30:00");
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 19);
        assert!(json.as_object().unwrap().values().all(|v| !v.is_null() || v == &json["input"]));
    }
}
