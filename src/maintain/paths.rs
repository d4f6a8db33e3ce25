//! Locations compared as Iceberg paths. The same file reaches firn in many
//! spellings: the metadata of one writer says `s3a://b/t//data/x`, another's
//! `s3://b/t/data/x`, a Java engine percent-encodes partition values into the
//! key (`name=z%C3%BCrich`), and a listing returns the raw key. Orphan removal
//! and expiry decide what to delete by comparing such spellings, so both sides
//! go through [`normalize`] (Iceberg's `DeleteOrphanFiles` does the same with
//! its scheme and authority equivalences and normalised paths).

use crate::storage::split_location;

/// The one form firn compares locations in: scheme lower-cased with `s3a` and
/// `s3n` as `s3`, a plain absolute path as `file://`, the key's segments
/// percent-decoded, empty segments (duplicate or trailing slashes) dropped.
/// `None` when the location cannot be read that way (a relative path,
/// a `%` not followed by two hex digits, bytes that are not UTF-8): callers
/// keep such a file rather than guess. Decoding makes distinct keys
/// (`a%20b`, `a b`) one form, which can only keep more files, never fewer.
pub fn normalize(location: &str) -> Option<String> {
    let parts = split_location(location)?;
    let mut out = format!("{}://{}", parts.store_scheme(), parts.authority);
    for segment in parts.path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(&decode(segment)?);
    }
    Some(out)
}

/// Strict percent-decoding: every `%` starts a two-hex-digit escape and the
/// result is UTF-8 (the `percent-encoding` crate passes bad escapes through,
/// which would make `100%` and `100%25` one file).
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn n(l: &str) -> String {
        normalize(l).unwrap_or_else(|| panic!("{l} did not normalise"))
    }

    #[test]
    fn scheme_aliases_are_one_scheme() {
        let want = "s3://b/t/data/f.parquet";
        for l in [
            "s3://b/t/data/f.parquet",
            "s3a://b/t/data/f.parquet",
            "s3n://b/t/data/f.parquet",
            "S3A://b/t/data/f.parquet",
        ] {
            assert_eq!(n(l), want, "{l}");
        }
        assert_ne!(n("gs://b/t/f"), n("s3://b/t/f"));
        assert_ne!(n("s3://other/t/f"), n("s3://b/t/f"));
    }

    #[test]
    fn local_spellings_are_one_file() {
        for l in [
            "/w/t/f",
            "file:///w/t/f",
            "file:/w/t/f",
            "file://localhost/w/t/f",
        ] {
            assert_eq!(n(l), "file:///w/t/f", "{l}");
        }
    }

    #[test]
    fn duplicate_and_trailing_slashes_do_not_count() {
        assert_eq!(n("s3://b/t//data///f"), "s3://b/t/data/f");
        assert_eq!(n("s3://b/t/data/"), "s3://b/t/data");
        assert_eq!(n("file:////w//t/"), "file:///w/t");
    }

    #[test]
    fn percent_encoding_is_decoded_on_every_side() {
        // What a Java engine writes into the metadata for `zürich`, `x y`,
        // `k=v` and `a%20b`, against the raw keys a listing returns.
        assert_eq!(n("s3://b/t/p=z%C3%BCrich/f"), n("s3://b/t/p=zürich/f"));
        assert_eq!(n("s3://b/t/p=%E6%9D%B1%E4%BA%AC/f"), "s3://b/t/p=東京/f");
        assert_eq!(n("s3://b/t/p=k%3Dv/f"), "s3://b/t/p=k=v/f");
        assert_eq!(n("s3://b/t/p=a%2520b/f"), "s3://b/t/p=a%20b/f");
        assert_eq!(
            n("s3://b/t/p=x+y/f"),
            "s3://b/t/p=x+y/f",
            "+ is not a space"
        );
        assert_eq!(n("s3://b/t/p=x%20y/f"), "s3://b/t/p=x y/f");
        // Hex digits in either case.
        assert_eq!(n("s3://b/p=z%c3%bcrich"), n("s3://b/p=z%C3%BCrich"));
    }

    #[test]
    fn what_cannot_be_decoded_has_no_form() {
        for l in [
            "s3://b/t/p=100%/f",
            "s3://b/t/p=%zz/f",
            "s3://b/t/p=%4/f",
            "s3://b/t/p=%FF%FE/f",
            "relative/path",
            "",
        ] {
            assert_eq!(normalize(l), None, "{l}");
        }
    }
}
