//! The version channel against a real Redis (tests/support/stores.rs): two channels on one
//! server play two replicas.

use super::*;
use test_servers::RedisServer;

// Also included by other test modules of the crate, on purpose: one copy per test suite.
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/support/stores.rs"]
mod test_servers;

/// Generous: correctness deadlines, not latency targets.
const DEADLINE: Duration = Duration::from_secs(10);

fn opts(url: &str) -> RedisOptions {
    RedisOptions {
        url: url.to_string(),
        key_prefix: "t:".to_string(),
        op_timeout: Duration::from_millis(250),
        connect_timeout: Duration::from_secs(1),
    }
}

fn start(url: &str) -> (VersionChannel, mpsc::Receiver<VersionEvent>) {
    VersionChannel::start(opts(url), "agents", Arc::new(Metrics::new()))
}

/// The next event, or panic after `within`.
async fn next(rx: &mut mpsc::Receiver<VersionEvent>, within: Duration) -> VersionEvent {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("an event in time")
        .expect("the channel is open")
}

/// Skip events until `want` arrives (or panic after `within`).
async fn until(rx: &mut mpsc::Receiver<VersionEvent>, want: VersionEvent, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if next(rx, left).await == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_replica_reaches_the_other() {
    let srv = RedisServer::start();
    let (a, mut a_rx) = start(&srv.url());
    let (b, mut b_rx) = start(&srv.url());
    // Each reports its first subscription.
    assert_eq!(next(&mut a_rx, DEADLINE).await, VersionEvent::Resubscribed);
    assert_eq!(next(&mut b_rx, DEADLINE).await, VersionEvent::Resubscribed);
    assert_eq!(b.get().await, Ok(None), "nothing published yet");

    a.publish(5).await.unwrap();
    assert_eq!(
        next(&mut b_rx, Duration::from_secs(1)).await,
        VersionEvent::Changed(5)
    );
    assert_eq!(b.get().await, Ok(Some(5)));

    // A lower version neither overwrites the stored one nor is announced: the next message
    // B hears is the higher one published after it.
    b.publish(3).await.unwrap();
    assert_eq!(a.get().await, Ok(Some(5)));
    a.publish(5).await.unwrap();
    assert_eq!(a.get().await, Ok(Some(5)));
    a.publish(12).await.unwrap();
    assert_eq!(
        next(&mut b_rx, Duration::from_secs(1)).await,
        VersionEvent::Changed(12)
    );
    assert_eq!(b.get().await, Ok(Some(12)));
    // Compared as numbers over the whole u64 range, not as text or doubles.
    a.publish(u64::MAX - 1).await.unwrap();
    a.publish(9).await.unwrap();
    a.publish(u64::MAX).await.unwrap();
    a.publish(u64::MAX - 2).await.unwrap();
    assert_eq!(b.get().await, Ok(Some(u64::MAX)));
    until(&mut a_rx, VersionEvent::Changed(u64::MAX - 1), DEADLINE).await;
    assert_eq!(
        next(&mut a_rx, DEADLINE).await,
        VersionEvent::Changed(u64::MAX)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_subscriber_resubscribes_and_the_version_is_gone() {
    let mut srv = RedisServer::start();
    let (a, _a_rx) = start(&srv.url());
    let (b, mut b_rx) = start(&srv.url());
    assert_eq!(next(&mut b_rx, DEADLINE).await, VersionEvent::Resubscribed);
    a.publish(7).await.unwrap();
    until(&mut b_rx, VersionEvent::Changed(7), DEADLINE).await;

    tokio::task::block_in_place(|| srv.kill());
    assert!(b.get().await.is_err(), "down: an error, not `None`");
    assert!(a.publish(8).await.is_err());
    tokio::task::block_in_place(|| srv.restart());

    until(&mut b_rx, VersionEvent::Resubscribed, DEADLINE).await;
    // Empty: `None` until someone publishes again (the caller rebuilds it).
    let mut got = b.get().await;
    let end = Instant::now() + DEADLINE;
    while got.is_err() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        got = b.get().await;
    }
    assert_eq!(got, Ok(None));
    let mut published = a.publish(7).await;
    while published.is_err() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        published = a.publish(7).await;
    }
    published.unwrap();
    assert_eq!(next(&mut b_rx, DEADLINE).await, VersionEvent::Changed(7));
    assert_eq!(b.get().await, Ok(Some(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_redis_down_and_subscribes_when_it_comes_up() {
    // A port nobody listens on yet.
    let mut srv = RedisServer::start();
    tokio::task::block_in_place(|| srv.kill());
    let (a, mut rx) = start(&srv.url());
    assert!(a.get().await.is_err());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "no subscription while Redis is down"
    );
    tokio::task::block_in_place(|| srv.restart());
    assert_eq!(next(&mut rx, DEADLINE).await, VersionEvent::Resubscribed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_url_fails_every_operation_without_secrets() {
    let (a, _rx) = VersionChannel::start(
        opts("rediss://:s3cr3t@h:1/#insecure"),
        "agents",
        Arc::new(Metrics::new()),
    );
    let err = a.get().await.unwrap_err();
    assert!(
        err.contains("#insecure") && !err.contains("s3cr3t"),
        "{err}"
    );
    assert!(a.publish(1).await.is_err());
}
