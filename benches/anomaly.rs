//! Cost of anomaly detection: [`Monitor::observe`] per call with all six detectors on, over a
//! synthetic fleet whose baselines are warm (25 hours of history), and the memory the monitor
//! keeps per tracked agent at 10,000 agents.
//!
//! `cargo bench --bench anomaly`. Two reports are printed before criterion runs: the memory
//! per agent, counting the bytes requested from the allocator (a counting wrapper around
//! `System`) plus an estimate with glibc's per-allocation overhead (8-byte header, 16-byte
//! rounding); and the thread CPU time per call over a fixed 2 million calls, which unlike
//! criterion's wall time holds up on a shared machine.
//!
//! The fleet: calls come from agents picked at random, each agent on its own five routes (of
//! 50, on 10 upstreams); 1 call in 5,000 goes to some other route (first_seen fires now and
//! then), 3% are refused (`insufficient_scope`), bodies are 200 B-2 kB in and 500 B-50 kB out.
//! Route 0 is tagged `private_data` and route 49 `egress`; one agent in 50 reads route 0 and
//! sends one call in ten to route 49 (sensitive_sequence fires for those).

use criterion::{criterion_group, BatchSize, Criterion};
use portcullis::config::compile_monitoring::compile_monitoring;
use portcullis::config::raw_monitoring::RawMonitoring;
use portcullis::observe::anomaly::{CallEvent, Monitor, MonitoringConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Counts live bytes and allocations; the numbers only mean something while one thread
/// allocates (the memory report runs before criterion starts).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_WITH_OVERHEAD: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// What glibc malloc really takes for `size` bytes: an 8-byte header, rounded to 16.
fn with_overhead(size: usize) -> usize {
    (size + 8).div_ceil(16).max(2) * 16
}

fn count_in(size: usize) {
    LIVE_BYTES.fetch_add(size, Relaxed);
    LIVE_WITH_OVERHEAD.fetch_add(with_overhead(size), Relaxed);
    LIVE_ALLOCS.fetch_add(1, Relaxed);
}

fn count_out(size: usize) {
    LIVE_BYTES.fetch_sub(size, Relaxed);
    LIVE_WITH_OVERHEAD.fetch_sub(with_overhead(size), Relaxed);
    LIVE_ALLOCS.fetch_sub(1, Relaxed);
}

// SAFETY: every call is forwarded to `System` with the same arguments; the counters are
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count_in(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count_in(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        count_out(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count_out(layout.size());
            count_in(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Monday 2026-01-05 00:00:00 UTC.
const T0: i64 = 1_767_571_200_000;
/// 25 hours of history: every warm-up below is over.
const HISTORY_MS: i64 = 25 * 3_600_000;

const CONFIG: &str = r#"
detectors:
  first_seen:   {warmup: 1h, min_calls: 50}
  rate:         {window: 1m, z: 4.0, min_windows: 10, min_calls: 20}
  denial_burst: {denials: 10, window: 1m}
  volume:       {window: 1m, z: 4.0, min_windows: 10, max_bytes: 50MB}
  off_hours:    {zone: Europe/Paris, min_days: 1, min_calls: 100}
  sensitive_sequence: {from: private_data, to: egress, within: 10m}
"#;

fn config() -> Arc<MonitoringConfig> {
    let raw: RawMonitoring = serde_yaml::from_str(CONFIG).expect("yaml");
    let tags: BTreeSet<String> = ["private_data", "egress"].map(String::from).into();
    let mut errors = Vec::new();
    let cfg = compile_monitoring(&raw, &tags, &mut |p, m| errors.push((p, m)));
    assert!(errors.is_empty(), "{errors:?}");
    Arc::new(cfg)
}

/// A route: name, upstream, tags.
type Route = (Arc<str>, Arc<str>, Arc<[Arc<str>]>);

/// Calls of a fleet of agents, in time order; names are allocated once, as the compiled
/// config holds them.
struct Fleet {
    agents: Vec<Arc<str>>,
    routes: Vec<Route>,
    rng: u64,
    t: i64,
    step_ms: i64,
}

impl Fleet {
    /// `agents` agents sharing one call every `step_ms`.
    fn new(agents: usize, step_ms: i64) -> Fleet {
        let upstreams: Vec<Arc<str>> = (0..10)
            .map(|u| Arc::from(format!("upstream-{u}")))
            .collect();
        let private: Arc<[Arc<str>]> = Arc::from([Arc::from("private_data")]);
        let egress: Arc<[Arc<str>]> = Arc::from([Arc::from("egress")]);
        let none: Arc<[Arc<str>]> = Arc::from([]);
        let routes = (0..50)
            .map(|r| {
                let tags = match r {
                    0 => private.clone(),
                    49 => egress.clone(),
                    _ => none.clone(),
                };
                (
                    Arc::from(format!("route-{r:02}")),
                    upstreams[r % 10].clone(),
                    tags,
                )
            })
            .collect();
        Fleet {
            agents: (0..agents)
                .map(|a| Arc::from(format!("agent-{a:05}")))
                .collect(),
            routes,
            rng: 0x9E37_79B9_7F4A_7C15,
            t: T0,
            step_ms,
        }
    }

    fn next(&mut self) -> CallEvent {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let a = (r % self.agents.len() as u64) as usize;
        let route = if (r >> 20) % 5000 == 0 {
            ((r >> 40) % 50) as usize
        } else if a % 50 == 0 && (r >> 16) % 10 == 0 {
            49
        } else {
            (a % 10) * 5 + ((r >> 24) % 5) as usize
        };
        let (name, upstream, tags) = &self.routes[route];
        self.t += self.step_ms;
        CallEvent {
            agent: self.agents[a].clone(),
            tier: if a % 4 == 0 { "supervised" } else { "standard" },
            at_ms: self.t,
            route: Some(name.clone()),
            upstream: Some(upstream.clone()),
            tags: tags.clone(),
            write: (r >> 8) % 3 == 0,
            denied: ((r >> 32) % 100 < 3).then_some("insufficient_scope"),
            request_bytes: 200 + (r >> 44) % 1800,
            response_bytes: 500 + (r >> 50) % 49_500,
        }
    }

    /// Feed the whole history into `m`; returns the detections per detector.
    fn history(&mut self, m: &mut Monitor) -> BTreeMap<&'static str, usize> {
        let mut detections = BTreeMap::new();
        while self.t < T0 + HISTORY_MS {
            let ev = self.next();
            for d in m.observe(&ev) {
                *detections.entry(d.detector.as_str()).or_default() += 1;
            }
        }
        detections
    }
}

/// Bytes the monitor keeps per agent for 10,000 agents with 25 hours of history.
fn memory_report() {
    let cfg = config();
    let mut fleet = Fleet::new(10_000, 30); // each agent: one call every 5 minutes
    let (bytes0, real0, allocs0) = (
        LIVE_BYTES.load(Relaxed),
        LIVE_WITH_OVERHEAD.load(Relaxed),
        LIVE_ALLOCS.load(Relaxed),
    );
    let mut m = Monitor::new(cfg);
    let detections = fleet.history(&mut m);
    let n = m.tracked_agents();
    let bytes = LIVE_BYTES.load(Relaxed) - bytes0;
    let real = LIVE_WITH_OVERHEAD.load(Relaxed) - real0;
    let allocs = LIVE_ALLOCS.load(Relaxed) - allocs0;
    let export = serde_json::to_string(&m.export()).expect("json").len();
    println!(
        "anomaly memory: {n} agents, {} calls, detections {detections:?}: {} B/agent requested, ~{} B/agent with malloc overhead, {:.1} allocations/agent; export {} B/agent of JSON",
        (HISTORY_MS / fleet.step_ms),
        bytes / n,
        real / n,
        allocs as f64 / n as f64,
        export / n,
    );
    black_box(&m);
}

/// CPU time of this thread, in nanoseconds: unlike wall time, it does not count the time the
/// thread waits for a core, so it stays meaningful on a shared, busy machine.
fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// The fleets the criterion bench runs: (name, agents, one call every ms). Busy agents make 2
/// calls a minute; quiet ones one every 5 minutes (every call then closes windows and learns).
const FLEETS: [(&str, usize, i64); 2] = [
    ("anomaly/observe, 1,000 busy agents", 1_000, 30),
    ("anomaly/observe, 10,000 quiet agents", 10_000, 30),
];

/// CPU nanoseconds per `observe` over 2 million calls after the history, per fleet (events
/// are built ahead, outside the timed part, 10,000 at a time).
fn cpu_report() {
    for (name, agents, step_ms) in FLEETS {
        let mut fleet = Fleet::new(agents, step_ms);
        let mut m = Monitor::new(config());
        fleet.history(&mut m);
        let mut cpu = 0u128;
        let mut detections = 0;
        for _ in 0..200 {
            let chunk: Vec<CallEvent> = (0..10_000).map(|_| fleet.next()).collect();
            let start = thread_cpu_ns();
            for ev in &chunk {
                detections += m.observe(ev).len();
            }
            cpu += thread_cpu_ns() - start;
        }
        println!(
            "{name}: {:.0} ns CPU per call over 2,000,000 calls ({detections} detections)",
            cpu as f64 / 2e6
        );
    }
}

fn benches(c: &mut Criterion) {
    for (name, agents, step_ms) in FLEETS {
        let mut fleet = Fleet::new(agents, step_ms);
        let mut m = Monitor::new(config());
        fleet.history(&mut m);
        c.bench_function(name, |b| {
            b.iter_batched(|| fleet.next(), |ev| m.observe(&ev), BatchSize::SmallInput)
        });
    }
}

criterion_group!(group, benches);

fn main() {
    memory_report();
    cpu_report();
    group();
    Criterion::default().configure_from_args().final_summary();
}
