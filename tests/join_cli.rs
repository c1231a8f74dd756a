//! `milvus-fleet join --join-file`: a join file that cannot work (no token, a garbled
//! token, readable by others, missing) is refused with one line naming the problem and
//! exit code 4, which milvus-fleet-join.service does not retry; nothing is contacted.

use std::os::unix::fs::PermissionsExt;

use assert_cmd::Command;
use tempfile::TempDir;

/// Runs `join --join-file` on a file with `text` and `mode`; returns (exit code, stderr).
fn join_with(text: Option<&str>, mode: u32) -> (Option<i32>, String) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("join.toml");
    if let Some(text) = text {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let out = Command::cargo_bin("milvus-fleet")
        .unwrap()
        .args(["join", "--join-file", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unusable_join_files_fail_for_good_with_one_line() {
    // 203.0.113.1 (TEST-NET-3) is never reached: every case fails before any connection.
    let server = "server = \"203.0.113.1\"\nroles = [\"compute\"]\n";
    for (text, mode, says) in [
        (Some(server.to_owned()), 0o600, "has no join token"),
        (
            Some(format!("{server}token = \"\"\n")),
            0o600,
            "has no join token",
        ),
        (
            Some(format!("{server}token = \"MFT1-nonsense\"\n")),
            0o600,
            "garbled",
        ),
        (
            Some(format!("{server}token = \"MFT1-x\"\n")),
            0o644,
            "lets others read the join token",
        ),
        (None, 0o600, "No such file"),
        (
            Some(format!("{server}tokn = \"x\"\n")),
            0o600,
            "unknown field",
        ),
    ] {
        let (code, stderr) = join_with(text.as_deref(), mode);
        assert_eq!(code, Some(4), "{says}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with("milvus-fleet: error: ") && stderr.contains(says),
            "{says}: {stderr}"
        );
    }
}
