//! Static files: the browser front end (`www/`) is served by the host itself from the
//! directory `[static_files]` names. GET and HEAD only; no directory listings; nothing
//! outside the directory is reachable.

use std::path::{Component, Path, PathBuf};

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::config::StaticFiles;
use crate::http::{self, Request};

/// Answers `request` from the static directory. Returns `false` when there is no such
/// file, so the caller answers 404 itself.
pub(crate) async fn serve<S>(
    files: &StaticFiles,
    request: &Request,
    io: &mut S,
    server: Option<&str>,
    keep_alive: bool,
) -> std::io::Result<bool>
where
    S: AsyncWrite + Unpin,
{
    let Some(relative) = strip_prefix(&request.path, &files.path) else {
        return Ok(false);
    };
    if request.method != "GET" && request.method != "HEAD" {
        http::respond(
            io,
            405,
            &[("allow", "GET, HEAD")],
            server,
            "method not allowed",
        )
        .await?;
        return Ok(true);
    }
    let Some(mut file) = resolve(&files.dir, relative) else {
        return Ok(false);
    };
    if tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_dir()) {
        file.push("index.html");
    }
    let body = match tokio::fs::read(&file).await {
        Ok(body) => body,
        Err(_) => return Ok(false),
    };
    let mut head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-cache\r\nx-content-type-options: nosniff\r\nconnection: {}\r\n",
        content_type(&file),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    if let Some(server) = server {
        head.push_str(&format!("server: {server}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await?;
    if request.method == "GET" {
        io.write_all(&body).await?;
    }
    if keep_alive {
        io.flush().await?;
    } else {
        io.shutdown().await?;
    }
    Ok(true)
}

/// The part of `path` below `prefix`, if `path` is under it.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() || rest.starts_with('/') {
        Some(rest.trim_start_matches('/'))
    } else {
        None
    }
}

/// Maps a percent-encoded relative URL path to a file under `root`, refusing anything
/// that could leave it.
fn resolve(root: &Path, relative: &str) -> Option<PathBuf> {
    let decoded = percent_decode(relative)?;
    let mut path = root.to_path_buf();
    for component in Path::new(&decoded).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(path)
}

fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(out).ok()?;
    (!decoded.contains(['\0', '\\'])).then_some(decoded)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(strip_prefix("/", "/"), Some(""));
        assert_eq!(strip_prefix("/app.js", "/"), Some("app.js"));
        assert_eq!(strip_prefix("/ui/app.js", "/ui"), Some("app.js"));
        assert_eq!(strip_prefix("/ui", "/ui/"), Some(""));
        assert_eq!(strip_prefix("/uix/app.js", "/ui"), None);
    }

    #[test]
    fn nothing_outside_the_root_resolves() {
        let root = Path::new("/srv/www");
        assert_eq!(
            resolve(root, "pkg/app.wasm"),
            Some(root.join("pkg/app.wasm"))
        );
        assert_eq!(resolve(root, "a%20b.txt"), Some(root.join("a b.txt")));
        for evil in [
            "../etc/passwd",
            "a/../../x",
            "%2e%2e/x",
            "/etc/passwd",
            "a%00b",
            "a%5c..%5cb",
            "%zz",
        ] {
            assert_eq!(resolve(root, evil), None, "{evil}");
        }
    }

    #[test]
    fn wasm_gets_its_streaming_content_type() {
        assert_eq!(content_type(Path::new("x/app_bg.wasm")), "application/wasm");
        assert_eq!(
            content_type(Path::new("index.html")),
            "text/html; charset=utf-8"
        );
    }
}
