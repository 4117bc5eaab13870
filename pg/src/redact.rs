//! Passwords out of what is printed: a DSN (or a message that contains one)
//! with its password replaced by `***`. For text that may quote a DSN (an
//! error's message, a config value); a parsed DSN shows itself redacted
//! ([`crate::Dsn::redacted`]).

/// `text` with the password of every DSN in it replaced by `***`: the
/// keyword form (`password=secret`, `password = 'it''s \' quoted'`) and the
/// URI form (`postgres://user:secret@host/db`, `...?password=secret`).
/// Works on a whole message, e.g. an error that quotes the DSN.
pub fn redact_dsn(text: &str) -> String {
    redact_uris(&redact_keywords(text))
}

/// `password=VALUE` (any case, spaces around `=` allowed): VALUE is
/// single-quoted (backslash escapes) or runs to the next white space (in a
/// URI's query, to the next `&` or `#`).
fn redact_keywords(s: &str) -> String {
    const KEY: &str = "password";
    let b = s.as_bytes();
    // ASCII lowercasing keeps every byte offset.
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut pos = 0;
    while let Some(off) = lower[pos..].find(KEY) {
        let k = pos + off;
        pos = k + KEY.len();
        let starts_word = k == 0
            || matches!(
                b[k - 1],
                b' ' | b'\t' | b'\n' | b'\r' | b'?' | b'&' | b'"' | b'\'' | b'(' | b',' | b';'
            );
        let mut j = pos;
        while j < b.len() && matches!(b[j], b' ' | b'\t') {
            j += 1;
        }
        if !starts_word || j >= b.len() || b[j] != b'=' {
            continue;
        }
        j += 1;
        while j < b.len() && matches!(b[j], b' ' | b'\t') {
            j += 1;
        }
        let in_query = k > 0 && matches!(b[k - 1], b'?' | b'&');
        let end = value_end(b, j, in_query);
        out.push_str(&s[copied..j]);
        out.push_str("***");
        copied = end;
        pos = end;
    }
    out.push_str(&s[copied..]);
    out
}

fn value_end(b: &[u8], start: usize, in_query: bool) -> usize {
    if b.get(start) == Some(&b'\'') {
        let mut i = start + 1;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'\'' => return i + 1,
                _ => i += 1,
            }
        }
        return b.len();
    }
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() || (in_query && matches!(c, b'&' | b'#')) {
            break;
        }
        i += 1;
    }
    i
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
fn redact_uris(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_len = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_len];
        match authority.rfind('@') {
            Some(userinfo_len) => {
                let userinfo = &authority[..userinfo_len];
                match userinfo.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                        out.push_str(&authority[userinfo_len..]);
                    }
                    None => out.push_str(authority),
                }
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_dsn;

    #[test]
    fn keyword_form() {
        assert_eq!(
            redact_dsn("host=db port=5432 user=ezone password=s3cret dbname=ezone"),
            "host=db port=5432 user=ezone password=*** dbname=ezone"
        );
        assert_eq!(
            redact_dsn("password=s3cret host=db"),
            "password=*** host=db"
        );
        assert_eq!(
            redact_dsn("host=db password=s3cret"),
            "host=db password=***"
        );
        assert_eq!(
            redact_dsn("host=db password = s3cret x=1"),
            "host=db password = *** x=1"
        );
        assert_eq!(
            redact_dsn("host=db PASSWORD=s3cret"),
            "host=db PASSWORD=***"
        );
    }

    #[test]
    fn quoted_keyword_values() {
        assert_eq!(
            redact_dsn("host=db password='with space' dbname=x"),
            "host=db password=*** dbname=x"
        );
        assert_eq!(
            redact_dsn(r"host=db password='it\'s \\ here' dbname=x"),
            "host=db password=*** dbname=x"
        );
        // An unterminated quote: everything after it goes.
        assert_eq!(redact_dsn("user=a password='open"), "user=a password=***");
    }

    #[test]
    fn uri_form() {
        assert_eq!(
            redact_dsn("postgres://ezone:s3cret@db.example:5432/ezone?sslmode=disable"),
            "postgres://ezone:***@db.example:5432/ezone?sslmode=disable"
        );
        assert_eq!(
            redact_dsn("postgresql://ezone@db/ezone"),
            "postgresql://ezone@db/ezone"
        );
        assert_eq!(
            redact_dsn("postgresql://db/ezone?user=a&password=s3cret&sslmode=require"),
            "postgresql://db/ezone?user=a&password=***&sslmode=require"
        );
        assert_eq!(redact_dsn("postgres://u:p@h"), "postgres://u:***@h");
    }

    #[test]
    fn inside_messages_and_untouched_text() {
        assert_eq!(
            redact_dsn(
                "connecting to host=127.0.0.1 port=1 password=hunter2: error connecting to server"
            ),
            "connecting to host=127.0.0.1 port=1 password=*** error connecting to server"
        );
        assert_eq!(
            redact_dsn("a postgres://x:y@h/d and b postgres://z:w@k/d"),
            "a postgres://x:***@h/d and b postgres://z:***@k/d"
        );
        for plain in [
            "password authentication failed for user \"ezone\"",
            "host=db user=ezone dbname=ezone",
            "mypassword=x is not a keyword",
            "",
        ] {
            assert_eq!(redact_dsn(plain), plain);
        }
    }
}
