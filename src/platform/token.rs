//! Access tokens (ELS7001): where the current token of each institution is kept, and the
//! rule for when a new one is fetched.
//!
//! The platform refuses a new token while the current one has more than 5 minutes left
//! (code 9), and a new token invalidates the old one. So every process that uploads for an
//! institution must use the same, shared token: a [`TokenStore`] holds it (a local file for
//! `send`, the broker for a worker fleet), and [`Tokens`] applies the refresh rule: use the
//! stored token while more than `token_refresh_lead_secs` are left; inside that window, one
//! process (holding the store's refresh lock) fetches a new one; never send a token with
//! less than [`MIN_USABLE`] left.

use crate::telemetry::metrics::TokenAnswer;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Call, PlatformClient};
use super::outcome::Outcome;
use crate::beijing;
use crate::config::Institution;

/// A token with less than this left is not sent: it could expire on the way.
pub const MIN_USABLE: Duration = Duration::from_secs(20);

/// An access token and when it expires. Its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The `access_token` value; secret.
    pub value: String,
    /// When the platform stops accepting it.
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("value", &"[redacted]").field("expires_at", &self.expires_at).finish()
    }
}

impl Token {
    /// Time left before expiry at `now` (zero when expired).
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        (self.expires_at - now).to_std().unwrap_or(Duration::ZERO)
    }
}

/// A store failure (file or broker); transient from the uploader's point of view. Keeps
/// the error it comes from, if any, as its source (and says it in its message).
#[derive(Debug, thiserror::Error)]
#[error("token store: {what}{}", .source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
pub struct StoreError {
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A failure described by `what` alone.
    pub fn new(what: impl Into<String>) -> Self {
        StoreError { what: what.into(), source: None }
    }

    /// A failure while doing `what`, caused by `source`.
    pub fn caused(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError { what: what.into(), source: Some(Box::new(source)) }
    }
}

/// Held while one process refreshes an institution's token; dropping it releases the lock.
pub trait RefreshLock: Send {}

/// Where the current token of each institution is shared between processes.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// The current token of the institution, if any.
    async fn current(&self, institution: &str) -> Result<Option<Token>, StoreError>;
    /// Makes `token` the institution's current token, for every process.
    async fn replace(&self, institution: &str, token: &Token) -> Result<(), StoreError>;
    /// Forgets `token` if it is still the current one (the platform declared it invalid).
    async fn discard(&self, institution: &str, token: &Token) -> Result<(), StoreError>;
    /// Waits until this process alone may fetch a token for the institution.
    async fn lock_refresh(&self, institution: &str) -> Result<Box<dyn RefreshLock>, StoreError>;
}

/// Why no usable token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// ELS7001 failed; the outcome says how (misconfigured, transient, daily limit, ...).
    #[error("getting an access token (ELS7001) failed: {0}")]
    Platform(Outcome),
    /// The platform says a valid token exists (code 9) that no process here knows.
    #[error(
        "the platform refuses a new access token for {0} (returnCode 9: another holder has one with more than 5 minutes left); \
         is another program using the same credentials? Waiting until a new one may be fetched"
    )]
    HeldElsewhere(String),
    /// ELS7001 answered success without a usable token and expiry.
    #[error("the ELS7001 answer for {0} has no usable accessToken/expireTime")]
    Malformed(String),
}

impl TokenError {
    /// The outcome an upload waiting for this token should be treated as.
    pub fn as_outcome(&self) -> Outcome {
        match self {
            TokenError::Platform(outcome @ (Outcome::Misconfigured { .. } | Outcome::DailyLimit)) => outcome.clone(),
            other => Outcome::Transient { code: None, message: other.to_string() },
        }
    }
}

