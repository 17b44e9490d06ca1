//! One connection to one relay.
//!
//! [`RelayClient::connect`] opens TCP, TLS 1.3 (the certificate must hash to the
//! fingerprint in the relay address; no CA, no host-name check) and a WebSocket, and
//! reads the relay's hello. Requests may be issued concurrently from several tasks;
//! each awaits its own answer. Deliveries from subscribed mailboxes arrive on the
//! channel returned by [`RelayClient::deliveries`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backchannel_proto::addr::{MailboxId, RelayAddr};
use backchannel_proto::frame::{
    Blob, ClientFrame, ErrorCode, FRAME_LEN, KIND_DELETE_MAILBOX, KIND_FETCH, KIND_SUBSCRIBE,
    RendezvousEvent, Request, Response, ServerFrame, auth_message,
};
use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::{SinkExt as _, StreamExt as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Why talking to a relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayClientError {
    /// The TCP connection could not be made.
    #[error("cannot reach the relay: {0}")]
    Connect(#[source] std::io::Error),
    /// TLS failed; a certificate that does not match the address ends up here.
    #[error(
        "the relay's identity could not be verified (TLS: {0}); the address may be wrong or someone is intercepting"
    )]
    Tls(#[source] std::io::Error),
    /// The WebSocket upgrade or the hello failed.
    #[error("the relay did not answer as a Backchannel relay: {0}")]
    Handshake(String),
    /// The connection is closed.
    #[error("the connection to the relay was closed")]
    Closed,
    /// No answer in time.
    #[error("the relay did not answer in time")]
    Timeout,
    /// The relay refused the request.
    #[error("{0}")]
    Refused(ErrorCode),
    /// The relay sent something that is not a valid frame.
    #[error("the relay sent an invalid frame: {0}")]
    Protocol(String),
}

/// A message pushed from a subscribed mailbox.
#[derive(Debug)]
pub struct Delivery {
    /// The mailbox.
    pub read_id: MailboxId,
    /// The relay's identifier, to acknowledge it.
    pub message_id: u64,
    /// The blob.
    pub blob: Blob,
}

type Waiters = Arc<Mutex<HashMap<u32, oneshot::Sender<Response>>>>;
/// Unacknowledged deliveries per subscribed mailbox.
type Outstanding = Arc<Mutex<HashMap<MailboxId, u32>>>;

/// The most unacknowledged deliveries per subscription a client accepts, whatever
/// window a relay announces (4 MiB of blobs).
pub const MAX_WINDOW: u16 = 1024;

/// A connection to a relay.
pub struct RelayClient {
    address: RelayAddr,
    /// Which of the relay's hosts this connection reached (0: the first).
    host_index: usize,
    nonce: [u8; 32],
    window: u16,
    next_id: AtomicU32,
    out: mpsc::Sender<Vec<u8>>,
    waiters: Waiters,
    deliveries: Option<mpsc::Receiver<Delivery>>,
    /// Deliveries not yet acknowledged, per mailbox: the relay may not exceed its
    /// announced window on any of them.
    outstanding: Outstanding,
    rendezvous: Option<mpsc::Receiver<(u32, RendezvousEvent)>>,
    timeout: Duration,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RelayClient {
    /// Connects and completes the handshake within `timeout`; requests then time out
    /// after the same duration. A relay of several hosts is tried host by host, in
    /// order, each within `timeout`, until one answers.
    pub async fn connect(address: &RelayAddr, timeout: Duration) -> Result<Self, RelayClientError> {
        Self::connect_from(address, None, timeout).await
    }

    /// [`RelayClient::connect`] from the local address `from` (tests play several
    /// hosts through the loopback addresses 127.0.0.0/8).
    pub async fn connect_from(
        address: &RelayAddr,
        from: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> Result<Self, RelayClientError> {
        Self::connect_hosts(address, 0, from, timeout).await
    }

    /// [`RelayClient::connect`], trying the relay's hosts from the one at `first`
    /// (in the order of [`RelayAddr::hosts`]), then the others in order.
    pub async fn connect_starting_at(
        address: &RelayAddr,
        first: usize,
        timeout: Duration,
    ) -> Result<Self, RelayClientError> {
        Self::connect_hosts(address, first, None, timeout).await
    }

    async fn connect_hosts(
        address: &RelayAddr,
        first: usize,
        from: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> Result<Self, RelayClientError> {
        let mut last = RelayClientError::Timeout;
        let count = address.hosts().count();
        let first = first % count.max(1);
        for index in (first..count).chain(0..first) {
            let Some(host) = address.at_host(index) else {
                continue;
            };
            let attempt = tokio::time::timeout(timeout, Self::connect_inner(&host, from, timeout))
                .await
                .map_err(|_| RelayClientError::Timeout);
            match attempt.and_then(|r| r) {
                Ok(mut client) => {
                    client.address = address.clone();
                    client.host_index = index;
                    return Ok(client);
                }
                Err(e) => {
                    tracing::debug!(host = index, error = %e, "a host of the relay did not answer");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Which of the relay's hosts this connection reached, in the order of the
    /// address (0: the first).
    pub fn host_index(&self) -> usize {
        self.host_index
    }

    async fn connect_inner(
        address: &RelayAddr,
        from: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> Result<Self, RelayClientError> {
        let tcp = match from {
            None => TcpStream::connect(address.authority()).await,
            Some(ip) => Self::tcp_from(address, ip).await,
        }
        .map_err(RelayClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tls = tls_connector(address);
        let name = server_name(address)?;
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(RelayClientError::Tls)?;
        let url = format!("wss://{}/v1", address.authority());
        let config = WebSocketConfig::default()
            .max_message_size(Some(FRAME_LEN))
            .max_frame_size(Some(FRAME_LEN));
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map_err(|e| RelayClientError::Handshake(e.to_string()))?;
        let hello = match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => ServerFrame::decode(&bytes)
                .map_err(|e| RelayClientError::Protocol(e.to_string()))?,
            _ => return Err(RelayClientError::Handshake("no hello".into())),
        };
        let ServerFrame::Hello { nonce, window } = hello else {
            return Err(RelayClientError::Handshake(
                "the first frame is not a hello".into(),
            ));
        };
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(1024);
        let (deliver_tx, deliveries) = mpsc::channel::<Delivery>(usize::from(window).max(16) * 4);
        let (rendezvous_tx, rendezvous) = mpsc::channel::<(u32, RendezvousEvent)>(64);
        let waiters: Waiters = Arc::default();
        let outstanding: Outstanding = Arc::default();
        let reader_outstanding = outstanding.clone();
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(Message::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let reader_waiters = waiters.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Binary(bytes) = message else {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                    continue;
                };
                match ServerFrame::decode(&bytes) {
                    Ok(ServerFrame::Response {
                        request_id,
                        response,
                    }) => {
                        let waiter = reader_waiters
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&request_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(response);
                        }
                    }
                    Ok(ServerFrame::Deliver {
                        read_id,
                        message_id,
                        blob,
                    }) => {
                        // A relay that pushes more than it announced is not bounded
                        // by anything we can trust: drop it (the link reconnects).
                        let over = {
                            let mut open = reader_outstanding
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner);
                            // Only for a mailbox we subscribed to, and never past
                            // our own cap whatever the relay announced.
                            match open.get_mut(&read_id) {
                                Some(n) => {
                                    *n = n.saturating_add(1);
                                    *n > u32::from(window.min(MAX_WINDOW))
                                }
                                None => true,
                            }
                        };
                        if over {
                            tracing::warn!("the relay exceeded its delivery window; disconnecting");
                            break;
                        }
                        let delivery = Delivery {
                            read_id,
                            message_id,
                            blob,
                        };
                        if deliver_tx.send(delivery).await.is_err() {
                            // Nobody listens for deliveries; keep serving responses.
                        }
                    }
                    Ok(ServerFrame::Rendezvous { nameplate, event }) => {
                        let _ = rendezvous_tx.send((nameplate, event)).await;
                    }
                    // A second hello or garbage: the relay is misbehaving; stop.
                    _ => break,
                }
            }
            // Closing: every waiting request learns it.
            reader_waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        });
        Ok(Self {
            address: address.clone(),
            host_index: 0,
            nonce,
            window,
            outstanding,
            next_id: AtomicU32::new(1),
            out,
            waiters,
            deliveries: Some(deliveries),
            rendezvous: Some(rendezvous),
            timeout,
            tasks: vec![writer, reader],
        })
    }

    /// The relay's address.
    pub fn address(&self) -> &RelayAddr {
        &self.address
    }

    /// How many unacknowledged deliveries the relay sends per subscription.
    pub fn window(&self) -> u16 {
        self.window
    }

    /// The deliveries of all subscriptions of this connection. Can be taken once.
    pub fn deliveries(&mut self) -> Option<mpsc::Receiver<Delivery>> {
        self.deliveries.take()
    }

    /// What happens in this connection's rendezvous. Can be taken once.
    pub fn rendezvous_events(&mut self) -> Option<mpsc::Receiver<(u32, RendezvousEvent)>> {
        self.rendezvous.take()
    }

    /// Opens a rendezvous; returns its number and how long it stays open.
    pub async fn open_rendezvous(&self) -> Result<(u32, Duration), RelayClientError> {
        match self.request(Request::RendezvousOpen).await? {
            Response::RendezvousOpened {
                nameplate,
                ttl_secs,
            } => Ok((nameplate, Duration::from_secs(u64::from(ttl_secs)))),
            other => Err(unexpected(&other)),
        }
    }

    /// Joins the rendezvous with this number.
    pub async fn join_rendezvous(&self, nameplate: u32) -> Result<(), RelayClientError> {
        let response = self.request(Request::RendezvousJoin { nameplate }).await?;
        expect(response, |r| matches!(r, Response::RendezvousJoined))
    }

    /// Passes bytes to the other party of a rendezvous.
    pub async fn rendezvous_send(
        &self,
        nameplate: u32,
        data: Vec<u8>,
    ) -> Result<(), RelayClientError> {
        let response = self
            .request(Request::RendezvousSend { nameplate, data })
            .await?;
        expect(response, |r| matches!(r, Response::Forwarded))
    }

    /// Closes a rendezvous.
    pub async fn close_rendezvous(&self, nameplate: u32) -> Result<(), RelayClientError> {
        let response = self.request(Request::RendezvousClose { nameplate }).await?;
        expect(response, |r| matches!(r, Response::RendezvousClosed))
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, request: Request) -> Result<Response, RelayClientError> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.request_with_id(request_id, request).await
    }

    async fn request_with_id(
        &self,
        request_id: u32,
        request: Request,
    ) -> Result<Response, RelayClientError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request_id, tx);
        let frame = ClientFrame {
            request_id,
            request,
        }
        .encode();
        self.out
            .send(frame)
            .await
            .map_err(|_| RelayClientError::Closed)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Response::Error(code))) => Err(RelayClientError::Refused(code)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(RelayClientError::Closed),
            Err(_) => {
                self.waiters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&request_id);
                Err(RelayClientError::Timeout)
            }
        }
    }

    async fn tcp_from(address: &RelayAddr, ip: std::net::IpAddr) -> std::io::Result<TcpStream> {
        let target = tokio::net::lookup_host(address.authority())
            .await?
            .find(|a| a.is_ipv4() == ip.is_ipv4())
            .ok_or_else(|| std::io::Error::other("no address of the relay's family"))?;
        let socket = if ip.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
        socket.connect(target).await
    }

    /// Sends raw bytes as one WebSocket message (for tests of the relay's defences).
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), RelayClientError> {
        self.out
            .send(bytes)
            .await
            .map_err(|_| RelayClientError::Closed)
    }

    /// Round trip.
    pub async fn ping(&self) -> Result<(), RelayClientError> {
        expect(self.request(Request::Ping).await?, |r| {
            matches!(r, Response::Pong)
        })
    }

    /// Creates a mailbox owned by `key`; returns (send identifier, read identifier).
    pub async fn create_mailbox(
        &self,
        key: &SigningKey,
    ) -> Result<(MailboxId, MailboxId), RelayClientError> {
        let auth_key = key.verifying_key().to_bytes();
        match self.request(Request::CreateMailbox { auth_key }).await? {
            Response::MailboxCreated { send_id, read_id } => Ok((send_id, read_id)),
            other => Err(unexpected(&other)),
        }
    }

    /// Puts a blob into a mailbox; returns once the relay has it on disk. The relay
    /// drops it unread after `ttl_secs` (0: after the relay's own limit).
    pub async fn send(
        &self,
        send_id: MailboxId,
        ttl_secs: u32,
        blob: Blob,
    ) -> Result<(), RelayClientError> {
        let request = Request::Send {
            send_id,
            ttl_secs,
            blob,
        };
        expect(self.request(request).await?, |r| {
            matches!(r, Response::Stored)
        })
    }

    /// Subscribes to a mailbox: its messages arrive on [`RelayClient::deliveries`].
    /// Returns how many messages the mailbox held (they are delivered first).
    pub async fn subscribe(
        &self,
        read_id: MailboxId,
        key: &SigningKey,
    ) -> Result<u64, RelayClientError> {
        // Counted from before the request: deliveries may follow the answer before
        // this task sees it. Subscribing again starts over at the relay too.
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(read_id, 0);
        let (request_id, signature) = self.signed(key, KIND_SUBSCRIBE, &read_id);
        match self
            .request_with_id(request_id, Request::Subscribe { read_id, signature })
            .await?
        {
            Response::Subscribed { backlog } => Ok(backlog),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads up to `limit` messages of a mailbox after the relay's message id
    /// `after`, without deleting them (others may read them too). Returns them in
    /// order, and the id to continue after (`after` itself once there is no more).
    /// Uses this connection's deliveries: not for a connection with subscriptions.
    pub async fn fetch(
        &mut self,
        read_id: MailboxId,
        key: &SigningKey,
        after: u64,
        limit: u16,
    ) -> Result<(Vec<(u64, Blob)>, u64), RelayClientError> {
        let limit = limit.min(self.window).min(MAX_WINDOW);
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(read_id, 0);
        let (request_id, signature) = self.signed(key, KIND_FETCH, &read_id);
        let request = Request::Fetch {
            read_id,
            signature,
            after,
            limit,
        };
        let answer = self.request_with_id(request_id, request).await;
        let forget = || {
            self.outstanding
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&read_id);
        };
        let (count, last) = match answer {
            Ok(Response::Fetched { count, last }) if count <= limit => (count, last),
            Ok(Response::Fetched { count, .. }) => {
                forget();
                return Err(RelayClientError::Protocol(format!(
                    "{count} messages for a fetch of {limit}"
                )));
            }
            Ok(other) => {
                forget();
                return Err(unexpected(&other));
            }
            Err(e) => {
                forget();
                return Err(e);
            }
        };
        // The deliveries came before the answer, and the reader queued each before
        // reading the next frame.
        forget();
        let Some(deliveries) = self.deliveries.as_mut() else {
            return Err(RelayClientError::Protocol(
                "this connection's deliveries are taken".into(),
            ));
        };
        let mut out = Vec::with_capacity(usize::from(count));
        while out.len() < usize::from(count) {
            match deliveries.try_recv() {
                Ok(d) if d.read_id == read_id && d.message_id > after && d.message_id <= last => {
                    out.push((d.message_id, d.blob));
                }
                Ok(_) => {
                    return Err(RelayClientError::Protocol(
                        "a delivery outside the fetch".into(),
                    ));
                }
                Err(_) => {
                    return Err(RelayClientError::Protocol(format!(
                        "the relay announced {count} messages and delivered {}",
                        out.len()
                    )));
                }
            }
        }
        if last < after {
            return Err(RelayClientError::Protocol("a fetch went backwards".into()));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok((out, last))
    }

    /// Deletes a delivered message.
    pub async fn ack(&self, read_id: MailboxId, message_id: u64) -> Result<(), RelayClientError> {
        if let Some(n) = self
            .outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&read_id)
        {
            *n = n.saturating_sub(1);
        }
        expect(
            self.request(Request::Ack {
                read_id,
                message_id,
            })
            .await?,
            |r| matches!(r, Response::Acked),
        )
    }

    /// Deletes a mailbox and everything in it.
    pub async fn delete_mailbox(
        &self,
        read_id: MailboxId,
        key: &SigningKey,
    ) -> Result<(), RelayClientError> {
        let (request_id, signature) = self.signed(key, KIND_DELETE_MAILBOX, &read_id);
        let response = self
            .request_with_id(request_id, Request::DeleteMailbox { read_id, signature })
            .await?;
        expect(response, |r| matches!(r, Response::Deleted))
    }

    /// A fresh request id, and the owner's signature of a request of `kind` with
    /// it on `read_id`, over this connection's nonce.
    fn signed(&self, key: &SigningKey, kind: u8, read_id: &MailboxId) -> (u32, [u8; 64]) {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = auth_message(&self.nonce, kind, request_id, read_id);
        (request_id, key.sign(&message).to_bytes())
    }

    /// The nonce the relay chose for this connection (signatures cover it).
    pub fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }
}

