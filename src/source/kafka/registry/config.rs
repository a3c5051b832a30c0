//! `[schema_registry]`: where the Confluent-compatible schema registry is and how to reach it.
//!
//! Parsed in every build (like `[kafka]`); the client that uses it is behind the
//! `kafka` feature. A topic whose `encoding` or `key_encoding` is `"avro"`,
//! `"protobuf"` or `"json-schema"` needs `url` set.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::source::kafka_config::Secret;
use crate::source::{invalid, InvalidSetting};

/// `[schema_registry]`; every key is documented in `config/kafka.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL of the Confluent REST API, e.g. `http://registry:8081` (Confluent)
    /// or `http://registry:8080/apis/ccompat/v7` (Apicurio). Empty: no registry.
    pub url: String,
    /// HTTP basic authentication (Confluent Cloud: the API key and secret).
    pub username: String,
    /// Best from the environment: `PUSHGATE__SCHEMA_REGISTRY__PASSWORD`.
    pub password: Secret,
    /// Instead of `username`/`password`: a bearer token (`Authorization: Bearer …`).
    pub bearer_token: Secret,
    /// Longest one request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How many times a request that found the registry unreachable (or answering
    /// 5xx) is retried, with doubling pauses from `retry_backoff`, before the record
    /// goes to the failure track.
    pub retries: u32,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Parsed schemas kept, by id (the least recently used one is dropped beyond this).
    pub max_cached_schemas: usize,
    /// TLS to the registry (`[schema_registry.tls]`), for an `https://` url.
    pub tls: RegistryTlsConfig,
}

/// `[schema_registry.tls]`: the same files as `[kafka.tls]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryTlsConfig {
    /// PEM CA certificate(s) that signed the registry's certificate; empty: the system's.
    pub ca_file: PathBuf,
    /// PEM client certificate, for a registry that requires mutual TLS.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (unencrypted).
    pub key_file: PathBuf,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password: Secret::default(),
            bearer_token: Secret::default(),
            request_timeout: Duration::from_secs(5),
            retries: 5,
            retry_backoff: Duration::from_millis(100),
            max_cached_schemas: 1000,
            tls: RegistryTlsConfig::default(),
        }
    }
}

impl SchemaRegistryConfig {
    pub fn is_set(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks what can be checked before connecting.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !self.is_set() {
            return Ok(());
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(invalid(
                "schema_registry.url",
                "must start with http:// or https://",
            ));
        }
        if !self.username.is_empty() && !self.bearer_token.is_empty() {
            return Err(invalid(
                "schema_registry.bearer_token",
                "cannot be set together with schema_registry.username",
            ));
        }
        if self.tls.cert_file.as_os_str().is_empty() != self.tls.key_file.as_os_str().is_empty() {
            return Err(invalid(
                "schema_registry.tls.cert_file",
                "needs schema_registry.tls.key_file (and the other way round)",
            ));
        }
        if self.max_cached_schemas == 0 {
            return Err(invalid(
                "schema_registry.max_cached_schemas",
                "must be at least 1",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid(
                "schema_registry.request_timeout",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}