/// After the platform said that a token no process here knows is held elsewhere (9), ELS7001
/// is not called again for the institution for this long, doubling up to
/// [`HELD_ELSEWHERE_MAX_WAIT`]: such a token lives up to 25 more minutes (its answer was
/// lost, or another program uses the same credentials), and every call counts against the
/// daily call limit.
pub const HELD_ELSEWHERE_FIRST_WAIT: Duration = Duration::from_secs(30);
/// The longest wait between two ELS7001 calls while a token is held elsewhere.
pub const HELD_ELSEWHERE_MAX_WAIT: Duration = Duration::from_secs(300);

/// When ELS7001 may be called again for an institution whose token is held elsewhere.
#[derive(Debug, Clone, Copy)]
struct HeldElsewhere {
    until: Instant,
    next_wait: Duration,
}

/// Hands out the current token of each institution, fetching one when needed.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn TokenStore>,
    client: PlatformClient,
    refresh_lead: Duration,
    held_elsewhere: Arc<Mutex<HashMap<String, HeldElsewhere>>>,
}

impl Tokens {
    /// Tokens kept in `store`, refreshed `refresh_lead` before expiry.
    pub fn new(store: Arc<dyn TokenStore>, client: PlatformClient, refresh_lead: Duration) -> Self {
        Tokens { store, client, refresh_lead, held_elsewhere: Arc::default() }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldElsewhere>> {
        self.held_elsewhere.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether ELS7001 is not to be called yet for `code` (see [`HELD_ELSEWHERE_FIRST_WAIT`]).
    fn waiting_for_elsewhere(&self, code: &str) -> bool {
        self.held().get(code).is_some_and(|held| Instant::now() < held.until)
    }

    /// Remembers the answer "held elsewhere" (or forgets it, when a token was had).
    fn note_held_elsewhere(&self, code: &str, held: bool) {
        let mut map = self.held();
        if !held {
            map.remove(code);
            return;
        }
        let wait = map.get(code).map_or(HELD_ELSEWHERE_FIRST_WAIT, |h| h.next_wait);
        tracing::warn!(institution = %code, wait_secs = wait.as_secs(), "the platform holds a token for this institution that no process here knows; not asking again for a while");
        map.insert(code.to_owned(), HeldElsewhere { until: Instant::now() + wait, next_wait: (wait * 2).min(HELD_ELSEWHERE_MAX_WAIT) });
    }

    /// A token for the institution that is good for at least [`MIN_USABLE`].
    pub async fn get(&self, institution: &Institution) -> Result<Token, TokenError> {
        let code = &institution.fixmedins_code;
        if let Some(token) = self.store.current(code).await?
            && token.remaining(Utc::now()) > self.refresh_lead
        {
            return Ok(token);
        }
        if self.waiting_for_elsewhere(code) {
            let usable = self.store.current(code).await?.filter(|t| t.remaining(Utc::now()) > MIN_USABLE);
            return usable.ok_or_else(|| TokenError::HeldElsewhere(code.clone()));
        }
        let result = self.refresh(institution).await;
        if let Ok(_) | Err(TokenError::HeldElsewhere(_)) = &result {
            self.note_held_elsewhere(code, result.is_err());
        }
        result
    }

    /// [`Tokens::get`] past the fast path: under the refresh lock, the stored token if
    /// another process refreshed meanwhile, else ELS7001.
    async fn refresh(&self, institution: &Institution) -> Result<Token, TokenError> {
        let code = &institution.fixmedins_code;
        let _lock = self.store.lock_refresh(code).await?;
        // Another process may have refreshed while this one waited for the lock.
        let stored = self.store.current(code).await?;
        if let Some(token) = &stored
            && token.remaining(Utc::now()) > self.refresh_lead
        {
            return Ok(token.clone());
        }
        let Call { msgid, outcome } = self.client.fetch_token(institution).await;
        let usable_stored = stored.filter(|t| t.remaining(Utc::now()) > MIN_USABLE);
        let answered = |result| crate::telemetry::metrics::token_requested(code, result);
        match outcome {
            Outcome::Accepted(data) => match read_token(&data) {
                Some(token) => {
                    answered(TokenAnswer::Issued);
                    tracing::info!(institution = %code, %msgid, expires_at = %beijing::format(token.expires_at), "fetched a new access token");
                    self.store.replace(code, &token).await?;
                    Ok(token)
                }
                // "1 without accessToken" means another caller holds a valid token.
                None if data.get("accessToken").is_none_or(|v| v.as_str().is_none_or(str::is_empty)) => {
                    answered(TokenAnswer::NotIssued);
                    usable_stored.ok_or_else(|| TokenError::HeldElsewhere(code.clone()))
                }
                None => {
                    // A token came, with an expiry that cannot be read.
                    answered(TokenAnswer::Issued);
                    Err(TokenError::Malformed(code.clone()))
                }
            },
            // The platform's clock sees more than 5 minutes left: keep using ours.
            Outcome::TokenStillValid => {
                answered(TokenAnswer::NotIssued);
                usable_stored.ok_or_else(|| TokenError::HeldElsewhere(code.clone()))
            }
            other => {
                answered(TokenAnswer::Failed);
                Err(TokenError::Platform(other))
            }
        }
    }

    /// Records that the platform declared `token` invalid (code 5), so that the next
    /// [`Tokens::get`] fetches a new one.
    pub async fn invalidate(&self, institution: &Institution, token: &Token) -> Result<(), StoreError> {
        tracing::warn!(institution = %institution.fixmedins_code, "the platform declared the access token invalid; a new one will be fetched");
        self.store.discard(&institution.fixmedins_code, token).await
    }
}

/// Reads `accessToken` and `expireTime` (Beijing `yyyy-MM-dd HH:mm:ss`, or epoch seconds
/// or milliseconds) from an ELS7001 answer.
pub fn read_token(data: &serde_json::Map<String, Value>) -> Option<Token> {
    let value = data.get("accessToken")?.as_str()?.trim();
    if value.is_empty() {
        return None;
    }
    let expires_at = match data.get("expireTime")? {
        Value::String(text) => {
            let text = text.trim();
            beijing::parse(text).or_else(|| text.parse::<i64>().ok().and_then(from_epoch))?
        }
        Value::Number(n) => from_epoch(n.as_i64()?)?,
        _ => return None,
    };
    Some(Token { value: value.to_owned(), expires_at })
}

/// Epoch seconds or milliseconds (told apart by magnitude: ms after 2001-09-09).
fn from_epoch(number: i64) -> Option<DateTime<Utc>> {
    if number > 1_000_000_000_000 { DateTime::from_timestamp_millis(number) } else { DateTime::from_timestamp(number, 0) }
}

/// Tokens in a local JSON file (mode 0600), shared by the `send` runs of one host and
/// scoped by platform URL; a lock file next to it serialises refreshes.
pub struct FileTokenStore {
    path: PathBuf,
    scope: String,
}

/// The open lock file; dropping it unlocks.
struct FileLock {
    _file: std::fs::File,
}
impl RefreshLock for FileLock {}

impl FileTokenStore {
    /// A store in `path` for tokens of the platform at `platform_url`.
    pub fn new(path: PathBuf, platform_url: &str) -> Self {
        FileTokenStore { path, scope: platform_url.to_owned() }
    }

    /// The default place: `$XDG_STATE_HOME/els-bridge/tokens.json`, else
    /// `$HOME/.local/state/els-bridge/tokens.json`.
    pub fn default_path() -> PathBuf {
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("."));
        state.join("els-bridge").join("tokens.json")
    }

    fn key(&self, institution: &str) -> String {
        format!("{institution} {}", self.scope)
    }

    fn error(&self, what: &str, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::caused(format!("{what} {}", self.path.display()), error)
    }

    fn read_all(&self) -> Result<HashMap<String, Token>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), "ignoring an unreadable token file: {e}");
                HashMap::new()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
            Err(e) => Err(self.error("cannot read", e)),
        }
    }

    fn write_all(&self, tokens: &HashMap<String, Token>) -> Result<(), StoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.error("cannot create the folder of", e))?;
        let temporary = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| self.error("cannot write", e))?;
        let bytes = serde_json::to_vec_pretty(tokens).map_err(|e| self.error("cannot encode", e))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(|e| self.error("cannot write", e))?;
        std::fs::rename(&temporary, &self.path).map_err(|e| self.error("cannot replace", e))
    }

    fn update(&self, change: impl FnOnce(&mut HashMap<String, Token>)) -> Result<(), StoreError> {
        let mut tokens = self.read_all()?;
        change(&mut tokens);
        tokens.retain(|_, t| t.expires_at > Utc::now());
        self.write_all(&tokens)
    }
}

