//! Typed, panic-free decoding of tagged JSON frames (spec area FRM).

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

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
    /// A field has the wrong JSON type (or, for an enumerated field, an unknown value).
    #[error("wrong type{}: {message}", field.as_deref().map(|f| format!(" for `{f}`")).unwrap_or_default())]
    WrongType {
        /// The offending top-level field, camelCase as on the wire, when it could be determined.
        field: Option<String>,
        /// What serde reported.
        message: String,
    },
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
            DecodeError::MissingField(_) | DecodeError::WrongType { .. } => ErrorCode::InvalidFrame,
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
            DecodeError::WrongType { field, .. } => field.as_deref(),
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
    // "invalid type", "invalid value", "unknown variant", "invalid length", …: all are a field
    // whose JSON value does not fit its declared type.
    DecodeError::WrongType {
        field: None,
        message: msg,
    }
}

/// Most top-level keys tried when looking for the field to blame for a type error.
const MAX_BLAME_KEYS: usize = 32;

/// Deserialize `obj` as `T`; on a type error, find the top-level key to blame.
///
/// serde does not report the path of a type error, so the decoder removes one key at a time: the
/// first key whose removal changes the outcome is the offending one. This runs only on the
/// error path and tries at most [`MAX_BLAME_KEYS`] keys.
fn from_object<T: DeserializeOwned>(obj: Map<String, Value>, skip: &str) -> Result<T, DecodeError> {
    let value = Value::Object(obj);
    let err = match T::deserialize(&value) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let DecodeError::WrongType { message, .. } = classify_serde(&err) else {
        return Err(classify_serde(&err));
    };
    let Value::Object(obj) = value else {
        return Err(DecodeError::NotObject);
    };
    let field = obj
        .keys()
        .filter(|k| k.as_str() != skip)
        .take(MAX_BLAME_KEYS)
        .find(|k| {
            let without: Map<String, Value> = obj
                .iter()
                .filter(|(other, _)| other != k)
                .map(|(a, b)| (a.clone(), b.clone()))
                .collect();
            match T::deserialize(&Value::Object(without)) {
                Ok(_) => true,
                Err(e) => e.to_string() != message,
            }
        })
        .cloned();
    Err(DecodeError::WrongType { field, message })
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
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?;
    decode_value(value, known)
}

/// Decode an already-parsed JSON value tagged by `type`.
pub(crate) fn decode_value<T: DeserializeOwned>(
    value: Value,
    known: &[&str],
) -> Result<T, DecodeError> {
    let Value::Object(obj) = value else {
        return Err(DecodeError::NotObject);
    };
    match obj.get("type") {
        None => return Err(DecodeError::MissingField("type".into())),
        Some(Value::String(t)) => {
            if !known.contains(&t.as_str()) {
                return Err(DecodeError::UnknownType(t.clone()));
            }
        }
        Some(other) => {
            return Err(DecodeError::WrongType {
                field: Some("type".into()),
                message: format!("`type` must be a string, got {}", json_kind(other)),
            })
        }
    }
    from_object(obj, "type")
}

/// Decode a JSON body (HTTP) into `T`, classifying failures like frames.
pub fn decode_body<T: DeserializeOwned>(text: &str, limit: usize) -> Result<T, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::Syntax(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(DecodeError::NotObject);
    };
    from_object(obj, "")
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
