use std::path::PathBuf;

/// Everything that can go wrong with key directories, certificates and ids.
///
/// Messages name the file, key or value at fault so an operator can act on
/// them without reading code. Secrets are never part of a message.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {action} {path}: {source}", path = path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "key directory {dir} is already initialised ({found} exists); refusing to overwrite keys",
        dir = dir.display(),
        found = found.display()
    )]
    AlreadyInitialised { dir: PathBuf, found: PathBuf },

    #[error(
        "key directory {dir} is not initialised: {manifest} does not exist",
        dir = dir.display(),
        manifest = manifest.display()
    )]
    NotInitialised { dir: PathBuf, manifest: PathBuf },

    #[error("{path}: {message}", path = path.display())]
    Manifest { path: PathBuf, message: String },

    #[error("key file {path} is invalid: {reason}", path = path.display())]
    KeyFile { path: PathBuf, reason: String },

    #[error(
        "key file {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 600 it)",
        path = path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },

    #[error("{what} is exhausted: {current} is the largest value a u32 can hold")]
    Exhausted { what: &'static str, current: u32 },

    #[error("the system random number generator failed")]
    Random,

    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId {
        kind: &'static str,
        value: String,
        reason: String,
    },

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidSlug {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("client certificate is not valid X.509 DER: {reason}")]
    Certificate { reason: String },

    #[error(
        "client certificate has no URI subject alternative name; expected spiffe://{federation}/partner/<slug> or spiffe://{federation}/operator/<name>"
    )]
    NoSpiffeId { federation: String },

    #[error(
        "client certificate has {count} URI subject alternative names ({uris}); exactly one spiffe:// URI is allowed"
    )]
    MultipleUris { count: usize, uris: String },

    #[error(
        "client certificate URI SAN {uri:?} is not a SPIFFE id for federation {federation:?}: {reason}"
    )]
    BadSpiffeId {
        uri: String,
        federation: String,
        reason: String,
    },

    #[error(
        "client certificate is a CA certificate (basicConstraints cA=true); a SPIFFE leaf certificate is required"
    )]
    CaCertificate,

    #[error("cannot generate {what}: {source}")]
    CertGeneration {
        what: String,
        #[source]
        source: rcgen::Error,
    },

    #[error(
        "{what} would be written to {file}, which another certificate of this PKI already uses"
    )]
    PkiNameClash { what: String, file: String },
}

impl IdentityError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        IdentityError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
