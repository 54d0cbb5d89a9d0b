//! See `untrusted/mod.rs`.

#[allow(unused_imports)]
use super::common::*;
