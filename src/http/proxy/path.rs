//! Where a proxied request may go: the route's base URL plus the caller's path, and never
//! anywhere else.
//!
//! The caller's part of the path arrives percent-encoded, as sent. It is checked segment by
//! segment before it is appended to the base URL by plain concatenation: `Url::join` would let
//! `evil.example:80/x` or `//host/x` change the host. Each segment is percent-decoded again and
//! again until it stops changing (at most [`DECODE_ROUNDS`] rounds), and every round must be valid
//! UTF-8 (no overlong forms such as `%c0%ae`) and free of slashes, backslashes and control
//! characters. A segment that, in any round, is made only of dots and whitespace once its
//! `;parameters` are cut off is refused: Tomcat, Jetty and Spring read `..;` as `..`, and some
//! servers trim `..%20` or treat `...` specially. The result is the path and query only, parsed
//! and checked once more to be under the base path: the scheme, host and port a request goes to
//! are always the route's own, never read from this text. This module must never produce a path
//! outside the route's base path.

use axum::body::Bytes;
use axum::http::Uri;
use axum::http::uri::PathAndQuery;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use url::Url;

/// Why a caller's path was refused (a 400 for the caller; the sentence says what to change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path may not contain backslashes (\\ or %5C)")]
    Backslash,
    #[error("the path may not contain encoded slashes (%2F)")]
    EncodedSlash,
    #[error(
        "the path may not contain segments made only of dots and whitespace ('.', '..', '...', '..;x', '..%20'), encoded or not"
    )]
    DotSegment,
    #[error("the path may not contain empty segments ('//', or ';x' with nothing before the ';')")]
    EmptySegment,
    #[error("the path may not contain control characters, '#' or malformed percent-encoding")]
    BadCharacter,
    #[error("the path must be UTF-8 once percent-decoded (no overlong forms such as %c0%ae)")]
    NotUtf8,
    #[error("the path is percent-encoded more than {DECODE_ROUNDS} times over")]
    TooDeeplyEncoded,
    #[error("the path does not stay under the route's upstream")]
    Escapes,
}

/// How many rounds of percent-decoding a segment may take before it stops changing. Every round
/// is checked, since an upstream (or something in front of it) may decode any number of times; a
/// segment still changing after this many rounds is refused rather than guessed at.
const DECODE_ROUNDS: usize = 8;

/// The request target (path and query, origin-form) for `rest` (the raw, still encoded path
/// after `/proxy/{name}/`) and the raw query, under `base` (which ends with '/'): the base's path,
/// the checked `rest` and the query, joined as text and parsed once. Characters a URL parser
/// would percent-encode (space, `"`, `<`, `>`, `` ` ``, `{`, `}` in the path; space, `"`, `<`,
/// `>`, `'` in the query) are encoded as `url::Url` encodes them, so the upstream sees what it
/// saw when the URL was built with it. The origin is `base`'s, given to the client apart.
pub fn target(base: &Url, rest: &str, query: Option<&str>) -> Result<Uri, PathError> {
    check_rest(rest)?;
    let query = query.filter(|q| !q.is_empty());
    let mut text =
        String::with_capacity(base.path().len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    text.push_str(base.path());
    text.extend(utf8_percent_encode(rest, PATH));
    if let Some(q) = query {
        if q.contains('#') || q.bytes().any(|b| b.is_ascii_control()) {
            return Err(PathError::BadCharacter);
        }
        text.push('?');
        text.extend(utf8_percent_encode(q, QUERY));
    }
    let target =
        PathAndQuery::from_maybe_shared(Bytes::from(text)).map_err(|_| PathError::BadCharacter)?;
    if !target.path().starts_with(base.path()) {
        return Err(PathError::Escapes);
    }
    Ok(Uri::from(target))
}

/// What `url::Url` percent-encodes in a path (its `PATH` set; `?` and `#` are refused before).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'#')
    .add(b'?')
    .add(b'{')
    .add(b'}');

/// What `url::Url` percent-encodes in the query of an `http(s)` URL (its `SPECIAL_QUERY` set).
const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\'');

