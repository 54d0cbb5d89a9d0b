//! Integration tests for regkeeper: real CNCF distribution registries on 127.0.0.1.

mod artifacts;
mod blobs;
mod copy_cli;
mod daemon;
mod errorclass;
mod event_passes;
mod events;
mod facts;
mod faults;
mod harness;
mod jsoncost;
mod plan;
mod progress;
mod referrers;
mod retention;
mod shards;
mod store;
mod support;
mod sync;
mod systemd;
mod untagged;
mod untrusted;
mod worldlayouts;
