//! The deployment files: the Kubernetes examples parse, hang together (the config the
//! container reads is the one the ConfigMap mounts; probes hit the admin listener), and the
//! gateway's own `check` accepts every configuration they carry; the Dockerfile copies what
//! exists and starts the binary on the configuration it ships.

use serde_yaml::Value;
use std::path::Path;
use std::process::Command;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Every document of a multi-document YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `portcullis check` on `config` written as `gateway.yaml` in a fresh directory, with the
/// environment the Deployment provides from its Secrets (dummy values of the right shape).
fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    // Upstream names are resolved when a config is loaded; cluster DNS does not exist here, so
    // in-cluster service names become `localhost` (the only change made to the file).
    let config = regex::Regex::new(r"[a-z0-9.-]+\.svc\.cluster\.local")
        .unwrap()
        .replace_all(config, "localhost");
    std::fs::write(&file, config.as_ref()).unwrap();
    let sha = "a".repeat(64);
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(&file)
        .env("TICKETS_API_KEY", "k")
        .env("PAYMENTS_API_KEY", "k")
        .env("APPROVER_ALICE_SHA256", &sha)
        .env("OPS_TOKEN_SHA256", &sha)
        .env(
            "PORTCULLIS_POSTGRES_URL",
            "postgres://gw:pw@db.internal:5432/portcullis",
        )
        .env("PORTCULLIS_REDIS_URL", "rediss://:pw@redis.internal:6380/0")
        .env("PORTCULLIS_ISSUER", "https://idp.example.com")
        .env(
            "PORTCULLIS_JWKS_URL",
            "https://idp.example.com/.well-known/jwks.json",
        )
        .output()
        .unwrap()
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

#[test]
fn kubernetes_examples_parse_hang_together_and_pass_check() {
    let env_ref = regex::Regex::new(r"\$\{env:([A-Z0-9_]+)\}").unwrap();
    for name in ["sidecar.yaml", "edge.yaml"] {
        let docs = documents(&repo("deploy/k8s").join(name));
        for d in &docs {
            assert!(
                d["apiVersion"].is_string() && d["kind"].is_string(),
                "{name}: {d:?}"
            );
            assert!(
                d["metadata"]["name"].is_string(),
                "{name}: every object is named"
            );
        }
        let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
        let cm = kind("ConfigMap").next().expect("a ConfigMap");
        let config = cm["data"]["gateway.yaml"]
            .as_str()
            .expect("gateway.yaml in the ConfigMap");
        let out = check(config);
        assert!(
            out.status.success(),
            "{name}: portcullis check refused the ConfigMap's gateway.yaml:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let gw: Value = serde_yaml::from_str(config).unwrap();
        let admin_port: u64 = gw["listen"]["admin"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();

        let deploy = kind("Deployment").next().expect("a Deployment");
        let spec = get(deploy, &["spec", "template", "spec"]);
        let gateway = spec["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| {
                c["args"]
                    .as_sequence()
                    .is_some_and(|a| a.first() == Some(&"run".into()))
            })
            .expect("a container running `portcullis run`");
        let args: Vec<&str> = gateway["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
        // The file the container reads is the ConfigMap's key, mounted where it looks.
        let mount = gateway["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| config_path.starts_with(m["mountPath"].as_str().unwrap()))
            .expect("the config path is on a mounted volume");
        let vol = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(vol["configMap"]["name"], cm["metadata"]["name"], "{name}");
        assert!(config_path.ends_with("/gateway.yaml"), "{name}");
        // Probes go to the admin listener, where /readyz and /healthz are served.
        let ports = gateway["ports"].as_sequence().unwrap();
        for probe in ["readinessProbe", "livenessProbe"] {
            let p = &gateway[probe]["httpGet"];
            let port = match &p["port"] {
                Value::String(named) => ports.iter().find(|q| q["name"] == named.as_str()).unwrap()
                    ["containerPort"]
                    .as_u64()
                    .unwrap(),
                other => other.as_u64().unwrap(),
            };
            assert_eq!(
                port, admin_port,
                "{name}: {probe} must hit the admin listener"
            );
        }
        assert_eq!(gateway["readinessProbe"]["httpGet"]["path"], "/readyz");
        // Draining: the pod gets longer than the gateway's grace period.
        let grace =
            humantime::parse_duration(gw["server"]["grace_period"].as_str().unwrap()).unwrap();
        assert!(
            spec["terminationGracePeriodSeconds"].as_u64().unwrap() > grace.as_secs(),
            "{name}"
        );
        // Every environment variable the config reads comes from the Deployment.
        for var in env_ref.captures_iter(config) {
            let var = &var[1];
            let named = gateway["env"]
                .as_sequence()
                .is_some_and(|e| e.iter().any(|x| x["name"] == var));
            let from_secret = gateway["envFrom"]
                .as_sequence()
                .is_some_and(|e| !e.is_empty());
            assert!(
                named || from_secret,
                "{name}: ${{env:{var}}} is not provided"
            );
        }
    }
    // The edge shape shares state; the sidecar keeps it embedded.
    let edge = documents(&repo("deploy/k8s/edge.yaml"));
    let cfg: Value =
        serde_yaml::from_str(edge[0]["data"]["gateway.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(cfg["state"]["backend"], "shared");
    assert!(
        edge.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["replicas"]
            .as_u64()
            .unwrap()
            > 1
    );
}

#[test]
fn dockerfile_copies_what_exists_and_runs_the_config_it_ships() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let mut shipped = None;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (dest, sources) = parts.split_last().unwrap();
        for s in sources {
            assert!(
                repo(s).exists(),
                "Dockerfile copies {s}, which is not in the repository"
            );
        }
        if dest.ends_with("gateway.yaml") {
            shipped = Some((sources[0].to_string(), dest.to_string()));
        }
    }
    let (source, dest) = shipped.expect("the image ships a default gateway.yaml");
    assert!(
        text.contains(&format!("\"--config\", \"{dest}\"")),
        "CMD runs {dest}"
    );
    let out = check(&std::fs::read_to_string(repo(&source)).unwrap());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // .dockerignore keeps build output and local state out of the context.
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}
