//! Serving a web app's files next to the WebSocket (`--static DIR`).
//!
//! Only regular files inside the directory are served: dot-files and dot-directories (`/.env`,
//! `/.git/…`) are refused, and so is any path that resolves, through a symlink or otherwise, to
//! somewhere outside the directory. Files are streamed, never read whole, and all file-system
//! work goes through `tokio::fs` (a blocking pool), never on the runtime's threads.

use std::path::{Path, PathBuf};
use tokio::fs::File;

/// A file ready to stream: its handle, length and content type.
#[derive(Debug)]
pub(crate) struct StaticFile {
    pub(crate) file: File,
    pub(crate) len: u64,
    pub(crate) content_type: &'static str,
}

/// Opens what `path` (the request path, without its query) names under `root`: the file, or a
/// directory's `index.html`. `None` for anything that must not be served or does not exist.
pub(crate) async fn open(root: &Path, path: &str) -> Option<StaticFile> {
    let relative = path.strip_prefix('/')?;
    if !relative.split('/').all(allowed_segment) {
        return None;
    }
    let root = tokio::fs::canonicalize(root).await.ok()?;
    let mut candidate = root.join(relative);
    if tokio::fs::metadata(&candidate).await.ok()?.is_dir() {
        candidate.push("index.html");
    }
    // Resolves every symlink: what is served must still be inside the root.
    let resolved: PathBuf = tokio::fs::canonicalize(&candidate).await.ok()?;
    if !resolved.starts_with(&root) {
        return None;
    }
    let file = File::open(&resolved).await.ok()?;
    let metadata = file.metadata().await.ok()?;
    if !metadata.is_file() {
        return None;
    }
    Some(StaticFile { file, len: metadata.len(), content_type: content_type(&resolved) })
}

/// A path segment that may be served: not hidden (which also rules out `.` and `..`), no
/// backslash (a separator on some systems), no NUL.
fn allowed_segment(segment: &str) -> bool {
    !segment.starts_with('.') && !segment.contains(['\\', '\0'])
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("redistribute-static-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn body(root: &Path, path: &str) -> Option<String> {
        let mut found = open(root, path).await?;
        let mut text = String::new();
        found.file.read_to_string(&mut text).await.unwrap();
        assert_eq!(found.len, text.len() as u64);
        Some(text)
    }

    #[tokio::test]
    async fn serves_files_and_directory_indexes() {
        let outside = TempDir::new("outside");
        std::fs::write(outside.0.join("secret.txt"), "secret").unwrap();
        let dir = TempDir::new("root");
        let root = dir.0.join("site");
        std::fs::create_dir_all(root.join("assets")).unwrap();
        std::fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(root.join("assets/app.js"), "go()").unwrap();
        assert_eq!(body(&root, "/").await.as_deref(), Some("<h1>hi</h1>"));
        assert_eq!(body(&root, "/assets/app.js").await.as_deref(), Some("go()"));
        assert_eq!(open(&root, "/assets/app.js").await.unwrap().content_type, "text/javascript; charset=utf-8");
        assert!(body(&root, "/assets/").await.is_none(), "no index there");
        assert!(body(&root, "/missing.js").await.is_none());

        // Refused: dot-files, traversal, symlinks that lead outside.
        std::fs::write(root.join(".env"), "PASSWORD=x").unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join(".git/config"), "x").unwrap();
        std::os::unix::fs::symlink(outside.0.join("secret.txt"), root.join("leak.txt")).unwrap();
        std::os::unix::fs::symlink(&outside.0, root.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(root.join("assets/app.js"), root.join("alias.js")).unwrap();
        for refused in [
            "/.env",
            "/.git/config",
            "/../outside/secret.txt",
            "/assets/../../outside",
            "/leak.txt",
            "/elsewhere/secret.txt",
            "relative",
            "/a\\b",
        ] {
            assert!(body(&root, refused).await.is_none(), "{refused} must not be served");
        }
        assert_eq!(body(&root, "/alias.js").await.as_deref(), Some("go()"), "a symlink inside the root is fine");
    }
}
