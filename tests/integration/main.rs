//! The one integration-test binary: real senders and receivers on loopback,
//! and the built `xfer` binary where the command line itself is the subject.
//! [`harness`] is the shared toolkit; each other module is one feature.

mod harness;
mod proxies;

mod cli;
mod codes;
mod discovery;
mod events;
mod faults;
mod hostile;
mod manifest;
mod pull;
mod rate;
mod shell;
mod storage;
mod terminal;
mod transfer;
