//! Rollouts without failed requests: after SIGTERM `/readyz` answers 503 at once while the broker
//! keeps accepting and serving for `server.shutdown_delay`, then stops accepting and drains.

use std::time::{Duration, Instant};

use crate::support::*;

/// What one request on a fresh connection got, and when (after SIGTERM).
#[derive(Debug)]
struct Outcome {
    after: Duration,
    /// The status, or `None` when the connection was refused or reset.
    status: Option<u16>,
}

/// `n` callers, each opening a fresh connection for every request, until `until` after `since`.
async fn loop_fresh_connections(
    url: String,
    n: usize,
    since: Instant,
    until: Duration,
) -> Vec<Outcome> {
    let callers = (0..n).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            // No idle connections kept: every request connects anew, as a caller behind a
            // Service meets a new pod.
            let http = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut seen = Vec::new();
            // Bounded: at most 10,000 requests per caller.
            for _ in 0..10_000 {
                if since.elapsed() >= until {
                    break;
                }
                let status = http
                    .get(&url)
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                seen.push(Outcome {
                    after: since.elapsed(),
                    status,
                });
                if status.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seen
        })
    });
    let mut all = Vec::new();
    for caller in futures::future::join_all(callers).await {
        all.extend(caller.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_sigterm_readyz_is_503_and_fresh_connections_are_served_until_the_delay_ends() {
    let mp = FakeMaskinporten::start().await;
    let altinn = FakeAltinn::start(&mp).await;
    let mut broker = ServedBinary::start(&mp, &altinn, "server:\n  shutdown_delay: 2s\n").await;
    let http = reqwest::Client::new();
    let ready = http.get(broker.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // The token is cached before the clock starts.
    let warm = http.get(broker.url("/token/admin")).send().await.unwrap();
    assert_eq!(warm.status(), 200);

    let since = Instant::now();
    signal(broker.child.id().unwrap(), "TERM");
    let callers = tokio::spawn(loop_fresh_connections(
        broker.url("/token/admin"),
        4,
        since,
        Duration::from_millis(3_500),
    ));
    // /readyz turns 503 at once (polled on fresh connections too).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut turned = None;
    for _ in 0..100 {
        let r = fresh.get(broker.url("/readyz")).send().await.unwrap();
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["status"], "draining");
            turned = Some(since.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let turned = turned.expect("/readyz answered 503 after SIGTERM");
    assert!(turned < Duration::from_millis(500), "{turned:?}");

    let outcomes = callers.await.unwrap();
    // Within the delay (with a margin for the signal's delivery and the clocks): every request
    // on a fresh connection is accepted and served.
    let during: Vec<_> = outcomes
        .iter()
        .filter(|o| o.after < Duration::from_millis(1_700))
        .collect();
    let refused = during.iter().filter(|o| o.status.is_none()).count();
    let served = during.iter().filter(|o| o.status == Some(200)).count();
    eprintln!(
        "during the 2 s delay: {served} served, {refused} refused, of {}",
        during.len()
    );
    assert_eq!(refused, 0, "refused during the delay: {during:?}");
    assert_eq!(served, during.len(), "{during:?}");
    assert!(served >= 20, "the callers kept calling: {served}");
    // Then the listener closes: later attempts are refused, and the process exits 0.
    let after = outcomes
        .iter()
        .filter(|o| o.after > Duration::from_millis(3_000));
    assert!(after.clone().count() > 0 && after.clone().all(|o| o.status.is_none()));
    let status = tokio::time::timeout(Duration::from_secs(10), broker.child.wait())
        .await
        .expect("exits after the delay and the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let log = stderr_of(&mut broker.child).await;
    assert!(log.contains("still accepting and serving"), "{log}");
}

#[tokio::test]
async fn a_shutdown_delay_over_25_seconds_is_refused() {
    let problems = maskinporten_broker::config::Settings::from_yaml(
        "env: local\nserver:\n  shutdown_delay: 26s\n",
    )
    .unwrap()
    .validate()
    .unwrap_err()
    .to_string();
    assert!(problems.contains("server.shutdown_delay"), "{problems}");
}

/// How the fake saw the upstream calls of one refresh-ahead cycle.
#[derive(Debug)]
struct Cycle {
    /// From the first fetch of the 30 tokens to the last.
    fetches_spread: Duration,
    /// From the first refresh to the last.
    refreshes_spread: Duration,
    /// Most refreshes in any one-second window.
    most_in_a_second: usize,
}

/// Three brokers started together against one fake Maskinporten, each serving the same ten
/// profiles of 10 s tokens; the fake's calls of their first refresh-ahead cycle.
async fn refreshes_of_three_brokers(jitter: f64) -> Cycle {
    let mp = FakeMaskinporten::start().await;
    mp.set_expires_in(10);
    let altinn = FakeAltinn::start(&mp).await;
    let profiles: String = (0..10)
        .map(|i| format!("  p{i}:\n    scopes: ['test:p{i}']\n"))
        .collect();
    let extra = format!(
        "cache:\n  refresh_when_left: 0.3\n  refresh_jitter: {jitter}\n  refresh_floor: 1s\n  min_remaining: 1s\nprofiles:\n{profiles}"
    );
    let mut brokers = Vec::new();
    for _ in 0..3 {
        let settings =
            maskinporten_broker::config::Settings::from_yaml(&config_yaml(&mp, &altinn, &extra))
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        brokers.push(
            maskinporten_broker::app::App::spawn(settings, listener)
                .await
                .unwrap(),
        );
    }
    let http = reqwest::Client::new();
    let ask_all = || {
        let requests = brokers.iter().flat_map(|b| {
            (0..10).map(|i| http.get(format!("http://{}/token/p{i}", b.addr)).send())
        });
        futures::future::join_all(requests)
    };
    for r in ask_all().await {
        assert_eq!(r.unwrap().status(), 200);
    }
    assert_eq!(mp.calls(), 30);
    let fetched: Vec<Instant> = mp.grants().iter().map(|g| g.at).collect();
    let started = *fetched.iter().min().unwrap();
    let fetches_spread = *fetched.iter().max().unwrap() - started;
    // Asked again, so every token is in use and refreshed ahead (at 7 s of its 10 s without
    // jitter; between 2 s and 7 s with 0.5).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in ask_all().await {
        assert_eq!(r.unwrap().status(), 200);
    }
    // The last refresh is due 7 s after the last fetch.
    let until = fetches_spread + Duration::from_millis(8_000);
    tokio::time::sleep(until.saturating_sub(started.elapsed())).await;
    for broker in brokers {
        broker.shutdown().await;
    }
    let mut refreshes: Vec<Duration> = mp
        .grants()
        .iter()
        .map(|g| g.at.duration_since(started))
        .filter(|at| *at > fetches_spread)
        .collect();
    refreshes.sort();
    assert_eq!(
        refreshes.len(),
        30,
        "each token refreshed once: {refreshes:?}"
    );
    let most_in_a_second = refreshes
        .iter()
        .map(|from| {
            refreshes
                .iter()
                .filter(|at| **at >= *from && **at < *from + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    Cycle {
        fetches_spread,
        refreshes_spread: refreshes[29] - refreshes[0],
        most_in_a_second,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jitter_spreads_the_refreshes_of_replicas_started_together() {
    // Side by side, each on a task of its own (one's start-up must not delay the other's calls).
    let lockstep = tokio::spawn(refreshes_of_three_brokers(0.0));
    let jittered = tokio::spawn(refreshes_of_three_brokers(0.5));
    let (lockstep, jittered) = (lockstep.await.unwrap(), jittered.await.unwrap());
    eprintln!(
        "3 brokers x 10 tokens of 10 s; the refresh cycle at the fake: without jitter {lockstep:?}; with refresh_jitter 0.5 {jittered:?}"
    );
    // Without jitter the refreshes repeat the fetches' pattern (here all within about a second);
    // with it they spread over seconds, and the busiest second has fewer calls.
    assert!(
        lockstep.refreshes_spread < lockstep.fetches_spread + Duration::from_millis(500),
        "without jitter they refresh in lockstep: {lockstep:?}"
    );
    assert!(
        jittered.refreshes_spread > jittered.fetches_spread + Duration::from_secs(2),
        "with jitter they spread: {jittered:?}"
    );
    assert!(
        jittered.most_in_a_second <= 20,
        "with jitter at most 20 of 30 in one second: {jittered:?}"
    );
}
