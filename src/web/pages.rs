//! The HTML pages.

use axum::Router;

use super::AppState;

/// The pages' routes.
pub fn routes() -> Router<AppState> {
    Router::new()
}
