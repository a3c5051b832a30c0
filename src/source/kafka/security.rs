//! Kafka client security: the TLS and SASL settings every client gets, and why a start-up failed.
//!
//! `[kafka.tls]` and `[kafka.sasl]` become librdkafka properties here
//! (`security.protocol` is derived from them); `[kafka.properties]` is applied
//! after these by the caller, so it still wins. Secret files are read once,
//! when the source opens. [`Probe`] is the admin client's context: while the
//! source starts it keeps what librdkafka reported (SASL rejected, TLS
//! handshake failed, broker refused) so that a failed start-up ends with one
//! line naming the cause instead of a stream of librdkafka retries.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::source::kafka_config::{read_secret_file, KafkaConfig, SaslMechanism, Secret};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read `{key}` ({path}): {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `config` with secret files read into their values (so every client built
/// from it, now or later, has them without touching the disk again).
pub(super) fn resolve(config: &KafkaConfig) -> Result<KafkaConfig, SecurityError> {
    let mut out = config.clone();
    let sasl = &mut out.sasl;
    for (key, file, value) in [
        (
            "kafka.sasl.password_file",
            &mut sasl.password_file,
            &mut sasl.password,
        ),
        (
            "kafka.sasl.oauth_client_secret_file",
            &mut sasl.oauth_client_secret_file,
            &mut sasl.oauth_client_secret,
        ),
    ] {
        if file.as_os_str().is_empty() {
            continue;
        }
        *value = read_secret_file(file).map_err(|source| SecurityError::Read {
            key,
            path: file.clone(),
            source,
        })?;
        *file = PathBuf::new();
    }
    Ok(out)
}

/// librdkafka's `security.protocol` for the configured TLS and SASL.
pub(super) fn protocol(config: &KafkaConfig) -> &'static str {
    match (config.tls.is_on(), config.sasl.is_on()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    }
}

/// The librdkafka properties for `[kafka.tls]` and `[kafka.sasl]` (after [`resolve`]).
pub(super) fn settings(config: &KafkaConfig) -> Vec<(&'static str, String)> {
    let mut out = vec![("security.protocol", protocol(config).to_owned())];
    let path = |p: &PathBuf| p.display().to_string();
    let tls = &config.tls;
    if tls.is_on() {
        // No ca_file: librdkafka uses OpenSSL's default verify paths (Debian's ca-certificates).
        if !tls.ca_file.as_os_str().is_empty() {
            out.push(("ssl.ca.location", path(&tls.ca_file)));
        }
        if !tls.cert_file.as_os_str().is_empty() {
            out.push(("ssl.certificate.location", path(&tls.cert_file)));
            out.push(("ssl.key.location", path(&tls.key_file)));
        }
    }
    let sasl = &config.sasl;
    match sasl.mechanism() {
        None => {}
        Some(SaslMechanism::OauthBearer) => {
            out.push(("sasl.mechanisms", "OAUTHBEARER".into()));
            out.push(("sasl.oauthbearer.method", "oidc".into()));
            out.push((
                "sasl.oauthbearer.token.endpoint.url",
                sasl.oauth_token_endpoint.clone(),
            ));
            out.push(("sasl.oauthbearer.client.id", sasl.oauth_client_id.clone()));
            out.push((
                "sasl.oauthbearer.client.secret",
                sasl.oauth_client_secret.expose().to_owned(),
            ));
            if !sasl.oauth_scope.is_empty() {
                out.push(("sasl.oauthbearer.scope", sasl.oauth_scope.clone()));
            }
        }
        Some(m) => {
            out.push(("sasl.mechanisms", m.name().into()));
            out.push(("sasl.username", sasl.username.clone()));
            out.push(("sasl.password", sasl.password.expose().to_owned()));
        }
    }
    out
}

/// What a librdkafka error says went wrong, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// The broker answered the TCP connection, or nothing did.
    Network,
    /// The TLS handshake failed (certificate not trusted, client cert refused, not TLS).
    Tls,
    /// SASL credentials were rejected.
    Authentication,
}

fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Cause {
    let lower = reason.to_ascii_lowercase();
    if matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    ) || lower.contains("sasl authentication error")
        || lower.contains("authentication failed")
        // A broker that drops the connection mid-SASL instead of answering.
        || lower.contains("in state auth")
    {
        Cause::Authentication
    } else if code == Some(RDKafkaErrorCode::SSL)
        || lower.contains("ssl handshake failed")
        || lower.contains("certificate verify failed")
        || lower.contains("in state ssl_handshake")
        // TLS 1.3: the broker's verdict on our certificate arrives as an
        // alert on the first read, after the handshake seemed done.
        || lower.contains("ssl routines")
        || lower.contains("ssl alert")
    {
        Cause::Tls
    } else {
        Cause::Network
    }
}

