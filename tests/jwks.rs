//! An issuer whose keys come from a JWKS URL (a real local server): verification, key
//! rotation, IdP outage, and readiness before the first successful fetch.

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm::ES256;
use serde_json::Value;
use support::*;

const BOTH: &[&str] = &["tickets:read", "tickets:write"];

/// A fresh token of the JWKS issuer signed with fixture key `key_file`, header `kid`.
fn corp_token(key_file: &str, kid: &str) -> String {
    sign(
        ES256,
        key_file,
        Some(kid),
        &claims_for(JWKS_ISS, "support-bot", BOTH),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_keys_verify_rotate_and_survive_an_idp_outage() {
    let up = Upstream::start().await;
    let idp = JwksServer::start("jwks.json", false).await;
    let mut setup = Setup::new(&up);
    // No background refresh during the test: every fetch after the first is on demand.
    setup.jwks = Some(JwksIssuer {
        url: idp.url.clone(),
        refresh_interval: "1h",
        min_refetch_interval: "1s",
    });
    let gw = Gateway::start(setup).await;
    assert_eq!(idp.hits(), 1, "ready means the JWKS was fetched once");

    let a = get(
        &gw,
        "/api/tickets/1",
        Some(&corp_token("es256.key.pem", "es256-test")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        gw.access_log_line(a.request_id()).await["issuer"],
        "corp-idp"
    );

    // Rotation: the IdP now publishes only the new key; a token with its kid makes the gateway
    // refetch once, then verifies.
    idp.serve("jwks-rotated.json");
    let a = get(
        &gw,
        "/api/tickets/2",
        Some(&corp_token("es256-rotated.key.pem", "es256-rotated")),
    )
    .await;
    assert_eq!(a.status, 200, "rotated key refused: {}", a.body);
    assert_eq!(idp.hits(), 2, "exactly one refetch for the unknown kid");
    // The retired key is gone with the old key set.
    let a = get(
        &gw,
        "/api/tickets/3",
        Some(&corp_token("es256.key.pem", "es256-test")),
    )
    .await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "unknown_key", "{}", a.body);

    // Outage: make the gateway try (an unknown kid triggers a refetch, at most once per
    // second) until the IdP has answered 500 at least once.
    idp.fail(true);
    let deadline = Instant::now() + POLL_TIMEOUT;
    while idp.failures_served() == 0 {
        assert!(Instant::now() < deadline, "the gateway never refetched");
        let a = get(
            &gw,
            "/api/tickets/4",
            Some(&corp_token("es256-rotated.key.pem", "es256-unknown")),
        )
        .await;
        a.assert_refusal(401, "invalid_token");
        assert_eq!(a.body["reason"], "unknown_key", "{}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last good keys keep serving.
    let a = get(
        &gw,
        "/api/tickets/5",
        Some(&corp_token("es256-rotated.key.pem", "es256-rotated")),
    )
    .await;
    assert_eq!(a.status, 200, "IdP outage broke verification: {}", a.body);
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "an outage after a good fetch is not unreadiness"
    );

    let m = gw.metrics().await;
    let url = idp.url.as_str();
    assert_eq!(
        metric(
            &m,
            "portcullis_jwks_refresh_total",
            &[("url", url), ("outcome", "success")]
        ),
        Some(2.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "portcullis_jwks_refresh_total",
            &[("url", url), ("outcome", "failure")]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "portcullis_jwks_keys", &[("url", url)]),
        Some(1.0),
        "{m}"
    );
}

/// Start with the IdP answering 500, check the gateway is unready and fails closed for that
/// issuer only, then let the IdP recover and wait (up to [`POLL_TIMEOUT`]) for readiness.
async fn unready_until_first_jwks_fetch(refresh_interval: &'static str) {
    let up = Upstream::start().await;
    let idp = JwksServer::start("jwks.json", true).await;
    let mut setup = Setup::new(&up);
    setup.jwks = Some(JwksIssuer {
        url: idp.url.clone(),
        refresh_interval,
        min_refetch_interval: "1s",
    });
    let mut gw = Gateway::start_unready(setup).await;
    let deadline = Instant::now() + POLL_TIMEOUT;
    while idp.failures_served() == 0 {
        assert!(
            Instant::now() < deadline,
            "the gateway never fetched the JWKS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "not_ready", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("signing keys"),
        "{body}"
    );
    // Fail closed for that issuer, and say so (not "your token is bad").
    let a = get(
        &gw,
        "/api/tickets/1",
        Some(&corp_token("es256.key.pem", "es256-test")),
    )
    .await;
    a.assert_refusal(503, "identity_unavailable");
    assert_eq!(a.body["reason"], "keys_unavailable", "{}", a.body);
    assert_eq!(a.header("retry-after"), Some("5"));
    // Other issuers are unaffected.
    assert_eq!(
        get(&gw, "/api/tickets/1", Some(&token("support-bot", BOTH)))
            .await
            .status,
        200
    );
    assert_eq!(up.hits(), 1);

    idp.fail(false);
    gw.wait_ready().await;
    let a = get(
        &gw,
        "/api/tickets/2",
        Some(&corp_token("es256.key.pem", "es256-test")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_the_first_successful_jwks_fetch() {
    // A short refresh interval: the fetcher retries every second.
    unready_until_first_jwks_fetch("1s").await;
}

/// With the default refresh interval (5m), a JWKS fetch that fails at start-up is only
/// retried five minutes later: the gateway stays unready (and fails closed for the issuer)
/// long after the IdP is back, and since it is unready, no traffic comes to trigger an
/// on-demand refetch either. A failed fetch should be retried with a short backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_recovers_soon_after_the_idp_does_with_the_default_refresh_interval() {
    unready_until_first_jwks_fetch("5m").await;
}

/// A key is dropped from the IdP's JWKS (rotation after a compromise). A token it signed was
/// verified before and sits in the verified-token cache: it must stop passing once the gateway
/// has refreshed the JWKS, not at its `exp`. A token of the key that stays keeps passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_stops_passing_once_a_refresh_drops_its_key() {
    let up = Upstream::start().await;
    let idp = JwksServer::start("jwks-rotating.json", false).await;
    let mut setup = Setup::new(&up);
    setup.jwks = Some(JwksIssuer {
        url: idp.url.clone(),
        refresh_interval: "1s",
        min_refetch_interval: "1s",
    });
    let gw = Gateway::start(setup).await;
    let dropped = corp_token("es256.key.pem", "es256-test");
    let kept = corp_token("es256-rotated.key.pem", "es256-rotated");
    // Twice each: the second call is a cache hit.
    for t in [&dropped, &kept, &dropped, &kept] {
        let a = get(&gw, "/api/tickets/1", Some(t)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    idp.serve("jwks-rotated.json");
    let deadline = Instant::now() + POLL_TIMEOUT;
    let refused = loop {
        let a = get(&gw, "/api/tickets/2", Some(&dropped)).await;
        if a.status != 200 {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "a token of the dropped key still passes {POLL_TIMEOUT:?} after the JWKS lost it"
        );
        // The kept key's token passes all along.
        let b = get(&gw, "/api/tickets/3", Some(&kept)).await;
        assert_eq!(b.status, 200, "{}", b.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    refused.assert_refusal(401, "invalid_token");
    assert_eq!(refused.body["reason"], "unknown_key", "{}", refused.body);
    // And stays refused; the kept key's token keeps passing, from the cache again.
    let a = get(&gw, "/api/tickets/4", Some(&dropped)).await;
    assert_eq!(a.body["reason"], "unknown_key", "{}", a.body);
    for _ in 0..2 {
        let b = get(&gw, "/api/tickets/5", Some(&kept)).await;
        assert_eq!(b.status, 200, "{}", b.body);
    }
}
