//! The request body: `{"password": string?, "pin": string?}`, at least one of them non-empty.
//!
//! Like PACE's Go framework: unknown fields are ignored and `null` counts as absent. Unlike a naive
//! decoder, a key given twice is refused (422) so two parsers can never disagree on which one counts.

use serde::Deserialize;
use serde_json::Value;

use crate::failure::Failure;
use crate::secret::Secret;

pub struct Credentials {
    pub password: Option<Secret>,
    pub pin: Option<Secret>,
}

/// The two fields as found, before type checks. Deserialized by hand because serde's derive would
/// also accept a JSON array (`["pw", "8299"]`) as a struct, and we want objects only.
#[derive(Default)]
struct Raw {
    password: Option<Value>,
    pin: Option<Value>,
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = Raw;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
                let mut raw = Raw::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "password" => &mut raw.password,
                        "pin" => &mut raw.pin,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    *slot = Some(map.next_value()?);
                }
                Ok(raw)
            }
        }
        deserializer.deserialize_map(ObjectOnly)
    }
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
    let raw: Raw = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            Failure::BodyInvalid("The body must be a JSON object with each key at most once.")
        } else {
            Failure::BodyNotJson
        }
    })?;
    let password = field(raw.password, "/password")?;
    let pin = field(raw.pin, "/pin")?;
    if password.is_none() && pin.is_none() {
        return Err(Failure::CredentialsMissing);
    }
    Ok(Credentials { password, pin })
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
}
