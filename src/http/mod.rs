//! `ordctl serve`: the HTTP API and the live admin dashboard, on axum.
//!
//! Handlers are thin: they parse the request into domain types and call the
//! same library functions as the CLI. Diesel calls block, so they run on
//! tokio's blocking pool (`spawn_blocking`), never on the async worker
//! threads; publishes go through the publishing thread
//! ([`crate::pipeline::publishing`]), which confirms many requests' events
//! under one wait while the requests await their answer.

pub mod auth;
pub mod credentials;
pub mod error;
pub mod routes;
pub mod state;

pub use error::BODY_LIMIT;
pub use state::AppState;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::{get, patch, post};
use axum::Router;
use tokio::sync::watch;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::cache::ProductCache;
use crate::config::Settings;
use crate::db;
use crate::feed::Feed;
use crate::messaging::publisher::PublisherPool;
use crate::pipeline::publishing::Publishing;
use crate::shutdown::Shutdown;
use credentials::{AdminToken, Sessions};
use state::Inner;

/// How long a request may take before it gets 408 (SSE streams are not
/// affected: their response starts at once).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What `ordctl serve` is given besides the settings.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub admin_token: AdminToken,
    /// PostgreSQL connections (and so orders placed at once).
    pub pool_size: u32,
}

/// Every route. Admin routes sit behind [`auth::require_admin`].
pub fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/events", get(routes::events::stream))
        .route("/orders/{id}/status", patch(routes::orders::set_status))
        // Adding a product sets a price and a stock: the catalogue is the
        // admin's, like a restock.
        .route("/products", post(routes::products::create))
        .route("/products/{id}/restock", post(routes::products::restock))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/", get(routes::dashboard::page))
        .route("/login", post(routes::dashboard::login))
        .route("/logout", post(routes::dashboard::logout))
        .route("/health", get(routes::health::health))
        .route("/ready", get(routes::health::ready))
        .route(
            "/orders",
            post(routes::orders::create).get(routes::orders::list),
        )
        .route("/orders/{id}", get(routes::orders::show))
        .route("/products", get(routes::products::list))
        .route("/products/{id}", get(routes::products::show))
        .merge(admin)
        .fallback(|| async { error::ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Innermost first: every layer's rejection passes through json_errors.
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        // Method, path and request id only: never headers (the
        // Authorization header, the session cookie) or bodies.
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id = id
                )
            }),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Runs the server until `shutdown`, then stops accepting, ends the live
/// streams, lets in-flight requests finish and returns. Blocking: it runs
/// its own multi-threaded tokio runtime.
pub fn serve(
    settings: &Settings,
    options: ServeOptions,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve")
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(options.listen))
        .with_context(|| format!("listening on {}", options.listen))?;
    let address = listener.local_addr()?;
    let pool = db::pool(&settings.database_url, options.pool_size)?;
    let (feed, reader) = Feed::start(&settings.database_url, pool.clone(), shutdown)?;
    let (stop, stopping) = watch::channel(false);
    let state = AppState::new(Inner {
        settings: settings.clone(),
        pool,
        publishing: Publishing::start(
            &settings.database_url,
            PublisherPool::new(&settings.amqp_url, crate::pipeline::topology(settings)),
        )?,
        products: ProductCache::new(
            &settings.redis_url,
            settings.namespace.clone(),
            options.pool_size,
        )?,
        feed,
        admin: options.admin_token,
        sessions: Sessions::default(),
        cookie_name: format!("ordctl_session_{}", address.port()),
        stopping,
    });
    tracing::info!("listening on http://{address}");
    let watcher = shutdown.clone();
    let result = runtime.block_on(
        axum::serve(listener, router(state.clone()))
            .with_graceful_shutdown(async move {
                while !watcher.is_triggered() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tracing::info!("stopping: finishing in-flight requests");
                let _ = stop.send(true);
            })
            .into_future(),
    );
    // The reader stops on the same shutdown; a failed server stops it too.
    shutdown.trigger();
    let _ = reader.join();
    state.publishing.close();
    result.context("serving HTTP")
}
