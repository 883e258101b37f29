//! The request body: `{"password": string?, "pin": string?}`, at least one of them non-empty.
//!
//! Like PACE's Go framework: unknown fields are ignored and `null` counts as absent. Unlike a naive
//! decoder, a key given twice is refused (422) so two parsers can never disagree on which one counts.

use serde_json::Value;

use crate::reply::failure::Failure;
use crate::secret::Secret;

pub struct Credentials {
    pub password: Option<Secret>,
    pub pin: Option<Secret>,
}

/// The named fields of a JSON object, before type checks. Read by hand because serde's derive would
/// also accept a JSON array as a struct and silently keep the last of duplicate keys.
struct Fields<const N: usize> {
    names: [&'static str; N],
    values: [Option<Value>; N],
}

impl<'de, const N: usize> serde::de::DeserializeSeed<'de> for Fields<N> {
    type Value = [Option<Value>; N];

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, const N: usize> serde::de::Visitor<'de> for Fields<N> {
    type Value = [Option<Value>; N];

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> Result<Self::Value, A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(slot) = self
                .names
                .iter()
                .position(|n| *n == key.as_ref())
                .and_then(|i| self.values.get_mut(i))
            else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            if slot.is_some() {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(self.values)
    }
}

/// The values of `names` in a JSON object body; unknown fields are skipped.
fn read_fields<const N: usize>(
    body: &[u8],
    names: [&'static str; N],
) -> Result<[Option<Value>; N], Failure> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = Fields {
        names,
        values: std::array::from_fn(|_| None),
    };
    let classify = |e: serde_json::Error| {
        if e.is_data() {
            Failure::BodyInvalid("The body must be a JSON object with each key at most once.")
        } else {
            Failure::BodyNotJson
        }
    };
    let values = fields.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(values)
}

fn field(value: Option<Value>, pointer: &'static str) -> Result<Option<Secret>, Failure> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(Failure::FieldInvalid {
            pointer,
            detail: "must not be empty",
        }),
        Some(Value::String(s)) => Ok(Some(Secret::new(s))),
        Some(_) => Err(Failure::FieldInvalid {
            pointer,
            detail: "must be a string",
        }),
    }
}

pub fn parse(body: &[u8]) -> Result<Credentials, Failure> {
    let [password, pin] = read_fields(body, ["password", "pin"])?;
    let password = field(password, "/password")?;
    let pin = field(pin, "/pin")?;
    if password.is_none() && pin.is_none() {
        return Err(Failure::CredentialsMissing);
    }
    Ok(Credentials { password, pin })
}

/// The verify body (PACE 2022-1): `{"otp": string, "types": [string]?}`.
pub struct VerifyRequest {
    pub otp: Secret,
}

/// The only type of code this filter mints (PACE's `account`).
pub const KNOWN_TYPES: [&str; 1] = ["account"];

/// JSON pointers for `types` entries; longer lists are refused at `/types`.
const TYPE_POINTERS: [&str; 8] = [
    "/types/0", "/types/1", "/types/2", "/types/3", "/types/4", "/types/5", "/types/6", "/types/7",
];

