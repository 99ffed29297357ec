//! `system show|register` and `systemuser request|status|list`: the onboarding job on the
//! command line. Results go to stdout (text, or one JSON object per line with `--json`), problems
//! to stderr through the returned error, so the exit code is 0 on success and 1 otherwise.
//!
//! In `test` and `prod` the command builds the broker in-process and fetches the admin token
//! itself. In `env: local` the register lives in the running broker's simulator, so the command
//! asks that broker (at `listen`) for its tokens and its Altinn platform. It never prints a token.

use std::time::Duration;

use anyhow::{Context, bail};
use url::Url;

use super::cli::{SystemAction, SystemuserAction};
use super::follow::{Followed, follow, print};
use super::{Built, build};
use crate::config::{Environment, Settings};
use crate::key::secret::Secret;
use crate::onboarding::flow::{
    self, Admin, Ask, Onboarding, OnboardingError, RequestView, RunningBroker,
};
use crate::onboarding::system::System;
use crate::tokens::cache::REFUSAL_MEMORY;
use crate::upstream::register::{MAX_SYSTEM_USERS, RegisterApi};

/// Tries of the proof token after `Accepted` ...
const PROOF_ATTEMPTS: u32 = 3;
/// ... this far apart: longer than the cache remembers a refusal.
const PROOF_PAUSE: Duration = REFUSAL_MEMORY.saturating_add(Duration::from_secs(1));

