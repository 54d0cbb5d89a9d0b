//! Sources are untrusted input: a hostile registry (`support::hostile`) in
//! front of a real source registry lies, trickles, stalls or tries to
//! escape, and each test checks what the real target registry (raw HTTP,
//! skopeo) and `oci:` layouts hold afterwards, with the process's wall time,
//! peak memory and the requests it made. Every test prints one `UNTRUSTED`
//! line with its figures.

mod common;
mod extra;
mod holds;
mod listener;
mod memory;
mod names;
mod realms;
mod time;
