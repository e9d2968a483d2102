//! The versioned schema: one list of migrations per backend (the same tables, each in its
//! own dialect), applied in order by `sqlx`'s migrator, which records what it applied in
//! `_sqlx_migrations` and refuses a database whose applied migrations were changed since.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

use super::Backend;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 6;

type Step = (i64, &'static str, &'static str);

const SQLITE: &[Step] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/sqlite/0001_registry.sql"),
    ),
    (
        2,
        "events policies objects",
        include_str!("../../migrations/sqlite/0002_events_policies_objects.sql"),
    ),
    (
        3,
        "accounts",
        include_str!("../../migrations/sqlite/0003_accounts.sql"),
    ),
    (
        4,
        "tags expiry acknowledgements",
        include_str!("../../migrations/sqlite/0004_tags_expiry_acknowledgements.sql"),
    ),
    (
        5,
        "certificates and scopes",
        include_str!("../../migrations/sqlite/0005_certificates_and_scopes.sql"),
    ),
    (
        6,
        "virtual servers",
        include_str!("../../migrations/sqlite/0006_virtual_servers.sql"),
    ),
];

const POSTGRES: &[Step] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/postgres/0001_registry.sql"),
    ),
    (
        2,
        "events policies objects",
        include_str!("../../migrations/postgres/0002_events_policies_objects.sql"),
    ),
    (
        3,
        "accounts",
        include_str!("../../migrations/postgres/0003_accounts.sql"),
    ),
    (
        4,
        "tags expiry acknowledgements",
        include_str!("../../migrations/postgres/0004_tags_expiry_acknowledgements.sql"),
    ),
    (
        5,
        "certificates and scopes",
        include_str!("../../migrations/postgres/0005_certificates_and_scopes.sql"),
    ),
    (
        6,
        "virtual servers",
        include_str!("../../migrations/postgres/0006_virtual_servers.sql"),
    ),
];

/// The migrations of `backend`, up to `up_to` (all without it).
#[derive(Debug)]
struct Steps(Vec<Migration>);

impl<'s> MigrationSource<'s> for Steps {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Vec<Migration>, Box<dyn std::error::Error + Send + Sync>>,
                > + Send
                + 's,
        >,
    > {
        Box::pin(async move { Ok(self.0) })
    }
}

/// The migrator of `backend`, with the migrations up to `up_to` (all without it).
pub(super) async fn migrator(
    backend: Backend,
    up_to: Option<i64>,
) -> Result<Migrator, sqlx::migrate::MigrateError> {
    let steps = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let migrations = steps
        .iter()
        .filter(|(v, _, _)| up_to.is_none_or(|u| *v <= u))
        .map(|&(v, d, sql)| {
            Migration::new(
                v,
                Cow::Borrowed(d),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect();
    Migrator::new(Steps(migrations)).await
}
