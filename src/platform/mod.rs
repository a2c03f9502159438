//! The provincial platform as a client sees it: the request envelope and its `msgid`, the
//! CSB gateway signature, the HTTP client, the classification of answers, and tokens.

pub mod client;
pub mod envelope;
pub mod outcome;
pub mod sign;
pub mod token;

pub use client::{Call, PlatformClient};
pub use envelope::{Envelope, MsgIdSlot, MsgIds};
pub use outcome::{Outcome, Reply};
pub use token::{FileTokenStore, Token, TokenStore, Tokens};
