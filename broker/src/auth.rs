//! Authentication: users file (argon2 hashes) and JWT bearer tokens.
//!
//! Credentials are looked for, in order: a CONNECT `Authorization: Bearer …`
//! header, a token on the WebSocket URL (`?access_token=…`), a JWT in
//! `passcode` (what stomp.js `connectHeaders` can carry), then
//! `login`/`passcode` against the users file. Anonymous access is allowed
//! only when configured — or, when no authentication is configured at all,
//! for loopback peers (development).
//!
//! A failure is reported to the client only as `authentication failed`;
//! which part was wrong goes to the log. Failures are rate-limited per peer
//! address.
//!
//! Password checks (argon2, ~19 MiB and ~15 ms each) are bounded three ways:
//! at most `max_concurrent_hashes` run at once (a FIFO semaphore); an
//! address has at most as many checks running or queued for it as it has
//! failures left in its budget (`max_failures_per_address`): attempts are
//! counted *before* hashing, so the budget is never overshot, one address
//! holds at most that many places in the queue in front of others, the rest
//! wait or are refused without a hash, and a clean address (a Spring relay
//! reconnecting its sessions) is checked in parallel; and an unknown user
//! is checked against a dummy hash with the same parameters, so the time
//! taken does not tell which user names exist.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::{
        atomic::{AtomicI64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use dashmap::DashMap;
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore};

use crate::metrics::Metrics;

/// Authentication settings (`[auth]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Allow clients without credentials. Unset: allowed for loopback peers
    /// only, and only while no users file and no JWT key is configured.
    pub allow_anonymous: Option<bool>,
    /// TOML users file: `[[user]] name = "…" password_hash = "$argon2id$…"`
    /// with optional `claims = { … }` used by ACL `{claim:NAME}` rules.
    pub users_file: Option<std::path::PathBuf>,
    /// JWT bearer tokens.
    pub jwt: JwtConfig,
    /// Failed CONNECTs allowed per peer address within `failure_window_s`
    /// before further attempts are refused without checking.
    pub max_failures_per_address: u32,
    /// Window for `max_failures_per_address`, seconds.
    pub failure_window_s: u64,
    /// Password hashes (argon2, ~19 MiB each) computed at once, broker-wide;
    /// further CONNECTs wait their turn. 0: the number of CPUs.
    pub max_concurrent_hashes: usize,
}

/// JWT settings (`[auth.jwt]`). Any configured key enables JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// RS256 public key, PEM file.
    pub rs256_public_key_file: Option<std::path::PathBuf>,
    /// ES256 public key, PEM file.
    pub es256_public_key_file: Option<std::path::PathBuf>,
    /// Local JWKS file (RS256/ES256 keys, selected by `kid`).
    pub jwks_file: Option<std::path::PathBuf>,
    /// Required issuer(s) (`iss`), if any.
    pub issuer: Vec<String>,
    /// Required audience(s) (`aud`), if any.
    pub audience: Vec<String>,
    /// Claim holding the user name.
    pub user_claim: String,
    /// Clock skew allowed for `exp`/`nbf`, seconds.
    pub leeway_s: u64,
    /// Query parameter carrying a token on the WebSocket URL.
    pub url_token_param: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret: None,
            rs256_public_key_file: None,
            es256_public_key_file: None,
            jwks_file: None,
            issuer: Vec::new(),
            audience: Vec::new(),
            user_claim: "sub".into(),
            leeway_s: 5,
            url_token_param: "access_token".into(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: None,
            users_file: None,
            jwt: JwtConfig::default(),
            max_failures_per_address: 10,
            failure_window_s: 60,
            max_concurrent_hashes: 0,
        }
    }
}

impl AuthConfig {
    /// Whether any authentication method is configured.
    pub fn enabled(&self) -> bool {
        self.users_file.is_some() || self.jwt.enabled()
    }
}

impl JwtConfig {
    /// Whether any JWT key is configured.
    pub fn enabled(&self) -> bool {
        self.hs256_secret.is_some()
            || self.rs256_public_key_file.is_some()
            || self.es256_public_key_file.is_some()
            || self.jwks_file.is_some()
    }
}

