//! `key_rotation.action: rotate` with `key.vault_transit`, against the real `bao server -dev`
//! (signers.rs) and the strict fake self-service API (key_rotation.rs): Vault makes the new key
//! version, each version signs under `<kid>-v<N>`, and tokens keep flowing.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::key_rotation::{
    FakeDigdir, SS_CLIENT, assert_clean_switch, digdir_key, foreign_key, rotation_yaml,
};
use crate::signers::{Bao, ROOT_TOKEN};
use crate::support::*;

/// The transit key Vault makes for these tests (an imported key, like the fixture `mp`, may not
/// be rotated within Vault).
const NAME: &str = "rotating";

/// The public key of version `version` of the transit key [`NAME`], as Vault gives it.
async fn vault_public_key(bao: &Bao, version: u64) -> rsa::RsaPublicKey {
    use rsa::pkcs8::DecodePublicKey;
    let answer: Value = reqwest::Client::new()
        .get(bao.url(&format!("transit/keys/{NAME}")))
        .header("X-Vault-Token", ROOT_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pem = answer["data"]["keys"][version.to_string()]["public_key"]
        .as_str()
        .unwrap_or_else(|| panic!("no version {version}: {answer}"));
    rsa::RsaPublicKey::from_public_key_pem(pem).unwrap()
}

fn kids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn vault_transit_rotate_makes_a_new_version_uploads_it_and_switches_with_no_failed_token_call()
 {
    let logs = LogCapture::start(tracing::Level::INFO);
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, bao.token().await).unwrap();
    bao.post(
        &format!("transit/keys/{NAME}"),
        serde_json::json!({"type": "rsa-2048"}),
        ROOT_TOKEN,
    )
    .await;
    let credentials = format!(
        "kid: {KID}\nkey:\n  vault_transit:\n    address: {}\n    name: {NAME}\n    token_file: {}\n",
        bao.address(),
        token_file.display()
    );
    let v1 = format!("{KID}-v1");
    let v2 = format!("{KID}-v2");
    // Digdir holds version 1 under <kid>-v1, due in 3 days, and another app's key.
    let first_public = vault_public_key(&bao, 1).await;
    let digdir = FakeDigdir::start(vec![
        digdir_key(&v1, &first_public, 3),
        foreign_key("another-app", 200),
    ])
    .await;
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SS_CLIENT, &[]);
    mp.add_key(&v1, first_public.clone());
    let altinn = FakeAltinn::start(&mp).await;
    let extra = rotation_yaml(
        &digdir,
        "  action: rotate\n  propagation: 1s\n  retire_after: 2s\n  check_every: 1h\n",
    );
    let yaml = config_yaml_with(&mp, &altinn, &credentials, &extra);
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let env = TestEnv::start_settings(mp, altinn, settings).await;

    let orgs = valid_orgs(400);
    let mut orgs = orgs.iter();
    let mut uploaded_at: Option<Instant> = None;
    let mut added = false;
    let mut served = 0;
    // Bounded: 20 s. Tokens for fresh orgs all along: each is a new grant.
    for _ in 0..200 {
        let org = orgs.next().unwrap();
        let r = env.get(&format!("/token/altinn?org={org}")).await;
        assert_eq!(r.status(), 200, "a token call failed during the rotation");
        served += 1;
        if uploaded_at.is_none()
            && digdir
                .posts()
                .iter()
                .any(|p| kids(p["keys"].as_array().unwrap()).contains(&v2))
        {
            uploaded_at = Some(Instant::now());
        }
        // The fake Maskinporten learns the new version 300 ms after Digdir got it (propagation 1 s).
        if let Some(at) = uploaded_at
            && !added
            && at.elapsed() > Duration::from_millis(300)
        {
            let jwk = digdir
                .state
                .keys
                .lock()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == v2.as_str())
                .unwrap()
                .clone();
            env.mp
                .add_key(&v2, maskinporten_broker::public_key_from_jwk(&jwk).unwrap());
            added = true;
        }
        let set = kids(&digdir.state.keys.lock().unwrap());
        if added && !set.contains(&v1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posts = digdir.posts();
    assert!(
        !posts.is_empty(),
        "a new version was uploaded: {}",
        logs.text()
    );
    // The upload: old + new + foreign; the new is Vault's version 2, public members only.
    let upload = posts[0]["keys"].as_array().unwrap();
    assert_eq!(
        kids(upload),
        [v1.clone(), "another-app".to_owned(), v2.clone()]
    );
    let new = upload.iter().find(|k| k["kid"] == v2.as_str()).unwrap();
    assert_eq!(
        maskinporten_broker::public_key_from_jwk(new).unwrap(),
        vault_public_key(&bao, 2).await,
        "the uploaded key is Vault's version 2"
    );
    assert_ne!(
        vault_public_key(&bao, 2).await,
        first_public,
        "a new key pair"
    );
    assert_eq!(
        kids(&digdir.state.keys.lock().unwrap()),
        ["another-app".to_owned(), v2.clone()],
        "version 1 left Digdir; the foreign key stayed"
    );
    assert_clean_switch(&env, &digdir, &v1, &v2);
    assert!(served > 10);
    env.app.shutdown().await;
    bao.stop().await;
}

