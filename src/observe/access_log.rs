//! JSON access log, written off the request path.
//!
//! A request task encodes its line into a buffer of its own thread, then appends it to one shared
//! pending buffer under a mutex held only for that copy. One writer thread owns the file: every
//! 20 ms it swaps the pending buffer for an empty one and writes what it took in one call, so no
//! request ever pays for waking the writer, and in steady state no line allocates. On shutdown
//! [`AccessLog::close`] stops new lines and waits until everything pending is on disk: no line
//! is lost on SIGTERM.
//!
//! The writer hands each batch to a [`LogSink`]: a file or stdout, or a syslog server
//! ([`super::syslog`]), which may keep the writer waiting while the server is away; the pending
//! buffer then fills and loggers wait, as they do for a stalled disk.
//!
//! Every string in a line is capped at `access_log.max_field_bytes` ([`CappingFormatter`]):
//! paths, queries and methods are the caller's to choose, before any authentication, and a
//! 60 KB query string must not become a 60 KB log line.

use crate::observe::Metrics;
use crate::util::lock;
use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One request, as logged. Field names are the log format (see README "Access log").
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 UTC time the request started.
    pub time: LogTime,
    /// `x-request-id` given to the upstream and the agent.
    pub request_id: &'a str,
    /// Agent id (`null` before authentication).
    pub agent: Option<&'a str>,
    /// The agent's human owner.
    pub owner: Option<&'a str>,
    /// On a delegated token: the principal (person) the agent acts for (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<&'a str>,
    /// On a delegated token: the earlier actors that passed the delegation on, nearest first
    /// (absent when the agent acts directly for the principal, or for nobody).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub prior_actors: &'a [String],
    /// Token `jti`.
    pub jti: Option<&'a str>,
    /// Issuer name of the token.
    pub issuer: Option<&'a str>,
    /// Route name.
    pub route: Option<&'a str>,
    /// Method.
    pub method: &'a str,
    /// The `Host` header as sent (absent when none was).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    /// The scopes the token carried (before narrowing to the agent's registry): what
    /// `portcullis policy replay` and `review` need to re-decide and audit a call.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub token_scopes: &'a [String],
    /// Normalized path (raw path if it was refused before normalization succeeded).
    pub path: &'a str,
    /// Query string, if any.
    pub query: Option<&'a str>,
    /// Client address.
    pub client: Option<String>,
    /// Status sent to the agent (0 if the connection died first).
    pub status: u16,
    /// `allow`, `deny`, `held` (parked for approval, 202) or `error`.
    pub decision: &'static str,
    /// Machine code of a refusal or failure; `null` when allowed.
    pub reason: Option<&'static str>,
    /// Upstream name.
    pub upstream: Option<&'a str>,
    /// Request body bytes read from the agent.
    pub bytes_in: usize,
    /// Response body bytes sent to the agent.
    pub bytes_out: usize,
    /// Total time, milliseconds.
    pub duration_ms: f64,
    /// Upstream time, milliseconds.
    pub upstream_ms: Option<f64>,
    /// Config version that decided the request.
    pub config_version: u64,
    /// Approval the call waited for or used, if any.
    pub approval_id: Option<&'a str>,
    /// Shadow mode: the refusal a shadowed policy would have made (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_deny: Option<&'static str>,
    /// The contextual conditions that ran for an allowed call, each with its result (absent
    /// when none ran; a refusal by a condition names it in `reason` and its JSON).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub conditions: &'a [crate::policy::decision::ConditionRan],
    /// On an MCP route: the JSON-RPC method, what it named, the digest of a tool call's
    /// arguments (never the arguments) and the rule that applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpFields<'a>>,
    /// On a traced call (`tracing:`, sampled): its OpenTelemetry trace id, to find its spans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The `mcp` object of an access-log line.
#[derive(Debug, Serialize)]
pub struct McpFields<'a> {
    /// JSON-RPC method (`null` for a client's response, `GET`/`DELETE` carry none).
    pub method: Option<&'a str>,
    /// `tool`, `prompt` or `resource`, when the method names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Its name or URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// Hex SHA-256 of a tool call's canonical arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<&'a str>,
    /// The rule's pattern that applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    /// The session the call rode on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    /// The tool call's arguments, only under `mcp.log_arguments: true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a serde_json::Value>,
}

