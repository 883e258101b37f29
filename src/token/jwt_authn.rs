//! The payload Envoy's `jwt_authn` verified, read from the request's dynamic metadata with its
//! JSON types intact.
//!
//! `get_property` hands a *message* over as its protobuf serialization, but a map (a `Struct`
//! included) as a list of string pairs whose values are raw bytes: one byte for a bool, eight for
//! a double, the text for a string. Types are lost there (`false` and `"\0"` read alike). So the
//! adapter reads `metadata` whole, an `envoy.config.core.v3.Metadata` message, and this module
//! decodes it and takes `filter_metadata["envoy.filters.http.jwt_authn"][payload_key]`.
//!
//! JSON numbers arrive as doubles. Integral ones within ±2^53 come back as JSON integers, so
//! `"equals": 1` and a claim `1` compare as they would in `jwt` mode.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

/// Where `jwt_authn` keeps what it verified.
pub const FILTER: &str = "envoy.filters.http.jwt_authn";

/// Largest integer a double holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// The part of `envoy.config.core.v3.Metadata` the filter reads (field 1); prost skips the rest.
#[derive(Clone, PartialEq, Message)]
pub struct Metadata {
    #[prost(btree_map = "string, message", tag = "1")]
    pub filter_metadata: BTreeMap<String, prost_types::Struct>,
}

/// The verified payload under `payload_key` (jwt_authn's `payload_in_metadata`), from the
/// serialized dynamic metadata. `None` when jwt_authn left none (it accepted no token), or when
/// the bytes do not decode: the caller refuses the request either way. prost bounds the nesting
/// depth (100), so a deep payload cannot exhaust the stack.
pub fn payload(metadata: &[u8], payload_key: &str) -> Option<Map<String, Value>> {
    let mut metadata = Metadata::decode(metadata).ok()?;
    let mut filter = metadata.filter_metadata.remove(FILTER)?;
    match filter.fields.remove(payload_key)?.kind {
        Some(Kind::StructValue(payload)) => Some(object(payload)),
        _ => None,
    }
}

fn object(s: prost_types::Struct) -> Map<String, Value> {
    s.fields.into_iter().map(|(k, v)| (k, value(v))).collect()
}

fn value(v: prost_types::Value) -> Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(object(s)),
    }
}

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        // Exact: integral and within the range a double holds without rounding.
        #[allow(clippy::cast_possible_truncation)]
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{ListValue, Struct};
    use serde_json::json;

    fn v(kind: Kind) -> prost_types::Value {
        prost_types::Value { kind: Some(kind) }
    }

    fn fields(fields: Vec<(&str, prost_types::Value)>) -> Struct {
        Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    /// Dynamic metadata as Envoy serializes it, with `payload` under jwt_authn's `jwt_payload`.
    fn metadata(payload: Struct) -> Vec<u8> {
        let jwt_authn = fields(vec![("jwt_payload", v(Kind::StructValue(payload)))]);
        let other = fields(vec![("x", v(Kind::BoolValue(true)))]);
        Metadata {
            filter_metadata: [
                (FILTER.to_string(), jwt_authn),
                ("envoy.lb".to_string(), other),
            ]
            .into_iter()
            .collect(),
        }
        .encode_to_vec()
    }

    #[test]
    fn every_json_type_survives() {
        let payload = fields(vec![
            ("sub", v(Kind::StringValue("demo-user".into()))),
            ("no", v(Kind::BoolValue(false))),
            ("yes", v(Kind::BoolValue(true))),
            ("zero", v(Kind::NumberValue(0.0))),
            ("one", v(Kind::NumberValue(1.0))),
            ("half", v(Kind::NumberValue(0.5))),
            ("big", v(Kind::NumberValue(1e300))),
            ("nothing", v(Kind::NullValue(0))),
            (
                "scp",
                v(Kind::ListValue(ListValue {
                    values: vec![v(Kind::StringValue("user:otp:create".into()))],
                })),
            ),
            (
                "obj",
                v(Kind::StructValue(fields(vec![(
                    "tier",
                    v(Kind::StringValue("gold".into())),
                )]))),
            ),
            ("empty", v(Kind::StructValue(Struct::default()))),
        ]);
        let claims = Value::Object(payload_of(&metadata(payload)).unwrap());
        assert_eq!(
            claims,
            json!({
                "sub": "demo-user", "no": false, "yes": true, "zero": 0, "one": 1, "half": 0.5,
                "big": 1e300, "nothing": null, "scp": ["user:otp:create"],
                "obj": {"tier": "gold"}, "empty": {}
            })
        );
    }

    fn payload_of(bytes: &[u8]) -> Option<Map<String, Value>> {
        payload(bytes, "jwt_payload")
    }

    #[test]
    fn reads_what_envoy_1_40_sent() {
        // `get_property(["metadata"])` inside Envoy 1.40 for a token with
        // {"linked": false, "n": 1, "o": {"a": [1, "x"]}} merged over the demo claims.
        let hex = "0a9a020a1c656e766f792e66696c746572732e687474702e6a77745f617574686e12f9010af6010a0b6a77745f7061796c6f616412e6012ae3010a180a0361756412111a0f6f74702d66696c7465722d64656d6f0a0c0a066c696e6b6564120220000a120a03737562120b1a0964656d6f2d757365720a200a016f121b2a190a170a0161121232100a0911000000000000f03f0a031a01780a100a036578701209110000804aa8c3da410a100a03696174120911000080c6a4c3da410a210a0573636f706512181a166f70656e696420757365723a6f74703a6372656174650a0e0a016e120911000000000000f03f0a2c0a0369737312251a2368747470733a2f2f69642e64656d6f2e696e76616c69642f7265616c6d732f70616365";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let claims = payload_of(&bytes).unwrap();
        assert_eq!(claims["linked"], json!(false));
        assert_eq!(claims["n"], json!(1));
        assert_eq!(claims["o"], json!({"a": [1, "x"]}));
        assert_eq!(claims["sub"], json!("demo-user"));
        assert_eq!(claims["aud"], json!("otp-filter-demo"));
        assert_eq!(payload(&bytes, "other_key"), None);
    }

    #[test]
    fn no_payload_or_garbage_is_none() {
        assert_eq!(payload_of(&[]), None, "no metadata at all");
        let none = Metadata::default().encode_to_vec();
        assert_eq!(payload_of(&none), None);
        assert_eq!(payload_of(&[0x0a, 0xff]), None, "a length past the end");
        assert_eq!(payload_of(b"\x01\x01\x01"), None);
        // A payload that is not an object.
        let jwt_authn = fields(vec![("jwt_payload", v(Kind::StringValue("x".into())))]);
        let not_object = Metadata {
            filter_metadata: [(FILTER.to_string(), jwt_authn)].into_iter().collect(),
        }
        .encode_to_vec();
        assert_eq!(payload_of(&not_object), None);
        // Nesting beyond prost's recursion limit is refused, not a stack overflow.
        let mut deep = Struct::default();
        for _ in 0..200 {
            deep = fields(vec![("a", v(Kind::StructValue(deep)))]);
        }
        assert_eq!(payload_of(&metadata(deep)), None);
    }
}
