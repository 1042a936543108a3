//! The servers' codec: tonic-prost's encoder for responses, and a request
//! decoder that answers bytes which do not decode as the request message
//! (a string that is not UTF-8, a field with the wrong wire type, a truncated
//! field) INVALID_ARGUMENT `MALFORMED_MESSAGE`, naming the field prost names.
//! tonic-prost answers INTERNAL, which tells a partner the bug is ours and
//! fires our alarms.
//!
//! Requests over the size limit never reach a codec: tonic refuses them on
//! the length prefix (OUT_OF_RANGE) before decoding.

use std::marker::PhantomData;

use crossflow_api::{Problem, Violation};
use prost::Message;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// What prost's `DecodeError` display starts with.
const PREFIX: &str = "failed to decode Protobuf message: ";

/// Encodes `T` (a response) with tonic-prost; decodes `U` (a request) with
/// [`RequestDecoder`].
#[derive(Debug, Clone)]
pub struct RequestCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

/// Decodes `U`, answering a decode error with [`malformed`].
#[derive(Debug, Clone)]
pub struct RequestDecoder<U> {
    _pd: PhantomData<U>,
}

// === impl RequestCodec ===

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        RequestCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> RequestDecoder<U> {
        RequestDecoder { _pd: PhantomData }
    }
}

// === impl RequestDecoder ===

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| malformed(&e).into_status())
    }
}

/// INVALID_ARGUMENT `MALFORMED_MESSAGE` for a request that does not decode,
/// with a field violation on the outermost field prost names, if any.
///
/// prost keeps its (message, field) stack private; its display is
/// `failed to decode Protobuf message: Inner.field: Outer.field: reason`,
/// innermost first, so the stack is read back from there.
pub fn malformed(err: &prost::DecodeError) -> Problem {
    let text = err.to_string();
    let mut rest = text.strip_prefix(PREFIX).unwrap_or(&text);
    let mut stack = Vec::new();
    while let Some((head, tail)) = rest.split_once(": ") {
        match head.split_once('.') {
            Some((message, field)) if is_ident(message) && is_ident(field) => {
                stack.push((message, field.strip_prefix("r#").unwrap_or(field)));
                rest = tail;
            }
            _ => break,
        }
    }
    let path: Vec<String> = stack
        .iter()
        .rev()
        .map(|(m, f)| format!("{m}.{f}"))
        .collect();
    let at = if path.is_empty() {
        String::new()
    } else {
        format!("{}: ", path.join(": "))
    };
    let violations = stack
        .last()
        .map(|(_, field)| Violation {
            field: (*field).to_owned(),
            description: format!("does not decode as protobuf: {at}{rest}"),
        })
        .into_iter()
        .collect();
    Problem::malformed(
        format!("request does not decode as protobuf: {at}{rest}"),
        violations,
    )
}

/// A Rust identifier as prost names messages and fields (`r#` allowed).
fn is_ident(s: &str) -> bool {
    let s = s.strip_prefix("r#").unwrap_or(s);
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{CreateReferralRequest, PublishTagsRequest};
    use tonic::Code;
    use tonic_types::StatusExt;

    fn ld(tag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![tag << 3 | 2, u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    fn status_of<M: Message + Default + std::fmt::Debug>(bytes: &[u8]) -> Status {
        let err = M::decode(bytes).unwrap_err();
        malformed(&err).into_status()
    }

    fn fields(s: &Status) -> Vec<String> {
        s.get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn names_the_field_that_is_not_utf8() {
        let s = status_of::<CreateReferralRequest>(&ld(1, b"\xff"));
        assert_eq!(s.code(), Code::InvalidArgument);
        let info = s.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("MALFORMED_MESSAGE", "crossflow.v1")
        );
        assert_eq!(fields(&s), ["subject"]);
        assert_eq!(
            s.message(),
            "request does not decode as protobuf: CreateReferralRequest.subject: \
             invalid string value: data is not UTF-8 encoded"
        );
    }

    #[test]
    fn names_the_outermost_field_of_a_nested_error() {
        let tag = ld(1, b"\xfe");
        let s = status_of::<PublishTagsRequest>(&ld(2, &tag));
        assert_eq!(fields(&s), ["tags"]);
        assert!(
            s.message()
                .contains("PublishTagsRequest.tags: Tag.namespace: invalid string value"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn a_wrong_wire_type_and_a_truncated_field_name_their_field() {
        // Field 1 (subject) as a varint.
        let s = status_of::<CreateReferralRequest>(&[0x08, 0x07]);
        assert_eq!(fields(&s), ["subject"]);
        // Field 2 (to_partner) claims 10 bytes, has 1.
        let s = status_of::<CreateReferralRequest>(&[0x12, 0x0a, b'b']);
        assert_eq!(fields(&s), ["to_partner"]);
    }

    #[test]
    fn an_error_outside_any_field_has_no_violation() {
        // Key 0: field number 0 is invalid, before any field is known.
        let s = status_of::<CreateReferralRequest>(&[0x00]);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.get_details_error_info().unwrap().reason,
            "MALFORMED_MESSAGE"
        );
        assert!(fields(&s).is_empty());
        assert!(
            s.message().contains("invalid tag value: 0"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn is_ident_takes_prost_names_only() {
        assert!(is_ident("CreateReferralRequest"));
        assert!(is_ident("to_partner"));
        assert!(is_ident("r#type"));
        assert!(!is_ident("invalid string value"));
        assert!(!is_ident(""));
        assert!(!is_ident("9a"));
    }
}