/// The most specific problem seen, and its librdkafka text.
#[derive(Default)]
struct Seen {
    worst: Option<(Cause, String)>,
}

/// The admin client's context: quiet, classifying capture while starting, then
/// librdkafka's logs and errors as usual. Every line is scrubbed of the secrets.
pub(crate) struct Probe {
    starting: AtomicBool,
    seen: Mutex<Seen>,
    secrets: Vec<String>,
}

impl Probe {
    pub(super) fn new(config: &KafkaConfig) -> Self {
        let secrets = [&config.sasl.password, &config.sasl.oauth_client_secret]
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s: &Secret| s.expose().to_owned())
            .collect();
        Self {
            starting: AtomicBool::new(true),
            seen: Mutex::new(Seen::default()),
            secrets,
        }
    }

    /// Start-up is over: librdkafka's lines go to the log again.
    pub(super) fn started(&self) {
        self.starting.store(false, Ordering::Release);
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "[redacted]");
        }
        out
    }

    fn note(&self, code: Option<RDKafkaErrorCode>, reason: &str) {
        let cause = classify(code, reason);
        // "1/1 brokers are down" follows every failure; it says less than what came before.
        let generic = reason.contains("brokers are down");
        let mut seen = self.seen.lock().expect("probe lock");
        if seen
            .worst
            .as_ref()
            .is_none_or(|(c, _)| cause > *c || (cause == *c && !generic))
        {
            seen.worst = Some((cause, reason.to_owned()));
        }
    }

    /// The start-up error for brokers that never answered a describe in `timeout`.
    /// `answered`: a cluster id was read, so the network and credentials worked.
    pub(super) fn failure(
        &self,
        config: &KafkaConfig,
        timeout: Duration,
        answered: bool,
        last: String,
    ) -> StartupFailure {
        let worst = self.seen.lock().expect("probe lock").worst.clone();
        let brokers = config.brokers.clone();
        let protocol = protocol(config).to_ascii_uppercase();
        if answered {
            // A cluster id came back: connection, TLS and credentials worked.
            return StartupFailure::NoMetadata {
                brokers,
                timeout,
                detail: last,
            };
        }
        match worst {
            Some((Cause::Authentication, detail)) => StartupFailure::Authentication {
                brokers,
                mechanism: config.sasl.mechanism.to_ascii_uppercase(),
                username: config.sasl.username.clone(),
                detail,
            },
            Some((Cause::Tls, detail)) => {
                let lower = detail.to_ascii_lowercase();
                let (lead, hint) = if lower.contains("certificate verify failed")
                    || lower.contains("could not be verified")
                {
                    (
                        "certificate not trusted",
                        "kafka.tls.ca_file (or the system CA bundle) must hold the CA that signed the broker's certificate, and that certificate must name the host in kafka.brokers",
                    )
                } else if [
                    "certificate required",
                    "bad certificate",
                    "unknown ca",
                    "certificate unknown",
                    // Java brokers name what is wrong with it.
                    "certificate expired",
                    "certificate revoked",
                ]
                .iter()
                .any(|alert| lower.contains(alert))
                {
                    // The broker's alert about the certificate we sent (or did not).
                    (
                        "client certificate refused",
                        "the broker wants a client certificate it trusts: kafka.tls.cert_file and kafka.tls.key_file",
                    )
                } else {
                    (
                        "TLS handshake failed",
                        "is the broker port a TLS listener? check kafka.brokers and [kafka.tls]",
                    )
                };
                StartupFailure::Tls {
                    lead,
                    hint,
                    brokers,
                    detail,
                }
            }
            worst => StartupFailure::Unreachable {
                brokers,
                protocol,
                timeout,
                detail: worst.map(|(_, d)| d).unwrap_or(last),
            },
        }
    }
}

/// Why the Kafka source did not open; each names the cause in its first words.
#[derive(Debug, thiserror::Error)]
pub enum StartupFailure {
    #[error("authentication failed: the Kafka brokers ({brokers}) rejected SASL {mechanism} for user `{username}`; check kafka.sasl.username and the password [{detail}]")]
    Authentication {
        brokers: String,
        mechanism: String,
        username: String,
        detail: String,
    },
    #[error("{lead}: TLS handshake with the Kafka brokers ({brokers}) failed; {hint} [{detail}]")]
    Tls {
        lead: &'static str,
        hint: &'static str,
        brokers: String,
        detail: String,
    },
    #[error("no broker reachable: none of the Kafka brokers ({brokers}, {protocol}) answered within {timeout:?} [{detail}]")]
    Unreachable {
        brokers: String,
        protocol: String,
        timeout: Duration,
        detail: String,
    },
    #[error("the Kafka brokers ({brokers}) answered but did not describe the configured topics within {timeout:?} [{detail}]")]
    NoMetadata {
        brokers: String,
        timeout: Duration,
        detail: String,
    },
}

