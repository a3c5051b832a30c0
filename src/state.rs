//! The shared state handle: one cloneable value every handler and task gets.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::auth::{AuthSetupError, Authenticator, ConnectLimiter, Grants, Identity, RateLimiter};
use crate::config::Config;
use crate::hub::Hub;
use crate::log_reads::LogReads;
use crate::outbox::{CloseReason, Outbox};
use crate::proxy;
use crate::shutdown::Shutdown;
use crate::source::{Opening, Source};
use crate::telemetry;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    /// The source, refusing as unavailable until it has opened.
    pub source: Arc<Opening>,
    pub shutdown: Shutdown,
    pub auth: Arc<Authenticator>,
    pub publish_limiter: Arc<RateLimiter>,
    /// Catch-up reads from the log: bounded and shared (single flight).
    pub log_reads: Arc<LogReads>,
    /// `limits.connect_rate`: handshakes admitted per second.
    pub connect_limiter: Arc<ConnectLimiter>,
    connections: Arc<Connections>,
}

#[derive(Default)]
struct Connections {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
    /// Every open streaming connection by id, for the admin API.
    open: DashMap<u64, Tracked>,
    /// The `jti` of each open connection whose token has one (revocations
    /// name tokens by it); apart so that `Tracked` stays small.
    jtis: DashMap<u64, Box<str>>,
    /// Narrowed subscribe grants (the control topic) waiting for a WebSocket
    /// connection's task to apply them, by connection id.
    narrowed: DashMap<u64, Arc<Grants>>,
    /// Entries in `narrowed`: a WebSocket wake-up reads this atomic, not the map.
    narrowed_count: AtomicUsize,
}

/// What the admin API knows of an open connection: 64 bytes, 72 with its
/// key (plus the subject's length and the map's slack); the rest is read
/// when listed (subscriptions from the hub, queued bytes from the outbox).
struct Tracked {
    transport: &'static str,
    peer: IpAddr,
    subject: Option<Box<str>>,
    /// Seconds after [`epoch`] (a u32 holds 136 years).
    opened: u32,
    /// The connection's queue: every subscription of it feeds this one, and
    /// closing it ends the connection.
    outbox: Arc<Outbox>,
}

/// An open connection as the admin API lists it.
pub struct ConnectionInfo {
    pub id: u64,
    pub transport: &'static str,
    pub peer: IpAddr,
    pub subject: Option<Box<str>>,
    pub age: Duration,
    pub outbox: Arc<Outbox>,
}

/// Why a streaming connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Draining,
    TooMany,
    TooManyFromIp,
}

