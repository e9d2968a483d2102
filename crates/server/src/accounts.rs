//! Administrator accounts, their roles, short-lived sessions and long-lived API tokens: what
//! the administration API authenticates against (sans-IO: time is passed in).
//!
//! - Passwords are stored as argon2id hashes (PHC strings, random 16-byte salt, the
//!   `argon2` crate's defaults: 19 MiB, 2 passes); an unknown account costs a login the
//!   same hash check as a known one, so response times do not tell which names exist.
//! - Sessions live in memory only, for [`SessionConfig::ttl`]: a restart logs everybody
//!   out, never anyone in.
//! - API tokens are shown once and stored as SHA-256; revoking one is immediate.
//! - The first account is made offline ([`AccountBook::bootstrap`]), and only while there
//!   is none.
//!
//! ```
//! use std::time::{Duration, Instant, SystemTime};
//! use outpost_server::{AccountBook, Role, SessionConfig, Sessions};
//!
//! let mut book = AccountBook::default();
//! let op = book.bootstrap("admin", "correct horse battery", SystemTime::now()).unwrap();
//! book.apply(&op); // once committed
//! assert_eq!(book.check_password("admin", "correct horse battery"), Some(Role::Administrator));
//! assert_eq!(book.check_password("admin", "wrong"), None);
//!
//! let mut sessions = Sessions::new(SessionConfig::default());
//! let t0 = Instant::now();
//! let token = sessions.open("admin", Role::Administrator, t0).unwrap();
//! assert!(sessions.check(&token, t0 + Duration::from_secs(60)).is_some());
//! assert!(sessions.check(&token, t0 + Duration::from_secs(24 * 3600)).is_none());
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::registry::{hex, unix};
use crate::{Op, ServerError};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// Longest password accepted (bytes): hashing cost must not grow with the input.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// Reads and changes everything.
    Administrator,
    /// Reads everything, changes nothing.
    Auditor,
}

impl Role {
    /// Its name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Auditor => "auditor",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "administrator" => Some(Role::Administrator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    /// Whether the role may change anything.
    pub fn may_write(self) -> bool {
        self == Role::Administrator
    }
}

/// An administrator account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Account {
    /// Its login name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its password, as an argon2id PHC string.
    pub password_hash: String,
    /// When it was made, seconds since the Unix epoch.
    pub created_at_unix: u64,
    /// A disabled account cannot log in, and its API tokens are refused.
    pub disabled: bool,
}

impl Account {
    /// An enabled account with an already hashed password.
    pub fn new(name: String, role: Role, password_hash: String, created_at_unix: u64) -> Self {
        Account {
            name,
            role,
            password_hash,
            created_at_unix,
            disabled: false,
        }
    }
}

/// A long-lived API token, for automation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiToken {
    /// Its id (shown in lists; not the secret).
    pub id: String,
    /// The account it acts as.
    pub account: String,
    /// SHA-256 (hex) of the secret.
    pub token_sha256: String,
    /// What the administrator called it.
    pub label: String,
    /// When it was issued, seconds since the Unix epoch.
    pub created_at_unix: u64,
    /// When it was revoked, if it was.
    pub revoked_at_unix: Option<u64>,
}

pub(crate) fn random_hex(n: usize) -> Result<String, ServerError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut raw = vec![0u8; n];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| ServerError::Random)?;
    Ok(hex(&raw))
}

/// The SHA-256 (hex) an API token is kept as; `None` for a secret too long to be one.
pub fn api_token_sha256(secret: &str) -> Option<String> {
    (secret.len() <= 128).then(|| sha256_hex(secret))
}

fn sha256_hex(s: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes()).as_ref())
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> ServerError {
    ServerError::InvalidId {
        what,
        value: value.chars().take(200).collect(),
        reason,
    }
}

/// Hashes `password` with argon2id and a random salt. Refused outside
/// [`MIN_PASSWORD_LEN`]..=[`MAX_PASSWORD_LEN`].
pub fn hash_password(password: &str) -> Result<String, ServerError> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(invalid("password", "", "shorter than 12 characters"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(invalid("password", "", "longer than 1,024 bytes"));
    }
    use aws_lc_rs::rand::SecureRandom;
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| ServerError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| ServerError::Random)?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ServerError::Config(format!("password hashing failed: {e}")))
}

