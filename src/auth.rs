//! Authentication and authorization: JWT verification, topic/key grants, origin checks, client IPs, publish rates.
//!
//! Keys come from the config (HMAC secrets; RSA, EC and Ed25519 public keys in
//! PEM) and from an optional JWKS file that is re-read when it changes. The
//! algorithms a key accepts are fixed by its type, never taken from the token,
//! so `alg: none` and HS/RS confusion cannot verify. `exp` is required; `nbf`
//! is checked when present; `iss` and `aud`, when configured, are required and
//! checked. A token's `jku`, `jwk` and
//! `x5u` headers are ignored: no key is ever fetched or taken from a token.
//!
//! Grants live in one claim (`auth.claim`, default `pushgate`):
//! `{"subscribe": ["prices", "news:eu.*"], "publish": ["posts:user-1"]}`.
//! A grant is `TOPIC` or `TOPIC:KEY`; either part may end in `*` (a prefix),
//! and `*` alone matches everything. A subscribe grant may also be an object,
//! `{"topic": "orders", "filter": {"customer_id": "42"}}` (`topic` as in the
//! string form): the server ANDs its filter with whatever the client asks
//! for. A grant object that is malformed grants nothing (fail closed).

use std::collections::HashMap;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use dashmap::DashMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{AuthConfig, KeyKind};

mod revocations;
use crate::hub::Filter;
use crate::shaping::{FilterLimits, KeyTest, ValueFilter};
use crate::token_subs::TokenSub;
pub use revocations::{Entry as Revocation, Revocations, Target};

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("`auth.keys[{index}]`: {problem}")]
    Key { index: usize, problem: &'static str },
    #[error("`auth.keys[{index}]`: cannot read {path}: {source}")]
    KeyFile {
        index: usize,
        path: String,
        source: std::io::Error,
    },
    #[error("`auth.keys[{index}]`: {source}")]
    KeyPem {
        index: usize,
        source: jsonwebtoken::errors::Error,
    },
    #[error("`auth.jwks_file` {path}: {source}")]
    JwksRead {
        path: String,
        source: std::io::Error,
    },
    #[error("`auth.jwks_file` {path}: {source}")]
    JwksParse {
        path: String,
        source: serde_json::Error,
    },
    #[error("`auth.jwks_file` {path}: {source}")]
    JwksKey {
        path: String,
        source: jsonwebtoken::errors::Error,
    },
}

/// Why a request was refused. Clients only ever see one generic message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Valid, but its subject or its `jti` is revoked (`POST /admin/revocations`).
    #[error("token revoked")]
    Revoked,
}

/// Who is asking, and what they may do.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: Option<String>,
    /// The token's `jti`, if it has one (a revocation may name it).
    pub jti: Option<String>,
    /// Unix seconds; `None` for anonymous access.
    pub expires_at: Option<u64>,
    pub subscribe: Grants,
    pub publish: Grants,
    /// The claim's `subscribe_on_connect` entries (see `crate::token_subs`).
    pub on_connect: Vec<TokenSub>,
}

impl Identity {
    fn anonymous(subscribe: bool, publish: bool) -> Self {
        Self {
            subject: None,
            jti: None,
            expires_at: None,
            subscribe: if subscribe {
                Grants::everything()
            } else {
                Grants::default()
            },
            publish: if publish {
                Grants::everything()
            } else {
                Grants::default()
            },
            on_connect: Vec::new(),
        }
    }

    /// Time left before the token expires (zero if it already has).
    pub fn time_left(&self) -> Option<Duration> {
        self.expires_at
            .map(|exp| Duration::from_secs(exp.saturating_sub(unix_now())))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Grants(Vec<Grant>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some("") => Pattern::Any,
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(text.to_owned()),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => e == value,
            Pattern::Prefix(p) => value.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug, Clone)]
struct Grant {
    topic: Pattern,
    key: Pattern,
    /// Records of this grant must also match this (a grant object's `filter`).
    filter: Option<Arc<ValueFilter>>,
}

fn grant_of(item: &str, filter: Option<Arc<ValueFilter>>) -> Grant {
    match item.split_once(':') {
        Some((topic, key)) => Grant {
            topic: Pattern::parse(topic),
            key: Pattern::parse(key),
            filter,
        },
        None => Grant {
            topic: Pattern::parse(item),
            key: Pattern::Any,
            filter,
        },
    }
}

impl Grants {
    pub fn everything() -> Self {
        Self(vec![Grant {
            topic: Pattern::Any,
            key: Pattern::Any,
            filter: None,
        }])
    }

    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        Self(items.into_iter().map(|item| grant_of(item, None)).collect())
    }

