//! `GET /events`: the live feed as Server-Sent Events. `id:` is the feed
//! cursor, `event:` the routing key, `data:` the JSON body. A client that
//! reconnects with `Last-Event-ID` (browsers' EventSource do) first gets
//! every event it missed, read back from PostgreSQL, then the live ones.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, mpsc, watch};

use crate::feed::{FeedEvent, PAGE};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Events buffered per client before its follower waits (and then, if
/// the client stays slow, lags and catches up from the database).
const CLIENT_BUFFER: usize = 64;
/// Keep-alive comments keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Starts the stream at `Last-Event-ID` (or `?after=ID`), else at "now".
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let given = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().unwrap_or("not text").to_string()),
        None => query.get("after").cloned(),
    };
    let cursor = match given {
        Some(raw) => raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "invalid Last-Event-ID {raw:?}: expected an event id from this feed"
                ))
            })?,
        None => state.feed.horizon(),
    };
    let (sender, receiver) = mpsc::channel(CLIENT_BUFFER);
    tokio::spawn(follow(state, cursor, sender));
    let events = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn to_sse(event: &FeedEvent) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(&event.routing_key)
        .data(&event.data)
}

/// Feeds one client: catch up from PostgreSQL to the horizon, then follow
/// the broadcast; after a lag, catch up again from the last event sent.
/// Ends when the client goes away or the server stops.
async fn follow(state: AppState, mut cursor: i64, client: mpsc::Sender<Event>) {
    let mut stopping = state.stopping.clone();
    if *stopping.borrow() {
        return;
    }
    loop {
        // Subscribe first: anything above the horizon read next arrives here.
        let mut live = state.feed.subscribe();
        loop {
            let horizon = state.feed.horizon();
            if cursor >= horizon {
                break;
            }
            let feed = state.feed.clone();
            let from = cursor;
            let rows = match tokio::task::spawn_blocking(move || feed.read(from, horizon)).await {
                Ok(Ok(rows)) => rows,
                Ok(Err(error)) => {
                    tracing::warn!("event stream: catching up from {from}: {error:#}");
                    return;
                }
                Err(error) => {
                    tracing::warn!("event stream: {error}");
                    return;
                }
            };
            let complete = (rows.len() as i64) < PAGE;
            for event in &rows {
                cursor = event.id;
                if !deliver(&client, &mut stopping, to_sse(event)).await {
                    return;
                }
            }
            if complete {
                // Ids up to the horizon that were not read are rollback holes.
                cursor = horizon;
            }
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                _ = stopping.changed() => return,
                _ = client.closed() => return,
            };
            match received {
                Ok(event) if event.id <= cursor => {}
                Ok(event) => {
                    cursor = event.id;
                    if !deliver(&client, &mut stopping, to_sse(&event)).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(
                        skipped,
                        cursor,
                        "slow event stream client: catching up from the database"
                    );
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends one event to the client, waiting while its buffer is full; false
/// when the client went away or the server stops.
async fn deliver(
    client: &mpsc::Sender<Event>,
    stopping: &mut watch::Receiver<bool>,
    event: Event,
) -> bool {
    tokio::select! {
        sent = client.send(event) => sent.is_ok(),
        _ = stopping.changed() => false,
    }
}
