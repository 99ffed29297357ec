//! The simulated self-service API of Digdir: `GET|POST /selfservice/api/v1/clients/{id}/jwks`,
//! and the key rules its Maskinporten follows. Each key has its own `exp` (posted again: renewed
//! for `key_lifetime`); a new key reaches the token endpoint only `propagation` after upload;
//! a grant signed with a key past its `exp` is refused with MP-121.
//!
//! It must never store or answer a private key member (a set with one is refused with 400), and
//! serves only a bearer token the simulator issued with the scope the method needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rsa::RsaPublicKey;
use serde_json::{Value, json};

use super::World;

/// Digdir accepts at most this many keys per client.
const MAX_KEYS: usize = 5;
const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];
/// The most clients the simulator keeps key sets for.
const MAX_CLIENTS: usize = 1000;

/// One key in a client's set.
#[derive(Debug, Clone)]
struct HeldKey {
    kid: String,
    jwk: Value,
    public: RsaPublicKey,
    exp: SystemTime,
    /// When Maskinporten starts accepting it.
    visible_at: SystemTime,
    /// Posted through the API (else it came with the client's registration).
    uploaded: bool,
}

/// Every client's key set, and the rules: how long a key lives, how long a new one takes.
#[derive(Debug)]
pub(super) struct Directory {
    sets: Mutex<HashMap<String, Vec<HeldKey>>>,
    rules: Mutex<(Duration, Duration)>,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            sets: Mutex::default(),
            // A year, as Digdir; 30 s for a new key to reach the token endpoint, so that a
            // rehearsal of `keys rotate` in env local shows the wait.
            rules: Mutex::new((Duration::from_secs(365 * 86_400), Duration::from_secs(30))),
        }
    }
}

/// What the directory says about a kid a grant names.
pub(super) enum Lookup {
    /// The client's set is not managed here: the registered keys decide.
    Unmanaged,
    Usable(RsaPublicKey),
    NotYetPropagated,
    Expired,
    Unknown,
}

impl Directory {
    /// `key_lifetime` (Digdir: one year) and `propagation` (Digdir: 0–2 minutes).
    #[cfg(test)]
    pub(super) fn set_rules(&self, key_lifetime: Duration, propagation: Duration) {
        *self.rules.lock().unwrap_or_else(|e| e.into_inner()) = (key_lifetime, propagation);
    }

    fn rules(&self) -> (Duration, Duration) {
        *self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A registered client's keys join its set (usable at once) unless already there; keys that
    /// came with an earlier registration and not through the API leave it.
    pub(super) fn seed(&self, client_id: &str, keys: &[(String, RsaPublicKey)]) {
        let (lifetime, _) = self.rules();
        let now = SystemTime::now();
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if sets.len() >= MAX_CLIENTS && !sets.contains_key(client_id) {
            return;
        }
        let set = sets.entry(client_id.to_owned()).or_default();
        set.retain(|k| k.uploaded || keys.iter().any(|(kid, p)| *kid == k.kid && *p == k.public));
        for (kid, public) in keys {
            if set.len() < MAX_KEYS && !set.iter().any(|k| &k.kid == kid) {
                set.push(HeldKey {
                    kid: kid.clone(),
                    jwk: jwk(kid, public),
                    public: public.clone(),
                    exp: now + lifetime,
                    visible_at: now,
                    uploaded: false,
                });
            }
        }
    }

    /// Whether a grant may be signed with `kid` of `client_id` now.
    pub(super) fn lookup(&self, client_id: &str, kid: &str, now: SystemTime) -> Lookup {
        let sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(set) = sets.get(client_id) else {
            return Lookup::Unmanaged;
        };
        match set.iter().find(|k| k.kid == kid) {
            None => Lookup::Unknown,
            Some(k) if k.exp <= now => Lookup::Expired,
            Some(k) if k.visible_at > now => Lookup::NotYetPropagated,
            Some(k) => Lookup::Usable(k.public.clone()),
        }
    }

    fn answer(&self, client_id: &str) -> Value {
        let sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<Value> = sets
            .get(client_id)
            .map(|set| {
                set.iter()
                    .map(|k| {
                        let mut jwk = k.jwk.clone();
                        jwk["exp"] = json!(unix(k.exp));
                        jwk
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({ "keys": keys })
    }

    /// Replace the whole set. A key posted again keeps its propagation and is renewed.
    fn replace(&self, client_id: &str, posted: Vec<(String, Value, RsaPublicKey)>) {
        let (lifetime, propagation) = self.rules();
        let now = SystemTime::now();
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if sets.len() >= MAX_CLIENTS && !sets.contains_key(client_id) {
            return;
        }
        let old = sets.remove(client_id).unwrap_or_default();
        let set = posted
            .into_iter()
            .map(|(kid, jwk, public)| {
                let known = old.iter().find(|k| k.kid == kid && k.public == public);
                HeldKey {
                    visible_at: known.map_or(now + propagation, |k| k.visible_at),
                    kid,
                    jwk,
                    public,
                    exp: now + lifetime,
                    uploaded: true,
                }
            })
            .collect();
        sets.insert(client_id.to_owned(), set);
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn jwk(kid: &str, public: &RsaPublicKey) -> Value {
    crate::key::public_jwks(
        std::iter::once((public, Some(kid))),
        crate::key::Algorithm::RS256,
    )
    .keys
    .first()
    .and_then(|k| serde_json::to_value(k).ok())
    .unwrap_or(Value::Null)
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "status": status.as_u16(), "detail": detail.into() })),
    )
        .into_response()
}

/// The bearer token must be one the simulator issued, with `scope` among its scopes.
fn authorize(world: &World, headers: &HeaderMap, scope: &str) -> Result<(), Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Box::new(problem(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required",
            ))
        })?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(token, &world.decoding, &validation)
        .map_err(|_| {
            Box::new(problem(
                StatusCode::UNAUTHORIZED,
                "the bearer token is not valid",
            ))
        })?
        .claims;
    let scopes = claims.get("scope").and_then(Value::as_str).unwrap_or("");
    if !scopes.split(' ').any(|s| s == scope) {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            format!("the token lacks the scope {scope}"),
        )));
    }
    Ok(())
}

