//! `gateway check` and startup refuse a wrong config with the file, line and key.

mod common;

use std::process::Command;

fn check(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::gateway_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "gateway.toml");
    (out.status.code().unwrap_or(-1), text)
}

const GOOD: &str = r#"
[[listener]]
listen = "127.0.0.1:18080"

[[assertion.keys]]
kid = "k1"
private_key = { file = "signing.pem" }
generate_if_missing = true

[[route]]
name = "app"
upstreams = ["127.0.0.1:3000"]
"#;

#[test]
fn a_good_config_checks_clean_and_check_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, GOOD).unwrap();
    let run = || {
        Command::new(common::gateway_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join("signing.pem").exists(),
        "check makes no files"
    );

    // Once present, the key is read (relative to the config's folder) and must be valid.
    std::fs::write(dir.path().join("signing.pem"), "not a key").unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Ed25519"), "{err}");
}

#[test]
fn unknown_key_is_refused_with_file_line_and_key() {
    let (code, err) = check(&GOOD.replace("name = \"app\"", "name = \"app\"\nupstream = \"x\""));
    assert_eq!(code, 2);
    assert!(
        err.contains("gateway.toml:12:1: unknown field `upstream`"),
        "{err}"
    );
}

#[test]
fn bad_values_are_located() {
    let (code, err) = check(&GOOD.replace("127.0.0.1:18080", "localhost"));
    assert_eq!(code, 2);
    assert!(err.contains("gateway.toml:3:10: listener.listen"), "{err}");

    let (_, err) = check(&GOOD.replace("generate_if_missing = true", ""));
    assert!(
        err.contains("gateway.toml:7:15: assertion.keys[k1].private_key")
            && err.contains("signing.pem"),
        "{err}"
    );

    let (_, err) = check(
        &GOOD
            .replace(
                "private_key = { file = \"signing.pem\" }",
                "private_key = { env = \"GW_TEST_UNSET_KEY\" }",
            )
            .replace("generate_if_missing = true", ""),
    );
    assert!(err.contains("GW_TEST_UNSET_KEY is not set"), "{err}");
}
