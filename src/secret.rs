//! [`Secret`]: an API key that stays out of logs and files.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret such as an API key. Its `Debug` output is redacted and it is never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret in clear, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// What stands in for a secret wherever it would be shown: an error, a log line, a
/// saved cassette.
pub const REDACTED: &str = "[redacted]";

/// `text` with each of `secrets` replaced by [`REDACTED`], in whatever form a service
/// may echo it back: as given, percent-encoded (upper or lower case hex, a space as
/// `+` or `%20`, as a key sent in a query string comes back in a URL) or JSON-escaped
/// (a `"`, `\` or `/` preceded by `\`). Empty secrets are skipped.
pub(crate) fn redact<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = text.to_owned();
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        text = redact_one(&text, secret.as_bytes());
    }
    text
}

fn redact_one(text: &str, secret: &[u8]) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match match_len(&bytes[at..], secret) {
            Some(len) => {
                out.extend_from_slice(REDACTED.as_bytes());
                at += len;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    // A match starts at a character (the secret's first byte, or an ASCII escape) and
    // ends after one, so the text stays UTF-8; lossy only to never panic.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// How many bytes at the start of `text` spell `secret`, each byte as itself or escaped.
fn match_len(text: &[u8], secret: &[u8]) -> Option<usize> {
    let mut at = 0;
    for &wanted in secret {
        at += escaped_len(text.get(at..)?, wanted)?;
    }
    Some(at)
}

/// How many bytes at the start of `text` spell the byte `wanted`.
fn escaped_len(text: &[u8], wanted: u8) -> Option<usize> {
    match text {
        [b, ..] if *b == wanted => Some(1),
        [b'%', high, low, ..] if hex(*high)? * 16 + hex(*low)? == wanted => Some(3),
        [b'+', ..] if wanted == b' ' => Some(1),
        [b'\\', b, ..] if *b == wanted && matches!(wanted, b'"' | b'\\' | b'/') => Some(2),
        _ => None,
    }
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"**********\")")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_expose_gives_the_value() {
        let secret = Secret::new("sk-very-secret");
        assert_eq!(format!("{secret:?}"), "Secret(\"**********\")");
        assert_eq!(secret.expose(), "sk-very-secret");
    }

    #[test]
    fn redaction_catches_the_secret_percent_encoded_and_json_escaped() {
        let key = "owm/LEAKCANARY+x= y\"";
        for echoed in [
            "owm/LEAKCANARY+x= y\"",
            "owm%2FLEAKCANARY%2Bx%3D+y%22",
            "owm%2fLEAKCANARY%2bx%3d%20y%22",
            "owm/LEAKCANARY%2Bx=%20y\\\"",
            "owm\\/LEAKCANARY+x= y\\\"",
        ] {
            let text = format!("GET /weather?appid={echoed}&units=metric: 401");
            let shown = redact(&text, ["unrelated", key]);
            assert_eq!(shown, "GET /weather?appid=[redacted]&units=metric: 401", "{echoed}");
        }
        assert_eq!(redact("Bearer sk-1 sk-1é", ["sk-1", ""]), "Bearer [redacted] [redacted]é");
        assert_eq!(redact("100% sure, %zz", ["%zz"]), "100% sure, [redacted]");
    }
}
