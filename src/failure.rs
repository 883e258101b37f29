//! Every way a request to the OTP route can fail, with its status, stable `code`, title and detail.
//!
//! Details are fixed texts chosen here, never built from request data, so no error can echo a PIN,
//! password, token or code. Codes are kebab-case and part of the API: never rename one.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    MethodNotAllowed,
    TokenMissing,
    TokenMalformed(&'static str),
    TokenKeyUnknown,
    TokenSignatureInvalid(&'static str),
    TokenExpired,
    TokenNotYetValid,
    TokenClaimsInvalid(&'static str),
    TokenInactive,
    TokenRejected,
    InsufficientScope,
    NotAcceptable,
    UnsupportedMediaType,
    PayloadTooLarge,
    BodyNotJson,
    BodyInvalid(&'static str),
    FieldInvalid {
        pointer: &'static str,
        detail: &'static str,
    },
    CredentialsMissing,
    Locked {
        retry_after_seconds: u64,
    },
    InvalidCredentials,
    UserNotFound,
    /// Verify route: the code is wrong, expired, already used or another user's.
    OtpNotValid,
    /// Gate: no valid code (PACE's payment convention `otp:invalid`).
    OtpRequired,
    SharedStateUnavailable,
    SingleUseLedgerFull,
    MissingLinkedIdentity,
    CredentialServiceUnavailable,
    CredentialServiceTimeout,
    CredentialServiceError,
    CredentialServiceBadAnswer,
    JwksUnavailable,
    IntrospectionUnavailable,
    IntrospectionTimeout,
    IntrospectionError,
    IntrospectionBadAnswer,
    /// The proxy's clock could not be read: no time-bound decision can be made.
    ClockUnavailable,
    Internal(&'static str),
}

impl Failure {
    pub fn status(self) -> u16 {
        use Failure::*;
        match self {
            MethodNotAllowed => 405,
            TokenMissing
            | TokenMalformed(_)
            | TokenKeyUnknown
            | TokenSignatureInvalid(_)
            | TokenExpired
            | TokenNotYetValid
            | TokenClaimsInvalid(_)
            | TokenInactive
            | TokenRejected
            | MissingLinkedIdentity => 401,
            InsufficientScope => 403,
            NotAcceptable => 406,
            UnsupportedMediaType => 415,
            PayloadTooLarge => 413,
            BodyNotJson | BodyInvalid(_) | FieldInvalid { .. } | CredentialsMissing => 422,
            Locked { .. } => 429,
            InvalidCredentials | UserNotFound | OtpNotValid => 404,
            OtpRequired => 403,
            CredentialServiceUnavailable
            | CredentialServiceTimeout
            | CredentialServiceError
            | CredentialServiceBadAnswer
            | JwksUnavailable
            | IntrospectionUnavailable
            | IntrospectionTimeout
            | IntrospectionError
            | IntrospectionBadAnswer
            | SharedStateUnavailable
            | SingleUseLedgerFull
            | ClockUnavailable
            | Internal(_) => 500,
        }
    }

    /// Every code `code()` can return, for defining one counter per code up front.
    pub const ALL_CODES: [&'static str; 37] = [
        "method-not-allowed",
        "token-missing",
        "token-malformed",
        "token-key-unknown",
        "token-signature-invalid",
        "token-expired",
        "token-not-yet-valid",
        "token-claims-invalid",
        "token-inactive",
        "token-rejected",
        "insufficient-scope",
        "not-acceptable",
        "unsupported-media-type",
        "payload-too-large",
        "body-not-json",
        "body-invalid",
        "field-invalid",
        "credentials-missing",
        "too-many-attempts",
        "invalid-credentials",
        "user-not-found",
        "otp-not-valid",
        "otp:invalid",
        "shared-state-unavailable",
        "single-use-ledger-full",
        "missing-linked-identity",
        "credential-service-unavailable",
        "credential-service-timeout",
        "credential-service-error",
        "credential-service-bad-answer",
        "jwks-unavailable",
        "introspection-unavailable",
        "introspection-timeout",
        "introspection-error",
        "introspection-bad-answer",
        "clock-unavailable",
        "internal-error",
    ];

    pub fn code(self) -> &'static str {
        use Failure::*;
        match self {
            MethodNotAllowed => "method-not-allowed",
            TokenMissing => "token-missing",
            TokenMalformed(_) => "token-malformed",
            TokenKeyUnknown => "token-key-unknown",
            TokenSignatureInvalid(_) => "token-signature-invalid",
            TokenExpired => "token-expired",
            TokenNotYetValid => "token-not-yet-valid",
            TokenClaimsInvalid(_) => "token-claims-invalid",
            TokenInactive => "token-inactive",
            TokenRejected => "token-rejected",
            InsufficientScope => "insufficient-scope",
            NotAcceptable => "not-acceptable",
            UnsupportedMediaType => "unsupported-media-type",
            PayloadTooLarge => "payload-too-large",
            BodyNotJson => "body-not-json",
            BodyInvalid(_) => "body-invalid",
            FieldInvalid { .. } => "field-invalid",
            CredentialsMissing => "credentials-missing",
            Locked { .. } => "too-many-attempts",
            InvalidCredentials => "invalid-credentials",
            UserNotFound => "user-not-found",
            OtpNotValid => "otp-not-valid",
            OtpRequired => "otp:invalid",
            SharedStateUnavailable => "shared-state-unavailable",
            SingleUseLedgerFull => "single-use-ledger-full",
            MissingLinkedIdentity => "missing-linked-identity",
            CredentialServiceUnavailable => "credential-service-unavailable",
            CredentialServiceTimeout => "credential-service-timeout",
            CredentialServiceError => "credential-service-error",
            CredentialServiceBadAnswer => "credential-service-bad-answer",
            JwksUnavailable => "jwks-unavailable",
            IntrospectionUnavailable => "introspection-unavailable",
            IntrospectionTimeout => "introspection-timeout",
            IntrospectionError => "introspection-error",
            IntrospectionBadAnswer => "introspection-bad-answer",
            ClockUnavailable => "clock-unavailable",
            Internal(_) => "internal-error",
        }
    }

    pub fn title(self) -> &'static str {
        use Failure::*;
        match self {
            MethodNotAllowed => "Method not allowed",
            TokenMissing => "OAuth token missing",
            TokenMalformed(_)
            | TokenKeyUnknown
            | TokenSignatureInvalid(_)
            | TokenClaimsInvalid(_) => "OAuth token invalid",
            TokenExpired => "OAuth token expired",
            TokenInactive | TokenRejected => "OAuth token invalid",
            TokenNotYetValid => "OAuth token not yet valid",
            InsufficientScope => "Insufficient scope",
            NotAcceptable => "Not acceptable",
            UnsupportedMediaType => "Unsupported media type",
            PayloadTooLarge => "Request body too large",
            BodyNotJson | BodyInvalid(_) | FieldInvalid { .. } | CredentialsMissing => {
                "Unprocessable request body"
            }
            Locked { .. } => "Too many attempts",
            InvalidCredentials => "Invalid PIN or password",
            UserNotFound => "User not found",
            OtpNotValid => "One-time password not valid",
            OtpRequired => "Invalid one-time password",
            MissingLinkedIdentity => "Missing linked identity for authorized access",
            CredentialServiceUnavailable
            | CredentialServiceTimeout
            | CredentialServiceError
            | CredentialServiceBadAnswer
            | JwksUnavailable
            | IntrospectionUnavailable
            | IntrospectionTimeout
            | IntrospectionError
            | IntrospectionBadAnswer
            | SharedStateUnavailable
            | SingleUseLedgerFull
            | ClockUnavailable
            | Internal(_) => "Internal server error",
        }
    }

    pub fn detail(self) -> &'static str {
        use Failure::*;
        match self {
            MethodNotAllowed => "This resource only accepts POST.",
            TokenMissing => "Send an OAuth access token as 'Authorization: Bearer <token>'.",
            TokenMalformed(d) | TokenSignatureInvalid(d) | TokenClaimsInvalid(d) | BodyInvalid(d) => d,
            TokenKeyUnknown => "The token is signed with a key this service does not know.",
            TokenExpired => "The token has expired.",
            TokenNotYetValid => "The token is not valid yet.",
            // error_reply_naming puts the required scope in; this text is for when none is known.
            InsufficientScope => "The token lacks the scope this resource requires.",
            NotAcceptable => {
                "The Accept header allows neither application/json nor application/vnd.api+json."
            }
            UnsupportedMediaType => {
                "Send the body as application/json (charset utf-8) or application/vnd.api+json."
            }
            PayloadTooLarge => "The request body exceeds the configured maximum size.",
            BodyNotJson => "The request body is not valid JSON.",
            FieldInvalid { detail, .. } => detail,
            CredentialsMissing => "Provide a non-empty 'password' or 'pin'.",
            Locked { .. } => "Too many failed attempts for this user; retry later.",
            InvalidCredentials => "Neither the password nor the PIN is valid for this user.",
            UserNotFound => "The credential store has no user for this token.",
            OtpNotValid => "The one-time password is wrong, expired or already used.",
            OtpRequired => "This request needs a valid one-time password.",
            SharedStateUnavailable => "The filter's shared state could not be read or written.",
            SingleUseLedgerFull => "Too many one-time passwords are in use; try again shortly.",
            MissingLinkedIdentity => {
                "Linked identity is needed to access this resource, please check why the user does not have a linked identity"
            }
            CredentialServiceUnavailable => "The credential service could not be reached.",
            CredentialServiceTimeout => "The credential service did not answer in time.",
            CredentialServiceError => "The credential service answered with an error status.",
            CredentialServiceBadAnswer => "The credential service answered with an unreadable body.",
            JwksUnavailable => "The keys that sign access tokens have not been loaded yet.",
            IntrospectionUnavailable => "The token introspection endpoint could not be reached.",
            IntrospectionTimeout => "The token introspection endpoint did not answer in time.",
            IntrospectionError => "The token introspection endpoint answered with an error status.",
            IntrospectionBadAnswer => "The token introspection endpoint answered with an unreadable body.",
            TokenInactive => "The token is not active.",
            TokenRejected => "The token was not accepted by the proxy's JWT verification.",
            ClockUnavailable => "The proxy's clock could not be read.",
            Internal(d) => d,
        }
    }

    /// JSON pointer into the request body, for body errors (`""` is the whole document).
    pub fn pointer(self) -> Option<&'static str> {
        match self {
            Failure::FieldInvalid { pointer, .. } => Some(pointer),
            Failure::BodyNotJson | Failure::BodyInvalid(_) | Failure::CredentialsMissing => {
                Some("")
            }
            _ => None,
        }
    }

    /// RFC 6750 §3 challenge for 401 and 403 answers.
    pub fn www_authenticate(self) -> Option<&'static str> {
        use Failure::*;
        match self {
            TokenMissing => Some("Bearer realm=\"otp\""),
            TokenMalformed(_)
            | TokenKeyUnknown
            | TokenSignatureInvalid(_)
            | TokenExpired
            | TokenNotYetValid
            | TokenClaimsInvalid(_)
            | TokenInactive
            | TokenRejected => Some("Bearer realm=\"otp\", error=\"invalid_token\""),
            InsufficientScope => Some("Bearer realm=\"otp\", error=\"insufficient_scope\""),
            MissingLinkedIdentity => Some("Bearer realm=\"otp\""),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes_lists_every_variant_once() {
        use Failure::*;
        let every = [
            MethodNotAllowed,
            TokenMissing,
            TokenMalformed(""),
            TokenKeyUnknown,
            TokenSignatureInvalid(""),
            TokenExpired,
            TokenNotYetValid,
            TokenClaimsInvalid(""),
            TokenInactive,
            TokenRejected,
            InsufficientScope,
            NotAcceptable,
            UnsupportedMediaType,
            PayloadTooLarge,
            BodyNotJson,
            BodyInvalid(""),
            FieldInvalid {
                pointer: "",
                detail: "",
            },
            CredentialsMissing,
            Locked {
                retry_after_seconds: 1,
            },
            InvalidCredentials,
            UserNotFound,
            OtpNotValid,
            OtpRequired,
            SharedStateUnavailable,
            SingleUseLedgerFull,
            MissingLinkedIdentity,
            CredentialServiceUnavailable,
            CredentialServiceTimeout,
            CredentialServiceError,
            CredentialServiceBadAnswer,
            JwksUnavailable,
            IntrospectionUnavailable,
            IntrospectionTimeout,
            IntrospectionError,
            IntrospectionBadAnswer,
            ClockUnavailable,
            Internal(""),
        ];
        let codes: Vec<&str> = every.iter().map(|f| f.code()).collect();
        assert_eq!(codes, Failure::ALL_CODES);
        for f in every {
            assert!(
                !f.title().is_empty() && (400..600).contains(&f.status()),
                "{f:?}"
            );
        }
    }
}
