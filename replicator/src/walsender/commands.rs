//! The replication commands a link uses, typed (PostgreSQL 15 syntax, see
//! "Streaming Replication Protocol" in the Postgres docs):
//!
//! ```text
//! IDENTIFY_SYSTEM
//!   -> systemid, timeline, xlogpos, dbname
//! CREATE_REPLICATION_SLOT "s" [TEMPORARY] LOGICAL pgoutput (SNAPSHOT 'export'|'nothing')
//!   -> slot_name, consistent_point, snapshot_name, output_plugin
//! DROP_REPLICATION_SLOT "s" [WAIT]
//! START_REPLICATION SLOT "s" LOGICAL 0/16B3748
//!     (proto_version '1', publication_names '"p1","p2"', messages 'true')
//!   -> CopyBothResponse, then the stream (see super::stream)
//! ```
//!
//! Quoting: the replication command scanner takes identifiers in double
//! quotes (`""` for a quote) and string literals in single quotes (`''` for
//! a quote, no backslash escapes). `publication_names` is a string literal
//! holding a comma-separated list of identifiers, so each publication name is
//! double-quoted inside it and the whole list then single-quoted. Slot names
//! are additionally checked against Postgres' own rule (1 to 63 of `a-z`,
//! `0-9`, `_`) before anything is sent, so a bad name is a configuration
//! error naming the slot rather than a server round trip.

use super::conn::ReplicationConn;
use super::error::SourceError;
use super::stream::ReplicationStream;
use super::wire::Frame;
use crate::lsn::Lsn;
use postgres_protocol::message::backend::Message;

/// The longest slot name Postgres accepts (`NAMEDATALEN - 1`).
pub const MAX_SLOT_NAME_LEN: usize = 63;

/// What `IDENTIFY_SYSTEM` says about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier (from `initdb`): a restored or
    /// re-initialised cluster has a new one, so a link can notice it is
    /// talking to a different server than before.
    pub systemid: u64,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database of this connection (`None` only on a physical
    /// replication connection, which this client never opens).
    pub dbname: Option<String>,
}

/// A slot created by [`ReplicationConn::create_logical_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot's name.
    pub slot_name: String,
    /// The first position the slot can stream from: every transaction that
    /// commits after it is decoded, every one before it is in the snapshot.
    pub consistent_point: Lsn,
    /// The exported snapshot (`SNAPSHOT 'export'`): the state of the
    /// database exactly at `consistent_point`. See
    /// [`ReplicationConn::create_logical_slot`] for how long it lives.
    pub snapshot_name: Option<String>,
    /// The output plugin (`pgoutput`).
    pub output_plugin: Option<String>,
}

