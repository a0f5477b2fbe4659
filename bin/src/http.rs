//! The agent's HTTP endpoint (the `metrics` listener), served by hyper on
//! the agent's tokio runtime:
//!
//! | path | answer |
//! |---|---|
//! | `GET /health` | 200 `ok` while the process serves |
//! | `GET /ready` | 200 when a view is installed, its coordinator is known and, in `majority` mode, the view holds a majority; else 503. Both with a JSON body saying why |
//! | `GET /metrics` | the Prometheus text |
//!
//! Other paths are 404, other methods on these paths 405 (`HEAD` is
//! answered like `GET`, without a body).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/ready` judges, as the node task last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Readiness {
    /// The installed view's id, if the lock layer has a view.
    pub view_id: Option<u64>,
    /// Members of that view.
    pub members: usize,
    /// The coordinator's name, if known.
    pub coordinator: Option<String>,
    /// In `majority` mode, the configured member count; `None` in
    /// `available` mode (no quorum needed).
    pub majority_of: Option<usize>,
}

impl Readiness {
    /// Whether `majority_of` is held by the view (always in `available` mode).
    pub fn quorum(&self) -> bool {
        self.majority_of.is_none_or(|n| self.members > n / 2)
    }

    /// Why the node is not ready, or `None` when it is.
    pub fn reason(&self) -> Option<String> {
        if self.view_id.is_none() {
            return Some("no view installed yet (joining)".into());
        }
        if !self.quorum() {
            let n = self.majority_of.unwrap_or(0);
            return Some(format!(
                "no quorum: {} of {n} configured members in the view, {} needed",
                self.members,
                n / 2 + 1
            ));
        }
        if self.coordinator.is_none() {
            return Some("no coordinator known".into());
        }
        None
    }
}

/// What the endpoint serves from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Renders the metrics.
    pub metrics: PrometheusHandle,
    /// The node's readiness, kept current by the node task.
    pub ready: watch::Receiver<Readiness>,
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = upkeep.tick() => sources.metrics.run_upkeep(),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // At the open-file limit `accept` fails at once, again and again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let sources = sources.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let response = respond(&sources, &req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    drop(permit);
                });
            }
        }
    }
}

/// The answer to one request.
pub fn respond<B>(sources: &Sources, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/health" | "/ready" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "not found: try /health, /ready or /metrics\n");
    }
    let head = req.method() == Method::HEAD;
    if !(head || req.method() == Method::GET) {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET\n");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let mut response = match path {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => ready(&sources.ready.borrow()),
        _ => {
            let body = crate::metrics::render(&sources.metrics);
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
    };
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn ready(state: &Readiness) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct Body<'a> {
        ready: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(flatten)]
        state: &'a Readiness,
        quorum: bool,
    }
    let reason = state.reason();
    let status = if reason.is_none() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Body { ready: reason.is_none(), reason, state, quorum: state.quorum() };
    let mut json = serde_json::to_string(&body).unwrap_or_default();
    json.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(json)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(state: Readiness) -> Sources {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let (_tx, ready) = watch::channel(state);
        Sources { metrics: recorder.handle(), ready }
    }

    fn get(sources: &Sources, method: Method, path: &str) -> Response<Full<Bytes>> {
        let req = Request::builder().method(method).uri(path).body(()).unwrap();
        respond(sources, &req)
    }

    fn serving() -> Readiness {
        Readiness { view_id: Some(3), members: 3, coordinator: Some("a".into()), majority_of: Some(3) }
    }

    #[test]
    fn paths_and_methods() {
        let s = sources(serving());
        assert_eq!(get(&s, Method::GET, "/health").status(), StatusCode::OK);
        assert_eq!(get(&s, Method::GET, "/ready").status(), StatusCode::OK);
        assert_eq!(get(&s, Method::GET, "/metrics").status(), StatusCode::OK);
        assert_eq!(get(&s, Method::HEAD, "/metrics").status(), StatusCode::OK);
        assert_eq!(get(&s, Method::GET, "/").status(), StatusCode::NOT_FOUND);
        assert_eq!(get(&s, Method::GET, "/metrics/x").status(), StatusCode::NOT_FOUND);
        let post = get(&s, Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        assert_eq!(get(&s, Method::DELETE, "/ready").status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn readiness_reasons() {
        assert_eq!(serving().reason(), None);
        let joining = Readiness::default();
        assert!(joining.reason().unwrap().contains("no view"));
        let minority = Readiness { members: 1, ..serving() };
        assert_eq!(
            minority.reason().as_deref(),
            Some("no quorum: 1 of 3 configured members in the view, 2 needed")
        );
        let available = Readiness { members: 1, majority_of: None, ..serving() };
        assert_eq!(available.reason(), None);
        let headless = Readiness { coordinator: None, ..serving() };
        assert!(headless.reason().unwrap().contains("coordinator"));
        assert_eq!(get(&sources(minority), Method::GET, "/ready").status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
