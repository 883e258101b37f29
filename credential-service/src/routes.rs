//! HTTP routing and answers on axum: every path, its methods, the error shape, and one log
//! line per request (never a body, a secret, a token or the authorization header).

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tracing::{error, info};

use crate::auth::auth_matches;
use crate::introspect::{token_param, Decision};
use crate::metrics::bump;
use crate::protocol::{
    error_json, parse_consume_body, parse_failure_body, parse_verify_body, Kind, MAX_BODY_BYTES,
};
use crate::service::Service;

pub const VERIFY_PATH: &str = "/v1/credentials/verify";
pub const CONSUME_PATH: &str = "/v1/otp/consume";
pub const FAILURE_PATH: &str = "/v1/otp/failure";
pub const STATS_PATH: &str = "/v1/stats";
pub const HEALTH_PATH: &str = "/healthz";
pub const READY_PATH: &str = "/readyz";
pub const METRICS_PATH: &str = "/metrics";
pub const JWKS_PATH: &str = "/jwks.json";
pub const INTROSPECT_PATH: &str = "/v1/introspect";

/// Largest JWKS file served. Dev key sets are a few KiB; this only bounds a mistake such as
/// pointing `--jwks-file` at something huge.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;
/// How long a request body may take to arrive once the handler asks for it.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An answer, plus what to log about it (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// `Allow` header value, for 405 answers.
    pub allow: Option<&'static str>,
    /// `WWW-Authenticate` header value, for 401 answers that name a scheme.
    pub www_authenticate: Option<&'static str>,
    /// The `user` of a parsed request.
    pub user: Option<String>,
    /// The `kind` of a parsed verify request.
    pub kind: Option<Kind>,
    /// The verdict's `result`, the error code, or `ok`.
    pub result: &'static str,
}

impl Answer {
    fn error(status: u16, code: &'static str) -> Self {
        Answer {
            status,
            content_type: JSON,
            body: error_json(code),
            allow: None,
            www_authenticate: None,
            user: None,
            kind: None,
            result: code,
        }
    }

    fn ok(content_type: &'static str, body: String) -> Self {
        Answer {
            status: 200,
            content_type,
            body,
            allow: None,
            www_authenticate: None,
            user: None,
            kind: None,
            result: "ok",
        }
    }

    fn verdict(body: String, result: &'static str, user: &str) -> Self {
        Answer {
            result,
            user: Some(user.to_owned()),
            ..Answer::ok(JSON, body)
        }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        Answer {
            allow: Some(allow),
            ..Answer::error(405, "method-not-allowed")
        }
    }

    /// A store that did not answer: a fault (503), never a verdict.
    fn store_down(e: &sqlx::Error) -> Self {
        error!(error = %e, "store error");
        Answer::error(503, "store-unavailable")
    }
}