    /// Subscribe grants from a claim list: strings, and objects
    /// `{"topic": "…", "filter": {…}}`. An object with other members, a
    /// topic that is not a string, or a filter that does not compile within
    /// `limits` is dropped, so a mistake grants less, never more.
    pub fn parse_subscribe(items: &[Value], limits: &FilterLimits) -> Self {
        let mut grants = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(s) => grants.push(grant_of(s, None)),
                Value::Object(m) => {
                    let topic = m.get("topic").and_then(Value::as_str);
                    let known = m.keys().all(|k| k == "topic" || k == "filter");
                    let filter = match m.get("filter") {
                        None => Ok(None),
                        Some(f) => ValueFilter::compile(f, limits).map(|f| Some(Arc::new(f))),
                    };
                    match (topic, known, filter) {
                        (Some(topic), true, Ok(filter)) => grants.push(grant_of(topic, filter)),
                        (_, _, Err(e)) => {
                            tracing::warn!(error = %e, "a token's grant filter does not compile; the grant is ignored")
                        }
                        _ => tracing::warn!("a token's grant object is malformed; it is ignored"),
                    }
                }
                _ => {}
            }
        }
        Self(grants)
    }

    /// The filter the token enforces on `topic`: `None` when a grant without
    /// a filter covers every key; otherwise the OR, over the grants of the
    /// topic, of (the grant's keys AND its filter). The caller ANDs it with
    /// the client's own filter, so a client can only narrow it.
    pub fn enforced(&self, topic: &str) -> Option<ValueFilter> {
        let grants: Vec<&Grant> = self.0.iter().filter(|g| g.topic.matches(topic)).collect();
        if grants.iter().all(|g| g.filter.is_none())
            || grants
                .iter()
                .any(|g| g.filter.is_none() && g.key == Pattern::Any)
        {
            return None;
        }
        let parts: Vec<ValueFilter> = grants
            .iter()
            .map(|g| {
                let key = ValueFilter::key(match &g.key {
                    Pattern::Any => KeyTest::Any,
                    Pattern::Exact(k) => KeyTest::Exact(k.as_str().into()),
                    Pattern::Prefix(p) => KeyTest::Prefix(p.as_str().into()),
                });
                match &g.filter {
                    Some(f) => key.and(f),
                    None => key,
                }
            })
            .collect();
        Some(ValueFilter::any(&parts))
    }

    fn for_topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Pattern> + 'a {
        self.0
            .iter()
            .filter(move |g| g.topic.matches(topic))
            .map(|g| &g.key)
    }

    /// May a subscription with `filter` on `topic` receive every record it could match?
    pub fn allows_filter(&self, topic: &str, filter: &Filter) -> bool {
        let mut keys = self.for_topic(topic).peekable();
        if keys.peek().is_none() {
            return false;
        }
        let patterns: Vec<&Pattern> = keys.collect();
        let any = patterns.iter().any(|p| **p == Pattern::Any);
        if filter.is_all() {
            return any;
        }
        let keys_ok = filter
            .keys
            .as_ref()
            .is_none_or(|keys| keys.iter().all(|k| patterns.iter().any(|p| p.matches(k))));
        let prefix_ok = filter.prefix.as_deref().is_none_or(|prefix| {
            patterns.iter().any(|p| match p {
                Pattern::Any => true,
                Pattern::Prefix(q) => prefix.starts_with(q.as_str()),
                Pattern::Exact(_) => false,
            })
        });
        keys_ok && prefix_ok
    }

    /// May a record with `key` be published to `topic`? (A null key needs a whole-topic grant.)
    pub fn allows_key(&self, topic: &str, key: Option<&str>) -> bool {
        self.for_topic(topic).any(|p| match key {
            Some(k) => p.matches(k),
            None => *p == Pattern::Any,
        })
    }
}

