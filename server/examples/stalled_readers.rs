//! What clients that never read cost a server: starts `redistribute-server` (memory engine,
//! release build next to this example), fills a channel with about 4 MB of history, then opens
//! 1,000 WebSockets that subscribe from the beginning and never read a byte. Prints the server's
//! RSS before, while they are stuck, and after the write timeout released them.
//!
//! ```text
//! cargo build --release -p redistribute --bins --examples
//! target/release/examples/stalled_readers
//! ```

use futures_util::{SinkExt, StreamExt};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const READERS: usize = 1000;
const SEND_QUEUE_BYTES: usize = 4 << 20;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server's /proc entry");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

async fn metric(port: u16, name: &str) -> f64 {
    let body = reqwest_like(port, "/metrics").await;
    body.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(f64::NAN)
}

/// A bare HTTP GET (the server closes after answering).
async fn reqwest_like(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

async fn socket(
    port: u16,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://127.0.0.1:{port}/").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "redistribute.v1".parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

#[tokio::main]
async fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = std::env::current_exe().unwrap().parent().unwrap().with_file_name("redistribute-server");
    let mut child = Command::new(&server)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--write-timeout", "5s", "--log", "warn"])
        .args(["--send-queue-bytes", &SEND_QUEUE_BYTES.to_string(), "--max-connections-per-ip", "5000"])
        .args(["--publish-rate", "0", "--request-rate", "0"])
        .args(std::env::args().skip(1))
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build it with --bins)", server.display()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id();

    let mut publisher = socket(port).await;
    let value = "x".repeat(4000);
    for id in 0..1000 {
        let request = serde_json::json!({"id": id, "op": "publish", "channel": "history", "fields": ["v", value]});
        publisher.send(Message::Text(request.to_string().into())).await.unwrap();
        publisher.next().await.unwrap().unwrap();
    }
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_mib(pid);
    println!("server RSS with 4 MB of history: {base:.1} MiB");

    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let mut ws = socket(port).await;
        let offset = std::env::var("OFFSET").unwrap_or_else(|_| "0".into());
        let request = format!(r#"{{"id":1,"op":"subscribe","channel":"history","offset":"{offset}"}}"#);
        ws.send(Message::Text(request.into())).await.unwrap();
        readers.push(ws); // never read
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = rss_mib(pid);
    let budget = SEND_QUEUE_BYTES as f64 / (1 << 20) as f64;
    println!(
        "with {READERS} readers stuck: {stuck:.1} MiB (+{:.1} MiB, {:.0} KiB each; the bound is {budget:.0} MiB each); queued {:.1} MiB",
        stuck - base,
        (stuck - base) * 1024.0 / READERS as f64,
        metric(port, "redistribute_send_queue_bytes ").await / (1 << 20) as f64,
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    println!(
        "after the 5 s write timeout: {:.1} MiB; WebSockets still open {}",
        rss_mib(pid),
        metric(port, "redistribute_websockets_open ").await
    );
    drop(readers);
    let _ = child.kill();
    let _ = child.wait();
}
