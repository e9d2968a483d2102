//! Which database, and how much of the event log it keeps.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ServerError;

/// The SQLite file made in the data directory when no URL is configured.
pub const SQLITE_FILE: &str = "outpost.db";

/// The database backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// SQLite, embedded (WAL mode, every commit flushed to disk).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

fn default_max_events() -> u64 {
    400_000
}

fn default_max_event_age_days() -> u32 {
    180
}

fn default_max_batch() -> usize {
    512
}

/// The `[database]` section of the server configuration.
///
/// ```
/// use outpost_server::{Backend, DatabaseConfig};
///
/// // No URL: SQLite in the data directory.
/// let db: DatabaseConfig = toml::from_str("").unwrap();
/// assert_eq!(db.resolve(std::path::Path::new("/srv/outpost")).backend(), Backend::Sqlite);
///
/// let db: DatabaseConfig = toml::from_str(r#"
///     url = "postgres://outpost@db.example.test/outpost"
///     max_events = 45000000
/// "#).unwrap();
/// assert_eq!(db.backend(), Backend::Postgres);
/// db.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` (PostgreSQL's
    /// own URL options, such as `?host=/run/postgresql` for a Unix socket, apply). Without
    /// it, SQLite in the data directory (`outpost.db`).
    #[serde(default)]
    pub url: Option<String>,
    /// Events kept at most (default 400,000); past it the oldest are dropped.
    #[serde(default = "default_max_events")]
    pub max_events: u64,
    /// Days an event is kept at most (default 180).
    #[serde(default = "default_max_event_age_days")]
    pub max_event_age_days: u32,
    /// Writes grouped into one transaction at most (default 512).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_events: default_max_events(),
            max_event_age_days: default_max_event_age_days(),
            max_batch: default_max_batch(),
        }
    }
}

impl DatabaseConfig {
    /// SQLite in `dir` (the file [`SQLITE_FILE`]).
    pub fn sqlite_in(dir: &Path) -> Self {
        DatabaseConfig::default().with_url(sqlite_url(&dir.join(SQLITE_FILE)))
    }

    /// The database at `url`.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Keeps at most `n` events.
    pub fn with_max_events(mut self, n: u64) -> Self {
        self.max_events = n;
        self
    }

    /// This configuration with its URL made concrete: SQLite in `data_dir` when none is
    /// set, and a relative SQLite path taken from `data_dir`.
    pub fn resolve(&self, data_dir: &Path) -> Self {
        let url = match self.url.as_deref() {
            None => sqlite_url(&data_dir.join(SQLITE_FILE)),
            Some(u) => match sqlite_path(u) {
                Some(p) if Path::new(p).is_relative() => sqlite_url(&data_dir.join(p)),
                _ => u.to_string(),
            },
        };
        DatabaseConfig {
            url: Some(url),
            ..self.clone()
        }
    }

    /// The backend the URL names (SQLite without one).
    pub fn backend(&self) -> Backend {
        match self.url.as_deref() {
            Some(u) if u.starts_with("postgres:") || u.starts_with("postgresql:") => {
                Backend::Postgres
            }
            _ => Backend::Sqlite,
        }
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        let Some(url) = self.url.as_deref() else {
            return format!("sqlite (in the data directory, {SQLITE_FILE})");
        };
        match (url.find("://"), url.find('@')) {
            (Some(s), Some(at)) if at > s => {
                let creds = &url[s + 3..at];
                match creds.find(':') {
                    Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                    None => url.to_string(),
                }
            }
            _ => url.to_string(),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Config(format!("database: {m}")));
        if let Some(u) = self.url.as_deref() {
            let known = u.starts_with("sqlite:")
                || u.starts_with("postgres:")
                || u.starts_with("postgresql:");
            if !known {
                return bad(format!(
                    "url {:?}: must start with sqlite:// or postgres://",
                    self.redacted_url()
                ));
            }
            if let Some(p) = sqlite_path(u)
                && (p.is_empty() || p.contains(['%', '#']))
            {
                return bad(format!(
                    "url {u:?}: the SQLite path must be non-empty and without % or #"
                ));
            }
        }
        if self.max_events == 0 {
            return bad("max_events: must be at least 1".into());
        }
        if self.max_events > i64::MAX as u64 {
            return bad("max_events: too large".into());
        }
        if self.max_event_age_days == 0 {
            return bad("max_event_age_days: must be at least 1".into());
        }
        if !(1..=65_536).contains(&self.max_batch) {
            return bad("max_batch: must be 1 to 65,536".into());
        }
        Ok(())
    }

    /// The longest an event is kept.
    pub fn max_event_age(&self) -> Duration {
        Duration::from_secs(u64::from(self.max_event_age_days) * 86_400)
    }
}

/// The path of an `sqlite:` URL (without its query).
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(rest.split('?').next().unwrap_or(""))
}

/// The URL of an SQLite file, its path made absolute (the driver reads `sqlite://` URLs
/// with relative paths unreliably).
fn sqlite_url(path: &Path) -> String {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    format!("sqlite://{}", path.display())
}

impl DatabaseConfig {
    /// The file of an SQLite URL (`None` for PostgreSQL or before [`resolve`]).
    ///
    /// [`resolve`]: Self::resolve
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        sqlite_path(self.url.as_deref()?).map(PathBuf::from)
    }
}
