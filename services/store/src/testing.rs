//! Test support: a fresh PostgreSQL database per test on the server that
//! `CROSSFLOW_TEST_POSTGRES_URL` names (`.ci/services start` runs one).
//!
//! Without that variable the PostgreSQL tests are skipped, with a line
//! saying so, so that `cargo test --workspace` needs no system package;
//! with `CROSSFLOW_REQUIRE_SERVICES=1` (as CI sets) a missing server fails
//! the test instead.

use crate::{Postgres, pg_schema};

/// The environment variable naming the test server's admin URL.
pub const POSTGRES_URL_ENV: &str = "CROSSFLOW_TEST_POSTGRES_URL";

/// The admin URL of the test server, or `None` (after printing why) when
/// there is none and none is required.
///
/// # Panics
/// When no server is configured but `CROSSFLOW_REQUIRE_SERVICES=1`.
pub fn postgres_admin_url(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("CROSSFLOW_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{test}: {POSTGRES_URL_ENV} is not set but CROSSFLOW_REQUIRE_SERVICES=1"
            );
            println!("skipped: {test}: {POSTGRES_URL_ENV} not set");
            None
        }
    }
}

/// The URL of a fresh, empty database `crossflow_test_<name>` on the test
/// server (dropped first if an earlier run left it), or `None` as
/// [`postgres_admin_url`] says.
///
/// # Panics
/// When the server cannot be reached or the database cannot be made: the
/// test cannot run.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub fn fresh_database(name: &str) -> Option<String> {
    let admin = postgres_admin_url(name)?;
    Some(crate::pg::off_runtime(|| make_database(&admin, name)))
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
fn make_database(admin: &str, name: &str) -> String {
    let db: String = format!("crossflow_test_{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut client = postgres::Client::connect(admin, postgres::NoTls)
        .unwrap_or_else(|e| panic!("{name}: cannot connect to {POSTGRES_URL_ENV}: {e}"));
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .expect("drop the test database");
    client
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .expect("create the test database");
    with_database(admin, &db)
}

/// A fresh database for test `name` with the store's schema, connected.
///
/// # Panics
/// As [`fresh_database`], or when the schema cannot be applied.
#[allow(clippy::expect_used)]
pub fn postgres(name: &str) -> Option<Postgres> {
    let url = fresh_database(name)?;
    Some(Postgres::connect(&url, pg_schema::MIGRATIONS).expect("connect to the test database"))
}

/// `url` with its database (the path) replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // After "scheme://", the authority runs to the next '/'.
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgresql://u@127.0.0.1:5/postgres", "x"),
            "postgresql://u@127.0.0.1:5/x"
        );
        assert_eq!(
            with_database("postgresql://u@h:5", "x"),
            "postgresql://u@h:5/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