impl ReplicationConn {
    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        const DURING: &str = "IDENTIFY_SYSTEM";
        let rows = self.query("IDENTIFY_SYSTEM", DURING).await?;
        let row = single_row(self, &rows, 4, DURING)?;
        let systemid = parse_field(self, row, 0, "systemid", DURING, |s| s.parse::<u64>().ok())?;
        let timeline = parse_field(self, row, 1, "timeline", DURING, |s| s.parse::<u32>().ok())?;
        let xlogpos = parse_field(self, row, 2, "xlogpos", DURING, |s| s.parse::<Lsn>().ok())?;
        Ok(SystemInfo {
            systemid,
            timeline,
            xlogpos,
            dbname: row[3].clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] LOGICAL pgoutput (SNAPSHOT ...)`.
    ///
    /// A `temporary` slot is dropped by the server when this connection
    /// ends (also on error); use it for checks, never for a link.
    ///
    /// With `export_snapshot`, the result names a snapshot that another,
    /// ordinary connection can adopt to copy the tables exactly as of
    /// `consistent_point` (`BEGIN ISOLATION LEVEL REPEATABLE READ; SET
    /// TRANSACTION SNAPSHOT '<name>'`), which is how a new site is seeded
    /// without gap or overlap. **The snapshot lives only while this
    /// connection stays open and idle**: the next command on it (including
    /// [`ReplicationConn::start_logical`] and any query), or closing it,
    /// destroys the snapshot. So: create the slot, start the copy
    /// transactions with the snapshot, and only then use or drop this
    /// connection. Without `export_snapshot` no snapshot is built
    /// (`SNAPSHOT 'nothing'`).
    pub async fn create_logical_slot(
        &mut self,
        name: &str,
        temporary: bool,
        export_snapshot: bool,
    ) -> Result<SlotInfo, SourceError> {
        const DURING: &str = "CREATE_REPLICATION_SLOT";
        validate_slot_name(name)?;
        let sql = create_slot_command(name, temporary, export_snapshot);
        let rows = self
            .query(&sql, DURING)
            .await
            .map_err(|e| e.with_slot(name))?;
        let row = single_row(self, &rows, 4, DURING).map_err(|e| e.with_slot(name))?;
        let consistent_point = parse_field(self, row, 1, "consistent_point", DURING, |s| {
            s.parse::<Lsn>().ok()
        })
        .map_err(|e| e.with_slot(name))?;
        Ok(SlotInfo {
            slot_name: row[0].clone().unwrap_or_else(|| name.to_owned()),
            consistent_point,
            snapshot_name: row[2].clone(),
            output_plugin: row[3].clone(),
        })
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`. With `wait`, a slot that is
    /// active (being streamed by another connection) is dropped once it is
    /// released, instead of failing with `55006`.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), SourceError> {
        validate_slot_name(name)?;
        self.query(&drop_slot_command(name, wait), "DROP_REPLICATION_SLOT")
            .await
            .map_err(|e| e.with_slot(name))?;
        Ok(())
    }

    /// Whether a replication slot of this name exists on the server (of any
    /// kind, in any database), by a catalog query on this connection. Like
    /// any command, it ends an exported snapshot's life.
    pub async fn slot_exists(&mut self, name: &str) -> Result<bool, SourceError> {
        validate_slot_name(name)?;
        let sql = format!(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(name)
        );
        let rows = self
            .query(&sql, "checking for a replication slot")
            .await
            .map_err(|e| e.with_slot(name))?;
        Ok(!rows.is_empty())
    }

    /// `START_REPLICATION SLOT slot LOGICAL start (proto_version '1',
    /// publication_names '...', messages '...')`, turning this connection into
    /// a [`ReplicationStream`].
    ///
    /// `start` is where to resume; the server starts at the slot's confirmed
    /// position if that is later (and [`Lsn::INVALID`] means "from the
    /// confirmed position"). `messages` asks pgoutput to send
    /// `pg_logical_emit_message` messages too. An error (a missing slot or
    /// publication, a slot in use) consumes the connection all the same.
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        publications: &[String],
        messages: bool,
        streaming: bool,
    ) -> Result<ReplicationStream, SourceError> {
        const DURING: &str = "START_REPLICATION";
        validate_slot_name(slot)?;
        let sql = start_logical_command(slot, start, publications, messages, streaming)?;
        self.send_query(&sql, DURING)
            .await
            .map_err(|e| e.with_slot(slot))?;
        let mut error = None;
        loop {
            let message = match self
                .session
                .read(DURING)
                .await
                .map_err(|e| e.with_slot(slot))?
            {
                Frame::CopyBothResponse if error.is_none() => break,
                Frame::CopyBothResponse => {
                    return Err(self
                        .session
                        .unexpected(DURING, "CopyBothResponse")
                        .with_slot(slot))
                }
                Frame::Message(message) => message,
            };
            match message {
                Message::ErrorResponse(body) => {
                    error.get_or_insert_with(|| self.session.server_error(DURING, &body));
                }
                Message::NoticeResponse(body) => self.session.log_notice(&body),
                Message::ParameterStatus(_) => {}
                Message::ReadyForQuery(_) => {
                    let error = error.unwrap_or_else(|| {
                        self.session.protocol(
                            DURING,
                            "the server finished the command without entering CopyBoth mode"
                                .to_owned(),
                        )
                    });
                    return Err(error.with_slot(slot));
                }
                other => {
                    return Err(self
                        .session
                        .unexpected(DURING, super::wire::message_name(&other))
                        .with_slot(slot))
                }
            }
        }
        tracing::info!(
            server = %self.session.server,
            slot,
            %start,
            ?publications,
            "Logical replication started."
        );
        Ok(ReplicationStream::spawn(
            self.session,
            self.settings,
            slot.to_owned(),
        ))
    }
}

/// Checks a slot name against Postgres' rule (`ReplicationSlotValidateName`).
pub fn validate_slot_name(name: &str) -> Result<(), SourceError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SLOT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SourceError::Config {
            field: "slot name".to_owned(),
            value: format!("{name:?}"),
            why: format!(
                "a replication slot name is 1 to {MAX_SLOT_NAME_LEN} characters of a-z, 0-9 and _"
            ),
        })
    }
}

pub(crate) use crate::sql::quote_ident;

/// `'text'`, with `'` doubled (the replication scanner has no backslash
/// escapes; plain SQL with `standard_conforming_strings` on reads it the same).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

