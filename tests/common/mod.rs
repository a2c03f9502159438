//! Helpers shared by the integration tests; each test binary declares `mod common;` and
//! uses the parts it needs.

pub mod broker;
pub mod cluster;
pub mod records;
pub mod relay;
pub mod run;
pub mod simulator;
pub mod tls;
pub mod worker;
