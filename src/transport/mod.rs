//! Transports: how records reach clients. Each one admits a client, opens its
//! subscriptions through [`session`](crate::session), and writes the bytes the
//! hub encoded once per record, with a deadline on every write.

pub mod bare_sse;
pub mod grpc;
pub mod records;
pub mod sse;
pub mod view;
pub mod ws;
pub(crate) mod ws_deflate;
pub mod ws_io;

use crate::record::{Record, Transport};

/// Measures `record`'s age at its first write on `transport`
/// (`pushgate_record_age_seconds`) and, for a sampled record, ends its
/// delivery span on this transport; later writes cost one shared load.
pub(crate) fn first_write(record: &Record, transport: Transport) {
    if let Some(age) = record.first_write(transport) {
        crate::telemetry::record_age(transport.label(), age);
        if let Some(trace) = record.trace() {
            crate::traces::delivered(trace, transport.label());
        }
    }
}
