//! What each request kind may get back: the exact set of (status, answer) pairs, with the filter
//! outcome counter each moves and the credential checks each costs.

/// One acceptable answer: status and label (the JSON:API `code`, `issued`, `verified`,
/// `upstream:<x-demo-upstream>`, `catch-all`, or `envoy` for Envoy's own answers), the filter
/// outcome counter it moves and the credential checks it costs, as (kind, result).
#[derive(Clone, Copy)]
pub struct Expect {
    pub status: u16,
    pub label: &'static str,
    pub outcome: Option<&'static str>,
    pub checks: &'static [(&'static str, &'static str)],
}

const fn filter_error(status: u16, code: &'static str) -> Expect {
    Expect {
        status,
        label: code,
        outcome: Some(code),
        checks: &[],
    }
}

const fn upstream(status: u16, label: &'static str) -> Expect {
    Expect {
        status,
        label,
        outcome: None,
        checks: &[],
    }
}

const fn gate_passed(status: u16, label: &'static str) -> Expect {
    Expect {
        status,
        label,
        outcome: Some("gate_passed"),
        checks: &[],
    }
}

const fn checked(
    status: u16,
    label: &'static str,
    checks: &'static [(&'static str, &'static str)],
) -> Expect {
    Expect {
        status,
        label,
        outcome: Some(label),
        checks,
    }
}

pub struct Kind {
    pub name: &'static str,
    pub expect: &'static [Expect],
}

macro_rules! kind {
    ($ident:ident, $name:literal, $($e:expr),+ $(,)?) => {
        pub const $ident: Kind = Kind { name: $name, expect: &[$($e),+] };
    };
}

// Cheap: answered by the filter (or Envoy) without the credential service.
kind!(K_NO_TOKEN, "no token", filter_error(401, "token-missing"));
kind!(
    K_TOKEN_MALFORMED,
    "malformed token",
    filter_error(401, "token-malformed")
);
kind!(
    K_TOKEN_BAD_SIG,
    "bad signature",
    filter_error(401, "token-signature-invalid")
);
kind!(
    K_TOKEN_EXPIRED,
    "expired token",
    filter_error(401, "token-expired")
);
kind!(
    K_TOKEN_UNKNOWN_KID,
    "unknown kid",
    filter_error(401, "token-key-unknown")
);
kind!(
    K_NO_SCOPE,
    "no scope",
    filter_error(403, "insufficient-scope")
);
kind!(
    K_BAD_ACCEPT,
    "Accept text/html",
    filter_error(406, "not-acceptable")
);
kind!(
    K_BAD_CONTENT_TYPE,
    "text/plain body",
    filter_error(415, "unsupported-media-type")
);
kind!(
    K_OVERSIZED,
    "oversized body",
    filter_error(413, "payload-too-large")
);
kind!(
    K_BODY_NOT_JSON,
    "body not JSON",
    filter_error(422, "body-not-json")
);
kind!(
    K_FIELD_INVALID,
    "PIN not a string",
    filter_error(422, "field-invalid")
);
kind!(
    K_CREDENTIALS_MISSING,
    "empty object",
    filter_error(422, "credentials-missing")
);
kind!(
    K_METHOD,
    "GET on create",
    filter_error(405, "method-not-allowed")
);
kind!(
    K_VERIFY_WRONG,
    "verify wrong code",
    filter_error(404, "otp-not-valid")
);
kind!(
    K_VERIFY_BAD_TYPE,
    "verify unknown type",
    filter_error(422, "field-invalid")
);
kind!(
    K_GATE_NO_CODE,
    "gate without code",
    filter_error(403, "otp:invalid")
);
kind!(
    K_GATE_WRONG,
    "gate wrong code",
    filter_error(403, "otp:invalid")
);
kind!(
    K_GATE_NO_TOKEN,
    "gate without token",
    filter_error(401, "token-missing")
);
kind!(
    K_PASS_USER,
    "pass-through /user/",
    upstream(404, "upstream:user-api")
);
kind!(
    K_PASS_GATED_GET,
    "GET on a gated path",
    upstream(404, "upstream:user-api")
);
kind!(
    K_UNKNOWN_VERSION,
    "unknown API version",
    upstream(404, "upstream:user-api")
);
kind!(
    K_PASS_PAY,
    "pass-through /pay/ GET",
    upstream(200, "upstream:pay-api")
);
kind!(
    K_CATCH_ALL,
    "GET /healthz (no filter)",
    upstream(200, "catch-all")
);
kind!(K_UNKNOWN_PATH, "unknown path", upstream(200, "catch-all"));
// Churn only.
kind!(K_BAD_HTTP, "lower-case method", upstream(400, "envoy"));
// Credential threads.
kind!(
    K_CREATE_PIN,
    "create, PIN",
    checked(201, "issued", &[("pin", "valid")])
);
kind!(
    K_CREATE_PASSWORD,
    "create, password",
    checked(201, "issued", &[("password", "valid")])
);
kind!(
    K_CREATE_BOTH,
    "create, wrong password + PIN",
    checked(201, "issued", &[("password", "invalid"), ("pin", "valid")])
);
kind!(
    K_CREATE_WRONG_PIN,
    "create, wrong PIN",
    checked(404, "invalid-credentials", &[("pin", "invalid")])
);
kind!(
    K_CREATE_UNKNOWN_USER,
    "create, unknown user",
    checked(404, "user-not-found", &[("pin", "unknown_user")])
);
kind!(
    K_CREATE_UNLINKED,
    "create, unlinked user",
    checked(
        401,
        "missing-linked-identity",
        &[("pin", "missing_linked_identity")]
    )
);
kind!(
    K_VERIFY_FRESH,
    "verify fresh code",
    checked(204, "verified", &[])
);
kind!(
    K_GATE_PIN_FRESH,
    "gate PUT pin, fresh code",
    gate_passed(404, "upstream:user-api")
);
kind!(
    K_GATE_PAY_FRESH,
    "gate POST pay, fresh code",
    gate_passed(200, "upstream:pay-api")
);
kind!(
    K_GATE_DELETE_FRESH,
    "gate DELETE, x-otp",
    gate_passed(404, "upstream:user-api")
);
kind!(
    K_VERIFY_REPLAY,
    "verify replayed code",
    filter_error(404, "otp-not-valid")
);