struct Key {
    kid: Option<String>,
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct KeySet {
    configured: Vec<Arc<Key>>,
    from_jwks: Vec<Arc<Key>>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    exp: u64,
    #[serde(flatten)]
    rest: HashMap<String, Value>,
}

pub struct Authenticator {
    config: AuthConfig,
    /// Bounds for grant filters, the same as for clients' filters.
    filter_limits: FilterLimits,
    keys: RwLock<Arc<KeySet>>,
    validation: Validation,
    jwks_seen: RwLock<Option<SystemTime>>,
    /// Subjects and token ids refused whatever their signature (the control topic).
    pub revocations: Revocations,
}

impl Authenticator {
    /// Loads every configured key (and the JWKS file); fails naming the bad one.
    pub fn new(config: &AuthConfig, filter_limits: FilterLimits) -> Result<Self, AuthSetupError> {
        let mut configured = Vec::new();
        for (index, key) in config.keys.iter().enumerate() {
            configured.push(Arc::new(load_key(index, key)?));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience is required, not merely checked when
        // present: otherwise a token without the claim skips the check.
        let mut required = vec!["exp"];
        if config.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&config.issuer);
            required.push("iss");
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&config.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let auth = Self {
            config: config.clone(),
            filter_limits,
            keys: RwLock::new(Arc::new(KeySet {
                configured,
                from_jwks: Vec::new(),
            })),
            validation,
            jwks_seen: RwLock::new(None),
            revocations: Revocations::default(),
        };
        if let Some(path) = auth.jwks_path() {
            let keys = read_jwks(&path)?;
            auth.set_jwks(keys, modified(&path));
        }
        Ok(auth)
    }

    fn jwks_path(&self) -> Option<PathBuf> {
        (!self.config.jwks_file.as_os_str().is_empty()).then(|| self.config.jwks_file.clone())
    }

    fn set_jwks(&self, keys: Vec<Arc<Key>>, seen: Option<SystemTime>) {
        let mut guard = self.keys.write().expect("keys lock");
        *guard = Arc::new(KeySet {
            configured: guard.configured.clone(),
            from_jwks: keys,
        });
        *self.jwks_seen.write().expect("jwks lock") = seen;
    }

