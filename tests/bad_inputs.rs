//! Malformed and hostile requests, table-driven, against real Envoy: each row says exactly what
//! must come back. `code: None` rows must not be answered by the filter at all (they reach the
//! route's upstream, or Envoy itself refuses them); no row may ever produce a 201.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::*;

const P: &str = "/user/2021-2/user/otp";

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn case(name: &'static str, raw: Vec<u8>, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        raw,
        status,
        code,
    }
}

/// A request with the good token and JSON content type, plus `extra` headers and `body`.
fn post(path: &str, auth: &str, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut headers = vec![
        ("authorization", auth),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    request("POST", path, &headers, Some(body))
}

/// Raw bytes, for what `request` cannot express (duplicate headers, bad framing, binary).
fn raw(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head.replace('\n', "\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

#[test]
fn bad_input_table() {
    // Most rows are wrong PINs: raise the filter's throttle and the service's lockout, which have
    // their own tests.
    let service = CredentialService::start(&["--max-failures", "1000"]);
    let config = demo_config(service.port, |c| {
        c.replace(r#""max_failures": 5"#, r#""max_failures": 100"#)
    });
    let envoy = Envoy::start(&config);
    envoy.wait_for_keys();
    let port = envoy.port;
    let token = token();
    let auth = format!("Bearer {token}");
    let a = auth.as_str();
    let pin = r#"{"pin":"0000"}"#;
    let nested = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let deep_object = format!(r#"{{"pin":"0000","x":{}}}"#, nested);
    let long_pin = format!(r#"{{"pin":"{}"}}"#, "1".repeat(3000));
    let huge = format!(r#"{{"pin":"{}"}}"#, "1".repeat(5000));
    let big_header = "x".repeat(70_000);

    let cases = vec![
        // Methods on the route.
        case("GET", request("GET", P, &[("authorization", a)], None), 405, Some("method-not-allowed")),
        case("PUT", post(P, a, &[], pin).iter().skip(4).fold(b"PUT ".to_vec(), |mut v, b| { v.push(*b); v }), 405, Some("method-not-allowed")),
        case("DELETE", request("DELETE", P, &[("authorization", a)], None), 405, Some("method-not-allowed")),
        case("PATCH", request("PATCH", P, &[("authorization", a), ("content-type", "application/json")], Some(pin)), 405, Some("method-not-allowed")),
        case("OPTIONS", request("OPTIONS", P, &[], None), 405, Some("method-not-allowed")),
        case("lower-case post", request("post", P, &[("authorization", a)], Some(pin)), 400, None),
        // Paths: normalized by Envoy before the filter sees them, so variants still hit the filter.
        case("dot segment", post("/user/2021-2/user/./otp", a, &[], pin), 404, Some("invalid-credentials")),
        case("dot-dot segment", post("/user/2021-2/user/x/../otp", a, &[], pin), 404, Some("invalid-credentials")),
        case("double slash", post("/user/2021-2//user/otp", a, &[], pin), 404, Some("invalid-credentials")),
        case("percent-encoded letter", post("/user/2021-2/user/%6Ftp", a, &[], pin), 404, Some("invalid-credentials")),
        case("escaped slash", post("/user/2021-2/user%2Fotp", a, &[], pin), 400, None),
        case("query string", post("/user/2021-2/user/otp?pin=1&debug=1", a, &[], pin), 404, Some("invalid-credentials")),
        case("trailing slash is another resource", post("/user/2021-2/user/otp/", a, &[], pin), 404, None),
        case("upper-case path", post("/USER/2021-2/USER/OTP", a, &[], pin), 200, None),
        case("unknown version", post("/user/1999-1/user/otp", a, &[], pin), 404, None),
        // Authorization.
        case("two Authorization headers", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: Bearer x.y.z\nauthorization: {a}\ncontent-type: application/json\ncontent-length: 14\n\n"), pin.as_bytes()), 401, Some("token-malformed")),
        case("Authorization split over two headers, good one first", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\nauthorization: Bearer x.y.z\ncontent-type: application/json\ncontent-length: 14\n\n"), pin.as_bytes()), 401, Some("token-malformed")),
        case("empty Authorization", post(P, "", &[], pin), 401, Some("token-missing")),
        case("Bearer only", post(P, "Bearer", &[], pin), 401, Some("token-malformed")),
        case("Bearer and spaces", post(P, "Bearer    ", &[], pin), 401, Some("token-malformed")),
        case("tab separator", post(P, &format!("Bearer\t{token}"), &[], pin), 401, Some("token-missing")),
        case("token with a comma", post(P, &format!("Bearer {token},x"), &[], pin), 401, Some("token-malformed")),
        case("token with quotes", post(P, &format!("Bearer \"{token}\""), &[], pin), 401, Some("token-malformed")),
        case("Digest scheme", post(P, "Digest username=\"demo\"", &[], pin), 401, Some("token-missing")),
        case("binary in Authorization", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: Bearer \u{00e9}\u{00ff}\ncontent-type: application/json\ncontent-length: 14\n\n"), pin.as_bytes()), 401, Some("token-malformed")),
        case("oversized header", post(P, a, &[("x-big", &big_header)], pin), 431, None),
        // Accept.
        case("Accept text/html", post(P, a, &[("accept", "text/html")], pin), 406, Some("not-acceptable")),
        case("Accept JSON:API with ext only", post(P, a, &[("accept", "application/vnd.api+json; ext=\"x\"")], pin), 406, Some("not-acceptable")),
        case("Accept q=0 only", post(P, a, &[("accept", "application/json;q=0")], pin), 406, Some("not-acceptable")),
        case("Accept garbage", post(P, a, &[("accept", ";;;")], pin), 406, Some("not-acceptable")),
        case("Accept wildcard", post(P, a, &[("accept", "*/*")], pin), 404, Some("invalid-credentials")),
        case("Accept list with JSON", post(P, a, &[("accept", "text/html, application/json;q=0.1")], pin), 404, Some("invalid-credentials")),
        // Content-Type.
        case("no Content-Type", request("POST", P, &[("authorization", a)], Some(pin)), 415, Some("unsupported-media-type")),
        case("text/plain", request("POST", P, &[("authorization", a), ("content-type", "text/plain")], Some(pin)), 415, Some("unsupported-media-type")),
        case("form", request("POST", P, &[("authorization", a), ("content-type", "application/x-www-form-urlencoded")], Some("pin=0000")), 415, Some("unsupported-media-type")),
        case("JSON latin1", request("POST", P, &[("authorization", a), ("content-type", "application/json; charset=latin1")], Some(pin)), 415, Some("unsupported-media-type")),
        case("JSON:API with params", request("POST", P, &[("authorization", a), ("content-type", "application/vnd.api+json; ext=x")], Some(pin)), 415, Some("unsupported-media-type")),
        case("JSON upper case", request("POST", P, &[("authorization", a), ("content-type", "APPLICATION/JSON; CHARSET=UTF-8")], Some(pin)), 404, Some("invalid-credentials")),
        case("two Content-Types", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\ncontent-type: text/plain\ncontent-type: application/json\ncontent-length: 14\n\n"), pin.as_bytes()), 415, Some("unsupported-media-type")),
        // Size.
        case("declared too large", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\ncontent-type: application/json\ncontent-length: 100000\n\n"), b"{"), 413, Some("payload-too-large")),
        case("body too large", post(P, a, &[], &huge), 413, Some("payload-too-large")),
        case("long string within the limit", post(P, a, &[], &long_pin), 404, Some("invalid-credentials")),
        case("negative content-length", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\ncontent-type: application/json\ncontent-length: -1\n\n"), b""), 400, None),
        case("two content-lengths", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\ncontent-type: application/json\ncontent-length: 14\ncontent-length: 15\n\n"), pin.as_bytes()), 400, None),
        case("chunked and content-length", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\ncontent-type: application/json\ntransfer-encoding: chunked\ncontent-length: 14\n\n"), b"e\r\n{\"pin\":\"0000\"}\r\n0\r\n\r\n"), 400, None),
        // Bodies.
        case("empty body", post(P, a, &[], ""), 422, Some("body-not-json")),
        case("whitespace body", post(P, a, &[], "   "), 422, Some("body-not-json")),
        case("truncated JSON", post(P, a, &[], r#"{"pin":"00"#), 422, Some("body-not-json")),
        case("trailing garbage", post(P, a, &[], r#"{"pin":"0000"}x"#), 422, Some("body-not-json")),
        case("two documents", post(P, a, &[], r#"{"pin":"0000"}{"pin":"8299"}"#), 422, Some("body-not-json")),
        case("BOM", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\ncontent-type: application/json\ncontent-length: 17\n\n"), "\u{feff}{\"pin\":\"0000\"}".as_bytes()), 422, Some("body-not-json")),
        case("non-UTF-8 string", raw(&format!("POST {P} HTTP/1.1\nhost: x\nauthorization: {a}\ncontent-type: application/json\ncontent-length: 12\n\n"), b"{\"pin\":\"\xff\xfe\"}"), 422, Some("body-not-json")),
        case("deeply nested array", post(P, a, &[], &nested), 422, Some("body-invalid")),
        // Ignored fields are skipped without recursion: depth 2000 neither fails nor overflows.
        case("deeply nested extra field", post(P, a, &[], &deep_object), 404, Some("invalid-credentials")),
        case("array", post(P, a, &[], r#"["0000"]"#), 422, Some("body-invalid")),
        case("string", post(P, a, &[], r#""0000""#), 422, Some("body-invalid")),
        case("number", post(P, a, &[], "8299"), 422, Some("body-invalid")),
        case("null", post(P, a, &[], "null"), 422, Some("body-invalid")),
        case("duplicate pin", post(P, a, &[], r#"{"pin":"0000","pin":"8299"}"#), 422, Some("body-invalid")),
        case("duplicate via escape", post(P, a, &[], r#"{"pin":"0000","p\u0069n":"8299"}"#), 422, Some("body-invalid")),
        case("pin number", post(P, a, &[], r#"{"pin":8299}"#), 422, Some("field-invalid")),
        case("pin float", post(P, a, &[], r#"{"pin":8.299e3}"#), 422, Some("field-invalid")),
        case("pin bool", post(P, a, &[], r#"{"pin":true}"#), 422, Some("field-invalid")),
        case("pin object", post(P, a, &[], r#"{"pin":{"value":"8299"}}"#), 422, Some("field-invalid")),
        case("pin array", post(P, a, &[], r#"{"pin":["8299"]}"#), 422, Some("field-invalid")),
        case("password empty", post(P, a, &[], r#"{"password":""}"#), 422, Some("field-invalid")),
        case("both null", post(P, a, &[], r#"{"pin":null,"password":null}"#), 422, Some("credentials-missing")),
        case("only unknown fields", post(P, a, &[], r#"{"otp":"123456"}"#), 422, Some("credentials-missing")),
        case("extra fields ignored", post(P, a, &[], r#"{"pin":"0000","x":[1,{"y":null}]}"#), 404, Some("invalid-credentials")),
        case("escaped unicode pin", post(P, a, &[], r#"{"pin":"\u0030000"}"#), 404, Some("invalid-credentials")),
        case("NUL in pin", post(P, a, &[], r#"{"pin":"00\u00000"}"#), 404, Some("invalid-credentials")),
        // Request-Id.
        case("hostile Request-Id", post(P, a, &[("request-id", "<script>alert(1)</script>")], pin), 404, Some("invalid-credentials")),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let r = match std::panic::catch_unwind(|| send(port, &c.raw)) {
            Ok(r) => r,
            Err(_) => {
                failures.push(format!("{}: no HTTP answer", c.name));
                continue;
            }
        };
        let code = if r.header("content-type") == Some("application/vnd.api+json")
            && r.header("request-id").is_some()
        {
            r.json()["errors"][0]["code"].as_str().map(str::to_string)
        } else {
            None
        };
        if r.status != c.status || code.as_deref() != c.code {
            failures.push(format!(
                "{}: got {} {:?}, want {} {:?}",
                c.name, r.status, code, c.status, c.code
            ));
        }
        if let Some(id) = r.header("request-id") {
            assert!(is_xid(id), "{}: request-id {id}", c.name);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Nothing in the table is a valid request: none of them was minted a code.
    let issued = envoy.counters()["otp_filter.outcome.issued"];
    assert_eq!(issued, 0);
}
