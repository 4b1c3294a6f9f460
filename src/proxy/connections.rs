//! Bounds on agent connections, so that nobody exhausts the gateway with connections that cost
//! them nothing: a cap on open connections (in all and per client address), a total deadline
//! for a request's headers, and an idle keep-alive timeout.
//!
//! pingora bounds each *read* (60 s), not the whole header, so a client trickling one byte a
//! minute keeps a connection forever, and it counts no connections. [`ConnectionGuard`] wraps
//! the proxy application: it admits or refuses each new connection, then hands pingora the
//! stream wrapped in [`Deadlines`], which watches the bytes go by to know whether a request's
//! headers are still arriving, and cuts the connection when a deadline passes.
//!
//! Cost on the hot path: a connection's admission takes one short lock; per request, the
//! wrapper scans the header bytes once for their end (a few hundred bytes) and arms a timer
//! only while a request's headers are incomplete, or while a connection is idle with a
//! keep-alive timeout shorter than pingora's own 60 s.

use super::refusal::Refusal;
use crate::policy::ConnectionLimits;
use crate::state::GatewayState;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// pingora's own keep-alive timeout between requests (set for every HTTP/1 session); a
/// shorter configured timeout needs a timer of ours, a longer one is cut here anyway.
pub const PINGORA_KEEPALIVE: Duration = Duration::from_secs(60);

/// Open connections, in all and per client address.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; gives its place back when dropped.
pub struct Admitted {
    counts: Arc<ConnectionCounts>,
    client: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = crate::util::lock(&self.counts.inner);
        c.total -= 1;
        if let Some(ip) = self.client {
            if let Some(n) = c.per_client.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_client.remove(&ip);
                }
            }
        }
    }
}

impl ConnectionCounts {
    /// Admit a connection from `client`, or say which limit it would break.
    pub fn admit(
        self: &Arc<Self>,
        client: Option<IpAddr>,
        limits: &ConnectionLimits,
    ) -> Result<Admitted, Refusal> {
        let mut c = crate::util::lock(&self.inner);
        if c.total >= limits.max_connections {
            return Err(Refusal::TooManyConnections {
                per_client: false,
                limit: limits.max_connections,
            });
        }
        if let Some(ip) = client {
            let n = c.per_client.entry(ip).or_insert(0);
            if *n >= limits.max_connections_per_client {
                return Err(Refusal::TooManyConnections {
                    per_client: true,
                    limit: limits.max_connections_per_client,
                });
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Admitted {
            counts: self.clone(),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        crate::util::lock(&self.inner).total
    }
}

/// The proxy application behind connection limits and deadlines.
pub struct ConnectionGuard<A> {
    inner: Arc<A>,
    state: Arc<GatewayState>,
    counts: Arc<ConnectionCounts>,
    timeouts: TimeoutCounters,
}

/// The `portcullis_connections_timed_out_total` series, resolved once.
#[derive(Clone)]
struct TimeoutCounters {
    headers: IntCounter,
    idle: IntCounter,
}

impl<A> ConnectionGuard<A> {
    /// Guard `inner` with the limits of the configuration in force at each accept.
    pub fn new(inner: A, state: Arc<GatewayState>) -> ConnectionGuard<A> {
        let vec = &state.metrics.connections_timed_out;
        let timeouts = TimeoutCounters {
            headers: vec.with_label_values(&["headers"]),
            idle: vec.with_label_values(&["idle"]),
        };
        ConnectionGuard {
            inner: Arc::new(inner),
            state,
            counts: Arc::new(ConnectionCounts::default()),
            timeouts,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionGuard<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A reload applies to connections accepted after it.
        let limits = self.state.snapshot.load().settings.connections;
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let metrics = &self.state.metrics;
        let admitted = match self.counts.admit(client, &limits) {
            Ok(a) => a,
            Err(refusal) => {
                let label = match refusal {
                    Refusal::TooManyConnections {
                        per_client: true, ..
                    } => "per_client",
                    _ => "total",
                };
                metrics
                    .connections_refused
                    .with_label_values(&[label])
                    .inc();
                // Counted in the metric; a log line per refused connection would let a flood
                // flood the log too.
                tracing::debug!(client = ?client, limit = label, "connection refused: too many open connections");
                refuse_connection(&mut stream, &refusal).await;
                return None;
            }
        };
        metrics.connections_open.inc();
        let mut next: Stream = Box::new(Deadlines::new(stream, &limits, self.timeouts.clone()));
        // pingora's service loop would hand a kept-alive connection back to `process_new`;
        // looping here keeps one admission (and one deadline wrapper) per connection.
        let outcome = loop {
            match self.inner.process_new(next, shutdown).await {
                Some(s) => next = s,
                None => break None,
            }
        };
        metrics.connections_open.dec();
        drop(admitted);
        outcome
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Answer a connection over a limit with the JSON refusal, then close it. Bounded in time so a
/// client that never reads cannot keep the refusal itself open.
async fn refuse_connection(stream: &mut Stream, refusal: &Refusal) {
    let out = refusal.render("", None);
    let head = format!(
        "HTTP/1.1 {} Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nretry-after: {}\r\nconnection: close\r\n\r\n",
        out.status,
        out.body.len(),
        out.retry_after.unwrap_or(1),
    );
    let answer = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&out.body).await?;
        stream.flush().await?;
        // Read what the client already sent, so closing does not reset the connection before
        // it has read the answer.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Where a connection is in its request cycle, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request (after accept, or after a response began).
    /// `since` is set when the first read found nothing to read.
    Idle { since: Option<Instant> },
    /// Some header bytes arrived at `since`; `end` tracks the blank line that ends them.
    Headers { since: Instant, end: HeaderEnd },
    /// The headers are complete: the body, the upstream and the response take their own
    /// timeouts (pingora's per-read timeout, the upstream's read timeout, approvals).
    Request,
}

/// Progress through the blank line that ends a header block: `\n` then an optional `\r` then
/// `\n` (parsers accept bare `\n` line ends, so `\r` is optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderEnd {
    /// Nothing but line breaks so far: leading empty lines before a request line are skipped
    /// by parsers, so they must not count as the end of the headers.
    Leading,
    /// Inside a line.
    Text,
    /// Just after a `\n`.
    LineEnd,
    /// After `\n\r`.
    LineEndCr,
}

impl HeaderEnd {
    /// Feed bytes; the offset just past the end of the headers if it is in `bytes`.
    ///
    /// Inside a line it jumps to the next `\n` with `memchr` rather than stepping through the
    /// bytes: a request's headers are mostly one long bearer token.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match *self {
                HeaderEnd::Leading if b == b'\r' || b == b'\n' => i += 1,
                HeaderEnd::LineEnd | HeaderEnd::LineEndCr if b == b'\n' => return Some(i + 1),
                HeaderEnd::LineEnd if b == b'\r' => {
                    *self = HeaderEnd::LineEndCr;
                    i += 1;
                }
                HeaderEnd::Leading | HeaderEnd::LineEnd | HeaderEnd::LineEndCr => {
                    *self = HeaderEnd::Text
                }
                HeaderEnd::Text => match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        *self = HeaderEnd::LineEnd;
                        i += at + 1;
                    }
                    None => return None,
                },
            }
        }
        None
    }
}