    /// Re-reads the JWKS file if it changed since last time. A broken file keeps the old keys.
    pub fn reload_jwks_if_changed(&self) {
        let Some(path) = self.jwks_path() else { return };
        let now = modified(&path);
        if now == *self.jwks_seen.read().expect("jwks lock") {
            return;
        }
        match read_jwks(&path) {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), path = %path.display(), "JWKS reloaded");
                self.set_jwks(keys, now);
            }
            Err(e) => tracing::warn!(error = %e, "JWKS reload failed; keeping the previous keys"),
        }
    }

    /// Resolves the caller: a verified token, anonymous access where allowed, or an error.
    /// A token that is present but invalid is refused even when anonymous access is on.
    pub fn identify(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match token {
            Some(token) => self.verify(token),
            None if self.config.anonymous_subscribe || self.config.anonymous_publish => {
                Ok(Identity::anonymous(
                    self.config.anonymous_subscribe,
                    self.config.anonymous_publish,
                ))
            }
            None => Err(AuthError::Missing),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > 16 * 1024 {
            return Err(AuthError::Invalid("token too long".into()));
        }
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let keys = Arc::clone(&self.keys.read().expect("keys lock"));
        let candidates = keys
            .configured
            .iter()
            .chain(keys.from_jwks.iter())
            .filter(|k| match &header.kid {
                Some(kid) => k.kid.as_deref() == Some(kid.as_str()),
                None => true,
            })
            .filter(|k| k.algorithms.contains(&header.alg));
        let mut last = AuthError::Invalid("no key accepts this token".into());
        for key in candidates {
            let mut validation = self.validation.clone();
            // The key decides the algorithms; the token's header only picks among them.
            validation.algorithms = key.algorithms.clone();
            match decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if self
                        .revocations
                        .refuses(claims.sub.as_deref(), claims.jti.as_deref())
                    {
                        return Err(AuthError::Revoked);
                    }
                    return Ok(self.identity_from(claims));
                }
                Err(e) => last = AuthError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }

    fn identity_from(&self, claims: Claims) -> Identity {
        let grants = claims.rest.get(&self.config.claim);
        let list = |field: &str| -> Grants {
            let items = grants
                .and_then(|g| g.get(field))
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
                .unwrap_or_default();
            Grants::parse(items)
        };
        let subscribe = grants
            .and_then(|g| g.get("subscribe"))
            .and_then(Value::as_array)
            .map(|items| Grants::parse_subscribe(items, &self.filter_limits))
            .unwrap_or_default();
        Identity {
            on_connect: crate::token_subs::parse(grants, claims.sub.as_deref()),
            subject: claims.sub,
            jti: claims.jti,
            expires_at: Some(claims.exp),
            subscribe,
            publish: list("publish"),
        }
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn algorithms_for(kind: KeyKind) -> Vec<Algorithm> {
    use Algorithm::*;
    match kind {
        KeyKind::Hmac => vec![HS256, HS384, HS512],
        KeyKind::Rsa => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        KeyKind::Ec => vec![ES256, ES384],
        KeyKind::Ed25519 => vec![EdDSA],
    }
}

fn load_key(index: usize, key: &crate::config::KeyConfig) -> Result<Key, AuthSetupError> {
    let pem = || -> Result<Vec<u8>, AuthSetupError> {
        if key.pem_file.as_os_str().is_empty() {
            return Err(AuthSetupError::Key {
                index,
                problem: "needs `pem_file`",
            });
        }
        std::fs::read(&key.pem_file).map_err(|source| AuthSetupError::KeyFile {
            index,
            path: key.pem_file.display().to_string(),
            source,
        })
    };
    let bad_pem = |source| AuthSetupError::KeyPem { index, source };
    let decoding = match key.kind {
        KeyKind::Hmac => {
            if key.secret.len() < 32 {
                return Err(AuthSetupError::Key {
                    index,
                    problem: "`secret` must be at least 32 bytes",
                });
            }
            DecodingKey::from_secret(key.secret.as_bytes())
        }
        KeyKind::Rsa => DecodingKey::from_rsa_pem(&pem()?).map_err(bad_pem)?,
        KeyKind::Ec => DecodingKey::from_ec_pem(&pem()?).map_err(bad_pem)?,
        KeyKind::Ed25519 => DecodingKey::from_ed_pem(&pem()?).map_err(bad_pem)?,
    };
    Ok(Key {
        kid: (!key.kid.is_empty()).then(|| key.kid.clone()),
        decoding,
        algorithms: algorithms_for(key.kind),
    })
}

fn read_jwks(path: &PathBuf) -> Result<Vec<Arc<Key>>, AuthSetupError> {
    let shown = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::JwksRead {
        path: shown(),
        source,
    })?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|source| AuthSetupError::JwksParse {
        path: shown(),
        source,
    })?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithms = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => algorithms_for(KeyKind::Rsa),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(_) => algorithms_for(KeyKind::Ed25519),
            AlgorithmParameters::OctetKey(_) => algorithms_for(KeyKind::Hmac),
            _ => continue,
        };
        let decoding = DecodingKey::from_jwk(jwk).map_err(|source| AuthSetupError::JwksKey {
            path: shown(),
            source,
        })?;
        keys.push(Arc::new(Key {
            kid: jwk.common.key_id.clone(),
            decoding,
            algorithms,
        }));
    }
    Ok(keys)
}

/// Where a request's token came from. A cookie is sent by the browser on its
/// own, even on requests another site's page makes, so it needs the origin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// Finds the token: `Authorization: Bearer`, then the `access_token` query
/// parameter, then the configured cookie.
pub fn token_from<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    cookie: &str,
) -> Option<String> {
    find_token(headers, query, cookie).map(|(token, _)| token)
}

