//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics` (no listener of its own).
//!
//! A leaf: the other layers call the small functions here at their decision points (a request
//! answered, a cache lookup, an upstream call, a failed background refresh) with plain names and
//! numbers; this module imports nothing of theirs and knows the metric names and labels so nobody
//! else has to. (Named `meters`, not `metrics`, so it does not shadow the `metrics` crate.) Labels
//! are bounded and never carry a token, grant, key or API key: profile names come from the
//! configuration, org labels only from validated cache keys, outcomes from fixed lists.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::metrics::{Counter, Histogram};
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const TOKEN_REQUESTS: &str = "broker_token_requests_total";
pub const CACHE_LOOKUPS: &str = "broker_cache_lookups_total";
pub const UPSTREAM_REQUESTS: &str = "broker_upstream_requests_total";
pub const UPSTREAM_DURATION: &str = "broker_upstream_duration_seconds";
pub const REFRESH_FAILURES: &str = "broker_refresh_failures_total";
pub const TOKEN_EXPIRY: &str = "broker_token_seconds_until_expiry";
pub const KEY_EXPIRY: &str = "broker_key_seconds_until_expiry";
pub const BUILD_INFO: &str = "broker_build_info";
pub const PROXY_REQUESTS: &str = "broker_proxy_requests_total";
pub const PROXY_UPSTREAM_DURATION: &str = "broker_proxy_upstream_duration_seconds";
pub const PROXY_REDACTED_HEADERS: &str = "broker_proxy_redacted_headers_total";
pub const SIGNER_REQUESTS: &str = "broker_signer_requests_total";
pub const SIGNER_DURATION: &str = "broker_signer_duration_seconds";
pub const KEY_EXPIRES_AT: &str = "broker_key_expires_at_seconds";
pub const KEY_ROTATION_FAILURES: &str = "broker_key_rotation_failures_total";
pub const IDENTITY_CACHE_LOOKUPS: &str = "broker_identity_cache_lookups_total";
pub const IDENTITY_CACHE_ENTRIES: &str = "broker_identity_cache_entries";

/// Upstream latency buckets: Maskinporten usually answers in tens of milliseconds, a timeout is
/// `http_client.timeout` (seconds), so the buckets span both.
pub const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The process-wide recorder's handle, and the counters every token request touches, registered
/// once: looking a counter up in the registry costs more than incrementing it.
struct Installed {
    handle: PrometheusHandle,
    cache_hits: Counter,
    cache_misses: Counter,
    /// By profile, then outcome; bounded, as profiles are configured names (or `_unknown`).
    token_requests: Handles<Counter>,
    /// By route, then status class; bounded, as routes are configured names (or `_unknown`).
    proxy_requests: Handles<Counter>,
    /// By route (the second key is always ""): bounded like `proxy_requests`.
    proxy_upstream: Handles<Histogram>,
    /// By issuer, then outcome; bounded, as issuers are configured names (or `_unknown`).
    identity_lookups: Handles<Counter>,
}

