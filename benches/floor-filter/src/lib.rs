//! The floor for `make bench`: what any proxy-wasm filter that answers a request after one
//! callout costs in this Envoy, with no logic of its own. On `POST /user/2021-2/user/otp` it
//! waits for the body, reads it, sends one `dispatch_http_call` to the `credential_service`
//! cluster, reads the answer and replies 201 with a fixed JSON body. Any other path passes.
//!
//! Bench-only code: it trusts its input and unwraps nothing, but it is not hardened.
//!
//! To price one host call, build it with `FLOOR_EXTRA_CLOCK_READS=N` or
//! `FLOOR_EXTRA_SHARED_READS=N` in the environment: each request then also makes N clock reads
//! (the cheapest host call) or N shared-data reads (a lock, a copy and an allocation in the VM).
//! Compare with the plain build in one run (`BENCH_E_WASM`/`BENCH_H_WASM` in benches/throughput/).

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

const PATH: &str = "/user/2021-2/user/otp";
const CALLOUT_BODY: &[u8] = br#"{"user":"floor","kind":"pin","secret":"8299"}"#;
const REPLY: &[u8] = br#"{"otp":"123456","expiresAt":"2026-01-01T00:00:00Z"}"#;

fn extra(name: Option<&str>) -> usize {
    name.and_then(|n| n.parse().ok()).unwrap_or(0)
}

struct Root;

impl Context for Root {}

fn extra_host_calls(ctx: &dyn Context) {
    for _ in 0..extra(option_env!("FLOOR_EXTRA_CLOCK_READS")) {
        let _ = ctx.get_current_time();
    }
    for _ in 0..extra(option_env!("FLOOR_EXTRA_SHARED_READS")) {
        let _ = ctx.get_shared_data("floor");
    }
}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor { ours: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    ours: bool,
}

impl Floor {
    fn call(&self) -> Action {
        let sent = self.dispatch_http_call(
            "credential_service",
            vec![
                (":method", "POST"),
                (":path", "/v1/credentials/verify"),
                (":authority", "credential-service"),
                ("content-type", "application/json"),
            ],
            Some(CALLOUT_BODY),
            vec![],
            Duration::from_secs(2),
        );
        if sent.is_err() {
            self.send_http_response(500, vec![], None);
        }
        Action::Pause
    }
}

impl Context for Floor {
    fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
        // Read what a real filter must read: the status and the body.
        let _status = self.get_http_call_response_header(":status");
        let _body = self.get_http_call_response_body(0, body_size);
        self.send_http_response(201, vec![("content-type", "application/json")], Some(REPLY));
    }
}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        self.ours = self.get_http_request_header(":path").as_deref() == Some(PATH);
        if self.ours {
            extra_host_calls(self);
        }
        match (self.ours, end_of_stream) {
            (false, _) => Action::Continue,
            (true, true) => self.call(),
            (true, false) => Action::Pause,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.ours {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let _body = self.get_http_request_body(0, body_size);
        self.call()
    }
}
