//! The oversize edge: a tower layer that answers a request message over the
//! size limit RESOURCE_EXHAUSTED `MESSAGE_TOO_LARGE`, like every other
//! refusal, instead of tonic's bare OUT_OF_RANGE.
//!
//! tonic checks a message's length prefix against the server's max decoding
//! size in its decoder (`codec/decode.rs`), before any codec runs, and answers
//! `Status::out_of_range("Error, decoded message length too large: ...")`
//! without details. For a unary call (every crossflow RPC) the decoder runs
//! in `Grpc::unary` before the handler, and the error leaves as a
//! trailers-only response (`Status::into_http`): the status is in the
//! response headers and the body is empty. This layer rewrites exactly that
//! response and passes every other response untouched.

use std::task::{Context, Poll};

use crossflow_api::Problem;
use futures_util::{TryFutureExt, future::MapOk};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

/// The start of tonic's message for a length prefix over the limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Layer that maps tonic's oversize refusal to `MESSAGE_TOO_LARGE`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OversizeLayer;

impl<S> Layer<S> for OversizeLayer {
    type Service = OversizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OversizeService { inner }
    }
}

/// Service produced by [`OversizeLayer`].
#[derive(Debug, Clone)]
pub struct OversizeService<S> {
    inner: S,
}

type Rewrite = fn(http::Response<Body>) -> http::Response<Body>;

impl<S, B> Service<http::Request<B>> for OversizeService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = MapOk<S::Future, Rewrite>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.inner.call(req).map_ok(rewrite as Rewrite)
    }
}

/// The response, with tonic's oversize refusal replaced by the
/// `MESSAGE_TOO_LARGE` status; any other response as it was.
fn rewrite(mut resp: http::Response<Body>) -> http::Response<Body> {
    let Some((size, limit)) = tonic_too_large(resp.headers()) else {
        return resp;
    };
    tracing::info!(size, limit, "request message over the size limit");
    let status = Problem::message_too_large(size, limit).into_status();
    let headers = resp.headers_mut();
    headers.remove(Status::GRPC_STATUS);
    headers.remove(Status::GRPC_MESSAGE);
    headers.remove(Status::GRPC_STATUS_DETAILS);
    // Cannot fail: the message is ASCII and the details are base64.
    if status.add_header(headers).is_err() {
        tracing::error!("MESSAGE_TOO_LARGE status does not fit in headers");
    }
    resp.extensions_mut().insert(status);
    resp
}

/// `(size, limit)` when the headers are tonic's trailers-only oversize
/// refusal: OUT_OF_RANGE, no details, tonic's exact message.
fn tonic_too_large(headers: &http::HeaderMap) -> Option<(usize, usize)> {
    let code = headers.get(Status::GRPC_STATUS)?;
    if Code::from_bytes(code.as_bytes()) != Code::OutOfRange
        // Our own statuses always carry details; tonic's never does. (And
        // `Status::from_header_map` panics on details that are not base64.)
        || headers.contains_key(Status::GRPC_STATUS_DETAILS)
    {
        return None;
    }
    let status = Status::from_header_map(headers)?;
    parse_too_large(status.message())
}

/// Parses `Error, decoded message length too large: found {size} bytes, the
/// limit is: {limit} bytes` (tonic 0.14, `codec/decode.rs`).
fn parse_too_large(message: &str) -> Option<(usize, usize)> {
    let rest = message.strip_prefix(TONIC_TOO_LARGE)?;
    let (size, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((size.parse().ok()?, limit.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    const TONIC: &str =
        "Error, decoded message length too large: found 5242893 bytes, the limit is: 4194304 bytes";

    #[test]
    fn tonic_oversize_refusal_becomes_message_too_large() {
        let resp = rewrite(Status::out_of_range(TONIC).into_http());
        let s = Status::from_header_map(resp.headers()).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "request message is 5242893 bytes; the limit is 4194304 bytes"
        );
        let info = s.get_details_error_info().unwrap();
        assert_eq!(info.reason, "MESSAGE_TOO_LARGE");
        assert_eq!(info.domain, "crossflow.v1");
        assert_eq!(info.metadata["limit_bytes"], "4194304");
        assert_eq!(info.metadata["size_bytes"], "5242893");
        let ext = resp.extensions().get::<Status>().unwrap();
        assert_eq!(ext.code(), Code::ResourceExhausted);
    }

    #[test]
    fn everything_else_passes_untouched() {
        let others = [
            Status::out_of_range("index out of range"),
            Status::out_of_range(TONIC.replace("found 5242893", "found many")),
            Status::out_of_range(format!("{TONIC} and more")),
            Status::internal(TONIC),
            Problem::new(crossflow_api::Kind::InvalidArgument, "X", TONIC).into_status(),
            Status::with_error_details(
                Code::OutOfRange,
                TONIC,
                tonic_types::ErrorDetails::with_error_info(
                    "X",
                    "other",
                    std::collections::HashMap::new(),
                ),
            ),
        ];
        for s in others {
            let before = s.clone().into_http::<Body>();
            let after = rewrite(s.into_http());
            assert_eq!(before.headers(), after.headers());
        }
        let ok = rewrite(http::Response::new(Body::empty()));
        assert!(ok.headers().is_empty());
    }
}
