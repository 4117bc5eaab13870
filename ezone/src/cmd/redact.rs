//! Passwords out of what the commands print: errors through [`describe`],
//! DSNs through `ezone_pg::redact::redact_dsn` (re-exported here).

pub use ezone_pg::redact::redact_dsn;

/// An error for a person to read: its message, then each cause not
/// already quoted by the one before (errors that print their source in
/// their own message would otherwise say it twice), SQLSTATEs with their
/// message, and every DSN password as `***`. What the binary prints for
/// any error, and what the commands put in their reports.
pub fn describe(e: &anyhow::Error) -> String {
    let err: &(dyn std::error::Error + 'static) = e.as_ref();
    redact_dsn(&ezone_replicator::chain(err))
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn describe_says_each_cause_once_and_hides_passwords() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let inner =
            anyhow::Error::new(io).context("cannot read topology file t.toml: No such file");
        let e = inner.context("connecting with host=db password=hunter2");
        assert_eq!(
            describe(&e),
            // (an unquoted value runs to the next blank: the colon after it goes too)
            "connecting with host=db password=*** cannot read topology file t.toml: No such file"
        );
    }
}
