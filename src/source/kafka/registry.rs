//! The schema registry: its Confluent REST API (`GET /schemas/ids/{id}`), a bounded
//! cache of parsed schemas by id, and decoding a key or value in the registry's wire
//! format (magic byte 0, 4-byte big-endian schema id, then the payload) into JSON text.
//!
//! Each schema is fetched once per id (then served from the cache while it stays in it).
//! A registry that cannot be reached (or answers 5xx) is retried with doubling pauses
//! (`retries`, `retry_backoff`); then the record goes to the failure track. The live
//! consumer calls [`Registry::decode`] on its own thread: a fetch blocks it (once per new
//! schema id) on the runtime the source was opened on.

pub(crate) mod avro;
pub mod bench;
pub(crate) mod protobuf;
pub(crate) mod time;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use self::avro::AvroSchema;
use self::protobuf::ProtoSchema;
use crate::source::registry_config::SchemaRegistryConfig;
use crate::source::topics::Encoding;
use crate::telemetry;

/// How many levels of schema references are followed.
const MAX_REFERENCE_DEPTH: u32 = 8;

/// Why a key or value could not be decoded (labels of `pushgate_kafka_bad_records_total`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("schema id {0} is unknown to the registry")]
    Unknown(u32),
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
    #[error("cannot decode: {0}")]
    Undecodable(String),
}

impl SchemaError {
    pub fn label(&self) -> &'static str {
        match self {
            SchemaError::Unknown(_) => "unknown_schema",
            SchemaError::Unavailable(_) => "registry_unavailable",
            SchemaError::Undecodable(_) => "undecodable",
        }
    }
}

/// Why the registry client could not be made (bad TLS files).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema_registry.tls: cannot read {path}: {source}")]
    Pem {
        path: std::path::PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("schema_registry.tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "schema_registry: the username, password or bearer_token cannot be sent in an HTTP header"
    )]
    Header,
    #[error("schema_registry.url {url:?} is not a URL: {source}")]
    Url {
        url: String,
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
}

/// A parsed schema, whichever its type.
pub(crate) enum Parsed {
    Avro(Box<AvroSchema>),
    Protobuf(ProtoSchema),
    Json,
}

impl Parsed {
    fn kind(&self) -> &'static str {
        match self {
            Parsed::Avro(_) => "AVRO",
            Parsed::Protobuf(_) => "PROTOBUF",
            Parsed::Json => "JSON",
        }
    }
}

/// Least-recently-used schemas by id; eviction scans (it happens on a miss only).
struct Cache {
    cap: usize,
    tick: u64,
    map: HashMap<u32, (Arc<Parsed>, u64)>,
}

impl Cache {
    fn get(&mut self, id: u32) -> Option<Arc<Parsed>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&id).map(|(p, used)| {
            *used = tick;
            Arc::clone(p)
        })
    }

    fn insert(&mut self, id: u32, parsed: Arc<Parsed>) {
        if self.map.len() >= self.cap && !self.map.contains_key(&id) {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            {
                self.map.remove(&oldest);
            }
        }
        self.tick += 1;
        self.map.insert(id, (parsed, self.tick));
    }
}

type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The registry's answer for one schema (by id, or a subject's version).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaAnswer {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    name: String,
    subject: String,
    version: i64,
}

pub struct Registry {
    base: String,
    http: Http,
    /// The `Authorization` header, if any (basic or bearer), marked sensitive.
    auth: Option<HeaderValue>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    cache: Mutex<Cache>,
    runtime: tokio::runtime::Handle,
    /// Set once the registry has answered (anything): until then, topics read
    /// through it are not served.
    up: AtomicBool,
}

