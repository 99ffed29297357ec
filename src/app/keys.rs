//! `keys status` and `keys renew`: the key keeper's work, once, from the command line. Safe
//! beside a running broker: it reads Digdir's set and posts the same public keys; it writes no
//! key file.

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::bail;

use crate::app::cli::KeysAction;
use crate::config::Settings;
use crate::key::status::KeyReport;

/// `keys status|renew [--json]`.
pub async fn keys(settings: Settings, action: KeysAction, json: bool) -> anyhow::Result<()> {
    let built = crate::app::build(settings.clone()).await?;
    let keeper = crate::app::keeper(&settings, &built).await?;
    let now = SystemTime::now();
    let (keys, renewed) = match (action, &keeper) {
        (KeysAction::Status, Some(keeper)) => (keeper.status().await?, Vec::new()),
        (KeysAction::Renew, Some(keeper)) => {
            let outcome = keeper.check(true).await?;
            (outcome.keys, outcome.renewed)
        }
        (KeysAction::Rotate, Some(keeper)) if keeper.rotate.is_some() || keeper.vault.is_some() => {
            let (keys, next) = keeper.step(true).await?;
            if let Some(next) = next {
                eprintln!(
                    "rotation in progress: the next step is due in {}; the running broker (or `keys rotate` again) takes it",
                    humantime::format_duration(Duration::from_secs(next.as_secs()))
                );
            }
            (keys, Vec::new())
        }
        (KeysAction::Rotate, _) => bail!(
            "key_rotation.action: rotate is not configured (docs/keys.md); a manual rotation: keygen --add-to, jwks, upload, switch kid"
        ),
        (KeysAction::Status, None) => (built.state.keys.keys(), Vec::new()),
        (KeysAction::Renew, None) => bail!(
            "key_rotation: is not configured; renewing needs a self-service client from Digdir (docs/keys.md), or post the same public key again in Digdir's self-service portal"
        ),
    };
    let mut out = std::io::stdout().lock();
    if json {
        let body = serde_json::json!({
            "keys": keys.iter().map(|k| k.json(now)).collect::<Vec<_>>(),
            "renewed": renewed,
            "digdir": keeper.is_some(),
        });
        serde_json::to_writer_pretty(&mut out, &body)?;
        writeln!(out)?;
    } else {
        if keeper.is_none() {
            writeln!(
                out,
                "key_rotation is not configured: Digdir's exp is unknown; expiry below is the certificate's, where there is one"
            )?;
        }
        for key in &keys {
            writeln!(out, "{}", line(key, now))?;
        }
        if !renewed.is_empty() {
            writeln!(out, "renewed: {}", renewed.join(", "))?;
        }
    }
    if let Some(sim) = built.simulator {
        sim.shutdown().await;
    }
    built.state.tokens.shutdown();
    Ok(())
}

/// One key on one line, for `keys status` and `check --online`.
pub(crate) fn line(key: &KeyReport, now: SystemTime) -> String {
    format!(
        "client {}  kid {}  kept {}  exp {}  in_use {}  days_left {}",
        key.client,
        key.kid,
        key.kept,
        key.expires_at
            .map_or("unknown".to_owned(), crate::tokens::token::rfc3339),
        key.in_use,
        key.days_left(now)
            .map_or("unknown".to_owned(), |d| d.to_string()),
    )
}
