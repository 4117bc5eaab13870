//! What every layer shares about errors: the boxed error a body yields, an
//! error with its causes as one line (for the log, and for the answers that
//! may say what went wrong), and the form of the router's own answers.
//!
//! The request path's own error, classified by whose fault it is and whether
//! the client may retry, is `proxy::error::ProxyError`.

/// The error of every body the router passes around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `e` and its sources, `: `-separated.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The body of an answer of the router's own (an error, a peer's probe):
/// `ezone: {text}` and a newline, served as [`ANSWER_CONTENT_TYPE`].
pub fn answer_text(text: &str) -> String {
    format!("ezone: {text}\n")
}

/// The `Content-Type` of the router's own answers.
pub const ANSWER_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Whether `e` or one of its sources is a `T`.
pub fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<T>() {
            return true;
        }
        cur = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_and_finds_each() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&e), "outer: inner");
        assert!(caused_by::<std::io::Error>(&e));
        assert!(caused_by::<Outer>(&e));
        assert!(!caused_by::<std::fmt::Error>(&e));
    }
}