/// Who a session belongs to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The user name; `None` for anonymous sessions.
    pub user: Option<String>,
    /// Claims (JWT claims, or a user's `claims` from the users file).
    pub claims: Map<String, Value>,
    /// When the credentials stop being valid (JWT `exp`).
    pub expires_at: Option<SystemTime>,
}

/// What a client presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// CONNECT `login`.
    pub login: Option<&'a str>,
    /// CONNECT `passcode`.
    pub passcode: Option<&'a str>,
    /// CONNECT `Authorization` header.
    pub authorization: Option<&'a str>,
    /// Token from the WebSocket URL.
    pub url_token: Option<&'a str>,
}

/// Why authentication failed (logged; clients only see "authentication failed").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials and anonymous access is not allowed.
    #[error("anonymous access not allowed")]
    AnonymousNotAllowed,
    /// Unknown user or wrong password.
    #[error("bad login or passcode")]
    BadPassword,
    /// Token rejected (signature, algorithm, expiry, audience …).
    #[error("token rejected: {0}")]
    BadToken(String),
    /// Too many failures from this address.
    #[error("too many failed attempts from this address")]
    RateLimited,
}

#[derive(Debug, Deserialize)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Debug, Clone, Deserialize)]
struct UserEntry {
    name: String,
    password_hash: String,
    #[serde(default)]
    claims: Map<String, Value>,
}

