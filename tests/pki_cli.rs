//! `milvus-fleet pki`: keys are written 0600 and never over an existing file; the pin
//! printed at creation is the one computed from the certificate; a CSR signs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use assert_cmd::Command;
use tempfile::TempDir;

fn pki(args: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("milvus-fleet")
        .unwrap()
        .arg("pki")
        .args(args)
        .assert()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_and_node_files_have_safe_modes_and_are_never_overwritten() {
    let dir = TempDir::new().unwrap();
    let ca = dir.path().join("ca");
    let ca_arg = ca.to_str().unwrap();
    let created = pki(&["create-ca", "--cluster", "prod", "--out", ca_arg]).success();
    let pin = String::from_utf8(created.get_output().stdout.clone()).unwrap();
    assert_eq!(mode(&ca.join("ca.key")), 0o600);
    assert_eq!(mode(&ca.join("ca.crt")), 0o644);
    let again = pki(&["pin", ca.join("ca.crt").to_str().unwrap()]).success();
    assert_eq!(
        String::from_utf8(again.get_output().stdout.clone()).unwrap(),
        pin
    );

    let refused = pki(&["create-ca", "--cluster", "prod", "--out", ca_arg]).code(1);
    let stderr = String::from_utf8(refused.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("an existing file is never overwritten"),
        "{stderr}"
    );
    let after = pki(&["pin", ca.join("ca.crt").to_str().unwrap()]).success();
    assert_eq!(
        String::from_utf8(after.get_output().stdout.clone()).unwrap(),
        pin,
        "CA unchanged"
    );

    let node = dir.path().join("n1");
    pki(&[
        "issue",
        "--ca",
        ca_arg,
        "--node",
        "n1",
        "--address",
        "10.0.0.1",
        "--out",
        node.to_str().unwrap(),
    ])
    .success();
    assert_eq!(mode(&node.join("node.key")), 0o600);
    assert!(std::fs::read_to_string(node.join("node.crt"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[test]
fn a_node_request_is_signed_by_the_ca() {
    let dir = TempDir::new().unwrap();
    let ca = dir.path().join("ca");
    let node = dir.path().join("n2");
    pki(&[
        "create-ca",
        "--cluster",
        "prod",
        "--out",
        ca.to_str().unwrap(),
    ])
    .success();
    pki(&["csr", "--node", "n2", "--out", node.to_str().unwrap()]).success();
    assert_eq!(mode(&node.join("node.key")), 0o600);
    let cert = node.join("node.crt");
    pki(&[
        "sign",
        "--ca",
        ca.to_str().unwrap(),
        "--csr",
        node.join("node.csr").to_str().unwrap(),
        "--node",
        "n2",
        "--address",
        "10.0.0.2",
        "--out",
        cert.to_str().unwrap(),
    ])
    .success();
    assert!(std::fs::read_to_string(&cert)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let garbage = dir.path().join("garbage.csr");
    std::fs::write(&garbage, "not a request").unwrap();
    let failed = pki(&[
        "sign",
        "--ca",
        ca.to_str().unwrap(),
        "--csr",
        garbage.to_str().unwrap(),
        "--node",
        "n3",
        "--out",
        dir.path().join("n3.crt").to_str().unwrap(),
    ])
    .code(1);
    assert_eq!(
        String::from_utf8(failed.get_output().stderr.clone())
            .unwrap()
            .lines()
            .count(),
        1
    );
    assert!(!dir.path().join("n3.crt").exists());
}
