//! els-bridge: reports hospital stock movements to the Jiangsu provincial procurement
//! platform (transactions ELS7001–ELS7007).
//!
//! The modules follow the data: [`input`] and [`event`] (what arrives) → [`spec`] (what a
//! valid record is) → [`platform`] (envelope, signature, client, classified answers,
//! tokens) → [`upload`] (one batch: token, split, bisect) with [`retry`] → the
//! [`commands`] that run it; [`simulator`] plays the provincial platform.

pub mod beijing;
pub mod broker;
pub mod commands;
pub mod config;
pub mod contract;
pub mod dlq;
pub mod event;
pub mod input;
pub mod ledger;
pub mod platform;
pub mod simulator;
pub mod retry;
pub mod spec;
pub mod telemetry;
pub mod upload;
pub mod worker;
