//! The request flow as a state machine, free of host calls. The adapter feeds it what Envoy says
//! (headers, body progress, callout answers) and carries out the `Step` it returns.
//!
//! Check order (NOTES.md, first failure wins): route and method 405, bearer token 401, scope 403,
//! Accept 406, Content-Type 415, body size 413, body 422, then the credential service: password
//! first, then PIN; 404 when neither is valid; finally mint and answer 201.

use crate::body::{self, Credentials};
use crate::config::Config;
use crate::credential::{self, Callout, SecretKind, Verdict};
use crate::failure::Failure;
use crate::jsonapi::{self, Reply};
use crate::negotiation;
use crate::otp;
use crate::secret::Secret;
use crate::token;

/// The request headers the flow reads. Absent headers are `None`.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub authorization: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    /// True when the headers end the request (no body follows).
    pub end_of_stream: bool,
}

/// What the adapter must do next.
#[derive(Debug)]
pub enum Step {
    /// Keep the request paused: more body is needed, or a callout is in flight.
    Wait,
    /// Send this callout to the credential service and wait for its answer.
    Call(Callout),
    /// Answer the client and end the exchange. `outcome` is the error code or `"issued"`.
    Reply { reply: Reply, outcome: &'static str },
}

enum Stage {
    AwaitingBody,
    CheckingPassword { pin: Option<Secret> },
    CheckingPin,
    Finished,
}

/// One request to the OTP route, from its headers to the reply.
pub struct Exchange {
    request_id: String,
    user_id: String,
    stage: Stage,
}

/// True when the path (ignoring any query string) is one the filter serves.
pub fn serves_path(config: &Config, path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    config.routes.iter().any(|route| route == path)
}

impl Exchange {
    /// Starts the exchange at the request headers. `request_id` is the one the reply will carry.
    pub fn start(config: &Config, head: &RequestHead, request_id: String, now_ms: u64) -> (Self, Step) {
        let mut exchange = Exchange {
            request_id,
            user_id: String::new(),
            stage: Stage::AwaitingBody,
        };
        let step = match exchange.check_headers(config, head, now_ms) {
            Err(failure) => exchange.fail(failure),
            Ok(()) if head.end_of_stream => exchange.on_body(config, 0, true, || Ok(Vec::new())),
            Ok(()) => Step::Wait,
        };
        (exchange, step)
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    fn check_headers(&mut self, config: &Config, head: &RequestHead, now_ms: u64) -> Result<(), Failure> {
        if head.method != "POST" {
            return Err(Failure::MethodNotAllowed);
        }
        let bearer = token::bearer_token(head.authorization)?;
        self.user_id = token::verify(&config.token, bearer, now_ms / 1000)?.user_id;
        if !negotiation::accept_is_acceptable(head.accept) {
            return Err(Failure::NotAcceptable);
        }
        if !negotiation::content_type_is_supported(head.content_type) {
            return Err(Failure::UnsupportedMediaType);
        }
        // A declared length over the limit is refused before a byte of body is buffered.
        let declared = head.content_length.and_then(|l| l.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > config.max_body_bytes as u64) {
            return Err(Failure::PayloadTooLarge);
        }
        Ok(())
    }

    /// Body progress. `buffered` is the size Envoy holds so far; `read` fetches it once complete.
    pub fn on_body(
        &mut self,
        config: &Config,
        buffered: usize,
        end_of_stream: bool,
        read: impl FnOnce() -> Result<Vec<u8>, ()>,
    ) -> Step {
        if !matches!(self.stage, Stage::AwaitingBody) {
            return Step::Wait;
        }
        if buffered > config.max_body_bytes {
            return self.fail(Failure::PayloadTooLarge);
        }
        if !end_of_stream {
            return Step::Wait;
        }
        let Ok(bytes) = read() else {
            return self.fail(Failure::Internal("The request body could not be read."));
        };
        match body::parse(&bytes) {
            Err(failure) => self.fail(failure),
            Ok(Credentials {
                password: Some(password),
                pin,
            }) => {
                let call = self.callout(config, SecretKind::Password, &password);
                self.stage = Stage::CheckingPassword { pin };
                Step::Call(call)
            }
            Ok(Credentials {
                password: None,
                pin: Some(pin),
            }) => {
                let call = self.callout(config, SecretKind::Pin, &pin);
                self.stage = Stage::CheckingPin;
                Step::Call(call)
            }
            Ok(_) => self.fail(Failure::CredentialsMissing),
        }
    }

    /// The credential service answered (or Envoy answered for it).
    pub fn on_answer(&mut self, config: &Config, status: Option<u16>, body: &[u8], now_ms: u64) -> Step {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        let pending_pin = match stage {
            Stage::CheckingPassword { pin } => pin,
            Stage::CheckingPin => None,
            Stage::AwaitingBody | Stage::Finished => {
                return self.fail(Failure::Internal("A credential answer arrived unexpectedly."))
            }
        };
        match credential::read_answer(status, body) {
            Err(failure) => self.fail(failure),
            Ok(Verdict::Valid) => self.mint(config, now_ms),
            Ok(Verdict::Invalid) => match pending_pin {
                Some(pin) => {
                    let call = self.callout(config, SecretKind::Pin, &pin);
                    self.stage = Stage::CheckingPin;
                    Step::Call(call)
                }
                None => self.fail(Failure::InvalidCredentials),
            },
            Ok(Verdict::UnknownUser) => self.fail(Failure::UserNotFound),
            Ok(Verdict::MissingLinkedIdentity) => self.fail(Failure::MissingLinkedIdentity),
            Ok(Verdict::Locked {
                retry_after_seconds,
            }) => self.fail(Failure::Locked {
                retry_after_seconds,
            }),
        }
    }

    /// `dispatch_http_call` refused the callout (unknown cluster, missing header): fail closed.
    pub fn on_call_not_sent(&mut self) -> Step {
        self.fail(Failure::Internal("The credential service call could not be started."))
    }

    fn callout(&self, config: &Config, kind: SecretKind, secret: &Secret) -> Callout {
        credential::callout(
            &config.credential_service,
            &self.user_id,
            kind,
            secret,
            &self.request_id,
        )
    }

    fn mint(&mut self, config: &Config, now_ms: u64) -> Step {
        self.stage = Stage::Finished;
        match otp::mint(&config.otp, &self.user_id, now_ms) {
            Some(minted) => Step::Reply {
                reply: jsonapi::created_reply(&minted, &self.request_id),
                outcome: "issued",
            },
            None => self.fail(Failure::Internal("The one-time password could not be computed.")),
        }
    }

    fn fail(&mut self, failure: Failure) -> Step {
        self.stage = Stage::Finished;
        Step::Reply {
            reply: jsonapi::error_reply(failure, &self.request_id),
            outcome: failure.code(),
        }
    }
}
