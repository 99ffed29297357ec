//! The two busiest routes, answered before axum's router: `GET /token/{profile}` and the egress
//! proxy's `/proxy/{name}/...`. Both handlers read the raw path themselves, so the router's work
//! for them (matching, and percent-decoding the path parameters into the request's extensions,
//! about 5,000 instructions of a proxied request) bought nothing. Every other request, and any
//! of these two whose path the router might route elsewhere, goes through the router as before,
//! with its 404 and 405 answers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::Method;
use axum::response::Response;
use futures::future::{BoxFuture, Either};
use tower::Service;

use super::auth::Caller;
use super::state::AppState;
use super::{proxy, token};

/// The router, with the two lanes in front of it.
#[derive(Clone)]
pub struct Lanes {
    router: Router,
    state: AppState,
    /// The fixed routes under `/token/` (`on-demand`, `consent`), which the router prefers to
    /// `/token/{profile}`: read from the route table, so a new one is never shadowed.
    fixed_under_token: Arc<[String]>,
}

impl Lanes {
    /// `routes`: every path of the route table, as the OpenAPI document spells them.
    pub fn new(router: Router, state: AppState, routes: &[String]) -> Lanes {
        let fixed_under_token = routes
            .iter()
            .filter_map(|path| {
                let segment = path.strip_prefix("/token/")?;
                (!segment.contains('{')).then(|| segment.to_owned())
            })
            .collect();
        Lanes {
            router,
            state,
            fixed_under_token,
        }
    }
}

/// Which lane a request of `method` to `path` takes; `fixed_under_token` as in [`Lanes`].
fn lane(fixed_under_token: &[String], method: &Method, path: &str) -> Lane {
    if let Some(segment) = path.strip_prefix("/token/") {
        let profile_route = method == Method::GET
            && !segment.is_empty()
            && !segment.contains('/')
            && !fixed_under_token.iter().any(|fixed| fixed == segment);
        return if profile_route {
            Lane::Token
        } else {
            Lane::Router
        };
    }
    if let Some(after) = path.strip_prefix("/proxy/") {
        // The router's four proxy routes take a non-empty name and any depth below it, but not
        // an empty segment (`//`): that path it answers itself.
        let name = after.split('/').next().unwrap_or_default();
        if !name.is_empty() && !after.contains("//") && proxy::METHODS.contains(method) {
            return Lane::Proxy;
        }
    }
    Lane::Router
}

#[derive(Debug, PartialEq, Eq)]
enum Lane {
    Token,
    Proxy,
    Router,
}

impl Service<Request<Body>> for Lanes {
    type Response = Response;
    type Error = Infallible;
    type Future = LaneFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> LaneFuture {
        match lane(
            &self.fixed_under_token,
            request.method(),
            request.uri().path(),
        ) {
            Lane::Token => match token::get_token(State(self.state.clone()), request) {
                Either::Left(ready) => LaneFuture::Ready {
                    answer: Some(ready.into_inner()),
                },
                Either::Right(fetch) => LaneFuture::Boxed { future: fetch },
            },
            Lane::Proxy => {
                let state = self.state.clone();
                LaneFuture::Boxed {
                    future: Box::pin(async move {
                        let (mut parts, body) = request.into_parts();
                        let caller = Caller::from_request_parts(&mut parts, &state).await;
                        let request = Request::from_parts(parts, body);
                        proxy::forward(State(state), caller, request).await
                    }),
                }
            }
            Lane::Router => LaneFuture::Routed {
                future: self.router.call(request),
            },
        }
    }
}

type RouterFuture = <Router as Service<Request<Body>>>::Future;

pin_project_lite::pin_project! {
    /// The answer of one lane.
    #[project = LaneProjection]
    pub enum LaneFuture {
        Ready { answer: Option<Response> },
        Boxed { future: BoxFuture<'static, Response> },
        Routed { #[pin] future: RouterFuture },
    }
}

impl Future for LaneFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LaneProjection::Ready { answer } => match answer.take() {
                Some(answer) => Poll::Ready(Ok(answer)),
                // Polled again after its answer: there is none left to give.
                None => Poll::Pending,
            },
            LaneProjection::Boxed { future } => future.as_mut().poll(cx).map(Ok),
            LaneProjection::Routed { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(method: Method, path: &str) -> Lane {
        let routes = [
            "/token",
            "/token/on-demand",
            "/token/consent",
            "/token/{profile}",
        ];
        let fixed: Vec<String> = routes
            .iter()
            .filter_map(|p| p.strip_prefix("/token/"))
            .filter(|s| !s.contains('{'))
            .map(str::to_owned)
            .collect();
        lane(&fixed, &method, path)
    }

    #[test]
    fn only_paths_the_router_would_give_these_handlers_take_a_lane() {
        assert_eq!(taken(Method::GET, "/token/altinn"), Lane::Token);
        assert_eq!(taken(Method::GET, "/token/al%74inn"), Lane::Token);
        // Fixed routes under /token/ win over {profile} in the router, and here.
        assert_eq!(taken(Method::GET, "/token/on-demand"), Lane::Router);
        assert_eq!(taken(Method::GET, "/token/consent"), Lane::Router);
        // HEAD (answered without a body by the router), other methods, other depths.
        assert_eq!(taken(Method::HEAD, "/token/altinn"), Lane::Router);
        assert_eq!(taken(Method::POST, "/token/altinn"), Lane::Router);
        assert_eq!(taken(Method::GET, "/token/"), Lane::Router);
        assert_eq!(taken(Method::GET, "/token"), Lane::Router);
        assert_eq!(taken(Method::GET, "/token/altinn/x"), Lane::Router);

        for method in [Method::GET, Method::HEAD, Method::POST, Method::DELETE] {
            assert_eq!(taken(method.clone(), "/proxy/bench/a/b?c"), Lane::Proxy);
            assert_eq!(taken(method, "/proxy/bench"), Lane::Proxy);
        }
        assert_eq!(taken(Method::OPTIONS, "/proxy/bench/"), Lane::Proxy);
        // TRACE would echo the token back, CONNECT tunnels: the router's 405.
        assert_eq!(taken(Method::TRACE, "/proxy/bench/a"), Lane::Router);
        assert_eq!(taken(Method::CONNECT, "/proxy/bench/a"), Lane::Router);
        // No name, or an empty segment: the router answers as it always has.
        assert_eq!(taken(Method::GET, "/proxy/"), Lane::Router);
        assert_eq!(taken(Method::GET, "/proxy//a"), Lane::Router);
        assert_eq!(taken(Method::GET, "/proxy/bench//a"), Lane::Router);
        assert_eq!(taken(Method::GET, "/healthz"), Lane::Router);
    }
}
