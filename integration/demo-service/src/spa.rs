//! Serves the built single-page app, with `index.html` for client-side routes.

use std::path::Path;

use tower_http::services::{ServeDir, ServeFile};

/// `/login` and `/dashboard` are React routes, not files: anything that is not a file gets
/// `index.html` (status 200) so that a reload or a deep link works.
pub fn service(dist: &Path) -> ServeDir<ServeFile> {
    let index = dist.join("index.html");
    if !index.is_file() {
        tracing::warn!(
            "{} is missing: build the web app (cd integration/web && npm ci && npm run build)",
            index.display()
        );
    }
    ServeDir::new(dist).fallback(ServeFile::new(index))
}
