//! Transports: how records reach clients. Each one admits a client, opens its
//! subscriptions through [`session`](crate::session), and writes the bytes the
//! hub encoded once per record, with a deadline on every write.

pub mod bare_sse;
pub mod grpc;
pub mod sse;
pub mod view;
pub mod ws;
pub mod ws_io;
