//! Altinn's problem codes of the system register and system-user request API (`AUTH-…`, `VLD-…`,
//! listed in PROTOCOL.md), each turned into a sentence that says what to do.
//!
//! Pure text: no I/O, no types of the layers around it. A code missing here still reaches the
//! user, with Altinn's own detail.

/// The first `AUTH-` or `VLD-` code followed by five digits in Altinn's answer.
pub fn find_code(text: &str) -> Option<String> {
    ["AUTH-", "VLD-"].iter().find_map(|prefix| {
        text.match_indices(prefix).find_map(|(at, _)| {
            let digits = text.get(at + prefix.len()..at + prefix.len() + 5)?;
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| format!("{prefix}{digits}"))
        })
    })
}

/// What the person onboarding should do about an Altinn code.
pub fn advice(code: &str) -> Option<&'static str> {
    Some(match code {
        "VLD-00000" => {
            "the vendor must be written 0192:<organisation number>; the broker builds it from system.id, so check that system.id starts with your organisation number"
        }
        "VLD-00001" => {
            "system.id must start with the vendor's organisation number and '_' (the organisation of your Maskinporten client)"
        }
        "VLD-00002" => {
            "a system with this id already exists in Altinn, or existed and was deleted (a deleted id can never be used again): run `system register` to update an existing one, or choose a new system.id"
        }
        "VLD-00003" => {
            "a right names a resource Altinn does not know: check the resource ids in system.rights against Altinn's resource register in this environment"
        }
        "VLD-00004" => {
            "a client id in system.client_ids is already used by another system: a Maskinporten client belongs to one system; remove it there or use another client"
        }
        "VLD-00005" => {
            "a redirect URL is not valid: system.allowed_redirect_urls takes absolute https URLs"
        }
        "VLD-00006" => "system.rights lists a right twice: remove the duplicate",
        "VLD-00007" => "system.access_packages lists a package twice: remove the duplicate",
        "VLD-00008" => {
            "an access package in system.access_packages does not exist: check its urn:altinn:accesspackage: name"
        }
        "VLD-00009" => {
            "a right is not in the form Altinn expects: write the resource id (the value of urn:altinn:resource) in system.rights"
        }
        "VLD-00012" => {
            "the system id in the body differs from the one in the path; the broker sends system.id in both, so report this"
        }
        "VLD-00013" => "system.id must not contain spaces",
        "VLD-00017" => {
            "a resource in system.rights cannot be delegated: ask its owner to make it delegable, or remove it"
        }
        "VLD-00018" => {
            "an access package for client delegation only cannot be on a visible system: set system.visible: false, or remove the package"
        }
        "AUTH-00001" => {
            "a requested right is not in the registered system or cannot be delegated: run `system register` so Altinn has the system's current rights"
        }
        "AUTH-00004" => {
            "the organisation already has a system user for this system: nothing to ask for; its tokens can be fetched now"
        }
        "AUTH-00006" => "the request was already accepted: the system user exists",
        "AUTH-00007" => {
            "a request (or change request) for this organisation and external reference is already pending: send the customer its confirm URL again"
        }
        "AUTH-00008" => {
            "the request for this organisation and external reference was denied: make a new one with another --external-ref"
        }
        "AUTH-00009" => {
            "the customer rejected the request: make a new one with another --external-ref if they should reconsider"
        }
        "AUTH-00010" => {
            "Altinn has no request or change request with this id: check the id `systemuser request` or `systemuser change` printed"
        }
        "AUTH-00013" | "AUTH-00061" => {
            "the change request was already answered (its status is not New): run `systemuser change` (or `systemuser sync`) again for a new one; the broker uses a new correlation id for each change"
        }
        "AUTH-00015" => {
            "the organisation has no system user for this system (or it is an agent system user, which cannot be changed): ask for one with `systemuser request`, or delete the agent system user and request it anew"
        }
        "AUTH-00011" => {
            "Altinn does not know this system: run `maskinporten-broker system register` first"
        }
        "AUTH-00021" | "AUTH-00026" => {
            "the redirect URL is not one the system allows: add it to system.allowed_redirect_urls and run `system register`, or leave it out"
        }
        "AUTH-00023" => {
            "the token names no vendor organisation: system.profile must be a plain Maskinporten token of your own client (no system user, no consumer_org)"
        }
        "AUTH-00059" => {
            "the request asks for neither rights nor access packages: list them in system.rights or system.access_packages and run `system register`"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code PROTOCOL.md lists.
    const CODES: [&str; 28] = [
        "VLD-00000",
        "VLD-00001",
        "VLD-00002",
        "VLD-00003",
        "VLD-00004",
        "VLD-00005",
        "VLD-00006",
        "VLD-00007",
        "VLD-00008",
        "VLD-00009",
        "VLD-00012",
        "VLD-00013",
        "VLD-00017",
        "VLD-00018",
        "AUTH-00001",
        "AUTH-00004",
        "AUTH-00006",
        "AUTH-00007",
        "AUTH-00008",
        "AUTH-00009",
        "AUTH-00010",
        "AUTH-00011",
        "AUTH-00013",
        "AUTH-00015",
        "AUTH-00021",
        "AUTH-00023",
        "AUTH-00059",
        "AUTH-00061",
    ];

    #[test]
    fn every_listed_code_has_advice() {
        for code in CODES.into_iter().chain(["AUTH-00026"]) {
            assert!(advice(code).is_some_and(|a| a.len() > 20), "{code}");
        }
        assert_eq!(advice("AUTH-99999"), None);
    }

    #[test]
    fn the_code_is_found_in_a_validation_problem() {
        let body = r#"{"title":"x","code":"STD-00000","validationErrors":[{"code":"VLD-00002","detail":"exists"}]}"#;
        assert_eq!(find_code(body).as_deref(), Some("VLD-00002"));
        assert_eq!(
            find_code(r#"{"code":"AUTH-00004"}"#).as_deref(),
            Some("AUTH-00004")
        );
        assert_eq!(find_code("AUTH-0004"), None);
        assert_eq!(find_code("VLD-"), None);
        assert_eq!(find_code("ÆVLD-ØØ"), None);
    }
}
