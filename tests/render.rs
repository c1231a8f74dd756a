//! `milvus-fleet render`: golden files for the worked examples, every rendered file
//! accepted by the tool that will read it (compose v2, systemd, nginx), the set of
//! files a cluster change touches, and bad configurations refused before any write.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_milvus-fleet"));
    cmd.env_remove("MILVUS_FLEET_CONFIG");
    cmd
}

/// Renders `node` of `config` into `out` with the built-in templates; returns the JSON
/// report, or the error line.
fn render(config: &Path, node: &str, out: &Path) -> Result<Value, String> {
    render_with_templates(config, node, out, Path::new("/nonexistent"))
}

fn render_with_templates(
    config: &Path,
    node: &str,
    out: &Path,
    templates: &Path,
) -> Result<Value, String> {
    let output = bin()
        .args(["render", "--no-dropins", "--json", "--node", node])
        .arg("--templates")
        .arg(templates)
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn changed(report: &Value) -> Vec<String> {
    report["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Every file under `dir`, relative path -> contents.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn examples() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    all.sort();
    all
}

fn node_names(config: &Path) -> Vec<String> {
    let out = bin()
        .args(["config", "check", "--json", "--no-dropins", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    json["settings"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Renders every node of every example into `dir/<example>/<node>`.
fn render_examples(dir: &Path) -> Vec<PathBuf> {
    let mut outs = Vec::new();
    for example in examples() {
        let stem = example.file_stem().unwrap().to_string_lossy().into_owned();
        for node in node_names(&example) {
            let out = dir.join(&stem).join(&node);
            render(&example, &node, &out).unwrap();
            outs.push(out);
        }
    }
    outs
}

/// The rendered trees of the examples are checked in under tests/golden/; a change to
/// a template shows up as a diff in review. Regenerate with
/// `MILVUS_FLEET_UPDATE_GOLDEN=1 cargo test --test render`.
#[test]
fn examples_render_to_the_golden_files() {
    let dir = TempDir::new().unwrap();
    render_examples(dir.path());
    let golden = repo().join("tests/golden");
    if std::env::var_os("MILVUS_FLEET_UPDATE_GOLDEN").is_some() {
        let _ = fs::remove_dir_all(&golden);
        for (path, contents) in tree(dir.path()) {
            let target = golden.join(path);
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::write(target, contents).unwrap();
        }
    }
    let rendered = tree(dir.path());
    let expected = tree(&golden);
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the set of rendered files differs from tests/golden"
    );
    for (path, contents) in &rendered {
        assert_eq!(contents, &expected[path], "tests/golden/{path} differs");
    }
}

#[test]
fn rendering_is_deterministic_and_a_second_write_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let example = repo().join("examples/three-node.toml");
    let first = render(&example, "vm2", dir.path()).unwrap();
    assert_eq!(
        changed(&first).len(),
        first["changed"].as_array().unwrap().len()
    );
    assert!(!changed(&first).is_empty());
    let bytes = tree(dir.path());
    let second = render(&example, "vm2", dir.path()).unwrap();
    assert!(changed(&second).is_empty(), "{second}");
    assert_eq!(tree(dir.path()), bytes, "same input, same bytes");
}

fn with_credentials(cmd: &mut Command) -> &mut Command {
    cmd.env("MILVUS_FLEET_S3_ACCESS_KEY_ID", "test-key")
        .env("MILVUS_FLEET_S3_SECRET_ACCESS_KEY", "test-secret")
}

/// The compose v2 CLI validates without an engine (the test command installs it).
#[test]
fn every_rendered_compose_file_passes_docker_compose_config() {
    let dir = TempDir::new().unwrap();
    let mut checked = 0;
    for out in render_examples(dir.path()) {
        for entry in fs::read_dir(out.join("compose")).unwrap() {
            let file = entry.unwrap().path();
            let result = with_credentials(
                Command::new("docker")
                    .args(["compose", "--file"])
                    .arg(&file),
            )
            .args(["config", "--quiet"])
            .output()
            .expect("docker CLI with the compose v2 plugin (scripts/install-prereqs.sh)");
            assert!(
                result.status.success(),
                "{}: {}",
                file.display(),
                String::from_utf8_lossy(&result.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "checked {checked} compose files");
}

#[test]
fn compose_refuses_to_start_without_the_credentials() {
    let dir = TempDir::new().unwrap();
    render(&repo().join("examples/three-node.toml"), "vm1", dir.path()).unwrap();
    let result = Command::new("docker")
        .args(["compose", "--file"])
        .arg(dir.path().join("compose/minio.yaml"))
        .args(["config", "--quiet"])
        .env_remove("MILVUS_FLEET_S3_ACCESS_KEY_ID")
        .env_remove("MILVUS_FLEET_S3_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("missing in the object-storage credentials file"),
        "{stderr}"
    );
}

#[test]
fn no_rendered_file_holds_a_secret() {
    let dir = TempDir::new().unwrap();
    render_examples(dir.path());
    for (path, contents) in tree(dir.path()) {
        for line in contents.lines() {
            if line.contains("SECRET") || line.contains("PASSWORD") {
                assert!(
                    line.contains("${MILVUS_FLEET_S3_SECRET_ACCESS_KEY:?"),
                    "{path}: a secret value is written out: {line}"
                );
            }
        }
    }
}

#[test]
fn every_rendered_unit_passes_systemd_analyze_verify() {
    let dir = TempDir::new().unwrap();
    let target = repo().join("systemd/milvus-fleet.target");
    for out in render_examples(dir.path()) {
        let units: Vec<PathBuf> = fs::read_dir(out.join("units"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let result = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&units)
            .arg(&target)
            .output()
            .unwrap();
        // The package installs /usr/bin/milvus-fleet (the units' health probe); this
        // machine may not have it, which is the only complaint allowed.
        let stderr: String = String::from_utf8_lossy(&result.stderr)
            .lines()
            .filter(|l| !l.contains("Command /usr/bin/milvus-fleet is not executable"))
            .map(|l| format!("{l}\n"))
            .collect();
        let only_missing_binary = !Path::new("/usr/bin/milvus-fleet").exists() && stderr.is_empty();
        assert!(
            (result.status.success() || only_missing_binary) && stderr.is_empty(),
            "{}: {stderr}",
            out.display()
        );
    }
}

#[test]
fn every_rendered_nginx_config_passes_nginx_t() {
    let dir = TempDir::new().unwrap();
    let mut checked = 0;
    for out in render_examples(dir.path()) {
        let conf = out.join("config/lb/nginx.conf");
        if !conf.exists() {
            continue; // a node without the compute role runs no load balancer
        }
        let result = Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("nginx with the stream module (scripts/install-prereqs.sh)");
        assert!(
            result.status.success(),
            "{}: {}",
            conf.display(),
            String::from_utf8_lossy(&result.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 8, "checked {checked} nginx configs");
}

const BASE: &str = r#"
[cluster]
name = "grow"

[[nodes]]
name = "a"
address = "10.1.0.1"

[[nodes]]
name = "b"
address = "10.1.0.2"

[[nodes]]
name = "c"
address = "10.1.0.3"
"#;

/// Renders a, b and c from `before`, then from `after` into the same trees, and
/// returns what the second render changed on each node.
fn changes(before: &str, after: &str) -> BTreeMap<String, Vec<String>> {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("fleet.toml");
    fs::write(&config, before).unwrap();
    for node in ["a", "b", "c"] {
        render(&config, node, &dir.path().join(node)).unwrap();
    }
    fs::write(&config, after).unwrap();
    ["a", "b", "c"]
        .iter()
        .map(|node| {
            let report = render(&config, node, &dir.path().join(node)).unwrap();
            (node.to_string(), changed(&report))
        })
        .collect()
}

#[test]
fn adding_a_compute_node_changes_only_the_load_balancers() {
    let after =
        format!("{BASE}\n[[nodes]]\nname = \"d\"\naddress = \"10.1.0.4\"\nroles = [\"compute\"]\n");
    for (node, files) in changes(BASE, &after) {
        assert_eq!(files, ["config/lb/nginx.conf"], "on {node}");
    }
}

#[test]
fn adding_a_storage_node_changes_etcd_minio_and_load_balancer_settings_only() {
    let after =
        format!("{BASE}\n[[nodes]]\nname = \"d\"\naddress = \"10.1.0.4\"\nroles = [\"storage\"]\n");
    for (node, files) in changes(BASE, &after) {
        // etcd's initial cluster (bootstrap only: no restart), the MinIO pool, and the
        // load balancer's etcd and MinIO upstreams; no Milvus role is touched.
        assert_eq!(
            files,
            [
                "config/etcd-bootstrap.env",
                "config/lb/nginx.conf",
                "config/minio.env"
            ],
            "on {node}"
        );
    }
}

#[test]
fn changing_the_milvus_image_changes_only_the_milvus_roles() {
    let after =
        format!("{BASE}\n[images]\nmilvus = \"registry.example.internal/milvus:v2.6.12\"\n");
    for (node, files) in changes(BASE, &after) {
        assert_eq!(
            files,
            [
                "compose/datanode.yaml",
                "compose/mixcoord.yaml",
                "compose/proxy.yaml",
                "compose/querynode.yaml",
                "compose/streamingnode.yaml"
            ],
            "on {node}"
        );
    }
}

#[test]
fn component_hashes_change_only_for_components_that_must_restart() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("fleet.toml");
    fs::write(&config, BASE).unwrap();
    let out = dir.path().join("a");
    render(&config, "a", &out).unwrap();
    let manifest = |out: &Path| -> Value {
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
    };
    let before = manifest(&out);
    fs::write(
        &config,
        format!("{BASE}\n[[nodes]]\nname = \"d\"\naddress = \"10.1.0.4\"\nroles = [\"storage\"]\n"),
    )
    .unwrap();
    render(&config, "a", &out).unwrap();
    let after = manifest(&out);
    let restart: Vec<&String> = before["components"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, hash)| after["components"][name.as_str()] != **hash)
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        restart,
        ["lb", "minio"],
        "etcd's bootstrap-only change restarts nothing"
    );
}

#[test]
fn files_a_new_render_no_longer_has_are_removed() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("fleet.toml");
    fs::write(&config, BASE).unwrap();
    let out = dir.path().join("a");
    render(&config, "a", &out).unwrap();
    fs::write(
        &config,
        format!("{BASE}\n[cluster]\ntopology = \"standalone-ha\"\n")
            .replace("[cluster]\nname = \"grow\"\n", ""),
    )
    .unwrap();
    let report = render(&config, "a", &out).unwrap();
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(removed.contains(&"compose/querynode.yaml"), "{report}");
    assert!(!out.join("compose/querynode.yaml").exists());
    assert!(out.join("compose/standalone.yaml").exists());
    let unit = fs::read_to_string(out.join("units/milvus-fleet-standalone.service")).unwrap();
    assert!(
        !unit.contains("WantedBy"),
        "the standalone server is started by the leader only"
    );
}

/// Refused before anything is written: the output directory is never created.
fn refused(config_text: &str, node: &str) -> String {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("fleet.toml");
    fs::write(&config, config_text).unwrap();
    let out = dir.path().join("out");
    let err = render(&config, node, &out).unwrap_err();
    assert!(!out.exists(), "nothing written for a refused config");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn bad_configurations_are_refused_before_anything_is_written() {
    let one_storage = "[[nodes]]\nname = \"a\"\naddress = \"10.1.0.1\"\n\n[[nodes]]\nname = \"b\"\naddress = \"10.1.0.2\"\nroles = [\"compute\"]\n";
    let err = refused(one_storage, "a");
    assert!(err.contains("too small for erasure coding"), "{err}");

    let err = refused(&BASE.replace("10.1.0.3", "10.1.0.2"), "a");
    assert!(
        err.contains("key `nodes[2].address`") && err.contains("used twice"),
        "{err}"
    );

    let err = refused(&format!("{BASE}\n[milvus]\nversion = \"2.7\"\n"), "a");
    assert!(
        err.contains("key `milvus.version`") && err.contains("unknown variant `2.7`"),
        "{err}"
    );

    let err = refused(BASE, "nobody");
    assert!(
        err.contains("\"nobody\" is not one of the configured nodes"),
        "{err}"
    );
}

#[test]
fn a_template_in_the_override_directory_replaces_the_built_in_one() {
    let dir = TempDir::new().unwrap();
    let overrides = dir.path().join("templates/config");
    fs::create_dir_all(&overrides).unwrap();
    fs::write(
        overrides.join("milvus-user.yaml"),
        "# site overlay for {{ plan.cluster }}\n",
    )
    .unwrap();
    let config = dir.path().join("fleet.toml");
    fs::write(&config, BASE).unwrap();
    let out = dir.path().join("out");
    let templates = dir.path().join("templates");
    render_with_templates(&config, "a", &out, &templates).unwrap();
    assert_eq!(
        fs::read_to_string(out.join("config/milvus-user.yaml")).unwrap(),
        "# site overlay for grow\n"
    );
    let broken = overrides.join("milvus-user.yaml");
    fs::write(&broken, "{{ plan.no_such_value }}\n").unwrap();
    let fresh = dir.path().join("fresh");
    let err = render_with_templates(&config, "a", &fresh, &templates).unwrap_err();
    assert!(!fresh.exists(), "a broken template writes nothing");
    assert!(err.contains("template config/milvus-user.yaml"), "{err}");
}

#[test]
fn podman_runs_compose_and_its_api_socket_without_a_docker_dependency() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("fleet.toml");
    fs::write(&config, format!("{BASE}\n[runtime]\nengine = \"podman\"\n")).unwrap();
    render(&config, "a", &dir.path().join("a")).unwrap();
    let unit = fs::read_to_string(dir.path().join("a/units/milvus-fleet-proxy.service")).unwrap();
    assert!(
        unit.contains("ExecStartPre=/usr/bin/podman compose --file"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecStart=/usr/bin/milvus-fleet follow --engine-socket /run/podman/podman.sock mf-proxy"),
        "{unit}"
    );
    assert!(unit.contains("Requires=podman.socket"), "{unit}");
    assert!(!unit.contains("docker"), "{unit}");
}

/// `systemd-analyze security`'s overall exposure of a unit file (0 best, 10 worst).
fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .and_then(|(_, level)| level.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level for {}: {text}", unit.display()))
}

#[test]
fn systemd_analyze_security_rates_the_daemon_at_most_2_and_every_unit_is_printed() {
    let mut printed = Vec::new();
    for unit in [
        "milvus-fleet.service",
        "milvus-fleet-apply.service",
        "milvus-fleet-join.service",
        "milvus-fleet-standalone-clear.service",
        "milvus-fleet-renew.service",
    ] {
        let level = exposure(&repo().join("systemd").join(unit));
        printed.push(format!("{unit}: {level}"));
        if unit == "milvus-fleet.service" {
            assert!(level <= 2.0, "the daemon's exposure is {level}");
        }
    }
    // The rendered units run compose as root (they drive the container engine): printed,
    // not bounded; the containers' own limits are in tests/hosts_security.rs.
    let dir = TempDir::new().unwrap();
    for out in render_examples(dir.path()) {
        for entry in fs::read_dir(out.join("units")).unwrap() {
            let unit = entry.unwrap().path();
            printed.push(format!(
                "{}: {}",
                unit.strip_prefix(dir.path()).unwrap().display(),
                exposure(&unit)
            ));
        }
    }
    eprintln!(
        "systemd-analyze security (exposure, 0 best .. 10 worst):\n{}",
        printed.join("\n")
    );
}
