//! `consent request|status`: Altinn consent requests on the command line. Results go to stdout
//! (text, or one JSON object per line with `--json`), problems to stderr through the returned
//! error, so the exit code is 0 on success and 1 otherwise (and 1 when `--wait` sees the consent
//! refused).
//!
//! In `test` and `prod` the command builds the broker in-process and fetches the consent
//! profile's token itself. In `env: local` Altinn is the running broker's simulator, so the
//! command asks that broker (at `listen`) for its token and its Altinn platform. It never prints
//! a token, and shows a fødselsnummer only masked.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::build;
use super::cli::ConsentAction;
use super::onboarding::{Source, running_broker};
use crate::config::{Consent, Settings};
use crate::onboarding::consent::{self, Ask, ConsentView, Right, Session};
use crate::policy::consent::Party;
use crate::upstream::consent::ConsentApi;

/// `--wait` polls first after this long ...
const FIRST_POLL: Duration = Duration::from_secs(2);
/// ... and backs off to at most this.
const LONGEST_POLL: Duration = Duration::from_secs(30);

/// `maskinporten-broker consent request|status`.
pub async fn consent(settings: Settings, action: ConsentAction, json: bool) -> anyhow::Result<()> {
    let setup = Setup::new(settings).await?;
    let session = setup.session();
    let result = match action {
        ConsentAction::Request {
            from,
            resource,
            meta,
            valid_to,
            message,
            redirect_url,
            wait,
            timeout,
        } => {
            let ask = ask(from, resource, meta, &valid_to, message, redirect_url)?;
            request(&session, &ask, json, wait.then_some(timeout)).await
        }
        ConsentAction::Status { id } => {
            let id = uuid::Uuid::parse_str(id.trim()).context("ID must be a UUID")?;
            session
                .status(&id)
                .await
                .map(|view| print(json, &view))
                .map_err(Into::into)
        }
    };
    setup.shutdown();
    result
}

/// The flags as an [`Ask`]; each failure names its flag.
fn ask(
    from: String,
    resources: Vec<String>,
    meta: Vec<String>,
    valid_to: &str,
    message: Option<String>,
    redirect_url: Option<String>,
) -> anyhow::Result<Ask> {
    let from = Party::parse(&from).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let metadata = meta
        .iter()
        .map(|m| {
            m.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| anyhow::anyhow!("--meta: write key=value"))
        })
        .collect::<anyhow::Result<_>>()?;
    let valid_to =
        consent::parse_valid_to(valid_to).map_err(|e| anyhow::anyhow!("--valid-to: {e}"))?;
    Ok(Ask {
        id: None,
        from,
        rights: resources
            .into_iter()
            .map(|resource| Right {
                resource,
                metadata: std::collections::BTreeMap::clone(&metadata),
            })
            .collect(),
        valid_to,
        message,
        redirect_url,
    })
}

/// `consent request`, and with `wait` (its timeout) the wait for the person's answer.
async fn request(
    session: &Session<'_>,
    ask: &Ask,
    json: bool,
    wait: Option<Duration>,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    let (mut view, _) = session.request(ask, now).await.map_err(flag_error)?;
    print(json, &view);
    let Some(timeout) = wait else {
        return refused(&view);
    };
    if view.status != "Accepted" && !view.is_refused() {
        eprintln!(
            "waiting up to {} for the answer at the view URI ...",
            humantime::format_duration(timeout)
        );
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_POLL;
        let id = uuid::Uuid::parse_str(&view.id).context("Altinn's consent id is not a UUID")?;
        while view.status != "Accepted" && !view.is_refused() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "consent {} is still {} after {}; run `consent status {}` later",
                    view.id,
                    view.status,
                    humantime::format_duration(timeout),
                    view.id
                );
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 3 / 2).min(LONGEST_POLL);
            view = session.status(&id).await?;
        }
        print(json, &view);
    }
    refused(&view)
}

/// A refusal of the input as the flag it came from.
fn flag_error(e: consent::ConsentError) -> anyhow::Error {
    match e {
        consent::ConsentError::BadRequest { field, detail } => {
            anyhow::anyhow!("--{}: {detail}", field.replace('_', "-"))
        }
        e => e.into(),
    }
}

/// Exit 1 for a consent the person (or time) turned down.
fn refused(view: &ConsentView) -> anyhow::Result<()> {
    if view.is_refused() {
        bail!("consent {} is {}", view.id, view.status);
    }
    Ok(())
}

fn print(json: bool, view: &ConsentView) {
    if json {
        match serde_json::to_string(view) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("cannot print the result as JSON: {e}"),
        }
        return;
    }
    let mut text = format!(
        "consent {} from {}: {} (valid to {})",
        view.id,
        view.from.as_deref().unwrap_or("-"),
        view.status,
        view.valid_to.as_deref().unwrap_or("-")
    );
    if let Some(uri) = view
        .view_uri
        .as_deref()
        .filter(|_| view.status == "Created")
    {
        text.push_str(&format!("\nsend the person this link to answer: {uri}"));
    }
    println!("{text}");
}

/// What the commands need: `consent:`, Altinn's API, and where tokens come from.
struct Setup {
    consent: Consent,
    api: ConsentApi,
    source: Source,
}

impl Setup {
    async fn new(settings: Settings) -> anyhow::Result<Setup> {
        let validated = settings.validate()?;
        let Some(consent) = validated.consent else {
            bail!(
                "the config has no consent: section; add one with org, redirect_urls and scopes (see broker.yaml and docs/consent.md)"
            );
        };
        if let Some((broker, http, platform)) = running_broker(&settings).await? {
            return Ok(Setup {
                consent,
                api: ConsentApi::new(http, &platform, settings.http_client.timeout),
                source: Source::Broker(broker),
            });
        }
        let built = build(settings).await?;
        let api = consent::api_for(&built.state.broker().generation(), &consent)?;
        Ok(Setup {
            consent,
            api,
            source: Source::Built(Box::new(built)),
        })
    }

    fn session(&self) -> Session<'_> {
        Session {
            consent: &self.consent,
            api: self.api.clone(),
            admin: self.source.admin(),
        }
    }

    fn shutdown(&self) {
        self.source.shutdown();
    }
}
