//! The crossflow gateway: server assembly, the mTLS identity edge, the demo,
//! and a testbed that lays out a federation for demos, tests and benchmarks.
//! The `crossflow` binary (src/main.rs) only parses arguments and calls in.
#![forbid(unsafe_code)]

pub mod allocator;
pub mod coalesce;
pub mod demo;
pub mod edge;
pub mod oversize;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod testbed;
