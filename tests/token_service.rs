//! The token service end to end over loopback: client_credentials with a secret and with
//! `private_key_jwt`, token exchange with a person's IdP token, revocation, introspection,
//! per-call upstream tokens verified against the published JWKS, key rotation, and an
//! independent OAuth client (Python's authlib) speaking to the endpoint.

mod support;

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

const SECRET: &str = "pcs_test_secret_for_the_support_bot_0123456789";
const INTROSPECT_SECRET: &str = "pcs_introspection_secret_for_tickets_api_987654";
const PERSON: &str = "alice@example.com";
const REPORTING_SECRET: &str = "pcs_test_secret_for_the_reporting_bot_abcdef012345";

/// A gateway whose token service listens on its own port, with support-bot registered as a
/// client (secret and key) that may act for people of the fixture IdP, a route that requires
/// delegation, and an upstream that receives a minted token per call.
struct Fixture {
    gw: Gateway,
    up: Upstream,
    token_url: String,
    base: String,
    /// support-bot's private key (PKCS#8 PEM) for client assertions.
    client_key: String,
}

/// A port for a token listener, held bound until `release` (called in the config edit, after
/// the gateway's own ports were chosen): two `free_port` calls can return the same port, and a
/// held one cannot be handed out as the proxy or admin port.
fn reserve_port() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

async fn fixture_with(keyring: bool) -> Fixture {
    let key = portcullis::identity::generate_signing_key().unwrap();
    fixture_on(keyring, String::new(), key).await
}

/// The fixture with `shared` appended to the file (e.g. a `state:` section), and `client_key`
/// as support-bot's registered key.
async fn fixture_on(keyring: bool, shared: String, client_key: String) -> Fixture {
    let up = Upstream::start().await;
    let (held, port) = reserve_port();
    let base = format!("http://127.0.0.1:{port}");
    let jwk = portcullis::identity::signing_key_jwk(client_key.as_bytes(), "bot-key-1").unwrap();
    let mut setup = Setup::new(&up);
    setup.extra_upstreams = "  - name: minted-api\n    url: http://@UPSTREAM@\n    credential:\n      mint: {audience: tickets-service, ttl: 30s}\n"
        .replace("@UPSTREAM@", &up.addr.to_string());
    setup.admin = admin_section("") + &shared;
    setup.extra_routes = "  - name: for-a-person\n    methods: [GET]\n    path: /api/on-behalf/{id}\n    upstream: tickets-api\n    scopes: [tickets:read]\n    conditions:\n      - name: delegated\n        claim: {name: act.sub, present: true}\n  - name: minted\n    methods: [GET]\n    path: /minted/{id}\n    upstream: minted-api\n    scopes: [tickets:read]\n".into();
    let gw = Gateway::start_edited(setup, |text| {
        drop(held);
        let dir = regex::Regex::new(r"signing_key_file: (.*)/signing-key.pem")
            .unwrap()
            .captures(&text)
            .unwrap()[1]
            .to_string();
        let mut text = text.replace(
            "  threads: 1\n",
            &format!("  threads: 1\n  token: 127.0.0.1:{port}\n"),
        );
        if keyring {
            let ring = PathBuf::from(&dir).join("keyring");
            portcullis::identity::keyring::Keyring::init(&ring, "ring").unwrap();
            text = regex::Regex::new(r"signing_key_file: .*\n    signing_key_id: local-1")
                .unwrap()
                .replace(&text, format!("signing_keyring: {}", ring.display()))
                .into_owned();
        }
        text = text.replace(
            "token_service:\n  issuer: local\n  default_ttl: 10m\n",
            &format!(
                "token_service:\n  issuer: local\n  default_ttl: 10m\n  audiences: [tickets-service]\n  introspection_clients:\n    - name: tickets-api\n      secret_sha256: \"{}\"\n",
                hash(INTROSPECT_SECRET)
            ),
        );
        text = text.replace(
            "  - id: reporting-bot\n    owner: bob@example.com\n    scopes: [tickets:read]\n",
            &format!(
                "  - id: reporting-bot\n    owner: bob@example.com\n    scopes: [tickets:read]\n    client:\n      secret_sha256: \"{}\"\n    delegation:\n      issuers: [local]\n  - id: ops-bot\n    owner: dan@example.com\n    scopes: [tickets:read]\n",
                hash(REPORTING_SECRET)
            ),
        );
        text.replace(
            "    scopes: [tickets:read, tickets:write]\n",
            &format!(
                "    scopes: [tickets:read, tickets:write]\n    client:\n      secret_sha256: \"{}\"\n      max_token_ttl: 5m\n      keys:\n        - jwk: {}\n    delegation:\n      issuers: [fixture-idp]\n      subjects: [\"*@example.com\"]\n",
                hash(SECRET),
                jwk
            ),
        )
    })
    .await;
    Fixture {
        gw,
        up,
        token_url: format!("{base}/oauth2/token"),
        base,
        client_key,
    }
}