#[async_trait]
impl TokenStore for FileTokenStore {
    async fn current(&self, institution: &str) -> Result<Option<Token>, StoreError> {
        Ok(self.read_all()?.remove(&self.key(institution)))
    }

    async fn replace(&self, institution: &str, token: &Token) -> Result<(), StoreError> {
        let key = self.key(institution);
        self.update(|tokens| {
            tokens.insert(key, token.clone());
        })
    }

    async fn discard(&self, institution: &str, token: &Token) -> Result<(), StoreError> {
        let key = self.key(institution);
        self.update(|tokens| {
            if tokens.get(&key) == Some(token) {
                tokens.remove(&key);
            }
        })
    }

    async fn lock_refresh(&self, _institution: &str) -> Result<Box<dyn RefreshLock>, StoreError> {
        let path = self.path.with_extension("lock");
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let file = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            let file = std::fs::File::options().create(true).truncate(false).write(true).open(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| self.error("cannot lock", e))?
        .map_err(|e| self.error("cannot lock", e))?;
        Ok(Box::new(FileLock { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(value: Value) -> serde_json::Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn expiry_is_read_as_beijing_time_or_epoch() {
        let expected = DateTime::parse_from_rfc3339("2026-11-25T02:30:00Z").unwrap().with_timezone(&Utc);
        for expire in [
            json!("2026-11-25 10:30:00"),
            json!(expected.timestamp()),
            json!(expected.timestamp_millis()),
            json!(expected.timestamp_millis().to_string()),
        ] {
            let token = read_token(&data(json!({"accessToken": "t", "expireTime": expire}))).unwrap();
            assert_eq!(token.expires_at, expected, "{expire}");
        }
        assert!(read_token(&data(json!({"accessToken": "", "expireTime": "2026-11-25 10:30:00"}))).is_none());
        assert!(read_token(&data(json!({"accessToken": "t", "expireTime": "soon"}))).is_none());
        assert!(read_token(&data(json!({"accessToken": "t"}))).is_none());
    }

    #[test]
    fn debug_output_hides_the_token() {
        let token = Token { value: "s3cret-token".into(), expires_at: Utc::now() };
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn file_store_keeps_tokens_private_per_platform_and_discards_only_the_current_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/tokens.json");
        let store = FileTokenStore::new(path.clone(), "http://a/api/commonInterfaca");
        let other_platform = FileTokenStore::new(path.clone(), "http://b/api/commonInterfaca");
        let later = Utc::now() + chrono::Duration::minutes(30);
        let first = Token { value: "one".into(), expires_at: later };
        let second = Token { value: "two".into(), expires_at: later };

        store.replace("H32128200338", &first).await.unwrap();
        assert_eq!(store.current("H32128200338").await.unwrap(), Some(first.clone()));
        assert_eq!(other_platform.current("H32128200338").await.unwrap(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        store.replace("H32128200338", &second).await.unwrap();
        store.discard("H32128200338", &first).await.unwrap();
        assert_eq!(store.current("H32128200338").await.unwrap(), Some(second.clone()));
        store.discard("H32128200338", &second).await.unwrap();
        assert_eq!(store.current("H32128200338").await.unwrap(), None);

        let _lock = store.lock_refresh("H32128200338").await.unwrap();
    }
}
