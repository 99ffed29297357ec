//! `systemuser change|sync`, `systemuser status` of a change request, and the count `system
//! register` ends with: rights added after onboarding, on the command line. Output as in
//! `app/onboarding.rs` (text, or one JSON object per line with `--json`); exit 1 for a refusal or
//! a change the customer turned down. It never prints a token.

use anyhow::{Context, bail};

use super::cli::ChangeArgs;
use super::follow::{Followed, follow, print};
use crate::onboarding::change::{ChangeAsk, ChangeView};
use crate::onboarding::flow::Onboarding;
use crate::upstream::register::MAX_SYSTEM_USERS;

impl Followed for ChangeView {
    const WHAT: &'static str = "change request";
    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or_default()
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn is_final(&self) -> bool {
        ChangeView::is_final(self)
    }
}

/// `systemuser change`, and with `--wait` the wait for the customer's answer.
pub(super) async fn change(
    onboarding: &Onboarding<'_>,
    args: ChangeArgs,
    json: bool,
) -> anyhow::Result<()> {
    let org = &args.org;
    let ask = ChangeAsk {
        org: Some(org.parse().with_context(|| format!("--org {org:?}"))?),
        external_ref: args.external_ref,
        add_rights: args.add_rights,
        remove_rights: args.remove_rights,
        add_packages: args.add_packages,
        remove_packages: args.remove_packages,
        redirect_url: args.redirect_url,
    };
    let (mut view, _) = onboarding.change(&ask).await?;
    if args.wait && !view.is_final() {
        print_change(json, &view);
        view = follow(view, args.timeout, |id| async move {
            onboarding.change_status(&id).await
        })
        .await?;
    }
    print_change(json, &view);
    refused(&view)
}

/// `systemuser sync [--org N]`.
pub(super) async fn sync(
    onboarding: &Onboarding<'_>,
    org: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let org = org
        .map(|o| o.parse().with_context(|| format!("--org {o:?}")))
        .transpose()?;
    let synced = onboarding.sync(org.as_ref()).await?;
    for view in &synced.changes {
        print_change(json, view);
    }
    for (org, id) in &synced.agents {
        eprintln!(
            "{org}: system user {id} is an agent (client delegation) system user, which Altinn cannot change: delete it and request it anew if it needs more"
        );
    }
    if synced.truncated {
        bail!("stopped after {MAX_SYSTEM_USERS} system users; Altinn has more");
    }
    Ok(())
}

/// `systemuser status ID` of a change request.
pub(super) async fn status(
    onboarding: &Onboarding<'_>,
    id: &str,
    json: bool,
) -> anyhow::Result<()> {
    let view = onboarding.change_status(id).await?;
    print_change(json, &view);
    Ok(())
}

/// After `system register` added a right: how many customers lack one (`None` when it cannot be
/// told; the reason goes to stderr, the register stands).
pub(super) async fn lacking(onboarding: &Onboarding<'_>) -> Option<usize> {
    onboarding
        .lacking()
        .await
        .inspect_err(|e| {
            eprintln!(
                "cannot count the customers who lack the new right ({}); run `maskinporten-broker systemuser sync` to ask them",
                crate::telemetry::Chain(e)
            )
        })
        .ok()
}

/// Exit 1 for a change the customer (or time) turned down.
fn refused(view: &ChangeView) -> anyhow::Result<()> {
    match view.status.as_str() {
        "Rejected" | "Denied" | "Timedout" => bail!(
            "change request {} for {} is {}: run `systemuser change` again for a new one if the customer should answer again",
            view.id.as_deref().unwrap_or_default(),
            view.org,
            view.status
        ),
        _ => Ok(()),
    }
}

fn print_change(json: bool, view: &ChangeView) {
    print(json, view, || {
        let mut text = format!(
            "{} (external_ref {}, system user {}): {}",
            view.org, view.external_ref, view.system_user_id, view.status
        );
        if let Some(id) = &view.id {
            text.push_str(&format!(" change request {id}"));
        }
        if let Some(url) = view.confirm_url.as_deref().filter(|_| !view.is_final()) {
            text.push_str(&format!("\nsend the customer this link to approve: {url}"));
        }
        text
    });
}