/// `maskinporten-broker system show|register`.
pub async fn system(settings: Settings, action: SystemAction, json: bool) -> anyhow::Result<()> {
    let setup = Setup::new(settings).await?;
    let onboarding = setup.onboarding();
    let result = match action {
        SystemAction::Show => onboarding.show().await.map(|shown| {
            print(json, &shown, || {
                let state = if !shown.registered {
                    "not registered: run `maskinporten-broker system register`".to_owned()
                } else if shown.differences.is_empty() {
                    "registered, as configured".to_owned()
                } else {
                    let fields: Vec<_> = shown.differences.iter().map(|d| d.field).collect();
                    format!(
                        "registered, but differs in {}: run `maskinporten-broker system register`",
                        fields.join(", ")
                    )
                };
                format!("{}: {state}", shown.system_id)
            })
        }),
        SystemAction::Register => match onboarding.register().await {
            Ok(mut done) => {
                if done.gained {
                    done.customers_lacking = super::changes::lacking(&onboarding).await;
                }
                print(json, &done, || {
                    let mut text = format!("{}: {}", done.system_id, done.action);
                    if let Some(n) = done.customers_lacking {
                        text.push_str(&format!("\ncustomers lacking a right or access package that system: now lists: {n}; run `maskinporten-broker systemuser sync` to ask them"));
                    }
                    text
                });
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    setup.shutdown();
    Ok(result?)
}

/// `maskinporten-broker systemuser request|status|list`.
pub async fn systemuser(
    settings: Settings,
    action: SystemuserAction,
    json: bool,
) -> anyhow::Result<()> {
    let setup = Setup::new(settings).await?;
    let onboarding = setup.onboarding();
    let result = match action {
        SystemuserAction::Request {
            org,
            external_ref,
            redirect_url,
            agent,
            wait,
            timeout,
            profile,
        } => {
            let ask = Ask {
                org: org.parse().with_context(|| format!("--org {org:?}"))?,
                external_ref,
                redirect_url,
                agent,
            };
            request(&onboarding, &ask, json, wait.then_some((timeout, profile))).await
        }
        SystemuserAction::Status { id } => match onboarding.status(&id).await {
            Ok(view) => {
                print_request(json, &view);
                Ok(())
            }
            Err(OnboardingError::NoSuchRequest(_)) => {
                super::changes::status(&onboarding, &id, json).await
            }
            Err(e) => Err(e.into()),
        },
        SystemuserAction::Change(change) => super::changes::change(&onboarding, change, json).await,
        SystemuserAction::Sync { org } => super::changes::sync(&onboarding, org, json).await,
        SystemuserAction::List => match onboarding.list().await {
            Ok((users, truncated)) => {
                for user in &users {
                    print(json, user, || {
                        format!(
                            "{}  {}  external_ref={}  created={}",
                            user.org,
                            user.id,
                            user.external_ref,
                            user.created.as_deref().unwrap_or("-")
                        )
                    });
                }
                if truncated {
                    Err(anyhow::anyhow!(
                        "stopped after {MAX_SYSTEM_USERS} system users; Altinn has more"
                    ))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e.into()),
        },
    };
    setup.shutdown();
    result
}

/// `systemuser request`, and with `wait` (its timeout and the proof profile) the wait for the
/// customer's answer.
async fn request(
    onboarding: &Onboarding<'_>,
    ask: &Ask,
    json: bool,
    wait: Option<(Duration, String)>,
) -> anyhow::Result<()> {
    let (mut view, _) = onboarding.request(ask).await?;
    let Some((timeout, profile)) = wait else {
        print_request(json, &view);
        return refused(&view);
    };
    if !view.is_final() {
        print_request(json, &view);
        view = follow(
            view,
            timeout,
            |id| async move { onboarding.status(&id).await },
        )
        .await?;
    }
    if view.status == "Accepted" {
        view.token_expires_at = Some(prove(onboarding, &profile, &ask.org).await?);
    }
    print_request(json, &view);
    refused(&view)
}

impl Followed for RequestView {
    const WHAT: &'static str = "request";
    fn id(&self) -> &str {
        &self.id
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn is_final(&self) -> bool {
        RequestView::is_final(self)
    }
}

/// One system-user token as proof, tried [`PROOF_ATTEMPTS`] times: a refusal from just before the
/// customer accepted is remembered by the broker's cache for a few seconds, and a new system
/// user can take a moment to reach Maskinporten.
async fn prove(
    onboarding: &Onboarding<'_>,
    profile: &str,
    org: &crate::policy::org::OrgNumber,
) -> anyhow::Result<String> {
    let mut attempt = 1;
    loop {
        match onboarding.prove(profile, org).await {
            Ok(expires_at) => return Ok(expires_at),
            Err(e) if attempt < PROOF_ATTEMPTS => {
                eprintln!(
                    "the proof token was refused ({}); trying again in {}",
                    crate::telemetry::Chain(&e),
                    humantime::format_duration(PROOF_PAUSE)
                );
                tokio::time::sleep(PROOF_PAUSE).await;
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Exit 1 for a request the customer (or time) turned down.
fn refused(view: &RequestView) -> anyhow::Result<()> {
    match view.status.as_str() {
        "Rejected" | "Denied" | "Timedout" => bail!(
            "request {} is {}: make a new one with another --external-ref if the customer should answer again",
            view.id,
            view.status
        ),
        _ => Ok(()),
    }
}

fn print_request(json: bool, view: &RequestView) {
    print(json, view, || {
        let mut text = format!(
            "request {} for {} (external_ref {}): {}",
            view.id, view.org, view.external_ref, view.status
        );
        if let Some(url) = view.confirm_url.as_deref().filter(|_| !view.is_final()) {
            text.push_str(&format!("\nsend the customer this link to accept: {url}"));
        }
        if let Some(at) = &view.token_expires_at {
            text.push_str(&format!(
                "\nproof: a system-user token for {} was fetched (expires {at})",
                view.org
            ));
        }
        text
    });
}

/// What the commands need: the system, Altinn's API, and where tokens come from.
struct Setup {
    system: System,
    api: RegisterApi,
    source: Source,
}

/// Where the onboarding and consent commands get their tokens from.
pub(super) enum Source {
    /// `test`/`prod`: the broker built in this process.
    Built(Box<Built>),
    /// `local`: the running broker and its simulator.
    Broker(RunningBroker),
}

/// In `env: local`, the running broker: its HTTP client and its Altinn platform (the simulator's,
/// unless `endpoints.altinn_platform` names one); `None` in `test` and `prod`.
pub(super) async fn running_broker(
    settings: &Settings,
) -> anyhow::Result<Option<(RunningBroker, reqwest::Client, Url)>> {
    if settings.env != Environment::Local {
        return Ok(None);
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(settings.http_client.timeout)
        .build()?;
    let mut listen = settings.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let broker = RunningBroker {
        base: Url::parse(&format!("http://{listen}/"))?,
        http: http.clone(),
        api_key: std::env::var("BROKER_API_KEY").ok().map(Secret::new),
    };
    let platform = match &settings.endpoints.altinn_platform {
        Some(platform) => platform.clone(),
        None => broker.altinn_platform().await?,
    };
    Ok(Some((broker, http, platform)))
}

impl Source {
    /// Where the admin (or consent) profile's token comes from.
    pub(super) fn admin(&self) -> Admin<'_> {
        match self {
            Source::Built(built) => Admin::Cache(&built.state.tokens),
            Source::Broker(broker) => Admin::Broker(broker),
        }
    }

    pub(super) fn shutdown(&self) {
        if let Source::Built(built) = self {
            built.state.tokens.shutdown();
        }
    }
}

impl Setup {
    async fn new(settings: Settings) -> anyhow::Result<Setup> {
        let validated = settings.validate()?;
        let Some(system) = validated.system else {
            bail!(
                "the config has no system: section; add one with id, name, description and rights (see the example in broker.yaml and docs/onboarding.md)"
            );
        };
        if let Some((broker, http, platform)) = running_broker(&settings).await? {
            return Ok(Setup {
                system,
                api: RegisterApi::new(http, &platform, settings.http_client.timeout),
                source: Source::Broker(broker),
            });
        }
        let built = build(settings).await?;
        let api = flow::api_for(&built.state.broker().generation(), &system)?;
        Ok(Setup {
            system,
            api,
            source: Source::Built(Box::new(built)),
        })
    }

    fn onboarding(&self) -> Onboarding<'_> {
        Onboarding {
            system: &self.system,
            api: self.api.clone(),
            admin: self.source.admin(),
        }
    }

    fn shutdown(&self) {
        self.source.shutdown();
    }
}