/// Metric handles by a configured name and a label from a fixed list, registered on first use
/// and then found without the registry (which builds a label set, allocating, per look-up).
/// Copied on write: a new name or label is rare, a look-up is every request.
struct Handles<H>(ArcSwap<ByName<Arc<str>, ByName<&'static str, H>>>);

impl<H: Clone> Handles<H> {
    fn new() -> Self {
        Handles(ArcSwap::default())
    }

    /// `update` the handle of (`name`, `label`), registered by `register` the first time.
    /// Borrowed, not cloned: a clone would touch the handle's shared reference count.
    fn with(
        &self,
        name: &str,
        label: &'static str,
        register: impl FnOnce() -> H,
        update: impl FnOnce(&H),
    ) {
        if let Some(handle) = self.0.load().get(name).and_then(|by| by.get(label)) {
            return update(handle);
        }
        let handle = register();
        update(&handle);
        self.0.rcu(|known| {
            let mut known = ByName::clone(known);
            known
                .entry(name.into())
                .or_default()
                .insert(label, handle.clone());
            known
        });
    }
}

/// A map of names looked up on every request: foldhash, not SipHash (the names are configured,
/// not chosen by callers).
type ByName<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The handle of the process-wide recorder, installing it on first use.
///
/// A recorder is global by nature (the `metrics` macros write to it from any layer), so it is
/// installed once per process; every app in the process (tests start several) shares it.
pub fn install() -> PrometheusHandle {
    INSTALLED
        .get_or_init(|| Installed {
            handle: install_recorder(),
            cache_hits: ::metrics::counter!(CACHE_LOOKUPS, "result" => "hit"),
            cache_misses: ::metrics::counter!(CACHE_LOOKUPS, "result" => "miss"),
            token_requests: Handles::new(),
            proxy_requests: Handles::new(),
            proxy_upstream: Handles::new(),
            identity_lookups: Handles::new(),
        })
        .handle
        .clone()
}

/// How often recorded histogram samples are folded into their buckets. The exporter keeps every
/// sample (about 16 bytes) until a scrape or an upkeep folds it, so a broker that nobody scrapes
/// would grow with every proxied request; with this, it holds at most one interval's worth.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Fold the histograms' samples into their buckets every [`UPKEEP_INTERVAL`], until `stop`.
pub(crate) async fn keep_bounded(stop: tokio_util::sync::CancellationToken) {
    let handle = install();
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

fn install_recorder() -> PrometheusHandle {
    let builder = match PrometheusBuilder::new()
        // Both latency histograms: token upstreams and proxied upstreams.
        .set_buckets_for_metric(
            Matcher::Suffix("upstream_duration_seconds".into()),
            UPSTREAM_BUCKETS,
        )
        // An HSM signs in milliseconds, Vault is a network call: the same span.
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(SIGNER_DURATION.into()), UPSTREAM_BUCKETS)
        }) {
        Ok(b) => b,
        // Only an empty bucket list is refused, and UPSTREAM_BUCKETS is not empty.
        Err(e) => {
            tracing::warn!(error = %e, "upstream latency buckets rejected; using summaries");
            PrometheusBuilder::new()
        }
    };
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = ::metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "another metrics recorder is installed; /metrics stays empty");
    }
    describe();
    ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    handle
}

fn describe() {
    ::metrics::describe_gauge!(
        KEY_EXPIRES_AT,
        "When each key of a managed client stops working (unix seconds): Digdir's exp, or the certificate's notAfter if sooner"
    );
    ::metrics::describe_counter!(
        KEY_ROTATION_FAILURES,
        "Failed reads or changes of a client's key set in Digdir's self-service API, by status"
    );
    ::metrics::describe_counter!(
        TOKEN_REQUESTS,
        "Requests for a token, by profile and outcome"
    );
    ::metrics::describe_counter!(
        CACHE_LOOKUPS,
        "Token cache lookups that found a servable token (hit) or waited for the upstream (miss)"
    );
    ::metrics::describe_counter!(
        UPSTREAM_REQUESTS,
        "Calls to Maskinporten and the Altinn exchange, by outcome"
    );
    ::metrics::describe_histogram!(
        UPSTREAM_DURATION,
        ::metrics::Unit::Seconds,
        "Latency of calls to Maskinporten and the Altinn exchange"
    );
    ::metrics::describe_counter!(
        REFRESH_FAILURES,
        "Background refreshes that failed (the cached token is served while it lasts)"
    );
    ::metrics::describe_counter!(
        PROXY_REQUESTS,
        "Requests to /proxy/{name}/..., by route and status class of the answer"
    );
    ::metrics::describe_histogram!(
        PROXY_UPSTREAM_DURATION,
        ::metrics::Unit::Seconds,
        "Time until a proxied upstream's response headers arrived, by route"
    );
    ::metrics::describe_counter!(
        PROXY_REDACTED_HEADERS,
        "Proxied response headers that carried the broker's token and were replaced by [redacted], by route"
    );
    ::metrics::describe_counter!(
        SIGNER_REQUESTS,
        "Signatures asked of an HSM (pkcs11) or Vault transit (vault_transit), by purpose (grant, probe) and outcome"
    );
    ::metrics::describe_histogram!(
        SIGNER_DURATION,
        ::metrics::Unit::Seconds,
        "Latency of signatures by an HSM or Vault transit, by signer"
    );
    ::metrics::describe_counter!(
        IDENTITY_CACHE_LOOKUPS,
        "Workload tokens found in the cache of verified tokens (hit) or verified anew (miss), by issuer (_unknown for a token that did not verify)"
    );
    ::metrics::describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs"
    );
}

