//! Optional TLS on the listener (`[server.tls]`): rustls, ALPN `h2` then `http/1.1`, and the certificate re-read when its files change.
//!
//! The certificate and key are PEM files. A reloader task checks their
//! modification times every `reload_interval`; on a change it loads both and
//! swaps them in for new handshakes (connections already open keep theirs).
//! A pair that does not load (a half-written file, a key that does not match)
//! is logged and the previous one stays in use.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerTlsConfig;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert_file {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("server.tls.cert_file {path}: no CERTIFICATE in the file")]
    NoCert { path: PathBuf },
    #[error("server.tls.key_file {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("server.tls: the key does not fit the certificate: {0}")]
    Mismatch(#[source] rustls::Error),
}

/// The listener's TLS: an acceptor whose certificate can be swapped.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
}

#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().expect("tls lock")))
    }
}

/// Loads and checks the certificate chain and key.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |source| TlsError::Cert {
        path: cert_file.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(cert_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: cert_file.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key, &provider).map_err(TlsError::Mismatch)?;
    Ok(certified)
}

fn modified(path: &Path) -> io::Result<SystemTime> {
    fs::metadata(path)?.modified()
}

impl Tls {
    /// Loads `config`'s files and starts the reloader (it stops on shutdown).
    pub fn start(config: &ServerTlsConfig, shutdown: &Shutdown) -> Result<Self, TlsError> {
        let first = load(&config.cert_file, &config.key_file)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(first)),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tls = Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            resolver,
        };
        tls.spawn_reloader(config.clone(), shutdown);
        Ok(tls)
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    fn spawn_reloader(&self, config: ServerTlsConfig, shutdown: &Shutdown) {
        let resolver = Arc::clone(&self.resolver);
        let stamp = |c: &ServerTlsConfig| (modified(&c.cert_file).ok(), modified(&c.key_file).ok());
        let mut seen = stamp(&config);
        let shutdown_signal = shutdown.clone();
        shutdown.tracker().spawn(async move {
            let mut tick = tokio::time::interval(config.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown_signal.triggered() => break,
                    _ = tick.tick() => {}
                }
                let now = stamp(&config);
                if now == seen {
                    continue;
                }
                let files = config.clone();
                // File I/O and key parsing: off the async workers.
                let loaded = tokio::task::spawn_blocking(move || load(&files.cert_file, &files.key_file)).await;
                match loaded {
                    Ok(Ok(certified)) => {
                        *resolver.current.write().expect("tls lock") = Arc::new(certified);
                        seen = now;
                        tracing::info!(cert = %config.cert_file.display(), "TLS certificate reloaded");
                    }
                    Ok(Err(e)) => {
                        // Perhaps half written: keep the old pair, try again next tick.
                        tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the previous one");
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
                }
            }
        });
    }
}
