//! The routes in process, on a real SQLite store in a temporary file (cheap argon2 parameters).
//! The process-level tests (both engines, replicas, restarts, the CLI) are in `tests/`.

use super::*;
use crate::hasher::tests::cheap_params;
use crate::hasher::{Hasher, Peppers, StoredHash};
use crate::metrics::Metrics;
use crate::store::lockout::LockPolicy;
use crate::store::Store;
use serde_json::json;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tower::ServiceExt;
use zeroize::Zeroizing;

pub(crate) const PW: &str = "correct-horse-battery-staple";
const PIN_OK: &str = r#"{"user":"demo-user","kind":"pin","secret":"8299"}"#;

/// A temporary file path unique to this test process and `name`.
fn temp_path(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "credential-service-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

fn policy(max_failures: u32, lockout_secs: u64) -> LockPolicy {
    LockPolicy {
        max_failures,
        lockout: Duration::from_secs(lockout_secs),
        max_lock: Duration::from_secs(86_400),
        hard_after: 100,
    }
}

/// demo-user (password and PIN 8299), unlinked-user (same, no linked identity), no-pin-user.
pub(crate) async fn test_service(auth: Option<&str>, policy: LockPolicy) -> Service {
    let url = format!("sqlite://{}", temp_path("store.db").display());
    let store = Store::connect(&url, 4).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let hasher = Hasher::new(Peppers::none(), cheap_params(), 4, metrics.clone()).unwrap();
    let h = |s: &str| {
        let hasher = hasher.clone();
        let s = Zeroizing::new(s.to_owned());
        async move { hasher.hash(s).await.unwrap() }
    };
    let (pw, pin): (StoredHash, StoredHash) = (h(PW).await, h("8299").await);
    store
        .add_user(
            "demo-user",
            Some("pace-identity:demo-user"),
            Some(&pw),
            Some(&pin),
        )
        .await
        .unwrap();
    store
        .add_user("unlinked-user", None, Some(&pw), Some(&pin))
        .await
        .unwrap();
    let only_pw = h("pw").await;
    store
        .add_user("no-pin-user", Some("x"), Some(&only_pw), None)
        .await
        .unwrap();
    Service::new(store, hasher, policy, auth.map(str::to_owned), metrics)
}

async fn service(auth: Option<&str>) -> Arc<Service> {
    Arc::new(test_service(auth, policy(3, 300)).await)
}

#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    body: String,
    allow: Option<String>,
    www_authenticate: Option<String>,
}

