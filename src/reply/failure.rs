//! Every way a request to the filter's routes can fail, as ONE table: a row per failure with its
//! status, stable `code`, title, detail, RFC 6750 challenge and JSON pointer. A new failure is a
//! new row; the enum, `ALL_CODES` (one counter per code) and every accessor come from the table.
//!
//! Details are fixed texts chosen here, never built from request data, so no error can echo a PIN,
//! password, token or code. Codes are kebab-case and part of the API: never rename one.

/// `WWW-Authenticate` for a request without a usable token.
const NO_TOKEN: Option<&str> = Some("Bearer realm=\"otp\"");
/// `WWW-Authenticate` for a token that was refused.
const INVALID_TOKEN: Option<&str> = Some("Bearer realm=\"otp\", error=\"invalid_token\"");
/// `WWW-Authenticate` for a missing scope; `jsonapi` appends `scope="…"` when it knows which.
const INSUFFICIENT_SCOPE: Option<&str> = Some("Bearer realm=\"otp\", error=\"insufficient_scope\"");
/// `source.pointer` for errors about the whole body.
const WHOLE_BODY: Option<&str> = Some("");

const SERVER: &str = "Internal server error";
const TOKEN_INVALID: &str = "OAuth token invalid";
const BODY: &str = "Unprocessable request body";

