//! Closing a forced failover's record (`ezone failover close-forced SITE`)
//! once the conflicts it left are repaired: `ezone status` shows an open
//! one until then, `ezone failover history` keeps it after.
//!
//! The order: the record must be there, finished and not closed
//! ([`closable`]); the conflicts are counted at the survivor and at the lost
//! site ([`sites_to_count`], by the caller, which reaches their Postgres)
//! and must all be resolved ([`close_check`]); then [`close`] writes the
//! closing under the record's lock, unless the record changed meanwhile.

use std::time::Duration;

use super::driver::{forced_lock_name, forced_name, now_ms, ForcedRecord};
use super::operations::when;
use crate::store::{StoreError, TopologyStore};

/// How long the lock taken to close a record is leased.
const LOCK_TTL: Duration = Duration::from_secs(5);

/// Why a forced failover's record was not closed.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The record is there but is not a forced failover's.
    #[error("the record ops/{name} is not valid JSON")]
    BadRecord {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    /// The record's lock could not be taken.
    #[error("taking the forced failover's lock")]
    Lock(#[source] StoreError),
    /// The record may not be closed now; what to do.
    #[error("{0}")]
    Refused(String),
    /// The closed record could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The closed record could not be written.
    #[error("writing the closed record")]
    Write(#[source] StoreError),
}

/// SITE's forced-failover record, if there is one.
pub async fn read_forced<S: TopologyStore>(
    store: &S,
    site: &str,
) -> Result<Option<ForcedRecord>, CloseError> {
    let name = forced_name(site);
    match store.read_op(&name).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| CloseError::BadRecord { name, source }),
    }
}

/// Whether SITE's forced-failover record can be closed at all (before the
/// conflicts are counted).
pub fn closable(site: &str, rec: Option<&ForcedRecord>) -> Result<(), String> {
    match rec {
        None => Err(format!(
            "no forced failover of {site} is on record: nothing to close (`ezone status` lists the open ones)"
        )),
        Some(r) if r.closed_at_ms.is_some() => Err(format!(
            "the forced failover {site} -> {} was already closed {} by {}: nothing open to close",
            r.to,
            when(r.closed_at_ms.unwrap_or(0)),
            r.closed_by.as_deref().unwrap_or("?")
        )),
        Some(r) if !r.opened => Err(format!(
            "the forced failover {site} -> {} is not finished (its shards are not open at {} yet): nothing closed; \
             finish it first: `ezone failover site {site} --to {} --force --yes` (or let a replicator do it)",
            r.to, r.to, r.to
        )),
        Some(_) => Ok(()),
    }
}

/// Refuses to close SITE's forced failover while conflicts are pending, or
/// cannot be counted, at any of `counts` (site, unresolved conflicts there).
pub fn close_check(
    site: &str,
    rec: &ForcedRecord,
    counts: &[(String, Result<i64, String>)],
) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut uncounted = false;
    for (name, count) in counts {
        match count {
            Ok(0) => {}
            Ok(n) => problems.push(format!("{n} unresolved conflict(s) at {name}")),
            Err(e) => {
                uncounted = true;
                problems.push(format!("the conflicts at {name} cannot be counted: {e}"))
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing to close the forced failover {site} -> {}: {}; nothing closed. \
         List them with `ezone conflicts list`, repair them with `ezone conflicts resolve --site SITE ...`, then close it{}",
        rec.to,
        problems.join("; "),
        if uncounted {
            format!(
                " ({site}'s writes that had not crossed arrive at {} as conflicts only once {site} is back: both must be reachable)",
                rec.to
            )
        } else {
            String::new()
        }
    ))
}

/// Where the conflicts SITE's forced failover left must be counted before it
/// is closed: the site that took its shards, and SITE itself.
pub fn sites_to_count(site: &str, rec: &ForcedRecord) -> Vec<String> {
    let mut names = vec![rec.to.clone()];
    if rec.to != site {
        names.push(site.to_string());
    }
    names
}

