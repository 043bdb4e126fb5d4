//! Pulling the user id and display name out of session data by a configured dotted path.

use serde_json::{Map, Value};

/// Looks up `path` in a session's top-level map. Top-level keys may themselves contain dots
/// (axum-login stores its data under `axum-login.data`), so the longest top-level key that
/// prefixes the path wins, and the rest is walked through nested objects.
pub fn lookup<'a>(data: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut best: Option<(&str, &Value)> = None;
    for (k, v) in data {
        let matches = path == k
            || (path.starts_with(k.as_str()) && path.as_bytes().get(k.len()) == Some(&b'.'));
        if matches && best.is_none_or(|(b, _)| k.len() > b.len()) {
            best = Some((k, v));
        }
    }
    let (key, mut value) = best?;
    let rest = path[key.len()..].trim_start_matches('.');
    for seg in rest.split('.').filter(|s| !s.is_empty()) {
        value = value.as_object()?.get(seg)?;
    }
    Some(value)
}

/// A user id or name as text: strings as they are, numbers printed (axum-login ids are often i64).
pub fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn walks_dotted_keys_and_nested_objects() {
        let data = json!({
            "axum-login.data": {"user_id": 42, "auth_hash": [1, 2]},
            "passport": {"user": "alice"},
            "display_name": "Alice",
        });
        let m = data.as_object().unwrap();
        assert_eq!(
            lookup(m, "axum-login.data.user_id")
                .and_then(as_text)
                .as_deref(),
            Some("42")
        );
        assert_eq!(
            lookup(m, "passport.user").and_then(as_text).as_deref(),
            Some("alice")
        );
        assert_eq!(
            lookup(m, "display_name").and_then(as_text).as_deref(),
            Some("Alice")
        );
        assert!(lookup(m, "passport.user.id").is_none());
        assert!(lookup(m, "nope").is_none());
        assert!(lookup(m, "passport").and_then(as_text).is_none());
    }
}