async fn fixture() -> Fixture {
    fixture_with(false).await
}

/// POST a form to the token service; status and JSON body.
async fn post_form(url: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
    let mut rb = client().post(url).form(form);
    if let Some((u, p)) = basic {
        rb = rb.basic_auth(u, Some(p));
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn decode_unverified(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn kid_of(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

/// A client assertion (RFC 7523) for support-bot, signed with `key`.
fn assertion(key: &str, aud: &str, jti: &str, exp_in: i64) -> String {
    let now = now() as i64;
    let claims = json!({
        "iss": "support-bot", "sub": "support-bot", "aud": aud,
        "iat": now, "exp": now + exp_in, "jti": jti,
    });
    let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
    h.kid = Some("bot-key-1".into());
    jsonwebtoken::encode(
        &h,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// support-bot's own token for `tickets:read` (client_credentials with its secret).
async fn own_token(f: &Fixture) -> String {
    let (status, body) = post_form(
        &f.token_url,
        Some(("support-bot", SECRET)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "tickets:read"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

async fn get(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let resp = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn client_credentials_with_a_secret_issues_exactly_what_was_asked_within_the_registry() {
    let f = fixture().await;
    let (status, body) = post_form(
        &f.token_url,
        Some(("support-bot", SECRET)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "tickets:read"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "tickets:read");
    assert_eq!(
        body["expires_in"], 300,
        "capped by the agent's max_token_ttl"
    );
    assert!(body.get("refresh_token").is_none());
    let at = body["access_token"].as_str().unwrap();
    let claims = decode_unverified(at);
    assert_eq!(claims["sub"], "support-bot");
    assert_eq!(claims["client_id"], "support-bot");
    assert_eq!(claims["aud"], "portcullis");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 32));
    let (s, _) = get(&f.gw, "/api/tickets/1", at).await;
    assert_eq!(s, 200, "the issued token works at the gateway");

    // Asking beyond the registry: refused, not silently narrowed.
    let (status, body) = post_form(
        &f.token_url,
        Some(("support-bot", SECRET)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "tickets:read admin:read"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("admin:read"));

    // A wrong secret and an unknown client look the same.
    for (user, pass) in [("support-bot", "wrong"), ("no-such-bot", SECRET)] {
        let (status, body) = post_form(
            &f.token_url,
            Some((user, pass)),
            &[("grant_type", "client_credentials")],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client"))
        );
        assert_eq!(body["error_description"], "client authentication failed");
    }
    // client_secret_post works too; a repeated parameter does not.
    let (status, body) = post_form(
        &f.token_url,
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "support-bot"),
            ("client_secret", SECRET),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "tickets:read tickets:write");
    let (status, body) = post_form(
        &f.token_url,
        Some(("support-bot", SECRET)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "tickets:read"),
            ("scope", "tickets:write"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // The access log is written asynchronously: wait for the lines.
    f.gw.wait_log_line("an issued token", |l| {
        l["event"] == "token" && l["outcome"] == "issued" && l["client"] == "support-bot"
    })
    .await;
    f.gw.wait_log_line("a refused scope", |l| {
        l["event"] == "token" && l["outcome"] == "invalid_scope"
    })
    .await;
}

#[tokio::test]
async fn private_key_jwt_refuses_wrong_keys_replays_and_expired_assertions() {
    let f = fixture().await;
    let cc = |a: String| {
        vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            (
                "client_assertion_type".into(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ),
            ("client_assertion".into(), a),
        ]
    };
    let send = |form: Vec<(String, String)>| {
        let url = f.token_url.clone();
        async move {
            let resp = client().post(url).form(&form).send().await.unwrap();
            let s = resp.status().as_u16();
            (s, resp.json::<Value>().await.unwrap())
        }
    };
    let good = assertion(&f.client_key, &f.token_url, "a-1", 60);
    let (s, body) = send(cc(good.clone())).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        decode_unverified(body["access_token"].as_str().unwrap())["sub"],
        "support-bot"
    );

    let (s, body) = send(cc(good)).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("invalid_client")));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay"),
        "{body}"
    );

    let other_key = portcullis::identity::generate_signing_key().unwrap();
    let (s, body) = send(cc(assertion(&other_key, &f.token_url, "a-2", 60))).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("invalid_client")),
        "{body}"
    );

    let (s, body) = send(cc(assertion(&f.client_key, &f.token_url, "a-3", -120))).await;
    assert_eq!((s, body["error"].as_str()), (401, Some("invalid_client")));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    let (s, body) = send(cc(assertion(
        &f.client_key,
        "https://elsewhere/token",
        "a-4",
        60,
    )))
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("invalid_client")),
        "audience of another server"
    );

    let (s, body) = send(cc(assertion(&f.client_key, &f.token_url, "a-5", 7200))).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("invalid_client")),
        "a two-hour assertion"
    );
}

/// A person's token from the fixture IdP (sub alice), as a web app would hold it.
fn person_token(scopes: &[&str], extra: Value) -> String {
    let mut c = claims_for(FIXTURE_ISS, PERSON, scopes);
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    token_with(c)
}

/// The form of a token exchange of `subject`, with `actor` as the actor_token if given.
fn exchange_form<'a>(subject: &'a str, actor: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
    ];
    if let Some(a) = actor {
        form.push(("actor_token", a));
        form.push((
            "actor_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ));
    }
    form
}

/// A token exchange of `subject` by `client` (HTTP Basic) and/or `actor` (an actor_token).
async fn exchange_as(
    token_url: &str,
    client: Option<(&str, &str)>,
    subject: &str,
    actor: Option<&str>,
) -> (u16, Value) {
    post_form(token_url, client, &exchange_form(subject, actor)).await
}

/// support-bot exchanges `subject`, with `extra` parameters.
async fn exchange(f: &Fixture, subject: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = exchange_form(subject, None);
    form.extend_from_slice(extra);
    post_form(&f.token_url, Some(("support-bot", SECRET)), &form).await
}

#[tokio::test]
async fn token_exchange_names_the_person_and_the_agent_and_never_widens() {
    let f = fixture().await;
    let person = person_token(&["tickets:read", "kb:read"], json!({}));
    let (s, body) = exchange(&f, &person, &[]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    // subject's {tickets:read, kb:read} ∩ agent's {tickets:read, tickets:write}
    assert_eq!(body["scope"], "tickets:read");
    let at = body["access_token"].as_str().unwrap().to_string();
    let c = decode_unverified(&at);
    assert_eq!(c["sub"], PERSON);
    assert_eq!(c["act"], json!({"sub": "support-bot"}));

    // The route requiring delegation accepts it, and the log names both.
    let (s, b) = get(&f.gw, "/api/on-behalf/7", &at).await;
    assert_eq!(s, 200, "{b}");
    let (line, _) =
        f.gw.wait_log_line("the delegated call", |l| {
            l["route"] == "for-a-person" && l["status"] == 200
        })
        .await;
    assert_eq!(line["agent"], "support-bot");
    assert_eq!(line["on_behalf_of"], PERSON);
    // ... and refuses the agent's own token.
    let own = token("support-bot", &["tickets:read"]);
    let (s, b) = get(&f.gw, "/api/on-behalf/7", &own).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (403, Some("condition_failed")),
        "{b}"
    );

    // Widening scope or audience, the wrong actor, the wrong person: refused.
    let (s, b) = exchange(&f, &person, &[("scope", "tickets:write")]).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_scope")),
        "{b}"
    );
    let (s, b) = exchange(&f, &person, &[("audience", "payments")]).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_target")),
        "{b}"
    );
    let (s, b) = exchange(&f, &person, &[("audience", "tickets-service")]).await;
    assert_eq!(s, 200, "a configured audience: {b}");
    let not_me = person_token(
        &["tickets:read"],
        json!({"may_act": {"sub": "reporting-bot"}}),
    );
    let (s, b) = exchange(&f, &not_me, &[]).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert!(b["error_description"].as_str().unwrap().contains("may_act"));
    let mut outsider = claims_for(FIXTURE_ISS, "mallory@evil.test", &["tickets:read"]);
    outsider["aud"] = json!(AUD);
    let (s, b) = exchange(&f, &token_with(outsider), &[]).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    // An agent without a delegation rule may not act for anyone (its own token as actor) ...
    let ops = token("ops-bot", &["tickets:read"]);
    let (s, b) = exchange_as(&f.token_url, None, &person, Some(&ops)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{b}"
    );
    // ... and one whose rule names other issuers may not act on this IdP's people.
    let (s, b) = exchange_as(
        &f.token_url,
        Some(("reporting-bot", REPORTING_SECRET)),
        &person,
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert!(b["error_description"]
        .as_str()
        .unwrap()
        .contains("fixture-idp"));
    // The delegated token cannot be exchanged again by the same agent (a cycle), nor does
    // anything reach further than depth 2 here.
    let (s, b) = exchange(&f, &at, &[]).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
}