/// A downstream stream with a header deadline and an idle timeout.
struct Deadlines {
    inner: Stream,
    header_timeout: Duration,
    /// `None`: pingora's own keep-alive timeout applies (the configured one is not shorter).
    idle_timeout: Option<Duration>,
    phase: Phase,
    timer: Option<Pin<Box<Sleep>>>,
    counters: TimeoutCounters,
}

impl std::fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("phase", &self.phase)
            .field("inner", &self.inner)
            .finish()
    }
}

impl Deadlines {
    /// Wrap `inner` with the deadlines of `limits`.
    fn new(inner: Stream, limits: &ConnectionLimits, counters: TimeoutCounters) -> Deadlines {
        Deadlines {
            inner,
            header_timeout: limits.request_header_timeout,
            idle_timeout: (limits.keepalive_timeout < PINGORA_KEEPALIVE)
                .then_some(limits.keepalive_timeout),
            phase: Phase::Idle { since: None },
            timer: None,
            counters,
        }
    }

    /// The deadline in force now, if any.
    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since: Some(t) } => self.idle_timeout.map(|d| t + d),
            Phase::Headers { since, .. } => Some(since + self.header_timeout),
            Phase::Idle { since: None } | Phase::Request => None,
        }
    }

    /// Account for `bytes` just read.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let (since, mut end) = match self.phase {
            Phase::Request => return,
            Phase::Idle { .. } => (None, HeaderEnd::Leading),
            Phase::Headers { since, end } => (Some(since), end),
        };
        self.phase = match end.feed(bytes) {
            Some(_) => Phase::Request,
            // The clock is read only for headers that did not arrive in one read.
            None => Phase::Headers {
                since: since.unwrap_or_else(Instant::now),
                end,
            },
        };
    }
}