/// The segment rules, on the raw path.
fn check_rest(rest: &str) -> Result<(), PathError> {
    if rest.is_empty() {
        return Ok(());
    }
    if rest.contains('#') || rest.contains('?') {
        return Err(PathError::BadCharacter);
    }
    let last = rest.bytes().filter(|&b| b == b'/').count();
    for (i, raw) in rest.split('/').enumerate() {
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
    // Most segments are plain names: printable ASCII with a letter or digit, nothing to decode,
    // no `;parameters`. Such a segment passes every rule below (it cannot be only dots and
    // whitespace), so one pass over its bytes is all it needs.
    let plain = |b: &u8| b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b'\\');
    if raw.iter().all(plain) && raw.iter().any(u8::is_ascii_alphanumeric) {
        return Ok(());
    }
    if !raw.contains(&b'%') {
        // Nothing to decode: the first round's checks are all there is (no copy).
        if raw.contains(&b'\\') {
            return Err(PathError::Backslash);
        }
        if raw.iter().any(|b| b.is_ascii_control()) {
            return Err(PathError::BadCharacter);
        }
        let text = std::str::from_utf8(raw).map_err(|_| PathError::NotUtf8)?;
        return check_dots(text);
    }
    let mut current = raw.to_vec();
    for round in 0..=DECODE_ROUNDS {
        if current.contains(&b'\\') {
            return Err(PathError::Backslash);
        }
        if current.contains(&b'/') {
            return Err(PathError::EncodedSlash);
        }
        if current.iter().any(|b| b.is_ascii_control()) {
            return Err(PathError::BadCharacter);
        }
        let text = std::str::from_utf8(&current).map_err(|_| PathError::NotUtf8)?;
        check_dots(text)?;
        // The caller's own encoding must be well-formed; a `%` that a decoded round leaves
        // without two hex digits after it is a literal percent sign (as decoders read it).
        let decoded = percent_decode(&current, round == 0)?;
        if decoded == current {
            return Ok(());
        }
        current = decoded;
    }
    Err(PathError::TooDeeplyEncoded)
}

/// One (decoded) segment's text: refused when it is made only of dots and whitespace once its
/// `;parameters` are cut off and it is trimmed (`.`, `..`, `..;x`, `.. `, `...`), or when it is
/// empty only because of a `;` (`;x`, which servers that cut parameters read as `//`).
///
/// `...` is an ordinary name under RFC 3986, but what an upstream makes of it depends on the
/// upstream (some Windows-based servers trim trailing dots to `..`), so it is refused too; no
/// API this proxy serves names a resource with only dots.
fn check_dots(text: &str) -> Result<(), PathError> {
    let name = match text.split_once(';') {
        Some(("", _)) => return Err(PathError::EmptySegment),
        Some((name, _)) => name,
        None => text,
    };
    let only_dots_and_space = name.chars().all(|c| c == '.' || c.is_whitespace());
    if only_dots_and_space && name.contains('.') {
        return Err(PathError::DotSegment);
    }
    Ok(())
}

