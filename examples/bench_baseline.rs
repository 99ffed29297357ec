//! The baseline of `bench/run.sh`: the least any axum server on this machine can do for
//! `GET /token/{profile}`, so the broker's cache-hit figures can be read as a ratio.
//!
//! It answers every `/token/{profile}` with the same JSON body of a chosen size (the size of the
//! broker's answer, measured by the script) and the same content type and `Cache-Control`, on
//! the same Tokio runtime flavour as the broker. It holds no key, no cache and no token: the
//! body is filler. `/healthz` answers as the broker's does, for the script's start-up wait.
//!
//! ```text
//! cargo run --release --example bench_baseline -- [BODY_BYTES] [ADDR]
//! # defaults: $BENCH_BODY_SIZE or 1024 bytes, 127.0.0.1:18081
//! ```

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::routing::get;

const DEFAULT_BODY_BYTES: usize = 1024;
const DEFAULT_ADDR: &str = "127.0.0.1:18081";

/// A JSON object shaped like the broker's answer, padded to exactly `size` bytes where possible.
fn body_of_size(size: usize) -> Bytes {
    const HEAD: &str = "{\"access_token\":\"";
    const TAIL: &str = "\",\"token_type\":\"Bearer\"}";
    let filler = size.saturating_sub(HEAD.len() + TAIL.len());
    Bytes::from(format!("{HEAD}{}{TAIL}", "x".repeat(filler)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let size: usize = match args
        .next()
        .or_else(|| std::env::var("BENCH_BODY_SIZE").ok())
    {
        Some(text) => text
            .parse()
            .with_context(|| format!("body size {text:?} is not a number of bytes"))?,
        None => DEFAULT_BODY_BYTES,
    };
    let addr: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or(DEFAULT_ADDR)
        .parse()
        .context("the address is not IP:PORT")?;

    let body = body_of_size(size);
    let len = body.len();
    let token = get(move || {
        let body = body.clone();
        async move {
            (
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
                body,
            )
        }
    });
    let router = Router::new()
        .route("/token/{profile}", token)
        .route("/healthz", get(|| async { "{\"status\":\"ok\"}" }));

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("bench_baseline: {len}-byte body on http://{addr}/token/{{profile}}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
