//! Malformed and hostile requests, table-driven, against real Envoy: each row says exactly what
//! must come back. `code: None` rows must not be answered by the filter at all (they reach the
//! route's upstream, or Envoy itself refuses them). Rows are HTTP/1.1 bytes, or HTTP/2 (h2c)
//! frames with request trailers, which curl cannot send. Only the one valid request in the table
//! may produce a 201.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use harness::h2c::{self, Request as H2};
use harness::*;

const P: &str = "/user/2021-2/user/otp";

/// The status of an h2 row that gets no HTTP answer. Its `code` then says what ended the stream:
/// an RST_STREAM error code (`PROTOCOL_ERROR`), `GOAWAY <error code>`, or `closed` (the
/// connection closed with neither).
const NO_ANSWER: u16 = 0;

enum Wire {
    H1(Vec<u8>),
    /// An h2c request; `early` says the answer comes before the request's trailers are sent.
    H2 {
        request: H2,
        early: bool,
    },
}

struct Case {
    name: &'static str,
    wire: Wire,
    status: u16,
    code: Option<&'static str>,
}

fn case(name: &'static str, raw: Vec<u8>, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        wire: Wire::H1(raw),
        status,
        code,
    }
}

/// An h2c row whose answer must wait for the end of the request (its trailers, if any).
fn h2(name: &'static str, request: H2, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        wire: Wire::H2 {
            request,
            early: false,
        },
        status,
        code,
    }
}

/// An h2c row answered while the client still holds back its trailers, then told to stop sending.
fn h2_early(name: &'static str, request: H2, status: u16, code: Option<&'static str>) -> Case {
    Case {
        name,
        wire: Wire::H2 {
            request,
            early: true,
        },
        status,
        code,
    }
}

/// The JSON:API error code of a filter answer; `None` for anything else.
fn error_code(r: &Response) -> Option<String> {
    if r.header("content-type") == Some("application/vnd.api+json")
        && r.header("request-id").is_some()
    {
        r.json()["errors"][0]["code"].as_str().map(str::to_string)
    } else {
        None
    }
}