/// Like [`token_from`], and says where the token was found.
pub fn find_token(
    headers: &HeaderMap,
    query: Option<&str>,
    cookie: &str,
) -> Option<(String, TokenSource)> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        if let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            return Some((token.trim().to_owned(), TokenSource::Header));
        }
    }
    if let Some(query) = query {
        if let Some((_, v)) =
            form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "access_token")
        {
            return Some((v.into_owned(), TokenSource::Query));
        }
    }
    if !cookie.is_empty() {
        for value in headers.get_all(axum::http::header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for pair in text.split(';') {
                if let Some((name, v)) = pair.trim().split_once('=') {
                    if name == cookie {
                        return Some((v.to_owned(), TokenSource::Cookie));
                    }
                }
            }
        }
    }
    None
}

/// Cross-Site WebSocket Hijacking guard: is this handshake's `Origin` allowed?
/// No `Origin` (not a browser) is allowed; an empty list means same origin only.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    origin_in(origin, headers, allowed)
}

/// Cross-site request forgery guard for requests authenticated by a cookie:
/// the request's origin (`Origin`, else the origin of `Referer`) must be
/// allowed by the same rule as [`origin_allowed`]. Unlike a WebSocket
/// handshake, a request with neither header is refused: the cookie alone
/// proves nothing about which page sent it.
pub fn request_origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        return origin
            .to_str()
            .is_ok_and(|origin| origin_in(origin, headers, allowed));
    }
    headers
        .get(axum::http::header::REFERER)
        .and_then(|r| r.to_str().ok())
        .and_then(referer_origin)
        .is_some_and(|origin| origin_in(origin, headers, allowed))
}

/// `scheme://authority` of a `Referer` URL; `None` when it is not an absolute
/// URL or carries user info (never sent by browsers; not trusted).
fn referer_origin(referer: &str) -> Option<&str> {
    let (scheme, rest) = referer.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(&referer[..scheme.len() + 3 + authority_len])
}

/// Is `origin` in `allowed` (or, with an empty list, the request's own `Host`)?
fn origin_in(origin: &str, headers: &HeaderMap, allowed: &[String]) -> bool {
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    if !allowed.is_empty() {
        return false;
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// `limits.connect_rate`: one token bucket for the node's handshakes.
pub struct ConnectLimiter {
    rate: f64,
    burst: f64,
    bucket: std::sync::Mutex<(f64, std::time::Instant)>,
}

impl ConnectLimiter {
    /// `rate` 0: no limit.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            bucket: std::sync::Mutex::new((burst, std::time::Instant::now())),
        }
    }

    /// Takes a token for one handshake; false when the bucket is empty.
    pub fn allow(&self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut bucket = self.bucket.lock().expect("connect bucket lock");
        let now = std::time::Instant::now();
        let (tokens, at) = *bucket;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            false
        }
    }
}

/// Per-caller token buckets for the publish rate limit.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: DashMap<String, (f64, Instant)>,
}