/// Whether `password` matches `hash` (a PHC string; a malformed one matches nothing).
pub fn verify_password(hash: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash of no password anyone has, checked when a login names an unknown account.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("no account has this password").unwrap_or_default())
}

/// The accounts and API tokens, in memory (loaded from the database; changes are made as
/// [`Op`]s to commit, then [`apply`](Self::apply)ed).
#[derive(Debug, Default, Clone)]
pub struct AccountBook {
    accounts: HashMap<String, Account>,
    /// By SHA-256 of the secret.
    tokens: HashMap<String, ApiToken>,
}

impl AccountBook {
    /// A book holding `accounts` and `tokens` (as [`crate::Snapshot`] has them).
    pub fn new(accounts: Vec<Account>, tokens: Vec<ApiToken>) -> Self {
        AccountBook {
            accounts: accounts.into_iter().map(|a| (a.name.clone(), a)).collect(),
            tokens: tokens
                .into_iter()
                .map(|t| (t.token_sha256.clone(), t))
                .collect(),
        }
    }

    /// The accounts, by name.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// The first account, an administrator: refused once any account exists.
    pub fn bootstrap(
        &self,
        name: &str,
        password: &str,
        now: SystemTime,
    ) -> Result<Op, ServerError> {
        if let Some(existing) = self.accounts.keys().next() {
            return Err(ServerError::Config(format!(
                "accounts exist already (such as {existing:?}): the first account is made \
                 only on a server that has none"
            )));
        }
        self.create(name, Role::Administrator, password, now)
    }

    /// A new account.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        password: &str,
        now: SystemTime,
    ) -> Result<Op, ServerError> {
        crate::check_id("account name", name)?;
        if self.accounts.contains_key(name) {
            return Err(ServerError::Duplicate {
                kind: "account",
                id: name.into(),
            });
        }
        Ok(Op::PutAccount(Account {
            name: name.into(),
            role,
            password_hash: hash_password(password)?,
            created_at_unix: unix(now),
            disabled: false,
        }))
    }

    /// The role of `name` if `password` is its password and it is enabled. An unknown name
    /// costs the same hash check.
    pub fn check_password(&self, name: &str, password: &str) -> Option<Role> {
        match self.accounts.get(name) {
            Some(a) => {
                (verify_password(&a.password_hash, password) && !a.disabled).then_some(a.role)
            }
            None => {
                let _ = verify_password(decoy_hash(), password);
                None
            }
        }
    }

    /// A new API token acting as `account`: the secret (shown once) and the row to commit.
    pub fn issue_api_token(
        &self,
        account: &str,
        label: &str,
        now: SystemTime,
    ) -> Result<(String, Op), ServerError> {
        if !self.accounts.contains_key(account) {
            return Err(ServerError::Unknown {
                kind: "account",
                id: account.into(),
            });
        }
        if label.len() > 200 {
            return Err(invalid("API token label", label, "longer than 200 bytes"));
        }
        let secret = random_hex(32)?;
        let token = ApiToken {
            id: random_hex(8)?,
            account: account.into(),
            token_sha256: sha256_hex(&secret),
            label: label.into(),
            created_at_unix: unix(now),
            revoked_at_unix: None,
        };
        Ok((secret, Op::PutApiToken(token)))
    }

    /// The row that revokes API token `id`.
    pub fn revoke_api_token(&self, id: &str, now: SystemTime) -> Result<Op, ServerError> {
        let t = self
            .tokens
            .values()
            .find(|t| t.id == id)
            .ok_or_else(|| ServerError::Unknown {
                kind: "API token",
                id: id.into(),
            })?;
        let mut t = t.clone();
        t.revoked_at_unix = Some(unix(now));
        Ok(Op::PutApiToken(t))
    }

    /// The account and role an API token acts as, if it is known, not revoked, and its
    /// account enabled.
    pub fn check_api_token(&self, secret: &str) -> Option<(&str, Role)> {
        self.check_api_token_sha256(&api_token_sha256(secret)?)
    }

    /// [`check_api_token`](Self::check_api_token) for a secret already hashed
    /// (`api_token_sha256`): one hash for a token looked up in many books.
    pub fn check_api_token_sha256(&self, sha256: &str) -> Option<(&str, Role)> {
        let t = self.tokens.get(sha256)?;
        let a = self.accounts.get(&t.account)?;
        (t.revoked_at_unix.is_none() && !a.disabled).then_some((a.name.as_str(), a.role))
    }

    /// The API tokens (revoked ones too), newest first.
    pub fn tokens(&self) -> Vec<&ApiToken> {
        let mut v: Vec<&ApiToken> = self.tokens.values().collect();
        v.sort_by(|a, b| (b.created_at_unix, &b.id).cmp(&(a.created_at_unix, &a.id)));
        v
    }

    /// The row that changes account `name`: its role, its password (hashed here, so call
    /// it off the async threads), whether it is disabled. Refused when it would leave no
    /// enabled administrator.
    pub fn change(
        &self,
        name: &str,
        role: Option<Role>,
        password: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<Op, ServerError> {
        let mut a = self
            .accounts
            .get(name)
            .ok_or_else(|| ServerError::Unknown {
                kind: "account",
                id: name.into(),
            })?
            .clone();
        if let Some(role) = role {
            a.role = role;
        }
        if let Some(d) = disabled {
            a.disabled = d;
        }
        let admin = |x: &Account| x.role == Role::Administrator && !x.disabled;
        let others = self.accounts.values().filter(|x| x.name != name).any(admin);
        if !admin(&a) && !others {
            return Err(ServerError::InUse(format!(
                "account {name:?} is the last enabled administrator: make another first"
            )));
        }
        if let Some(p) = password {
            a.password_hash = hash_password(p)?;
        }
        Ok(Op::PutAccount(a))
    }

    /// Takes a committed row into memory (other rows are ignored).
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::PutAccount(a) => {
                self.accounts.insert(a.name.clone(), a.clone());
            }
            Op::PutApiToken(t) => {
                self.tokens.insert(t.token_sha256.clone(), t.clone());
            }
            _ => {}
        }
    }
}