/// `GET /selfservice/api/v1/clients/{id}/jwks`.
pub(super) async fn read(
    State(world): State<Arc<World>>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = authorize(&world, &headers, "idporten:dcr.read") {
        return *refused;
    }
    Json(world.keys.answer(&client_id)).into_response()
}

/// `POST /selfservice/api/v1/clients/{id}/jwks`: replace the whole set.
pub(super) async fn replace(
    State(world): State<Arc<World>>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = authorize(&world, &headers, "idporten:dcr.write") {
        return *refused;
    }
    let bad = |detail: String| problem(StatusCode::BAD_REQUEST, detail);
    let Ok(set) = serde_json::from_slice::<Value>(&body) else {
        return bad("the body is not JSON".into());
    };
    let Some(keys) = set.get("keys").and_then(Value::as_array) else {
        return bad("the body must be {\"keys\": [...]}".into());
    };
    if keys.is_empty() {
        return bad("an empty set is not accepted: DELETE instead".into());
    }
    if keys.len() > MAX_KEYS {
        return bad(format!("at most {MAX_KEYS} keys per client"));
    }
    let mut posted = Vec::new();
    for key in keys {
        if PRIVATE_MEMBERS.iter().any(|m| key.get(m).is_some()) {
            return bad("a key holds a private member; send public keys only".into());
        }
        let kid = key.get("kid").and_then(Value::as_str).unwrap_or_default();
        let kid_ok = !kid.is_empty()
            && kid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !kid_ok || key.get("use").and_then(Value::as_str) != Some("sig") {
            return bad("each key needs a kid ([A-Za-z0-9._-]) and use: sig".into());
        }
        if posted.iter().any(|(k, _, _)| k == kid) {
            return bad(format!("kid {kid} appears twice"));
        }
        let Some(public) = crate::key::public_key_from_jwk(key) else {
            return bad(format!("key {kid} is not an RSA public key"));
        };
        posted.push((kid.to_owned(), public_members(key), public));
    }
    world.keys.replace(&client_id, posted);
    Json(world.keys.answer(&client_id)).into_response()
}

