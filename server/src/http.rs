//! The HTTP side of a connection: reads the request head, then serves `/healthz`, performs the
//! WebSocket upgrade on `/`, serves static files (with `--static DIR`), or answers with a plain
//! status.
//!
//! The upgrade is done by hand (head parsed with `httparse`, accept key from tungstenite) so that
//! one port serves both the health check and WebSockets without an HTTP framework.

use crate::engine::Chain;
use crate::hooks::ConnInfo;
use crate::log_gate::LogEvent;
use crate::progress::Tracked;
use crate::slots::{Refusal, Slot};
use crate::{Shared, connection, static_files};
use futures_util::FutureExt;
use redistribute_protocol::SUBPROTOCOL;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{debug, info};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client without a slot may take to send its request head.
const REFUSED_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// What refused clients are told to wait, in seconds.
const RETRY_AFTER_SECS: &str = "5";
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

/// Serves one accepted connection (plain or TLS). A connection that got no slot (`Err`) is
/// served `/healthz` and `/metrics` only; anything else gets 503 or 429 with `Retry-After`. A
/// WebSocket upgrade hands the socket and its slot to a task of their own and returns.
pub(crate) async fn serve<IO>(shared: Arc<Shared>, mut io: IO, peer: SocketAddr, slot: Result<Slot, Refusal>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let refused = slot.as_ref().err().copied();
    let mut buf = Vec::with_capacity(1024);
    let head_timeout = if refused.is_some() { REFUSED_HEAD_TIMEOUT } else { HEAD_TIMEOUT };
    let head = match tokio::time::timeout(head_timeout, read_head(&mut io, &mut buf)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(status)) => return respond(&mut io, status, "bad request head\n", &[]).await,
        Err(_) => return,
    };
    let upgrade = head.has_token("connection", "upgrade") && head.has_token("upgrade", "websocket");
    match (head.method.as_str(), head.path(), upgrade, refused) {
        ("GET", "/healthz", false, _) => match tokio::time::timeout(HEALTH_TIMEOUT, shared.engine.ping()).await {
            Ok(Ok(())) => respond(&mut io, "200 OK", "ok\n", &[]).await,
            Ok(Err(e)) => respond(&mut io, "503 Service Unavailable", &format!("{}\n", Chain(&e)), &[]).await,
            Err(_) => respond(&mut io, "503 Service Unavailable", "storage did not answer in time\n", &[]).await,
        },
        ("GET", "/metrics", false, _) => {
            let body = shared.render_metrics();
            respond_with(&mut io, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), &[]).await
        }
        (.., Some(Refusal::Full)) => {
            let body = "the server is at its connection limit; retry shortly or use another instance\n";
            respond(&mut io, "503 Service Unavailable", body, &[("Retry-After", RETRY_AFTER_SECS)]).await
        }
        (.., Some(Refusal::PerIp)) => {
            let body = "too many connections from your address\n";
            respond(&mut io, "429 Too Many Requests", body, &[("Retry-After", RETRY_AFTER_SECS)]).await
        }
        ("GET", "/", true, None) => upgrade_to_websocket(shared, io, peer, head, buf, slot).await,
        ("GET" | "HEAD", path, false, None) if shared.config.static_dir.is_some() => {
            let dir = shared.config.static_dir.as_deref().expect("checked by the guard");
            serve_file(&mut io, dir, path, head.method == "HEAD").await
        }
        ("GET", "/", false, None) => {
            let body =
                "Redistribute WebSocket endpoint: connect with a WebSocket client (subprotocol redistribute.v1)\n";
            respond(&mut io, "426 Upgrade Required", body, &[("Upgrade", "websocket")]).await
        }
        _ => respond(&mut io, "404 Not Found", "not found\n", &[]).await,
    }
}

/// Streams the file `path` names under `dir` (see [`static_files`] for what is refused).
async fn serve_file<IO: AsyncWrite + Unpin>(io: &mut IO, dir: &Path, path: &str, head_only: bool) {
    let Some(found) = static_files::open(dir, path).await else {
        return respond(io, "404 Not Found", "not found\n", &[]).await;
    };
    let head = response_head("200 OK", found.content_type, found.len, &[("Cache-Control", "no-cache")]);
    if io.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if !head_only {
        let mut file = found.file.take(found.len);
        if tokio::io::copy(&mut file, io).await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
}

/// Reads until the end of the head. `Ok(None)` when the peer left; `Err(status)` when the head
/// is malformed or too large.
async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut Vec<u8>) -> Result<Option<Head>, &'static str> {
    loop {
        // Straight into the buffer: a chunk on the stack would sit in every connection's task.
        buf.reserve(2048);
        let n = io.read_buf(buf).await.map_err(|_| "400 Bad Request")?;
        if n == 0 {
            return Ok(None);
        }
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
    respond_with(io, status, "text/plain; charset=utf-8", body.as_bytes(), extra).await;
}

/// The status line and headers of a response that closes the connection after its body.
fn response_head(status: &str, content_type: &str, len: u64, extra: &[(&str, &str)]) -> String {
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Writes a whole in-memory response and closes the connection.
async fn respond_with<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    status: &str,
    content_type: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) {
    let head = response_head(status, content_type, body.len() as u64, extra);
    let _ = io.write_all(head.as_bytes()).await;
    let _ = io.write_all(body).await;
    let _ = io.shutdown().await;
}