/// Closes SITE's forced-failover record, `counted` being the record as it
/// was when its conflicts were counted: under the record's lock (the one a
/// replicator's recovery takes before opening it), the record is read
/// again and closed (by `holder`, now) only if it is still closable and the
/// same forced failover. The closed record.
pub async fn close<S: TopologyStore>(
    store: &S,
    site: &str,
    counted: &ForcedRecord,
    holder: &str,
) -> Result<ForcedRecord, CloseError> {
    let lock = store
        .lock(&forced_lock_name(site), holder, LOCK_TTL)
        .await
        .map_err(CloseError::Lock)?;
    let mut now = read_forced(store, site).await?;
    if let Err(why) = closable(site, now.as_ref()) {
        lock.release().await.ok();
        return Err(CloseError::Refused(why));
    }
    let Some(mut cur) = now.take() else {
        unreachable!("closable refuses a missing record");
    };
    if cur.at_ms != counted.at_ms || cur.to != counted.to {
        lock.release().await.ok();
        return Err(CloseError::Refused(format!(
            "the forced failover of {site} changed while its conflicts were counted (another forced failover?): nothing closed; run the command again"
        )));
    }
    cur.closed_at_ms = Some(now_ms());
    cur.closed_by = Some(holder.to_string());
    let written = match serde_json::to_vec(&cur) {
        Ok(bytes) => store.write_op(&forced_name(site), &bytes).await,
        Err(e) => {
            lock.release().await.ok();
            return Err(e.into());
        }
    };
    lock.release().await.ok();
    written.map_err(CloseError::Write)?;
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::operations::tests::forced_record;

    #[test]
    fn closing_a_forced_record_needs_an_open_one_and_no_pending_conflicts() {
        let why = closable("beijing", None).unwrap_err();
        assert!(why.contains("no forced failover of beijing"), "{why}");
        let why = closable("beijing", Some(&forced_record(true))).unwrap_err();
        assert!(why.contains("already closed"), "{why}");
        let mut unopened = forced_record(false);
        unopened.opened = false;
        let why = closable("beijing", Some(&unopened)).unwrap_err();
        assert!(why.contains("not finished"), "{why}");
        let open = forced_record(false);
        assert!(closable("beijing", Some(&open)).is_ok());
        let clean = [
            ("shanghai".to_string(), Ok(0)),
            ("beijing".to_string(), Ok(0)),
        ];
        assert!(close_check("beijing", &open, &clean).is_ok());
        let pending = [
            ("shanghai".to_string(), Ok(3)),
            ("beijing".to_string(), Ok(0)),
        ];
        let why = close_check("beijing", &open, &pending).unwrap_err();
        assert!(
            why.contains("3 unresolved conflict(s) at shanghai") && why.contains("nothing closed"),
            "{why}"
        );
        let down = [
            ("shanghai".to_string(), Ok(0)),
            ("beijing".to_string(), Err("connection refused".to_string())),
        ];
        let why = close_check("beijing", &open, &down).unwrap_err();
        assert!(
            why.contains("cannot be counted") && why.contains("back"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_closed_record_says_when_and_by_whom_and_cannot_be_closed_twice() {
        let (_dir, store) = crate::failover::driver::tests::setup().await;
        assert!(read_forced(&store, "beijing").await.unwrap().is_none());
        let open = forced_record(false);
        store
            .write_op(&forced_name("beijing"), &serde_json::to_vec(&open).unwrap())
            .await
            .unwrap();
        let counted = read_forced(&store, "beijing").await.unwrap().unwrap();
        assert_eq!(
            sites_to_count("beijing", &counted),
            vec!["shanghai".to_string(), "beijing".to_string()]
        );
        // Another forced failover of the site since the count: refused.
        let mut other = counted.clone();
        other.at_ms += 1;
        let why = close(&store, "beijing", &other, "op@host pid 4")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("changed while its conflicts were counted"),
            "{why}"
        );
        let closed = close(&store, "beijing", &counted, "op@host pid 4")
            .await
            .unwrap();
        assert_eq!(closed.closed_by.as_deref(), Some("op@host pid 4"));
        assert!(closed.closed_at_ms.is_some());
        assert_eq!(read_forced(&store, "beijing").await.unwrap(), Some(closed));
        let why = close(&store, "beijing", &counted, "op@host pid 4")
            .await
            .unwrap_err()
            .to_string();
        assert!(why.contains("already closed"), "{why}");
        store
            .write_op(&forced_name("shanghai"), b"not json")
            .await
            .unwrap();
        let why = read_forced(&store, "shanghai")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(why, "the record ops/forced/shanghai is not valid JSON");
    }
}
