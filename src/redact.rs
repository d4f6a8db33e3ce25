//! Credentials in URLs never leave the process: a catalog URI
//! (`postgres://firn:PASSWORD@db/iceberg`), a Pushgateway behind basic auth
//! (`https://user:PASSWORD@pushgateway`) or a REST catalog URI may carry a
//! password, and firn shows URLs in logs, errors, `Debug` output and
//! `firn status --json`. Everything that shows one goes through
//! [`credentials`]; connecting uses the URL as given.

use std::borrow::Cow;

/// What a password is shown as.
pub const MASK: &str = "***";

/// `text` with the password of every URL in it replaced by [`MASK`]:
/// `scheme://user:password@host` becomes `scheme://user:***@host`. `text`
/// may be one URL or a message that holds URLs anywhere; the user name is
/// kept (it says which account, and is no secret), and text without a
/// password comes back unchanged (borrowed).
pub fn credentials(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut done = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        // The authority ends where RFC 3986 ends it, or where the URL ends
        // in running text.
        let len = text[start..]
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>' | '`') || c.is_whitespace()
            })
            .unwrap_or(text.len() - start);
        let authority = &text[start..start + len];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && &authority[colon + 1..at] != MASK
        {
            out.push_str(&text[done..start + colon + 1]);
            out.push_str(MASK);
            done = start + at;
        }
        from = start + len;
    }
    if done == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_wherever_a_url_appears() {
        for (text, shown) in [
            (
                "postgres://firn:s3cret@127.0.0.1:5432/test",
                "postgres://firn:***@127.0.0.1:5432/test",
            ),
            ("http://user:pa:ss@gw:9091", "http://user:***@gw:9091"),
            (
                "pushing run metrics to https://u:p%40ss@gw/metrics/job/x: 401, then \
                 GET http://a:b@c?x=1 (url \"http://d:e@f\")",
                "pushing run metrics to https://u:***@gw/metrics/job/x: 401, then \
                 GET http://a:***@c?x=1 (url \"http://d:***@f\")",
            ),
            // No password: unchanged.
            ("postgres://firn@db/iceberg", "postgres://firn@db/iceberg"),
            ("sqlite://x.db?mode=rwc", "sqlite://x.db?mode=rwc"),
            ("file:///tmp/a@b:c/d", "file:///tmp/a@b:c/d"),
            ("s3://bucket/key@v1:2", "s3://bucket/key@v1:2"),
            ("http://host:8080/p@x", "http://host:8080/p@x"),
            ("no url at all: a@b", "no url at all: a@b"),
            // Already masked: unchanged.
            ("http://u:***@h", "http://u:***@h"),
        ] {
            assert_eq!(credentials(text), shown, "{text}");
        }
        assert!(matches!(credentials("http://h/x"), Cow::Borrowed(_)));
    }

    /// What firn shows of its configuration keeps the secrets out: the
    /// catalog URI's password, the REST credential, librdkafka property
    /// values, the Pushgateway's password.
    #[test]
    fn configuration_debug_shows_no_secret() {
        use crate::config::{Config, Overrides};
        let sql = Overrides {
            catalog_uri: Some("postgres://firn:hunter2@db/iceberg".into()),
            warehouse: Some("s3://bucket/wh".into()),
            kafka_properties: [("sasl.password".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        };
        let rest = Overrides {
            catalog_type: Some("rest".into()),
            catalog_uri: Some("https://firn:hunter2@catalog.example.com".into()),
            catalog_credential: Some("id:hunter2".into()),
            ..sql.clone()
        };
        let publish = crate::telemetry::run::Publish {
            pushgateway: Some(url::Url::parse("https://firn:hunter2@gw:9091").unwrap()),
            metrics_file: None,
        };
        let shown = [
            format!("{sql:?}"),
            format!("{:?}", Config::with_overrides(&sql).unwrap()),
            format!("{rest:?}"),
            format!("{:?}", Config::with_overrides(&rest).unwrap()),
            format!("{publish:?}"),
        ];
        for s in shown {
            assert!(!s.contains("hunter2"), "{s}");
            assert!(s.contains(":***@"), "{s}");
        }
    }
}