pub fn parse_verify(body: &[u8]) -> Result<VerifyRequest, Failure> {
    let [otp, types] = read_fields(body, ["otp", "types"])?;
    let otp = match otp {
        None | Some(Value::Null) => Err(Failure::FieldInvalid {
            pointer: "/otp",
            detail: "is required",
        }),
        Some(value) => field(Some(value), "/otp"),
    }?
    .ok_or(Failure::FieldInvalid {
        pointer: "/otp",
        detail: "is required",
    })?;
    match types {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.len() <= TYPE_POINTERS.len() => {
            for (item, pointer) in items.iter().zip(TYPE_POINTERS) {
                match item.as_str() {
                    Some(name) if KNOWN_TYPES.contains(&name) => {}
                    Some(_) => {
                        return Err(Failure::FieldInvalid {
                            pointer,
                            detail: "is not a known type (known: account)",
                        })
                    }
                    None => {
                        return Err(Failure::FieldInvalid {
                            pointer,
                            detail: "must be a string",
                        })
                    }
                }
            }
        }
        Some(_) => {
            return Err(Failure::FieldInvalid {
                pointer: "/types",
                detail: "must be an array of at most 8 type names",
            })
        }
    }
    Ok(VerifyRequest { otp })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> Failure {
        match parse(body.as_bytes()) {
            Ok(_) => panic!("{body} should fail"),
            Err(f) => f,
        }
    }

    #[test]
    fn accepts_either_or_both() {
        let c = parse(br#"{"pin":"8299"}"#).expect("pin");
        assert!(c.password.is_none());
        assert_eq!(c.pin.as_ref().map(Secret::expose), Some(&b"8299"[..]));
        let c = parse(br#"{"password":"pw","pin":null,"extra":[1]}"#).expect("password");
        assert_eq!(c.password.as_ref().map(Secret::expose), Some(&b"pw"[..]));
        assert!(c.pin.is_none());
    }

    #[test]
    fn refusals_point_at_the_field() {
        let pin_type = Failure::FieldInvalid {
            pointer: "/pin",
            detail: "must be a string",
        };
        assert_eq!(err(r#"{"pin":8299}"#), pin_type);
        assert_eq!(err(r#"{"pin":["8299"]}"#), pin_type);
        assert_eq!(
            err(r#"{"password":""}"#),
            Failure::FieldInvalid {
                pointer: "/password",
                detail: "must not be empty"
            }
        );
        assert_eq!(err(r#"{}"#), Failure::CredentialsMissing);
        assert_eq!(err(r#"{"pin":null}"#), Failure::CredentialsMissing);
        assert_eq!(err(""), Failure::BodyNotJson);
        assert_eq!(err(r#"{"pin":"8299""#), Failure::BodyNotJson);
        assert_eq!(err("\u{feff}{\"pin\":\"8299\"}"), Failure::BodyNotJson);
        assert_eq!(err(r#"{"pin":"1"} x"#), Failure::BodyNotJson);
        assert!(matches!(err(r#"["8299"]"#), Failure::BodyInvalid(_)));
        assert!(matches!(
            err(r#"{"pin":"1","pin":"8299"}"#),
            Failure::BodyInvalid(_)
        ));
        assert!(matches!(err("null"), Failure::BodyInvalid(_)));
    }

    fn verify_err(body: &str) -> Failure {
        match parse_verify(body.as_bytes()) {
            Ok(_) => panic!("{body} should fail"),
            Err(f) => f,
        }
    }

    #[test]
    fn verify_bodies() {
        let ok = parse_verify(br#"{"otp":"123456","types":["account"]}"#).expect("valid");
        assert_eq!(ok.otp.expose(), b"123456");
        assert!(parse_verify(br#"{"otp":"123456"}"#).is_ok());
        assert!(parse_verify(br#"{"otp":"123456","types":null,"x":1}"#).is_ok());
        let field = |pointer, detail| Failure::FieldInvalid { pointer, detail };
        assert_eq!(verify_err(r#"{}"#), field("/otp", "is required"));
        assert_eq!(verify_err(r#"{"otp":null}"#), field("/otp", "is required"));
        assert_eq!(
            verify_err(r#"{"otp":123456}"#),
            field("/otp", "must be a string")
        );
        assert_eq!(
            verify_err(r#"{"otp":""}"#),
            field("/otp", "must not be empty")
        );
        assert_eq!(
            verify_err(r#"{"otp":"1","types":["account","payment"]}"#),
            field("/types/1", "is not a known type (known: account)")
        );
        assert_eq!(
            verify_err(r#"{"otp":"1","types":[1]}"#),
            field("/types/0", "must be a string")
        );
        assert_eq!(
            verify_err(r#"{"otp":"1","types":"account"}"#),
            field("/types", "must be an array of at most 8 type names")
        );
        assert!(matches!(
            verify_err(r#"{"otp":"1","otp":"2"}"#),
            Failure::BodyInvalid(_)
        ));
        assert_eq!(verify_err("{"), Failure::BodyNotJson);
    }
}
