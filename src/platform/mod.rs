//! The provincial platform as a client sees it: the request envelope and its `msgid`, the
//! CSB gateway signature, the HTTP client, the classification of answers, and tokens.

pub mod sign;
