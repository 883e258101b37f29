//! Accept and Content-Type rules from docs/contract.md ("Decisions").
//!
//! Accept passes when it is missing, or names `*/*`, `application/*`, `application/json`, or
//! `application/vnd.api+json` without media-type parameters, with a non-zero q. JSON:API adds one rule:
//! if every `application/vnd.api+json` in Accept carries parameters, the answer is 406 even when
//! another range would have matched.
//! Content-Type passes as `application/json` (optionally `charset=utf-8`) or as
//! `application/vnd.api+json` without parameters.

const JSON_API: &str = "application/vnd.api+json";

struct MediaRange<'a> {
    essence: &'a str,
    /// Parameters other than `q`, which belongs to Accept rather than to the media type.
    params: Vec<(&'a str, &'a str)>,
    q_is_zero: bool,
}

fn parse_range(text: &str) -> Option<MediaRange<'_>> {
    let mut parts = text.split(';');
    let essence = parts.next()?.trim();
    let (kind, sub) = essence.split_once('/')?;
    if kind.is_empty() || sub.is_empty() || !is_token(kind) || !is_token(sub) {
        return None;
    }
    let mut params = Vec::new();
    let mut q_is_zero = false;
    for param in parts {
        let (name, value) = param.split_once('=')?;
        let (name, value) = (name.trim(), value.trim().trim_matches('"'));
        if name.is_empty() || !is_token(name) {
            return None;
        }
        if name.eq_ignore_ascii_case("q") {
            q_is_zero = value.parse::<f32>().ok()? == 0.0;
        } else {
            params.push((name, value));
        }
    }
    Some(MediaRange {
        essence,
        params,
        q_is_zero,
    })
}

/// RFC 9110 token characters.
fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// True when we may answer this Accept header with JSON or JSON:API.
pub fn accept_is_acceptable(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return true };
    if accept.trim().is_empty() {
        return true;
    }
    let mut ranges = Vec::new();
    for item in accept.split(',') {
        if item.trim().is_empty() {
            continue; // RFC 9110 lists allow empty elements
        }
        match parse_range(item) {
            Some(range) => ranges.push(range),
            None => return false,
        }
    }
    let json_api: Vec<&MediaRange> = ranges
        .iter()
        .filter(|r| r.essence.eq_ignore_ascii_case(JSON_API))
        .collect();
    if !json_api.is_empty() && json_api.iter().all(|r| !r.params.is_empty()) {
        return false;
    }
    ranges.iter().filter(|r| !r.q_is_zero).any(|r| {
        let e = r.essence;
        e == "*/*"
            || e.eq_ignore_ascii_case("application/*")
            || e.eq_ignore_ascii_case("application/json")
            || (e.eq_ignore_ascii_case(JSON_API) && r.params.is_empty())
    })
}

/// True when the request body is declared as JSON we read.
pub fn content_type_is_supported(content_type: Option<&str>) -> bool {
    let Some(range) = content_type.and_then(parse_range) else {
        return false;
    };
    if range.q_is_zero || content_type.is_some_and(|c| c.contains(',')) {
        return false;
    }
    if range.essence.eq_ignore_ascii_case("application/json") {
        return range.params.iter().all(|(name, value)| {
            name.eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")
        });
    }
    range.essence.eq_ignore_ascii_case(JSON_API) && range.params.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_table() {
        let pass = [
            None,
            Some(""),
            Some("*/*"),
            Some("application/*"),
            Some("application/json"),
            Some("APPLICATION/JSON"),
            Some("application/json; charset=utf-8"),
            Some("application/vnd.api+json"),
            Some("application/vnd.api+json;q=0.5"),
            Some("text/html, application/json;q=0.1"),
            Some("text/html, */*;q=0.8"),
            Some("application/vnd.api+json; ext=x, application/vnd.api+json"),
        ];
        for accept in pass {
            assert!(accept_is_acceptable(accept), "{accept:?} should pass");
        }
        let fail = [
            Some("text/html"),
            Some("text/*"),
            Some("application/xml"),
            Some("application/json;q=0"),
            Some("application/vnd.api+json; ext=x"),
            Some("application/json, application/vnd.api+json; profile=y"),
            Some("*/*, application/vnd.api+json; ext=x"),
            Some("json"),
            Some("application/json; q"),
            Some("application/json;q=abc"),
        ];
        for accept in fail {
            assert!(!accept_is_acceptable(accept), "{accept:?} should fail");
        }
    }

    #[test]
    fn content_type_table() {
        let pass = [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/vnd.api+json",
        ];
        for ct in pass {
            assert!(content_type_is_supported(Some(ct)), "{ct:?} should pass");
        }
        let fail = [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "application/json; boundary=x",
            "application/vnd.api+json; ext=x",
            "application/json, text/plain",
            "application/*",
            "*/*",
        ];
        for ct in fail {
            assert!(!content_type_is_supported(Some(ct)), "{ct:?} should fail");
        }
        assert!(!content_type_is_supported(None));
    }
}
