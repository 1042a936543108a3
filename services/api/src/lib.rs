//! What every crossflow gRPC adapter shares.
//!
//! - [`Caller`]: the authenticated principal, put into request extensions once
//!   at the edge (from the mTLS certificate) and read by every handler.
//! - [`Problem`]: how a domain error describes itself (a [`Kind`], a stable
//!   reason string, field violations, retry hints). Domain crates build
//!   problems; [`Problem::into_status`] is the one table that turns them into
//!   gRPC statuses with rich details (`google.rpc.ErrorInfo`, `BadRequest`,
//!   `QuotaFailure`, `RetryInfo`).
//! - [`check`]: input checks shared by the services (subjects, ids, request
//!   ids), so every RPC rejects the same bad field the same way.
//! - [`metrics`]: the domain metrics every service records (a no-op until
//!   the gateway installs an OpenTelemetry meter).
//! - [`rng`]: the seeded generator the crash harness and the load generator
//!   share, so their runs replay from a seed.
#![forbid(unsafe_code)]

pub mod check;
pub mod clock;
pub mod metrics;
pub mod rng;

use std::{fmt, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every crossflow error.
pub const ERROR_DOMAIN: &str = "crossflow.v1";

/// `ErrorInfo.reason` of a request that does not decode as protobuf.
pub const MALFORMED_MESSAGE: &str = "MALFORMED_MESSAGE";

/// `ErrorInfo.reason` of a request message over the server's size limit.
pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";

/// Who is calling, as proven by the client certificate's SPIFFE URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// `spiffe://<federation>/partner/<id>`: an enabled, configured partner.
    Partner(String),
    /// `spiffe://<federation>/operator/<name>`.
    Operator(String),
}

impl Caller {
    /// The partner id, or a `PERMISSION_DENIED` problem for operators.
    pub fn partner(&self) -> Result<&str, Problem> {
        match self {
            Caller::Partner(p) => Ok(p),
            Caller::Operator(_) => Err(Problem::new(
                Kind::PermissionDenied,
                "PARTNER_ONLY",
                "this method is for partner platforms; an operator certificate cannot call it",
            )),
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Partner(p) => write!(f, "partner/{p}"),
            Caller::Operator(o) => write!(f, "operator/{o}"),
        }
    }
}

/// The caller of a request, as set by the gateway's identity layer.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Problem::new(
            Kind::Unauthenticated,
            "NO_IDENTITY",
            "no verified client certificate identity",
        )
        .into_status()
    })
}

/// The partner calling a partner-only method.
pub fn partner<T>(req: &tonic::Request<T>) -> Result<String, Status> {
    let c = caller(req)?;
    c.partner().map(str::to_owned).map_err(Problem::into_status)
}

/// The retry hint of a call refused because the database is unavailable.
pub const STORE_RETRY: Duration = Duration::from_secs(1);

/// Classes of failure; each maps to exactly one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    FailedPrecondition,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Internal,
}

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// A refused quota, for `google.rpc.QuotaFailure`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaViolation {
    pub subject: String,
    pub description: String,
}

/// A domain failure, described for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    /// Stable, UPPER_SNAKE reason for `ErrorInfo.reason`: clients switch on it.
    pub reason: &'static str,
    pub message: String,
    pub violations: Vec<Violation>,
    pub metadata: Vec<(String, String)>,
    pub retry_after: Option<Duration>,
    pub quota: Vec<QuotaViolation>,
}

// === impl Problem ===

