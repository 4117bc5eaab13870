//! Passwords from a libpq password file (`passfile`, `~/.pgpass` format), so
//! that no password need be written into a DSN, a config or the topology.
//!
//! Each line is `hostname:port:database:username:password`; `*` in any of
//! the first four fields matches anything; `\:` and `\\` escape a colon and
//! a backslash; lines starting with `#` are comments. The first matching line
//! wins. As libpq does, a file that others than its owner can read is not
//! used; unlike libpq (which warns and ignores it) we refuse it, with the fix.

use std::path::Path;

use crate::dsn::DsnError;

/// What a line must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
}

/// The password of the first line of `path` matching `key`, if any.
pub fn lookup(path: &Path, key: &Key) -> Result<Option<String>, DsnError> {
    check_mode(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
    Ok(find(&text, key))
}

fn unreadable(path: &Path, e: std::io::Error) -> DsnError {
    DsnError::new(
        "passfile",
        format!(
            "cannot read {}: {e}; check the path and its permissions",
            path.display()
        ),
    )
}

/// The password of the first matching line of a password file's text.
pub fn find(text: &str, key: &Key) -> Option<String> {
    let port = key.port.to_string();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        let [host, p, db, user, password] = fields.as_slice() else {
            continue;
        };
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(host, &key.host)
            && matches(p, &port)
            && matches(db, &key.dbname)
            && matches(user, &key.user)
        {
            return Some(password.clone());
        }
    }
    None
}

/// The five fields of a line, escapes resolved. The password field keeps
/// everything after the fourth unescaped colon.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if let Some(last) = fields.last_mut() {
                        last.push(next);
                    }
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(last) = fields.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    fields
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), DsnError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| unreadable(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(DsnError::new(
            "passfile",
            format!(
                "{} can be read by others than its owner; fix: chmod 0600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> Result<(), DsnError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            host: "db1".into(),
            port: 5432,
            dbname: "app".into(),
            user: "repl".into(),
        }
    }

    #[test]
    fn first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    db2:5432:app:repl:wrong\n\
                    db1:*:app:repl:p\\:a\\\\ss:word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, &key()).as_deref(), Some("p:a\\ss:word"));
        let other = Key {
            host: "elsewhere".into(),
            ..key()
        };
        assert_eq!(find(text, &other).as_deref(), Some("fallback"));
        assert_eq!(find("db1:5432:app:repl\n", &key()), None, "four fields");
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ezone-pg-passfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgpass");
        std::fs::write(&path, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = lookup(&path, &key()).unwrap_err();
        assert!(e.why.contains("chmod 0600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, &key()).unwrap().as_deref(), Some("secret"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