/// Count one answered `GET /token/{profile}`. `profile` must be a configured name (not the raw
/// path), so a caller cannot grow the label set; `status` is the HTTP status sent.
pub fn token_request(profile: &str, status: u16) {
    let outcome = match status {
        200..=299 => "ok",
        400..=499 => "client_error",
        502..=504 => "upstream_error",
        _ => "internal_error",
    };
    let register = || ::metrics::counter!(TOKEN_REQUESTS, "profile" => profile.to_owned(), "outcome" => outcome);
    let count = |counter: &Counter| counter.increment(1);
    match INSTALLED.get() {
        Some(installed) => installed
            .token_requests
            .with(profile, outcome, register, count),
        // Without the recorder (the one-shot CLI) the macro's no-op counter is all there is.
        None => count(&register()),
    }
}

/// Count one cache lookup that produced a token: from the cache (`hit`) or after waiting for
/// the upstream.
pub fn cache_lookup(hit: bool) {
    match (INSTALLED.get(), hit) {
        (Some(installed), true) => installed.cache_hits.increment(1),
        (Some(installed), false) => installed.cache_misses.increment(1),
        (None, _) => {}
    }
}

/// Count one look-up of a workload token in the cache of verified tokens. `issuer` must be a
/// configured issuer name (or `_unknown`), never the token's `iss`.
pub fn identity_cache_lookup(issuer: &str, hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    let register = || ::metrics::counter!(IDENTITY_CACHE_LOOKUPS, "issuer" => issuer.to_owned(), "outcome" => outcome);
    let count = |counter: &Counter| counter.increment(1);
    match INSTALLED.get() {
        Some(installed) => installed
            .identity_lookups
            .with(issuer, outcome, register, count),
        None => count(&register()),
    }
}

/// Append how many verified workload tokens this app's cache holds.
pub fn render_identity_cache(text: &mut String, entries: u64) {
    let _ = writeln!(
        text,
        "# HELP {IDENTITY_CACHE_ENTRIES} Workload tokens held in the cache of verified tokens\n# TYPE {IDENTITY_CACHE_ENTRIES} gauge\n{IDENTITY_CACHE_ENTRIES} {entries}"
    );
}

/// Count a background refresh that failed.
pub fn refresh_failure(profile: &str) {
    ::metrics::counter!(REFRESH_FAILURES, "profile" => profile.to_owned()).increment(1);
}

/// Count one answered proxy request. `route` must be a configured route name (or `_unknown`).
pub fn proxy_request(route: &str, status: u16) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let register =
        || ::metrics::counter!(PROXY_REQUESTS, "route" => route.to_owned(), "class" => class);
    let count = |counter: &Counter| counter.increment(1);
    match INSTALLED.get() {
        Some(installed) => installed.proxy_requests.with(route, class, register, count),
        None => count(&register()),
    }
}

/// Count one proxied response header replaced because it carried the broker's token.
pub fn proxy_redacted_header(route: &str) {
    ::metrics::counter!(PROXY_REDACTED_HEADERS, "route" => route.to_owned()).increment(1);
}

/// Record how long a proxied upstream took to answer (headers).
pub fn proxy_upstream(route: &str, elapsed: Duration) {
    let register = || ::metrics::histogram!(PROXY_UPSTREAM_DURATION, "route" => route.to_owned());
    let record = |histogram: &Histogram| histogram.record(elapsed.as_secs_f64());
    match INSTALLED.get() {
        Some(installed) => installed.proxy_upstream.with(route, "", register, record),
        None => record(&register()),
    }
}

/// Count one upstream call to `target` (`maskinporten`, `altinn`) with its `outcome` (`ok`,
/// `refused`, `unavailable`, `unreachable`, `timeout`, `invalid`) and time it.
pub fn upstream_call(target: &'static str, outcome: &'static str, elapsed: Duration) {
    ::metrics::counter!(UPSTREAM_REQUESTS, "target" => target, "outcome" => outcome).increment(1);
    ::metrics::histogram!(UPSTREAM_DURATION, "target" => target).record(elapsed.as_secs_f64());
}

/// Count one signature asked of a `signer` outside the process (`pkcs11`, `vault_transit`) for a
/// `purpose` (`grant`, or `probe`: start-up and reload) with its `outcome` (`ok`, `unreachable`,
/// `refused`, `timeout`, `invalid`) and time it.
pub fn signer_call(
    signer: &'static str,
    purpose: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    ::metrics::counter!(SIGNER_REQUESTS, "signer" => signer, "purpose" => purpose, "outcome" => outcome)
        .increment(1);
    ::metrics::histogram!(SIGNER_DURATION, "signer" => signer).record(elapsed.as_secs_f64());
}