/// Buckets kept before idle full ones are swept.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: DashMap::new(),
        }
    }

    /// Takes `cost` tokens from `caller`'s bucket; false when it has too few.
    pub fn allow(&self, caller: &str, cost: f64) -> bool {
        if self.buckets.len() > MAX_BUCKETS {
            let now = Instant::now();
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let now = Instant::now();
        let mut entry = self
            .buckets
            .entry(caller.to_owned())
            .or_insert((self.burst, now));
        let (tokens, at) = entry.value_mut();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= cost {
            *tokens -= cost;
            true
        } else {
            false
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(keys: Option<&[&str]>, prefix: Option<&str>) -> Filter {
        Filter::new(
            keys.map(|k| {
                k.iter()
                    .map(|s| Arc::from(*s))
                    .collect::<crate::hub::KeySet>()
            }),
            prefix.map(Into::into),
        )
    }

    #[test]
    fn grants_cover_topics_keys_and_prefixes() {
        let g = Grants::parse(["prices", "news:eu.*", "chat.*", "posts:user-1"]);
        assert!(g.allows_filter("prices", &filter(None, None)));
        assert!(g.allows_filter("prices", &filter(Some(&["AAPL"]), None)));
        assert!(
            !g.allows_filter("news", &filter(None, None)),
            "only eu.* keys"
        );
        assert!(g.allows_filter("news", &filter(Some(&["eu.fr"]), None)));
        assert!(!g.allows_filter("news", &filter(Some(&["eu.fr", "us.ny"]), None)));
        assert!(g.allows_filter("news", &filter(None, Some("eu.de"))));
        assert!(!g.allows_filter("news", &filter(None, Some("e"))));
        assert!(g.allows_filter("chat.room1", &filter(None, None)));
        assert!(!g.allows_filter("other", &filter(None, None)));
        assert!(g.allows_key("posts", Some("user-1")));
        assert!(!g.allows_key("posts", Some("user-2")));
        assert!(!g.allows_key("posts", None));
        assert!(g.allows_key("prices", None));
        assert!(Grants::parse(["*"]).allows_key("x", None));
        assert!(!Grants::default().allows_key("x", Some("k")));
    }

    #[test]
    fn origins() {
        let mut h = HeaderMap::new();
        h.insert("host", "gw.example:8080".parse().unwrap());
        assert!(origin_allowed(&h, &[]), "no Origin: not a browser");
        h.insert("origin", "https://gw.example:8080".parse().unwrap());
        assert!(origin_allowed(&h, &[]));
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert!(!origin_allowed(&h, &[]));
        assert!(origin_allowed(&h, &["https://evil.example".into()]));
        assert!(origin_allowed(&h, &["*".into()]));
    }

    #[test]
    fn cookie_request_origins() {
        fn allowed_same(pairs: &[(&'static str, &str)], allowed: &[String]) -> bool {
            let mut h = HeaderMap::new();
            h.insert("host", "gw.example:8080".parse().unwrap());
            for (name, value) in pairs {
                h.insert(*name, value.parse().unwrap());
            }
            request_origin_allowed(&h, allowed)
        }
        assert!(!allowed_same(&[], &[]), "neither header: refused");
        assert!(allowed_same(&[("origin", "https://gw.example:8080")], &[]));
        assert!(!allowed_same(&[("origin", "https://evil.example")], &[]));
        assert!(!allowed_same(&[("origin", "null")], &[]));
        // Origin wins over Referer.
        assert!(!allowed_same(
            &[
                ("origin", "https://evil.example"),
                ("referer", "https://gw.example:8080/app")
            ],
            &[]
        ));
        assert!(allowed_same(
            &[("referer", "https://gw.example:8080/app?x=1#y")],
            &[]
        ));
        assert!(allowed_same(&[("referer", "https://gw.example:8080")], &[]));
        assert!(!allowed_same(
            &[("referer", "https://evil.example/gw.example:8080")],
            &[]
        ));
        assert!(!allowed_same(
            &[("referer", "https://gw.example:8080@evil.example/")],
            &[]
        ));
        assert!(!allowed_same(&[("referer", "/relative/path")], &[]));
        assert!(!allowed_same(&[("referer", "")], &[]));
        let list = ["https://app.example".to_owned()];
        assert!(allowed_same(
            &[("referer", "https://app.example/page")],
            &list
        ));
        assert!(!allowed_same(
            &[("referer", "https://gw.example:8080/page")],
            &list
        ));
        assert!(allowed_same(&[("origin", "https://APP.example")], &list));
    }

    #[test]
    fn token_source_is_reported() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; pg=c".parse().unwrap());
        assert_eq!(
            find_token(&h, None, "pg"),
            Some(("c".into(), TokenSource::Cookie))
        );
        assert_eq!(
            find_token(&h, Some("access_token=q"), "pg"),
            Some(("q".into(), TokenSource::Query))
        );
        h.insert("authorization", "Bearer b".parse().unwrap());
        assert_eq!(
            find_token(&h, Some("access_token=q"), "pg"),
            Some(("b".into(), TokenSource::Header))
        );
        assert_eq!(find_token(&HeaderMap::new(), None, "pg"), None);
    }

    #[test]
    fn rate_limiter_refills() {
        // 10 tokens/s: the empty bucket stays empty for the 100 ms a loaded
        // CI machine may take between two calls (at 1000/s, 1 ms refilled it).
        let r = RateLimiter::new(10.0, 5.0);
        assert!(r.allow("a", 5.0));
        assert!(!r.allow("a", 1.0));
        assert!(r.allow("b", 1.0), "buckets are per caller");
        std::thread::sleep(Duration::from_millis(150));
        assert!(r.allow("a", 1.0));
    }
}
