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
        err.contains("gateway.toml:12:1: route[0].upstream: unknown field `upstream`"),
        "{err}"
    );
}

#[test]
fn bad_values_are_located() {
    let (code, err) = check(&GOOD.replace("127.0.0.1:18080", "localhost"));
    assert_eq!(code, 2);
    assert!(
        err.contains("gateway.toml:3:10: listener[0].listen"),
        "{err}"
    );

    let (_, err) = check(&GOOD.replace("generate_if_missing = true", ""));
    assert!(
        err.contains("gateway.toml:7:15: assertion.keys[0].private_key")
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

/// A value of the wrong type names its key path, not only the line: in a file with several
/// `[[route]]`s, "invalid type: string" alone leaves the reader guessing which setting it is.
#[test]
fn type_errors_name_the_key_path() {
    let session = "\n[session]\nflavour = \"tower-sessions\"\nlookup_timeout_ms = \"1s\"\nstore = { kind = \"sqlite\", path = \"s.db\" }\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{GOOD}{session}"),
            "gateway.toml:16:21: session.lookup_timeout_ms: invalid type: string \"1s\", expected u64",
        ),
        (
            format!("[gateway]\nthreads = \"two\"\n{GOOD}"),
            "gateway.toml:2:11: gateway.threads: invalid type: string \"two\", expected usize",
        ),
        (
            GOOD.replace("listen = \"127.0.0.1:18080\"", "listen = \"127.0.0.1:18080\"\nhttp2 = \"yes\""),
            "gateway.toml:4:9: listener[0].http2: invalid type: string \"yes\", expected a boolean",
        ),
        (
            GOOD.replace("[\"127.0.0.1:3000\"]", "\"a:1\""),
            "gateway.toml:12:13: route[0].upstreams: invalid type: string \"a:1\", expected a sequence",
        ),
        (
            format!("{GOOD}\n[[route]]\nname = \"b\"\nupstreams = [\"127.0.0.1:3001\"]\nauth = \"cookie\"\n"),
            "gateway.toml:17:8: route[1].auth: unknown variant `cookie`, expected one of `none`, `session`, `socketio-handshake`",
        ),
    ];
    for (config, want) in cases {
        let (code, err) = check(&config);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(want), "want {want:?}\n got {err}");
    }
}

/// Errors found after parsing (values that parse but make no sense) name the key path too.
#[test]
fn semantic_errors_name_the_key_path() {
    let two_routes = format!("{GOOD}\n[[route]]\nname = \"b\"\npath_prefix = \"api\"\nupstreams = [\"127.0.0.1:3001\"]\n");
    let (_, err) = check(&two_routes);
    assert!(
        err.contains("gateway.toml:16:15: route[1].path_prefix: must start with '/'"),
        "{err}"
    );
    // A bound of zero is refused where it is written.
    for (key, col) in [
        ("upstream_read_timeout_secs", 30),
        ("upstream_handshake_timeout_ms", 33),
    ] {
        let (_, err) = check(&format!("[gateway]\n{key} = 0\n{GOOD}"));
        assert!(
            err.contains(&format!(
                "gateway.toml:2:{col}: gateway.{key}: invalid value: integer `0`, expected a nonzero u64"
            )),
            "{err}"
        );
    }
    let dup = format!("{GOOD}\n[[route]]\nname = \"app\"\nupstreams = [\"127.0.0.1:3001\"]\n");
    let (_, err) = check(&dup);
    assert!(
        err.contains("gateway.toml:15:8: route[1].name: duplicate route name \"app\""),
        "{err}"
    );
}
