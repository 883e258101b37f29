//! The Istio example (envoy/istio/otp-filter.yaml) end to end on the Envoy side: a real Envoy
//! with the HTTP filters istiod generates for the gateway from the manifest's
//! RequestAuthentication and WasmPlugin (Envoy's jwt_authn, then the plugin in the AUTHZ phase,
//! then the router), the plugin configuration taken from the manifest as it stands.
//!
//! How istiod builds them (Istio 1.21 and later; read in istio/istio):
//! - jwt_authn: pilot/pkg/security/authn/policy_applier.go, `convertToEnvoyJwtConfig`. One
//!   provider per jwtRule, named "origins-<i>", with the rule's issuer and audiences,
//!   `forward: forwardOriginalToken` (default false: the token is removed once verified),
//!   `payload_in_metadata: "payload"` (pilot/pkg/xds/filters: `EnvoyJwtFilterPayload`; 1.20 and
//!   older used the issuer, istio/istio#50246), `normalize_payload_in_metadata` splitting
//!   `permission` and `scope` into lists, `from_headers` (`name`, `value_prefix`) and
//!   `from_params` only when the rule sets them (else Envoy's defaults: `Authorization: Bearer`
//!   and the `access_token` query parameter). One rule for prefix "/":
//!   `requires_any [provider_name: origins-0, allow_missing]`, so a request without a token
//!   passes, a bad token does not (Istio leaves "no token" to AuthorizationPolicy), and
//!   `bypass_cors_preflight: true`. The keys: istiod fetches `jwksUri` and inlines them as
//!   `local_jwks.inline_string` (the default PILOT_JWT_ENABLE_REMOTE_JWKS=false); here the dev JWKS.
//! - `clear_route_cache` is true on gateways (pilot/pkg/networking/plugin/authn/authentication.go,
//!   `BuildHTTP`: `JwtFilter(proxy.Type != SidecarProxy)`).
//! - The plugin: pilot/pkg/model/extensions.go, `buildPluginConfig`: name "<namespace>.<name>",
//!   `root_id: pluginName`, the pluginConfig as JSON in a `StringValue`, failStrategy as
//!   `failure_policy`, `vmConfig.env` as the VM's environment; the manifest's EnvoyFilter merges
//!   `allow_on_headers_stop_iteration` into it.

// Tests fail by panicking; the panic lints guard filter code only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use harness::*;
use serde_json::{json, Map, Value};

const PIN: &str = r#"{"pin":"8299"}"#;
const MANIFEST: &str = "envoy/istio/otp-filter.yaml";
/// What the plugin's HOST variables hold in the test (the gateway reads them from a Secret).
const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// The manifest's documents, read by PyYAML from the project venv (as tests/check_manifests.py).
fn manifest() -> Vec<Value> {
    let script = "import json, sys, yaml; \
                  print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))";
    let docs = venv_python_json(&["-c", script, MANIFEST]);
    serde_json::from_value(docs).unwrap()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{MANIFEST}: one {kind}");
    found[0]
}

/// The manifest's single jwtRule. Only fields translated below are allowed: a new one (say
/// `fromParams`) must be translated here too before the test can speak for the manifest.
fn jwt_rule(docs: &[Value]) -> &Map<String, Value> {
    let rules = only(docs, "RequestAuthentication")["spec"]["jwtRules"]
        .as_array()
        .expect("jwtRules");
    assert_eq!(rules.len(), 1, "one issuer");
    let rule = rules[0].as_object().unwrap();
    for field in rule.keys() {
        assert!(
            [
                "issuer",
                "audiences",
                "jwksUri",
                "forwardOriginalToken",
                "fromHeaders"
            ]
            .contains(&field.as_str()),
            "jwtRules[0].{field} is not translated by this test"
        );
    }
    rule
}

/// Envoy's jwt_authn as istiod generates it for the gateway from `rule` (see the module doc).
fn istio_jwt_authn(rule: &Map<String, Value>) -> Value {
    let jwks = std::fs::read_to_string(dev_jwks_file()).unwrap();
    let mut provider = json!({
        "issuer": rule["issuer"],
        "audiences": rule.get("audiences").cloned().unwrap_or(json!([])),
        "forward": rule.get("forwardOriginalToken").cloned().unwrap_or(json!(false)),
        "payload_in_metadata": "payload",
        "normalize_payload_in_metadata": { "space_delimited_claims": ["permission", "scope"] },
        "clear_route_cache": true,
        "local_jwks": { "inline_string": jwks }
    });
    if let Some(headers) = rule.get("fromHeaders").and_then(Value::as_array) {
        let headers: Vec<Value> = headers
            .iter()
            .map(|h| json!({ "name": h["name"], "value_prefix": h["prefix"] }))
            .collect();
        provider["from_headers"] = json!(headers);
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": { "origins-0": provider },
            "rules": [{
                "match": { "prefix": "/" },
                "requires": { "requires_any": { "requirements": [
                    { "provider_name": "origins-0" },
                    { "allow_missing": {} }
                ] } }
            }],
            "bypass_cors_preflight": true
        }
    })
}

