//! Client options: defaults, validation, and turning `http(s)://` targets into `ws(s)://`.

use std::time::Duration;

/// Plain (non-function) options, as read from the JavaScript options object.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// WebSocket URLs, in the order they are tried.
    pub targets: Vec<String>,
    /// Persist received messages in `localStorage`.
    pub local_storage: bool,
    /// Messages kept per channel in storage.
    pub storage_cap: usize,
    /// Prefix of every storage key.
    pub storage_prefix: String,
    /// First reconnect delay ceiling.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Publishes that may wait for a connection.
    pub max_queue: usize,
    /// How long received messages may wait before they are written to storage, in ms.
    pub flush_interval_ms: u32,
    /// Longest an attempt to connect may take before the next target is tried.
    pub connect_timeout: Duration,
    /// Longest a request waits for its reply.
    pub request_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            targets: Vec::new(),
            local_storage: true,
            storage_cap: 1000,
            storage_prefix: "redistribute:v1:".into(),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            max_queue: 1000,
            flush_interval_ms: 100,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Turns a target into a WebSocket URL: `http`→`ws`, `https`→`wss`, `ws(s)` kept; a missing path
/// becomes `/`.
///
/// # Errors
/// A message naming the target when it has another scheme or no host.
pub fn websocket_url(target: &str) -> Result<String, String> {
    // By hand rather than `split_once("://")`: a substring search costs the module a kilobyte.
    let (scheme, rest) = target
        .split_once(':')
        .and_then(|(scheme, rest)| Some((scheme, rest.strip_prefix("//")?)))
        .ok_or_else(|| format!("target \"{target}\" is not a URL (expected ws://, wss://, http:// or https://)"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(format!("target \"{target}\" has unsupported scheme \"{other}\"")),
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if host_end == 0 {
        return Err(format!("target \"{target}\" has no host"));
    }
    let (host, tail) = rest.split_at(host_end);
    let tail = if tail.starts_with('/') { tail.to_owned() } else { format!("/{tail}") };
    Ok(format!("{scheme}://{host}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_http_targets() {
        assert_eq!(websocket_url("https://api.example:8080").unwrap(), "wss://api.example:8080/");
        assert_eq!(websocket_url("http://127.0.0.1:8080/").unwrap(), "ws://127.0.0.1:8080/");
        assert_eq!(websocket_url("ws://h/?token=x").unwrap(), "ws://h/?token=x");
        assert_eq!(websocket_url("WSS://h?token=x").unwrap(), "wss://h/?token=x");
        assert!(websocket_url("ftp://h").is_err());
        assert!(websocket_url("localhost:8080").is_err());
        assert!(websocket_url("ws:///x").is_err());
    }
}
