//! The cost floor for `scripts/bench-load.sh`: a pingora proxy with no logic at all.
//!
//! Same pingora version, allocator, build profile and runtime settings as Portcullis with one
//! worker, forwarding every request to the bench upstream. Whatever this costs per request is
//! what any gateway built on pingora pays before doing its own work, so the load script reports
//! Portcullis against it as well as against nginx and HAProxy.
//!
//! usage: pingora_floor LISTEN UPSTREAM   (e.g. 127.0.0.1:9085 127.0.0.1:9001)

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::prelude::*;
use pingora::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Forward {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora_floor LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads: usize = args.next().and_then(|t| t.parse().ok()).unwrap_or(1);
    // Portcullis's defaults for `listen.threads`: one worker on a current-thread runtime, or
    // several with work stealing.
    let conf = ServerConf {
        threads,
        work_stealing: threads > 1,
        upstream_keepalive_pool_size: 128,
        // Exit promptly on SIGTERM (pingora's default waits minutes) so the bench can rerun.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Forward { upstream });
    // The same 8 KiB downstream read buffer as Portcullis's listeners.
    service.add_listener(
        ListenerConfig::tcp(&listen).l4_buffer(L4BufferSettings::new(
            8 * 1024,
            DEFAULT_L4_WRITE_BUFFER_SIZE,
        )),
    );
    server.add_service(service);
    server.run_forever();
}
