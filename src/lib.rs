//! regkeeper keeps container registries in step.
//!
//! Data flows one way (see ARCHITECTURE.md):
//! `config` -> `engine::inventory` (read-only) -> `engine::runplan` (pure:
//! copies and retention deletions) -> an executor (Apply for `sync`,
//! Estimate for `plan`) -> report, state and metrics.
//!
//! - [`config`]: the TOML file, validated completely before anything is contacted.
//! - [`reference`]: image and repository references.
//! - [`oci`]: digests, media types, manifests, verified streams.
//! - [`transport`]: the only code that talks to registries or layout directories.
//! - [`secret`]: values that are never printed.
//! - [`human`]: sizes, ages and counts in text output.

pub(crate) mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub(crate) mod filter;
pub mod human;
pub(crate) mod metrics;
pub mod oci;
pub mod plan;
pub mod reference;
pub mod retention;
pub(crate) mod secret;
pub mod shard;
pub mod state;
pub mod transport;
pub mod verify;
