//! Gates on the built packages (scripts/build-packages.sh makes them): lintian and
//! rpmlint clean, and the .rpm shipping exactly the .deb's files with the same modes.

mod support;

use std::collections::BTreeMap;

use support::{deb_path, rpm_path, run, run_ok};

/// Files only a Debian package has: its changelog, copyright and lintian overrides.
/// RPM keeps the changelog and license in the header instead.
const DEBIAN_ONLY: &[&str] = &[
    "/usr/share/doc/milvus-fleet/changelog.Debian.gz",
    "/usr/share/doc/milvus-fleet/copyright",
    "/usr/share/lintian/overrides/milvus-fleet",
];

/// Path -> permission bits of every regular file in the .deb.
fn deb_files() -> BTreeMap<String, String> {
    let listing = run_ok("dpkg-deb", &["--contents", deb_path().to_str().unwrap()]);
    listing
        .lines()
        .filter(|line| line.starts_with('-'))
        .map(|line| {
            let path = line
                .split_whitespace()
                .last()
                .unwrap()
                .trim_start_matches('.');
            (path.to_owned(), line[..10].to_owned())
        })
        .collect()
}

/// Path -> permission bits of every regular file in the .rpm.
fn rpm_files() -> BTreeMap<String, String> {
    let listing = run_ok("rpm", &["-qlvp", rpm_path().to_str().unwrap()]);
    listing
        .lines()
        .filter(|line| line.starts_with('-'))
        .map(|line| {
            (
                line.split_whitespace().last().unwrap().to_owned(),
                line[..10].to_owned(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs the built packages: scripts/test-all.sh runs it"]
fn lintian_finds_no_errors_or_warnings() {
    let deb = deb_path();
    let out = run(
        "lintian",
        &[
            "--fail-on",
            "error,warning",
            "--display-info",
            deb.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "lintian: {stdout}"
    );
}

#[test]
#[ignore = "needs the built packages: scripts/test-all.sh runs it"]
fn every_lintian_override_says_why() {
    let overrides =
        std::fs::read_to_string(support::repo().join("packaging/debian/lintian-overrides"))
            .unwrap();
    let mut previous = "";
    for line in overrides.lines() {
        if line.starts_with("milvus-fleet:") {
            assert!(
                previous.starts_with('#'),
                "override without a reason above it: {line}"
            );
        }
        previous = line;
    }
}

#[test]
#[ignore = "needs the built packages: scripts/test-all.sh runs it"]
fn rpmlint_finds_no_errors() {
    let config = support::repo().join("packaging/rpm/rpmlint.toml");
    let rpm = rpm_path();
    let out = run(
        "rpmlint",
        &["-c", config.to_str().unwrap(), rpm.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rpmlint: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 errors"), "rpmlint: {stdout}");
}

#[test]
#[ignore = "needs the built packages: scripts/test-all.sh runs it"]
fn rpm_ships_the_same_files_as_the_deb_with_the_same_modes() {
    let mut deb = deb_files();
    for path in DEBIAN_ONLY {
        assert!(deb.remove(*path).is_some(), "{path} is in the .deb");
    }
    let rpm = rpm_files();
    assert!(deb.contains_key("/usr/bin/milvus-fleet"), "{deb:?}");
    assert_eq!(
        deb.keys().collect::<Vec<_>>(),
        rpm.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    assert_eq!(deb, rpm, "modes differ");
}

#[test]
#[ignore = "needs the built packages: scripts/test-all.sh runs it"]
fn rpm_installs_into_a_scratch_root() {
    let root = tempfile::TempDir::new().unwrap();
    let root_arg = root.path().to_str().unwrap();
    run_ok("rpm", &["--root", root_arg, "--initdb"]);
    let rpm = rpm_path();
    run_ok(
        "rpm",
        &[
            "--root",
            root_arg,
            "-i",
            "--nodeps",
            "--noscripts",
            rpm.to_str().unwrap(),
        ],
    );
    for path in [
        "usr/bin/milvus-fleet",
        "etc/milvus-fleet/fleet.toml",
        "usr/lib/systemd/system/milvus-fleet.service",
        "usr/lib/sysusers.d/milvus-fleet.conf",
        "usr/lib/tmpfiles.d/milvus-fleet.conf",
    ] {
        assert!(root.path().join(path).is_file(), "{path} installed");
    }
    let config_files = run_ok("rpm", &["-qcp", rpm.to_str().unwrap()]);
    assert_eq!(
        config_files.trim(),
        "/etc/milvus-fleet/fleet.toml",
        "the config is %config(noreplace)"
    );
}

#[test]
#[ignore = "needs the built packages: scripts/test-all.sh runs it"]
fn deb_marks_the_config_as_conffile_and_depends_on_sysusers() {
    let deb = deb_path();
    let conffiles = run_ok("dpkg-deb", &["--info", deb.to_str().unwrap(), "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/milvus-fleet/fleet.toml");
    let depends = run_ok("dpkg-deb", &["--field", deb.to_str().unwrap(), "Depends"]);
    assert!(
        depends.contains("systemd | systemd-standalone-sysusers"),
        "{depends}"
    );
    let size = std::fs::metadata(&deb).unwrap().len();
    assert!(size < 8 * 1024 * 1024, ".deb is {size} bytes, over 8 MiB");
}
