//! JSON access log, written off the request path.
//!
//! Request tasks hand a finished line to a channel; one writer thread owns the file, drains the
//! channel every 20 ms and flushes what it wrote, so a burst is written in one go and no request
//! ever pays for waking the writer. On shutdown the sender side is closed and [`AccessLog::close`] waits
//! until every queued line is on disk: no line is lost on SIGTERM.

use crate::observe::Metrics;
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One request, as logged. Field names are the log format (see README "Access log").
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 UTC time the request started.
    pub time: String,
    /// `x-request-id` given to the upstream and the agent.
    pub request_id: &'a str,
    /// Agent id (`null` before authentication).
    pub agent: Option<&'a str>,
    /// The agent's human owner.
    pub owner: Option<&'a str>,
    /// Token `jti`.
    pub jti: Option<&'a str>,
    /// Issuer name of the token.
    pub issuer: Option<&'a str>,
    /// Route name.
    pub route: Option<&'a str>,
    /// Method.
    pub method: &'a str,
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
}

/// Handle to the writer.
pub struct AccessLog {
    tx: Mutex<Option<SyncSender<Vec<u8>>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

const QUEUE: usize = 65_536;

impl AccessLog {
    /// Start a writer to stdout (`None`) or appending to `path`.
    pub fn start(path: Option<&Path>, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
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
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let m = metrics.clone();
        let worker = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, out, m))?;
        Ok(AccessLog {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
            metrics,
        })
    }

    /// Queue one record (an [`AccessRecord`] or an audit event). Never drops a line: if the
    /// writer is behind, this waits (an audit log that silently loses lines is worse than a
    /// slower request), and counts it.
    pub fn log<T: Serialize>(&self, rec: &T) {
        let mut line = match serde_json::to_vec(rec) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let tx = match self.tx.lock() {
            Ok(g) => g.clone(),
            Err(_) => None,
        };
        let Some(tx) = tx else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(line)) => {
                self.metrics.access_log_backpressure.inc();
                let _ = tx.send(line);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Stop accepting lines and wait until every queued line is written and flushed.
    pub fn close(&self) {
        if let Ok(mut g) = self.tx.lock() {
            g.take();
        }
        if let Some(w) = self.worker.lock().ok().and_then(|mut g| g.take()) {
            let _ = w.join();
        }
    }
}

/// How often the writer drains the queue. Request tasks never wake the writer: waking a
/// thread per line costs a context switch per request, which on a busy proxy is more than
/// formatting the line. A line reaches the file at most this much later.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

fn write_loop(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>, metrics: Arc<Metrics>) {
    use std::sync::mpsc::TryRecvError;
    let mut w = BufWriter::with_capacity(64 * 1024, out);
    loop {
        let mut wrote = false;
        let closed = loop {
            match rx.try_recv() {
                Ok(line) => {
                    if w.write_all(&line).is_err() {
                        metrics.access_log_errors.inc();
                    }
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break false,
                // Every sender is gone and the queue is empty: shutdown.
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if wrote && w.flush().is_err() {
            metrics.access_log_errors.inc();
        }
        if closed {
            let _ = w.flush();
            return;
        }
        std::thread::sleep(DRAIN_INTERVAL);
    }
}
