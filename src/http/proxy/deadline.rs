//! An upstream's answer body that ends with an error once the route's timeout has passed: the
//! whole exchange, connect to last byte, stays within `proxy.{name}.timeout`.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::pool::Returning;

pin_project_lite::pin_project! {
    /// An upstream's answer body with a deadline.
    pub(super) struct Deadline {
        #[pin]
        body: Returning,
        sleep: Pin<Box<Sleep>>,
    }
}

impl Deadline {
    /// `body`, cut when `sleep` (the exchange's timer, armed when its request was sent) ends.
    pub(super) fn new(body: Returning, sleep: Pin<Box<Sleep>>) -> Deadline {
        Deadline { body, sleep }
    }
}

/// The error a body past its deadline ends with (the caller's connection is cut).
#[derive(Debug, thiserror::Error)]
#[error("the upstream's answer did not end within the route's timeout")]
struct TimedOut;

impl Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
