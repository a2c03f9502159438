//! els-bridge: reports hospital stock movements to the Jiangsu provincial procurement
//! platform (transactions ELS7001–ELS7007).
//!
//! The modules follow the data: [`spec`] (what a valid record is) → [`platform`] (envelope,
//! signature, client, classified answers, tokens) → [`upload`] (batches, retries, bisection)
//! → the [`commands`] that run it; [`simulator`] plays the provincial platform.

pub mod beijing;
pub mod config;
pub mod platform;
pub mod commands;
pub mod spec;
pub mod telemetry;