async fn send(svc: &Arc<Service>, method: &str, url: &str, auth: Option<&str>, body: Body) -> Resp {
    let mut req = axum::http::Request::builder().method(method).uri(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = router(Arc::clone(svc))
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let (status, content_type, allow, www_authenticate) = {
        let h = |name| {
            res.headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
        };
        (
            res.status().as_u16(),
            h(header::CONTENT_TYPE).unwrap_or_default(),
            h(header::ALLOW),
            h(header::WWW_AUTHENTICATE),
        )
    };
    let body = to_bytes(res.into_body(), usize::MAX).await.unwrap();
    Resp {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
        allow,
        www_authenticate,
    }
}

async fn call(svc: &Arc<Service>, method: &str, url: &str, auth: Option<&str>, body: &str) -> Resp {
    send(svc, method, url, auth, Body::from(body.to_owned())).await
}

async fn stats(svc: &Arc<Service>) -> serde_json::Value {
    serde_json::from_str(&call(svc, "GET", STATS_PATH, None, "").await.body).unwrap()
}

/// A body that records whether anyone read it.
struct Watched(Arc<AtomicBool>, Option<Bytes>);

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.store(true, Ordering::SeqCst);
        Poll::Ready(self.1.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn auth_is_enforced_before_the_body_is_read() {
    let svc = service(Some("Bearer k")).await;
    for path in [VERIFY_PATH, CONSUME_PATH, FAILURE_PATH] {
        for presented in [None, Some("Bearer x"), Some("bearer k")] {
            let read = Arc::new(AtomicBool::new(false));
            let body = Body::new(Watched(read.clone(), Some(Bytes::from(PIN_OK))));
            let r = send(&svc, "POST", path, presented, body).await;
            assert_eq!(
                (r.status, r.body.as_str()),
                (401, r#"{"error":"unauthorized"}"#)
            );
            assert!(!read.load(Ordering::SeqCst), "{path}");
        }
    }
    let r = call(&svc, "POST", VERIFY_PATH, Some("Bearer k"), PIN_OK).await;
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"result":"valid"}"#));
    // Empty configured value means no auth.
    let open = Arc::new(test_service(Some(""), policy(3, 300)).await);
    assert!(open.auth().is_none());
    assert_eq!(
        call(&open, "POST", VERIFY_PATH, None, PIN_OK).await.status,
        200
    );
}

#[tokio::test]
async fn routes_and_errors() {
    let svc = service(None).await;
    let r = call(&svc, "GET", HEALTH_PATH, None, "").await; // not a verify call: not counted
    assert_eq!(
        (r.status, r.content_type.as_str(), r.body.as_str()),
        (200, TEXT, "ok")
    );
    let r = call(&svc, "GET", "/nope", None, "").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (404, r#"{"error":"not-found"}"#)
    );
    for path in [VERIFY_PATH, CONSUME_PATH, FAILURE_PATH] {
        let r = call(&svc, "GET", path, None, "").await;
        assert_eq!(
            (r.status, r.body.as_str(), r.allow.as_deref()),
            (405, r#"{"error":"method-not-allowed"}"#, Some("POST"))
        );
        let r = call(&svc, "PUT", path, None, PIN_OK).await;
        assert_eq!(r.status, 405);
    }
    let r = call(&svc, "POST", VERIFY_PATH, None, r#"{"user":"demo-user"}"#).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"{"error":"bad-request"}"#)
    );
    let huge = format!(
        r#"{{"user":"u","kind":"pin","secret":"{}"}}"#,
        "1".repeat(9000)
    );
    let r = call(&svc, "POST", VERIFY_PATH, None, &huge).await;
    assert_eq!(r.status, 400);
    // Query strings do not change the route.
    let r = call(&svc, "POST", "/v1/credentials/verify?x=1", None, PIN_OK).await;
    assert_eq!((r.status, r.content_type.as_str()), (200, JSON));
    assert_eq!(r.body, r#"{"result":"valid"}"#);
    for (path, body) in [
        (
            CONSUME_PATH,
            r#"{"user":"u","keyId":"k","step":-1,"expiresAtMs":1}"#,
        ),
        (FAILURE_PATH, r#"{"user":""}"#),
    ] {
        let r = call(&svc, "POST", path, None, body).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (400, r#"{"error":"bad-request"}"#)
        );
    }
    for path in [STATS_PATH, HEALTH_PATH, READY_PATH, METRICS_PATH, JWKS_PATH] {
        let r = call(&svc, "POST", path, None, "").await;
        assert_eq!(
            (r.status, r.allow.as_deref()),
            (405, Some("GET, HEAD")),
            "{path}"
        );
    }
    let r = call(&svc, "GET", READY_PATH, None, "").await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));
}

#[tokio::test]
async fn stats_count_store_checks_by_kind() {
    let svc = service(None).await;
    call(&svc, "POST", VERIFY_PATH, None, PIN_OK).await;
    call(
        &svc,
        "POST",
        VERIFY_PATH,
        None,
        r#"{"user":"unlinked-user","kind":"password","secret":"x"}"#,
    )
    .await;
    call(&svc, "POST", VERIFY_PATH, None, "not json").await; // never reaches the store
    call(&svc, "GET", HEALTH_PATH, None, "").await; // not a verify call: not counted
    let consume = r#"{"user":"demo-user","keyId":"k","step":1,"expiresAtMs":99999999999999}"#;
    call(&svc, "POST", CONSUME_PATH, None, consume).await;
    call(&svc, "POST", CONSUME_PATH, None, "{}").await; // malformed: not counted
    call(&svc, "POST", FAILURE_PATH, None, r#"{"user":"x"}"#).await;
    let r = call(&svc, "GET", STATS_PATH, None, "").await;
    assert_eq!(r.content_type, JSON);
    assert_eq!(
        r.body,
        r#"{"password_checks":1,"pin_checks":1,"requests":3,"jwks_requests":0,"introspections":0,"consumes":1,"failure_reports":1}"#
    );
}

async fn verify(svc: &Arc<Service>, user: &str, kind: &str, secret: &str) -> String {
    let body = json!({"user": user, "kind": kind, "secret": secret}).to_string();
    call(svc, "POST", VERIFY_PATH, None, &body).await.body
}

#[tokio::test]
async fn answers_each_result() {
    let svc = Arc::new(test_service(None, policy(2, 300)).await);
    assert_eq!(
        verify(&svc, "demo-user", "password", PW).await,
        r#"{"result":"valid"}"#
    );
    assert_eq!(
        verify(&svc, "demo-user", "pin", "8299").await,
        r#"{"result":"valid"}"#
    );
    assert_eq!(
        verify(&svc, "demo-user", "pin", "0000").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(
        verify(&svc, "no-pin-user", "pin", "pw").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(
        verify(&svc, "nobody", "password", PW).await,
        r#"{"result":"unknown-user"}"#
    );
    let missing = r#"{"result":"missing-linked-identity"}"#;
    assert_eq!(verify(&svc, "unlinked-user", "password", PW).await, missing);
    // Missing linked identity is answered without checking (or counting) the secret.
    assert_eq!(verify(&svc, "unlinked-user", "pin", "wrong").await, missing);
    assert_eq!(svc.store.budget("unlinked-user").await.unwrap(), None);
    // Second consecutive failure (password and PIN both count) locks demo-user.
    assert_eq!(
        verify(&svc, "demo-user", "password", "x").await,
        r#"{"result":"invalid"}"#
    );
    let locked = r#"{"result":"locked","retryAfterSeconds":300}"#;
    // Locked is answered without checking the secret: even the right one.
    assert_eq!(verify(&svc, "demo-user", "password", PW).await, locked);
    assert_eq!(verify(&svc, "demo-user", "pin", "8299").await, locked);
    assert_eq!(svc.store.budget("demo-user").await.unwrap().unwrap().0, 2);
}

#[tokio::test]
async fn valid_answer_resets_failures() {
    let svc = Arc::new(test_service(None, policy(3, 60)).await);
    assert_eq!(
        verify(&svc, "demo-user", "pin", "1").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(
        verify(&svc, "demo-user", "pin", "2").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(svc.store.budget("demo-user").await.unwrap().unwrap().0, 2);
    assert_eq!(
        verify(&svc, "demo-user", "pin", "8299").await,
        r#"{"result":"valid"}"#
    );
    assert_eq!(svc.store.budget("demo-user").await.unwrap().unwrap().0, 0);
}

#[tokio::test]
async fn locks_escalate_and_expire() {
    let svc = Arc::new(test_service(None, policy(2, 1)).await);
    for _ in 0..2 {
        verify(&svc, "demo-user", "pin", "0000").await;
    }
    let (n, until, hard) = svc.store.budget("demo-user").await.unwrap().unwrap();
    assert_eq!((n, hard), (2, false));
    let first = until - crate::store::now_ms();
    assert!((0..=1_000).contains(&first), "{first}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The lock expired, the count did not: two more failures engage a lock twice as long.
    assert_eq!(
        verify(&svc, "demo-user", "pin", "0000").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(
        verify(&svc, "demo-user", "pin", "0000").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(
        verify(&svc, "demo-user", "pin", "8299").await,
        r#"{"result":"locked","retryAfterSeconds":2}"#
    );
    assert_eq!(svc.store.budget("demo-user").await.unwrap().unwrap().0, 4);
}

#[tokio::test]
async fn parallel_guesses_cannot_slip_through() {
    let svc = Arc::new(test_service(None, policy(3, 300)).await);
    let guesses: Vec<_> = (0..20)
        .map(|i| {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move { verify(&svc, "demo-user", "pin", &format!("{i:04}")).await })
        })
        .collect();
    let mut invalid = 0;
    for g in guesses {
        if g.await.unwrap() == r#"{"result":"invalid"}"# {
            invalid += 1;
        }
    }
    // Only three got to check a secret.
    assert_eq!(invalid, 3);
    assert_eq!(svc.store.budget("demo-user").await.unwrap().unwrap().0, 3);
}

#[tokio::test]
async fn max_failures_one_locks_on_first_failure() {
    let svc = Arc::new(test_service(None, policy(1, 5)).await);
    assert_eq!(
        verify(&svc, "demo-user", "pin", "0000").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(
        verify(&svc, "demo-user", "pin", "8299").await,
        r#"{"result":"locked","retryAfterSeconds":5}"#
    );
}

#[tokio::test]
async fn hard_lock_at_the_ceiling() {
    let p = LockPolicy {
        hard_after: 3,
        ..policy(10, 300)
    };
    let svc = Arc::new(test_service(None, p).await);
    for _ in 0..3 {
        assert_eq!(
            verify(&svc, "demo-user", "pin", "0000").await,
            r#"{"result":"invalid"}"#
        );
    }
    let hard = r#"{"result":"locked","retryAfterSeconds":86400}"#;
    assert_eq!(verify(&svc, "demo-user", "pin", "8299").await, hard);
    assert!(svc.store.budget("demo-user").await.unwrap().unwrap().2);
    assert!(svc.store.unlock("demo-user").await.unwrap());
    assert_eq!(
        verify(&svc, "demo-user", "pin", "8299").await,
        r#"{"result":"valid"}"#
    );
}

#[tokio::test]
async fn one_time_codes() {
    let svc = Arc::new(test_service(None, policy(3, 300)).await);
    let far = crate::store::now_ms() + 60_000;
    let consume = |step: u64| {
        json!({"user":"demo-user","keyId":"k1","step":step,"expiresAtMs":far}).to_string()
    };
    let r = call(&svc, "POST", CONSUME_PATH, None, &consume(7)).await;
    assert_eq!((r.status, r.content_type.as_str()), (200, JSON));
    assert_eq!(r.body, r#"{"result":"consumed"}"#);
    assert_eq!(
        call(&svc, "POST", CONSUME_PATH, None, &consume(7))
            .await
            .body,
        r#"{"result":"used"}"#
    );
    assert_eq!(
        call(&svc, "POST", CONSUME_PATH, None, &consume(8))
            .await
            .body,
        r#"{"result":"consumed"}"#
    );
    // Wrong codes share the budget with wrong secrets; the one that reaches the limit locks.
    let fail = r#"{"user":"demo-user"}"#;
    assert_eq!(
        verify(&svc, "demo-user", "pin", "0000").await,
        r#"{"result":"invalid"}"#
    );
    assert_eq!(
        call(&svc, "POST", FAILURE_PATH, None, fail).await.body,
        r#"{"result":"counted"}"#
    );
    let locked = r#"{"result":"locked","retryAfterSeconds":300}"#;
    assert_eq!(
        call(&svc, "POST", FAILURE_PATH, None, fail).await.body,
        locked
    );
    assert_eq!(
        call(&svc, "POST", FAILURE_PATH, None, fail).await.body,
        locked
    );
    // Locked is answered before anything else, even for a fresh code.
    assert_eq!(
        call(&svc, "POST", CONSUME_PATH, None, &consume(9))
            .await
            .body,
        locked
    );
    assert_eq!(svc.store.code_rows("demo-user").await.unwrap(), 2);
    // A consumed code resets the budget like a valid secret.
    svc.store.unlock("demo-user").await.unwrap();
    call(&svc, "POST", FAILURE_PATH, None, fail).await;
    assert_eq!(svc.store.budget("demo-user").await.unwrap().unwrap().0, 1);
    call(&svc, "POST", CONSUME_PATH, None, &consume(10)).await;
    assert_eq!(svc.store.budget("demo-user").await.unwrap().unwrap().0, 0);
    // Failures count for ids that are not users.
    let ghost = r#"{"user":"not-a-user"}"#;
    assert_eq!(
        call(&svc, "POST", FAILURE_PATH, None, ghost).await.body,
        r#"{"result":"counted"}"#
    );
    let m = call(&svc, "GET", METRICS_PATH, None, "").await;
    assert!(m.content_type.starts_with("application/openmetrics-text"));
    for line in [
        r#"credential_service_otp_consumes_total{result="consumed"} 3"#,
        r#"credential_service_otp_consumes_total{result="used"} 1"#,
        r#"credential_service_otp_consumes_total{result="locked"} 1"#,
        r#"credential_service_otp_failures_total{result="locked"} 2"#,
        "credential_service_locks_total 1",
        r#"credential_service_checks_total{kind="pin",result="invalid"} 1"#,
    ] {
        assert!(m.body.contains(line), "{line} not in\n{}", m.body);
    }
}

#[tokio::test]
async fn jwks_is_served_from_the_file_as_it_is_now() {
    let path = temp_path("jwks.json");
    let _ = std::fs::remove_file(&path);
    let svc = Arc::new(
        test_service(None, policy(3, 300))
            .await
            .with_jwks_file(Some(path.clone())),
    );
    let unavailable = (
        503,
        JSON.to_owned(),
        r#"{"error":"jwks-unavailable"}"#.to_owned(),
    );
    let get = |svc: Arc<Service>| async move {
        let r = call(&svc, "GET", JWKS_PATH, None, "").await;
        (r.status, r.content_type, r.body)
    };

    // Missing file, then present, then rewritten (a key rotation), then gone again.
    assert_eq!(get(svc.clone()).await, unavailable);
    std::fs::write(&path, r#"{"keys":[{"kid":"one"}]}"#).unwrap();
    assert_eq!(
        get(svc.clone()).await,
        (
            200,
            JSON.to_owned(),
            r#"{"keys":[{"kid":"one"}]}"#.to_owned()
        )
    );
    std::fs::write(&path, "{\"keys\":[{\"kid\":\"two\"}]}\n").unwrap();
    assert_eq!(
        get(svc.clone()).await,
        (
            200,
            JSON.to_owned(),
            "{\"keys\":[{\"kid\":\"two\"}]}\n".to_owned()
        )
    );
    // Served as-is, even when it is not JSON: tests break it on purpose.
    std::fs::write(&path, "not json").unwrap();
    assert_eq!(
        get(svc.clone()).await,
        (200, JSON.to_owned(), "not json".to_owned())
    );
    let r = call(&svc, "HEAD", "/jwks.json?x=1", None, "").await;
    assert_eq!(r.status, 200);
    let r = call(&svc, "POST", JWKS_PATH, None, "").await;
    assert_eq!((r.status, r.allow.as_deref()), (405, Some("GET, HEAD")));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(get(svc.clone()).await, unavailable);

    // A directory cannot be read as a file.
    let dir = Arc::new(
        test_service(None, policy(3, 300))
            .await
            .with_jwks_file(Some(std::env::temp_dir())),
    );
    assert_eq!(get(dir).await, unavailable);
    // No --jwks-file at all.
    assert_eq!(get(service(None).await).await, unavailable);

    // Every call to the path counts, and only there; `requests` stays verify-only.
    let st = stats(&svc).await;
    assert_eq!(
        (&st["jwks_requests"], &st["requests"], &st["introspections"]),
        (&json!(7), &json!(0), &json!(0))
    );
}

mod introspection {
    use super::*;
    use crate::introspect::tests::{introspector, rs256_header, sign};
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    const SECRET: &str = "dev-only-introspection-secret";

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", STANDARD.encode(user_pass))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    async fn enabled() -> Arc<Service> {
        Arc::new(
            test_service(None, policy(3, 300))
                .await
                .with_introspector(Some(introspector(SECRET))),
        )
    }

    async fn introspect(svc: &Arc<Service>, auth: Option<&str>, body: &str) -> Resp {
        call(svc, "POST", INTROSPECT_PATH, auth, body).await
    }

    #[tokio::test]
    async fn disabled_without_a_secret() {
        let svc = service(None).await;
        for method in ["POST", "GET"] {
            let r = call(
                &svc,
                method,
                INTROSPECT_PATH,
                Some(&basic("otp-filter:")),
                "",
            )
            .await;
            assert_eq!(
                (r.status, r.body.as_str()),
                (503, r#"{"error":"introspection-disabled"}"#)
            );
        }
        assert_eq!(stats(&svc).await["introspections"], 2);
    }

    #[tokio::test]
    async fn client_must_authenticate_before_the_body_is_read() {
        let svc = enabled().await;
        let wrong_secret = basic("otp-filter:wrong");
        let wrong_client = basic(&format!("someone:{SECRET}"));
        for presented in [
            None,
            Some(wrong_secret.as_str()),
            Some(wrong_client.as_str()),
            Some(SECRET),
            Some("Bearer dev-only-introspection-secret"),
        ] {
            let read = Arc::new(AtomicBool::new(false));
            let body = Body::new(Watched(read.clone(), Some(Bytes::from("token=x"))));
            let r = send(&svc, "POST", INTROSPECT_PATH, presented, body).await;
            assert_eq!(
                (r.status, r.body.as_str(), r.www_authenticate.as_deref()),
                (
                    401,
                    r#"{"error":"invalid_client"}"#,
                    Some(r#"Basic realm="introspection""#)
                )
            );
            assert!(!read.load(Ordering::SeqCst));
        }
        let r = call(&svc, "GET", INTROSPECT_PATH, None, "").await;
        assert_eq!((r.status, r.allow.as_deref()), (405, Some("POST")));
    }

    #[tokio::test]
    async fn answers_active_or_inactive() {
        let svc = enabled().await;
        let auth = basic(&format!("otp-filter:{SECRET}"));
        let now = now();
        let token = sign(
            "rs256-DEV-ONLY.pem",
            &rs256_header(),
            &json!({"sub":"demo-user","scope":"openid user:otp:create","iat":now,
                    "exp":now + 300,"iss":"https://id.demo.invalid/realms/pace",
                    "aud":"otp-filter-demo"}),
        );
        // Plain and fully percent-encoded forms of the same token, with a type hint.
        let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
        for body in [
            format!("token={token}"),
            format!("token_type_hint=access_token&token={encoded}"),
        ] {
            let r = introspect(&svc, Some(&auth), &body).await;
            assert_eq!((r.status, r.content_type.as_str()), (200, JSON));
            let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(
                answer,
                json!({"active":true,"sub":"demo-user","scope":"openid user:otp:create",
                       "iat":now,"exp":now + 300,"iss":"https://id.demo.invalid/realms/pace",
                       "aud":"otp-filter-demo"})
            );
        }

        let expired = sign(
            "rs256-DEV-ONLY.pem",
            &rs256_header(),
            &json!({"sub":"demo-user","exp":now - 1}),
        );
        let other_key = sign(
            "rs256-next-DEV-ONLY.pem",
            &rs256_header(),
            &json!({"sub":"demo-user","exp":now + 300}),
        );
        for token in [expired.as_str(), other_key.as_str(), "not-a-jwt"] {
            let r = introspect(&svc, Some(&auth), &format!("token={token}")).await;
            assert_eq!((r.status, r.body.as_str()), (200, r#"{"active":false}"#));
        }

        for bad in [
            "",
            "token=",
            "token_type_hint=access_token",
            "token=%zz",
            "token=a&token=b",
        ] {
            let r = introspect(&svc, Some(&auth), bad).await;
            assert_eq!(
                (r.status, r.body.as_str()),
                (400, r#"{"error":"invalid_request"}"#)
            );
        }
        let huge = format!("token={}", "a".repeat(MAX_BODY_BYTES + 1));
        let r = introspect(&svc, Some(&auth), &huge).await;
        assert_eq!(r.status, 400);

        call(&svc, "GET", HEALTH_PATH, None, "").await;
        let st = stats(&svc).await;
        assert_eq!(
            (&st["introspections"], &st["requests"], &st["jwks_requests"]),
            (&json!(11), &json!(0), &json!(0))
        );
    }

    #[tokio::test]
    async fn delay_applies_before_answering() {
        let mut i = introspector(SECRET);
        i.delay = std::time::Duration::from_millis(150);
        let svc = Arc::new(
            test_service(None, policy(3, 300))
                .await
                .with_introspector(Some(i)),
        );
        let started = std::time::Instant::now();
        let r = introspect(
            &svc,
            Some(&basic(&format!("otp-filter:{SECRET}"))),
            "token=x",
        )
        .await;
        assert_eq!(r.body, r#"{"active":false}"#);
        assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    }
}
