//! Embedding the server with a permission hook.
//!
//! Clients connect with `ws://HOST:8080/?user=NAME`. Everyone may read `public:*` channels;
//! only the owner may subscribe to `inbox:NAME`; anyone may write to `inbox:*` (to send someone a
//! message) but only to their own `outbox:NAME`; and fields named `secret` are masked on the way
//! out. Run it next to a Redis on 127.0.0.1:6379:
//!
//! ```text
//! cargo run -p redistribute --example permissions
//! ```

use redistribute::protocol::{Entry, Start};
use redistribute::{Config, ConnInfo, Decision, Hooks, ListenOptions, Server, StreamEvent};

struct Permissions;

fn user(conn: &ConnInfo) -> Option<&str> {
    conn.query_param("user").filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric()))
}

impl Hooks for Permissions {
    async fn on_connect(&self, conn: &ConnInfo) -> Decision {
        match user(conn) {
            Some(_) => Decision::Allow,
            None => Decision::Deny("connect with ?user=NAME (letters and digits)".into()),
        }
    }

    async fn on_subscribe(&self, conn: &ConnInfo, channel: &str, _start: Start) -> Decision {
        let me = user(conn).unwrap_or_default();
        match channel.split_once(':') {
            Some(("public", _)) => Decision::Allow,
            Some(("inbox", owner)) if owner == me => Decision::Allow,
            _ => Decision::Deny(format!("{me} may not read {channel}")),
        }
    }

    async fn on_publish(&self, conn: &ConnInfo, channel: &str, _fields: &[String]) -> Decision {
        let me = user(conn).unwrap_or_default();
        match channel.split_once(':') {
            Some(("inbox", _)) => Decision::Allow,
            Some(("outbox", owner)) if owner == me => Decision::Allow,
            _ => Decision::Deny(format!("{me} may not write to {channel}")),
        }
    }

    fn on_stream_event(&self, _conn: &ConnInfo, _channel: &str, entry: &Entry) -> StreamEvent {
        if !entry.fields.chunks(2).any(|kv| kv[0] == "secret") {
            return StreamEvent::Pass;
        }
        let masked = entry
            .fields
            .chunks(2)
            .flat_map(|kv| [kv[0].clone(), if kv[0] == "secret" { "***".into() } else { kv[1].clone() }])
            .collect();
        StreamEvent::Rewrite(masked)
    }
}

#[tokio::main]
async fn main() -> Result<(), redistribute::Error> {
    tracing_subscriber::fmt::init();
    let mut config = Config::with_targets(["redis://127.0.0.1:6379"]);
    // These hooks are the whole access policy (no tokens, no channel rules), so the server runs
    // in open mode; `open` lets peers other than loopback in once the address is not 127.0.0.1.
    config.access.open = true;
    let server = Server::builder(config).hooks(Permissions).build()?;
    server.maxlen("public:lobby", 10_000);
    let listener = server.bind(&ListenOptions::new("127.0.0.1:8080".parse().expect("valid address"))).await?;
    println!("listening on ws://{}/?user=NAME", listener.local_addr()?);
    let serving = tokio::spawn(listener.run());
    tokio::signal::ctrl_c().await?;
    server.shutdown();
    server.stopped().await;
    serving.await.expect("listener task")?;
    Ok(())
}