impl AppState {
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        source: Arc<Opening>,
        shutdown: Shutdown,
    ) -> Result<Self, AuthSetupError> {
        let auth = Arc::new(Authenticator::new(
            &config.auth,
            config.limits.filter_limits(),
        )?);
        let publish_limiter = Arc::new(RateLimiter::new(
            config.limits.publish_rate,
            config.limits.publish_burst,
        ));
        let log_reads = Arc::new(LogReads::new(
            config.limits.catchup_concurrency,
            config.limits.catchup_cache_bytes,
        ));
        let connect_limiter = Arc::new(ConnectLimiter::new(
            config.limits.connect_rate,
            config.limits.connect_burst,
        ));
        Ok(Self {
            config: Arc::new(config),
            hub,
            source,
            shutdown,
            auth,
            publish_limiter,
            log_reads,
            connect_limiter,
            connections: Arc::new(Connections::default()),
        })
    }

    /// Takes a slot for a streaming connection from `ip`, within
    /// `limits.max_connections` and `limits.max_connections_per_ip`.
    pub fn connection_slot(
        &self,
        transport: &'static str,
        ip: IpAddr,
        identity: &Identity,
        outbox: &Arc<Outbox>,
    ) -> Result<ConnectionSlot, Refused> {
        let subject = identity.subject.as_deref();
        if self.shutdown.is_triggered() {
            telemetry::connection_refused("draining");
            return Err(Refused::Draining);
        }
        let limits = &self.config.limits;
        let taken = self
            .connections
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limits.max_connections).then_some(n + 1)
            });
        if taken.is_err() {
            telemetry::connection_refused("limit");
            return Err(Refused::TooMany);
        }
        // A trusted proxy's own address is not a client: it carries many.
        let limited = !proxy::is_trusted(&self.config.server.trusted_proxies, ip);
        if limited {
            let mut count = self.connections.per_ip.entry(ip).or_insert(0);
            if *count >= limits.max_connections_per_ip {
                drop(count);
                self.connections.total.fetch_sub(1, Ordering::AcqRel);
                telemetry::connection_refused("ip_limit");
                return Err(Refused::TooManyFromIp);
            }
            *count += 1;
            if *count == limits.max_connections_per_ip / 2 + 1 {
                drop(count);
                proxy::warn_once(
                    ip,
                    "holds more than half of limits.max_connections_per_ip: if it is a load \
                     balancer, list it in server.trusted_proxies so its clients are told apart",
                );
            }
        }
        telemetry::connection_opened(transport);
        let span = crate::traces::ConnectionSpan::open(transport, ip, None);
        outbox.set_trace(span.parent());
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        self.connections.open.insert(
            id,
            Tracked {
                transport,
                peer: ip,
                subject: subject.map(Box::from),
                opened: since_epoch(),
                outbox: Arc::clone(outbox),
            },
        );
        if let Some(jti) = &identity.jti {
            self.connections.jtis.insert(id, jti.as_str().into());
        }
        Ok(ConnectionSlot {
            connections: Arc::clone(&self.connections),
            transport,
            id,
            peer: ip,
            limited,
            _span: span,
        })
    }

    /// Every open streaming connection (for the admin API; clones a few fields of each).
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut list: Vec<ConnectionInfo> = self
            .connections
            .open
            .iter()
            .map(|entry| {
                let t = entry.value();
                ConnectionInfo {
                    id: *entry.key(),
                    transport: t.transport,
                    peer: t.peer,
                    subject: t.subject.clone(),
                    age: Duration::from_secs(u64::from(since_epoch().saturating_sub(t.opened))),
                    outbox: Arc::clone(&t.outbox),
                }
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// Open streaming connections per transport label (for `GET /admin/stats`;
    /// one walk of the map, nothing cloned).
    pub fn connection_counts(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for entry in self.connections.open.iter() {
            *counts.entry(entry.value().transport).or_insert(0) += 1;
        }
        counts
    }

    /// What the node waits for before it serves (`/readyz`'s `waiting_for`), or
    /// `None` when ready: the drain, the source's warm start, the control topic.
    pub fn waiting_for(&self) -> Option<&'static str> {
        if self.shutdown.is_triggered() {
            Some("shutdown")
        } else if !self.source.is_ready() {
            Some(self.source.waiting_for())
        } else if !self.auth.revocations.is_loaded() {
            // A token revoked before this node started must be refused from its first connection.
            Some("control_topic")
        } else {
            None
        }
    }

    /// Closes connection `id` as a drain would (WebSocket 1012, the SSE
    /// stream ends, gRPC `UNAVAILABLE`); false if there is none.
    pub fn close_connection(&self, id: u64) -> bool {
        let outbox = match self.connections.open.get(&id) {
            Some(entry) => Arc::clone(&entry.outbox),
            None => return false,
        };
        outbox.close(CloseReason::Closed);
        true
    }

    /// Ends every open connection of `subject` as revoked (WebSocket 4003,
    /// an SSE `error` event, gRPC `UNAUTHENTICATED`); how many.
    pub fn revoke_subject(&self, subject: &str) -> usize {
        let outboxes: Vec<Arc<Outbox>> = self
            .connections
            .open
            .iter()
            .filter(|e| e.subject.as_deref() == Some(subject))
            .map(|e| Arc::clone(&e.outbox))
            .collect();
        outboxes.iter().for_each(|o| o.close(CloseReason::Revoked));
        outboxes.len()
    }

    /// Ends every open connection whose token's `jti` is `jti`, as revoked; how many.
    pub fn revoke_jti(&self, jti: &str) -> usize {
        let ids: Vec<u64> = self
            .connections
            .jtis
            .iter()
            .filter(|e| &**e.value() == jti)
            .map(|e| *e.key())
            .collect();
        let outboxes: Vec<Arc<Outbox>> = ids
            .iter()
            .filter_map(|id| self.connections.open.get(id).map(|e| Arc::clone(&e.outbox)))
            .collect();
        outboxes.iter().for_each(|o| o.close(CloseReason::Revoked));
        outboxes.len()
    }

    /// Hands `grants` to WebSocket connection `id`'s task and wakes it.
    pub fn narrow(&self, id: u64, grants: Arc<Grants>, outbox: &Outbox) {
        if self.connections.narrowed.insert(id, grants).is_none() {
            self.connections
                .narrowed_count
                .fetch_add(1, Ordering::AcqRel);
        }
        outbox.wake();
    }

    /// The narrowed grants waiting for connection `id`, if any (one map read
    /// per wake-up of a WebSocket connection, skipped while the map is empty).
    pub fn take_narrowed(&self, id: u64) -> Option<Arc<Grants>> {
        if self.connections.narrowed_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let (_, grants) = self.connections.narrowed.remove(&id)?;
        self.connections
            .narrowed_count
            .fetch_sub(1, Ordering::AcqRel);
        Some(grants)
    }

    pub fn open_connections(&self) -> usize {
        self.connections.total.load(Ordering::Acquire)
    }
}

