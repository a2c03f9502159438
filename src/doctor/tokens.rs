//! The fleet's access token per institution, read from where the processes share it: the
//! broker's token stream (`els.tokens`) with `[amqp]`, else `send`'s token file.
//!
//! With `--fetch-token` the token is asked for the way every worker asks for it
//! ([`Tokens::get`]): the current one is used while more than
//! `platform.token_refresh_lead_secs` are left, and no ELS7001 call is made (the platform
//! would refuse a new one with 9, and a new one would invalidate the fleet's); inside that
//! window, or with none, one process under the fleet's refresh lock calls ELS7001 and
//! shares the new token with the fleet at once. So the call is one a worker would make
//! anyway, and it proves `app_code` and `auth_code`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::Connection;

use super::{Check, Options};
use crate::beijing;
use crate::broker;
use crate::config::{Config, Institution};
use crate::platform::{FileTokenStore, MsgIdSlot, MsgIds, PlatformClient, Token, TokenStore, Tokens};

/// The store, and the msgid slot an ELS7001 call would number its message in.
struct Shared {
    store: Arc<dyn TokenStore>,
    where_: String,
    /// Held while the store is used (a local slot's lock file); a broker's is claimed on demand.
    local_slot: Option<MsgIdSlot>,
}

/// The token of every institution.
pub async fn check(config: &Config, connection: Option<&Connection>, options: Options) -> Vec<Check> {
    let shared = match open(config, connection).await {
        Ok(Some(shared)) => shared,
        Ok(None) => return Vec::new(),
        Err(check) => return vec![check],
    };
    let mut checks = Vec::new();
    let fetcher = match options.fetch_token {
        true => match fetcher(config, connection, &shared).await {
            Ok(tokens) => Some(tokens),
            Err(check) => {
                checks.push(check);
                None
            }
        },
        false => None,
    };
    for institution in &config.institutions {
        let subject = format!("token {}", institution.fixmedins_code);
        let current = match shared.store.current(&institution.fixmedins_code).await {
            Ok(current) => current,
            Err(error) => {
                checks.push(Check::fail(&subject, "current", error.to_string(), "see the broker checks"));
                continue;
            }
        };
        checks.push(current_token(&subject, current.as_ref(), &shared.where_, config));
        if let Some(tokens) = &fetcher {
            checks.push(fetch(tokens, &shared, institution, current).await);
        }
    }
    checks
}

/// The broker's token store (whose stream must exist: doctor does not create it), or the
/// token file of `send`; `None` when the broker was configured but not reached or has no
/// token stream (the broker checks say so).
async fn open(config: &Config, connection: Option<&Connection>) -> Result<Option<Shared>, Check> {
    match (&config.amqp, connection) {
        (Some(amqp), Some(connection)) => {
            let stream = broker::token_store::stream_name(&amqp.name_prefix);
            // Starting a store declares its stream: look first, doctor creates nothing.
            if !matches!(super::broker::passive(connection, &stream).await, Ok(Some(_))) {
                return Ok(None);
            }
            let store = broker::token_store::start(connection, &amqp.name_prefix)
                .await
                .map_err(|error| Check::fail("token", "store", format!("cannot read {stream}: {error}"), "see the broker checks"))?;
            Ok(Some(Shared { store, where_: format!("the fleet's stream {stream}"), local_slot: None }))
        }
        (Some(_), None) => Ok(None),
        (None, _) => {
            let path = config.platform.token_file.clone().unwrap_or_else(FileTokenStore::default_path);
            let slot = MsgIdSlot::claim_local(path.parent().unwrap_or(Path::new("."))).ok();
            let where_ = format!("send's token file {}", path.display());
            Ok(Some(Shared { store: Arc::new(FileTokenStore::new(path, &config.platform.url)), where_, local_slot: slot }))
        }
    }
}

fn current_token(subject: &str, current: Option<&Token>, where_: &str, config: &Config) -> Check {
    let Some(token) = current else {
        return Check::ok(subject, "current", format!("none in {where_} yet: the first upload fetches one"));
    };
    let left = token.remaining(Utc::now());
    let minutes = left.as_secs() / 60;
    let refresh = if left.as_secs() <= config.platform.token_refresh_lead_secs { "; due for a refresh by the next upload" } else { "" };
    let detail = format!("valid for {minutes} more minute(s), until {} (Beijing){refresh}, in {where_}", beijing::format(token.expires_at));
    Check::ok(subject, "current", detail).with("expires_at", token.expires_at.to_rfc3339()).with("seconds_left", left.as_secs())
}

/// What `--fetch-token` gets tokens with: the fleet's rule and store, numbering its calls in
/// one msgid slot of its own (claimed through the broker, or `send`'s local slot).
async fn fetcher(config: &Config, connection: Option<&Connection>, shared: &Shared) -> Result<Tokens, Check> {
    let failed = |detail: String, fix: &str| Check::fail("token", "fetch", detail, fix);
    let slot = match (connection, &config.amqp, &shared.local_slot) {
        (Some(connection), Some(amqp), _) => broker::claim_msgid_slot(connection, &amqp.name_prefix)
            .await
            .map_err(|error| failed(error.to_string(), "try again when a msgid slot is free"))?,
        (_, _, Some(local)) => local.slot,
        _ => return Err(failed("no msgid slot could be claimed".into(), "try again")),
    };
    let client = PlatformClient::new(&config.platform, Arc::new(MsgIds::new(slot)))
        .map_err(|error| failed(error.to_string(), "fix platform.ca_file"))?;
    Ok(Tokens::new(Arc::clone(&shared.store), client, Duration::from_secs(config.platform.token_refresh_lead_secs)))
}

/// `--fetch-token`: the token a worker would use next, fetched only when a worker would.
async fn fetch(tokens: &Tokens, shared: &Shared, institution: &Institution, before: Option<Token>) -> Check {
    let subject = format!("token {}", institution.fixmedins_code);
    match tokens.get(institution).await {
        Ok(token) if before.as_ref() == Some(&token) => Check::ok(
            &subject,
            "fetch",
            format!(
                "no ELS7001 call: the fleet's token has {} minute(s) left, more than platform.token_refresh_lead_secs (the platform would refuse a new one with 9)",
                token.remaining(Utc::now()).as_secs() / 60
            ),
        ),
        Ok(token) => Check::ok(
            &subject,
            "fetch",
            format!(
                "ELS7001 issued a new token, valid until {} (Beijing), now in {}: app_code and auth_code work",
                beijing::format(token.expires_at),
                shared.where_
            ),
        )
        .with("expires_at", token.expires_at.to_rfc3339()),
        Err(error) => Check::fail(
            &subject,
            "fetch",
            error.to_string(),
            format!(
                "returnCode 4 means a wrong app_code or auth_code of institution {}; 3 not authorised (ask the platform)",
                institution.fixmedins_code
            ),
        ),
    }
}