/// One round of percent-decoding. With `strict`, a `%` not followed by two hex digits is refused
/// (servers differ in what they make of it); without, it is kept as a literal `%`.
fn percent_decode(input: &[u8], strict: bool) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let byte = match input[i] {
            b'%' => input
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok()),
            _ => None,
        };
        match byte {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None if input[i] == b'%' && strict => return Err(PathError::BadCharacter),
            None => {
                out.push(input[i]);
                i += 1;
            }
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

    /// The URL a request for `rest` goes to: the base's origin, then the target.
    fn ok(rest: &str) -> String {
        format!(
            "https://platform.example{}",
            target(&base(), rest, None).unwrap()
        )
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
        assert_eq!(with_query.to_string(), "/storage/api/v1/x?a=1&b=%2F");
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
            // Triple encoding and beyond: decoded to a fixed point.
            "%25252e%25252e/x",
            "%2525252e%2525252e/x",
            // `;parameters` cut off, as Tomcat, Jetty and Spring do.
            "..;/x",
            "a/..;/b",
            "..;jsessionid=1/x",
            "%2e%2e;/x",
            "..%3b/x",
            "..%253b/x",
            ".;/x",
            // Whitespace trimmed; segments only of dots.
            "..%20/x",
            "%20../x",
            "..%C2%A0/x",
            "...",
            ".../x",
            "%2e%2e%2e/x",
            ". ./x",
        ] {
            assert_eq!(refused(rest), PathError::DotSegment, "{rest}");
        }
    }

    #[test]
    fn invalid_or_overlong_utf8_is_refused() {
        for rest in [
            "%c0%ae%c0%ae/x",
            "%C0%AE/x",
            "a%ffb",
            "%e0%80%ae",
            "%2525c0%2525ae/x",
        ] {
            assert_eq!(refused(rest), PathError::NotUtf8, "{rest}");
        }
        assert_eq!(
            ok("%C3%A6%C3%B8"),
            "https://platform.example/storage/api/v1/%C3%A6%C3%B8"
        );
    }

    #[test]
    fn decoding_stops_at_a_fixed_point_and_is_bounded() {
        // A literal percent sign (`%25`) stays one after the first round.
        assert_eq!(
            ok("100%25"),
            "https://platform.example/storage/api/v1/100%25"
        );
        assert_eq!(
            ok("a%25zz"),
            "https://platform.example/storage/api/v1/a%25zz"
        );
        // Parameters on an ordinary segment, dots inside a name, spaces inside a name.
        assert_eq!(
            ok("a;v=1/b"),
            "https://platform.example/storage/api/v1/a;v=1/b"
        );
        assert_eq!(
            ok("..a/b..c"),
            "https://platform.example/storage/api/v1/..a/b..c"
        );
        assert_eq!(ok("%20/x"), "https://platform.example/storage/api/v1/%20/x");
        assert_eq!(refused(";x/b"), PathError::EmptySegment);
        // `A` percent-encoded n times is `%` + `25` n-1 times + `41`.
        let encoded = |n: usize| format!("%{}41", "25".repeat(n - 1));
        assert!(target(&base(), &encoded(DECODE_ROUNDS), None).is_ok());
        assert_eq!(
            refused(&encoded(DECODE_ROUNDS + 1)),
            PathError::TooDeeplyEncoded
        );
        let dots = format!("{0}/{0}", "%2525252525252e");
        assert_eq!(refused(&dots), PathError::DotSegment);
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

    #[test]
    fn characters_are_encoded_as_url_encodes_them() {
        for (rest, query) in [
            ("a{b}/c`d\"e", Some("q=\"x\"&r='y'&s={z}&t=<u>")),
            ("%7Bok%7D/^|!$&'()*+,;=:@~", Some("a=1&b=%2F&c=^|`{}")),
        ] {
            let mut old = base().join(rest).unwrap();
            old.set_query(query);
            assert_eq!(
                target(&base(), rest, query).unwrap().to_string(),
                &old[url::Position::BeforePath..]
            );
        }
    }

    proptest! {
        /// Whatever the caller sends, the result is a path and query only (the origin is
        /// always the route's) and stays under the base's path.
        #[test]
        fn any_path_stays_under_the_base(rest in "[a-zA-Z0-9./%\\\\:@?#_-]{0,40}") {
            if let Ok(url) = target(&base(), &rest, None) {
                prop_assert_eq!(url.host(), None);
                prop_assert_eq!(url.scheme_str(), None);
                prop_assert!(url.path().starts_with("/storage/api/v1/"), "{}", url);
                for segment in url.path().split('/') {
                    prop_assert!(segment != ".." && segment != ".");
                }
                // Taken means taken as sent: no segment was dropped or rewritten on the way, as
                // a URL parser does with dot segments (which check_rest must have refused).
                prop_assert_eq!(url.path(), format!("{}{rest}", base().path()));
            }
        }

        #[test]
        fn dot_dot_with_any_encoding_of_its_dots_is_refused(
            a in prop::sample::select(vec![".", "%2e", "%2E", "%252e", "%25252e"]),
            b in prop::sample::select(vec![".", "%2e", "%2E", "%252E", "%25252E"]),
            tail in prop::sample::select(vec!["", ";", ";x=1", "%3b", "%20", "%2520", "%09"]),
            prefix in "[a-z]{0,5}",
        ) {
            let rest = if prefix.is_empty() { format!("{a}{b}{tail}/x") } else { format!("{prefix}/{a}{b}{tail}/x") };
            prop_assert!(target(&base(), &rest, None).is_err(), "{}", rest);
        }
    }
}