/// The public members Digdir keeps.
fn public_members(key: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for m in ["kid", "kty", "alg", "use", "n", "e"] {
        if let Some(v) = key.get(m) {
            out.insert(m.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(fixture: &str) -> RsaPublicKey {
        use rsa::pkcs8::DecodePublicKey;
        let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
        RsaPublicKey::from_public_key_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_new_key_waits_for_propagation_an_old_one_expires_and_a_repost_renews() {
        let directory = Directory::default();
        let hour = Duration::from_secs(3600);
        directory.set_rules(10 * hour, Duration::from_secs(60));
        let (old, new) = (public("client-key.pub.pem"), public("other-key.pub.pem"));
        directory.seed("c", &[("old".into(), old.clone())]);
        let now = SystemTime::now();
        assert!(matches!(
            directory.lookup("c", "old", now),
            Lookup::Usable(_)
        ));
        assert!(matches!(
            directory.lookup("x", "old", now),
            Lookup::Unmanaged
        ));
        directory.replace(
            "c",
            vec![
                ("old".into(), jwk("old", &old), old.clone()),
                ("new".into(), jwk("new", &new), new.clone()),
            ],
        );
        assert!(matches!(
            directory.lookup("c", "old", now),
            Lookup::Usable(_)
        ));
        assert!(matches!(
            directory.lookup("c", "new", now),
            Lookup::NotYetPropagated
        ));
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            directory.lookup("c", "new", later),
            Lookup::Usable(_)
        ));
        assert!(matches!(
            directory.lookup("c", "gone", later),
            Lookup::Unknown
        ));
        assert!(matches!(
            directory.lookup("c", "old", now + 11 * hour),
            Lookup::Expired
        ));
        let answer = directory.answer("c");
        assert_eq!(answer["keys"].as_array().unwrap().len(), 2);
        assert!(answer["keys"][0]["exp"].as_u64().is_some());
        assert!(answer["keys"][0].get("d").is_none());
    }

    /// A signed grant for `client` with `kid` (the fixture keys) asking for `scope`.
    fn grant(
        sim: &super::super::SimulatorHandle,
        client: &str,
        pem: &str,
        kid: &str,
        scope: &str,
    ) -> String {
        let now = super::super::now_unix();
        let claims = json!({"iss": client, "sub": client, "aud": sim.issuer(), "scope": scope,
            "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string()});
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    async fn token(sim: &super::super::SimulatorHandle, assertion: &str) -> (u16, Value) {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(sim.base_url().join("token").unwrap())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    #[tokio::test]
    async fn the_api_takes_a_whole_set_and_its_maskinporten_follows_propagation_and_exp() {
        let fixture = |name: &str| {
            std::fs::read_to_string(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let (client_pem, other_pem) = (fixture("client-key.pem"), fixture("other-key.pem"));
        let registered =
            |id: &str, kid: &str, key: &str, scopes: &[&str]| super::super::RegisteredClient {
                client_id: id.into(),
                keys: vec![(kid.into(), public(key))],
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = super::super::start(
            super::super::SimulatorConfig {
                clients: vec![
                    registered("app", "old", "client-key.pub.pem", &["x:y"]),
                    registered(
                        "ss",
                        "ss-kid",
                        "other-key.pub.pem",
                        &["idporten:dcr.read", "idporten:dcr.write"],
                    ),
                ],
                ..Default::default()
            },
            listener,
        )
        .await
        .unwrap();
        sim.world
            .keys
            .set_rules(Duration::from_secs(2), Duration::from_millis(700));
        let (status, admin) = token(
            &sim,
            &grant(
                &sim,
                "ss",
                &other_pem,
                "ss-kid",
                "idporten:dcr.read idporten:dcr.write",
            ),
        )
        .await;
        assert_eq!(status, 200, "{admin}");
        let admin = admin["access_token"].as_str().unwrap().to_owned();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = sim
            .base_url()
            .join("selfservice/api/v1/clients/app/jwks")
            .unwrap();
        let set: Value = http
            .get(url.clone())
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(set["keys"][0]["kid"], "old");
        // A new key (other-key under "new") beside the old; a private member is refused.
        let new = jwk("new", &public("other-key.pub.pem"));
        let mut private = new.clone();
        private["d"] = json!("AAAA");
        let refused = http
            .post(url.clone())
            .bearer_auth(&admin)
            .json(&json!({"keys": [set["keys"][0].clone(), private]}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        let six: Vec<Value> = (0..6)
            .map(|i| jwk(&format!("k{i}"), &public("other-key.pub.pem")))
            .collect();
        let refused = http
            .post(url.clone())
            .bearer_auth(&admin)
            .json(&json!({"keys": six}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400, "at most 5 keys");
        let posted = http
            .post(url.clone())
            .bearer_auth(&admin)
            .json(&json!({"keys": [set["keys"][0].clone(), new]}))
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 200);
        // Before propagation the new kid is unknown to Maskinporten; the old one still works.
        let (status, body) = token(&sim, &grant(&sim, "app", &other_pem, "new", "x:y")).await;
        assert_eq!(status, 400, "{body}");
        let (status, _) = token(&sim, &grant(&sim, "app", &client_pem, "old", "x:y")).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (status, body) = token(&sim, &grant(&sim, "app", &other_pem, "new", "x:y")).await;
        assert_eq!(status, 200, "{body}");
        // Past exp: MP-121.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (status, body) = token(&sim, &grant(&sim, "app", &client_pem, "old", "x:y")).await;
        assert_eq!(status, 400);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .ends_with("(MP-121)"),
            "{body}"
        );
        // A read token cannot write.
        let (_, reader) = token(
            &sim,
            &grant(&sim, "ss", &other_pem, "ss-kid", "idporten:dcr.read"),
        )
        .await;
        let reader = reader["access_token"].as_str().unwrap().to_owned();
        let forbidden = http
            .post(url)
            .bearer_auth(&reader)
            .json(&json!({"keys": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(forbidden.status(), 403);
        sim.shutdown().await;
    }
}