/// A wall-clock time that serializes as RFC 3339 UTC with milliseconds,
/// `2026-11-28T16:19:37.124Z`.
///
/// The date-and-seconds part is formatted once per second on each thread and reused by every
/// line of that second; only the milliseconds are written per line.
#[derive(Debug, Clone, Copy)]
pub struct LogTime(pub SystemTime);

impl LogTime {
    /// Call `f` with the RFC 3339 text of this time (formatted without allocating).
    pub(super) fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        thread_local! {
            static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
        }
        let Ok(since_epoch) = self.0.duration_since(UNIX_EPOCH) else {
            let t = chrono::DateTime::<chrono::Utc>::from(self.0);
            return f(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        };
        let secs = since_epoch.as_secs();
        let mut text = [0u8; 48];
        let len = SECOND.with(|cell| {
            let mut second = cell.borrow_mut();
            if second.0 != secs {
                let whole = self.0 - Duration::from_nanos(u64::from(since_epoch.subsec_nanos()));
                second.1 = chrono::DateTime::<chrono::Utc>::from(whole)
                    .format("%Y-%m-%dT%H:%M:%S")
                    .to_string();
                second.0 = secs;
            }
            let mut cursor = &mut text[..];
            let room = cursor.len();
            // 48 bytes hold any year chrono prints; a failed write leaves a shorter, still valid
            // prefix rather than garbage.
            let _ = write!(cursor, "{}.{:03}Z", second.1, since_epoch.subsec_millis());
            room - cursor.len()
        });
        f(std::str::from_utf8(&text[..len]).unwrap_or_default())
    }
}

impl Serialize for LogTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_text(|t| s.serialize_str(t))
    }
}

/// Handle to the writer.
pub struct AccessLog {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    /// Longest string field written whole (`access_log.max_field_bytes`); reloadable.
    max_field_bytes: AtomicUsize,
}

/// Default of `access_log.max_field_bytes`.
pub const DEFAULT_MAX_FIELD_BYTES: usize = 1024;

/// What request tasks and the writer share.
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the writer has taken the pending bytes (wakes loggers waiting for room)
    /// and when the log closes (wakes the writer).
    changed: Condvar,
    /// Set by [`AccessLog::close`] before it wakes the writer: read by a sink that is waiting
    /// for its destination (syslog), which stops waiting for ever once the log closes.
    closing: AtomicBool,
}

/// Where the writer thread puts the lines it drained.
pub trait LogSink: Send {
    /// Write `batch`: whole lines, each ending in `\n`. An error is counted in
    /// `portcullis_access_log_write_errors_total`. A sink that can wait for its destination
    /// returns once the batch is delivered, or, after `closing` is set, handled in a bounded
    /// time.
    fn write_batch(&mut self, batch: &[u8], closing: &AtomicBool) -> std::io::Result<()>;

    /// A drain found nothing to write (every 20 ms while idle).
    fn idle(&mut self) {}

    /// The log is closed and every line has gone through [`LogSink::write_batch`].
    fn finish(&mut self, _closing: &AtomicBool) {}
}

/// A file or stdout: one `write_all` and a flush per batch.
struct WriteSink(Box<dyn Write + Send>);

impl LogSink for WriteSink {
    fn write_batch(&mut self, batch: &[u8], _closing: &AtomicBool) -> std::io::Result<()> {
        self.0.write_all(batch)?;
        self.0.flush()
    }
}

struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// Pending bytes beyond which a logger waits for the writer: about 70,000 typical lines.
const PENDING_CAP: usize = 32 << 20;
/// What the writer keeps allocated between drains after a burst.
const KEEP_CAPACITY: usize = 1 << 20;

/// How often the writer drains the pending buffer. Request tasks never wake the writer: waking
/// a thread per line costs a context switch per request, which on a busy proxy is more than
/// formatting the line. A line reaches the file at most this much later.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