struct JwtKey {
    kid: Option<String>,
    key: DecodingKey,
    alg: Algorithm,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// Checks credentials. One per broker.
#[derive(Debug)]
pub struct Authenticator {
    users: HashMap<String, UserEntry>,
    /// Verified for unknown user names, so they cost what a known one does.
    dummy_hash: Option<String>,
    keys: Vec<JwtKey>,
    jwt: JwtConfig,
    anonymous: Anonymous,
    attempts: DashMap<IpAddr, Arc<AddrAttempts>>,
    max_failures: u32,
    window: Duration,
    hash_slots: Arc<Semaphore>,
    hash_slot_count: usize,
    hashes_peak: AtomicI64,
    metrics: Arc<Metrics>,
}

/// One address's failures in the current window and checks in flight.
#[derive(Debug)]
struct AddrAttempts {
    state: Mutex<AttemptState>,
    /// Woken whenever a check in flight ends.
    done: Notify,
}

#[derive(Debug, Clone, Copy)]
struct AttemptState {
    failures: u32,
    /// When the current failure window started.
    since: Instant,
    in_flight: u32,
}

impl AttemptState {
    /// Failures that still count (the window has not passed).
    fn live_failures(&mut self, window: Duration) -> u32 {
        if self.since.elapsed() >= window {
            self.failures = 0;
            self.since = Instant::now();
        }
        self.failures
    }
}

impl AddrAttempts {
    fn new() -> AddrAttempts {
        AddrAttempts {
            state: Mutex::new(AttemptState {
                failures: 0,
                since: Instant::now(),
                in_flight: 0,
            }),
            done: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AttemptState> {
        // The state is a few integers, valid after any panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A password check in flight for one address: counts against the
/// address's failure budget until it ends; records a failure if it failed.
struct Attempt {
    entry: Option<Arc<AddrAttempts>>,
    window: Duration,
    failed: bool,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(entry) = self.entry.take() else {
            return;
        };
        {
            let mut s = entry.lock();
            if self.failed {
                s.live_failures(self.window);
                s.failures = s.failures.saturating_add(1);
            }
            s.in_flight = s.in_flight.saturating_sub(1);
        }
        entry.done.notify_waiters();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anonymous {
    Everyone,
    LoopbackOnly,
    Nobody,
}

impl Authenticator {
    /// Loads the users file and keys named in `cfg`.
    pub fn from_config(cfg: &AuthConfig) -> anyhow::Result<Authenticator> {
        let mut users = HashMap::new();
        if let Some(path) = &cfg.users_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading users file {}: {e}", path.display()))?;
            let file: UsersFile = toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("users file {}: {e}", path.display()))?;
            for u in file.user {
                PasswordHash::new(&u.password_hash)
                    .map_err(|e| anyhow::anyhow!("user {}: bad password_hash: {e}", u.name))?;
                users.insert(u.name.clone(), u);
            }
        }
        let dummy_hash = users
            .keys()
            .min()
            .and_then(|name| users.get(name))
            .map(|u| dummy_hash_like(&u.password_hash))
            .transpose()?;
        let mut keys = Vec::new();
        let j = &cfg.jwt;
        if let Some(secret) = &j.hs256_secret {
            keys.push(JwtKey {
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
                alg: Algorithm::HS256,
            });
        }
        if let Some(path) = &j.rs256_public_key_file {
            keys.push(JwtKey {
                kid: None,
                key: DecodingKey::from_rsa_pem(&read(path)?)?,
                alg: Algorithm::RS256,
            });
        }
        if let Some(path) = &j.es256_public_key_file {
            keys.push(JwtKey {
                kid: None,
                key: DecodingKey::from_ec_pem(&read(path)?)?,
                alg: Algorithm::ES256,
            });
        }
        if let Some(path) = &j.jwks_file {
            let set: JwkSet = serde_json::from_slice(&read(path)?)
                .map_err(|e| anyhow::anyhow!("JWKS {}: {e}", path.display()))?;
            for jwk in &set.keys {
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => anyhow::bail!(
                        "JWKS {}: only RSA (RS256) and EC (ES256) keys are supported",
                        path.display()
                    ),
                };
                keys.push(JwtKey {
                    kid: jwk.common.key_id.clone(),
                    key: DecodingKey::from_jwk(jwk)?,
                    alg,
                });
            }
        }
        let anonymous = match cfg.allow_anonymous {
            Some(true) => Anonymous::Everyone,
            Some(false) => Anonymous::Nobody,
            None if cfg.enabled() => Anonymous::Nobody,
            None => Anonymous::LoopbackOnly,
        };
        let hash_slot_count = match cfg.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(Semaphore::MAX_PERMITS);
        Ok(Authenticator {
            users,
            dummy_hash,
            keys,
            jwt: cfg.jwt.clone(),
            anonymous,
            attempts: DashMap::new(),
            max_failures: cfg.max_failures_per_address,
            window: Duration::from_secs(cfg.failure_window_s),
            hash_slots: Arc::new(Semaphore::new(hash_slot_count)),
            hash_slot_count,
            hashes_peak: AtomicI64::new(0),
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// Counts into `metrics` (the broker's) instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Authenticator {
        self.metrics = metrics;
        self
    }

    /// How many password hashes may run at once.
    pub fn max_concurrent_hashes(&self) -> usize {
        self.hash_slot_count
    }

    /// The most password hashes that ever ran at once.
    pub fn peak_concurrent_hashes(&self) -> u64 {
        self.hashes_peak.load(Relaxed).max(0) as u64
    }

    /// The URL query parameter that may carry a token.
    pub fn url_token_param(&self) -> &str {
        &self.jwt.url_token_param
    }

    /// Whether anonymous sessions are possible for `peer`.
    pub fn anonymous_allowed(&self, peer: IpAddr) -> bool {
        match self.anonymous {
            Anonymous::Everyone => true,
            Anonymous::LoopbackOnly => peer.is_loopback(),
            Anonymous::Nobody => false,
        }
    }

    /// Checks `creds` from `peer`. Password hashing is slow on purpose:
    /// call this from a blocking-tolerant context (see
    /// [`Authenticator::authenticate_async`]).
    pub fn authenticate(
        &self,
        peer: IpAddr,
        creds: Credentials<'_>,
    ) -> Result<Identity, AuthError> {
        if self.is_rate_limited(peer) {
            self.metrics.auth_throttled.fetch_add(1, Relaxed);
            return Err(AuthError::RateLimited);
        }
        let result = self.check(peer, creds);
        if result.is_err() {
            self.record_failure(peer);
        }
        result
    }

    /// [`Authenticator::authenticate`] off the async worker threads when a
    /// password hash must be verified: the attempt is counted against the
    /// address's failure budget first (waiting while the budget is all in
    /// flight, refused once it is spent), then waits for a hash slot.
    pub async fn authenticate_async(
        self: &std::sync::Arc<Self>,
        peer: IpAddr,
        login: Option<String>,
        passcode: Option<String>,
        authorization: Option<String>,
        url_token: Option<String>,
    ) -> Result<Identity, AuthError> {
        let needs_hash = authorization.is_none()
            && url_token.is_none()
            && !passcode.as_deref().is_some_and(|p| self.looks_like_jwt(p))
            && !self.users.is_empty()
            && login.as_deref().is_some_and(|l| !l.is_empty());
        let creds = move |me: &Authenticator| {
            me.check(
                peer,
                Credentials {
                    login: login.as_deref(),
                    passcode: passcode.as_deref(),
                    authorization: authorization.as_deref(),
                    url_token: url_token.as_deref(),
                },
            )
        };
        if !needs_hash {
            if self.is_rate_limited(peer) {
                self.metrics.auth_throttled.fetch_add(1, Relaxed);
                return Err(AuthError::RateLimited);
            }
            let result = creds(self);
            if result.is_err() {
                self.record_failure(peer);
            }
            return result;
        }
        let mut attempt = self.begin_attempt(peer).await?;
        self.metrics.auth_waiting.fetch_add(1, Relaxed);
        let permit = self.hash_slots.clone().acquire_owned().await;
        self.metrics.auth_waiting.fetch_sub(1, Relaxed);
        let Ok(permit) = permit else {
            return Err(AuthError::BadPassword);
        };
        let me = self.clone();
        // The slot and the attempt are held by the blocking task itself, so
        // they stay taken while it hashes even if this future is dropped.
        tokio::task::spawn_blocking(move || {
            let result = creds(&me);
            attempt.failed = result.is_err();
            drop(attempt);
            drop(permit);
            result
        })
        .await
        .unwrap_or(Err(AuthError::BadPassword))
    }

    /// Takes `peer`'s turn for a check about to run: refused when the
    /// failures in the window already reach the limit; waits while the
    /// checks of the same address in flight would spend what is left of the
    /// budget if they all failed (so one address has at most
    /// `max_failures_per_address` checks queued or running).
    async fn begin_attempt(&self, peer: IpAddr) -> Result<Attempt, AuthError> {
        if self.max_failures == 0 {
            return Ok(Attempt {
                entry: None,
                window: self.window,
                failed: false,
            });
        }
        let entry = self
            .attempts
            .entry(peer)
            .or_insert_with(|| Arc::new(AddrAttempts::new()))
            .clone();
        self.forget_stale_addresses();
        loop {
            let done = entry.done.notified();
            tokio::pin!(done);
            // Registered before the state is read, so an attempt ending in
            // between still wakes this one.
            done.as_mut().enable();
            {
                let mut s = entry.lock();
                let failures = s.live_failures(self.window);
                if failures >= self.max_failures {
                    drop(s);
                    self.metrics.auth_throttled.fetch_add(1, Relaxed);
                    return Err(AuthError::RateLimited);
                }
                // Checks in flight count against the budget before they
                // run, so an address may have as many in flight as it has
                // failures left: the budget is never overshot, and a clean
                // address (a Spring relay reconnecting its sessions) is not
                // serialised. At one failure left, one check at a time.
                if failures.saturating_add(s.in_flight) < self.max_failures {
                    s.in_flight += 1;
                    return Ok(Attempt {
                        entry: Some(entry.clone()),
                        window: self.window,
                        failed: false,
                    });
                }
            }
            self.metrics.auth_waiting.fetch_add(1, Relaxed);
            done.await;
            self.metrics.auth_waiting.fetch_sub(1, Relaxed);
        }
    }

    fn looks_like_jwt(&self, s: &str) -> bool {
        !self.keys.is_empty() && s.split('.').count() == 3 && !s.contains(char::is_whitespace)
    }

    fn check(&self, peer: IpAddr, c: Credentials<'_>) -> Result<Identity, AuthError> {
        if let Some(auth) = c.authorization {
            let token = auth
                .strip_prefix("Bearer ")
                .or_else(|| auth.strip_prefix("bearer "))
                .ok_or_else(|| AuthError::BadToken("Authorization is not a Bearer token".into()))?;
            return self.verify_token(token.trim());
        }
        if let Some(token) = c.url_token {
            return self.verify_token(token);
        }
        if let Some(p) = c.passcode.filter(|p| self.looks_like_jwt(p)) {
            return self.verify_token(p);
        }
        let login = c.login.filter(|l| !l.is_empty());
        if !self.users.is_empty() {
            if let Some(login) = login {
                return self.verify_password(login, c.passcode.unwrap_or(""));
            }
        }
        if self.anonymous_allowed(peer) {
            // Development mode: any login is accepted and used as the name.
            let user = if self.users.is_empty() && self.keys.is_empty() {
                login.map(str::to_owned)
            } else {
                None
            };
            return Ok(Identity {
                user,
                ..Identity::default()
            });
        }
        Err(AuthError::AnonymousNotAllowed)
    }

    fn verify_password(&self, login: &str, passcode: &str) -> Result<Identity, AuthError> {
        let user = self.users.get(login);
        // An unknown user costs one hash too, so timing does not reveal
        // which names exist.
        let stored = match (user, &self.dummy_hash) {
            (Some(u), _) => &u.password_hash,
            (None, Some(dummy)) => dummy,
            (None, None) => return Err(AuthError::BadPassword),
        };
        let ok = self.verify_hash(stored, passcode);
        let (Some(user), true) = (user, ok) else {
            return Err(AuthError::BadPassword);
        };
        Ok(Identity {
            user: Some(user.name.clone()),
            claims: user.claims.clone(),
            expires_at: None,
        })
    }

    /// One argon2 verification, counted.
    fn verify_hash(&self, stored: &str, passcode: &str) -> bool {
        let Ok(hash) = PasswordHash::new(stored) else {
            return false;
        };
        self.metrics.auth_hashes.fetch_add(1, Relaxed);
        let now = self.metrics.auth_hashes_in_flight.fetch_add(1, Relaxed) + 1;
        self.hashes_peak.fetch_max(now, Relaxed);
        let ok = Argon2::default()
            .verify_password(passcode.as_bytes(), &hash)
            .is_ok();
        self.metrics.auth_hashes_in_flight.fetch_sub(1, Relaxed);
        ok
    }

    /// Verifies a JWT with the configured keys; each key accepts only its
    /// own algorithm, so `none` and HS/RS confusion are refused.
    pub fn verify_token(&self, token: &str) -> Result<Identity, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::BadToken("no JWT keys configured".into()));
        }
        let header = decode_header(token).map_err(|e| AuthError::BadToken(e.to_string()))?;
        let mut last = AuthError::BadToken("no key accepts this token".into());
        for k in &self.keys {
            if k.alg != header.alg {
                continue;
            }
            if let (Some(want), Some(kid)) = (&header.kid, &k.kid) {
                if want != kid {
                    continue;
                }
            }
            let mut v = Validation::new(k.alg);
            v.leeway = self.jwt.leeway_s;
            v.validate_nbf = true;
            if !self.jwt.issuer.is_empty() {
                v.set_issuer(&self.jwt.issuer);
                v.required_spec_claims.insert("iss".into());
            }
            if self.jwt.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&self.jwt.audience);
                v.required_spec_claims.insert("aud".into());
            }
            match decode::<Map<String, Value>>(token, &k.key, &v) {
                Ok(data) => return self.identity_from_claims(data.claims),
                Err(e) => last = AuthError::BadToken(e.to_string()),
            }
        }
        Err(last)
    }

