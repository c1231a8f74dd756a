//! `milvus-fleet config check` as an operator uses it: merged drop-ins, the worked
//! examples, and one-line errors that say which file, line and key is wrong.

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `config check` on a main file and drop-in directories (no system directories).
fn check(main: &Path, dropin_dirs: &[&Path], extra: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = Command::cargo_bin("milvus-fleet").unwrap();
    cmd.arg("config").arg("check").arg("--config").arg(main);
    if dropin_dirs.is_empty() {
        cmd.arg("--no-dropins");
    }
    for dir in dropin_dirs {
        cmd.arg("--dropin-dir").arg(dir);
    }
    cmd.args(extra).env_remove("MILVUS_FLEET_CONFIG").assert()
}

fn check_json(main: &Path, dropin_dirs: &[&Path]) -> Value {
    let out = check(main, dropin_dirs, &["--json"])
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).expect("config check --json prints JSON")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, text).unwrap();
    path
}

/// Runs a failing check and returns its stderr, after checking that it failed with the
/// configuration exit code, printed one line and nothing on stdout.
fn one_line_error(main: &Path, dropin_dirs: &[&Path]) -> String {
    let assert = check(main, dropin_dirs, &[]).code(3);
    let output = assert.get_output();
    assert!(output.stdout.is_empty(), "nothing on stdout when invalid");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
    stderr
}

const THREE_NODES: &str = r#"
[cluster]
name = "test"

[[nodes]]
name = "a"
address = "10.0.0.1"

[[nodes]]
name = "b"
address = "10.0.0.2"

[[nodes]]
name = "c"
address = "10.0.0.3"
roles = ["witness"]
"#;

#[test]
fn every_worked_example_is_valid() {
    let mut seen = 0;
    for entry in fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let json = check_json(&path, &[]);
        assert_eq!(json["valid"], true, "{}", path.display());
        assert!(
            !json["settings"]["nodes"].as_array().unwrap().is_empty(),
            "{} describes a cluster",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 3, "the examples are there");
}

#[test]
fn examples_show_what_they_say() {
    let json = check_json(&repo().join("examples/milvus-2.5-pulsar.toml"), &[]);
    assert_eq!(json["settings"]["milvus"]["version"], "2.5");
    assert_eq!(json["settings"]["milvus"]["message_queue"], "pulsar");
    let json = check_json(&repo().join("examples/external-services.toml"), &[]);
    assert_eq!(json["settings"]["object_storage"]["kind"], "s3");
    assert_eq!(json["settings"]["etcd"]["mode"], "external");
}

