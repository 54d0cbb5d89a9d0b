//! The TOML configuration. (Being written.)