thread_local! {
    /// Each thread's line buffer, reused so that encoding a line does not allocate.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl AccessLog {
    /// Start a writer to stdout (`None`) or appending to `path`, in the native format.
    pub fn start(path: Option<&Path>, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
        Self::start_as(path, metrics, false)
    }

    /// [`AccessLog::start`], writing Elastic Common Schema lines when `ecs` (see
    /// [`super::ecs`]; converted on the writer thread).
    pub fn start_as(
        path: Option<&Path>,
        metrics: Arc<Metrics>,
        ecs: bool,
    ) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stdout()),
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)?,
                )
            }
        };
        Self::start_with(out, metrics, ecs)
    }

    /// [`AccessLog::start_as`] to a syslog server (`access_log.syslog`).
    pub fn start_syslog(
        target: &super::syslog::SyslogTarget,
        metrics: Arc<Metrics>,
        ecs: bool,
    ) -> std::io::Result<AccessLog> {
        let sink = super::syslog::SyslogSink::new(target, metrics.clone(), ecs)?;
        Self::start_sink(Box::new(sink), metrics, ecs)
    }

    /// Start a writer to any output.
    fn start_with(
        out: Box<dyn Write + Send>,
        metrics: Arc<Metrics>,
        ecs: bool,
    ) -> std::io::Result<AccessLog> {
        Self::start_sink(Box::new(WriteSink(out)), metrics, ecs)
    }

    /// Start a writer to any sink.
    fn start_sink(
        out: Box<dyn LogSink>,
        metrics: Arc<Metrics>,
        ecs: bool,
    ) -> std::io::Result<AccessLog> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(64 * 1024),
                closed: false,
            }),
            changed: Condvar::new(),
            closing: AtomicBool::new(false),
        });
        let (s, m) = (shared.clone(), metrics.clone());
        let worker = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(&s, out, &m, ecs))?;
        Ok(AccessLog {
            shared,
            worker: Mutex::new(Some(worker)),
            metrics,
            max_field_bytes: AtomicUsize::new(DEFAULT_MAX_FIELD_BYTES),
        })
    }

    /// Cap every string field of later lines at `max` bytes (`access_log.max_field_bytes`).
    pub fn set_max_field_bytes(&self, max: usize) {
        self.max_field_bytes.store(max, Ordering::Relaxed);
    }

    /// Queue one record (an [`AccessRecord`] or an audit event). Never drops a line while the
    /// log is open: if the writer is behind, this waits (an audit log that silently loses lines
    /// is worse than a slower request), and counts it.
    pub fn log<T: Serialize>(&self, rec: &T) {
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => self.encode_and_queue(&mut line, rec),
            // Only if a Serialize impl logged from inside a log call: use a fresh buffer.
            Err(_) => self.encode_and_queue(&mut Vec::new(), rec),
        });
    }

    /// Queue a call's line: [`AccessLog::log`] for an [`AccessRecord`], written by its own
    /// encoder (see [`super::access_line`]), which is what every call pays for.
    pub fn log_access(&self, rec: &AccessRecord<'_>) {
        let max = self.max_field_bytes.load(Ordering::Relaxed);
        LINE.with(|cell| {
            let mut fresh = Vec::new();
            let mut borrowed = cell.try_borrow_mut();
            let line = match borrowed.as_deref_mut() {
                Ok(line) => line,
                Err(_) => &mut fresh,
            };
            line.clear();
            rec.encode_into(line, max);
            line.push(b'\n');
            self.queue(line);
        });
    }

    fn encode_and_queue<T: Serialize>(&self, line: &mut Vec<u8>, rec: &T) {
        line.clear();
        let max = self.max_field_bytes.load(Ordering::Relaxed);
        let mut json =
            serde_json::Serializer::with_formatter(&mut *line, CappingFormatter::new(max));
        if rec.serialize(&mut json).is_err() {
            return;
        }
        line.push(b'\n');
        self.queue(line);
    }

    /// Append one encoded line to the pending bytes, waiting while the writer is behind.
    fn queue(&self, line: &[u8]) {
        let mut p = lock(&self.shared.pending);
        if !p.closed && !p.bytes.is_empty() && p.bytes.len() + line.len() > PENDING_CAP {
            self.metrics.access_log_backpressure.inc();
            // Have the writer drain now rather than at its next tick.
            self.shared.changed.notify_all();
            while !p.closed && !p.bytes.is_empty() && p.bytes.len() + line.len() > PENDING_CAP {
                p = self
                    .shared
                    .changed
                    .wait(p)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        if !p.closed {
            p.bytes.extend_from_slice(line);
        }
    }

    /// Stop accepting lines and wait until every pending line is written and flushed.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        lock(&self.shared.pending).closed = true;
        self.shared.changed.notify_all();
        if let Some(w) = lock(&self.worker).take() {
            let _ = w.join();
        }
    }
}

/// Append `rec` as compact JSON through serde with every string capped at `max` bytes: how
/// audit events are written (and what [`AccessRecord::encode_into`] must match).
pub fn encode_serde<T: Serialize + ?Sized>(rec: &T, max: usize, out: &mut Vec<u8>) {
    let mut json = serde_json::Serializer::with_formatter(&mut *out, CappingFormatter::new(max));
    let _ = rec.serialize(&mut json);
}