/// Settings of [`Sessions`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SessionConfig {
    /// How long a session lasts from login (default 1 hour).
    pub ttl: Duration,
    /// Sessions open at once at most (default 10,000); past it logins are refused until
    /// some expire.
    pub max: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            ttl: Duration::from_secs(3600),
            max: 10_000,
        }
    }
}

impl SessionConfig {
    /// Sessions lasting `ttl`.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// At most `max` sessions open at once.
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }
}

#[derive(Debug, Clone)]
struct Session {
    account: String,
    role: Role,
    expires: Instant,
}

/// Open sessions, by SHA-256 of their token.
#[derive(Debug)]
pub struct Sessions {
    config: SessionConfig,
    open: HashMap<String, Session>,
}

impl Sessions {
    /// No session open.
    pub fn new(config: SessionConfig) -> Self {
        Sessions {
            config,
            open: HashMap::new(),
        }
    }

    /// Opens a session for `account` at `now`; returns its token (shown once).
    pub fn open(&mut self, account: &str, role: Role, now: Instant) -> Result<String, ServerError> {
        if self.open.len() >= self.config.max {
            self.open.retain(|_, s| s.expires > now);
            if self.open.len() >= self.config.max {
                return Err(ServerError::Config(format!(
                    "{} sessions open, the most allowed: try again when some expire",
                    self.config.max
                )));
            }
        }
        let token = random_hex(32)?;
        self.open.insert(
            sha256_hex(&token),
            Session {
                account: account.into(),
                role,
                expires: now + self.config.ttl,
            },
        );
        Ok(token)
    }

    /// The account and role of an unexpired session.
    pub fn check(&self, token: &str, now: Instant) -> Option<(&str, Role)> {
        if token.len() > 128 {
            return None;
        }
        let s = self.open.get(&sha256_hex(token))?;
        (s.expires > now).then_some((s.account.as_str(), s.role))
    }

    /// Ends a session (logout).
    pub fn close(&mut self, token: &str) -> bool {
        self.open.remove(&sha256_hex(token)).is_some()
    }

    /// Ends every session of `account` (disabled, or its password changed); returns how
    /// many.
    pub fn close_all_of(&mut self, account: &str) -> usize {
        let before = self.open.len();
        self.open.retain(|_, s| s.account != account);
        before - self.open.len()
    }

    /// Sessions open (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// No session open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}
