//! `redistribute-baseline`: the bare fan-out server anyone would write in an afternoon with
//! tokio-tungstenite and a broadcast channel, speaking just enough of the protocol for
//! `redistribute-load` (subscribe from now on to one channel per connection, publish, pushes of
//! one entry). No storage, no
//! replay, no access control, no limits: the yardstick `redistribute-load --baseline` measures
//! Redistribute against, in the same run on the same machine.
//!
//! ```text
//! redistribute-baseline --listen 127.0.0.1:8091
//! ```

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use redistribute::protocol::SUBPROTOCOL;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Bare WebSocket fan-out server: the baseline of Redistribute's benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
}

/// One channel: the broadcast of encoded pushes, and the last ID handed out (ms, sequence).
struct Channel {
    pushes: broadcast::Sender<Utf8Bytes>,
    last: (u64, u64),
}

impl Default for Channel {
    fn default() -> Self {
        Channel { pushes: broadcast::channel(4096).0, last: (0, 0) }
    }
}

#[derive(Default)]
struct Channels {
    map: Mutex<HashMap<String, Channel>>,
}

impl Channels {
    fn sender(&self, channel: &str) -> broadcast::Sender<Utf8Bytes> {
        self.map.lock().unwrap().entry(channel.to_owned()).or_default().pushes.clone()
    }

    /// Gives the entry the next ID of `channel` (milliseconds, then a sequence within one) and
    /// broadcasts it, both under the lock so that pushes go out in ID order.
    fn publish(&self, channel: &str, fields: &Value) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut map = self.map.lock().unwrap();
        let entry = map.entry(channel.to_owned()).or_default();
        let last = entry.last;
        entry.last = if now > last.0 { (now, 0) } else { (last.0, last.1 + 1) };
        let offset = format!("{}-{}", entry.last.0, entry.last.1);
        let push = json!({"channel": channel, "messages": [{"offset": offset, "fields": fields}]});
        let _ = entry.pushes.send(push.to_string().into());
        offset
    }
}

/// Answers the handshake with the protocol's subprotocol.
#[expect(clippy::result_large_err, reason = "the signature tungstenite's handshake callback requires")]
fn select_protocol(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().expect("a valid header"));
    Ok(response)
}

async fn serve(socket: TcpStream, channels: Arc<Channels>) {
    let _ = socket.set_nodelay(true);
    // The same small read buffer as Redistribute's (the default is 128 KiB per connection), so
    // that memory comparisons measure the rest.
    let config = WebSocketConfig::default().read_buffer_size(4 << 10);
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(socket, select_protocol, Some(config)).await else {
        return;
    };
    let (sink, mut stream) = ws.split();
    let (replies, queue) = mpsc::channel::<Utf8Bytes>(1024);
    let (subscribe, subscriptions) = mpsc::channel::<broadcast::Receiver<Utf8Bytes>>(16);
    let writer = tokio::spawn(write_loop(sink, queue, subscriptions));
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else { continue };
        let Ok(request) = serde_json::from_str::<Value>(&text) else { continue };
        let (id, channel) = (request["id"].clone(), request["channel"].as_str().unwrap_or_default().to_owned());
        let reply = match request["op"].as_str() {
            Some("subscribe") => {
                if subscribe.send(channels.sender(&channel).subscribe()).await.is_err() {
                    break;
                }
                json!({"id": id, "ok": {"offset": "0-0"}})
            }
            Some("publish") => {
                let offset = channels.publish(&channel, &request["fields"]);
                json!({"id": id, "ok": {"offset": offset}})
            }
            _ => json!({"id": id, "ok": {}}),
        };
        if replies.send(reply.to_string().into()).await.is_err() {
            break;
        }
    }
    drop((replies, subscribe));
    let _ = writer.await;
}

/// Writes replies and the pushes of the connection's subscription (one channel at a time: the
/// latest subscribe wins), feeding what is ready and flushing once.
async fn write_loop<S>(
    mut sink: S,
    mut replies: mpsc::Receiver<Utf8Bytes>,
    mut subscriptions: mpsc::Receiver<broadcast::Receiver<Utf8Bytes>>,
) where
    S: futures_util::Sink<Message> + Unpin,
{
    let mut pushes: Option<broadcast::Receiver<Utf8Bytes>> = None;
    loop {
        let frame = tokio::select! {
            reply = replies.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
            Some(receiver) = subscriptions.recv() => {
                pushes = Some(receiver);
                continue;
            }
            push = async { pushes.as_mut().expect("guarded").recv().await }, if pushes.is_some() => match push {
                Ok(push) => push,
                // Lagging behind the broadcast: dropped, as a real server would do.
                Err(_) => return,
            },
        };
        if sink.feed(Message::Text(frame)).await.is_err() {
            return;
        }
        while let Some(push) = pushes.as_mut().and_then(|p| p.try_recv().ok()) {
            if sink.feed(Message::Text(push)).await.is_err() {
                return;
            }
        }
        while let Ok(reply) = replies.try_recv() {
            if sink.feed(Message::Text(reply)).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("redistribute-baseline listening on ws://{}/", listener.local_addr()?);
    let channels = Arc::new(Channels::default());
    loop {
        let (socket, _) = listener.accept().await?;
        tokio::spawn(serve(socket, channels.clone()));
    }
}
