//! ELS7001 access tokens: one current token per institution; a new one is issued only when
//! the current one has at most the refresh window left, and it replaces the old one.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

use super::api::{TokenView, TokensView};
use super::lock;
use crate::beijing;

/// A token issued to an institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token text, 32 hex digits.
    pub value: String,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// ELS7001 refused to issue a token: the current one has more than the window left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the current token is valid for more than the refresh window")]
pub struct StillValid;

#[derive(Debug, Default)]
struct Holder {
    current: Option<Token>,
    issued: u64,
}

/// The tokens of every configured institution.
#[derive(Debug)]
pub struct Tokens {
    validity: TimeDelta,
    refresh_window: TimeDelta,
    /// Configuration order, for the inspection API.
    institutions: Vec<String>,
    holders: Mutex<HashMap<String, Holder>>,
}

impl Tokens {
    /// Tokens valid for `validity`, refused again while more than `refresh_window` is left.
    pub fn new(institutions: Vec<String>, validity: TimeDelta, refresh_window: TimeDelta) -> Self {
        Tokens { validity, refresh_window, institutions, holders: Mutex::new(HashMap::new()) }
    }

    /// Issues a new token to `institution`, superseding its current one, unless the current
    /// one has more than the refresh window left.
    pub fn issue(&self, institution: &str, now: DateTime<Utc>) -> Result<Token, StillValid> {
        let mut holders = lock(&self.holders);
        let holder = holders.entry(institution.to_owned()).or_default();
        if holder.current.as_ref().is_some_and(|t| t.expires_at - now > self.refresh_window) {
            return Err(StillValid);
        }
        let token = Token { value: format!("{:032x}", rand::rng().random::<u128>()), expires_at: now + self.validity };
        holder.current = Some(token.clone());
        holder.issued += 1;
        Ok(token)
    }

    /// Whether `token` is `institution`'s current token and has not expired.
    pub fn accepts(&self, institution: &str, token: &str, now: DateTime<Utc>) -> bool {
        let holders = lock(&self.holders);
        holders.get(institution).and_then(|h| h.current.as_ref()).is_some_and(|t| t.value == token && now < t.expires_at)
    }

    /// Tokens issued since start or the last reset, all institutions together.
    pub fn issued(&self) -> u64 {
        lock(&self.holders).values().map(|h| h.issued).sum()
    }

    /// Every institution's tokens.
    pub fn view(&self) -> TokensView {
        let holders = lock(&self.holders);
        let institutions = self
            .institutions
            .iter()
            .map(|code| {
                let holder = holders.get(code);
                let current = holder.and_then(|h| h.current.as_ref());
                TokenView {
                    institution: code.clone(),
                    issued: holder.map_or(0, |h| h.issued),
                    current_token: current.map(|t| t.value.clone()),
                    expires_at: current.map(|t| t.expires_at),
                    expire_time: current.map(|t| beijing::format(t.expires_at)),
                }
            })
            .collect();
        TokensView { institutions }
    }

    /// Forgets every token and count.
    pub fn clear(&self) {
        lock(&self.holders).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(vec!["H32128200338".into()], TimeDelta::seconds(1800), TimeDelta::seconds(300))
    }

    #[test]
    fn a_token_is_refused_again_until_the_window_then_replaced() {
        let t = tokens();
        let start = Utc::now();
        let first = t.issue("H32128200338", start).expect("first token");
        assert_eq!(first.value.len(), 32);
        assert!(t.accepts("H32128200338", &first.value, start));
        assert!(!t.accepts("H32128200339", &first.value, start), "another institution's token");
        assert_eq!(t.issue("H32128200338", start + TimeDelta::seconds(1499)), Err(StillValid));
        let second = t.issue("H32128200338", start + TimeDelta::seconds(1500)).expect("inside the window");
        assert!(!t.accepts("H32128200338", &first.value, start + TimeDelta::seconds(1500)), "superseded");
        assert!(t.accepts("H32128200338", &second.value, start + TimeDelta::seconds(1500)));
        assert!(!t.accepts("H32128200338", &second.value, second.expires_at), "expired");
        assert_eq!(t.issued(), 2);
        assert_eq!(t.view().institutions[0].issued, 2);
    }
}
