//! Errors as RFC 9457 problem documents (`application/problem+json`), naming the field that
//! was wrong where there is one.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::ServerError;

/// One problem answer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short, fixed summary of the kind of problem.
    pub title: &'static str,
    /// What was wrong with this request.
    pub detail: String,
    /// The request field at fault (a JSON path such as `parent` or `devices[3].id`).
    pub field: Option<String>,
}

impl Problem {
    /// A problem with no field.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title,
            detail: detail.into(),
            field: None,
        }
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 401: no valid session or token.
    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "Not authenticated", detail)
    }

    /// 404: no such object, or nothing of the kind on this server.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    /// 403: authenticated, but the role may not do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "Not allowed", detail)
    }

    /// 422: a value the operation cannot take.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid value", detail)
    }

    /// 500: something failed inside the server.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Server error",
            e.to_string(),
        )
    }

    /// 400: the body or query is not what the operation takes.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "Bad request", detail)
    }

    /// The problem a server error makes, `field` being the request field the error is
    /// about, if the caller knows one.
    pub fn from_error(e: &ServerError, field: Option<&str>) -> Self {
        let p = match e {
            ServerError::UnknownGroup(_)
            | ServerError::UnknownDevice(_)
            | ServerError::Unknown { .. } => Problem::not_found(e.to_string()),
            ServerError::Duplicate { .. } => {
                Problem::new(StatusCode::CONFLICT, "Already exists", e.to_string())
            }
            ServerError::InUse(_) => Problem::new(StatusCode::CONFLICT, "In use", e.to_string()),
            ServerError::Cycle { .. } | ServerError::InvalidId { .. } | ServerError::Config(_) => {
                Problem::invalid(e.to_string())
            }
            e if e.is_retryable() => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                format!("{e}; nothing was changed, try again"),
            ),
            e => Problem::internal(e),
        };
        match field {
            Some(f) => p.field(f),
            None => p,
        }
    }
}

impl From<ServerError> for Problem {
    fn from(e: ServerError) -> Self {
        Problem::from_error(&e, None)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut doc = serde_json::json!({
            "type": "about:blank",
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(f) = self.field {
            doc["field"] = serde_json::Value::String(f);
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            doc.to_string(),
        )
            .into_response()
    }
}