#[tokio::test]
async fn a_revoked_token_is_refused_on_the_next_call_and_introspects_inactive() {
    let f = fixture().await;
    let at = own_token(&f).await;
    assert_eq!(get(&f.gw, "/api/tickets/1", &at).await.0, 200);

    let introspect = |tok: String| {
        let url = format!("{}/oauth2/introspect", f.base);
        async move {
            post_form(
                &url,
                Some(("tickets-api", INTROSPECT_SECRET)),
                &[("token", &tok)],
            )
            .await
        }
    };
    let (s, b) = introspect(at.clone()).await;
    assert_eq!(s, 200);
    assert_eq!(b["active"], true, "{b}");
    assert_eq!(b["sub"], "support-bot");
    assert_eq!(b["scope"], "tickets:read");
    // Agents may not introspect.
    let (s, b) = post_form(
        &format!("{}/oauth2/introspect", f.base),
        Some(("support-bot", SECRET)),
        &[("token", &at)],
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (401, Some("invalid_client")));

    // Another client may not revoke it (a prompt-injected agent cutting off a peer); its own
    // client may.
    let (s, b) = post_form(
        &format!("{}/oauth2/revoke", f.base),
        Some(("reporting-bot", REPORTING_SECRET)),
        &[("token", &at)],
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{b}"
    );
    assert_eq!(
        get(&f.gw, "/api/tickets/1", &at).await.0,
        200,
        "still valid"
    );
    let (s, _) = post_form(
        &format!("{}/oauth2/revoke", f.base),
        Some(("support-bot", SECRET)),
        &[("token", &at), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = get(&f.gw, "/api/tickets/1", &at).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (401, Some("token_revoked")),
        "{b}"
    );
    let (_, b) = introspect(at.clone()).await;
    assert_eq!(b, json!({"active": false}));
    // A revoked token cannot be turned into a new one as the actor of an exchange.
    let person = person_token(&["tickets:read"], json!({}));
    let (s, b) = exchange_as(&f.token_url, None, &person, Some(&at)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert!(
        b["error_description"].as_str().unwrap().contains("revoked"),
        "{b}"
    );
    // A paused agent gets no token at all.
    let paused = client()
        .post(f.gw.admin_url("/api/agents/support-bot/pause"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"reason": "acting strangely"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200, "{}", paused.text().await.unwrap());
    let (s, b) = post_form(
        &f.token_url,
        Some(("support-bot", SECRET)),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{b}"
    );
    assert!(
        b["error_description"].as_str().unwrap().contains("paused"),
        "{b}"
    );
    // Garbage is answered 200 too (RFC 7009 §2.2).
    let (s, _) = post_form(
        &format!("{}/oauth2/revoke", f.base),
        Some(("support-bot", SECRET)),
        &[("token", "not-a-token")],
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn the_upstream_gets_a_per_call_token_it_verifies_against_the_published_jwks() {
    let f = fixture().await;
    let person = person_token(&["tickets:read"], json!({}));
    let (_, body) = exchange(&f, &person, &[]).await;
    let at = body["access_token"].as_str().unwrap().to_string();
    let (s, b) = get(&f.gw, "/minted/5", &at).await;
    assert_eq!(s, 200, "{b}");
    let seen = f.up.seen().into_iter().last().unwrap();
    let header = seen.header("authorization").unwrap().to_string();
    let jwt = header.strip_prefix("Bearer ").unwrap();
    assert_ne!(jwt, at, "never the agent's own token");

    // A real verifier: keys from the JWKS endpoint, signature, issuer, audience, expiry.
    let meta: Value = client()
        .get(format!("{}/.well-known/oauth-authorization-server", f.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["token_endpoint"], f.token_url);
    let jwks: jsonwebtoken::jwk::JwkSet = client()
        .get(meta["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks
        .find(&kid_of(jwt))
        .expect("the signing key is published");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["tickets-service"]);
    v.set_issuer(&[meta["issuer"].as_str().unwrap()]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .expect("verifies")
        .claims;
    assert_eq!(claims["sub"], PERSON);
    assert_eq!(claims["act"]["sub"], "support-bot");
    assert_eq!(claims["scope"], "tickets:read");
    let life = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(life, 30);
    // Another key does not verify it (the check above is not a formality).
    let other = portcullis::identity::signing_key_jwk(
        portcullis::identity::generate_signing_key()
            .unwrap()
            .as_bytes(),
        "x",
    )
    .unwrap();
    let other: jsonwebtoken::jwk::Jwk = serde_json::from_value(other).unwrap();
    assert!(
        jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(&other).unwrap(), &v).is_err()
    );
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key() {
    let f = fixture_with(true).await;
    let old = own_token(&f).await;
    let old_kid = kid_of(&old);
    assert!(old_kid.starts_with("ring-"), "{old_kid}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "rotate", "-c"])
        .arg(f.gw.layout.config_path())
        .args(["--prefix", "ring"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(reload(&f.gw).await.status(), 200);
    let new = own_token(&f).await;
    assert_ne!(kid_of(&new), old_kid, "signed with the new key");
    assert_eq!(
        get(&f.gw, "/api/tickets/1", &old).await.0,
        200,
        "old token still valid"
    );
    assert_eq!(get(&f.gw, "/api/tickets/1", &new).await.0, 200);
    let jwks: Value = client()
        .get(format!("{}/.well-known/jwks.json", f.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&kid_of(&new).as_str()),
        "{kids:?}"
    );
}

/// An independent OAuth client: Python's authlib (client_secret_basic and private_key_jwt),
/// with its own JOSE implementation verifying the token against our JWKS.
#[tokio::test]
async fn an_independent_oauth_client_obtains_and_verifies_tokens() {
    let f = fixture().await;
    let script = format!(
        r#"
import json, sys
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.jose import jwt, JsonWebKey
import requests

meta = requests.get("{base}/.well-known/oauth-authorization-server").json()
s = OAuth2Session("support-bot", "{secret}", scope="tickets:read")
t1 = s.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
from joserfc.jwk import ECKey
key = ECKey.import_key(open(sys.argv[1]).read())
s2 = OAuth2Session("support-bot", key, token_endpoint_auth_method="private_key_jwt", scope="tickets:read")
s2.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"], alg="ES256"))
t2 = s2.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
keys = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"]).json())
claims = jwt.decode(t2["access_token"], keys)
claims.validate()
print(json.dumps({{"t1": t1["scope"], "t2": t2["scope"], "sub": claims["sub"], "iss": claims["iss"]}}))
"#,
        base = f.base,
        secret = SECRET
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.pem");
    std::fs::write(&key, &f.client_key).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&key)
        .output()
        .await
        .expect("python3 runs (scripts/test.sh installs authlib)");
    assert!(
        out.status.success(),
        "authlib client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!({"t1": "tickets:read", "t2": "tickets:read", "sub": "support-bot", "iss": "https://portcullis.local"})
    );
}

#[tokio::test]
async fn an_agent_acting_for_an_agent_acting_for_a_person_carries_the_whole_chain() {
    let f = fixture().await;
    let person = person_token(&["tickets:read", "tickets:write"], json!({}));
    let (_, b) = exchange(&f, &person, &[]).await;
    let first = b["access_token"].as_str().unwrap().to_string();
    // reporting-bot may act on tokens from the gateway's own issuer: it takes over
    // support-bot's delegated token.
    let (s, b) = exchange_as(
        &f.token_url,
        Some(("reporting-bot", REPORTING_SECRET)),
        &first,
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    // person {read, write} ∩ support-bot {read, write} ∩ reporting-bot {read}
    assert_eq!(b["scope"], "tickets:read");
    let second = b["access_token"].as_str().unwrap().to_string();
    let c = decode_unverified(&second);
    assert_eq!(c["sub"], PERSON);
    assert_eq!(
        c["act"],
        json!({"sub": "reporting-bot", "act": {"sub": "support-bot"}})
    );
    let (s, body) = get(&f.gw, "/api/on-behalf/3", &second).await;
    assert_eq!(s, 200, "{body}");
    let (line, _) =
        f.gw.wait_log_line("the chained call", |l| {
            l["agent"] == "reporting-bot" && l["route"] == "for-a-person"
        })
        .await;
    assert_eq!(line["on_behalf_of"], PERSON);
    assert_eq!(line["prior_actors"], json!(["support-bot"]));
    // A third hop is deeper than the default depth of 2, and support-bot may not act on the
    // gateway's own tokens anyway.
    let (s, b) = exchange(&f, &second, &[]).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    // The chain cannot be forged: a token an agent signs itself is not trusted, and one
    // claiming `act` from the fixture IdP names whoever the IdP says, not the caller.
    let forged = token_with(json!({
        "iss": "https://evil.test", "aud": AUD, "sub": PERSON, "iat": now(), "exp": now() + 60,
        "act": {"sub": "support-bot"}, "scope": "tickets:read",
    }));
    assert_eq!(get(&f.gw, "/api/on-behalf/3", &forged).await.0, 401);
}

/// The external-token-service path: gateway A mints a token per call and exchanges it at
/// gateway B's token endpoint (a real second token service, trusting A's published JWKS); the
/// upstream receives B's token, and A asks B once while the answer stays fresh.
#[tokio::test]
async fn an_upstream_credential_exchanged_at_another_token_service_is_cached() {
    let up = Upstream::start().await;
    let ((a_held, a_port), (b_held, b_port)) = (reserve_port(), reserve_port());
    let b_token_url = format!("http://127.0.0.1:{b_port}/oauth2/token");
    let edge_secret = "pcs_secret_of_gateway_a_at_the_sts_0123456789abcdef";
    let mut setup = Setup::new(&up);
    setup.extra_upstreams = format!(
        "  - name: sts-api\n    url: http://{}\n    credential:\n      exchange: {{token_url: \"{b_token_url}\", client_id: edge-gateway, client_secret: \"{edge_secret}\", audience: tickets-service}}\n",
        up.addr
    );
    setup.extra_routes = "  - name: via-sts\n    methods: [GET]\n    path: /sts/{id}\n    upstream: sts-api\n    scopes: [tickets:read]\n".into();
    let a = Gateway::start_edited(setup, |text| {
        drop(a_held);
        text.replace(
            "  threads: 1\n",
            &format!("  threads: 1\n  token: 127.0.0.1:{a_port}\n"),
        )
    })
    .await;

    // B: its own issuer name, A's keys trusted as issuer `edge` (its JWKS over HTTP), and A
    // registered as a client that may act on `edge` tokens.
    let sts_up = Upstream::start().await;
    let b = Gateway::start_edited(Setup::new(&sts_up), |text| {
        drop(b_held);
        let text = text
            .replace(
                "  threads: 1\n",
                &format!("  threads: 1\n  token: 127.0.0.1:{b_port}\n"),
            )
            .replace("issuer: https://portcullis.local", "issuer: https://sts.local")
            .replace(
                "token_service:\n  issuer: local\n  default_ttl: 10m\n",
                &format!(
                    "  - name: edge\n    issuer: https://portcullis.local\n    audiences: [\"{b_token_url}\"]\n    algorithms: [ES256]\n    jwks_url: http://127.0.0.1:{a_port}/.well-known/jwks.json\ntoken_service:\n  issuer: local\n  default_ttl: 10m\n  audiences: [tickets-service]\n"
                ),
            );
        text.replace(
            "agents:\n",
            &format!(
                "agents:\n  - id: edge-gateway\n    owner: sre@example.com\n    scopes: [tickets:read]\n    client:\n      secret_sha256: \"{}\"\n    delegation:\n      issuers: [edge]\n",
                hash(edge_secret)
            ),
        )
    })
    .await;

    let tok = token("support-bot", &["tickets:read"]);
    for i in 0..3 {
        let (s, body) = get(&a, &format!("/sts/{i}"), &tok).await;
        assert_eq!(s, 200, "{body}");
    }
    let seen = up.seen();
    let bearer: Vec<String> = seen
        .iter()
        .map(|x| x.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(bearer.len(), 3);
    assert!(
        bearer.iter().all(|h| *h == bearer[0]),
        "cached between calls"
    );
    let jwt = bearer[0].strip_prefix("Bearer ").unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet = client()
        .get(format!("http://127.0.0.1:{b_port}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["tickets-service"]);
    v.set_issuer(&["https://sts.local"]);
    let key = DecodingKey::from_jwk(jwks.find(&kid_of(jwt)).unwrap()).unwrap();
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &v).unwrap().claims;
    assert_eq!(claims["sub"], "support-bot");
    assert_eq!(claims["act"], json!({"sub": "edge-gateway"}));
    assert_eq!(claims["scope"], "tickets:read");
    let (_, lines) = b
        .wait_log_line("the exchange at the STS", |l| {
            l["event"] == "token" && l["outcome"] == "issued"
        })
        .await;
    let issued = lines
        .iter()
        .filter(|l| l["event"] == "token" && l["outcome"] == "issued")
        .count();
    assert_eq!(issued, 1, "one exchange for three calls");

    // The STS is gone: a call that needs a new exchange (another agent) is refused and
    // nothing reaches the tool; the cached one still passes while fresh.
    drop(b);
    let other = token("reporting-bot", &["tickets:read"]);
    let (s, body) = get(&a, "/sts/9", &other).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("upstream_credential_unavailable")),
        "{body}"
    );
    assert_eq!(up.hits(), 3);
    assert_eq!(get(&a, "/sts/10", &tok).await.0, 200);
    assert_eq!(up.hits(), 4);
}

/// Replicas sharing state remember client assertions together: an assertion used at one is a
/// replay at the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_used_at_one_replica_is_a_replay_at_the_other() {
    let pg = tokio::task::block_in_place(support::stores::PgServer::start);
    let redis = tokio::task::block_in_place(support::stores::RedisServer::start);
    let shared = format!(
        "state:\n  backend: shared\n  postgres: {{url: \"{}\"}}\n  redis: {{url: \"{}\"}}\n",
        pg.url(),
        redis.url()
    );
    let key = portcullis::identity::generate_signing_key().unwrap();
    let a = fixture_on(false, shared.clone(), key.clone()).await;
    let b = fixture_on(false, shared, key.clone()).await;
    let form = |jwt: &str| {
        vec![
            ("grant_type".to_string(), "client_credentials".to_string()),
            (
                "client_assertion_type".into(),
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ),
            ("client_assertion".into(), jwt.to_string()),
        ]
    };
    // The assertion names the issuer (accepted by both) rather than one replica's URL.
    let jwt = assertion(&key, "https://portcullis.local", "shared-1", 60);
    let first = client()
        .post(&a.token_url)
        .form(&form(&jwt))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());
    let again = client()
        .post(&b.token_url)
        .form(&form(&jwt))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401);
    let body: Value = again.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay"),
        "{body}"
    );
}
