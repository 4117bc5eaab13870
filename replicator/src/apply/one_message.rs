//! A small batch's fast path as one query message.
//!
//! At a steady load every source transaction is a batch of a few row
//! statements. Sent the extended way, each statement is its own Bind,
//! Execute and Sync, and the target answers each Sync with a flush of its
//! own: a TLS record, a `send`, a wake-up of the replicator to read it.
//! Here the batch is one simple-query message instead:
//!
//! ```text
//! BEGIN; EXECUTE ezone_q1(E'0/16B3748', E'2026-12-05T00:27:58.123456Z');
//! EXECUTE ezone_q2(E'7', E'42'); EXECUTE ezone_q3(E'3', NULL)
//! ```
//!
//! answered in one flush (the server sends its replies when the message is
//! done), then `COMMIT` as before once the counts are checked (a statement
//! that touched no row is a conflict, and the batch is rolled back and goes
//! the careful way). The origin's advance (`ezone_q1` above) and the row
//! statements, the same SQL as the extended way's, are prepared once per
//! connection under a name with `PREPARE` (a statement tokio-postgres
//! prepares has a name the client does not expose); the values go as escape
//! literals ([`crate::sql::push_literal`]), which the statement casts from
//! text exactly as it casts a text parameter. A batch with a set statement
//! (arrays: a drain, where one message per batch already holds hundreds of
//! rows) or a value the message cannot carry goes the extended way.

use std::collections::HashMap;
use std::time::SystemTime;

use futures::TryStreamExt;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::error::{classify, ApplyError};
use super::fast::Steps;
use super::statements::MAX_CACHED_STATEMENTS;
use crate::plan::{Step, StepStatement};
use crate::sql::push_literal;

/// The origin's advance, all parameters text like the row statements'.
const ORIGIN_SETUP_TEXT_SQL: &str =
    "SELECT pg_catalog.pg_replication_origin_xact_setup($1::text::pg_lsn, $2::text::timestamptz)";

/// Prepared statements by SQL text, named by this connection: `ezone_q<n>`.
#[derive(Debug, Default)]
pub(super) struct Named {
    names: HashMap<String, String>,
    next: u64,
}

impl Named {
    /// Before a batch of `n` statements is named: if naming them could take
    /// the cache past [`MAX_CACHED_STATEMENTS`], every name is forgotten
    /// and returned, to be dropped at the server (the cache stays bounded
    /// at both ends). Never while a batch is being named, so none of its
    /// own names is dropped before it is sent.
    fn make_room(&mut self, n: usize) -> Option<Vec<String>> {
        (self.names.len() + n > MAX_CACHED_STATEMENTS)
            .then(|| self.names.drain().map(|(_, name)| name).collect())
    }

    /// The name of `sql` with `params` text parameters on `c`, preparing it
    /// on first use.
    async fn name(
        &mut self,
        c: &Client,
        target: &str,
        sql: &str,
        params: usize,
    ) -> Result<String, ApplyError> {
        if let Some(n) = self.names.get(sql) {
            return Ok(n.clone());
        }
        self.next += 1;
        let name = format!("ezone_q{}", self.next);
        let types = vec!["text"; params].join(", ");
        c.batch_execute(&format!("PREPARE {name} ({types}) AS {sql}"))
            .await
            .map_err(|e| classify(target, "preparing a statement", e))?;
        self.names.insert(sql.to_string(), name.clone());
        Ok(name)
    }
}

