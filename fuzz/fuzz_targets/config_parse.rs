//! Gateway config loading from TOML text (`gateway::config::Config::parse`, which
//! `Config::load` calls after reading the file; parsing reads no files and no environment).
//!
//! Checked, besides "never panics" (an error points at a line and column computed from byte
//! offsets into the text, which multi-byte characters make easy to get wrong):
//! - every error names the file, and a `file:line:col:` prefix points inside the text;
//! - an accepted config meets what `validate` promises: at least one listener, one route and one
//!   signing key; unique route names; path prefixes start with `/`; every route has upstreams;
//!   an authenticating route has an audience and a session source; express sources have secrets;
//! - parsing is deterministic (the same text gives the same answer twice).
#![no_main]

use std::path::PathBuf;

use gateway::config::{AuthPolicy, Config, SessionFlavour};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz/gateway.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = PathBuf::from("/nonexistent/fuzz");
    let parsed = Config::parse(text, FILE, base.clone());
    // FUZZ_PRINT=1 shows the parser's answer when replaying an input.
    static PRINT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *PRINT.get_or_init(|| std::env::var_os("FUZZ_PRINT").is_some()) {
        eprintln!(
            "{:?}",
            parsed.as_ref().map(|_| "accepted").map_err(|e| &e.0)
        );
    }
    match parsed {
        Err(e) => {
            let msg = &e.0;
            assert!(
                msg.starts_with(FILE),
                "error does not name the file: {msg:?}"
            );
            if let Some((line, col)) = position(msg) {
                let lines = text.split('\n').count();
                assert!(line <= lines, "line {line} of {lines}: {msg:?}");
                if line > 0 {
                    // Bytes, not characters: the gateway counts columns in bytes (finding
                    // "config-column-bytes" in fuzz/README.md), so that is the bound checked.
                    let line_len = text.split('\n').nth(line - 1).unwrap().len();
                    assert!(
                        col >= 1 && col <= line_len + 1,
                        "col {col} of {line_len}: {msg:?}"
                    );
                }
            }
            let again = Config::parse(text, FILE, base).unwrap_err();
            assert_eq!(again.0, e.0);
        }
        Ok(cfg) => {
            assert_eq!(cfg.base_dir, base);
            assert!(!cfg.listeners.is_empty());
            assert!(!cfg.routes.is_empty());
            assert!(!cfg.assertion.keys.is_empty());
            let mut names = std::collections::HashSet::new();
            for r in &cfg.routes {
                assert!(
                    names.insert(r.name.get_ref().clone()),
                    "duplicate route name"
                );
                assert!(r.path_prefix.get_ref().starts_with('/'));
                assert!(!r.upstreams.get_ref().is_empty());
                if *r.auth.get_ref() != AuthPolicy::None {
                    assert!(r.audience.is_some());
                    assert!(cfg.session.is_some() || !r.sessions.get_ref().is_empty());
                }
                for s in r.sessions.get_ref() {
                    assert!(cfg.sessions.contains_key(s));
                }
            }
            for s in cfg.session.iter().chain(cfg.sessions.values()) {
                if s.flavour == SessionFlavour::Express {
                    assert!(!s.secrets.is_empty());
                }
            }
            let again = Config::parse(text, FILE, base).expect("accepted once, refused twice");
            assert_eq!(format!("{again:?}"), format!("{cfg:?}"));
        }
    }
});

/// `line` and `col` of a `FILE:line:col: ...` message.
fn position(msg: &str) -> Option<(usize, usize)> {
    let rest = msg.strip_prefix(FILE)?.strip_prefix(':')?;
    let mut it = rest.splitn(3, ':');
    let line = it.next()?.parse().ok()?;
    let col = it.next()?.parse().ok()?;
    Some((line, col))
}
