//! HTTP errors: every failure becomes an `ErrorBody` with the status of its code `[FX-ERR-4]`.

use fluxy_protocol::http::ErrorBody;
use fluxy_protocol::request::RequestError;
use fluxy_protocol::server::ErrorFrame;
use fluxy_protocol::{DecodeError, ErrorCode};
use worker::{Headers, Response};

/// An HTTP error response.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}", code = .0.error.as_str(), message = .0.message)]
pub struct ApiError(pub ErrorBody);

/// Result of a route.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with `code` and a human-readable message.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> ApiError {
        ApiError(ErrorBody::new(code, msg))
    }

    /// Name the offending field or parameter.
    pub fn field(mut self, f: &str) -> ApiError {
        self.0.field = Some(f.to_owned());
        self
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.0.error
    }

    /// Storage or runtime failure (logged; the client sees `internal_error`).
    pub fn internal(what: &str, detail: impl std::fmt::Display) -> ApiError {
        worker::console_error!("fluxy-worker: {what}: {detail}");
        ApiError::new(ErrorCode::InternalError, format!("{what} failed"))
    }

    /// The HTTP response.
    pub fn into_response(self) -> worker::Result<Response> {
        json_response(self.0.error.http_status(), &self.0)
    }
}

impl From<worker::Error> for ApiError {
    fn from(e: worker::Error) -> ApiError {
        ApiError::internal("storage", e)
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> ApiError {
        ApiError(e.into())
    }
}

impl From<ErrorFrame> for ApiError {
    fn from(e: ErrorFrame) -> ApiError {
        ApiError(e.into())
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        ApiError(e.into())
    }
}

/// A JSON response with `status`.
pub fn json_response<T: serde::Serialize>(status: u16, body: &T) -> worker::Result<Response> {
    let text = serde_json::to_string(body)?;
    text_response(status, "application/json", text)
}

/// A response with a body and content type.
pub fn text_response(status: u16, content_type: &str, body: String) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", content_type)?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}
