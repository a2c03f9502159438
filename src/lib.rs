//! els-bridge: reports hospital stock movements to the Jiangsu provincial procurement
//! platform (transactions ELS7001–ELS7007).
//!
//! The modules follow the data, and each imports only those before it in this order:
//!
//! 1. Vocabulary, no I/O: [`beijing`] (time), [`spec`] (what a valid record is),
//!    [`input`] and [`event`] (what arrives: lines, events), [`contract`] (contract §2 on
//!    the wire), [`config`], [`retry`] (backoff), [`telemetry`] (logs, metrics, traces;
//!    takes plain values), [`sheet_lang`] (CSV headers in English or Chinese).
//! 2. Outside systems: [`platform`] (envelope, signature, client, classified answers,
//!    tokens), [`broker`] (connection, topology, confirmed publishing, stream logs, token
//!    store, msgid slots), [`ledger`] (claims, receipts, index, report on the broker).
//! 3. The flow: [`upload`] (one batch: token, split, bisect; [`upload::claimed`] under a
//!    ledger claim), [`worker`] (consume → lanes → pipeline → settle), [`dlq`] (dead
//!    letters: read, filter, count, replay), [`doctor`] (checks of an installation that
//!    upload nothing).
//! 4. [`commands`], the command line; [`simulator`] plays the provincial platform.

pub mod beijing;
pub mod broker;
pub mod commands;
pub mod config;
pub mod contract;
pub mod dlq;
pub mod doctor;
pub mod event;
pub mod input;
pub mod ledger;
pub mod platform;
pub mod retry;
pub mod sheet_lang;
pub mod simulator;
pub mod spec;
pub mod telemetry;
pub mod upload;
pub mod worker;
