//! Certificate subjects as sets of (attribute type, value): a configured
//! `clients[].identity.certificate_subject` parsed as RFC 4514, and a verified certificate's
//! subject read from its parsed RDNs. Both sides are compared attribute by attribute, never by a
//! display string, so a CN whose value reads `reports,O=Example` stays one attribute.

use x509_parser::x509::X509Name;

/// Attribute types in upper case; the long names and OIDs of the common ones become the short
/// names certificates are shown with.
fn attribute_type(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    let short = match upper.as_str() {
        "COMMONNAME" | "2.5.4.3" => "CN",
        "ORGANIZATIONNAME" | "2.5.4.10" => "O",
        "ORGANIZATIONALUNITNAME" | "2.5.4.11" => "OU",
        "COUNTRYNAME" | "2.5.4.6" => "C",
        "LOCALITYNAME" | "2.5.4.7" => "L",
        "STATEORPROVINCENAME" | "2.5.4.8" => "ST",
        "DOMAINCOMPONENT" | "0.9.2342.19200300.100.1.25" => "DC",
        "EMAILADDRESS" | "E" | "1.2.840.113549.1.9.1" => "EMAIL",
        "SERIALNUMBER" | "2.5.4.5" => "SERIALNUMBER",
        _ => return upper,
    };
    short.to_owned()
}

/// A verified certificate's subject: every attribute of every RDN, sorted; `None` when a value
/// is not a string (such a subject matches no configured one).
pub fn from_certificate(name: &X509Name<'_>) -> Option<Vec<(String, String)>> {
    let registry = x509_parser::objects::oid_registry();
    let mut attributes = Vec::new();
    for rdn in name.iter_rdn() {
        for attribute in rdn.iter() {
            let oid = attribute.attr_type();
            let kind = x509_parser::objects::oid2abbrev(oid, registry)
                .map(str::to_owned)
                .unwrap_or_else(|_| oid.to_id_string());
            let value = attribute.as_str().ok()?;
            attributes.push((attribute_type(&kind), value.to_owned()));
        }
    }
    attributes.sort();
    Some(attributes)
}

/// `CN=svc,O=Example\, Inc.` (RFC 4514: `,` or `+` between attributes, `\` before a special
/// character or two hex digits) as sorted (type, value) pairs. Spaces around attributes and
/// values are dropped unless escaped; order does not matter.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut attributes = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut kind = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '.' => kind.push(c),
                Some(' ') => {}
                Some(c) => return Err(format!("{c:?} in an attribute type")),
                None => return Err("an attribute without '=' and a value".into()),
            }
        }
        if kind.is_empty() {
            return Err("an attribute without a type before '='".into());
        }
        let mut value: Vec<u8> = Vec::new();
        let mut trailing_spaces = 0;
        let mut last = None;
        while let Some(c) = chars.next() {
            match c {
                ',' | '+' => {
                    last = Some(c);
                    break;
                }
                '\\' => {
                    trailing_spaces = 0;
                    match chars.next() {
                        Some(e @ (',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' | ' ' | '#')) => {
                            value.push(e as u8)
                        }
                        Some(h) if h.is_ascii_hexdigit() => {
                            let low = chars.next().filter(char::is_ascii_hexdigit).ok_or(
                                "'\\' is followed by one hex digit only (write two, like \\2C)",
                            )?;
                            let byte = u8::from_str_radix(&format!("{h}{low}"), 16)
                                .map_err(|_| "a bad hex escape")?;
                            value.push(byte);
                        }
                        _ => {
                            return Err(
                                "'\\' must come before , + \" \\ < > ; = # space or two hex digits"
                                    .into(),
                            );
                        }
                    }
                }
                ' ' if value.is_empty() => {}
                ' ' => {
                    value.push(b' ');
                    trailing_spaces += 1;
                }
                '"' | ';' | '<' | '>' => {
                    return Err(format!("{c:?} in a value must be escaped as \\{c}"));
                }
                '#' if value.is_empty() => {
                    return Err("a value in #hex form is not supported; write the text".into());
                }
                c => {
                    trailing_spaces = 0;
                    let mut buf = [0u8; 4];
                    value.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        value.truncate(value.len() - trailing_spaces);
        let value = String::from_utf8(value).map_err(|_| "a hex escape that is not UTF-8")?;
        if value.is_empty() {
            return Err(format!("{kind} has no value"));
        }
        attributes.push((attribute_type(kind.trim()), value));
        if last.is_none() {
            break;
        }
    }
    attributes.sort();
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = list
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn escapes_and_spaces_follow_rfc_4514() {
        assert_eq!(
            parse(r"CN=svc,O=Example\, Inc.").unwrap(),
            pairs(&[("CN", "svc"), ("O", "Example, Inc.")])
        );
        assert_eq!(
            parse(r"CN=a\+b\=c\;d\\e\22f, o = x ").unwrap(),
            pairs(&[("CN", "a+b=c;d\\e\"f"), ("O", "x")])
        );
        assert_eq!(
            parse(r"CN=Example\2C Inc.+OU=x").unwrap(),
            pairs(&[("CN", "Example, Inc."), ("OU", "x")])
        );
        assert_eq!(parse(r"CN=\ a\ ").unwrap(), pairs(&[("CN", " a ")]));
        assert_eq!(
            parse("commonName=a,2.5.4.10=b").unwrap(),
            pairs(&[("CN", "a"), ("O", "b")])
        );
        for bad in [
            "invoicing",
            "CN=",
            "=x",
            r"CN=a\",
            r"CN=a\2",
            r"CN=a\q",
            "CN=a\"b",
            "CN=a;O=b",
            "CN=#0403",
            r"CN=\ff",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