/// The shipped /etc/milvus-fleet/fleet.toml is all comments; uncommenting every
/// setting in it (but the example node) must give exactly the built-in defaults,
/// so the file never documents a default that is not the real one.
#[test]
fn shipped_config_documents_the_real_defaults() {
    let shipped = repo().join("packaging/fleet.toml");
    let dir = TempDir::new().unwrap();
    let defaults = check_json(&shipped, &[]);
    assert_eq!(
        defaults["settings"]["nodes"],
        Value::Array(vec![]),
        "shipped file sets nothing"
    );

    // The [[nodes]] lines are an example, not defaults: leave them out.
    let text = fs::read_to_string(&shipped).unwrap();
    let (before_nodes, rest) = text.split_once("# [[nodes]]").unwrap();
    let after_nodes = &rest[rest.find("\n\n").unwrap()..];
    let uncommented: String = [before_nodes, after_nodes]
        .concat()
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .filter(|line| line.starts_with('[') || line.contains(" = "))
        .map(|line| line.split(" #").next().unwrap().trim_end().to_owned() + "\n")
        .collect();
    let spelled_out = check_json(&write(dir.path(), "spelled-out.toml", &uncommented), &[]);
    for (section, value) in defaults["settings"].as_object().unwrap() {
        assert_eq!(
            &spelled_out["settings"][section], value,
            "section [{section}]"
        );
    }
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let dir = TempDir::new().unwrap();
    let main = write(
        dir.path(),
        "fleet.toml",
        "[cluster]\nname = \"ok\"\n[daemon\napi_port = 1\n",
    );
    let err = one_line_error(&main, &[]);
    assert!(err.contains(&format!("{}:3:8", main.display())), "{err}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let dir = TempDir::new().unwrap();
    let main = write(
        dir.path(),
        "fleet.toml",
        "[daemon]\nlease_ttl_secs = 2\napi_prot = 19500\n",
    );
    let err = one_line_error(&main, &[]);
    assert!(err.contains(&format!("{}:3:1", main.display())), "{err}");
    assert!(err.contains("key `daemon.api_prot`"), "{err}");
    assert!(err.contains("unknown field"), "{err}");
}

#[test]
fn wrong_type_names_file_line_and_key() {
    let dir = TempDir::new().unwrap();
    let main = write(dir.path(), "fleet.toml", "[daemon]\napi_port = \"19500\"\n");
    let err = one_line_error(&main, &[]);
    assert!(err.contains(&format!("{}:2:12", main.display())), "{err}");
    assert!(err.contains("key `daemon.api_port`"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn wrong_type_inside_a_node_names_its_index() {
    let dir = TempDir::new().unwrap();
    let text = THREE_NODES.replace("roles = [\"witness\"]", "roles = [\"arbiter\"]");
    let main = write(dir.path(), "fleet.toml", &text);
    let err = one_line_error(&main, &[]);
    assert!(err.contains("key `nodes[2].roles[0]`"), "{err}");
}

#[test]
fn an_error_in_a_dropin_names_the_dropin() {
    let dir = TempDir::new().unwrap();
    let main = write(dir.path(), "fleet.toml", THREE_NODES);
    let etc = dir.path().join("etc");
    let bad = write(&etc, "50-ports.toml", "[load_balancer]\nport = 19530\n");
    let err = one_line_error(&main, &[&etc]);
    assert!(err.contains(&bad.display().to_string()), "{err}");
    assert!(
        err.contains("key `load_balancer.port`: port 19530 is already used by milvus.proxy_port"),
        "{err}"
    );

    // A rule broken by the main file while the drop-in only sits beside it names the main file.
    let main = write(
        dir.path(),
        "fleet.toml",
        &THREE_NODES.replace("\"b\"", "\"a\""),
    );
    fs::remove_file(&bad).unwrap();
    let err = one_line_error(&main, &[&etc]);
    assert!(
        err.contains(&format!("{}: key `nodes[1].name`", main.display())),
        "{err}"
    );
}

#[test]
fn dropins_merge_in_name_order_and_later_directories_win() {
    let dir = TempDir::new().unwrap();
    let main = write(dir.path(), "fleet.toml", THREE_NODES);
    let usr = dir.path().join("usr-lib");
    let run = dir.path().join("run");
    let etc = dir.path().join("etc");
    write(
        &usr,
        "10-vendor.toml",
        "[daemon]\nlease_ttl_secs = 5\nlog_level = \"debug\"\n",
    );
    write(&usr, "20-port.toml", "[daemon]\napi_port = 1000\n");
    write(&run, "20-port.toml", "[daemon]\napi_port = 2000\n");
    write(&etc, "20-port.toml", "[daemon]\napi_port = 3000\n");
    write(&run, "30-lease.toml", "[daemon]\nlease_ttl_secs = 7\n");
    write(&etc, "ignored.conf", "not toml at all [");

    let json = check_json(&main, &[&usr, &run, &etc]);
    let daemon = &json["settings"]["daemon"];
    assert_eq!(
        daemon["api_port"], 3000,
        "/etc beats /run beats /usr/lib for one name"
    );
    assert_eq!(
        daemon["lease_ttl_secs"], 7,
        "30-lease sorts after 10-vendor"
    );
    assert_eq!(
        daemon["log_level"], "debug",
        "keys not overridden survive the merge"
    );
    assert_eq!(
        json["settings"]["cluster"]["name"], "test",
        "main file values stay"
    );
    let sources: Vec<&str> = json["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(sources.len(), 4, "{sources:?}");
    assert!(sources[0].ends_with("fleet.toml"));
    assert!(sources[2].ends_with("etc/20-port.toml"));
    assert!(sources[3].ends_with("run/30-lease.toml"));
}

#[test]
fn a_dropin_linked_to_dev_null_masks_that_name() {
    let dir = TempDir::new().unwrap();
    let main = write(dir.path(), "fleet.toml", THREE_NODES);
    let usr = dir.path().join("usr-lib");
    let etc = dir.path().join("etc");
    write(&usr, "10-vendor.toml", "[daemon]\napi_port = 1000\n");
    fs::create_dir_all(&etc).unwrap();
    std::os::unix::fs::symlink("/dev/null", etc.join("10-vendor.toml")).unwrap();
    let json = check_json(&main, &[&usr, &etc]);
    assert_eq!(json["settings"]["daemon"]["api_port"], 19500);
    assert_eq!(json["sources"].as_array().unwrap().len(), 1);
}

#[test]
fn arrays_are_replaced_whole_by_a_later_file() {
    let dir = TempDir::new().unwrap();
    let main = write(dir.path(), "fleet.toml", THREE_NODES);
    let etc = dir.path().join("etc");
    write(
        &etc,
        "50-nodes.toml",
        "[object_storage]\nminio_drives_per_node = 4\n[[nodes]]\nname = \"solo\"\naddress = \"10.9.9.9\"\n",
    );
    let json = check_json(&main, &[&etc]);
    let nodes = json["settings"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        nodes[0]["roles"],
        serde_json::json!(["storage", "compute"]),
        "default roles"
    );
}

#[test]
fn toml_output_is_itself_a_valid_config_with_the_same_fingerprint() {
    let dir = TempDir::new().unwrap();
    let main = write(dir.path(), "fleet.toml", THREE_NODES);
    let first = check(&main, &[], &[]).success().get_output().stdout.clone();
    let again = write(
        dir.path(),
        "again.toml",
        std::str::from_utf8(&first).unwrap(),
    );
    let second = check(&again, &[], &[])
        .success()
        .get_output()
        .stdout
        .clone();
    let fingerprint = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .lines()
            .find(|l| l.starts_with("# fingerprint:"))
            .unwrap()
            .to_owned()
    };
    assert_eq!(fingerprint(&first), fingerprint(&second));
}

#[test]
fn a_missing_or_unreadable_main_file_is_named() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = one_line_error(&missing, &[]);
    assert!(
        err.contains(&format!("{}: cannot read", missing.display())),
        "{err}"
    );
}

/// `milvus-fleet probe`, what every component unit's ExecStartPost runs: 200 is healthy,
/// another status is "answers unhealthy", nothing listening is "does not answer".
#[test]
fn probe_tells_healthy_unhealthy_and_silent_apart() {
    use std::io::{Read, Write};
    let serve = |status: &'static str| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten().take(3) {
                let mut stream = stream;
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno"
                );
            }
        });
        port
    };
    let probe = |url: String, wait: Option<&str>| {
        let mut cmd = Command::cargo_bin("milvus-fleet").unwrap();
        cmd.arg("probe").arg(url);
        if let Some(seconds) = wait {
            cmd.args(["--wait", seconds]);
        }
        cmd.output().unwrap()
    };
    let ok = probe(format!("http://127.0.0.1:{}/health", serve("200 OK")), None);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let sick = probe(
        format!(
            "http://127.0.0.1:{}/health",
            serve("503 Service Unavailable")
        ),
        None,
    );
    let stderr = String::from_utf8_lossy(&sick.stderr);
    assert!(
        !sick.status.success() && stderr.contains("answers unhealthy"),
        "{stderr}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let silent = probe(format!("http://127.0.0.1:{port}/"), Some("1"));
    let stderr = String::from_utf8_lossy(&silent.stderr);
    assert!(
        !silent.status.success()
            && stderr.contains("does not answer")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    // The unit's ExecStartPost form: the wait ends when the main process is gone.
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    let gone = exited.id().to_string();
    exited.wait().unwrap();
    let started = std::time::Instant::now();
    let out = Command::cargo_bin("milvus-fleet")
        .unwrap()
        .args(["probe", "--wait", "60", "--main-pid", &gone])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("main process")
            && started.elapsed() < std::time::Duration::from_secs(30),
        "{stderr}"
    );
    let bad = probe("ftp://x".into(), None);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("is not a probe"),
        "{stderr}"
    );
}
