//! Gates: configured routes that need a valid code before the request goes upstream (a PIN
//! change, a payment authorization). The code comes from a header (decided at the headers) or a
//! JSON pointer into the body (decided when the body ends); valid → `Continue`, and the rest of
//! the request is forwarded as it is; missing or invalid → 403 `otp:invalid`.

use serde_json::Value;

use crate::config::OtpSource;
use crate::reply::failure::Failure;
use crate::secret::Secret;

use super::{Ctx, Exchange, Served, Step};

impl Exchange {
    /// A gate that reads the code from a header decides at once; a missing header is a 403.
    pub(super) fn gate_on_header(&mut self, ctx: &Ctx) -> Option<Step> {
        let Served::Gate(gate) = &self.served else {
            return None;
        };
        if !matches!(gate.otp_from, OtpSource::Header(_)) {
            return None;
        }
        let code = self.header_code.take();
        Some(self.gate_decide(ctx, code))
    }

    /// A gate that reads the code at a JSON `pointer` into the body decides once the body ended.
    pub(super) fn gate_on_body(&mut self, ctx: &Ctx, pointer: &str, bytes: &[u8]) -> Step {
        // A body that is not JSON, or has no string at the pointer, simply carries no code.
        let code = serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| {
                v.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .map(Secret::new);
        self.gate_decide(ctx, code)
    }

    pub(super) fn gate_decide(&mut self, ctx: &Ctx, code: Option<Secret>) -> Step {
        match code.filter(|c| !c.is_empty()) {
            Some(code) => self.check_code(ctx, &code),
            None => self.fail(Failure::OtpRequired),
        }
    }
}