/// The moment connection ages count from: the first use.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Whole seconds since [`epoch`].
fn since_epoch() -> u32 {
    u32::try_from(epoch().elapsed().as_secs()).unwrap_or(u32::MAX)
}

/// Numbers connections for the logs (the `connection` span's `id`).
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Held for the life of a WebSocket, SSE or gRPC streaming connection.
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    transport: &'static str,
    id: u64,
    /// The client's address (behind a trusted proxy, the one it forwarded).
    peer: IpAddr,
    /// Counted against the per-IP limit (not for a trusted proxy's own address).
    limited: bool,
    /// The connection's trace span (traces on only), ended when the slot is dropped.
    _span: crate::traces::ConnectionSpan,
}

impl ConnectionSlot {
    /// The connection's span: its events carry `id`, `transport`, `peer` and `subject`.
    ///
    /// Built when there is something to log, not kept: an idle WebSocket
    /// costs a few KiB and a stored span would hold a registry entry per
    /// connection (see `transport/ws.rs`).
    /// The connection's id (as the admin API lists it).
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn span(&self, subject: Option<&str>) -> tracing::Span {
        tracing::info_span!(
            "connection",
            id = self.id,
            transport = self.transport,
            peer = %self.peer,
            subject = subject.unwrap_or(""),
        )
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.open.remove(&self.id);
        self.connections.jtis.remove(&self.id);
        if self.connections.narrowed_count.load(Ordering::Acquire) > 0
            && self.connections.narrowed.remove(&self.id).is_some()
        {
            self.connections
                .narrowed_count
                .fetch_sub(1, Ordering::AcqRel);
        }
        self.connections.total.fetch_sub(1, Ordering::AcqRel);
        if self.limited {
            self.connections
                .per_ip
                .remove_if_mut(&self.peer, |_, count| {
                    *count -= 1;
                    *count == 0
                });
        }
        telemetry::connection_closed(self.transport);
    }
}

#[cfg(test)]
mod tests {
    /// The admin API's registry entry stays small: it exists for every connection.
    #[test]
    fn a_tracked_connection_is_64_bytes() {
        assert_eq!(std::mem::size_of::<super::Tracked>(), 64);
    }
}
