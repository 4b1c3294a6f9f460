//! `access_log.syslog`: every access-log line as an RFC 5424 message to a syslog server, over
//! UDP, TCP or TLS (RFC 5425).
//!
//! The access log's writer thread hands each batch it drained to a [`SyslogSink`] (this output's
//! [`LogSink`]), so a request pays no more than for a file: it appends its JSON line to the
//! pending buffer as before, and the header, the framing and the sending happen here, off the
//! request path.
//!
//! A message is `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`: PRI is the facility and
//! a severity (6 info; 4 warning for a refused call), TIMESTAMP the time of sending (UTC,
//! microseconds), MSGID the `event` of an audit line or `call`, no structured data, and MSG the
//! JSON line exactly as a file would get it. MSG has no BOM: it is UTF-8 JSON, and receivers
//! that parse MSG as JSON would trip on one.
//!
//! **TCP and TLS deliver at least once.** Messages are framed by octet counting (RFC 6587, which
//! RFC 5425 requires for TLS). Syslog has no acknowledgements, and a successful `write` only
//! means the kernel took the bytes: a server that closes or dies loses what was in flight or
//! still unread. So the sink (1) checks, before every batch and on every idle tick, whether the
//! server closed or reset the connection (a syslog server never sends anything, so anything
//! readable means the end); (2) keeps what it wrote on a connection until that connection has
//! stayed up [`CONFIRM_AFTER`] longer; (3) when a connection fails, reconnects with backoff and
//! sends the kept messages again ahead of the new ones. A message can therefore arrive twice; it
//! is never dropped. While the server is unreachable the writer thread keeps its batch, the
//! pending buffer fills, and logging calls wait: the backpressure of a stalled disk. At
//! shutdown, once the server has been unreachable for [`SPILL_AFTER`], the lines not sent go to
//! stderr, each prefixed with [`SPILL_PREFIX`], and an error is logged.
//!
//! **UDP is best effort**: one datagram per message, no framing, no retries, and the network
//! may drop datagrams. A failed send counts in the write-error metric; a message too long for
//! one datagram is cut to fit and counted.

use super::access_log::LogSink;
use super::Metrics;
use memchr::memmem;
use prometheus::IntGauge;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest UDP payload over IPv4 (65535 minus the IP and UDP headers): a message is cut to this.
pub const MAX_UDP_MESSAGE: usize = 65_507;
/// First wait before reconnecting; doubles on each failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest wait between attempts once the log is closing: the spill deadline is near.
const BACKOFF_MAX_CLOSING: Duration = Duration::from_secs(1);
/// Longest wait for a connection (and a TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one batch to be taken by the kernel: a server that reads nothing for this
/// long is treated as gone, and the batch goes again on a new connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection must stay up after a message was written before the message counts as
/// delivered and is no longer kept for resending. A server that closes with unread data resets
/// the connection at once, and the reset reaches us within a round trip; a second covers any
/// sane network.
pub const CONFIRM_AFTER: Duration = Duration::from_secs(1);
/// At shutdown, how long an unreachable server is waited for before the rest goes to stderr.
pub const SPILL_AFTER: Duration = Duration::from_secs(10);
/// How long a clean close waits for the server to close in turn.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The prefix of each access-log line written to stderr at shutdown because the syslog server
/// could not be reached.
pub const SPILL_PREFIX: &str = "portcullis-unsent-access-log: ";
/// Severity of a line (RFC 5424 §6.2.1): informational.
const SEVERITY_INFO: u8 = 6;
/// Severity of a refusal: warning.
const SEVERITY_WARNING: u8 = 4;
/// How far into a line MSGID is looked for: an audit line begins `{"time":"…","event":"NAME"`,
/// and in ECS shape `{"@timestamp":"…","ecs":{…},"event":{"action":"NAME"`.
const MSGID_WINDOW: usize = 160;
/// RFC 5424 §6.2: longest HOSTNAME, APP-NAME, PROCID and MSGID.
const MAX_HOSTNAME: usize = 255;
/// See [`MAX_HOSTNAME`].
pub const MAX_APP_NAME: usize = 48;
/// See [`MAX_HOSTNAME`].
const MAX_PROCID: usize = 128;
/// See [`MAX_HOSTNAME`].
const MAX_MSGID: usize = 32;
/// Longest `hostname` setting (RFC 5424 HOSTNAME).
pub const MAX_HOSTNAME_SETTING: usize = MAX_HOSTNAME;

/// How the messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogTransport {
    /// One datagram per message (RFC 5426): best effort.
    Udp,
    /// Octet-counted frames (RFC 6587) over TCP.
    Tcp,
    /// Octet-counted frames over TLS (RFC 5425).
    Tls,
}

impl SyslogTransport {
    /// Every transport, in the order the names are listed in errors.
    pub const ALL: [SyslogTransport; 3] = [Self::Udp, Self::Tcp, Self::Tls];

