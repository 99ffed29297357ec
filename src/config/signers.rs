//! The checks of `key.pkcs11` and `key.vault_transit` (their types are in `key/settings.rs`).
use crate::key::{Pkcs11Settings, VaultTransitSettings};
use crate::policy::is_loopback;

fn check_pkcs11(p: &Pkcs11Settings, at: &str, problems: &mut Vec<String>) {
    let at = format!("{at}key.pkcs11.");
    if p.token_label.is_some() == p.slot.is_some() {
        problems.push(format!(
            "{at}token_label: set exactly one of token_label and slot"
        ));
    }
    if p.key_label.is_some() == p.key_id.is_some() {
        problems.push(format!(
            "{at}key_label: set exactly one of key_label and key_id"
        ));
    }
    if let Some(id) = &p.key_id
        && (id.is_empty() || hex::decode(id).is_err())
    {
        problems.push(format!(
            "{at}key_id: {id:?} is not hex (the CKA_ID, e.g. 01 or a1b2)"
        ));
    }
    match (&p.pin, &p.pin_file) {
        (Some(_), Some(_)) => problems.push(format!(
            "{at}pin_file: set either pin_file or BROKER__KEY__PKCS11__PIN, not both"
        )),
        (None, None) => problems.push(format!(
            "{at}pin_file: is required (a file holding the user PIN), or set BROKER__KEY__PKCS11__PIN"
        )),
        _ => {}
    }
}

fn check_vault(v: &VaultTransitSettings, at: &str, problems: &mut Vec<String>) {
    let at = format!("{at}key.vault_transit.");
    match v.address.scheme() {
        "https" => {}
        "http" if is_loopback(&v.address) => {}
        "http" => problems.push(format!(
            "{at}address: plain http only to a loopback address (127.0.0.1, ::1, localhost); use https"
        )),
        other => problems.push(format!("{at}address: scheme {other} is not https")),
    }
    let segment = |v: &str| {
        !v.is_empty()
            && v.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
            && !v.contains(['?', '#', '%'])
    };
    if !segment(&v.mount) {
        problems.push(format!(
            "{at}mount: {:?} is not a mount path (e.g. transit)",
            v.mount
        ));
    }
    if !segment(&v.name) || v.name.contains('/') {
        problems.push(format!("{at}name: {:?} is not a transit key name", v.name));
    }
    let sources = [
        v.token_file.is_some(),
        v.token.is_some(),
        v.kubernetes.is_some(),
    ];
    match sources.iter().filter(|s| **s).count() {
        0 => problems.push(format!(
            "{at}token_file: is required (a file holding the Vault token), or BROKER__KEY__VAULT_TRANSIT__TOKEN, or {at}kubernetes"
        )),
        1 => {}
        _ => problems.push(format!(
            "{at}token_file: set only one of token_file, BROKER__KEY__VAULT_TRANSIT__TOKEN and kubernetes"
        )),
    }
    if let Some(k) = &v.kubernetes
        && (k.role.trim().is_empty() || !segment(&k.mount))
    {
        problems.push(format!(
            "{at}kubernetes: role must not be empty and mount must be a mount path"
        ));
    }
}

/// The checks of `key.pkcs11` and `key.vault_transit` of one client (`at` is its prefix):
/// each one's own fields, and `kid`, which a key outside the process does not carry.
pub(super) fn check(
    at: &str,
    kid: Option<&str>,
    pkcs11: Option<&Pkcs11Settings>,
    vault: Option<&VaultTransitSettings>,
    problems: &mut Vec<String>,
) {
    if let Some(p) = pkcs11 {
        check_pkcs11(p, at, problems);
    }
    if let Some(v) = vault {
        check_vault(v, at, problems);
    }
    if (pkcs11.is_some() || vault.is_some()) && kid.is_none() {
        problems.push(format!(
            "{at}kid: is required with key.pkcs11 and key.vault_transit (a key there has no kid of its own): the key id Digdir shows for the uploaded public key"
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    fn problems(key: &str) -> Vec<String> {
        match Settings::from_yaml(&format!("env: test\nclient_id: c\n{key}"))
            .unwrap()
            .validate()
        {
            Ok(_) => vec![],
            Err(crate::config::ConfigError::Invalid(p)) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_complete_pkcs11_section_is_accepted_and_its_debug_hides_the_pin() {
        let yaml = "kid: k\nkey:\n  pkcs11:\n    module: /m.so\n    token_label: t\n    key_label: k\n    pin: '123456'\n";
        assert_eq!(problems(yaml), Vec::<String>::new());
        let s = Settings::from_yaml(&format!("env: test\nclient_id: c\n{yaml}")).unwrap();
        let debug = format!("{:?}", s.key);
        assert!(
            debug.contains("[redacted]") && !debug.contains("123456"),
            "{debug}"
        );
    }

    #[test]
    fn pkcs11_needs_one_token_one_key_one_pin_and_a_kid() {
        let p = problems("key:\n  pkcs11:\n    module: /m.so\n    key_id: xyz\n");
        for expected in [
            "key.pkcs11.token_label: set exactly one of token_label and slot",
            "key.pkcs11.key_id: \"xyz\" is not hex (the CKA_ID, e.g. 01 or a1b2)",
            "key.pkcs11.pin_file: is required",
            "kid: is required with key.pkcs11",
        ] {
            assert!(
                p.iter().any(|p| p.starts_with(expected)),
                "{expected} in {p:?}"
            );
        }
    }

    #[test]
    fn vault_http_only_to_loopback_one_token_source_and_debug_hides_the_token() {
        let base = "kid: k\nkey:\n  vault_transit:\n    name: mp\n    token: s.secret-token\n";
        assert!(problems(&format!("{base}    address: http://127.0.0.1:8200/\n")).is_empty());
        assert!(problems(&format!("{base}    address: https://vault.example.no/\n")).is_empty());
        let p = problems(&format!(
            "{base}    address: http://vault.example.no:8200/\n"
        ));
        assert!(
            p[0].starts_with("key.vault_transit.address: plain http only"),
            "{p:?}"
        );
        let p = problems(&format!(
            "{base}    address: https://v/\n    token_file: /t\n"
        ));
        assert!(
            p[0].starts_with("key.vault_transit.token_file: set only one"),
            "{p:?}"
        );
        let s = Settings::from_yaml(&format!(
            "env: test\nclient_id: c\n{base}    address: https://v/\n"
        ))
        .unwrap();
        let debug = format!("{:?}", s.key);
        assert!(!debug.contains("s.secret-token"), "{debug}");
        assert_eq!(
            s.key.vault_transit.unwrap().location(),
            "vault transit at https://v/ (key mp)"
        );
    }

    #[test]
    fn only_one_key_source() {
        let p = problems(
            "kid: k\nkey:\n  path: /k.pem\n  vault_transit:\n    address: https://v/\n    name: mp\n    token: t\n",
        );
        assert!(
            p.iter().any(|p| p.starts_with("key: set only one of")),
            "{p:?}"
        );
    }
}
