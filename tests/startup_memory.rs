//! A started broker does not keep the memory it used only while starting: building the router
//! and its OpenAPI document takes about 3 MB that is all free again once it is built.
//!
//! A test binary of its own, so that no other test's memory is counted.

/// This process's resident anonymous memory (heap, stacks), in KiB.
fn rss_anon_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/self/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_gives_back_the_memory_it_used_only_while_starting() {
    let before = rss_anon_kib();
    let settings = maskinporten_broker::config::Settings::from_yaml("env: local\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap();
    let grown = rss_anon_kib() - before;
    eprintln!("resident anonymous memory grew by {grown} KiB");
    assert!(
        grown < 2048,
        "{grown} KiB more resident after start-up: the start-up's free heap was not given back"
    );
    app.shutdown().await;
}
