//! The HTTP side of a connection: reads the request head, then serves `/healthz`, performs the
//! WebSocket upgrade on `/`, serves static files (with `--static DIR`), or answers with a plain
//! status.
//!
//! The upgrade is done by hand (head parsed with `httparse`, accept key from tungstenite) so that
//! one port serves both the health check and WebSockets without an HTTP framework.

use crate::engine::Chain;
use crate::hooks::ConnInfo;
use crate::{Shared, connection};
use redistribute_protocol::SUBPROTOCOL;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::debug;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/healthz` waits for Redis.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the request head says, copied out of the read buffer.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// Length of the head in the buffer; bytes after it belong to the WebSocket.
    len: usize,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Serves one accepted connection (plain or TLS).
pub(crate) async fn serve<IO>(shared: Arc<Shared>, mut io: IO, peer: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut buf = Vec::with_capacity(1024);
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut io, &mut buf)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(status)) => return respond(&mut io, status, "bad request head\n", &[]).await,
        Err(_) => return,
    };
    let upgrade = head.has_token("connection", "upgrade") && head.has_token("upgrade", "websocket");
    match (head.method.as_str(), head.path(), upgrade) {
        ("GET", "/", true) => upgrade_to_websocket(shared, io, peer, head, &buf).await,
        ("GET", "/healthz", false) => match tokio::time::timeout(HEALTH_TIMEOUT, shared.engine.ping()).await {
            Ok(Ok(())) => respond(&mut io, "200 OK", "ok\n", &[]).await,
            Ok(Err(e)) => respond(&mut io, "503 Service Unavailable", &format!("{}\n", Chain(&e)), &[]).await,
            Err(_) => respond(&mut io, "503 Service Unavailable", "storage did not answer in time\n", &[]).await,
        },
        ("GET" | "HEAD", path, false) if shared.config.static_dir.is_some() => {
            let dir = shared.config.static_dir.as_deref().expect("checked by the guard");
            serve_file(&mut io, dir, path, head.method == "HEAD").await
        }
        ("GET", "/", false) => {
            let body =
                "Redistribute WebSocket endpoint: connect with a WebSocket client (subprotocol redistribute.v1)\n";
            respond(&mut io, "426 Upgrade Required", body, &[("Upgrade", "websocket")]).await
        }
        _ => respond(&mut io, "404 Not Found", "not found\n", &[]).await,
    }
}

/// Serves `path` from `dir` (`/` and directories serve their `index.html`). Paths that leave
/// the directory are refused.
async fn serve_file<IO: AsyncWrite + Unpin>(io: &mut IO, dir: &Path, path: &str, head_only: bool) {
    let relative = path.trim_start_matches('/');
    let safe = relative.split('/').all(|segment| segment != ".." && !segment.contains('\\'));
    if !safe {
        return respond(io, "404 Not Found", "not found\n", &[]).await;
    }
    let mut file = dir.join(relative);
    if relative.is_empty() || file.is_dir() {
        file = file.join("index.html");
    }
    let Ok(body) = tokio::fs::read(&file).await else {
        return respond(io, "404 Not Found", "not found\n", &[]).await;
    };
    let content_type = match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
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
    };
    respond_with(io, "200 OK", content_type, &body, &[("Cache-Control", "no-cache")], head_only).await;
}

/// Reads until the end of the head. `Ok(None)` when the peer left; `Err(status)` when the head
/// is malformed or too large.
async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut Vec<u8>) -> Result<Option<Head>, &'static str> {
    loop {
        let mut chunk = [0u8; 2048];
        let n = io.read(&mut chunk).await.map_err(|_| "400 Bad Request")?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                return Ok(Some(Head {
                    method: request.method.unwrap_or_default().to_owned(),
                    target: request.path.unwrap_or_default().to_owned(),
                    headers: request
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect(),
                    len,
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("431 Request Header Fields Too Large"),
            Err(_) => return Err("400 Bad Request"),
        }
    }
}

/// A plain-text response.
async fn respond<IO: AsyncWrite + Unpin>(io: &mut IO, status: &str, body: &str, extra: &[(&str, &str)]) {
    respond_with(io, status, "text/plain; charset=utf-8", body.as_bytes(), extra, false).await;
}

/// Writes a whole response (only its head for HEAD requests) and closes the connection.
async fn respond_with<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    status: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    head_only: bool,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let _ = io.write_all(head.as_bytes()).await;
    if !head_only {
        let _ = io.write_all(body).await;
    }
    let _ = io.shutdown().await;
}

async fn upgrade_to_websocket<IO>(shared: Arc<Shared>, mut io: IO, peer: SocketAddr, head: Head, buf: &[u8])
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    if head.header("sec-websocket-version") != Some("13") {
        return respond(
            &mut io,
            "426 Upgrade Required",
            "WebSocket version 13 required\n",
            &[("Sec-WebSocket-Version", "13")],
        )
        .await;
    }
    let Some(key) = head.header("sec-websocket-key") else {
        return respond(&mut io, "400 Bad Request", "missing Sec-WebSocket-Key\n", &[]).await;
    };
    let offered: Vec<&str> =
        head.header("sec-websocket-protocol").map(|v| v.split(',').map(str::trim).collect()).unwrap_or_default();
    if !offered.is_empty() && !offered.contains(&SUBPROTOCOL) {
        let body = format!("unsupported subprotocol; this server speaks {SUBPROTOCOL}\n");
        return respond(&mut io, "400 Bad Request", &body, &[]).await;
    }
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if !offered.is_empty() {
        response.push_str(&format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"));
    }
    response.push_str("\r\n");
    if io.write_all(response.as_bytes()).await.is_err() || io.flush().await.is_err() {
        return;
    }
    let config = &shared.config;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .max_message_size(Some(config.hard_frame_limit()))
        .max_frame_size(Some(config.hard_frame_limit()));
    let leftover = buf[head.len..].to_vec();
    let socket = WebSocketStream::from_partially_read(io, leftover, Role::Server, Some(ws_config)).await;
    let conn = Arc::new(ConnInfo { id: shared.next_conn_id(), peer, target: head.target, headers: head.headers });
    debug!(conn = conn.id, %peer, "websocket connected");
    connection::run(shared, conn, socket).await;
}
