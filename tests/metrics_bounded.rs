//! A broker that nobody scrapes keeps its histograms bounded: the exporter holds each recorded
//! sample until it is folded into its buckets, and the broker folds them every second.
//!
//! A test binary of its own, so that the allocator counting live bytes sees only this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Samples recorded per round: about 1.6 MB while they are kept.
const SAMPLES: usize = 100_000;
/// Rounds of recording, a little more than the upkeep's interval apart.
const ROUNDS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_of_a_broker_nobody_scrapes_do_not_pile_up() {
    let settings = maskinporten_broker::config::Settings::from_yaml("env: local\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = maskinporten_broker::app::App::spawn(settings, listener)
        .await
        .unwrap();
    // The proxy's upstream histogram, under a route label of this test's own.
    let histogram = metrics::histogram!(
        "broker_proxy_upstream_duration_seconds",
        "route" => "metrics-bounded-test"
    );
    // A steady load, as a busy proxy records: the exporter's sample storage is freed a while
    // after it is folded (its blocks are reclaimed as later recordings pass), so what is held
    // is compared between two rounds of a running load, not after the load stops.
    let mut before = 0;
    for round in 0..ROUNDS {
        (0..SAMPLES).for_each(|i| histogram.record((i % 100) as f64 / 1000.0));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        if round == 1 {
            before = LIVE.load(Ordering::Relaxed);
        }
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    eprintln!("{grown} bytes more held after the last six rounds");
    // Kept, the samples of the last six rounds would be about 9.6 MB.
    assert!(
        grown < 4 * 1024 * 1024,
        "{grown} bytes more are held after {} more unscraped samples",
        (ROUNDS - 2) * SAMPLES
    );
    app.shutdown().await;
}