/// Sends one row; the status and error code that came back (see `NO_ANSWER`), the response, and
/// what else was wrong.
fn exchange(port: u16, wire: &Wire) -> (u16, Option<String>, Option<Response>, Vec<String>) {
    match wire {
        Wire::H1(raw) => {
            let r = send(port, raw);
            (r.status, error_code(&r), Some(r), Vec::new())
        }
        Wire::H2 { request, early } => {
            let answer = h2c::send(port, request);
            let mut odd = Vec::new();
            if answer.response.is_some() && answer.before_trailers != *early {
                odd.push(format!(
                    "answered {} the trailers were sent",
                    if answer.before_trailers {
                        "before"
                    } else {
                        "after"
                    }
                ));
            }
            let ended_by = match (answer.reset, answer.goaway, answer.closed) {
                (Some(code), _, _) => Some(h2c::error_name(code).to_string()),
                (None, Some(code), _) => Some(format!("GOAWAY {}", h2c::error_name(code))),
                (None, None, true) => Some("closed".to_string()),
                (None, None, false) => None,
            };
            match (answer.response, answer.ended) {
                (Some(r), true) => {
                    // An answer to a complete request ends the exchange. One sent while the
                    // client is still sending is followed by RST_STREAM NO_ERROR: "stop sending"
                    // (RFC 9113 §8.1). Nothing else may follow.
                    let expected = early.then(|| "NO_ERROR".to_string());
                    if ended_by != expected {
                        odd.push(format!("then {ended_by:?}, want {expected:?}"));
                    }
                    (r.status, error_code(&r), Some(r), odd)
                }
                (r, _) => {
                    if let Some(r) = r {
                        odd.push(format!("a {} answer was cut short", r.status));
                    }
                    let code = ended_by.unwrap_or_else(|| "no answer".to_string());
                    (NO_ANSWER, Some(code), None, odd)
                }
            }
        }
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
    // serde_json allows 127 levels of nesting (its depth budget of 128 must stay above 0); the
    // object itself is one of them.
    let at_limit = format!(r#"{{"pin":{}{}}}"#, "[".repeat(126), "]".repeat(126));
    let past_limit = format!(r#"{{"pin":{}{}}}"#, "[".repeat(127), "]".repeat(127));
    let json = [("authorization", a), ("content-type", "application/json")];
    let good = br#"{"pin":"8299"}"#.as_slice();

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
        // A known field is parsed as a value: as deep as serde_json allows runs inside the VM's
        // stack, one level more is refused (not JSON we take), never a stack overflow.
        case("field nested to the recursion limit", post(P, a, &[], &at_limit), 422, Some("field-invalid")),
        case("field nested past the recursion limit", post(P, a, &[], &past_limit), 422, Some("body-not-json")),
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
        // HTTP/2 (h2c, prior knowledge) with request trailers. Trailers end the body; what they
        // carry is never read, so they can neither authenticate nor supply a field.
        h2("h2: good PIN, then trailers", H2::post(P, &json).body(&[good]).trailers(&[("x-checksum", "1")]), 201, None),
        h2("h2: wrong PIN, then trailers", H2::post(P, &json).body(&[pin.as_bytes()]).trailers(&[("x-checksum", "1")]), 404, Some("invalid-credentials")),
        h2("h2: Authorization only in trailers", H2::post(P, &[("content-type", "application/json")]).body(&[good]).trailers(&[("authorization", a)]), 401, Some("token-missing")),
        h2("h2: bad Authorization, good one in trailers", H2::post(P, &[("authorization", "Bearer x.y.z"), ("content-type", "application/json")]).body(&[good]).trailers(&[("authorization", a)]), 401, Some("token-malformed")),
        h2("h2: Content-Type only in trailers", H2::post(P, &[("authorization", a)]).body(&[good]).trailers(&[("content-type", "application/json")]), 415, Some("unsupported-media-type")),
        h2("h2: PIN only in trailers", H2::post(P, &json).body(&[b"{}"]).trailers(&[("pin", "8299")]), 422, Some("credentials-missing")),
        h2("h2: body over four DATA frames, one empty, then trailers", H2::post(P, &json).body(&[b"{\"pi", b"", b"n\":\"00", b"00\"}"]).trailers(&[("x-checksum", "1")]), 404, Some("invalid-credentials")),
        h2("h2: no DATA, only trailers", H2::post(P, &json).trailers(&[("x-checksum", "1")]), 422, Some("body-not-json")),
        h2("h2: empty DATA, then trailers", H2::post(P, &json).body(&[b""]).trailers(&[("x-checksum", "1")]), 422, Some("body-not-json")),
        h2_early("h2: body too large, then trailers", H2::post(P, &json).body(&[&huge.as_bytes()[..2500], &huge.as_bytes()[2500..]]).trailers(&[("x-checksum", "1")]), 413, Some("payload-too-large")),
        h2_early("h2: declared too large, then trailers", H2::post(P, &[("authorization", a), ("content-type", "application/json"), ("content-length", "100000")]).body(&[b"{"]).trailers(&[("x-checksum", "1")]), 413, Some("payload-too-large")),
        h2("h2: two Authorization headers", H2::post(P, &[("authorization", "Bearer x.y.z"), ("authorization", a), ("content-type", "application/json")]).body(&[good]), 401, Some("token-malformed")),
        // Malformed h2 requests (RFC 9113 §8.1.1, §8.2): Envoy's codec refuses them before any
        // filter runs. With `stream_error_on_invalid_http_messaging` off (the default) it closes
        // the whole connection, sending neither RST_STREAM nor GOAWAY (`http2.rx_messaging_error`).
        h2("h2: upper-case header name", H2::post(P, &[("Authorization", a), ("content-type", "application/json")]).body(&[good]), NO_ANSWER, Some("closed")),
        h2("h2: upper-case trailer name", H2::post(P, &json).body(&[good]).trailers(&[("X-Checksum", "1")]), NO_ANSWER, Some("closed")),
        h2("h2: pseudo-header in trailers", H2::post(P, &json).body(&[good]).trailers(&[(":path", "/")]), NO_ANSWER, Some("closed")),
        h2("h2: connection-specific header", H2::post(P, &[("authorization", a), ("content-type", "application/json"), ("transfer-encoding", "chunked")]).body(&[good]), NO_ANSWER, Some("closed")),
        h2("h2: content-length larger than the DATA, then trailers", H2::post(P, &[("authorization", a), ("content-type", "application/json"), ("content-length", "100")]).body(&[good]).trailers(&[("x-checksum", "1")]), NO_ANSWER, Some("closed")),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let (status, code, r, odd) = match std::panic::catch_unwind(|| exchange(port, &c.wire)) {
            Ok(answer) => answer,
            Err(_) => {
                failures.push(format!("{}: no HTTP answer", c.name));
                continue;
            }
        };
        if status != c.status || code.as_deref() != c.code || !odd.is_empty() {
            failures.push(format!(
                "{}: got {} {:?} {}, want {} {:?}",
                c.name,
                status,
                code,
                odd.join(", "),
                c.status,
                c.code
            ));
        }
        if let Some(id) = r.as_ref().and_then(|r| r.header("request-id")) {
            assert!(is_xid(id), "{}: request-id {id}", c.name);
        }
        if status == 201 {
            assert_created(r.as_ref().expect("a response"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Codes were minted for the rows that expect one, and for no other.
    let issued = envoy.counters()["otp_filter.outcome.issued"];
    let expected = cases.iter().filter(|c| c.status == 201).count() as u64;
    assert_eq!(issued, expected);
}

/// The h2c client's HPACK decoder against RFC 7541's own examples (C.4: requests with Huffman
/// coding and a growing dynamic table; C.6.1: a response), and its canonical Huffman code against
/// Appendix B's first and last codes.
#[test]
fn h2c_hpack_decoder_matches_rfc_7541() {
    let hex = |s: &str| -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let pairs = |fields: Vec<(String, String)>| -> Vec<String> {
        fields
            .into_iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect()
    };
    let codes = h2c::huffman_codes();
    assert_eq!(codes[0], (0x1ff8, 13));
    assert_eq!(codes[1], (0x7f_ffd8, 23));
    assert_eq!(codes[b'0' as usize], (0x0, 5));
    assert_eq!(codes[b' ' as usize], (0x14, 6));
    assert_eq!(codes[255], (0x3ff_ffee, 26));
    assert_eq!(codes[256], (0x3fff_ffff, 30));
    let mut decoder = h2c::Decoder::new();
    let first = decoder
        .decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
        .unwrap();
    assert_eq!(
        pairs(first),
        [
            ":method: GET",
            ":scheme: http",
            ":path: /",
            ":authority: www.example.com"
        ]
    );
    let second = decoder
        .decode(&hex("8286 84be 5886 a8eb 1064 9cbf"))
        .unwrap();
    assert_eq!(
        pairs(second),
        [
            ":method: GET",
            ":scheme: http",
            ":path: /",
            ":authority: www.example.com",
            "cache-control: no-cache"
        ]
    );
    let third = decoder
        .decode(&hex(
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ))
        .unwrap();
    assert_eq!(
        pairs(third),
        [
            ":method: GET",
            ":scheme: https",
            ":path: /index.html",
            ":authority: www.example.com",
            "custom-key: custom-value"
        ]
    );
    let response = h2c::Decoder::new()
        .decode(&hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        ))
        .unwrap();
    assert_eq!(
        pairs(response),
        [
            ":status: 302",
            "cache-control: private",
            "date: Mon, 21 Oct 2013 20:13:21 GMT",
            "location: https://www.example.com"
        ]
    );
}