/// The rows of `steps` if every step is a row statement whose values a
/// query message can carry; `None`: the extended way. (A row statement
/// always has parameters, its key's values at least; `PREPARE` of one
/// without any would need another form.)
pub(super) fn eligible<'s>(steps: &'s [Step<'_>]) -> Option<Vec<&'s crate::sql::Statement>> {
    steps
        .iter()
        .map(|s| match &s.statement {
            StepStatement::Row(st)
                if !st.params.is_empty()
                    && st.params.iter().flatten().all(|v| !v.contains('\0')) =>
            {
                Some(st)
            }
            _ => None,
        })
        .collect()
}

/// The batch's message: BEGIN, the origin's advance to `end_lsn` at
/// `commit_time` (prepared as `origin`), then each row statement by its
/// name.
fn message(
    origin: &str,
    setup: (&str, SystemTime),
    rows: &[(&str, &crate::sql::Statement)],
) -> Option<String> {
    let (end_lsn, commit_time) = setup;
    let time = humantime::format_rfc3339_micros(commit_time).to_string();
    let mut m = String::with_capacity(64 + rows.len() * 64);
    m.push_str("BEGIN; EXECUTE ");
    m.push_str(origin);
    m.push('(');
    push_literal(&mut m, Some(end_lsn));
    m.push_str(", ");
    push_literal(&mut m, Some(&time));
    m.push(')');
    for (name, st) in rows {
        m.push_str("; EXECUTE ");
        m.push_str(name);
        m.push('(');
        for (i, v) in st.params.iter().enumerate() {
            if i > 0 {
                m.push_str(", ");
            }
            if !push_literal(&mut m, v.as_deref()) {
                return None;
            }
        }
        m.push(')');
    }
    Some(m)
}

/// Runs `rows` as one message on `c` (which must be outside a
/// transaction): opens the target transaction and advances the origin in
/// it, and leaves it open for the caller to commit or roll back, as
/// [`super::fast::run_steps`] does after its BEGIN. An `Err` is an error of
/// BEGIN or the origin setup: the transaction is to be rolled back.
pub(super) async fn run(
    c: &Client,
    named: &mut Named,
    target: &str,
    rows: &[&crate::sql::Statement],
    setup: (&str, SystemTime),
) -> Result<Steps, ApplyError> {
    if let Some(names) = named.make_room(rows.len() + 1) {
        let drop: String = names.iter().map(|n| format!("DEALLOCATE {n};")).collect();
        if let Err(e) = c.batch_execute(&drop).await {
            return Ok(Steps::Failed(classify(
                target,
                "dropping prepared statements",
                e,
            )));
        }
    }
    let origin = match named.name(c, target, ORIGIN_SETUP_TEXT_SQL, 2).await {
        Ok(n) => n,
        Err(e) => return Ok(Steps::Failed(e)),
    };
    let mut named_rows = Vec::with_capacity(rows.len());
    for st in rows {
        // Before BEGIN: the caller's ROLLBACK after a failure here finds
        // no transaction, which the server only warns about.
        match named.name(c, target, &st.sql, st.params.len()).await {
            Ok(n) => named_rows.push((n, *st)),
            Err(e) => return Ok(Steps::Failed(e)),
        }
    }
    let refs: Vec<(&str, &crate::sql::Statement)> =
        named_rows.iter().map(|(n, st)| (n.as_str(), *st)).collect();
    let Some(text) = message(&origin, setup, &refs) else {
        return Ok(Steps::Failed(ApplyError::Definite {
            target: target.to_string(),
            detail: "a value holds a NUL byte".to_string(),
        }));
    };
    // Replies in order: BEGIN, the setup, then one per row statement; an
    // error ends the message there (the transaction is then aborted).
    let mut done = 0usize;
    let what = |done: usize| match done {
        0 => "BEGIN".to_string(),
        1 => "pg_replication_origin_xact_setup".to_string(),
        n => format!("applying `{}`", rows[n - 2].sql),
    };
    let stream = match c.simple_query_raw(&text).await {
        Ok(s) => s,
        Err(e) => return Err(classify(target, &what(0), e)),
    };
    futures::pin_mut!(stream);
    let mut touched_all = true;
    loop {
        match stream.try_next().await {
            Ok(Some(SimpleQueryMessage::CommandComplete(n))) => {
                // A row statement touches its row (0: a conflict).
                if done >= 2 && n == 0 {
                    touched_all = false;
                }
                done += 1;
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if done < 2 => return Err(classify(target, &what(done), e)),
            Err(e) => return Ok(Steps::Failed(classify(target, &what(done), e))),
        }
    }
    if done != rows.len() + 2 {
        // Not what Postgres does; the careful path finds out what happened.
        return Ok(Steps::Failed(ApplyError::Definite {
            target: target.to_string(),
            detail: format!(
                "the target answered {done} of the batch's {} statements",
                rows.len() + 2
            ),
        }));
    }
    Ok(if touched_all {
        Steps::Applied
    } else {
        Steps::Conflict
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn st(params: &[Option<&str>]) -> crate::sql::Statement {
        crate::sql::Statement {
            sql: "UPDATE t SET v = $2::text::text WHERE id = $1::text::int".into(),
            params: params.iter().map(|p| p.map(str::to_string)).collect(),
        }
    }

    #[test]
    fn the_message_opens_advances_and_executes_each_row_by_name() {
        let a = st(&[Some("7"), Some("it's")]);
        let b = st(&[Some("8"), None]);
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_733_356_078_123_456);
        let m = message(
            "ezone_q9",
            ("0/16B3748", t),
            &[("ezone_q1", &a), ("ezone_q2", &b)],
        );
        assert_eq!(
            m.as_deref(),
            Some(
                "BEGIN; EXECUTE ezone_q9(E'0/16B3748', E'2024-12-04T23:47:58.123456Z'); \
                 EXECUTE ezone_q1(E'7', E'it''s'); \
                 EXECUTE ezone_q2(E'8', NULL)"
            )
        );
    }

    #[test]
    fn room_is_made_before_a_batch_is_named_never_during_it() {
        let mut named = Named::default();
        for i in 0..MAX_CACHED_STATEMENTS - 1 {
            named
                .names
                .insert(format!("sql {i}"), format!("ezone_q{i}"));
        }
        // A batch of one statement (and the origin's) fits.
        assert_eq!(named.make_room(1), None);
        // Of two it might not: every name goes first.
        let dropped = named.make_room(2).expect("room made");
        assert_eq!(dropped.len(), MAX_CACHED_STATEMENTS - 1);
        assert!(named.names.is_empty());
        assert_eq!(named.make_room(2), None);
    }

    #[test]
    fn a_nul_byte_or_a_set_statement_goes_the_extended_way() {
        let ok = st(&[Some("1"), Some("x")]);
        let nul = st(&[Some("1"), Some("a\0b")]);
        let steps = |s: &crate::sql::Statement| Step {
            statement: StepStatement::Row(s.clone()),
            changes: vec![0],
        };
        assert!(eligible(&[steps(&ok)]).is_some());
        assert!(eligible(&[steps(&ok), steps(&nul)]).is_none());
        let set = Step {
            statement: StepStatement::Set(crate::sql::SetStatement {
                sql: "x".into(),
                arrays: vec![],
                rows: 2,
            }),
            changes: vec![0, 1],
        };
        assert!(eligible(&[steps(&ok), set]).is_none());
        let t = SystemTime::UNIX_EPOCH;
        assert_eq!(message("o", ("0/1", t), &[("q", &nul)]), None);
    }
}