#[tokio::test]
async fn a_restart_after_the_upload_signs_with_the_old_version_then_switches_to_the_uploaded_one() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("vault-token");
    std::fs::write(&token_file, bao.token().await).unwrap();
    bao.post(
        &format!("transit/keys/{NAME}"),
        serde_json::json!({"type": "rsa-2048"}),
        ROOT_TOKEN,
    )
    .await;
    // The state a crash right after the upload leaves: Vault at version 2, Digdir holding both.
    bao.post(
        &format!("transit/keys/{NAME}/rotate"),
        serde_json::json!({}),
        ROOT_TOKEN,
    )
    .await;
    let (v1, v2) = (format!("{KID}-v1"), format!("{KID}-v2"));
    let (p1, p2) = (
        vault_public_key(&bao, 1).await,
        vault_public_key(&bao, 2).await,
    );
    let digdir =
        FakeDigdir::start(vec![digdir_key(&v1, &p1, 300), digdir_key(&v2, &p2, 365)]).await;
    let mp = FakeMaskinporten::start().await;
    mp.register_client(SS_CLIENT, &[]);
    // Maskinporten has not learnt version 2 yet: a grant signed with it now is refused.
    mp.add_key(&v1, p1);
    let altinn = FakeAltinn::start(&mp).await;
    let credentials = format!(
        "kid: {KID}\nkey:\n  vault_transit:\n    address: {}\n    name: {NAME}\n    token_file: {}\n",
        bao.address(),
        token_file.display()
    );
    let extra = rotation_yaml(
        &digdir,
        "  action: rotate\n  propagation: 1s\n  retire_after: 1s\n  check_every: 1h\n",
    );
    let yaml = config_yaml_with(&mp, &altinn, &credentials, &extra);
    let settings = maskinporten_broker::config::Settings::from_yaml(&yaml).unwrap();
    let env = TestEnv::start_settings(mp, altinn, settings).await;
    let orgs = valid_orgs(100);
    let mut orgs = orgs.iter();
    let r = env
        .get(&format!("/token/altinn?org={}", orgs.next().unwrap()))
        .await;
    assert_eq!(r.status(), 200, "the first token after the restart");
    env.mp.add_key(&v2, p2);
    // Bounded: 10 s.
    for _ in 0..100 {
        let r = env
            .get(&format!("/token/altinn?org={}", orgs.next().unwrap()))
            .await;
        assert_eq!(r.status(), 200, "a token call failed after the restart");
        if kids(&digdir.state.keys.lock().unwrap()) == [v2.clone()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        kids(&digdir.state.keys.lock().unwrap()),
        std::slice::from_ref(&v2),
        "version 1 retired"
    );
    let r = env
        .get(&format!("/token/altinn?org={}", orgs.next().unwrap()))
        .await;
    assert_eq!(r.status(), 200);
    assert_clean_switch(&env, &digdir, &v1, &v2);
    let first = env
        .mp
        .grants()
        .into_iter()
        .find(|g| g.claims["iss"] != SS_CLIENT);
    assert_eq!(
        first.and_then(|g| g.header.kid),
        Some(v1.clone()),
        "the first grant after the restart is signed with the old version"
    );
    env.app.shutdown().await;
    bao.stop().await;
}
