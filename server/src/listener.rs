//! Accepting connections: a slot per socket (see `slots`; sockets without one are answered at
//! once, not left waiting), TCP keepalive, optional TLS, and a task per connection tracked for
//! graceful shutdown.

use crate::log_gate::LogEvent;
use crate::slots::Admission;
use crate::{Error, Shared, http, tls};
use socket2::{SockRef, TcpKeepalive};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// TCP keepalive on accepted sockets: the first probe after a minute of silence, then every 10 s.
const TCP_KEEPALIVE: TcpKeepalive =
    TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10));
/// How long a client may take to complete a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Address to bind; port 0 picks a free port (see [`Listener::local_addr`]).
    pub addr: SocketAddr,
    /// PEM private key; with `tls_cert`, the listener speaks TLS (wss://).
    pub tls_key: Option<PathBuf>,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
}

impl ListenOptions {
    /// Plain WebSocket on `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        ListenOptions { addr, tls_key: None, tls_cert: None }
    }

    /// TLS with the given PEM key and certificate chain.
    pub fn with_tls(mut self, key: impl Into<PathBuf>, cert: impl Into<PathBuf>) -> Self {
        self.tls_key = Some(key.into());
        self.tls_cert = Some(cert.into());
        self
    }
}

/// A bound listener; [`Listener::run`] serves it until the server shuts down.
pub struct Listener {
    shared: Arc<Shared>,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").field("addr", &self.tcp.local_addr().ok()).field("tls", &self.tls.is_some()).finish()
    }
}

impl Listener {
    pub(crate) async fn bind(shared: Arc<Shared>, options: &ListenOptions) -> Result<Listener, Error> {
        let tls = match (&options.tls_key, &options.tls_cert) {
            (Some(key), Some(cert)) => Some(tls::acceptor(key, cert)?),
            (None, None) => None,
            _ => return Err(Error::Config("TLS needs both a key and a certificate".into())),
        };
        let tcp = TcpListener::bind(options.addr).await?;
        Ok(Listener { shared, tcp, tls })
    }

    /// The bound address.
    ///
    /// # Errors
    /// When the socket cannot report it.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.tcp.local_addr()?)
    }

    /// Accepts connections until the server shuts down. Open connections are then closed with
    /// code 1001 by their own tasks; [`crate::Server::stopped`] waits for them.
    ///
    /// # Errors
    /// Never after binding; accept errors (such as running out of file descriptors) are logged
    /// and retried.
    pub async fn run(self) -> Result<(), Error> {
        let Listener { shared, tcp, tls } = self;
        info!(addr = %tcp.local_addr()?, tls = tls.is_some(), "listening");
        loop {
            let (socket, peer) = tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = shared.shutdown.cancelled() => break,
            };
            let metrics = &shared.metrics;
            let (slot, refusal_permit) = match shared.slots.admit(peer.ip()) {
                Admission::Admitted(slot) => {
                    metrics.connections_accepted.inc();
                    (Ok(slot), None)
                }
                Admission::Refused(refusal, permit) => {
                    metrics.connections_refused.with_label_values(&[refusal.as_str()]).inc();
                    if shared.log_gate.allow(LogEvent::Refused) {
                        info!(%peer, reason = refusal.as_str(), "no connection slot: answered 503/429");
                    }
                    (Err(refusal), Some(permit))
                }
                Admission::Dropped(refusal) => {
                    metrics.connections_refused.with_label_values(&[refusal.as_str()]).inc();
                    if shared.log_gate.allow(LogEvent::Refused) {
                        warn!(%peer, reason = refusal.as_str(), "no connection slot and no room to answer: closed");
                    }
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            // Finds peers that vanished without a FIN (a crashed host, a dropped NAT mapping)
            // even on connections where nothing is sent.
            let _ = SockRef::from(&socket).set_tcp_keepalive(&TCP_KEEPALIVE);
            let shared = shared.clone();
            let tls = tls.clone();
            // This task serves the HTTP exchange only: a WebSocket goes on in a task of its own
            // (see `http`), so an open connection does not keep the handshake's state.
            shared.tasks.clone().spawn(async move {
                let _refusal_permit = refusal_permit;
                match tls {
                    None => http::serve(shared, socket, peer, slot).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => http::serve(shared, stream, peer, slot).await,
                            Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
        Ok(())
    }
}
