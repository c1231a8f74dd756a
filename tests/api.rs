//! The daemon's API: mutual TLS against the cluster CA (clients without a certificate reach
//! only the join route; with one from another CA, or with an expired one, are refused), the
//! routes with good and bad input, /metrics, and the local Unix socket.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use reqwest::{Certificate, Client, Identity, StatusCode};
use serde_json::Value;
use support::cluster::{client as etcd_client, next_acting, Daemon, Etcd};
use support::pki;
use tempfile::TempDir;

/// `milvus-fleet pki issue` with the CA in `ca` of a `--node` or an `--operator` named
/// `name`, into `out`.
fn issue(ca: &Path, flag: &str, name: &str, out: &Path) {
    pki(&[
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        flag,
        name,
        "--out",
        out.to_str().unwrap(),
    ]);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// An HTTPS client that trusts the cluster CA and presents `identity` (PEM cert + key).
fn https(ca: &Path, identity: Option<String>) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = Client::builder()
        .tls_certs_only([Certificate::from_pem(read(ca).as_bytes()).unwrap()])
        .timeout(Duration::from_secs(5));
    if let Some(pem) = identity {
        builder = builder.identity(Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn get_json(client: &Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// `milvus-fleet status` against a daemon's socket.
fn status_command(socket: &Path, json: bool) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_milvus-fleet"));
    command.arg("status");
    if json {
        command.arg("--json");
    }
    command.arg("--socket").arg(socket).output().unwrap()
}

/// The certificate and key in `dir`: an operator's when there is one, else a node's.
fn identity(dir: &Path) -> String {
    let name = if dir.join("operator.crt").is_file() {
        "operator"
    } else {
        "node"
    };
    read(&dir.join(format!("{name}.crt"))) + &read(&dir.join(format!("{name}.key")))
}

/// A certificate of our CA that expired yesterday.
fn expired_identity(ca_dir: &Path) -> String {
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_dir.join("ca.crt")), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["operator".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.signed_by(&key, &issuer).unwrap().pem() + &key.serialize_pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd-server: scripts/test-all.sh runs it"]
async fn the_api_takes_only_cluster_certificates_and_answers_bad_input_with_4xx() {
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(dir.path());
    let mut etcd_client = etcd_client(&etcd).await;

    let ca = dir.path().join("ca");
    pki(&[
        "create-ca",
        "--cluster",
        "elect",
        "--out",
        ca.to_str().unwrap(),
    ]);
    let mut daemon = Daemon::prepare(dir.path(), "n1", &etcd.endpoints);
    let node_pki = daemon.state.join("pki");
    issue(&ca, "--node", "n1", &node_pki);
    std::fs::copy(ca.join("ca.crt"), node_pki.join("ca.crt")).unwrap();
    let operator = dir.path().join("operator");
    issue(&ca, "--operator", "alice", &operator);
    // Another node's certificate: a member, not an operator.
    let other_node = dir.path().join("other-node");
    issue(&ca, "--node", "n7", &other_node);
    let other_ca = dir.path().join("other-ca");
    let stranger = dir.path().join("stranger");
    pki(&[
        "create-ca",
        "--cluster",
        "elect",
        "--out",
        other_ca.to_str().unwrap(),
    ]);
    issue(&other_ca, "--node", "operator", &stranger);
    daemon.start();
    next_acting(&mut etcd_client, 0, Instant::now(), Duration::from_secs(15)).await;

    let base = format!("https://127.0.0.1:{}", daemon.api_port);
    let ca_cert = ca.join("ca.crt");
    let good = https(&ca_cert, Some(identity(&operator)));
    let status: Value = get_json(&good, format!("{base}/v1/status")).await;
    assert_eq!(status["node"], "n1");
    assert_eq!(status["role"], "leader");

    // A node's certificate is admitted only while etcd records it as the node's current
    // one (written at init and join): before, the connection is dropped.
    let node_cert_hash = {
        use sha2::Digest;
        let pem = read(&other_node.join("node.crt"));
        let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        support::cluster::hex(&sha2::Sha256::digest(&der.contents))
    };
    let unrecorded = https(&ca_cert, Some(identity(&other_node)))
        .get(format!("{base}/v1/status"))
        .send()
        .await;
    assert!(
        unrecorded.is_err(),
        "an unrecorded node certificate was let in: {unrecorded:?}"
    );
    etcd_client
        .put("/milvus-fleet/elect/certs/n7", node_cert_hash.clone(), None)
        .await
        .unwrap();
    let node_client = https(&ca_cert, Some(identity(&other_node)));
    let start = Instant::now();
    let status: Value = loop {
        match node_client.get(format!("{base}/v1/status")).send().await {
            Ok(answer) => break answer.json().await.unwrap(),
            Err(e) => assert!(start.elapsed() < Duration::from_secs(15), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["node"], "n1");
    // A node's certificate may read, not administer: minting tokens, running jobs and
    // cancelling them need an operator.
    for (method, path, body) in [
        ("POST", "/v1/tokens", "{}"),
        ("GET", "/v1/tokens", ""),
        ("POST", "/v1/tokens/rotate", "{}"),
        ("POST", "/v1/tokens/abcdef/revoke", "{}"),
        (
            "POST",
            "/v1/jobs",
            r#"{"type":"drill","steps":1,"sleep_ms":1}"#,
        ),
        ("POST", "/v1/jobs/nope/cancel", "{}"),
    ] {
        let answer = node_client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let error: Value = answer.json().await.unwrap();
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("needs an operator"),
            "{error}"
        );
    }

    // Without a certificate only the join route and /metrics answer (a joining node has
    // none yet, a scraper needs none); every other route is not there for it.
    let anonymous = https(&ca_cert, None);
    let answer = anonymous
        .get(format!("{base}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let answer = anonymous
        .post(format!("{base}/v1/tokens"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        StatusCode::NOT_FOUND,
        "no token for strangers"
    );
    let scraped = anonymous
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    // Revoked (what a node removal writes): refused again, on a new connection.
    etcd_client
        .put("/milvus-fleet/elect/revoked/n7", node_cert_hash, None)
        .await
        .unwrap();
    etcd_client
        .delete("/milvus-fleet/elect/certs/n7", None)
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let fresh = https(&ca_cert, Some(identity(&other_node)));
        if fresh.get(format!("{base}/v1/status")).send().await.is_err() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the revoked certificate still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = anonymous
        .post(format!("{base}/v1/join"))
        .header("content-type", "application/json")
        .body(r#"{"credential":"abcdef.x","name":"n9","address":"127.0.0.9","roles":["compute"],"csr":""}"#)
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_client_error() || answer.status() == StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.status()
    );

    // Refused in the handshake: another CA's certificate, an expired one.
    for (what, client) in [
        (
            "a certificate from another CA",
            https(&ca_cert, Some(identity(&stranger))),
        ),
        (
            "an expired certificate",
            https(&ca_cert, Some(expired_identity(&ca))),
        ),
    ] {
        let result = client.get(format!("{base}/v1/status")).send().await;
        assert!(result.is_err(), "{what} was let in: {result:?}");
    }

    // Bad input gets a 4xx with a message.
    let post = |body: String| {
        good.post(format!("{base}/v1/jobs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases = [
        ("not json", "{ nope".to_owned(), StatusCode::BAD_REQUEST),
        (
            "unknown job type",
            r#"{"type":"reboot-everything"}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "missing field",
            r#"{"type":"drill","steps":3}"#.to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "out of range",
            r#"{"type":"drill","steps":0,"sleep_ms":1}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad resource",
            r#"{"type":"drill","steps":1,"sleep_ms":1,"resource":"../x"}"#.to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, body, expected) in cases {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), expected, "{what}");
        let error: Value = response.json().await.unwrap();
        assert!(
            !error["error"].as_str().unwrap().is_empty(),
            "{what}: a message"
        );
    }
    // Too large: refused before it is read. The server then closes the connection, so the
    // request goes on a client of its own (a pooled connection would be reused after it).
    let huge = format!(r#"{{"type":"drill","pad":"{}"}}"#, "x".repeat(200_000));
    let response = https(&ca_cert, Some(identity(&operator)))
        .post(format!("{base}/v1/jobs"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let missing = good
        .get(format!("{base}/v1/jobs/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Good input: a job is queued and run; a second on its resource conflicts.
    let created = post(r#"{"type":"drill","steps":2,"sleep_ms":300}"#.into())
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let job: Value = created.json().await.unwrap();
    let conflict = post(r#"{"type":"drill","steps":1,"sleep_ms":1}"#.into())
        .await
        .unwrap();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let id = job["id"].as_str().unwrap();
    let start = Instant::now();
    loop {
        let shown: Value = get_json(&good, format!("{base}/v1/jobs/{id}")).await;
        if shown["state"] == "succeeded" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = good
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("milvus_fleet_leader 1"), "{metrics}");
    assert!(
        metrics.contains("milvus_fleet_leader_elections_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("milvus_fleet_jobs{state=\"succeeded\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("milvus_fleet_job_duration_seconds_count 1"),
        "{metrics}"
    );
    let requests: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("milvus_fleet_api_requests_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(requests >= 10, "every request is counted: {requests}");
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("milvus_fleet_api_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        errors >= 7,
        "the bad requests above are counted as errors: {errors}"
    );

    // The local socket: same routes, owner and group only.
    let socket = daemon.runtime.join("api.sock");
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"node\":\"n1\""), "{response}");
    // A follower serves an operator's call itself (a node cannot vouch for an operator to
    // the leader): the job goes into etcd, and the leader runs it.
    let mut follower = Daemon::prepare(dir.path(), "n2", &etcd.endpoints);
    let follower_pki = follower.state.join("pki");
    issue(&ca, "--node", "n2", &follower_pki);
    std::fs::copy(ca.join("ca.crt"), follower_pki.join("ca.crt")).unwrap();
    follower.start();
    let follower_socket = follower.runtime.join("api.sock");
    let start = Instant::now();
    loop {
        let out = status_command(&follower_socket, true);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"follower\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "n2 did not become a follower"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = r#"{"type":"drill","steps":1,"sleep_ms":1,"resource":"forwarded"}"#;
    let mut stream = UnixStream::connect(&follower_socket).unwrap();
    write!(
        stream,
        "POST /v1/jobs HTTP/1.1\r\nHost: local\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(
        answer.to_lowercase().contains("x-served-by: n2"),
        "served by the follower: {answer}"
    );
    let id = answer
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let start = Instant::now();
    loop {
        let shown: Value = get_json(&good, format!("{base}/v1/jobs/{id}")).await;
        if shown["state"] == "succeeded" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(follower);

    // `milvus-fleet status` asks over the socket.
    let status = status_command(&socket, true);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["role"], "leader");
    assert_eq!(status["lease_ttl_secs"], support::cluster::TTL_SECS);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "the configured nodes: {status}");
    assert_eq!(nodes[0], serde_json::json!({"name": "n1", "daemon": "up"}));
    assert_eq!(
        nodes[2],
        serde_json::json!({"name": "n3", "daemon": "down"}),
        "n3 never ran"
    );
    let jobs: u64 = status["jobs"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(jobs, 2, "both jobs are counted: {status}");
    // Join tokens through the CLI and the local socket: the secret is shown once, the CA
    // pin is inside, etcd keeps only the secret's hash.
    let token_cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_milvus-fleet"))
            .arg("token")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap()
    };
    let pin = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_milvus-fleet"))
            .args(["pki", "pin"])
            .arg(ca.join("ca.crt"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let created = token_cli(&["create", "--ttl", "10m", "--uses", "2", "--role", "compute"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let token = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let hash = pin.trim().trim_start_matches("sha256:");
    assert!(token.starts_with(&format!("MFT1-{hash}-")), "{token}");
    let (id, secret) = token.rsplit('-').next().unwrap().split_once('.').unwrap();
    let stored = etcd_client
        .get(format!("/milvus-fleet/elect/tokens/{id}"), None)
        .await
        .unwrap();
    let stored = stored.kvs()[0].value_str().unwrap().to_owned();
    assert!(
        !stored.contains(secret),
        "the secret is not stored: {stored}"
    );
    let listed: Value = serde_json::from_slice(&token_cli(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["state"], "valid");
    assert_eq!(listed[0]["roles"], serde_json::json!(["compute"]));
    assert!(!listed.to_string().contains(secret));
    assert!(token_cli(&["revoke", id]).status.success());
    let listed: Value = serde_json::from_slice(&token_cli(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed[0]["state"], "revoked");
    // Rotation revokes every outstanding token and prints a fresh one.
    assert!(token_cli(&["create"]).status.success());
    let rotated = token_cli(&["rotate"]);
    assert!(String::from_utf8_lossy(&rotated.stderr).contains("revoked 1 outstanding token"));
    let listed: Value = serde_json::from_slice(&token_cli(&["list", "--json"]).stdout).unwrap();
    let fresh = String::from_utf8_lossy(&rotated.stdout).trim().to_owned();
    let fresh_id = fresh.rsplit('-').next().unwrap().split('.').next().unwrap();
    for t in listed.as_array().unwrap() {
        let want = if t["id"] == fresh_id {
            "valid"
        } else {
            "revoked"
        };
        assert_eq!(t["state"], want, "{listed}");
    }
    // Bad input: one line, non-zero, nothing made.
    for (args, says) in [
        (&["create", "--ttl", "8d"][..], "outside"),
        (&["create", "--ttl", "soon"][..], "not a duration"),
        (&["revoke", "../x"][..], "no join token"),
        (&["revoke", "abcdef"][..], "no join token"),
    ] {
        let out = token_cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    let listed: Value = serde_json::from_slice(&token_cli(&["list", "--json"]).stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);

    let human = status_command(&socket, false);
    assert!(String::from_utf8_lossy(&human.stdout).contains("role      leader (term"));
    drop(daemon);
    let gone = status_command(&socket, false);
    assert_eq!(gone.status.code(), Some(1));
    let message = String::from_utf8_lossy(&gone.stderr);
    assert!(
        message.contains("is milvus-fleet.service running?") && message.lines().count() == 1,
        "{message}"
    );
    drop(etcd);
}
