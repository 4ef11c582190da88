//! The control panel of `tally cluster up`: the web console (the `console` crate's page, which
//! polls the nodes themselves) plus `/api/control`, through which the page starts, stops, kills,
//! restarts, pauses, partitions and heals nodes, and starts and stops a load. A node cannot
//! restart itself, so this lives in the process that owns the nodes.
//!
//! Guarded by a token (`x-tally-token` header, compared in constant time) and bound to loopback
//! unless the operator says otherwise. The HTTP side runs on a small runtime of its own; it hands
//! each action to the supervisor's loop over a bounded channel and waits for its answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use client::ClusterConfig;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// Actions waiting for the supervisor; more are refused (503) rather than queued.
pub const CONTROL_QUEUED_MAX: usize = 16;
/// How long an action may take before its HTTP answer gives up on it (a stop waits for the
/// node's grace period).
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most HTTP requests served at once; more are answered 503.
const CONNECTIONS_MAX: usize = 32;

/// What the page asks the supervisor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Report every node's state and the load's.
    State,
    Kill(u32),
    Stop(u32),
    Restart(u32),
    /// SIGSTOP: the node keeps its connections and answers nothing.
    Pause(u32),
    /// SIGCONT.
    Resume(u32),
    /// Cut every link between the node and the others (a silent blackhole).
    Partition(u32),
    /// Restore the node's links.
    Heal(u32),
    HealAll,
    LoadStart,
    LoadStop,
}

/// An action and where its answer goes: a one-line message, or the state document.
pub type Request = (Action, oneshot::Sender<Result<Value, String>>);

struct Panel {
    token: String,
    actions: SyncSender<Request>,
}

/// Serves the control panel on `listener` for as long as the runtime runs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    token: String,
    config: ClusterConfig,
    actions: SyncSender<Request>,
) {
    let panel = Arc::new(Panel { token, actions });
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let router = Router::new()
        .route("/api/control", get(state))
        .route("/api/control/{action}", post(act))
        .with_state(panel)
        .merge(console::router(config))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let permits = permits.clone();
                async move {
                    let Ok(_permit) = permits.try_acquire() else {
                        return json_answer(503, json!({ "error": "too many requests at once" }));
                    };
                    next.run(request).await
                }
            },
        ));
    if let Err(error) = axum::serve(listener, router).await {
        crate::local::say(format_args!("the control panel stopped: {error}"));
    }
}

fn json_answer(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Whether the request carries the panel's token (compared in constant time).
fn authorized(panel: &Panel, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get("x-tally-token")
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let expected = panel.token.as_bytes();
    let given = given.as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

async fn state(State(panel): State<Arc<Panel>>, headers: HeaderMap) -> Response {
    if !authorized(&panel, &headers) {
        return json_answer(401, json!({ "error": "a valid x-tally-token is needed" }));
    }
    run(&panel, Action::State).await
}

/// Parses `/api/control/{action}?node=N`.
pub fn parse_action(name: &str, query: Option<&str>) -> Result<Action, String> {
    let node = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("node="))
        .map(|value| {
            value
                .parse::<u32>()
                .map_err(|_| format!("{value:?} is not a node id"))
        })
        .transpose()?;
    let node_action = |make: fn(u32) -> Action| {
        node.map(make)
            .ok_or_else(|| format!("{name} needs ?node=N"))
    };
    match name {
        "kill" => node_action(Action::Kill),
        "stop" => node_action(Action::Stop),
        "restart" | "start" => node_action(Action::Restart),
        "pause" => node_action(Action::Pause),
        "resume" => node_action(Action::Resume),
        "partition" => node_action(Action::Partition),
        "heal" => node_action(Action::Heal),
        "heal-all" => Ok(Action::HealAll),
        "load-start" => Ok(Action::LoadStart),
        "load-stop" => Ok(Action::LoadStop),
        other => Err(format!(
            "unknown action {other:?}: kill, stop, restart, pause, resume, partition, heal (each with ?node=N), heal-all, load-start, load-stop"
        )),
    }
}

async fn act(
    State(panel): State<Arc<Panel>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !authorized(&panel, &headers) {
        return json_answer(401, json!({ "error": "a valid x-tally-token is needed" }));
    }
    match parse_action(&name, query.as_deref()) {
        Ok(action) => run(&panel, action).await,
        Err(message) => json_answer(400, json!({ "error": message })),
    }
}

/// Hands `action` to the supervisor and answers what it says.
async fn run(panel: &Panel, action: Action) -> Response {
    let (reply, answer) = oneshot::channel();
    match panel.actions.try_send((action, reply)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return json_answer(
                503,
                json!({ "error": "too many actions waiting; try again" }),
            );
        }
        Err(TrySendError::Disconnected(_)) => {
            return json_answer(503, json!({ "error": "the cluster is stopping" }));
        }
    }
    match tokio::time::timeout(ACTION_TIMEOUT, answer).await {
        Ok(Ok(Ok(body))) => json_answer(200, body),
        Ok(Ok(Err(message))) => json_answer(409, json!({ "error": message })),
        Ok(Err(_)) => json_answer(503, json!({ "error": "the cluster is stopping" })),
        Err(_) => json_answer(504, json!({ "error": "the action did not finish in time" })),
    }
}

/// The address the control panel listens on by default: loopback, after the nodes' HTTP ports.
pub fn default_address(base_port: u16, nodes: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base_port + 2 * nodes as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(parse_action("kill", Some("node=2")), Ok(Action::Kill(2)));
        assert_eq!(
            parse_action("start", Some("node=1")),
            Ok(Action::Restart(1))
        );
        assert_eq!(parse_action("heal-all", None), Ok(Action::HealAll));
        assert_eq!(parse_action("load-start", Some("")), Ok(Action::LoadStart));
        assert!(parse_action("kill", None).unwrap_err().contains("?node=N"));
        assert!(
            parse_action("kill", Some("node=x"))
                .unwrap_err()
                .contains("not a node id")
        );
        assert!(
            parse_action("reboot", Some("node=1"))
                .unwrap_err()
                .contains("unknown action")
        );
    }
}
