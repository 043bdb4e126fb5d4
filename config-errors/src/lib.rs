//! Where a TOML config error is, for messages of the form `file:line:col: key.path: message`:
//! the dotted key path of a `serde_path_to_error` path, and the line and column of a byte offset.

/// The dotted TOML key path of a serde path: `route[1].auth`, `session.lookup_timeout_ms`.
/// `Spanned` wrappers deserialize through private field names; they are not keys.
pub fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if bare {
                    out.push_str(key);
                } else {
                    out.push_str(&format!("{key:?}"));
                }
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// 1-based line and column (in characters, as editors count them) of byte `offset` in `text`;
/// an offset past the end or inside a character is clamped, never a panic.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    // Characters, as toml's own messages and editors count them, not bytes.
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}