/// Compact JSON in which no string is longer than `max` bytes of its original text: the rest is
/// replaced by `…[cut N bytes]`, so a reader sees that, and how much, was left out.
///
/// Applied to every string of every line (access and audit alike) rather than to chosen fields,
/// so that a field added later cannot forget it. It works on the fragments serde_json hands
/// over while escaping, so it allocates nothing and costs a few comparisons per string.
pub(super) struct CappingFormatter {
    max: usize,
    /// Bytes of the current string seen so far (an escaped character counts as its one byte).
    seen: usize,
    /// Bytes of the current string written.
    kept: usize,
}

impl CappingFormatter {
    pub(super) fn new(max: usize) -> Self {
        CappingFormatter {
            max,
            seen: 0,
            kept: 0,
        }
    }
}

impl serde_json::ser::Formatter for CappingFormatter {
    #[inline]
    fn begin_string<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.seen = 0;
        self.kept = 0;
        w.write_all(b"\"")
    }

    #[inline]
    fn end_string<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        if self.seen > self.kept {
            write!(w, "…[cut {} bytes]", self.seen - self.kept)?;
        }
        w.write_all(b"\"")
    }

    #[inline]
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let room = self.max.saturating_sub(self.seen);
        self.seen += fragment.len();
        if fragment.len() <= room {
            // Almost every string: it fits whole.
            self.kept += fragment.len();
            return w.write_all(fragment.as_bytes());
        }
        let mut end = room;
        // Cut on a character boundary: the line stays valid UTF-8.
        while !fragment.is_char_boundary(end) {
            end -= 1;
        }
        self.kept += end;
        w.write_all(&fragment.as_bytes()[..end])
    }

    #[inline]
    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: serde_json::ser::CharEscape,
    ) -> std::io::Result<()> {
        let room = self.max.saturating_sub(self.seen);
        self.seen += 1;
        if room == 0 {
            return Ok(());
        }
        self.kept += 1;
        serde_json::ser::Formatter::write_char_escape(
            &mut serde_json::ser::CompactFormatter,
            w,
            escape,
        )
    }
}