pub(crate) fn create_slot_command(name: &str, temporary: bool, export_snapshot: bool) -> String {
    format!(
        "CREATE_REPLICATION_SLOT {}{} LOGICAL pgoutput (SNAPSHOT '{}')",
        quote_ident(name),
        if temporary { " TEMPORARY" } else { "" },
        if export_snapshot { "export" } else { "nothing" }
    )
}

pub(crate) fn drop_slot_command(name: &str, wait: bool) -> String {
    format!(
        "DROP_REPLICATION_SLOT {}{}",
        quote_ident(name),
        if wait { " WAIT" } else { "" }
    )
}

pub(crate) fn start_logical_command(
    slot: &str,
    start: Lsn,
    publications: &[String],
    messages: bool,
    streaming: bool,
) -> Result<String, SourceError> {
    if publications.is_empty() {
        return Err(SourceError::Config {
            field: "publications".to_owned(),
            value: "[]".to_owned(),
            why: format!(
                "pgoutput needs at least one publication to stream slot {slot:?} from; name \
                 the publication(s) over the replicated tables"
            ),
        });
    }
    if let Some(bad) = publications
        .iter()
        .find(|p| p.is_empty() || p.contains('\0'))
    {
        return Err(SourceError::Config {
            field: "publications".to_owned(),
            value: format!("{bad:?}"),
            why: "a publication name must be non-empty and contain no NUL character".to_owned(),
        });
    }
    let names = publications
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join(",");
    // Version 2 adds the streaming of transactions before their commit
    // (Postgres 14 and later); version 1 is all older servers speak.
    let (version, streaming) = if streaming {
        ("2", ", streaming 'on'")
    } else {
        ("1", "")
    };
    Ok(format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '{version}', publication_names {}, \
         messages '{messages}'{streaming})",
        quote_ident(slot),
        quote_literal(&names),
    ))
}

/// The only row of a command's result, with at least `columns` columns.
fn single_row<'a>(
    conn: &ReplicationConn,
    rows: &'a [Vec<Option<String>>],
    columns: usize,
    during: &'static str,
) -> Result<&'a [Option<String>], SourceError> {
    match rows {
        [row] if row.len() >= columns => Ok(row),
        _ => Err(conn.session.protocol(
            during,
            format!(
                "expected one row of {columns} columns, got {} rows{}",
                rows.len(),
                rows.first()
                    .map(|r| format!(" of {} columns", r.len()))
                    .unwrap_or_default()
            ),
        )),
    }
}

/// Parses column `index` (`name`) of a result row.
fn parse_field<T>(
    conn: &ReplicationConn,
    row: &[Option<String>],
    index: usize,
    name: &str,
    during: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, SourceError> {
    let text = row[index].as_deref();
    text.and_then(parse).ok_or_else(|| {
        conn.session
            .protocol(during, format!("column {name} is not valid: {text:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres() {
        for good in ["a", "link_beijing_shanghai", "s1", &"x".repeat(63)] {
            assert!(validate_slot_name(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "a-b", "a b", "a\"b", "é", &"x".repeat(64)] {
            let err = validate_slot_name(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn commands_are_quoted() {
        assert_eq!(
            create_slot_command("s1", true, true),
            "CREATE_REPLICATION_SLOT \"s1\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')"
        );
        assert_eq!(
            create_slot_command("s1", false, false),
            "CREATE_REPLICATION_SLOT \"s1\" LOGICAL pgoutput (SNAPSHOT 'nothing')"
        );
        assert_eq!(
            drop_slot_command("s1", true),
            "DROP_REPLICATION_SLOT \"s1\" WAIT"
        );
        assert_eq!(
            drop_slot_command("s1", false),
            "DROP_REPLICATION_SLOT \"s1\""
        );
        let pubs = vec!["p1".to_owned(), "we\"ird, 'name'".to_owned()];
        assert_eq!(
            start_logical_command("s1", Lsn(0x1_0000_00A0), &pubs, true, false).unwrap(),
            "START_REPLICATION SLOT \"s1\" LOGICAL 1/A0 (proto_version '1', publication_names \
             '\"p1\",\"we\"\"ird, ''name''\"', messages 'true')"
        );
        assert_eq!(
            start_logical_command("s1", Lsn(0), &pubs[..1], false, true).unwrap(),
            "START_REPLICATION SLOT \"s1\" LOGICAL 0/0 (proto_version '2', publication_names \
             '\"p1\"', messages 'false', streaming 'on')"
        );
    }

    #[test]
    fn publications_are_checked() {
        assert!(matches!(
            start_logical_command("s", Lsn(0), &[], false, true),
            Err(SourceError::Config { .. })
        ));
        assert!(matches!(
            start_logical_command("s", Lsn(0), &[String::new()], false, false),
            Err(SourceError::Config { .. })
        ));
    }
}
