//! Accepting connections: a bounded accept loop (a semaphore caps open connections), optional
//! TLS, and a task per connection tracked for graceful shutdown.

use crate::{Error, Shared, http, tls};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

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
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        info!(addr = %tcp.local_addr()?, tls = tls.is_some(), "listening");
        loop {
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = shared.shutdown.cancelled() => break,
            };
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
            let _ = socket.set_nodelay(true);
            let shared = shared.clone();
            let tls = tls.clone();
            shared.tasks.clone().spawn(async move {
                let _permit = permit;
                match tls {
                    None => http::serve(shared, socket, peer).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket)).await {
                            Ok(Ok(stream)) => http::serve(shared, stream, peer).await,
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