impl AsyncRead for Deadlines {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                this.saw(&filled[before..]);
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        if let Phase::Idle { since: None } = this.phase {
            if this.idle_timeout.is_some() {
                this.phase = Phase::Idle {
                    since: Some(Instant::now()),
                };
            }
        }
        let Some(deadline) = this.deadline() else {
            return Poll::Pending;
        };
        let timer = match &mut this.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match this.phase {
            // Idle too long: end of stream, which pingora takes as a client closing a
            // kept-alive connection.
            Phase::Idle { .. } => {
                this.counters.idle.inc();
                tracing::debug!("idle agent connection closed after the keep-alive timeout");
                Poll::Ready(Ok(()))
            }
            _ => {
                this.counters.headers.inc();
                tracing::debug!(timeout = ?this.header_timeout, "agent connection closed: request headers not complete in time");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request headers not complete before the header deadline",
                )))
            }
        }
    }
}

impl AsyncWrite for Deadlines {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // A response (not an interim 1xx) has begun: the next bytes read start a new request.
        // Until then the request's phase stands, so an upload after `100 Continue` is not
        // taken for headers.
        if self.phase == Phase::Request
            && !(buf.starts_with(b"HTTP/1.1 1") || buf.starts_with(b"HTTP/1.0 1"))
        {
            self.phase = Phase::Idle { since: None };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.phase == Phase::Request
            && !first.is_some_and(|b| b.starts_with(b"HTTP/1.1 1") || b.starts_with(b"HTTP/1.0 1"))
        {
            self.phase = Phase::Idle { since: None };
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Deadlines {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for Deadlines {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Deadlines {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Deadlines {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Deadlines {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Deadlines {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Deadlines {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_headers_is_found_across_reads_and_line_styles() {
        // (the reads, in order; where the headers end: (read index, offset past the end))
        type Case<'a> = (&'a [&'a [u8]], Option<(usize, usize)>);
        let cases: &[Case] = &[
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], Some((0, 27))),
            (&[b"GET / HTTP/1.1\nHost: a\n\nbody"], Some((0, 24))),
            (
                &[b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r", b"\n"],
                Some((2, 1)),
            ),
            (
                &[b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r\nxyz"],
                Some((1, 3)),
            ),
            // Leading empty lines are not the end of anything.
            (&[b"\r\n\r\n\n\n", b"GET / HTTP/1.1\r\n"], None),
            (&[b"GET / HTTP/1.1\r\nHost: a\r\n"], None),
        ];
        for (chunks, want) in cases {
            let mut end = HeaderEnd::Leading;
            let got = chunks
                .iter()
                .enumerate()
                .find_map(|(i, c)| end.feed(c).map(|at| (i, at)));
            assert_eq!(got, *want, "{chunks:?}");
        }
    }

    #[test]
    fn admission_counts_per_client_and_in_all_and_gives_places_back() {
        let limits = ConnectionLimits {
            max_connections: 3,
            max_connections_per_client: 2,
            ..ConnectionLimits::default()
        };
        let counts = Arc::new(ConnectionCounts::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = counts.admit(Some(a), &limits).unwrap();
        let _a2 = counts.admit(Some(a), &limits).unwrap();
        assert!(matches!(
            counts.admit(Some(a), &limits),
            Err(Refusal::TooManyConnections {
                per_client: true,
                limit: 2
            })
        ));
        let _b1 = counts.admit(Some(b), &limits).unwrap();
        assert!(matches!(
            counts.admit(Some(b), &limits),
            Err(Refusal::TooManyConnections {
                per_client: false,
                limit: 3
            })
        ));
        drop(a1);
        assert_eq!(counts.open(), 2);
        let _a3 = counts.admit(Some(a), &limits).unwrap();
        assert_eq!(counts.open(), 3);
    }

    /// The byte-at-a-time reading of the same rule, to check the `memchr` version against.
    fn header_end_reference(bytes: &[u8]) -> Option<usize> {
        let mut seen_text = false;
        let mut newlines = 0; // consecutive line ends, ignoring one `\r` between them
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'\n' if seen_text => {
                    newlines += 1;
                    if newlines == 2 {
                        return Some(i + 1);
                    }
                }
                b'\r' if !seen_text || newlines == 1 && bytes[i - 1] == b'\n' => {}
                b'\r' | b'\n' => newlines = 0,
                _ => {
                    seen_text = true;
                    newlines = 0;
                }
            }
        }
        None
    }

    proptest::proptest! {
        #[test]
        fn the_fast_scan_finds_the_same_end_as_a_byte_by_byte_one(
            bytes in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\r', b'\n']), 0..40),
            cuts in proptest::collection::vec(0usize..40, 0..4),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut end = HeaderEnd::Leading;
            let mut start = 0;
            let mut found = None;
            for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
                if let Some(at) = end.feed(&bytes[start..c]) {
                    found = Some(start + at);
                    break;
                }
                start = c;
            }
            proptest::prop_assert_eq!(found, header_end_reference(&bytes), "{:?}", bytes);
        }
    }
}
