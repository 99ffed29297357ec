//! Where a proxied request may go: the route's base URL plus the caller's path, and never
//! anywhere else.
//!
//! The caller's part of the path arrives percent-encoded, as sent. It is checked segment by
//! segment, decoded (twice, against double encoding), before it is appended to the base URL by
//! plain concatenation: `Url::join` would let `evil.example:80/x` or `//host/x` change the host.
//! The result is parsed and checked once more: same scheme, host and port as the base, and a path
//! under the base path. This module must never produce a URL outside the route's base path.

use url::Url;

/// Why a caller's path was refused (a 400 for the caller; the sentence says what to change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path may not contain backslashes (\\ or %5C)")]
    Backslash,
    #[error("the path may not contain encoded slashes (%2F)")]
    EncodedSlash,
    #[error("the path may not contain '.' or '..' segments, encoded or not")]
    DotSegment,
    #[error("the path may not contain empty segments (//)")]
    EmptySegment,
    #[error("the path may not contain control characters, '#' or malformed percent-encoding")]
    BadCharacter,
    #[error("the path does not stay under the route's upstream")]
    Escapes,
}

/// How many rounds of percent-decoding are checked for dot segments and separators: an upstream
/// (or something in front of it) that decodes twice must not see `..` either.
const DECODE_ROUNDS: usize = 2;

/// The upstream URL for `rest` (the raw, still encoded path after `/proxy/{name}/`) and the raw
/// query, under `base` (which ends with '/').
pub fn target(base: &Url, rest: &str, query: Option<&str>) -> Result<Url, PathError> {
    check_rest(rest)?;
    let mut text = String::with_capacity(base.as_str().len() + rest.len() + 1);
    text.push_str(base.as_str());
    text.push_str(rest);
    let mut url = Url::parse(&text).map_err(|_| PathError::BadCharacter)?;
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        if q.contains('#') || q.bytes().any(|b| b.is_ascii_control()) {
            return Err(PathError::BadCharacter);
        }
        url.set_query(Some(q));
    }
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username() == base.username()
        && url.password() == base.password();
    if !same_origin || !url.path().starts_with(base.path()) {
        return Err(PathError::Escapes);
    }
    Ok(url)
}

/// The segment rules, on the raw path.
fn check_rest(rest: &str) -> Result<(), PathError> {
    if rest.is_empty() {
        return Ok(());
    }
    if rest.contains('#') || rest.contains('?') {
        return Err(PathError::BadCharacter);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, raw) in segments.iter().enumerate() {
        // A trailing slash leaves one empty last segment, which is harmless; any other empty
        // segment is `//`, which some servers and URL parsers read as the start of a host.
        if raw.is_empty() && i != last {
            return Err(PathError::EmptySegment);
        }
        check_segment(raw.as_bytes())?;
    }
    Ok(())
}

fn check_segment(raw: &[u8]) -> Result<(), PathError> {
    let mut current = raw.to_vec();
    for _ in 0..=DECODE_ROUNDS {
        if current.contains(&b'\\') {
            return Err(PathError::Backslash);
        }
        if current.contains(&b'/') {
            return Err(PathError::EncodedSlash);
        }
        if current == b"." || current == b".." {
            return Err(PathError::DotSegment);
        }
        if current.iter().any(|b| b.is_ascii_control()) {
            return Err(PathError::BadCharacter);
        }
        if !current.contains(&b'%') {
            return Ok(());
        }
        current = percent_decode(&current)?;
    }
    Ok(())
}

