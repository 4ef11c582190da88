//! The web console's files, embedded in the binary: no build step, nothing fetched at run time.
//! Every node serves them at `/` and `/assets/` over its HTTP address, next to the JSON the page
//! polls (`/api/status`, `/api/cluster`); `tally cluster up` serves them too, with its control
//! panel (`/api/control`). [`router`] is what both serve alike: the files and the read-only
//! answers (`/api/cluster`, `/api/audit`, `/api/transfer/ID`, `/api/account/ID`). The page itself is plain HTML, CSS and JavaScript; its one library is
//! uPlot (MIT, vendored unchanged under `assets/vendor/uplot`, see its README).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use client::{AuditVerdict, ClientOptions, ClusterConfig, TallyClient};
use serde_json::json;

/// One embedded file: its content type and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The file served at `path` (`/`, or `/assets/...`), if any.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, bytes): (&str, &[u8]) = match path {
        "/" | "/index.html" => (HTML, include_bytes!("../assets/index.html")),
        "/assets/console.js" => (JS, include_bytes!("../assets/console.js")),
        "/assets/console.css" => (CSS, include_bytes!("../assets/console.css")),
        "/assets/uPlot.iife.min.js" => (
            JS,
            include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
        ),
        "/assets/uPlot.min.css" => (CSS, include_bytes!("../assets/vendor/uplot/uPlot.min.css")),
        "/assets/uPlot-LICENSE.txt" => (TEXT, include_bytes!("../assets/vendor/uplot/LICENSE")),
        _ => return None,
    };
    Some(Asset {
        content_type,
        bytes,
    })
}

/// An answer of the console's JSON API: an HTTP status and a document.
type Answer = (u16, serde_json::Value);

/// The page, its files, and the read-only answers about the cluster of `config` (through a
/// client of it), for a node's HTTP side or the control panel to merge into theirs.
pub fn router(config: ClusterConfig) -> Router {
    let client = TallyClient::new(config.clone(), ClientOptions::default());
    let state = Arc::new((config, client));
    Router::new()
        .route("/api/cluster", get(|State(s): State<Arc<(ClusterConfig, TallyClient)>>| async move { respond(cluster(&s.0)) }))
        .route("/api/audit", get(|State(s): State<Arc<(ClusterConfig, TallyClient)>>| async move { respond(audit(&s.1).await) }))
        .route(
            "/api/transfer/{id}",
            get(|State(s): State<Arc<(ClusterConfig, TallyClient)>>, Path(id): Path<String>| async move {
                respond(transfer(&s.1, &id).await)
            }),
        )
        .route(
            "/api/account/{id}",
            get(|State(s): State<Arc<(ClusterConfig, TallyClient)>>, Path(id): Path<String>| async move {
                respond(account(&s.1, &id).await)
            }),
        )
        .fallback(get(file))
        .with_state(state)
}

/// A JSON document any origin may read (the page served by one node polls every node).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn respond((status, body): Answer) -> Response {
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

async fn file(uri: Uri) -> Response {
    match asset(uri.path()) {
        Some(asset) => ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

fn error(status: u16, message: impl std::fmt::Display) -> Answer {
    (status, json!({ "error": message.to_string() }))
}

/// `GET /api/cluster`: the cluster file as the page reads it, every node's addresses and shards.
fn cluster(config: &ClusterConfig) -> Answer {
    (
        200,
        json!({
            "shard_count": config.shard_count,
            "nodes": config.nodes.iter().map(|node| json!({
                "id": node.id,
                "address": node.address,
                "http": node.http,
                "shards": node.shards,
            })).collect::<Vec<_>>(),
        }),
    )
}

/// `GET /api/audit`: a consistent audit of the whole cluster, judged.
async fn audit(client: &TallyClient) -> Answer {
    match client.audit().await {
        Ok(report) => {
            let verdict = AuditVerdict::new(&report, client.config());
            (
                200,
                json!({
                    "conserved": verdict.passed(),
                    "verdict": verdict.to_string(),
                    "violations": verdict.violations().iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
            )
        }
        Err(failure) => error(502, failure),
    }
}

/// `GET /api/transfer/ID`: what the cluster knows of a transfer (the id in decimal, or in
/// hexadecimal after `0x`).
async fn transfer(client: &TallyClient, id: &str) -> Answer {
    let parsed = match id.strip_prefix("0x").or_else(|| id.strip_prefix("0X")) {
        Some(hex) => u128::from_str_radix(hex, 16).ok(),
        None => id.parse().ok(),
    };
    let Some(id) = parsed else {
        return error(400, format!("{id:?} is not a transfer id"));
    };
    match client.transfer_status(id).await {
        Ok(state) => (
            200,
            json!({ "id": id.to_string(), "state": format!("{state:?}") }),
        ),
        Err(failure) => error(502, failure),
    }
}

/// `GET /api/account/ID`: an account's balance and its latest history entries.
async fn account(client: &TallyClient, id: &str) -> Answer {
    let Ok(id) = id.parse::<u64>() else {
        return error(400, format!("{id:?} is not an account id"));
    };
    let balance = match client.balance(id).await {
        Ok(balance) => balance,
        Err(failure) => return error(502, failure),
    };
    let history = match client.history(id, 20, 0).await {
        Ok(page) => page
            .entries
            .iter()
            .map(|entry| json!(format!("{entry:?}")))
            .collect::<Vec<_>>(),
        Err(failure) => vec![json!(format!("history: {failure}"))],
    };
    (
        200,
        json!({ "account": id, "balance": balance, "history": history }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_everything_it_loads_are_embedded() {
        let page = asset("/").expect("the page");
        let page = std::str::from_utf8(page.bytes).expect("UTF-8");
        for path in [
            "/assets/console.js",
            "/assets/console.css",
            "/assets/uPlot.iife.min.js",
            "/assets/uPlot.min.css",
        ] {
            assert!(page.contains(path), "the page does not load {path}");
            assert!(asset(path).is_some(), "{path} is not embedded");
        }
        assert!(asset("/assets/uPlot-LICENSE.txt").is_some());
        assert!(asset("/assets/../Cargo.toml").is_none());
    }
}
