//! JWKS URL tests against a real HTTP server (axum on 127.0.0.1:0): first fetch, rotation,
//! refetch rate limiting, IdP outage, fetcher reuse, and use from several runtimes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::Algorithm::*;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::test_support::*;
use super::{IdentitySettings, JwksEvent, JwksOutcome, KeySource, KeyStore, TokenError, Verifier};

/// A fake IdP serving a JWKS that tests can swap, break and stop.
struct Idp {
    state: Arc<IdpState>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct IdpState {
    jwks: Mutex<Value>,
    failing: AtomicBool,
    hits: AtomicUsize,
}

async fn jwks_handler(State(idp): State<Arc<IdpState>>) -> Response {
    idp.hits.fetch_add(1, Ordering::SeqCst);
    if idp.failing.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "IdP down").into_response();
    }
    Json(idp.jwks.lock().unwrap().clone()).into_response()
}

impl Idp {
    async fn start(jwks_file: &str) -> Idp {
        let state = Arc::new(IdpState {
            jwks: Mutex::new(serde_json::from_str(&fixture(jwks_file)).unwrap()),
            failing: AtomicBool::new(false),
            hits: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/jwks.json", get(jwks_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Idp {
            state,
            url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn serve(&self, jwks_file: &str) {
        *self.state.jwks.lock().unwrap() = serde_json::from_str(&fixture(jwks_file)).unwrap();
    }

    fn fail(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Stop listening and close every connection, like a crashed IdP.
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(2), self.task.take().unwrap())
            .await
            .expect("IdP did not stop")
            .unwrap();
    }
}

type Events = mpsc::UnboundedReceiver<JwksEvent>;

fn store_with_events() -> (Arc<KeyStore>, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let store = KeyStore::new(Arc::new(move |e: JwksEvent| {
        let _ = tx.send(e);
    }));
    (store, rx)
}

/// The next event with this outcome, skipping others; fails after 2s.
async fn wait_for(events: &mut Events, outcome: JwksOutcome) -> JwksEvent {
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let e = events.recv().await.expect("store gone");
            if e.outcome == outcome {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {outcome:?} JWKS event within 2s"))
}

fn jwks_verifier(
    store: &Arc<KeyStore>,
    url: &str,
    refresh: Duration,
    min_refetch: Duration,
) -> Verifier {
    let source = KeySource::JwksUrl {
        url: url.into(),
        refresh_interval: refresh,
        min_refetch_interval: min_refetch,
        timeout: Duration::from_secs(1),
    };
    Verifier::new(
        vec![issuer(vec![source], vec![ES256, ES384, RS256, EdDSA])],
        IdentitySettings::default(),
        store.clone(),
    )
    .unwrap()
}

const LONG: Duration = Duration::from_secs(3600);

/// A fresh token (distinct `jti`, so never a cache hit) signed by a fixture key.
fn token(key_file: &str, kid: &str) -> String {
    let mut c = claims();
    c["jti"] = json!(format!("{kid}-{}", rand_suffix()));
    let alg = match key_file.split('.').next() {
        Some("ed25519") => EdDSA,
        Some("rs256") => RS256,
        Some("es384") => ES384,
        _ => ES256,
    };
    sign(alg, key_file, Some(kid), &c)
}

fn rand_suffix() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

#[tokio::test]
async fn first_fetch_makes_the_verifier_ready() {
    let idp = Idp::start("jwks.json").await;
    let (store, mut events) = store_with_events();
    let v = jwks_verifier(&store, &idp.url, LONG, LONG);

    let event = wait_for(&mut events, JwksOutcome::Ok).await;
    assert_eq!((event.url.as_str(), event.key_count), (idp.url.as_str(), 4));
    assert!(v.is_ready());
    v.verify(&token("es256.key.pem", "es256-test"))
        .await
        .unwrap();
    v.verify(&token("ed25519.key.pem", "ed25519-test"))
        .await
        .unwrap();

    let status = store.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].key_count, 4);
    assert!(status[0].last_success.is_some());
    assert_eq!(status[0].last_error, None);
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn never_fetched_keys_fail_closed() {
    let idp = Idp::start("jwks.json").await;
    idp.fail(true);
    let (store, mut events) = store_with_events();
    let v = jwks_verifier(&store, &idp.url, LONG, LONG);

    wait_for(&mut events, JwksOutcome::Error).await;
    assert!(!v.is_ready());
    let with_kid = v.verify(&token("es256.key.pem", "es256-test")).await;
    assert_eq!(
        with_kid.unwrap_err(),
        TokenError::KeysUnavailable { issuer: ISS.into() }
    );
    let mut no_kid = claims();
    no_kid["jti"] = json!("no-kid");
    let no_kid = sign(ES256, "es256.key.pem", None, &no_kid);
    assert_eq!(
        v.verify(&no_kid).await.unwrap_err().code(),
        "keys_unavailable"
    );
    let status = store.status();
    assert!(status[0].last_error.as_deref().unwrap().contains("500"));
    assert_eq!(status[0].last_success, None);
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_by_the_unknown_kid_refetch() {
    let idp = Idp::start("jwks.json").await;
    let (store, mut events) = store_with_events();
    let v = jwks_verifier(&store, &idp.url, LONG, LONG);
    wait_for(&mut events, JwksOutcome::Ok).await;

    idp.serve("jwks-rotated.json");
    let t = v
        .verify(&token("es256-rotated.key.pem", "es256-rotated"))
        .await;
    assert_eq!(t.unwrap().subject, "agent-1");
    assert_eq!(idp.hits(), 2, "one refetch");

    // The old key is gone from the JWKS; its kid is unknown now, and the refetch that would
    // look for it again is rate-limited: no new request to the IdP.
    let old = v.verify(&token("es256.key.pem", "es256-test")).await;
    assert_eq!(
        old.unwrap_err(),
        TokenError::UnknownKey {
            kid: "es256-test".into()
        }
    );
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn unknown_kid_refetches_are_rate_limited() {
    let idp = Idp::start("jwks.json").await;
    let (store, mut events) = store_with_events();
    let v = Arc::new(jwks_verifier(
        &store,
        &idp.url,
        LONG,
        Duration::from_millis(800),
    ));
    wait_for(&mut events, JwksOutcome::Ok).await;

    // A burst of attacker-chosen kids, concurrently: at most one refetch.
    let burst: Vec<_> = (0..20)
        .map(|i| {
            let v = v.clone();
            tokio::spawn(async move {
                v.verify(&token("es256.key.pem", &format!("bogus-{i}")))
                    .await
            })
        })
        .collect();
    for task in burst {
        assert_eq!(task.await.unwrap().unwrap_err().code(), "unknown_key");
    }
    assert_eq!(idp.hits(), 2, "initial fetch + one refetch");

    // Once the interval has passed, one more refetch is allowed.
    tokio::time::sleep(Duration::from_millis(850)).await;
    let _ = v.verify(&token("es256.key.pem", "bogus-late")).await;
    let _ = v.verify(&token("es256.key.pem", "bogus-later")).await;
    assert_eq!(idp.hits(), 3);
}

#[tokio::test]
async fn last_good_keys_keep_serving_while_the_idp_is_down() {
    let mut idp = Idp::start("jwks.json").await;
    let (store, mut events) = store_with_events();
    let v = jwks_verifier(&store, &idp.url, Duration::from_millis(100), LONG);
    wait_for(&mut events, JwksOutcome::Ok).await;

    // The IdP answers 500.
    idp.fail(true);
    let failed = wait_for(&mut events, JwksOutcome::Error).await;
    assert_eq!(failed.key_count, 4, "the old keys still count");
    v.verify(&token("es256.key.pem", "es256-test"))
        .await
        .unwrap();
    assert!(store.status()[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("500"));

    // The IdP is gone altogether.
    idp.stop().await;
    while events.try_recv().is_ok() {}
    wait_for(&mut events, JwksOutcome::Error).await;
    v.verify(&token("rs256.key.pem", "rs256-test"))
        .await
        .unwrap();
    v.verify(&token("ed25519.key.pem", "ed25519-test"))
        .await
        .unwrap();
    assert!(v.is_ready());
    let status = &store.status()[0];
    assert_eq!(status.key_count, 4);
    assert!(status.last_success.is_some());
    assert!(!status.last_error.as_deref().unwrap().contains("500"));
}

#[tokio::test]
async fn registering_a_url_again_reuses_its_fetcher_and_keys() {
    let idp = Idp::start("jwks.json").await;
    let (store, mut events) = store_with_events();
    let first = jwks_verifier(&store, &idp.url, LONG, LONG);
    wait_for(&mut events, JwksOutcome::Ok).await;

    // A config reload builds the next verifier while the current one still serves.
    let second = jwks_verifier(&store, &idp.url, LONG, LONG);
    assert!(second.is_ready(), "keys are shared, not refetched");
    drop(first);
    second
        .verify(&token("es256.key.pem", "es256-test"))
        .await
        .unwrap();
    assert_eq!(store.status().len(), 1);
    assert_eq!(idp.hits(), 1);

    // Once no verifier names the URL any more, the store forgets it.
    drop(second);
    assert!(store.status().is_empty());
}

/// pingora runs its own runtimes: the store must not depend on the caller's.
#[test]
fn the_store_serves_callers_on_any_runtime() {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let idp = server_rt.block_on(Idp::start("jwks.json"));

    // Built outside any runtime.
    let (store, mut events) = store_with_events();
    let v = jwks_verifier(&store, &idp.url, LONG, LONG);

    let rt_a = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt_a.block_on(async {
        wait_for(&mut events, JwksOutcome::Ok).await;
        v.verify(&token("es256.key.pem", "es256-test"))
            .await
            .unwrap();
    });
    drop(rt_a);

    // A second runtime, after the first is gone, still gets refetches done.
    idp.serve("jwks-rotated.json");
    let rt_b = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt_b.block_on(async {
        v.verify(&token("es256-rotated.key.pem", "es256-rotated"))
            .await
            .unwrap();
    });
    assert_eq!(idp.hits(), 2);
}

/// Verify `t` until it fails, within 5 s; the JWKS refresh that makes it fail is in flight.
async fn until_refused(v: &Verifier, t: &str) -> TokenError {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = v.verify(t).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the token still verifies 5 s after its key left the JWKS")
}

#[tokio::test]
async fn a_refresh_that_drops_a_key_ends_cached_tokens_of_that_key_only() {
    let idp = Idp::start("jwks.json").await;
    let (store, mut events) = store_with_events();
    let v = jwks_verifier(&store, &idp.url, Duration::from_millis(100), LONG);
    wait_for(&mut events, JwksOutcome::Ok).await;
    let es = token("es256.key.pem", "es256-test");
    let ed = token("ed25519.key.pem", "ed25519-test");
    v.verify(&es).await.unwrap();
    v.verify(&ed).await.unwrap();
    assert_eq!(v.signature_checks(), 2);

    // Refreshes that keep every key change nothing: still cache hits, no signature check.
    let hits = idp.hits();
    // Fetches run one after another: once the second has started, the first has been stored.
    while idp.hits() < hits + 2 {
        wait_for(&mut events, JwksOutcome::Ok).await;
    }
    v.verify(&es).await.unwrap();
    v.verify(&ed).await.unwrap();
    assert_eq!(v.signature_checks(), 2, "an unchanged refresh re-verified");

    // The IdP drops the ES256 key: its cached token is refused at the next refresh...
    idp.state.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] != "es256-test");
    assert_eq!(
        until_refused(&v, &es).await,
        TokenError::UnknownKey {
            kid: "es256-test".into()
        }
    );
    // ...while the other key's token is checked once more, then cached again.
    let checks = v.signature_checks();
    v.verify(&ed).await.unwrap();
    v.verify(&ed).await.unwrap();
    assert_eq!(v.signature_checks(), checks + 1);
    assert_eq!(
        v.verify(&es).await.unwrap_err().code(),
        "unknown_key",
        "stays refused"
    );
}
