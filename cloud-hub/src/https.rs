//! The HTTP API over TLS: an `axum` listener that hands out connections
//! whose handshake is done.
//!
//! Handshakes run on tasks of their own, each bounded by a timeout, so a
//! client that stalls mid-handshake (or a port scanner) never holds up the
//! next connection; a failed one is counted and logged with what the
//! client said, and the API goes on. The accept loop ends when the server
//! drops the listener (graceful shutdown), which frees the port.

use std::net::SocketAddr;
use std::time::Duration;

use conveyor_transport::tls::ServerTls;
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// A TLS handshake must be done this soon after the TCP connect.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections with their handshake done, waiting for the server.
const READY: usize = 64;

pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves TLS with `tls`'s certificate on `tcp`; each failed handshake
    /// counts in `failed`.
    pub fn new(tcp: TcpListener, tls: &ServerTls, failed: Counter) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let acceptor = tls.acceptor();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("the HTTPS listener cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx, failed) = (acceptor.clone(), tx.clone(), failed.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            failed.inc();
                            let why = conveyor_transport::tls::server_side(&e);
                            tracing::warn!(%peer, "HTTPS: TLS handshake failed: {why}");
                        }
                        Err(_) => {
                            failed.inc();
                            tracing::warn!(%peer, "HTTPS: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop never ends while this receiver lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