impl Registry {
    /// The client for `config` (TLS files read here); `runtime` runs its requests.
    pub fn new(
        config: &SchemaRegistryConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, RegistryError> {
        let base = config.url.trim_end_matches('/').to_owned();
        base.parse::<Uri>().map_err(|source| RegistryError::Url {
            url: base.clone(),
            source,
        })?;
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(config.request_timeout));
        connector.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(config)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new()).build(https);
        let auth = if !config.bearer_token.is_empty() {
            Some(format!("Bearer {}", config.bearer_token.expose()))
        } else if !config.username.is_empty() {
            let pair = format!("{}:{}", config.username, config.password.expose());
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
        } else {
            None
        };
        // A secret with bytes a header cannot carry is refused at start, not per request.
        let auth = auth
            .map(|a| HeaderValue::from_str(&a))
            .transpose()
            .map_err(|_| RegistryError::Header)?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Ok(Self {
            base,
            http,
            auth,
            timeout: config.request_timeout,
            retries: config.retries,
            backoff: config.retry_backoff,
            cache: Mutex::new(Cache {
                cap: config.max_cached_schemas.max(1),
                tick: 0,
                map: HashMap::new(),
            }),
            runtime,
            up: AtomicBool::new(false),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Asks the registry something cheap until it answers; logs while it does not.
    pub async fn wait_until_up(&self) {
        let mut pause = self.backoff.max(Duration::from_millis(50));
        let mut warned = false;
        loop {
            match self.get(&format!("{}/subjects", self.base)).await {
                Ok(_) => {
                    tracing::info!(url = %self.base, "schema registry reachable");
                    return;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(url = %self.base, error = %e, "schema registry unreachable; topics read through it are not served until it answers");
                        warned = true;
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Decodes `bytes` (wire format) to JSON text; fetches the schema on a cache miss,
    /// blocking this (non-async) thread.
    pub fn decode(&self, encoding: Encoding, bytes: &[u8]) -> Result<String, SchemaError> {
        let (id, payload) = wire_header(bytes)?;
        let parsed = self.schema(id)?;
        match (encoding, &*parsed) {
            (Encoding::Avro, Parsed::Avro(s)) => s.to_json(payload),
            (Encoding::Protobuf, Parsed::Protobuf(s)) => s.to_json(payload),
            (Encoding::JsonSchema, Parsed::Json) => std::str::from_utf8(payload)
                .map_err(|e| e.to_string())
                .and_then(|t| crate::record::compact_json(t).map_err(|e| e.to_string()))
                .map(String::from),
            (encoding, parsed) => Err(format!(
                "schema {id} is {}, the topic's encoding is {}",
                parsed.kind(),
                encoding.name()
            )),
        }
        .map_err(|e| SchemaError::Undecodable(format!("schema {id}: {e}")))
    }

    /// The parsed schema `id`, from the cache or the registry.
    fn schema(&self, id: u32) -> Result<Arc<Parsed>, SchemaError> {
        if let Some(p) = self.cache.lock().expect("schema cache").get(id) {
            return Ok(p);
        }
        let parsed = Arc::new(self.runtime.block_on(self.fetch(id))?);
        self.cache
            .lock()
            .expect("schema cache")
            .insert(id, Arc::clone(&parsed));
        Ok(parsed)
    }

    /// Puts a parsed schema in the cache (tests, and the decoding-cost measurement).
    pub(crate) fn insert(&self, id: u32, parsed: Parsed) {
        self.cache
            .lock()
            .expect("schema cache")
            .insert(id, Arc::new(parsed));
    }

    async fn fetch(&self, id: u32) -> Result<Parsed, SchemaError> {
        let answer = self
            .get(&format!("{}/schemas/ids/{id}", self.base))
            .await?
            .ok_or(SchemaError::Unknown(id))?;
        let answer: SchemaAnswer = serde_json::from_slice(&answer).map_err(|e| {
            SchemaError::Unavailable(format!("unexpected answer for schema {id}: {e}"))
        })?;
        let kind = answer.schema_type.as_deref().unwrap_or("AVRO").to_owned();
        let mut refs = Vec::new();
        self.references(&answer.references, 0, &mut refs).await?;
        let parsed = match kind.as_str() {
            "AVRO" => {
                let texts: Vec<String> = refs.into_iter().map(|(_, t)| t).collect();
                AvroSchema::parse(&answer.schema, &texts).map(|s| Parsed::Avro(Box::new(s)))
            }
            "PROTOBUF" => ProtoSchema::parse(&answer.schema, &refs).map(Parsed::Protobuf),
            "JSON" => Ok(Parsed::Json),
            other => Err(format!("unknown schema type {other}")),
        };
        telemetry::schema_fetched();
        tracing::info!(id, kind = %kind, "schema fetched from the registry");
        parsed.map_err(|e| SchemaError::Undecodable(format!("schema {id} cannot be parsed: {e}")))
    }

    /// The texts of `refs` and of theirs, dependencies first, as (import name, text).
    fn references<'a>(
        &'a self,
        refs: &'a [Reference],
        depth: u32,
        out: &'a mut Vec<(String, String)>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SchemaError>> + Send + 'a>>
    {
        Box::pin(async move {
            if refs.is_empty() {
                return Ok(());
            }
            if depth >= MAX_REFERENCE_DEPTH {
                return Err(SchemaError::Undecodable(
                    "schema references nest too deep".into(),
                ));
            }
            for r in refs {
                if out.iter().any(|(n, _)| *n == r.name) {
                    continue;
                }
                let url = format!(
                    "{}/subjects/{}/versions/{}",
                    self.base,
                    form_urlencoded::byte_serialize(r.subject.as_bytes()).collect::<String>(),
                    r.version
                );
                let body = self.get(&url).await?.ok_or_else(|| {
                    SchemaError::Undecodable(format!(
                        "referenced {} version {} not found",
                        r.subject, r.version
                    ))
                })?;
                let answer: SchemaAnswer = serde_json::from_slice(&body)
                    .map_err(|e| SchemaError::Unavailable(format!("unexpected answer: {e}")))?;
                self.references(&answer.references, depth + 1, out).await?;
                out.push((r.name.clone(), answer.schema));
            }
            Ok(())
        })
    }

    /// One GET: the status and the whole body.
    async fn request(&self, url: &str) -> Result<(StatusCode, Bytes), String> {
        let mut req = hyper::Request::get(url).header(
            ACCEPT,
            "application/vnd.schemaregistry.v1+json, application/json",
        );
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = self.http.request(req).await.map_err(|e| {
            // The connector's cause (refused, TLS, DNS) says more than "client error".
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// GET with retries: the body, `None` for 404, an error when unreachable.
    async fn get(&self, url: &str) -> Result<Option<Vec<u8>>, SchemaError> {
        let mut pause = self.backoff;
        let mut attempt = 0;
        loop {
            let failure = match tokio::time::timeout(self.timeout, self.request(url)).await {
                Err(_) => format!("no answer within {:?}", self.timeout),
                Ok(Err(e)) => e,
                Ok(Ok((status, body))) => {
                    if status.is_success() {
                        self.up.store(true, Ordering::Release);
                        return Ok(Some(body.to_vec()));
                    } else if status == StatusCode::NOT_FOUND {
                        self.up.store(true, Ordering::Release);
                        return Ok(None);
                    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        format!("HTTP {status}")
                    } else {
                        // 401, 403, …: retrying will not help.
                        return Err(SchemaError::Unavailable(format!(
                            "HTTP {status} from {url}"
                        )));
                    }
                }
            };
            if attempt >= self.retries {
                telemetry::schema_registry_failure();
                return Err(SchemaError::Unavailable(failure));
            }
            attempt += 1;
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
}

/// Splits the wire header off: magic byte 0, then the schema id (4 bytes, big-endian).
pub(crate) fn wire_header(bytes: &[u8]) -> Result<(u32, &[u8]), SchemaError> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [] => Err(SchemaError::Undecodable("empty".into())),
        [m, ..] if *m != 0 => Err(SchemaError::Undecodable(format!(
            "magic byte {m}, not 0: not in the schema registry's wire format"
        ))),
        _ => Err(SchemaError::Undecodable(
            "shorter than the wire header".into(),
        )),
    }
}

/// rustls with the ring provider (as the listener), trusting `ca_file` or the system's CAs.
fn tls_config(config: &SchemaRegistryConfig) -> Result<rustls::ClientConfig, RegistryError> {
    let tls = &config.tls;
    let pem = |path: &std::path::Path| {
        let err = |source| RegistryError::Pem {
            path: path.to_owned(),
            source,
        };
        CertificateDer::pem_file_iter(path)
            .map_err(err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)
    };
    let mut roots = rustls::RootCertStore::empty();
    if tls.ca_file.as_os_str().is_empty() {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    } else {
        for cert in pem(&tls.ca_file)? {
            roots.add(cert)?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    if tls.cert_file.as_os_str().is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let certs = pem(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|source| RegistryError::Pem {
        path: tls.key_file.clone(),
        source,
    })?;
    Ok(builder.with_client_auth_cert(certs, key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_headers() {
        assert_eq!(wire_header(&[0, 0, 0, 1, 2, 9]).unwrap(), (258, &[9u8][..]));
        assert_eq!(wire_header(&[0, 0, 0, 0, 7]).unwrap().1, &[] as &[u8]);
        for bad in [&[][..], &[1, 0, 0, 0, 1], &[0, 0, 1], b"{\"a\":1}"] {
            assert_eq!(
                wire_header(bad).unwrap_err().label(),
                "undecodable",
                "{bad:?}"
            );
        }
    }

    /// A registry at a closed port, its cache filled by hand: decoding needs no request.
    fn offline(rt: &tokio::runtime::Runtime) -> Registry {
        let config = SchemaRegistryConfig {
            url: "http://127.0.0.1:9".into(),
            retries: 0,
            ..SchemaRegistryConfig::default()
        };
        Registry::new(&config, rt.handle().clone()).unwrap()
    }

    #[test]
    fn values_decode_by_their_schema_id_and_encoding() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let r = offline(&rt);
        let avro = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
        r.insert(
            7,
            Parsed::Avro(Box::new(AvroSchema::parse(avro, &[]).unwrap())),
        );
        r.insert(8, Parsed::Json);
        let proto = "syntax = \"proto3\";\nmessage M { int32 a = 1; }\n";
        r.insert(9, Parsed::Protobuf(ProtoSchema::parse(proto, &[]).unwrap()));
        // Avro long 3 is zigzag 6.
        assert_eq!(
            r.decode(Encoding::Avro, &[0, 0, 0, 0, 7, 6]).unwrap(),
            r#"{"a":3}"#
        );
        assert_eq!(
            r.decode(Encoding::JsonSchema, b"\0\0\0\0\x08{ \"b\" : [1] }")
                .unwrap(),
            r#"{"b":[1]}"#
        );
        // Message index [0] as the single byte 0, then field 1 = 5.
        assert_eq!(
            r.decode(Encoding::Protobuf, &[0, 0, 0, 0, 9, 0, 8, 5])
                .unwrap(),
            r#"{"a":5}"#
        );
        let wrong = r
            .decode(Encoding::Protobuf, &[0, 0, 0, 0, 7, 6])
            .unwrap_err();
        assert_eq!(wrong.label(), "undecodable", "{wrong}");
        assert!(wrong.to_string().contains("AVRO"), "{wrong}");
        let bad = r.decode(Encoding::Avro, &[0, 0, 0, 0, 7]).unwrap_err();
        assert_eq!(bad.label(), "undecodable");
        // Not cached, and nothing listens: unavailable (no retries configured), not unknown.
        let down = r.decode(Encoding::Avro, &[0, 0, 0, 0, 10, 6]).unwrap_err();
        assert_eq!(down.label(), "registry_unavailable", "{down}");
        assert!(!r.is_up());
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// api/conformance/registry/type-mapping.json: bytes made by fastavro and Google's
    /// protobuf runtime, and the JSON the README's table says they become.
    #[test]
    fn the_type_mapping_vector() {
        let vector: serde_json::Value = serde_json::from_str(include_str!(
            "../../../api/conformance/registry/type-mapping.json"
        ))
        .unwrap();
        let avro = AvroSchema::parse(&vector["avro"]["schema"].to_string(), &[]).unwrap();
        for case in vector["avro"]["cases"].as_array().unwrap() {
            let json = avro
                .to_json(&hex(case["datum_hex"].as_str().unwrap()))
                .unwrap();
            let got: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(got, case["json"], "avro: {json}");
        }
        let proto =
            ProtoSchema::parse(vector["protobuf"]["schema"].as_str().unwrap(), &[]).unwrap();
        for case in vector["protobuf"]["cases"].as_array().unwrap() {
            // The message-index list as Confluent writes it: zigzag count, zigzag indexes.
            let indexes = case["message_indexes"].as_array().unwrap();
            let mut bytes = vec![(indexes.len() * 2) as u8];
            bytes.extend(indexes.iter().map(|i| (i.as_u64().unwrap() * 2) as u8));
            bytes.extend(hex(case["message_hex"].as_str().unwrap()));
            let json = proto.to_json(&bytes).unwrap();
            let got: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(got, case["json"], "protobuf: {json}");
        }
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_recently_used() {
        let mut c = Cache {
            cap: 2,
            tick: 0,
            map: HashMap::new(),
        };
        c.insert(1, Arc::new(Parsed::Json));
        c.insert(2, Arc::new(Parsed::Json));
        assert!(c.get(1).is_some());
        c.insert(3, Arc::new(Parsed::Json));
        assert_eq!(c.map.len(), 2);
        assert!(c.get(2).is_none(), "the least recently used went");
        assert!(c.get(1).is_some() && c.get(3).is_some());
    }
}
