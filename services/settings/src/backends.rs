//! `[gateway.store]` and `[gateway.quotas]`: where state lives. The embedded
//! SQLite store and in-memory quotas by default; PostgreSQL and Redis for
//! several replicas (docs/DEPLOY.md).
//!
//! A URL may name a password, so it can come from an environment variable
//! (`url_env`) instead of the file, and every message that shows a URL
//! shows it through [`redact_url`].

use std::fmt;

use crate::raw;

/// Where the gateway keeps its durable state.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// The embedded SQLite store in `gateway.data_dir`.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by every replica.
    Postgres {
        /// The connection URL, with its password if it has one: never
        /// print it but through [`redact_url`].
        url: String,
    },
}

/// Where rate limits, daily caps and hop counters are kept.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum QuotaBackend {
    /// In this process's memory (daily counters written behind to the
    /// store).
    #[default]
    Local,
    /// A Redis-protocol server shared by every replica.
    Redis {
        /// The connection URL (see [`StoreBackend::Postgres::url`]).
        url: String,
        on_unavailable: raw::OnUnavailable,
    },
}

// === impl StoreBackend ===

impl fmt::Debug for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreBackend::Sqlite => f.write_str("Sqlite"),
            StoreBackend::Postgres { url } => f
                .debug_struct("Postgres")
                .field("url", &redact_url(url))
                .finish(),
        }
    }
}

// === impl QuotaBackend ===

impl fmt::Debug for QuotaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaBackend::Local => f.write_str("Local"),
            QuotaBackend::Redis {
                url,
                on_unavailable,
            } => f
                .debug_struct("Redis")
                .field("url", &redact_url(url))
                .field("on_unavailable", on_unavailable)
                .finish(),
        }
    }
}

/// `url` with the password of its user info replaced by `***`
/// (`postgresql://ops:***@db:5432/x`); anything else is kept.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_owned(),
    };
    format!("{scheme}://{user}@{host}{tail}")
}

/// The `host:port` part of `url` (without user info), for messages.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_owned()
}

/// Checks a URL of one of `schemes`; the problem, if any.
pub(crate) fn check_url(url: &str, schemes: &[&str]) -> Option<String> {
    let shown = redact_url(url);
    let Some((scheme, _)) = url.split_once("://") else {
        return Some(format!(
            "must be a URL like {}://host:port/..., got \"{shown}\"",
            schemes[0]
        ));
    };
    if !schemes.contains(&scheme) {
        return Some(format!(
            "must start with {}, got \"{shown}\"",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let host = url_host(url);
    let name = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    if name.is_empty() {
        return Some(format!("must name a host, got \"{shown}\""));
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Some(format!("has a bad port {port:?} in \"{shown}\""));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_and_hosts_extracted() {
        assert_eq!(
            redact_url("postgresql://ops:s3cret@db.internal:5432/fed?sslmode=require"),
            "postgresql://ops:***@db.internal:5432/fed?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://ops@db:5432/fed"),
            "postgresql://ops@db:5432/fed"
        );
        assert_eq!(
            redact_url("redis://:pw@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(url_host("postgresql://ops:s3cret@db:5432/fed"), "db:5432");
        assert_eq!(url_host("redis://cache"), "cache");
    }

    #[test]
    fn urls_are_checked() {
        let pg = ["postgresql", "postgres"];
        assert_eq!(check_url("postgresql://u@h:5432/db", &pg), None);
        assert_eq!(check_url("postgres://h/db", &pg), None);
        assert!(
            check_url("mysql://h/db", &pg)
                .unwrap()
                .contains("postgresql://")
        );
        assert!(check_url("postgresql:///db", &pg).unwrap().contains("host"));
        assert!(
            check_url("postgresql://h:port/db", &pg)
                .unwrap()
                .contains("port")
        );
        let shown = check_url("mysql://u:pw@h/db", &pg).unwrap();
        assert!(!shown.contains("pw"), "{shown}");
    }
}
