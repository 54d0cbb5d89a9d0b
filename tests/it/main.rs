//! Integration tests for regkeeper: real CNCF distribution registries on 127.0.0.1.

mod daemon;
mod harness;
mod retention;
mod store;
mod support;
mod sync;
mod systemd;