fn write_loop(shared: &Shared, mut out: Box<dyn LogSink>, metrics: &Metrics, ecs: bool) {
    let mut taken = Vec::with_capacity(64 * 1024);
    let mut converted = Vec::new();
    loop {
        let closed = {
            let mut p = lock(&shared.pending);
            if !p.closed {
                p = shared
                    .changed
                    .wait_timeout(p, DRAIN_INTERVAL)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut p.bytes, &mut taken);
            p.closed
        };
        // Loggers waiting for room can go on.
        shared.changed.notify_all();
        if !taken.is_empty() {
            let batch = if ecs {
                converted.clear();
                super::ecs::convert_batch(&taken, &mut converted);
                &converted
            } else {
                &taken
            };
            if out.write_batch(batch, &shared.closing).is_err() {
                metrics.access_log_errors.inc();
            }
            taken.clear();
            taken.shrink_to(KEEP_CAPACITY);
        } else if !closed {
            out.idle();
        }
        // `closed` was read under the lock that loggers append under, so nothing can follow.
        if closed {
            out.finish(&shared.closing);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[derive(Serialize)]
    struct Line {
        thread: usize,
        seq: usize,
        pad: &'static str,
    }

    /// The line `rec` encodes to with strings capped at `max` bytes.
    fn capped<T: Serialize>(rec: &T, max: usize) -> String {
        let mut out = Vec::new();
        let mut json = serde_json::Serializer::with_formatter(&mut out, CappingFormatter::new(max));
        rec.serialize(&mut json).unwrap();
        String::from_utf8(out).expect("capped output is UTF-8")
    }

    #[test]
    fn long_strings_are_cut_with_a_marker_and_short_ones_are_untouched() {
        let long = "q".repeat(60_000);
        let line = capped(&serde_json::json!({"query": long, "method": "GET"}), 1024);
        assert!(line.len() < 1100, "{} bytes", line.len());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v["query"].as_str().unwrap(),
            format!("{}…[cut 58976 bytes]", "q".repeat(1024))
        );
        assert_eq!(v["method"], "GET");

        // Exactly at the cap: whole, no marker.
        let exact = "x".repeat(16);
        assert_eq!(capped(&exact, 16), format!("\"{exact}\""));

        // Escaped characters count as their one byte of text and are never split; a cut never
        // splits a multi-byte character; everything after the cut is counted, escapes included.
        let tricky = format!("ab\"\n{}\"z", "é".repeat(4));
        let v: String = serde_json::from_str(&capped(&tricky, 7)).unwrap();
        assert_eq!(v, format!("ab\"\né…[cut {} bytes]", tricky.len() - 6));
        let v: String = serde_json::from_str(&capped(&tricky, 4)).unwrap();
        assert_eq!(v, format!("ab\"\n…[cut {} bytes]", tricky.len() - 4));
        let v: String = serde_json::from_str(&capped(&tricky, 3)).unwrap();
        assert_eq!(v, format!("ab\"…[cut {} bytes]", tricky.len() - 3));
    }

    #[test]
    fn the_cap_applies_to_lines_written_by_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(Some(&path), Arc::new(Metrics::new())).unwrap();
        let pad: &'static str = Box::leak("p".repeat(5000).into_boxed_str());
        log.log(&Line {
            thread: 0,
            seq: 0,
            pad,
        });
        log.set_max_field_bytes(100);
        log.log(&Line {
            thread: 0,
            seq: 1,
            pad,
        });
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let pads: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["pad"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(pads[0], format!("{}…[cut 3976 bytes]", "p".repeat(1024)));
        assert_eq!(pads[1], format!("{}…[cut 4900 bytes]", "p".repeat(100)));
    }

    #[test]
    fn log_time_matches_chrono_rfc3339_millis() {
        let base = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        // Several times within one second (the cached prefix), across second, minute, day and
        // year boundaries, and before the epoch.
        let offsets_ms: [i64; 9] = [0, 1, 999, 1_000, 59_999, 60_000, 86_399_999, 86_400_000, 3];
        let mut times: Vec<SystemTime> = offsets_ms
            .iter()
            .map(|&ms| base + Duration::from_millis(ms as u64))
            .collect();
        times.push(UNIX_EPOCH + Duration::from_millis(1_798_761_599_999)); // 2026-12-31T23:59:59.999
        times.push(UNIX_EPOCH + Duration::from_millis(1_798_761_600_000)); // 2027-01-01T00:00:00.000
        times.push(UNIX_EPOCH - Duration::from_millis(1_500));
        for t in times {
            let want = chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let got = serde_json::to_string(&LogTime(t)).unwrap();
            assert_eq!(got, format!("\"{want}\""), "{t:?}");
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_in_order_by_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/access.log");
        let log = Arc::new(AccessLog::start(Some(&path), Arc::new(Metrics::new())).unwrap());
        let (threads, per_thread) = (4, 5_000);
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for seq in 0..per_thread {
                        log.log(&Line {
                            thread,
                            seq,
                            pad: "x",
                        });
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        log.close();
        log.log(&Line {
            thread: 99,
            seq: 0,
            pad: "after close",
        });

        let text = std::fs::read_to_string(&path).unwrap();
        let mut next = vec![0; threads];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect(line);
            let t = v["thread"].as_u64().unwrap() as usize;
            assert!(t < threads, "a line logged after close was written: {line}");
            assert_eq!(
                v["seq"].as_u64().unwrap() as usize,
                next[t],
                "thread {t} out of order"
            );
            next[t] += 1;
        }
        assert_eq!(next, vec![per_thread; threads]);
    }

    #[test]
    fn a_stalled_output_makes_loggers_wait_and_loses_nothing() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let metrics = Arc::new(Metrics::new());
        let log =
            Arc::new(AccessLog::start_with(Box::new(writer), metrics.clone(), false).unwrap());
        // Nobody reads the pipe yet: the writer blocks once the pipe is full, then the pending
        // buffer fills to its cap and the next logger has to wait.
        let pad: &'static str = Box::leak("p".repeat(1000).into_boxed_str());
        let lines = PENDING_CAP / 1000 + 2_000;
        let producer = {
            let log = log.clone();
            std::thread::spawn(move || {
                for seq in 0..lines {
                    log.log(&Line {
                        thread: 0,
                        seq,
                        pad,
                    });
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while metrics.access_log_backpressure.get() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no logger ever waited"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!producer.is_finished(), "the producer should be waiting");

        let drain = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
            all
        });
        producer.join().unwrap();
        // close() joins the writer thread, which drops the pipe's write end: the reader ends.
        log.close();
        let all = drain.join().unwrap();
        let text = String::from_utf8(all).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs.len(), lines);
        assert!(seqs.iter().enumerate().all(|(i, &s)| s == i as u64));
    }
}