/// Builds the enum and its accessors from the table below. Each row:
/// `Variant [fields] => status, "code", title, detail, challenge, pointer;` where `fields` are
/// bound by name and may be used in the row's expressions.
macro_rules! failures {
    ($(
        $(#[$doc:meta])*
        $variant:ident $(( $field:ident : $ty:ty ))? $({ $($named:ident : $nty:ty),+ })?
            => $status:literal, $code:literal, $title:expr, $detail:expr, $challenge:expr, $pointer:expr;
    )+) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Failure {
            $( $(#[$doc])* $variant $(( $ty ))? $({ $($named: $nty),+ })?, )+
        }

        /// One row of the table.
        struct Row {
            status: u16,
            code: &'static str,
            title: &'static str,
            detail: &'static str,
            challenge: Option<&'static str>,
            pointer: Option<&'static str>,
        }

        impl Failure {
            /// Every code, in table order, for defining one counter per code up front.
            pub const ALL_CODES: &'static [&'static str] = &[$($code),+];

            /// One of each failure (fields at their defaults), for tests over the whole table.
            #[cfg(test)]
            fn every() -> Vec<Failure> {
                vec![$( Failure::$variant $(( <$ty>::default() ))? $({ $($named: <$nty>::default()),+ })?, )+]
            }

            fn row(self) -> Row {
                match self {
                    $(
                        #[allow(unused_variables)]
                        Failure::$variant $(( $field ))? $({ $($named),+ })? => Row {
                            status: $status,
                            code: $code,
                            title: $title,
                            detail: $detail,
                            challenge: $challenge,
                            pointer: $pointer,
                        },
                    )+
                }
            }
        }
    };
}

failures! {
    MethodNotAllowed => 405, "method-not-allowed", "Method not allowed",
        "This resource only accepts POST.", None, None;
    TokenMissing => 401, "token-missing", "OAuth token missing",
        "Send an OAuth access token as 'Authorization: Bearer <token>'.", NO_TOKEN, None;
    TokenMalformed(detail: &'static str) => 401, "token-malformed", TOKEN_INVALID,
        detail, INVALID_TOKEN, None;
    TokenKeyUnknown => 401, "token-key-unknown", TOKEN_INVALID,
        "The token is signed with a key this service does not know.", INVALID_TOKEN, None;
    TokenSignatureInvalid(detail: &'static str) => 401, "token-signature-invalid", TOKEN_INVALID,
        detail, INVALID_TOKEN, None;
    TokenExpired => 401, "token-expired", "OAuth token expired",
        "The token has expired.", INVALID_TOKEN, None;
    TokenNotYetValid => 401, "token-not-yet-valid", "OAuth token not yet valid",
        "The token is not valid yet.", INVALID_TOKEN, None;
    TokenClaimsInvalid(detail: &'static str) => 401, "token-claims-invalid", TOKEN_INVALID,
        detail, INVALID_TOKEN, None;
    TokenInactive => 401, "token-inactive", TOKEN_INVALID,
        "The token is not active.", INVALID_TOKEN, None;
    TokenRejected => 401, "token-rejected", TOKEN_INVALID,
        "The token was not accepted by the proxy's JWT verification.", INVALID_TOKEN, None;
    /// `jsonapi::error_reply_naming` puts the required scope into the detail and the challenge.
    InsufficientScope => 403, "insufficient-scope", "Insufficient scope",
        "The token lacks the scope this resource requires.", INSUFFICIENT_SCOPE, None;
    NotAcceptable => 406, "not-acceptable", "Not acceptable",
        "The Accept header allows neither application/json nor application/vnd.api+json.", None, None;
    UnsupportedMediaType => 415, "unsupported-media-type", "Unsupported media type",
        "Send the body as application/json (charset utf-8) or application/vnd.api+json.", None, None;
    PayloadTooLarge => 413, "payload-too-large", "Request body too large",
        "The request body exceeds the configured maximum size.", None, None;
    BodyNotJson => 422, "body-not-json", BODY,
        "The request body is not valid JSON.", None, WHOLE_BODY;
    BodyInvalid(detail: &'static str) => 422, "body-invalid", BODY,
        detail, None, WHOLE_BODY;
    FieldInvalid { pointer: &'static str, detail: &'static str } => 422, "field-invalid", BODY,
        detail, None, Some(pointer);
    CredentialsMissing => 422, "credentials-missing", BODY,
        "Provide a non-empty 'password' or 'pin'.", None, WHOLE_BODY;
    /// `jsonapi` adds `Retry-After`.
    Locked { retry_after_seconds: u64 } => 429, "too-many-attempts", "Too many attempts",
        "Too many failed attempts for this user; retry later.", None, None;
    InvalidCredentials => 404, "invalid-credentials", "Invalid PIN or password",
        "Neither the password nor the PIN is valid for this user.", None, None;
    UserNotFound => 404, "user-not-found", "User not found",
        "The credential store has no user for this token.", None, None;
    /// Verify route: the code is wrong, expired, already used or another user's.
    OtpNotValid => 404, "otp-not-valid", "One-time password not valid",
        "The one-time password is wrong, expired or already used.", None, None;
    /// Gate: no valid code (PACE's payment convention `otp:invalid`).
    OtpRequired => 403, "otp:invalid", "Invalid one-time password",
        "This request needs a valid one-time password.", None, None;
    SharedStateUnavailable => 500, "shared-state-unavailable", SERVER,
        "The filter's shared state could not be read or written.", None, None;
    SingleUseLedgerFull => 500, "single-use-ledger-full", SERVER,
        "Too many one-time passwords are in use; try again shortly.", None, None;
    MissingLinkedIdentity => 401, "missing-linked-identity",
        "Missing linked identity for authorized access",
        "Linked identity is needed to access this resource, please check why the user does not have a linked identity",
        NO_TOKEN, None;
    CredentialServiceUnavailable => 500, "credential-service-unavailable", SERVER,
        "The credential service could not be reached.", None, None;
    CredentialServiceTimeout => 500, "credential-service-timeout", SERVER,
        "The credential service did not answer in time.", None, None;
    CredentialServiceError => 500, "credential-service-error", SERVER,
        "The credential service answered with an error status.", None, None;
    CredentialServiceBadAnswer => 500, "credential-service-bad-answer", SERVER,
        "The credential service answered with an unreadable body.", None, None;
    JwksUnavailable => 500, "jwks-unavailable", SERVER,
        "The keys that sign access tokens have not been loaded yet.", None, None;
    IntrospectionUnavailable => 500, "introspection-unavailable", SERVER,
        "The token introspection endpoint could not be reached.", None, None;
    IntrospectionTimeout => 500, "introspection-timeout", SERVER,
        "The token introspection endpoint did not answer in time.", None, None;
    IntrospectionError => 500, "introspection-error", SERVER,
        "The token introspection endpoint answered with an error status.", None, None;
    IntrospectionBadAnswer => 500, "introspection-bad-answer", SERVER,
        "The token introspection endpoint answered with an unreadable body.", None, None;
    OtpAuthorityUnavailable => 500, "otp-authority-unavailable", SERVER,
        "The one-time-use authority could not be reached.", None, None;
    OtpAuthorityTimeout => 500, "otp-authority-timeout", SERVER,
        "The one-time-use authority did not answer in time.", None, None;
    OtpAuthorityError => 500, "otp-authority-error", SERVER,
        "The one-time-use authority answered with an error status.", None, None;
    OtpAuthorityBadAnswer => 500, "otp-authority-bad-answer", SERVER,
        "The one-time-use authority answered with an unreadable body.", None, None;
    /// The proxy's clock could not be read: no time-bound decision can be made.
    ClockUnavailable => 500, "clock-unavailable", SERVER,
        "The proxy's clock could not be read.", None, None;
    Internal(detail: &'static str) => 500, "internal-error", SERVER,
        detail, None, None;
}

impl Failure {
    pub fn status(self) -> u16 {
        self.row().status
    }

    pub fn code(self) -> &'static str {
        self.row().code
    }

    pub fn title(self) -> &'static str {
        self.row().title
    }

    pub fn detail(self) -> &'static str {
        self.row().detail
    }

    /// JSON pointer into the request body, for body errors (`""` is the whole document).
    pub fn pointer(self) -> Option<&'static str> {
        self.row().pointer
    }

    /// RFC 6750 §3 challenge for 401 and 403 answers about the token.
    pub fn www_authenticate(self) -> Option<&'static str> {
        self.row().challenge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes_lists_every_variant_once() {
        let every = Failure::every();
        let codes: Vec<&str> = every.iter().map(|f| f.code()).collect();
        assert_eq!(codes, Failure::ALL_CODES);
        for f in every {
            assert!(
                !f.title().is_empty() && (400..600).contains(&f.status()),
                "{f:?}"
            );
        }
    }

    #[test]
    fn rows_carry_their_data() {
        let f = Failure::FieldInvalid {
            pointer: "/pin",
            detail: "must be a string",
        };
        assert_eq!(
            (f.pointer(), f.detail()),
            (Some("/pin"), "must be a string")
        );
        assert_eq!(Failure::BodyNotJson.pointer(), Some(""));
        assert_eq!(Failure::Internal("x").detail(), "x");
        assert_eq!(
            Failure::TokenExpired.www_authenticate(),
            Some("Bearer realm=\"otp\", error=\"invalid_token\"")
        );
        assert_eq!(Failure::OtpRequired.www_authenticate(), None);
    }
}
