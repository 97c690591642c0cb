//! What every handler shares: the settings, the pools, the caches, the
//! feed and the admin's credentials.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use super::credentials::{AdminToken, Sessions};
use super::error::ApiError;
use crate::cache::ProductCache;
use crate::config::Settings;
use crate::db::PgPool;
use crate::feed::Feed;
use crate::pipeline::publishing::Publishing;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    pub pool: PgPool,
    /// Publishes what requests committed, many requests under one
    /// confirm wait.
    pub publishing: Publishing,
    /// `GET /products/{id}` reads through it; stock changes invalidate it.
    pub products: ProductCache,
    pub feed: Feed,
    pub admin: AdminToken,
    pub sessions: Sessions,
    /// Per port: two servers on one host must not share a login cookie.
    pub cookie_name: String,
    /// Flips to true when the server stops: live streams end, so the
    /// graceful shutdown does not wait for them forever.
    pub stopping: watch::Receiver<bool>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    /// Runs blocking work (diesel) on the blocking pool.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&AppState) -> anyhow::Result<T> + Send + 'static,
    {
        let state = self.clone();
        Ok(tokio::task::spawn_blocking(move || work(&state)).await??)
    }

    /// A pooled PostgreSQL connection (blocking).
    pub fn conn(
        &self,
    ) -> anyhow::Result<
        diesel::r2d2::PooledConnection<diesel::r2d2::ConnectionManager<diesel::PgConnection>>,
    > {
        self.pool.get().context("getting a database connection")
    }
}