fn expect(response: Response, ok: impl Fn(&Response) -> bool) -> Result<(), RelayClientError> {
    if ok(&response) {
        Ok(())
    } else {
        Err(unexpected(&response))
    }
}

fn unexpected(response: &Response) -> RelayClientError {
    RelayClientError::Protocol(format!("unexpected answer {response:?}"))
}

fn server_name(address: &RelayAddr) -> Result<ServerName<'static>, RelayClientError> {
    // The name is only sent as SNI; the certificate is checked by fingerprint.
    match address.host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(address.host.clone())
            .map_err(|e| RelayClientError::Handshake(format!("bad host name: {e}"))),
    }
}

fn tls_connector(address: &RelayAddr) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate {
        fingerprint: address.fingerprint.0,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    let mut config = match config {
        Ok(c) => c,
        // TLS 1.3 with the ring provider is always available.
        Err(_) => rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RefuseAll))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Accepts exactly the certificate whose SHA-256 is the pinned fingerprint, and
/// checks the handshake signature with that certificate's key.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        let same = digest
            .iter()
            .zip(self.fingerprint.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A verifier that accepts nothing (never used in practice; see `tls_connector`).
#[derive(Debug)]
struct RefuseAll;

impl ServerCertVerifier for RefuseAll {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General("no verifier".into()))
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no verifier".into()))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no verifier".into()))
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Vec::new()
    }
}