type Svc = State<Arc<Service>>;

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route(VERIFY_PATH, any(verify))
        .route(CONSUME_PATH, any(consume))
        .route(FAILURE_PATH, any(failure))
        .route(STATS_PATH, any(stats))
        .route(HEALTH_PATH, any(health))
        .route(READY_PATH, any(ready))
        .route(METRICS_PATH, any(metrics))
        .route(JWKS_PATH, any(jwks))
        .route(INTROSPECT_PATH, any(introspect))
        .fallback(not_found)
        .with_state(service)
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Converts an answer and logs the request's line.
fn finish(answer: Answer, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    info!(
        method = %method,
        path = %shown(Some(uri.path()), 200),
        request_id = %shown(header_str(headers, "request-id"), 128),
        user = %shown(answer.user.as_deref(), 128),
        kind = answer.kind.map_or("-", Kind::as_str),
        status = answer.status,
        result = answer.result,
        "request"
    );
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        answer.body,
    )
        .into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(answer.content_type),
    );
    if let Some(allow) = answer.allow {
        h.insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(challenge) = answer.www_authenticate {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

/// A client-supplied value for the log: at most `max` characters, quoted, with quotes,
/// backslashes and control characters escaped (so it cannot forge a line), or `-`.
fn shown(v: Option<&str>, max: usize) -> String {
    let Some(s) = v else { return "-".to_owned() };
    let cut = match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    };
    format!("{cut:?}")
}

/// The body, at most [`MAX_BODY_BYTES`], within [`BODY_TIMEOUT`]; `None` for anything else.
async fn read_body(body: Body) -> Option<Bytes> {
    match tokio::time::timeout(BODY_TIMEOUT, to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => Some(bytes),
        _ => None,
    }
}

/// The shared checks of the POST endpoints guarded by `CREDENTIAL_SERVICE_AUTH`: the method,
/// then the auth (before the body is read), then the body.
async fn guarded_body(
    svc: &Service,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Answer> {
    if method != Method::POST {
        return Err(Answer::method_not_allowed("POST"));
    }
    if let Some(expected) = svc.auth() {
        if !auth_matches(expected, header_str(headers, "authorization")) {
            return Err(Answer::error(401, "unauthorized"));
        }
    }
    read_body(body)
        .await
        .ok_or_else(|| Answer::error(400, "bad-request"))
}

async fn verify(
    State(svc): Svc,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Every call to the path counts, whatever its outcome.
    bump(&svc.stats.requests);
    let answer = async {
        let bytes = guarded_body(&svc, &method, &headers, body).await?;
        let req = parse_verify_body(&bytes).map_err(|_| Answer::error(400, "bad-request"))?;
        let verdict = svc.check(&req).await.map_err(|e| Answer::store_down(&e))?;
        Ok::<_, Answer>(Answer {
            kind: Some(req.kind),
            ..Answer::verdict(verdict.to_json(), verdict.result_str(), &req.user)
        })
    }
    .await
    .unwrap_or_else(|a| a);
    finish(answer, &method, &uri, &headers)
}

async fn consume(
    State(svc): Svc,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = async {
        let bytes = guarded_body(&svc, &method, &headers, body).await?;
        let req = parse_consume_body(&bytes).map_err(|_| Answer::error(400, "bad-request"))?;
        let verdict = svc
            .consume(&req)
            .await
            .map_err(|e| Answer::store_down(&e))?;
        Ok::<_, Answer>(Answer::verdict(
            verdict.to_json(),
            verdict.result_str(),
            &req.user,
        ))
    }
    .await
    .unwrap_or_else(|a| a);
    finish(answer, &method, &uri, &headers)
}

async fn failure(
    State(svc): Svc,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = async {
        let bytes = guarded_body(&svc, &method, &headers, body).await?;
        let req = parse_failure_body(&bytes).map_err(|_| Answer::error(400, "bad-request"))?;
        let verdict = svc
            .report_failure(&req)
            .await
            .map_err(|e| Answer::store_down(&e))?;
        Ok::<_, Answer>(Answer::verdict(
            verdict.to_json(),
            verdict.result_str(),
            &req.user,
        ))
    }
    .await
    .unwrap_or_else(|a| a);
    finish(answer, &method, &uri, &headers)
}

fn get_only(method: &Method, f: impl FnOnce() -> Answer) -> Answer {
    match *method {
        Method::GET | Method::HEAD => f(),
        _ => Answer::method_not_allowed("GET, HEAD"),
    }
}

async fn stats(State(svc): Svc, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let answer = get_only(&method, || Answer::ok(JSON, svc.stats.to_json()));
    finish(answer, &method, &uri, &headers)
}

/// The process is up (liveness): no store query.
async fn health(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let answer = get_only(&method, || Answer::ok(TEXT, "ok".to_owned()));
    finish(answer, &method, &uri, &headers)
}

/// The store answers a query (readiness), within 2 s.
async fn ready(State(svc): Svc, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let answer = match method {
        Method::GET | Method::HEAD => {
            match tokio::time::timeout(Duration::from_secs(2), svc.store.ping()).await {
                Ok(Ok(())) => Answer::ok(TEXT, "ready".to_owned()),
                Ok(Err(e)) => Answer::store_down(&e),
                Err(_) => Answer::error(503, "store-unavailable"),
            }
        }
        _ => Answer::method_not_allowed("GET, HEAD"),
    };
    finish(answer, &method, &uri, &headers)
}

async fn metrics(State(svc): Svc, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let answer = get_only(&method, || Answer::ok(OPENMETRICS, svc.metrics.render()));
    finish(answer, &method, &uri, &headers)
}

/// The JWKS file's current contents, unchecked (tests serve broken sets on purpose). Read anew
/// each time so tests can rotate keys by rewriting the file.
async fn jwks(State(svc): Svc, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    bump(&svc.stats.jwks_requests);
    let answer = get_only(&method, || {
        let read = svc.jwks_file.as_ref().and_then(|path| {
            let mut body = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_JWKS_BYTES + 1).read_to_string(&mut body))
                .ok()
                .filter(|n| *n as u64 <= MAX_JWKS_BYTES)
                .map(|_| body)
        });
        match read {
            Some(body) => Answer::ok(JSON, body),
            None => Answer::error(503, "jwks-unavailable"),
        }
    });
    finish(answer, &method, &uri, &headers)
}

/// RFC 7662: client authentication first, then `active` from the token alone.
async fn introspect(
    State(svc): Svc,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    bump(&svc.stats.introspections);
    let answer = async {
        let Some(introspector) = &svc.introspector else {
            return Answer::error(503, "introspection-disabled");
        };
        if !introspector.delay.is_zero() {
            tokio::time::sleep(introspector.delay).await;
        }
        if method != Method::POST {
            return Answer::method_not_allowed("POST");
        }
        if !introspector.client_ok(header_str(&headers, "authorization")) {
            // RFC 6749 §5.2: a client that tried Basic gets 401 and the scheme to use.
            return Answer {
                www_authenticate: Some(r#"Basic realm="introspection""#),
                ..Answer::error(401, "invalid_client")
            };
        }
        let token = read_body(body).await.and_then(|b| token_param(&b).ok());
        let Some(token) = token else {
            return Answer::error(400, "invalid_request");
        };
        // A clock before 1970 cannot tell expiry: fail closed.
        let decision = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(Decision::Inactive, |now| {
                introspector.decide(&token, now.as_secs())
            });
        Answer {
            // The token's subject, for the log line; never the token.
            user: decision.sub().map(str::to_owned),
            result: match decision {
                Decision::Active(_) => "active",
                Decision::Inactive => "inactive",
            },
            ..Answer::ok(JSON, decision.to_json())
        }
    }
    .await;
    finish(answer, &method, &uri, &headers)
}

async fn not_found(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    finish(Answer::error(404, "not-found"), &method, &uri, &headers)
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