/// When a key of a managed client stops working (unix seconds: Digdir's `exp`, or the
/// certificate's not-after if sooner). Bounded: Digdir holds at most 5 keys per client.
pub fn key_expires_at(client: &str, kid: &str, unix_seconds: f64) {
    ::metrics::gauge!(KEY_EXPIRES_AT, "client" => client.to_owned(), "kid" => kid.to_owned())
        .set(unix_seconds);
}

/// A failed read or change of Digdir's key set; `status` is the HTTP status or a fixed word.
pub fn key_rotation_failure(client: &str, status: &str) {
    ::metrics::counter!(KEY_ROTATION_FAILURES, "client" => client.to_owned(), "status" => status.to_owned())
        .increment(1);
}

/// The text exposition: the process-wide metrics, then the remaining lifetime of each token this
/// app has cached.
///
/// The expiry gauge is written from `cached` at each scrape rather than kept in the recorder, so a
/// token that left the cache disappears from the output instead of staying at its last value.
/// `cached` holds (profile, org or "", time left) per cached token.
pub fn render<'a>(
    handle: &PrometheusHandle,
    cached: impl IntoIterator<Item = (&'a str, &'a str, Duration)>,
) -> String {
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = writeln!(
        text,
        "# HELP {TOKEN_EXPIRY} Seconds until each cached token expires\n# TYPE {TOKEN_EXPIRY} gauge"
    );
    for (profile, org, left) in cached {
        let _ = writeln!(
            text,
            "{TOKEN_EXPIRY}{{profile=\"{}\",org=\"{}\"}} {}",
            escape(profile),
            escape(org),
            left.as_secs_f64()
        );
    }
    text
}

/// Append the seconds until each signing key stops working (its certificate's not-after; negative
/// once past), by `kid` (empty for a certificate without one). Written at each scrape from the
/// current keys, so a rotated-away key disappears.
pub fn render_key_expiry<'a>(text: &mut String, keys: impl IntoIterator<Item = (&'a str, f64)>) {
    let _ = writeln!(
        text,
        "# HELP {KEY_EXPIRY} Seconds until the signing key's certificate expires\n# TYPE {KEY_EXPIRY} gauge"
    );
    for (kid, left) in keys {
        let _ = writeln!(text, "{KEY_EXPIRY}{{kid=\"{}\"}} {left}", escape(kid));
    }
}

/// Escape a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_gauge_lists_each_cached_token() {
        let handle = install();
        let keys = [
            ("altinn", "991825827", Duration::from_secs(90)),
            ("a\"b", "", Duration::from_millis(1500)),
        ];
        let text = render(&handle, keys);
        assert!(text.contains(
            "broker_token_seconds_until_expiry{profile=\"altinn\",org=\"991825827\"} 90\n"
        ));
        assert!(
            text.contains("broker_token_seconds_until_expiry{profile=\"a\\\"b\",org=\"\"} 1.5\n")
        );
        assert!(text.contains("broker_build_info{version=\""));
    }

    #[test]
    fn token_request_outcomes_follow_the_status() {
        let handle = install();
        // One profile per status, so that each outcome is tied to the status that made it.
        let cases = [
            (200, "ok"),
            (403, "client_error"),
            (429, "client_error"),
            (503, "upstream_error"),
            (504, "upstream_error"),
            (500, "internal_error"),
        ];
        for (status, _) in cases {
            token_request(&format!("unit-test-outcome-{status}"), status);
        }
        let text = handle.render();
        for (status, outcome) in cases {
            let line = format!(
                "broker_token_requests_total{{profile=\"unit-test-outcome-{status}\",outcome=\"{outcome}\"}} 1\n"
            );
            assert!(text.contains(&line), "{status} → {outcome}: {text}");
        }
    }

    #[test]
    fn proxy_requests_and_latency_are_counted_through_the_kept_handles() {
        let handle = install();
        for status in [200, 204, 201, 404] {
            proxy_request("unit-test-route", status);
        }
        proxy_upstream("unit-test-route", Duration::from_millis(3));
        proxy_upstream("unit-test-route", Duration::from_millis(30));
        let text = handle.render();
        assert!(
            text.contains(
                "broker_proxy_requests_total{route=\"unit-test-route\",class=\"2xx\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "broker_proxy_requests_total{route=\"unit-test-route\",class=\"4xx\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "broker_proxy_upstream_duration_seconds_count{route=\"unit-test-route\"} 2\n"
            ),
            "{text}"
        );
    }
}