impl Problem {
    pub fn new(kind: Kind, reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            reason,
            message: message.into(),
            violations: Vec::new(),
            metadata: Vec::new(),
            retry_after: None,
            quota: Vec::new(),
        }
    }

    /// `INVALID_ARGUMENT` for bad fields, reason `INVALID_FIELD`.
    pub fn invalid(violations: Vec<Violation>) -> Problem {
        let message = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        Problem {
            violations,
            ..Problem::new(Kind::InvalidArgument, "INVALID_FIELD", message)
        }
    }

    /// `INVALID_ARGUMENT` for one bad field with its own reason.
    pub fn field(
        reason: &'static str,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Problem {
        let v = Violation {
            field: field.into(),
            description: description.into(),
        };
        Problem {
            reason,
            ..Problem::invalid(vec![v])
        }
    }

    /// `INVALID_ARGUMENT` for a request whose bytes do not decode as its
    /// protobuf message (reason `MALFORMED_MESSAGE`): a string that is not
    /// UTF-8, a field with the wrong wire type, a truncated field. Names the
    /// field when the decoder knows it.
    pub fn malformed(message: impl Into<String>, violations: Vec<Violation>) -> Problem {
        Problem {
            violations,
            ..Problem::new(Kind::InvalidArgument, MALFORMED_MESSAGE, message)
        }
    }

    /// `RESOURCE_EXHAUSTED` for a request message larger than the server
    /// accepts (reason `MESSAGE_TOO_LARGE`), as gRPC's status code table
    /// says. Metadata `limit_bytes` names the limit and `size_bytes` the
    /// size the request declared, so a partner can split or trim it.
    pub fn message_too_large(size: usize, limit: usize) -> Problem {
        Problem::new(
            Kind::ResourceExhausted,
            MESSAGE_TOO_LARGE,
            format!("request message is {size} bytes; the limit is {limit} bytes"),
        )
        .with("limit_bytes", limit.to_string())
        .with("size_bytes", size.to_string())
    }

    /// A storage or other internal failure: logged here, generic on the wire.
    pub fn internal(err: &dyn fmt::Display) -> Problem {
        tracing::error!(error = %err, "internal error");
        Problem::new(Kind::Internal, "INTERNAL", "internal error")
    }

    /// A storage failure: `UNAVAILABLE` (reason `STORE_UNAVAILABLE`, retry
    /// in a second) when the database is out of reach, since nothing was
    /// written and the same call may succeed then; otherwise
    /// [`Problem::internal`].
    pub fn storage(err: &dyn fmt::Display, unavailable: bool) -> Problem {
        if !unavailable {
            return Problem::internal(err);
        }
        tracing::warn!(error = %err, "store unavailable");
        Problem::new(
            Kind::Unavailable,
            "STORE_UNAVAILABLE",
            "the gateway's database is unavailable; nothing was written, retry later",
        )
        .retry_after(STORE_RETRY)
    }

    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Problem {
        self.metadata.push((key.into(), value.into()));
        self
    }

    pub fn retry_after(mut self, after: Duration) -> Problem {
        self.retry_after = Some(after);
        self
    }

    pub fn code(&self) -> Code {
        match self.kind {
            Kind::InvalidArgument => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::AlreadyExists => Code::AlreadyExists,
            Kind::PermissionDenied => Code::PermissionDenied,
            Kind::FailedPrecondition => Code::FailedPrecondition,
            Kind::ResourceExhausted => Code::ResourceExhausted,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::Unavailable => Code::Unavailable,
            Kind::Internal => Code::Internal,
        }
    }

    /// The one table from problems to gRPC statuses.
    pub fn into_status(self) -> Status {
        let code = self.code();
        let mut details = ErrorDetails::new();
        details.set_error_info(
            self.reason,
            ERROR_DOMAIN,
            self.metadata
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
        if !self.violations.is_empty() {
            details.set_bad_request(
                self.violations
                    .into_iter()
                    .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
                    .collect::<Vec<_>>(),
            );
        }
        if !self.quota.is_empty() {
            details.set_quota_failure(
                self.quota
                    .into_iter()
                    .map(|q| tonic_types::QuotaViolation::new(q.subject, q.description))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(after) = self.retry_after {
            details.set_retry_info(Some(after));
        }
        Status::with_error_details(code, self.message, details)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}: {}", self.kind, self.reason, self.message)
    }
}

impl From<Problem> for Status {
    fn from(p: Problem) -> Status {
        p.into_status()
    }
}