/// The WasmPlugin as istiod hands it to Envoy, with the EnvoyFilter's patch merged in.
fn istio_wasm(docs: &[Value]) -> Value {
    let plugin = only(docs, "WasmPlugin");
    let spec = &plugin["spec"];
    let name = format!(
        "{}.{}",
        plugin["metadata"]["namespace"].as_str().unwrap(),
        plugin["metadata"]["name"].as_str().unwrap()
    );
    // istiod turns HOST variables into `host_env_keys`, read from the proxy's environment; the
    // harness's Envoy shares the test's, so the same names get their test values inline.
    let env: Map<String, Value> = spec["vmConfig"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap();
            let value = match name {
                "OTP_MASTER_KEY" => MASTER_KEY,
                "OTP_CREDENTIAL_SERVICE_AUTH" => CALLOUT_AUTH,
                other => panic!("vmConfig.env {other}: no test value"),
            };
            (name.to_string(), json!(value))
        })
        .collect();
    let failure_policy = match spec["failStrategy"].as_str() {
        Some("FAIL_CLOSE") => "FAIL_CLOSED",
        Some(other) => other,
        None => "FAIL_CLOSED",
    };
    let mut config = json!({
        "name": name,
        "root_id": spec.get("pluginName").cloned().unwrap_or(json!("")),
        "failure_policy": failure_policy,
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": spec["pluginConfig"].to_string()
        },
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": wasm().display().to_string() } },
            "environment_variables": { "key_values": env }
        }
    });
    let patch = &only(docs, "EnvoyFilter")["spec"]["configPatches"][0]["patch"];
    assert_eq!(
        patch["value"]["name"],
        json!(name),
        "the patch targets the plugin"
    );
    for (k, v) in patch["value"]["typed_config"]["config"]
        .as_object()
        .unwrap()
    {
        config[k] = v.clone();
    }
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config
        }
    })
}

/// The gateway: jwt_authn, the plugin, the router, in front of `upstream` (an `Echo`: what gets
/// past the filters comes back with `x-echo: yes`). The access log records the `scope` jwt_authn
/// left in the metadata, one line per request.
fn istio_gateway(
    docs: &[Value],
    service: &CredentialService,
    upstream: &Echo,
    access_log: &std::path::Path,
) -> Envoy {
    let cluster = only(docs, "WasmPlugin")["spec"]["pluginConfig"]["credential_service"]["cluster"]
        .as_str()
        .unwrap()
        .to_string();
    let config = json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [{
                "name": "gateway",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "gateway",
                        // Istio's default path normalization (meshConfig pathNormalization BASE).
                        "normalize_path": true,
                        "access_log": [{
                            "name": "envoy.access_loggers.file",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                "path": access_log.display().to_string(),
                                "log_format": { "text_format_source": { "inline_string":
                                    "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload:scope)%\n"
                                } }
                            }
                        }],
                        "route_config": { "virtual_hosts": [{
                            "name": "api",
                            "domains": ["*"],
                            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }]
                        }] },
                        "http_filters": http_filters(docs)
                    }
                }] }]
            }],
            // Istio's name for the in-mesh credential service, as the pluginConfig names it.
            "clusters": [local_cluster(&cluster, service.port), local_cluster("upstream", upstream.port)]
        }
    });
    // JSON is YAML: the harness writes it to envoy.yaml.
    Envoy::start(&config.to_string())
}

/// The HTTP filters in Istio's order: a plugin in the AUTHN phase goes before Istio's jwt_authn,
/// one in AUTHZ (or STATS) after it.
fn http_filters(docs: &[Value]) -> Value {
    let jwt_authn = istio_jwt_authn(jwt_rule(docs));
    let plugin = istio_wasm(docs);
    let router = json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    });
    match only(docs, "WasmPlugin")["spec"]["phase"].as_str() {
        Some("AUTHN") => json!([plugin, jwt_authn, router]),
        Some("AUTHZ" | "STATS") => json!([jwt_authn, plugin, router]),
        other => panic!("WasmPlugin phase {other:?}: not modelled here"),
    }
}

fn local_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port }
            } } }] }]
        }
    })
}

/// A dev-key token for the manifest's issuer and audience, with `claims` merged over them.
fn istio_token(rule: &Map<String, Value>, claims: Value, extra: &[&str]) -> String {
    let mut all = json!({ "iss": rule["issuer"], "aud": rule["audiences"][0] });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    let all = all.to_string();
    let mut args = vec!["--claims", all.as_str()];
    args.extend_from_slice(extra);
    token_with(&args)
}