    /// The transport `access_log.syslog.transport` calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Its name in the configuration (also the `transport` label of the metrics).
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// RFC 5424 §6.2.1 facilities, each at the index of its code. 12 to 15 have no names everyone
/// agrees on; these follow the RFC's descriptions (NTP, log audit, log alert, clock).
pub const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// The code of the facility called `name`.
pub fn facility_code(name: &str) -> Option<u8> {
    FACILITIES
        .iter()
        .position(|f| *f == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// `access_log.syslog`, compiled: where and how the access log is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    /// `host:port` as written (for messages).
    pub address: String,
    /// The host part of the address, without brackets: resolved at every connect.
    pub host: String,
    /// The port part.
    pub port: u16,
    /// `udp`, `tcp` or `tls`.
    pub transport: SyslogTransport,
    /// Facility code (0-23).
    pub facility: u8,
    /// APP-NAME of every message.
    pub app_name: String,
    /// HOSTNAME of every message (`None`: the machine's host name).
    pub hostname: Option<String>,
    /// DER certificates of `ca_file`, trusted besides the Mozilla roots (TLS).
    pub ca_certs: Vec<Vec<u8>>,
    /// The name the server's certificate must carry (`None`: the host of the address).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for SyslogTarget {
    /// The CA certificates by count: their bytes say nothing in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogTarget")
            .field("address", &self.address)
            .field("transport", &self.transport)
            .field("facility", &self.facility)
            .field("app_name", &self.app_name)
            .field("hostname", &self.hostname)
            .field("ca_certs", &self.ca_certs.len())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Split `host:port` (`[v6]:port` for an IPv6 address) into its parts.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let bad = || {
        format!(
            "`{address}` is not a `host:port` address (e.g. `siem.example.com:6514`, `10.0.0.5:514`, `[2001:db8::5]:514`)"
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h
            .strip_suffix(']')
            .filter(|h| h.parse::<Ipv6Addr>().is_ok())
            .ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(bad());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(bad)?;
    Ok((host.to_string(), port))
}

/// Whether `value` can be an RFC 5424 header field as it is: 1 to `max` printable US-ASCII
/// characters (no spaces).
pub fn is_header_field(value: &str, max: usize) -> bool {
    !value.is_empty() && value.len() <= max && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Append `value` as an RFC 5424 header field: anything but printable US-ASCII becomes `_`, at
/// most `max` bytes are kept, and an empty value is the NILVALUE `-`.
fn push_field(out: &mut Vec<u8>, value: &[u8], max: usize) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    out.extend(
        value
            .iter()
            .take(max)
            .map(|&b| if b.is_ascii_graphic() { b } else { b'_' }),
    );
}

/// TIMESTAMP: RFC 3339 in UTC with microseconds.
fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// This machine's host name (`-` if it has none we can read).
fn machine_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`, which outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "-".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Reads severity and MSGID off a line without parsing it: a few substring searches, most of
/// them in the first bytes.
struct Classifier {
    ecs: bool,
    /// Native lines: a refused call.
    deny: memmem::Finder<'static>,
    /// ECS lines: a refused or failed call, or a refused audit action.
    failure: memmem::Finder<'static>,
    /// Native audit lines: `"event":"NAME"`.
    event: memmem::Finder<'static>,
    /// ECS lines: `"event":{"action":"NAME"`.
    action: memmem::Finder<'static>,
}

impl Classifier {
    fn new(ecs: bool) -> Classifier {
        Classifier {
            ecs,
            deny: memmem::Finder::new(br#""decision":"deny""#),
            failure: memmem::Finder::new(br#""outcome":"failure""#),
            event: memmem::Finder::new(br#""event":""#),
            action: memmem::Finder::new(br#""event":{"action":""#),
        }
    }

    /// Warning for a refusal, informational otherwise.
    fn severity(&self, line: &[u8]) -> u8 {
        let refusal = if self.ecs { &self.failure } else { &self.deny };
        if refusal.find(line).is_some() {
            SEVERITY_WARNING
        } else {
            SEVERITY_INFO
        }
    }

    /// The `event` of an audit line (ECS: its `event.action`), else `call`.
    fn msgid<'l>(&self, line: &'l [u8]) -> &'l [u8] {
        const CALL: &[u8] = b"call";
        let finder = if self.ecs { &self.action } else { &self.event };
        let Some(at) = finder.find(&line[..line.len().min(MSGID_WINDOW)]) else {
            return CALL;
        };
        let rest = &line[at + finder.needle().len()..];
        let name = &rest[..memchr::memchr(b'"', rest).unwrap_or(rest.len())];
        // ECS names a call line's action `call-<decision>`.
        if name.is_empty() || (self.ecs && name.starts_with(b"call-")) {
            CALL
        } else {
            name
        }
    }
}

/// Append the header of a message, up to and including the space before MSG.
fn push_header(
    out: &mut Vec<u8>,
    facility: u8,
    severity: u8,
    timestamp: &str,
    middle: &[u8],
    msgid: &[u8],
) {
    let pri = u16::from(facility) * 8 + u16::from(severity);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "<{pri}>1 {timestamp} ");
    out.extend_from_slice(middle);
    push_field(out, msgid, MAX_MSGID);
    out.extend_from_slice(b" - ");
}

/// Append one octet-counted frame (RFC 6587 §3.4.1): `LEN SP HEADER MSG`, LEN in bytes.
fn push_frame(out: &mut Vec<u8>, header: &[u8], msg: &[u8]) {
    let _ = write!(out, "{} ", header.len() + msg.len());
    out.extend_from_slice(header);
    out.extend_from_slice(msg);
}

/// The message of the next octet-counted frame of `rest`, which moves past it.
fn next_frame<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let sp = memchr::memchr(b' ', rest)?;
    let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let message = rest.get(sp + 1..sp + 1 + len)?;
    *rest = &rest[sp + 1 + len..];
    Some(message)
}

/// MSG of a message: what follows its seven header fields (PRI and VERSION, TIMESTAMP,
/// HOSTNAME, APP-NAME, PROCID, MSGID, STRUCTURED-DATA), none of which holds a space.
fn msg_part(message: &[u8]) -> &[u8] {
    let mut rest = message;
    for _ in 0..7 {
        match memchr::memchr(b' ', rest) {
            Some(sp) => rest = &rest[sp + 1..],
            None => return message,
        }
    }
    rest
}

/// Reads what has already arrived on a socket, never waiting (`MSG_DONTWAIT`): the socket stays
/// blocking for writes.
struct DontWait<'a>(&'a TcpStream);

impl Read for DontWait<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call, and the
        // descriptor belongs to the open socket `self.0` borrows.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n.unsigned_abs())
        }
    }
}

/// A connection to the server.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Tcp(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    /// Write all of `bytes` (and, over TLS, everything rustls holds).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(bytes),
            Conn::Tls(t) => {
                t.write_all(bytes)?;
                t.flush()
            }
        }
    }

    /// Whether the server has closed or reset the connection. Never waits. A syslog server
    /// sends nothing (over TLS, only handshake messages such as session tickets, which rustls
    /// takes here), so end of stream or an error is the only news there can be.
    fn gone(&mut self) -> bool {
        let mut buf = [0u8; 2048];
        match self {
            Conn::Tcp(s) => loop {
                match DontWait(s).read(&mut buf) {
                    Ok(0) => return true,
                    // Not expected from a syslog server: dropped.
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return true,
                }
            },
            Conn::Tls(t) => loop {
                match t.conn.read_tls(&mut DontWait(&t.sock)) {
                    Ok(0) => return true,
                    Ok(_) => match t.conn.process_new_packets() {
                        Err(_) => return true,
                        Ok(state) if state.peer_has_closed() => return true,
                        Ok(state) => {
                            // Application data is not expected either: read and dropped so that
                            // it cannot fill rustls's buffer.
                            let n = state.plaintext_bytes_to_read() as u64;
                            if n > 0 {
                                let _ = io::copy(&mut t.conn.reader().take(n), &mut io::sink());
                            }
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return true,
                }
            },
        }
    }

    /// Close cleanly: say we are done (TLS close_notify, then TCP FIN) and wait up to `wait`
    /// for the server to close in turn. A server that closes has read everything, since closing
    /// with unread data would reset the connection instead. `Err`: the connection was reset,
    /// and what was sent lately may be lost. A server still silent after `wait` is taken to
    /// have what it was sent: the connection stayed up.
    fn close(mut self, wait: Duration) -> io::Result<()> {
        if let Conn::Tls(t) = &mut self {
            t.conn.send_close_notify();
            while t.conn.wants_write() {
                t.conn.write_tls(&mut t.sock)?;
            }
        }
        let sock = self.socket();
        sock.shutdown(Shutdown::Write)?;
        sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let deadline = Instant::now() + wait;
        let mut reader = sock;
        let mut buf = [0u8; 4096];
        loop {
            match (&mut reader).read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) if Instant::now() >= deadline => return Ok(()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The open connection and what is known about it.
struct Connected {
    conn: Conn,
    since: Instant,
    /// The socket's current write timeout (changed only when it must be).
    write_timeout: Duration,
}

/// A run of failures, for the log lines at its start and end.
struct Outage {
    since: Instant,
    failures: u64,
}

/// Connect over TCP to the first address of `host` that answers.
fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("`{host}` resolves to no address"),
    );
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A UDP socket connected to the first address of `host`.
fn udp_socket(host: &str, port: u16) -> io::Result<UdpSocket> {
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("`{host}` resolves to no address"),
        )
    })?;
    let local = if addr.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(addr)?;
    Ok(sock)
}

/// The TLS client: the Mozilla roots plus `ca_file`'s certificates.
fn client_config(extra: &[Vec<u8>]) -> io::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(io::Error::other)?;
    }
    // An explicit provider: ring and aws-lc-rs are both compiled in, so rustls has no process
    // default to pick; ring is the one pingora uses.
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The syslog output of the access log: formats, frames and sends the lines of each batch. See
/// the module documentation for what is guaranteed.
pub struct SyslogSink {
    target: SyslogTarget,
    metrics: Arc<Metrics>,
    /// `portcullis_access_log_syslog_connected{transport}`.
    connected: IntGauge,
    /// `HOSTNAME SP APP-NAME SP PROCID SP`, the same in every message.
    middle: Vec<u8>,
    classify: Classifier,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    conn: Option<Connected>,
    udp: Option<UdpSocket>,
    /// One message's header (UDP: the whole datagram).
    head: Vec<u8>,
    /// Frames not written yet: those of a failed connection first, then new ones.
    queue: Vec<u8>,
    /// Frames written on the open connection and not confirmed yet (see [`CONFIRM_AFTER`]), one
    /// entry per write, with its time.
    sent: VecDeque<(Instant, Vec<u8>)>,
    /// Emptied buffers of confirmed writes, reused for the queue.
    spare: Vec<Vec<u8>>,
    backoff: Duration,
    retry_at: Instant,
    ever_connected: bool,
    outage: Option<Outage>,
    /// When the sink first saw the log closing.
    closing_since: Option<Instant>,
    spill_after: Duration,
    /// Where unsendable lines go at shutdown (stderr).
    spill: Box<dyn Write + Send>,
    spilled: bool,
}

impl SyslogSink {
    /// A sink for `target`; `ecs` when lines are in ECS shape (severity and MSGID are read from
    /// other fields). Connects at the first batch or idle tick, not here.
    pub fn new(target: &SyslogTarget, metrics: Arc<Metrics>, ecs: bool) -> io::Result<Self> {
        let hostname = target.hostname.clone().unwrap_or_else(machine_hostname);
        let mut middle = Vec::new();
        push_field(&mut middle, hostname.as_bytes(), MAX_HOSTNAME);
        middle.push(b' ');
        push_field(&mut middle, target.app_name.as_bytes(), MAX_APP_NAME);
        middle.push(b' ');
        push_field(
            &mut middle,
            std::process::id().to_string().as_bytes(),
            MAX_PROCID,
        );
        middle.push(b' ');
        let tls = match target.transport {
            SyslogTransport::Tls => {
                let name = target
                    .server_name
                    .clone()
                    .unwrap_or_else(|| target.host.clone());
                let name = ServerName::try_from(name).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("server name: {e}"))
                })?;
                Some((Arc::new(client_config(&target.ca_certs)?), name))
            }
            _ => None,
        };
        let connected = metrics
            .access_log_syslog_connected
            .with_label_values(&[target.transport.name()]);
        connected.set(0);
        Ok(SyslogSink {
            target: target.clone(),
            metrics,
            connected,
            middle,
            classify: Classifier::new(ecs),
            tls,
            conn: None,
            udp: None,
            head: Vec::with_capacity(256),
            queue: Vec::with_capacity(64 * 1024),
            sent: VecDeque::new(),
            spare: Vec::new(),
            backoff: BACKOFF_MIN,
            retry_at: Instant::now(),
            ever_connected: false,
            outage: None,
            closing_since: None,
            spill_after: SPILL_AFTER,
            spill: Box::new(io::stderr()),
            spilled: false,
        })
    }

    /// Put the header of `line`'s message in `self.head`.
    fn header(&mut self, line: &[u8], timestamp: &str) {
        self.head.clear();
        push_header(
            &mut self.head,
            self.target.facility,
            self.classify.severity(line),
            timestamp,
            &self.middle,
            self.classify.msgid(line),
        );
    }

    /// Whether the log is closing and the server has had its [`SPILL_AFTER`].
    fn spill_due(&mut self, closing: &AtomicBool) -> bool {
        if !closing.load(Ordering::Relaxed) {
            return false;
        }
        let since = *self.closing_since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.spill_after
    }

    /// `normal`, or less once closing: no wait may outlast the spill deadline by much.
    fn timeout(&self, normal: Duration) -> Duration {
        match self.closing_since {
            Some(since) => normal
                .min(self.spill_after.saturating_sub(since.elapsed()))
                .max(Duration::from_millis(50)),
            None => normal,
        }
    }

    /// Send everything queued, reconnecting for as long as it takes; once closing, for at most
    /// [`SPILL_AFTER`], after which the rest is spilled.
    fn deliver(&mut self, closing: &AtomicBool) {
        while !self.queue.is_empty() {
            if self.spilled || self.spill_due(closing) {
                self.spill_queue();
                return;
            }
            let now = Instant::now();
            if now < self.retry_at {
                // Short naps, so that a close is noticed soon.
                std::thread::sleep((self.retry_at - now).min(Duration::from_millis(100)));
                continue;
            }
            if let Err(e) = self.attempt() {
                self.failed(&e);
            }
        }
    }

    /// If connected: `Err` if the server has closed the connection; else it is up, which
    /// confirms what was sent on it long enough ago.
    fn check(&mut self) -> io::Result<()> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(());
        };
        if c.conn.gone() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the syslog server closed the connection",
            ));
        }
        let now = Instant::now();
        if now.duration_since(c.since) >= CONFIRM_AFTER {
            // The connection has lasted: a server that drops each one must not be hammered, so
            // the backoff only starts over here, not at connect.
            self.backoff = BACKOFF_MIN;
        }
        while let Some((at, _)) = self.sent.front() {
            if now.duration_since(*at) < CONFIRM_AFTER {
                break;
            }
            if let Some((_, chunk)) = self.sent.pop_front() {
                self.recycle(chunk);
            }
        }
        Ok(())
    }

    /// Keep a few emptied buffers for the queue.
    fn recycle(&mut self, mut chunk: Vec<u8>) {
        if self.spare.len() < 4 && chunk.capacity() <= 4 << 20 {
            chunk.clear();
            self.spare.push(chunk);
        }
    }

    /// One try: check the connection, connect if there is none, write the queue.
    fn attempt(&mut self) -> io::Result<()> {
        self.check()?;
        if self.conn.is_none() {
            self.connect()?;
        }
        if self.queue.is_empty() {
            return Ok(());
        }
        let timeout = self.timeout(WRITE_TIMEOUT);
        let c = self.conn.as_mut().expect("connected above");
        if c.write_timeout != timeout {
            c.conn.socket().set_write_timeout(Some(timeout))?;
            c.write_timeout = timeout;
        }
        c.conn.send(&self.queue)?;
        let next = self.spare.pop().unwrap_or_default();
        let written = std::mem::replace(&mut self.queue, next);
        self.sent.push_back((Instant::now(), written));
        Ok(())
    }

    /// Open a connection (and complete the TLS handshake).
    fn connect(&mut self) -> io::Result<()> {
        let timeout = self.timeout(CONNECT_TIMEOUT);
        let sock = connect_tcp(&self.target.host, self.target.port, timeout)?;
        sock.set_nodelay(true)?;
        // Bounds the handshake's reads; later reads never wait (see `Conn::gone`).
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        let conn = match &self.tls {
            None => Conn::Tcp(sock),
            Some((config, name)) => {
                let client = ClientConnection::new(config.clone(), name.clone())
                    .map_err(io::Error::other)?;
                let mut tls = StreamOwned::new(client, sock);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock)?;
                }
                Conn::Tls(Box::new(tls))
            }
        };
        self.conn = Some(Connected {
            conn,
            since: Instant::now(),
            write_timeout: timeout,
        });
        self.connected.set(1);
        if self.ever_connected {
            self.metrics.access_log_syslog_reconnects.inc();
        }
        self.ever_connected = true;
        if let Some(o) = self.outage.take() {
            tracing::info!(
                address = %self.target.address,
                transport = self.target.transport.name(),
                down_for = ?o.since.elapsed(),
                failures = o.failures,
                resending_bytes = self.queue.len(),
                "syslog access log: connected again"
            );
        }
        Ok(())
    }

    /// A connection could not be made, or failed: count it, keep what it may have lost for the
    /// next one, and wait before trying again.
    fn failed(&mut self, e: &io::Error) {
        self.metrics.access_log_errors.inc();
        self.disconnect();
        let now = Instant::now();
        let cap = if self.closing_since.is_some() {
            BACKOFF_MAX_CLOSING
        } else {
            BACKOFF_MAX
        };
        self.retry_at = now + self.backoff.min(cap);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        match &mut self.outage {
            None => {
                tracing::warn!(
                    address = %self.target.address,
                    transport = self.target.transport.name(),
                    error = %e,
                    "syslog access log: cannot send; keeping the lines and retrying"
                );
                self.outage = Some(Outage {
                    since: now,
                    failures: 1,
                });
            }
            Some(o) => {
                o.failures += 1;
                tracing::debug!(address = %self.target.address, error = %e, failures = o.failures, "syslog access log: still cannot send");
            }
        }
    }

    /// Drop the connection; what was sent on it unconfirmed goes back ahead of the queue.
    fn disconnect(&mut self) {
        if self.conn.take().is_some() {
            self.connected.set(0);
        }
        if self.sent.is_empty() {
            return;
        }
        let total: usize = self.sent.iter().map(|(_, c)| c.len()).sum();
        let mut again = Vec::with_capacity(total + self.queue.len());
        while let Some((_, chunk)) = self.sent.pop_front() {
            again.extend_from_slice(&chunk);
            self.recycle(chunk);
        }
        again.extend_from_slice(&self.queue);
        self.queue = again;
    }

    /// Write the MSG of every queued frame to the spill output (stderr), prefixed, and give up
    /// on the server.
    fn spill_queue(&mut self) {
        let mut out = Vec::with_capacity(self.queue.len());
        let mut lines = 0usize;
        let mut rest = &self.queue[..];
        while let Some(message) = next_frame(&mut rest) {
            out.extend_from_slice(SPILL_PREFIX.as_bytes());
            out.extend_from_slice(msg_part(message));
            out.push(b'\n');
            lines += 1;
        }
        let _ = self.spill.write_all(&out).and_then(|()| self.spill.flush());
        tracing::error!(
            address = %self.target.address,
            transport = self.target.transport.name(),
            lines,
            "syslog access log: server unreachable at shutdown for {:?}; the lines not sent are on stderr, each prefixed `{}`",
            self.spill_after,
            SPILL_PREFIX.trim_end(),
        );
        self.spilled = true;
        self.queue.clear();
    }

    /// UDP: send one message as one datagram, cut to fit; errors are counted, never retried.
    fn send_datagram(&mut self, line: &[u8], timestamp: &str) {
        self.header(line, timestamp);
        let room = MAX_UDP_MESSAGE.saturating_sub(self.head.len());
        let mut msg = line;
        if line.len() > room {
            let mut end = room;
            // Cut on a character boundary: MSG stays UTF-8.
            while end > 0 && (line[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            msg = &line[..end];
            self.metrics.access_log_syslog_truncated.inc();
            tracing::warn!(
                bytes = line.len(),
                kept = end,
                "syslog access log: line too long for one UDP datagram, cut (tcp or tls carry any length)"
            );
        }
        self.head.extend_from_slice(msg);
        if self.udp.is_none() {
            match udp_socket(&self.target.host, self.target.port) {
                Ok(s) => {
                    self.udp = Some(s);
                    self.connected.set(1);
                    if let Some(o) = self.outage.take() {
                        tracing::info!(address = %self.target.address, failures = o.failures, "syslog access log: sending again");
                    }
                }
                Err(e) => {
                    self.udp_failed(&e);
                    return;
                }
            }
        }
        let sent = match &self.udp {
            Some(sock) => sock.send(&self.head),
            None => return,
        };
        match sent {
            Ok(n) if n == self.head.len() => {}
            Ok(n) => self.udp_failed(&io::Error::other(format!(
                "sent {n} of {} bytes",
                self.head.len()
            ))),
            Err(e) => self.udp_failed(&e),
        }
    }

    /// UDP: a message was not sent. The socket is made again for the next one (the name may
    /// resolve elsewhere by then).
    fn udp_failed(&mut self, e: &io::Error) {
        self.metrics.access_log_errors.inc();
        self.udp = None;
        self.connected.set(0);
        match &mut self.outage {
            None => {
                tracing::warn!(address = %self.target.address, error = %e, "syslog access log: cannot send over UDP; lines are lost until it can (each one counted)");
                self.outage = Some(Outage {
                    since: Instant::now(),
                    failures: 1,
                });
            }
            Some(o) => o.failures += 1,
        }
    }
}

impl LogSink for SyslogSink {
    fn write_batch(&mut self, batch: &[u8], closing: &AtomicBool) -> io::Result<()> {
        // One time for the batch: it is sent now, and lines are at most 20 ms apart.
        let timestamp = timestamp(chrono::Utc::now());
        let lines = batch.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        if self.target.transport == SyslogTransport::Udp {
            for line in lines {
                self.send_datagram(line, &timestamp);
            }
            return Ok(());
        }
        for line in lines {
            self.header(line, &timestamp);
            push_frame(&mut self.queue, &self.head, line);
        }
        self.deliver(closing);
        // Failures were counted as they happened; the batch is sent (or spilled at shutdown).
        Ok(())
    }

    fn idle(&mut self) {
        if self.target.transport == SyslogTransport::Udp {
            // The socket is made before the first line, so that the gauge says from the start
            // whether the address resolves; after a failure, only lines retry.
            if self.udp.is_none() && self.outage.is_none() {
                match udp_socket(&self.target.host, self.target.port) {
                    Ok(s) => {
                        self.udp = Some(s);
                        self.connected.set(1);
                    }
                    Err(e) => self.udp_failed(&e),
                }
            }
            return;
        }
        if self.spilled {
            return;
        }
        // Notice a closed connection between batches, so that what it may have lost is sent
        // again soon, and reconnect so that the next batch need not wait for it.
        if let Err(e) = self.check() {
            self.failed(&e);
        }
        if (self.conn.is_none() || !self.queue.is_empty()) && Instant::now() >= self.retry_at {
            if let Err(e) = self.attempt() {
                self.failed(&e);
            }
        }
    }

    fn finish(&mut self, closing: &AtomicBool) {
        if self.target.transport == SyslogTransport::Udp {
            return;
        }
        self.closing_since.get_or_insert_with(Instant::now);
        loop {
            self.deliver(closing);
            let Some(c) = self.conn.take() else {
                return;
            };
            self.connected.set(0);
            match c.conn.close(self.timeout(CLOSE_WAIT)) {
                Ok(()) => {
                    self.sent.clear();
                    return;
                }
                // Reset while closing: what was sent lately goes again (or to stderr).
                Err(e) => self.failed(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Mutex;

    const NATIVE_ALLOW: &[u8] = br#"{"time":"2026-12-03T10:00:00.000Z","request_id":"r1","agent":"bot","decision":"allow","reason":null}"#;
    const NATIVE_DENY: &[u8] = br#"{"time":"2026-12-03T10:00:00.000Z","request_id":"r2","agent":"bot","decision":"deny","reason":"insufficient_scope"}"#;
    const NATIVE_AUDIT: &[u8] = br#"{"time":"2026-12-03T10:00:00.000Z","event":"config_reload","outcome":"refused","by":"ops"}"#;

    fn target(port: u16, transport: SyslogTransport) -> SyslogTarget {
        SyslogTarget {
            address: format!("127.0.0.1:{port}"),
            host: "127.0.0.1".into(),
            port,
            transport,
            facility: 16,
            app_name: "portcullis".into(),
            hostname: Some("gw-1".into()),
            ca_certs: Vec::new(),
            server_name: None,
        }
    }

    /// The whole message `line` becomes (header and MSG).
    fn message(c: &Classifier, facility: u8, line: &[u8]) -> String {
        let mut out = Vec::new();
        push_header(
            &mut out,
            facility,
            c.severity(line),
            "2026-12-03T10:00:00.123456Z",
            b"gw-1 portcullis 4242 ",
            c.msgid(line),
        );
        out.extend_from_slice(line);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn header_fields_in_rfc_5424_order() {
        let c = Classifier::new(false);
        assert_eq!(
            message(&c, 16, NATIVE_ALLOW),
            format!(
                "<134>1 2026-12-03T10:00:00.123456Z gw-1 portcullis 4242 call - {}",
                std::str::from_utf8(NATIVE_ALLOW).unwrap()
            )
        );
        assert!(message(&c, 16, NATIVE_AUDIT).starts_with(
            "<134>1 2026-12-03T10:00:00.123456Z gw-1 portcullis 4242 config_reload - {\"time\""
        ));
    }

    #[test]
    fn pri_is_facility_times_8_plus_severity() {
        let native = Classifier::new(false);
        assert_eq!(native.severity(NATIVE_ALLOW), 6);
        assert_eq!(native.severity(NATIVE_DENY), 4);
        assert_eq!(native.severity(NATIVE_AUDIT), 6);
        assert!(message(&native, 16, NATIVE_DENY).starts_with("<132>1 "));
        assert!(message(&native, 0, NATIVE_ALLOW).starts_with("<6>1 "));
        assert!(message(&native, 23, NATIVE_DENY).starts_with("<188>1 "));
        assert_eq!(facility_code("kern"), Some(0));
        assert_eq!(facility_code("local0"), Some(16));
        assert_eq!(facility_code("local7"), Some(23));
        assert_eq!(facility_code("audit"), Some(13));
        assert_eq!(facility_code("local8"), None);

        // ECS lines: `event.outcome: failure` is the refusal; the native copy of an allowed
        // line is not mistaken for one.
        let ecs = Classifier::new(true);
        let deny = super::super::ecs::convert(NATIVE_DENY);
        let allow = super::super::ecs::convert(NATIVE_ALLOW);
        assert_eq!(ecs.severity(&deny), 4);
        assert_eq!(ecs.severity(&allow), 6);
    }

    #[test]
    fn msgid_is_the_audit_event_or_call() {
        let native = Classifier::new(false);
        assert_eq!(native.msgid(NATIVE_AUDIT), b"config_reload");
        assert_eq!(native.msgid(NATIVE_ALLOW), b"call");
        assert_eq!(native.msgid(NATIVE_DENY), b"call");
        assert_eq!(native.msgid(b""), b"call");
        // Only the start of a line is looked at: a late `"event":"` is not an audit line's.
        let late = format!(
            r#"{{"time":"t","request_id":"{}","event":"x"}}"#,
            "r".repeat(200)
        );
        assert_eq!(native.msgid(late.as_bytes()), b"call");
        // An odd name is cut to 32 printable characters in the header.
        let long = br#"{"time":"2026-12-03T10:00:00.000Z","event":"a very long event name that goes past thirty-two"}"#;
        let m = message(&native, 16, long);
        assert!(
            m.contains(" 4242 a_very_long_event_name_that_goes - {"),
            "{m}"
        );

        let ecs = Classifier::new(true);
        let audit = super::super::ecs::convert(
            br#"{"time":"t","event":"agent_state","action":"pause","agent":"bot","by":"alice"}"#,
        );
        assert_eq!(ecs.msgid(&audit), b"agent_state");
        assert_eq!(ecs.msgid(&super::super::ecs::convert(NATIVE_DENY)), b"call");
    }

    #[test]
    fn header_fields_are_printable_ascii_and_bounded() {
        let mut out = Vec::new();
        push_field(&mut out, "gw 1\té".as_bytes(), 255);
        assert_eq!(out, b"gw_1___");
        out.clear();
        push_field(&mut out, b"", 48);
        assert_eq!(out, b"-");
        out.clear();
        push_field(&mut out, &[b'a'; 60], MAX_APP_NAME);
        assert_eq!(out.len(), 48);
        assert!(is_header_field("portcullis", MAX_APP_NAME));
        assert!(!is_header_field("port cullis", MAX_APP_NAME));
        assert!(!is_header_field("", MAX_APP_NAME));
        assert!(!is_header_field(&"a".repeat(49), MAX_APP_NAME));
        assert!(!is_header_field("gw-ü", MAX_HOSTNAME));
    }

    #[test]
    fn octet_counting_frames_count_bytes_and_round_trip() {
        let mut out = Vec::new();
        let msg = "{\"path\":\"/é\"}".as_bytes();
        push_frame(&mut out, b"<134>1 T H A 1 call - ", msg);
        push_frame(&mut out, b"<132>1 T H A 1 call - ", b"{}");
        let text = String::from_utf8(out.clone()).unwrap();
        // `é` is two bytes: LEN counts octets, not characters.
        assert!(
            text.starts_with(&format!("{} <134>1 ", 22 + msg.len())),
            "{text}"
        );
        let mut rest = &out[..];
        let first = next_frame(&mut rest).unwrap();
        assert_eq!(msg_part(first), msg);
        let second = next_frame(&mut rest).unwrap();
        assert_eq!(msg_part(second), b"{}");
        assert!(next_frame(&mut rest).is_none());
        assert!(rest.is_empty());
    }

    #[test]
    fn timestamps_have_microseconds_in_utc() {
        let t = chrono::DateTime::from_timestamp(1_795_000_000, 1_234_567).unwrap();
        assert_eq!(timestamp(t), "2026-11-18T11:06:40.001234Z");
    }

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(
            split_host_port("10.0.0.5:6514"),
            Ok(("10.0.0.5".into(), 6514))
        );
        assert_eq!(
            split_host_port("siem.example.com:514"),
            Ok(("siem.example.com".into(), 514))
        );
        assert_eq!(split_host_port("[::1]:514"), Ok(("::1".into(), 514)));
        for bad in [
            "siem",
            "siem:",
            ":514",
            "siem:0",
            "siem:70000",
            "::1:514",
            "[nope]:514",
            "a b:514",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
        assert_eq!(
            SyslogTransport::from_name("tls"),
            Some(SyslogTransport::Tls)
        );
        assert_eq!(SyslogTransport::from_name("TCP"), None);
    }

    /// A `Write` whose bytes a test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Every MSG in octet-counted `bytes`.
    fn messages(bytes: &[u8]) -> Vec<String> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Some(m) = next_frame(&mut rest) {
            out.push(String::from_utf8(msg_part(m).to_vec()).unwrap());
        }
        out
    }

    fn batch(from: usize, to: usize) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("{{\"time\":\"t\",\"request_id\":\"r{i}\"}}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_closed_connection_is_noticed_and_what_it_may_have_lost_is_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let metrics = Arc::new(Metrics::new());
        let mut sink =
            SyslogSink::new(&target(port, SyslogTransport::Tcp), metrics.clone(), false).unwrap();
        let open = AtomicBool::new(false);
        sink.write_batch(&batch(0, 3), &open).unwrap();
        // The server reads the first batch, then closes.
        let (mut first, _) = listener.accept().unwrap();
        first
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        while messages(&got).len() < 3 {
            let mut buf = [0u8; 4096];
            let n = first.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        drop(first);
        std::thread::sleep(Duration::from_millis(50));
        // The next batch is not written into the dead connection: the sink sees it closed,
        // reconnects, and sends the unconfirmed first batch again ahead of the new one.
        let server = std::thread::spawn(move || {
            let (mut second, _) = listener.accept().unwrap();
            let mut again = Vec::new();
            second.read_to_end(&mut again).unwrap();
            again
        });
        sink.write_batch(&batch(3, 5), &open).unwrap();
        // A clean close: the server reads to the end and closes in turn.
        sink.finish(&AtomicBool::new(true));
        let again = server.join().unwrap();
        let ids: Vec<String> = messages(&again)
            .iter()
            .map(|m| {
                serde_json::from_str::<serde_json::Value>(m).unwrap()["request_id"].to_string()
            })
            .collect();
        assert_eq!(ids, ["\"r0\"", "\"r1\"", "\"r2\"", "\"r3\"", "\"r4\""]);
        assert_eq!(metrics.access_log_syslog_reconnects.get(), 1);
        assert_eq!(metrics.access_log_errors.get(), 1);
    }

    #[test]
    fn an_unreachable_server_at_shutdown_gets_the_lines_spilled() {
        // A port nothing listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let metrics = Arc::new(Metrics::new());
        let mut sink =
            SyslogSink::new(&target(port, SyslogTransport::Tcp), metrics.clone(), false).unwrap();
        let spilled = Shared::default();
        sink.spill = Box::new(spilled.clone());
        sink.spill_after = Duration::from_millis(300);
        let closing = AtomicBool::new(true);
        let started = Instant::now();
        sink.write_batch(&batch(0, 2), &closing).unwrap();
        sink.write_batch(&batch(2, 3), &closing).unwrap();
        sink.finish(&closing);
        assert!(started.elapsed() < Duration::from_secs(3));
        let text = String::from_utf8(spilled.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            format!(
                "{SPILL_PREFIX}{{\"time\":\"t\",\"request_id\":\"r0\"}}\n{SPILL_PREFIX}{{\"time\":\"t\",\"request_id\":\"r1\"}}\n{SPILL_PREFIX}{{\"time\":\"t\",\"request_id\":\"r2\"}}\n"
            )
        );
        assert!(metrics.access_log_errors.get() >= 1);
        assert_eq!(
            metrics
                .access_log_syslog_connected
                .with_label_values(&["tcp"])
                .get(),
            0
        );
    }

    #[test]
    fn udp_sends_one_datagram_per_line_and_cuts_what_cannot_fit() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let port = server.local_addr().unwrap().port();
        let metrics = Arc::new(Metrics::new());
        let mut sink =
            SyslogSink::new(&target(port, SyslogTransport::Udp), metrics.clone(), false).unwrap();
        let long = format!(
            "{{\"time\":\"t\",\"query\":\"{}\",\"decision\":\"deny\"}}\n",
            "é".repeat(40_000)
        );
        let mut lines = batch(0, 1);
        lines.extend_from_slice(long.as_bytes());
        sink.write_batch(&lines, &AtomicBool::new(false)).unwrap();
        let mut buf = vec![0u8; 70_000];
        let n = server.recv(&mut buf).unwrap();
        let first = String::from_utf8(buf[..n].to_vec()).unwrap();
        assert!(first.starts_with("<134>1 "), "{first}");
        assert!(first.ends_with(" call - {\"time\":\"t\",\"request_id\":\"r0\"}"));
        let n = server.recv(&mut buf).unwrap();
        assert!(n <= MAX_UDP_MESSAGE && n > MAX_UDP_MESSAGE - 4, "{n}");
        let cut = std::str::from_utf8(&buf[..n]).expect("cut on a character boundary");
        // Cut before the `decision` field: severity was read from the whole line.
        assert!(cut.starts_with("<132>1 "), "{}", &cut[..40]);
        assert_eq!(metrics.access_log_syslog_truncated.get(), 1);
        assert_eq!(
            metrics
                .access_log_syslog_connected
                .with_label_values(&["udp"])
                .get(),
            1
        );
    }
}