/// Completes the handshake, then runs the connection in a task of its own, holding `slot`: its
/// size is the connection's alone, not that of the HTTP exchange before it.
async fn upgrade_to_websocket<IO>(
    shared: Arc<Shared>,
    mut io: IO,
    peer: SocketAddr,
    head: Head,
    buf: Vec<u8>,
    slot: Result<Slot, Refusal>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Some(reason) = shared.access.refuse_peer(peer.ip()) {
        shared.metrics.connections_refused.with_label_values(&["peer"]).inc();
        if shared.log_gate.allow(LogEvent::Refused) {
            info!(%peer, "refused a WebSocket from a non-loopback peer (open mode)");
        }
        return respond(&mut io, "403 Forbidden", &format!("{reason}\n"), &[]).await;
    }
    if let Some(reason) = shared.access.refuse_origin(head.header("origin"), head.header("host")) {
        shared.metrics.connections_refused.with_label_values(&["origin"]).inc();
        if shared.log_gate.allow(LogEvent::Refused) {
            info!(%peer, origin = head.header("origin"), "refused a WebSocket from another origin");
        }
        return respond(&mut io, "403 Forbidden", &format!("{reason}\n"), &[]).await;
    }
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
    drop(buf);
    let (io, progress) = Tracked::new(io);
    let socket = WebSocketStream::from_partially_read(io, leftover, Role::Server, Some(ws_config)).await;
    let conn = Arc::new(ConnInfo::new(shared.next_conn_id(), peer, head.target, head.headers));
    debug!(conn = conn.id, %peer, "websocket connected");
    let tasks = shared.tasks.clone();
    // The slot is given back when the connection ends. (`map`, not an `async` block awaiting
    // the connection: that would hold its state twice.)
    tasks.spawn(connection::run(shared, conn, socket, progress).map(move |()| drop(slot)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Server};
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    /// Serves one connection over an in-memory pipe; returns the client's end.
    fn connect(server: &Server) -> DuplexStream {
        let (client, served) = duplex(64 << 10);
        let crate::slots::Admission::Admitted(slot) = server.shared.slots.admit(peer().ip()) else {
            panic!("a test server has free slots")
        };
        tokio::spawn(serve(server.shared.clone(), served, peer(), Ok(slot)));
        client
    }

    /// Sends `request` and reads the whole response (the server closes after it).
    async fn exchange(server: &Server, request: &str) -> String {
        let mut client = connect(server);
        client.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        response
    }

    fn server(config: Config) -> Server {
        Server::builder(config).build().unwrap()
    }

    #[tokio::test]
    async fn health_plain_answers_and_bad_heads() {
        let server = server(Config::default());
        let health = exchange(&server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"), "{health}");
        let plain = exchange(&server, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(plain.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{plain}");
        let missing = exchange(&server, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n"), "{missing}");
        let garbage = exchange(&server, "\x01\x02 nonsense\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{garbage}");
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert!(exchange(&server, &huge).await.starts_with("HTTP/1.1 431 "));
        let old = exchange(
            &server,
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        .await;
        assert!(old.starts_with("HTTP/1.1 426 ") && old.contains("Sec-WebSocket-Version: 13"), "{old}");
    }

    #[tokio::test]
    async fn static_files_stream_and_refuse_hidden_ones() {
        let dir = std::env::temp_dir().join(format!("redistribute-http-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let page = "<p>".repeat(50_000);
        std::fs::write(dir.join("index.html"), &page).unwrap();
        std::fs::write(dir.join(".env"), "SECRET=1").unwrap();
        let server = server(Config { static_dir: Some(dir.clone()), ..Config::default() });
        let got = exchange(&server, "GET /?v=1 HTTP/1.1\r\n\r\n").await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 150000\r\n")
        );
        assert!(got.ends_with(&page));
        let head = exchange(&server, "HEAD /index.html HTTP/1.1\r\n\r\n").await;
        assert!(head.contains("Content-Length: 150000\r\n") && head.ends_with("\r\n\r\n"), "no body for HEAD");
        assert!(exchange(&server, "GET /.env HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn upgrades_to_the_protocol_and_keeps_bytes_sent_with_the_head() {
        let server = server(Config::default());
        let mut client = connect(&server);
        // The first request frame travels in the same write as the head.
        let head = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Protocol: other, redistribute.v1\r\n\r\n";
        // A masked client text frame (RFC 6455 §5.2), with an all-zero masking key.
        let ping = br#"{"id":1,"op":"ping"}"#;
        let frame = [&[0x81, 0x80 | ping.len() as u8, 0, 0, 0, 0][..], ping].concat();
        client.write_all(&[head.as_bytes(), &frame].concat()).await.unwrap();
        let mut response = vec![0; 4096];
        let mut len = 0;
        while !response[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            len += client.read(&mut response[len..]).await.unwrap();
        }
        let text = String::from_utf8_lossy(&response[..len]).into_owned();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
        assert!(text.contains("Sec-WebSocket-Protocol: redistribute.v1\r\n"), "{text}");
        let rest = response[text.find("\r\n\r\n").unwrap() + 4..len].to_vec();
        let io = tokio::io::join(std::io::Cursor::new(rest).chain(client), tokio::io::sink());
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, None).await;
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), r#"{"id":1,"ok":{}}"#);
    }

    #[tokio::test]
    async fn refuses_other_subprotocols() {
        let server = server(Config::default());
        let request = "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        let answer = exchange(&server, request).await;
        assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains("redistribute.v1"), "{answer}");
    }
}