/// An answer of jwt_authn: its plain-text body and challenge, not the filter's JSON:API.
fn assert_jwt_authn_refused(response: &Response, status: u16, body: &str) {
    assert_eq!(
        (response.status, response.text().as_str()),
        (status, body),
        "{response:?}"
    );
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"http://localhost/user/2021-2/user/otp\", error=\"invalid_token\"")
    );
    assert_eq!(response.header("content-type"), Some("text/plain"));
    assert_eq!(
        response.header("request-id"),
        None,
        "not the filter's answer"
    );
    assert_eq!(response.header("x-echo"), None);
}

fn post_otp(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(port, &request("POST", path, &all, Some(PIN)))
}

#[test]
fn istio_chain_from_the_manifest() {
    let docs = manifest();
    let rule = jwt_rule(&docs).clone();
    let service = CredentialService::start(&[]);
    let upstream = Echo::start();
    let access_log = scratch_dir().join("access.log");
    let envoy = istio_gateway(&docs, &service, &upstream, &access_log);
    let port = envoy.port;
    let pin_checks = || service.stats()["pin_checks"].as_u64().unwrap();

    // Verified by jwt_authn, the payload read from "payload": minted, the PIN checked once. The
    // filter never saw the token (jwt_authn removed it) and got `scope` as Istio's list.
    let good = istio_token(&rule, json!({}), &[]);
    assert_created(&create_otp(port, &good, PIN));
    assert_eq!(pin_checks(), 1);
    wait_for("the access log line", || {
        std::fs::read_to_string(&access_log).is_ok_and(|l| !l.is_empty())
    });
    assert_eq!(
        std::fs::read_to_string(&access_log).unwrap(),
        "[\"openid\",\"user:otp:create\"]\n"
    );
    // Past the filter (a path it does not serve), the upstream gets no token either.
    let auth = format!("Bearer {good}");
    let passed = send(
        port,
        &request(
            "GET",
            "/user/2021-2/user",
            &[("authorization", &auth)],
            None,
        ),
    );
    assert_eq!((passed.status, passed.header("x-echo")), (200, Some("yes")));
    assert!(
        !passed.text().to_ascii_lowercase().contains("authorization"),
        "{}",
        passed.text()
    );

    // No token: jwt_authn lets it through (allow_missing); the filter refuses it.
    let no_token = post_otp(port, OTP_PATH, &[]);
    let e = assert_error(&no_token, 401, "token-missing");
    assert_eq!(
        e["detail"],
        "Send an OAuth access token as 'Authorization: Bearer <token>'."
    );
    assert_eq!(
        no_token.header("www-authenticate"),
        Some("Bearer realm=\"otp\"")
    );
    // A token in the query is no token either (fromHeaders: the Authorization header only).
    let in_query = post_otp(port, &format!("{OTP_PATH}?access_token={good}"), &[]);
    assert_error(&in_query, 401, "token-missing");
    // Nor is a credential jwt_authn does not look at (not `Bearer`): no payload, refused.
    let basic = post_otp(
        port,
        OTP_PATH,
        &[("authorization", "Basic ZGVtby11c2VyOjgyOTk=")],
    );
    let e = assert_error(&basic, 401, "token-rejected");
    assert_eq!(
        e["detail"],
        "The token was not accepted by the proxy's JWT verification."
    );

    // Bad tokens never reach the filter: jwt_authn answers, a wrong audience with 403.
    let other_key = ["--key", "envoy/dev-keys/rs256-next-DEV-ONLY.pem"];
    let cases: [(String, u16, &str); 5] = [
        (
            istio_token(&rule, json!({}), &other_key),
            401,
            "Jwt verification fails",
        ),
        (
            istio_token(&rule, json!({ "exp": 1000 }), &[]),
            401,
            "Jwt is expired",
        ),
        (
            istio_token(
                &rule,
                json!({ "iss": "https://id.elsewhere.example/" }),
                &[],
            ),
            401,
            "Jwt issuer is not configured",
        ),
        (
            istio_token(&rule, json!({}), &["--kid", "unknown"]),
            401,
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (
            istio_token(&rule, json!({ "aud": "another-api" }), &[]),
            403,
            "Audiences in Jwt are not allowed",
        ),
    ];
    for (token, status, body) in &cases {
        assert_jwt_authn_refused(&create_otp(port, token, PIN), *status, body);
    }

    // Verified, but the filter's own rules fail: its JSON:API answers.
    let no_scope = istio_token(&rule, json!({ "scope": "openid" }), &[]);
    let e = assert_error(&create_otp(port, &no_scope, PIN), 403, "insufficient-scope");
    assert_eq!(e["detail"], "The token lacks the scope user:otp:create.");
    let no_user = istio_token(&rule, json!({ "sub": null }), &[]);
    let e = assert_error(
        &create_otp(port, &no_user, PIN),
        401,
        "token-claims-invalid",
    );
    assert_eq!(e["detail"], "The token does not name a user.");
    assert_eq!(
        pin_checks(),
        1,
        "no refused request reached the credential service"
    );
    assert_eq!(
        upstream.requests(),
        1,
        "only the pass-through request reached the upstream"
    );
}
