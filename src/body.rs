//! Reading an upstream's answer with a bound, so that an answer that never ends costs at most
//! the bound in memory, not whatever the peer streams before the timeout. A leaf: the upstream
//! clients, the Vault signer and the JWKS reader all use it.

/// The largest answer read from Maskinporten's token endpoint, Altinn's exchange, the issuer
/// metadata and Vault: a token answer is a few KiB.
pub const MAX_UPSTREAM_BODY: usize = 1024 * 1024;

/// Why a body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// The connection broke or timed out while reading.
    Transport(reqwest::Error),
    /// The answer was longer than the bound (or said it would be).
    TooLarge,
}

/// The whole body of `response`, at most `limit` bytes.
pub async fn read(response: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `limit` for a sentence: `1 MiB`, `256 KiB`, or bytes.
pub fn shown(limit: usize) -> String {
    match limit {
        n if n >= 1024 * 1024 && n % (1024 * 1024) == 0 => format!("{} MiB", n / (1024 * 1024)),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n / 1024),
        n => format!("{n} bytes"),
    }
}