    fn identity_from_claims(&self, claims: Map<String, Value>) -> Result<Identity, AuthError> {
        let user = match claims.get(&self.jwt.user_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(AuthError::BadToken(format!(
                    "claim '{}' missing or not a string",
                    self.jwt.user_claim
                )))
            }
        };
        let expires_at = claims.get("exp").and_then(expiry_from_exp);
        Ok(Identity {
            user: Some(user),
            claims,
            expires_at,
        })
    }

    fn is_rate_limited(&self, peer: IpAddr) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let Some(entry) = self.attempts.get(&peer).map(|e| e.clone()) else {
            return false;
        };
        let failures = entry.lock().live_failures(self.window);
        failures >= self.max_failures
    }

    fn record_failure(&self, peer: IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let entry = self
            .attempts
            .entry(peer)
            .or_insert_with(|| Arc::new(AddrAttempts::new()))
            .clone();
        {
            let mut s = entry.lock();
            s.live_failures(self.window);
            s.failures = s.failures.saturating_add(1);
        }
        self.forget_stale_addresses();
    }

    /// Keeps the table bounded: forgets idle addresses without live failures
    /// when it grows.
    fn forget_stale_addresses(&self) {
        if self.attempts.len() > 100_000 {
            let window = self.window;
            self.attempts.retain(|_, e| {
                let mut s = e.lock();
                s.in_flight > 0 || s.live_failures(window) > 0
            });
        }
    }
}

