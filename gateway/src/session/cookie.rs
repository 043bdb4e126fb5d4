//! Reading one cookie out of `Cookie` request headers (RFC 6265 section 5.4).

/// The raw value of the first cookie called `name` across all `Cookie` headers.
///
/// Browsers send one `Cookie` header over HTTP/1.1 but HTTP/2 allows several; both are handled.
pub fn find<'a>(cookie_headers: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    cookie_headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookie_among_others_and_headers() {
        assert_eq!(
            find(["a=1; connect.sid=s%3Ax.y; b=2"], "connect.sid"),
            Some("s%3Ax.y")
        );
        assert_eq!(find(["a=1", "id=\"abc\""], "id"), Some("abc"));
        assert_eq!(find(["xid=1; idx=2"], "id"), None);
        assert_eq!(find(Vec::<&str>::new(), "id"), None);
    }
}