/// One round of percent-decoding; a `%` not followed by two hex digits is refused (servers differ
/// in what they make of it).
fn percent_decode(input: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3).ok_or(PathError::BadCharacter)?;
            let text = std::str::from_utf8(hex).map_err(|_| PathError::BadCharacter)?;
            let byte = u8::from_str_radix(text, 16).map_err(|_| PathError::BadCharacter)?;
            out.push(byte);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Url {
        Url::parse("https://platform.example/storage/api/v1/").unwrap()
    }

    fn ok(rest: &str) -> String {
        target(&base(), rest, None).unwrap().to_string()
    }

    fn refused(rest: &str) -> PathError {
        target(&base(), rest, None).unwrap_err()
    }

    #[test]
    fn ordinary_paths_and_queries_are_appended() {
        assert_eq!(ok(""), "https://platform.example/storage/api/v1/");
        assert_eq!(
            ok("instances/1/data"),
            "https://platform.example/storage/api/v1/instances/1/data"
        );
        assert_eq!(
            ok("instances/"),
            "https://platform.example/storage/api/v1/instances/"
        );
        assert_eq!(
            ok("a%20b/c%3Ad"),
            "https://platform.example/storage/api/v1/a%20b/c%3Ad"
        );
        let with_query = target(&base(), "x", Some("a=1&b=%2F")).unwrap();
        assert_eq!(
            with_query.as_str(),
            "https://platform.example/storage/api/v1/x?a=1&b=%2F"
        );
    }

    #[test]
    fn dot_segments_are_refused_in_every_spelling() {
        for rest in [
            "..",
            "../x",
            "a/../../x",
            "a/..",
            ".",
            "./x",
            "%2e%2e/x",
            "%2E%2E/x",
            "%2e%2E/x",
            ".%2e/x",
            "%2e./x",
            "a/%2e",
            "%252e%252e/x",
            "%252E%252E/x",
        ] {
            assert_eq!(refused(rest), PathError::DotSegment, "{rest}");
        }
    }

    #[test]
    fn encoded_slashes_and_backslashes_are_refused() {
        for rest in ["a%2fb", "a%2Fb", "%2f%2fevil.example/x", "a%252fb"] {
            assert_eq!(refused(rest), PathError::EncodedSlash, "{rest}");
        }
        for rest in ["a\\b", "..\\x", "a%5cb", "a%5Cb", "%5c%5cevil/x", "a%255cb"] {
            assert_eq!(refused(rest), PathError::Backslash, "{rest}");
        }
    }

    #[test]
    fn host_tricks_are_refused() {
        assert_eq!(refused("/evil.example/x"), PathError::EmptySegment);
        assert_eq!(refused("a//b"), PathError::EmptySegment);
        assert_eq!(
            refused("http://evil.example/x"),
            PathError::EmptySegment,
            "absolute URL as the path"
        );
        // A first segment that looks like a scheme is only a path segment here.
        assert_eq!(
            ok("evil.example:80/x"),
            "https://platform.example/storage/api/v1/evil.example:80/x"
        );
        assert_eq!(
            ok("@evil.example/x"),
            "https://platform.example/storage/api/v1/@evil.example/x"
        );
        assert_eq!(refused("a#b"), PathError::BadCharacter);
        assert_eq!(refused("a%0ab"), PathError::BadCharacter);
        assert_eq!(refused("a%zz"), PathError::BadCharacter);
        assert_eq!(refused("a%2"), PathError::BadCharacter);
        assert!(target(&base(), "x", Some("a#b")).is_err());
    }

    proptest! {
        /// Whatever the caller sends, the result stays on the base's origin and under its path.
        #[test]
        fn any_path_stays_under_the_base(rest in "[a-zA-Z0-9./%\\\\:@?#_-]{0,40}") {
            if let Ok(url) = target(&base(), &rest, None) {
                prop_assert_eq!(url.host_str(), Some("platform.example"));
                prop_assert_eq!(url.scheme(), "https");
                prop_assert!(url.path().starts_with("/storage/api/v1/"), "{}", url);
                for segment in url.path_segments().into_iter().flatten() {
                    prop_assert!(segment != ".." && segment != ".");
                }
            }
        }

        #[test]
        fn dot_dot_with_any_encoding_of_its_dots_is_refused(
            a in prop::sample::select(vec![".", "%2e", "%2E", "%252e"]),
            b in prop::sample::select(vec![".", "%2e", "%2E", "%252E"]),
            prefix in "[a-z]{0,5}",
        ) {
            let rest = if prefix.is_empty() { format!("{a}{b}/x") } else { format!("{prefix}/{a}{b}/x") };
            prop_assert!(target(&base(), &rest, None).is_err(), "{}", rest);
        }
    }
}
