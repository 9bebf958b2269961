//! Typed, panic-free decoding of tagged JSON frames (spec area FRM).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::codes::ErrorCode;
use crate::common::MAX_FRAME_BYTES;

/// What was wrong with a field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    /// The string does not match this regex.
    Pattern(&'static str),
    /// The length is outside `min..=max` characters (or items).
    Length(usize, usize),
    /// Content empty after trimming or longer than the limit.
    Content(usize),
    /// Any other rule.
    Other(String),
}

/// Why a frame could not be decoded. Each maps to one [`ErrorCode`] `[FX-FRM-3]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the frame limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the frame in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Not JSON.
    #[error("not valid JSON: {0}")]
    Syntax(String),
    /// JSON, but not an object.
    #[error("frame is not a JSON object")]
    NotObject,
    /// The `type` (or another required field) is absent.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// `type` is not a string naming a known frame.
    #[error("unknown frame type `{0}`")]
    UnknownType(String),
    /// A field has the wrong JSON type.
    #[error("wrong type: {0}")]
    WrongType(String),
    /// A field has an invalid value.
    #[error("invalid value for `{field}`: {problem:?}")]
    InvalidValue {
        /// The field name, camelCase as on the wire.
        field: String,
        /// What is wrong.
        problem: FieldProblem,
    },
}

impl DecodeError {
    /// An invalid-value error.
    pub fn invalid(field: &str, problem: FieldProblem) -> DecodeError {
        DecodeError::InvalidValue {
            field: field.to_owned(),
            problem,
        }
    }

    /// The error code a server sends for this decode failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            DecodeError::Syntax(_) | DecodeError::NotObject => ErrorCode::MalformedFrame,
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::MissingField(_) | DecodeError::WrongType(_) => ErrorCode::InvalidFrame,
            DecodeError::InvalidValue {
                problem: FieldProblem::Content(_),
                ..
            } => ErrorCode::InvalidContent,
            DecodeError::InvalidValue { .. } => ErrorCode::InvalidFrame,
        }
    }

    /// The offending field, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::MissingField(f) => Some(f),
            DecodeError::InvalidValue { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn classify_serde(e: &serde_json::Error) -> DecodeError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        return DecodeError::MissingField(name.to_owned());
    }
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        return DecodeError::WrongType(msg);
    }
    if msg.starts_with("unknown variant") {
        return DecodeError::WrongType(msg);
    }
    DecodeError::WrongType(msg)
}

/// Decode a frame tagged by `type` whose tag must be in `known`.
///
/// Unknown fields are ignored (forward compatibility, `[FX-FRM-4]`); unknown types are errors.
pub(crate) fn decode_tagged<T: DeserializeOwned>(
    text: &str,
    known: &[&str],
    enforce_size: bool,
) -> Result<T, DecodeError> {
    if enforce_size && text.len() > MAX_FRAME_BYTES {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit: MAX_FRAME_BYTES,
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?;
    decode_value(value, known)
}

/// Decode an already-parsed JSON value tagged by `type`.
pub(crate) fn decode_value<T: DeserializeOwned>(
    value: Value,
    known: &[&str],
) -> Result<T, DecodeError> {
    let obj = value.as_object().ok_or(DecodeError::NotObject)?;
    match obj.get("type") {
        None => return Err(DecodeError::MissingField("type".into())),
        Some(Value::String(t)) => {
            if !known.contains(&t.as_str()) {
                return Err(DecodeError::UnknownType(t.clone()));
            }
        }
        Some(other) => {
            return Err(DecodeError::WrongType(format!(
                "`type` must be a string, got {}",
                json_kind(other)
            )))
        }
    }
    serde_json::from_value(value).map_err(|e| classify_serde(&e))
}

/// Decode a JSON body (HTTP) into `T`, classifying failures like frames.
pub fn decode_body<T: DeserializeOwned>(text: &str, limit: usize) -> Result<T, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?;
    if !value.is_object() {
        return Err(DecodeError::NotObject);
    }
    serde_json::from_value(value).map_err(|e| classify_serde(&e))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
