//! The shared state handle: one cloneable value every handler and task gets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::hub::Hub;
use crate::shutdown::Shutdown;
use crate::source::Source;
use crate::telemetry;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub source: Arc<dyn Source>,
    pub shutdown: Shutdown,
    connections: Arc<AtomicUsize>,
}

impl AppState {
    pub fn new(config: Config, hub: Arc<Hub>, source: Arc<dyn Source>, shutdown: Shutdown) -> Self {
        Self {
            config: Arc::new(config),
            hub,
            source,
            shutdown,
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Takes one of `limits.max_connections` slots for a streaming connection.
    pub fn connection_slot(&self, transport: &'static str) -> Option<ConnectionSlot> {
        if self.shutdown.is_triggered() {
            telemetry::connection_refused("draining");
            return None;
        }
        let max = self.config.limits.max_connections;
        let taken = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            telemetry::connection_refused("limit");
            return None;
        }
        telemetry::connection_opened(transport);
        Some(ConnectionSlot {
            connections: Arc::clone(&self.connections),
            transport,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}

/// Held for the life of a WebSocket or SSE connection.
pub struct ConnectionSlot {
    connections: Arc<AtomicUsize>,
    transport: &'static str,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        telemetry::connection_closed(self.transport);
    }
}