impl ClientContext for Probe {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let message = self.scrub(log_message);
        if (level as i32) <= RDKafkaLogLevel::Warning as i32 {
            self.note(None, &message);
        }
        if self.starting.load(Ordering::Acquire) {
            tracing::debug!(target: "librdkafka", fac, "{message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = self.scrub(reason);
        self.note(error.rdkafka_error_code(), &reason);
        if self.starting.load(Ordering::Acquire) {
            tracing::debug!(target: "librdkafka", error = %error, "{reason}");
        } else {
            tracing::error!(target: "librdkafka", error = %error, "{reason}");
        }
    }
}

impl ConsumerContext for Probe {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kafka_config::{KafkaSaslConfig, KafkaTlsConfig};

    fn config(tls: bool, mechanism: &str) -> KafkaConfig {
        KafkaConfig {
            tls: KafkaTlsConfig {
                enabled: Some(tls),
                ..Default::default()
            },
            sasl: KafkaSaslConfig {
                mechanism: mechanism.into(),
                username: "alice".into(),
                password: Secret::new("s3cret-pw"),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn get<'a>(s: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        s.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn protocol_follows_tls_and_sasl() {
        assert_eq!(protocol(&config(false, "")), "plaintext");
        assert_eq!(protocol(&config(true, "")), "ssl");
        assert_eq!(protocol(&config(false, "PLAIN")), "sasl_plaintext");
        assert_eq!(protocol(&config(true, "SCRAM-SHA-512")), "sasl_ssl");
        let s = settings(&config(true, "scram-sha-256"));
        assert_eq!(get(&s, "sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(get(&s, "sasl.password"), Some("s3cret-pw"));
        assert_eq!(get(&s, "ssl.ca.location"), None, "system CA bundle");
        let none = settings(&config(false, ""));
        assert_eq!(get(&none, "sasl.username"), None);
    }

    #[test]
    fn password_file_is_read_once_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut c = config(true, "PLAIN");
        c.sasl.password = Secret::default();
        c.sasl.password_file = file.clone();
        let resolved = resolve(&c).unwrap();
        assert_eq!(resolved.sasl.password.expose(), "from-file");
        std::fs::remove_file(&file).unwrap();
        let err = resolve(&c).unwrap_err().to_string();
        assert!(err.contains("kafka.sasl.password_file"), "{err}");
    }

    #[test]
    fn errors_are_classified_most_specific_first() {
        let p = Probe::new(&config(true, "SCRAM-SHA-512"));
        p.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused",
        );
        p.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let f = p
            .failure(
                &config(true, "SCRAM-SHA-512"),
                Duration::from_secs(1),
                false,
                "x".into(),
            )
            .to_string();
        assert!(f.starts_with("no broker reachable"), "{f}");
        assert!(
            f.contains("Connection refused"),
            "the specific error is kept: {f}"
        );
        let mtls = Probe::new(&config(true, ""));
        mtls.log(
            RDKafkaLogLevel::Error,
            "FAIL",
            "ssl://127.0.0.1:1/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116 (after 0ms in state APIVERSION_QUERY)",
        );
        let f = mtls.failure(&config(true, ""), Duration::from_secs(1), false, "x".into());
        assert!(
            f.to_string().starts_with("client certificate refused"),
            "{f}"
        );
        p.error(
            KafkaError::Global(RDKafkaErrorCode::SSL),
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
        );
        p.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let f = p.failure(
            &config(true, "SCRAM-SHA-512"),
            Duration::from_secs(1),
            false,
            "x".into(),
        );
        assert!(f.to_string().starts_with("certificate not trusted"), "{f}");
        p.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed with password s3cret-pw",
        );
        let f = p
            .failure(
                &config(true, "SCRAM-SHA-512"),
                Duration::from_secs(1),
                false,
                "x".into(),
            )
            .to_string();
        assert!(f.starts_with("authentication failed"), "{f}");
        assert!(!f.contains("s3cret-pw"), "scrubbed: {f}");
        let answered = p
            .failure(
                &config(true, "SCRAM-SHA-512"),
                Duration::from_secs(1),
                true,
                "topic list failed".into(),
            )
            .to_string();
        assert!(
            answered.contains("answered but did not describe"),
            "{answered}"
        );
        assert!(f.contains("alice"), "{f}");
    }
}
