//! The real-systemd VM test of ctx (issue 6): a Debian rootfs with systemd as PID 1, ctx
//! installed into it the way a user installs it, and `ctx-sysvm-check`, a oneshot-like service
//! that drives `systemctl` and prints its findings on the serial console.
//!
//! This library is what the guest and `cargo xtask` share: the console protocol ([`proto`]),
//! the Prometheus text parser that compares scrapes ([`expo`]), and a minimal HTTP/1.0 client
//! ([`http`]). Standard library only, so it builds for the static musl guest and the host alike.

pub mod expo;
pub mod http;
pub mod proto;