/// A hash no password matches, with the algorithm, version and parameters
/// of `like` (a users-file hash): a random salt and random output, so
/// verifying against it costs exactly what verifying against `like` does
/// (and building it costs no hash).
fn dummy_hash_like(like: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{
        rand_core::{OsRng, RngCore},
        Output, SaltString,
    };
    let mut dummy = PasswordHash::new(like).map_err(|e| anyhow::anyhow!("password_hash: {e}"))?;
    let salt = SaltString::generate(&mut OsRng);
    dummy.salt = Some(salt.as_salt());
    let len = dummy
        .hash
        .map_or(Output::B64_MAX_LENGTH.min(32), |h| h.len());
    let mut random = vec![0u8; len];
    OsRng.fill_bytes(&mut random);
    dummy.hash = Some(Output::new(&random).map_err(|e| anyhow::anyhow!("dummy hash: {e}"))?);
    Ok(dummy.to_string())
}

/// Latest expiry a token may carry: 9999-12-31T23:59:59Z. Larger `exp`
/// values are clamped to it, so the arithmetic on the expiry (here and in
/// the connection's timer) cannot overflow.
pub const MAX_EXP_SECS: u64 = 253_402_300_799;

/// The instant a JWT `exp` claim (seconds since the epoch) names. Integers
/// and finite non-negative numbers are accepted and clamped to
/// [`MAX_EXP_SECS`]; anything else (negative, NaN, strings) gives `None`.
pub fn expiry_from_exp(exp: &Value) -> Option<SystemTime> {
    let secs = match exp.as_u64() {
        Some(s) => s,
        None => {
            let f = exp.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
            // `as` saturates for floats beyond u64; the clamp below applies.
            f as u64
        }
    };
    UNIX_EPOCH.checked_add(Duration::from_secs(secs.min(MAX_EXP_SECS)))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

/// Hashes a password for the users file (argon2id, random salt).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    proptest::proptest! {
        /// Any `exp` a token can carry maps to an expiry without panicking,
        /// clamped to the maximum, exact below it, and the connection's
        /// "time left" arithmetic on it cannot overflow either.
        #[test]
        fn expiry_from_any_exp_is_clamped_and_never_panics(secs in proptest::prelude::any::<u64>(), f in proptest::prelude::any::<f64>(), i in proptest::prelude::any::<i64>()) {
            let max = UNIX_EPOCH + Duration::from_secs(MAX_EXP_SECS);
            let at = expiry_from_exp(&Value::from(secs)).unwrap();
            proptest::prop_assert!(at <= max);
            if secs <= MAX_EXP_SECS {
                proptest::prop_assert_eq!(at, UNIX_EPOCH + Duration::from_secs(secs));
            }
            let left = at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
            proptest::prop_assert!(std::time::Instant::now().checked_add(left).is_some());
            if let Some(at) = expiry_from_exp(&Value::from(f)) {
                proptest::prop_assert!(f.is_finite() && f >= 0.0 && at <= max);
            }
            if let Some(at) = expiry_from_exp(&Value::from(i)) {
                proptest::prop_assert!(i >= 0 && at <= max);
            } else {
                proptest::prop_assert!(i < 0);
            }
        }
    }

    #[test]
    fn huge_exp_claims_are_clamped_not_overflowed() {
        for exp in [
            serde_json::json!(u64::MAX),
            serde_json::json!(1e300),
            serde_json::json!(MAX_EXP_SECS + 1),
        ] {
            assert_eq!(
                expiry_from_exp(&exp),
                Some(UNIX_EPOCH + Duration::from_secs(MAX_EXP_SECS)),
                "{exp}"
            );
        }
        assert_eq!(expiry_from_exp(&serde_json::json!(-1)), None);
        assert_eq!(expiry_from_exp(&serde_json::json!("soon")), None);
    }

    #[test]
    fn zero_config_allows_anonymous_on_loopback_only() {
        let a = Authenticator::from_config(&AuthConfig::default()).unwrap();
        assert!(a.authenticate(loopback(), Credentials::default()).is_ok());
        assert_eq!(
            a.authenticate(IpAddr::from([10, 1, 2, 3]), Credentials::default()),
            Err(AuthError::AnonymousNotAllowed)
        );
    }

    /// An authenticator with user `alice` (password `s3cret`).
    fn with_alice(tag: &str, tweak: impl FnOnce(&mut AuthConfig)) -> Authenticator {
        let dir = std::env::temp_dir().join(format!("stomp-auth-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        let hash = hash_password("s3cret").unwrap();
        std::fs::write(
            &path,
            format!("[[user]]\nname = \"alice\"\npassword_hash = \"{hash}\"\n"),
        )
        .unwrap();
        let mut cfg = AuthConfig {
            users_file: Some(path),
            ..AuthConfig::default()
        };
        tweak(&mut cfg);
        Authenticator::from_config(&cfg).unwrap()
    }

    fn login<'a>(user: &'a str, pass: &'a str) -> Credentials<'a> {
        Credentials {
            login: Some(user),
            passcode: Some(pass),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_users_cost_one_hash_like_known_ones() {
        let a = with_alice("unknown", |c| c.max_failures_per_address = 0);
        let hashes = || a.metrics.auth_hashes.load(Relaxed);
        assert_eq!(
            a.authenticate(loopback(), login("mallory", "x")),
            Err(AuthError::BadPassword)
        );
        assert_eq!(hashes(), 1, "an unknown user is hashed against the dummy");
        assert_eq!(
            a.authenticate(loopback(), login("alice", "x")),
            Err(AuthError::BadPassword)
        );
        assert_eq!(hashes(), 2);
        // And that hash costs the same (it was 0.1 ms against 15 ms): same
        // algorithm, version, parameters and output length; a timing
        // comparison would be flaky on a loaded machine.
        let dummy = PasswordHash::new(a.dummy_hash.as_deref().unwrap()).unwrap();
        let real = PasswordHash::new(&a.users["alice"].password_hash).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        assert_ne!(dummy.salt, real.salt);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_wrong_passwords_from_one_address_hash_at_most_its_budget() {
        let a = Arc::new(with_alice("burst", |c| {
            c.max_failures_per_address = 5;
            c.max_concurrent_hashes = 2;
        }));
        let attacker = IpAddr::from([10, 0, 0, 1]);
        let attempt = |peer: IpAddr, pass: &str| {
            let a = a.clone();
            let pass = pass.to_owned();
            tokio::spawn(async move {
                a.authenticate_async(peer, Some("alice".into()), Some(pass), None, None)
                    .await
            })
        };
        let burst: Vec<_> = (0..300).map(|_| attempt(attacker, "wrong")).collect();
        // A correct CONNECT from another address during the burst.
        let good = attempt(IpAddr::from([10, 0, 0, 2]), "s3cret");
        assert_eq!(good.await.unwrap().unwrap().user.as_deref(), Some("alice"));
        let mut limited = 0;
        for r in burst {
            match r.await.unwrap() {
                Err(AuthError::RateLimited) => limited += 1,
                Err(AuthError::BadPassword) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let hashes = a.metrics.auth_hashes.load(Relaxed);
        // 5 wrong ones from the attacker and the good one: nothing more.
        assert_eq!(hashes, 6, "hashes computed");
        assert_eq!(limited, 295);
        assert_eq!(a.metrics.auth_throttled.load(Relaxed), 295);
        assert!(
            a.peak_concurrent_hashes() <= 2,
            "{}",
            a.peak_concurrent_hashes()
        );
        assert_eq!(a.metrics.auth_hashes_in_flight.load(Relaxed), 0);
        assert_eq!(a.metrics.auth_waiting.load(Relaxed), 0);
    }

    /// A Spring broker relay reconnects every browser session after a
    /// broker restart, each CONNECT with the same `clientLogin`/`clientPasscode`
    /// from one address: while that address has no failures, its checks run
    /// in parallel (up to its failure budget), not one at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relays_connects_from_one_clean_address_are_checked_in_parallel() {
        let a = Arc::new(with_alice("relay", |c| {
            c.max_failures_per_address = 10;
            c.max_concurrent_hashes = 2;
        }));
        let relay = IpAddr::from([10, 0, 0, 9]);
        let started = Instant::now();
        let n = 40;
        let sessions: Vec<_> = (0..n)
            .map(|_| {
                let a = a.clone();
                tokio::spawn(async move {
                    a.authenticate_async(
                        relay,
                        Some("alice".into()),
                        Some("s3cret".into()),
                        None,
                        None,
                    )
                    .await
                })
            })
            .collect();
        for s in sessions {
            assert_eq!(s.await.unwrap().unwrap().user.as_deref(), Some("alice"));
        }
        eprintln!("{n} relay CONNECTs checked in {:?}", started.elapsed());
        assert_eq!(a.metrics.auth_hashes.load(Relaxed), n);
        assert_eq!(
            a.peak_concurrent_hashes(),
            2,
            "one address's checks were serialised"
        );
        assert_eq!(a.metrics.auth_throttled.load(Relaxed), 0);
    }

    #[test]
    fn password_users_are_checked_and_failures_rate_limited() {
        let dir = std::env::temp_dir().join(format!("stomp-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        let hash = hash_password("s3cret").unwrap();
        std::fs::write(&path, format!("[[user]]\nname = \"alice\"\npassword_hash = \"{hash}\"\nclaims = {{ orders = [\"1\"] }}\n")).unwrap();
        let cfg = AuthConfig {
            users_file: Some(path),
            max_failures_per_address: 3,
            failure_window_s: 60,
            ..AuthConfig::default()
        };
        let a = Authenticator::from_config(&cfg).unwrap();
        let ok = a
            .authenticate(
                loopback(),
                Credentials {
                    login: Some("alice"),
                    passcode: Some("s3cret"),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(ok.user.as_deref(), Some("alice"));
        assert!(ok.claims.contains_key("orders"));
        let bad = Credentials {
            login: Some("alice"),
            passcode: Some("nope"),
            ..Default::default()
        };
        assert_eq!(
            a.authenticate(loopback(), Credentials::default()),
            Err(AuthError::AnonymousNotAllowed)
        );
        assert_eq!(a.authenticate(loopback(), bad), Err(AuthError::BadPassword));
        assert_eq!(a.authenticate(loopback(), bad), Err(AuthError::BadPassword));
        let good = Credentials {
            login: Some("alice"),
            passcode: Some("s3cret"),
            ..Default::default()
        };
        assert_eq!(
            a.authenticate(loopback(), good),
            Err(AuthError::RateLimited)
        );
    }
}
