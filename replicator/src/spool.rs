//! Transactions the source streams before their commit (protocol version 2,
//! [`crate::pgoutput::stream`]), kept aside on disk until they commit.
//!
//! The source sends a transaction in blocks once its decoded changes outgrow
//! the source's `logical_decoding_work_mem`, and other transactions commit
//! (and are applied) between the blocks. The [`Spool`] writes each block's
//! messages, as received, to an unnamed file of that transaction in
//! `spool_dir`, and hands out a [`Replay`] at its Stream Commit: the
//! transaction as a version 1 one (Begin, the Origin if any, the messages,
//! Commit), read back from the file message by message, which the link
//! applies like any other (whole, or in parts for a large one). At a Stream
//! Abort the file is dropped, or, for a subtransaction rolled back to a
//! savepoint, cut back to where that subtransaction's first message was.
//!
//! Memory: what is held per open transaction is a file handle, a write
//! buffer and a list of its subtransactions, whatever its size. Nothing
//! here needs to survive the process: the files have no name (they go
//! with the process, even a killed one), and a restarted link resumes from
//! the target's origin, before every transaction not yet committed there,
//! so the source streams those again from their start.
//!
//! The files are written where the runtime runs: a write is a copy into a
//! 64 KiB buffer and, once that is full, into the page cache, which does
//! not wait for the disk.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::pgoutput::stream::{self, StreamControl};
use crate::pgoutput::{Begin, Commit, DecodeError, LogicalMessage, Origin, Xid};

/// The write buffer of a spooled transaction's file.
const WRITE_BUFFER: usize = 64 * 1024;

/// Why a streamed transaction could not be kept or read back.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A message in a stream block that does not decode. Definite.
    #[error("undecodable streamed message: {0}")]
    Decode(#[from] DecodeError),
    /// The blocks do not follow the protocol (a block inside a block, a
    /// commit of a transaction never streamed...). Definite: a source that
    /// sends this cannot be applied safely.
    #[error("pgoutput stream: {0}")]
    Framing(String),
    /// The spool file could not be written or read. Transient: the link
    /// restarts and the source streams the transaction again.
    #[error("spool file in {}: {during}: {source}; check that the disk holding spool_dir has room and is writable", dir.display())]
    Io {
        dir: PathBuf,
        during: &'static str,
        #[source]
        source: io::Error,
    },
}

impl SpoolError {
    /// Whether trying again (a new stream from the target's progress) may
    /// succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SpoolError::Io { .. })
    }
}

/// What a message handed to [`Spool::push`] did.
#[derive(Debug)]
pub enum Outcome {
    /// It was kept (or framed a block): nothing to apply yet.
    Kept,
    /// A streamed transaction committed: its messages, to apply now.
    Committed(Replay),
    /// A streamed transaction (`whole`) or one of its subtransactions was
    /// rolled back at the source; its messages are gone.
    Aborted { whole: bool },
}

/// Where a subtransaction's first message is in its transaction's file.
#[derive(Debug, Clone, Copy)]
struct Mark {
    subxid: Xid,
    /// Bytes before it.
    len: u64,
    /// Messages before it.
    messages: u64,
}

/// One streamed transaction not yet committed or aborted.
struct Spooled {
    file: BufWriter<std::fs::File>,
    /// Its Origin, when a replicator at the source applied it: it is then
    /// not kept (loop prevention drops it at its commit).
    origin: Option<Origin>,
    /// The subtransactions that sent something, in the order they first
    /// did, each with the file offset of its first message. Rolling one
    /// back cuts the file there and forgets it and every one after it:
    /// those began inside it (a savepoint taken in it) or wrote only after
    /// it, so all they wrote lies after its first message. As Postgres' own
    /// apply worker does with its spool files.
    subxacts: Vec<Mark>,
    /// Bytes in the file.
    len: u64,
    /// Messages in the file.
    messages: u64,
}

/// The streamed transactions of one link's stream.
pub struct Spool {
    /// Where the files go; `None`: streaming was not asked for, and a
    /// block is a protocol error.
    dir: Option<PathBuf>,
    open: HashMap<Xid, Spooled>,
    /// The transaction whose block is being received.
    block: Option<Xid>,
}

/// The spool's directory as errors name it (there is one whenever a file
/// exists: without it no file is made).
fn shown(dir: &Option<PathBuf>) -> &Path {
    dir.as_deref().unwrap_or(Path::new("(none)"))
}

/// Wraps an I/O error on a file in `dir` (for `map_err`).
fn io_error<'a>(dir: &'a Path, during: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        dir: dir.to_path_buf(),
        during,
        source,
    }
}

impl Spool {
    /// A spool writing its files in `dir` (checked to be a directory one
    /// can create files in when the first transaction is streamed); `None`
    /// for a stream that did not ask for streaming, where a block is
    /// refused.
    pub fn new(dir: Option<&Path>) -> Spool {
        Spool {
            dir: dir.map(Path::to_path_buf),
            open: HashMap::new(),
            block: None,
        }
    }

    /// Whether `data` (one pgoutput message) is the spool's to take: a
    /// message framing streamed transactions, or one inside a block.
    pub fn takes(&self, data: &[u8]) -> bool {
        self.block.is_some() || stream::is_control(data)
    }

    /// Whether a block is being received (the stream is between
    /// transactions otherwise, as far as committed ones go).
    pub fn in_block(&self) -> bool {
        self.block.is_some()
    }

    /// Bytes kept on disk for the streamed transactions neither committed
    /// nor aborted yet.
    pub fn bytes(&self) -> u64 {
        self.open.values().map(|s| s.len).sum()
    }

    /// Takes one message for which [`Spool::takes`] is true.
    pub fn push(&mut self, data: &[u8]) -> Result<Outcome, SpoolError> {
        if !stream::is_control(data) {
            let Some(xid) = self.block else {
                return Err(SpoolError::Framing(
                    "a streamed message outside a stream block".into(),
                ));
            };
            self.keep(xid, data)?;
            return Ok(Outcome::Kept);
        }
        match stream::decode_control(data)? {
            StreamControl::Start { xid, first_segment } => {
                if let Some(open) = self.block {
                    return Err(SpoolError::Framing(format!(
                        "Stream Start of xid {xid} inside the block of xid {open}"
                    )));
                }
                match (first_segment, self.open.contains_key(&xid)) {
                    (true, false) => {
                        let file = self.create()?;
                        self.open.insert(
                            xid,
                            Spooled {
                                file,
                                origin: None,
                                subxacts: Vec::new(),
                                len: 0,
                                messages: 0,
                            },
                        );
                    }
                    (false, true) => {}
                    (true, true) => {
                        return Err(SpoolError::Framing(format!(
                            "a first Stream Start of xid {xid}, which was streamed already"
                        )))
                    }
                    (false, false) => {
                        return Err(SpoolError::Framing(format!(
                            "a later Stream Start of xid {xid}, whose first block never came"
                        )))
                    }
                }
                self.block = Some(xid);
                Ok(Outcome::Kept)
            }
            StreamControl::Stop => match self.block.take() {
                Some(_) => Ok(Outcome::Kept),
                None => Err(SpoolError::Framing(
                    "Stream Stop outside a stream block".into(),
                )),
            },
            StreamControl::Commit { xid, commit } => {
                self.between_blocks("Stream Commit", xid)?;
                let Some(spooled) = self.open.remove(&xid) else {
                    return Err(SpoolError::Framing(format!(
                        "Stream Commit of xid {xid}, which was never streamed"
                    )));
                };
                let dir = shown(&self.dir);
                let reading = io_error(dir, "reading back a streamed transaction");
                let source = spooled
                    .file
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|mut f| f.seek(SeekFrom::Start(0)).map(|_| f))
                    .map_err(reading)?;
                Ok(Outcome::Committed(Replay {
                    xid,
                    dir: dir.to_path_buf(),
                    stage: Stage::Begin,
                    origin: spooled.origin,
                    source: BufReader::with_capacity(WRITE_BUFFER, source),
                    left: spooled.messages,
                    commit,
                }))
            }
            StreamControl::Abort { xid, subxid } => {
                self.between_blocks("Stream Abort", xid)?;
                if xid == subxid {
                    // A transaction never streamed (or already gone) has
                    // nothing to drop.
                    self.open.remove(&xid);
                    return Ok(Outcome::Aborted { whole: true });
                }
                let dir = shown(&self.dir);
                if let Some(spooled) = self.open.get_mut(&xid) {
                    if let Some(at) = spooled.subxacts.iter().position(|m| m.subxid == subxid) {
                        // Its Relations go too: at a Stream Abort the source
                        // forgets what it described in the transaction, and
                        // describes it again for the changes after.
                        spooled
                            .cut(at)
                            .map_err(io_error(dir, "cutting a rolled-back subtransaction out"))?;
                    }
                }
                Ok(Outcome::Aborted { whole: false })
            }
        }
    }

    /// A commit or abort comes between blocks, never inside one.
    fn between_blocks(&self, what: &str, xid: Xid) -> Result<(), SpoolError> {
        match self.block {
            Some(open) => Err(SpoolError::Framing(format!(
                "{what} of xid {xid} inside the block of xid {open}"
            ))),
            None => Ok(()),
        }
    }

    fn create(&self) -> Result<BufWriter<std::fs::File>, SpoolError> {
        let Some(dir) = &self.dir else {
            return Err(SpoolError::Framing(
                "a streamed transaction, which this link did not ask for (streaming is off)".into(),
            ));
        };
        tempfile::tempfile_in(dir)
            .map(|f| BufWriter::with_capacity(WRITE_BUFFER, f))
            .map_err(io_error(dir, "creating a file for a streamed transaction"))
    }

    /// Appends one message of the block's transaction `xid`.
    fn keep(&mut self, xid: Xid, data: &[u8]) -> Result<(), SpoolError> {
        let sub = stream::block_xid(data)?;
        let dir = shown(&self.dir);
        let Some(spooled) = self.open.get_mut(&xid) else {
            return Err(SpoolError::Framing(format!(
                "a block of xid {xid}, which is not open"
            )));
        };
        let Some(sub) = sub else {
            // The Origin: said once, after the first Stream Start.
            if let (_, LogicalMessage::Origin(o)) = stream::decode_in_block(data)? {
                spooled.origin = Some(o);
            }
            return Ok(());
        };
        if spooled.origin.is_some() && !matches!(data.first(), Some(b'R' | b'Y')) {
            // Replayed from another site: dropped at its commit, so its
            // changes need not be kept. Its Relations are: the source
            // counts them as sent once it commits, and later changes of
            // other transactions rely on them.
            return Ok(());
        }
        if sub != xid && !spooled.subxacts.iter().any(|m| m.subxid == sub) {
            spooled.subxacts.push(Mark {
                subxid: sub,
                len: spooled.len,
                messages: spooled.messages,
            });
        }
        spooled
            .append(data)
            .map_err(io_error(dir, "writing a streamed transaction"))
    }
}

impl Spooled {
    /// Appends one message, framed by its length.
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        // A pgoutput message is one CopyData frame, whose length is an Int32.
        let len = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a message over 4 GiB"))?;
        self.file.write_all(&len.to_be_bytes())?;
        self.file.write_all(data)?;
        self.len += 4 + u64::from(len);
        self.messages += 1;
        Ok(())
    }

    /// Cuts the file back to where subtransaction `subxacts[at]` began,
    /// forgetting it and every one after it.
    fn cut(&mut self, at: usize) -> io::Result<()> {
        let mark = self.subxacts[at];
        self.file.flush()?;
        let f = self.file.get_mut();
        f.set_len(mark.len)?;
        f.seek(SeekFrom::Start(mark.len))?;
        self.subxacts.truncate(at);
        self.len = mark.len;
        self.messages = mark.messages;
        Ok(())
    }
}

/// Where a [`Replay`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Begin,
    Origin,
    Messages,
    Commit,
    Done,
}

/// A committed streamed transaction, read back as a version 1 one: Begin,
/// the Origin if it had one, its messages, Commit.
#[derive(Debug)]
pub struct Replay {
    pub xid: Xid,
    dir: PathBuf,
    stage: Stage,
    origin: Option<Origin>,
    source: BufReader<std::fs::File>,
    /// Messages not yet read back.
    left: u64,
    commit: Commit,
}

impl Replay {
    /// The next message. The last is the Commit (which ends the
    /// transaction for whoever reads it); asking past it is an error.
    pub fn next_message(&mut self) -> Result<LogicalMessage, SpoolError> {
        loop {
            match self.stage {
                Stage::Begin => {
                    self.stage = Stage::Origin;
                    return Ok(LogicalMessage::Begin(Begin {
                        final_lsn: self.commit.commit_lsn,
                        commit_time: self.commit.commit_time,
                        xid: self.xid,
                    }));
                }
                Stage::Origin => {
                    self.stage = Stage::Messages;
                    if let Some(o) = self.origin.take() {
                        return Ok(LogicalMessage::Origin(o));
                    }
                }
                Stage::Messages if self.left == 0 => self.stage = Stage::Commit,
                Stage::Messages => {
                    self.left -= 1;
                    let data = self.read_one()?;
                    let (_, msg) = stream::decode_in_block(&data)?;
                    return Ok(msg);
                }
                Stage::Commit => {
                    self.stage = Stage::Done;
                    return Ok(LogicalMessage::Commit(self.commit.clone()));
                }
                Stage::Done => {
                    return Err(SpoolError::Framing(format!(
                        "xid {} read back past its commit",
                        self.xid
                    )))
                }
            }
        }
    }

    fn read_one(&mut self) -> Result<Vec<u8>, SpoolError> {
        let mut len = [0u8; 4];
        let mut data = Vec::new();
        let read = self.source.read_exact(&mut len).and_then(|()| {
            data.resize(u32::from_be_bytes(len) as usize, 0);
            self.source.read_exact(&mut data)
        });
        read.map_err(io_error(&self.dir, "reading back a streamed transaction"))?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::{ColumnValue, PgTimestamp};
    use proptest::prelude::*;

    fn start(xid: Xid, first: bool) -> Vec<u8> {
        let mut m = vec![b'S'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.push(u8::from(first));
        m
    }

    fn commit(xid: Xid, lsn: u64) -> Vec<u8> {
        let mut m = vec![b'c'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.push(0);
        m.extend_from_slice(&lsn.to_be_bytes());
        m.extend_from_slice(&(lsn + 8).to_be_bytes());
        m.extend_from_slice(&5i64.to_be_bytes());
        m
    }

    fn abort(xid: Xid, subxid: Xid) -> Vec<u8> {
        let mut m = vec![b'A'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(&subxid.to_be_bytes());
        m
    }

    /// An Insert into relation 1 of one text value, made by `xid`.
    fn insert(xid: Xid, value: &str) -> Vec<u8> {
        let mut m = vec![b'I'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(b"N\0\x01t");
        m.extend_from_slice(&(value.len() as u32).to_be_bytes());
        m.extend_from_slice(value.as_bytes());
        m
    }

    /// A Relation: oid 1, public.items, one key column "v" of type text.
    fn relation(xid: Xid) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&xid.to_be_bytes());
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(b"public\0items\0d\0\x01\x01v\0");
        m.extend_from_slice(&25u32.to_be_bytes());
        m.extend_from_slice(&(-1i32).to_be_bytes());
        m
    }

    fn origin() -> Vec<u8> {
        let mut m = vec![b'O'];
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend_from_slice(b"ezone_shanghai\0");
        m
    }

    /// What a replay yields, as text: the inserted values between the Begin
    /// and the Commit, checked to frame them.
    fn replayed(mut r: Replay) -> (Option<String>, Vec<String>) {
        let Ok(LogicalMessage::Begin(b)) = r.next_message() else {
            panic!("a replay starts with a Begin");
        };
        let mut origin = None;
        let mut values = Vec::new();
        loop {
            match r.next_message().expect("read back") {
                LogicalMessage::Origin(o) => origin = Some(o.name),
                LogicalMessage::Relation(_) => {}
                LogicalMessage::Insert(i) => match &i.new.columns[0] {
                    ColumnValue::Text(t) => values.push(String::from_utf8_lossy(t).into_owned()),
                    other => panic!("{other:?}"),
                },
                LogicalMessage::Commit(c) => {
                    assert_eq!(c.commit_lsn, b.final_lsn);
                    assert!(r.next_message().is_err(), "nothing after the Commit");
                    return (origin, values);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// A spool in the system's temporary directory (its files have no
    /// name, so nothing is left there).
    fn spool() -> Spool {
        Spool::new(Some(&std::env::temp_dir()))
    }

    fn push_all(spool: &mut Spool, msgs: &[Vec<u8>]) -> Option<Replay> {
        let mut out = None;
        for m in msgs {
            assert!(spool.takes(m));
            if let Outcome::Committed(r) = spool.push(m).expect("push") {
                out = Some(r);
            }
        }
        out
    }

    #[test]
    fn blocks_of_a_transaction_come_back_whole_at_its_commit() {
        let mut s = spool();
        assert!(
            !s.takes(&insert(7, "x")),
            "outside a block, a change is not the spool's"
        );
        let r = push_all(
            &mut s,
            &[
                start(7, true),
                insert(7, "a"),
                insert(7, "b"),
                b"E".to_vec(),
                start(7, false),
                insert(7, "c"),
                b"E".to_vec(),
            ],
        );
        assert!(r.is_none());
        assert_eq!(s.open.len(), 1);
        assert!(s.bytes() > 0);
        let r = push_all(&mut s, &[commit(7, 100)]).expect("committed");
        assert_eq!(r.xid, 7);
        assert_eq!(
            replayed(r),
            (None, vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(s.open.len(), 0);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn an_aborted_transaction_or_subtransaction_leaves_nothing() {
        let mut s = spool();
        push_all(
            &mut s,
            &[
                start(7, true),
                insert(7, "gone"),
                b"E".to_vec(),
                abort(7, 7),
            ],
        );
        assert_eq!(s.open.len(), 0);
        // A later Stream Start of it would be a protocol error.
        assert!(s.push(&start(7, false)).is_err());

        let mut s = spool();
        let r = push_all(
            &mut s,
            &[
                start(8, true),
                insert(8, "kept"),
                insert(9, "sub 9"),
                insert(10, "sub 10, in 9"),
                b"E".to_vec(),
                abort(8, 10),
                start(8, false),
                insert(9, "sub 9 again"),
                insert(11, "sub 11"),
                b"E".to_vec(),
                abort(8, 11),
                start(8, false),
                insert(8, "last"),
                b"E".to_vec(),
                commit(8, 200),
            ],
        )
        .expect("committed");
        assert_eq!(
            replayed(r).1,
            ["kept", "sub 9", "sub 9 again", "last"].map(String::from)
        );
    }

    #[test]
    fn a_transaction_replayed_from_another_site_keeps_only_its_origin() {
        let mut s = spool();
        let kept = push_all(
            &mut s,
            &[
                start(7, true),
                origin(),
                relation(7),
                insert(7, "a"),
                b"E".to_vec(),
            ],
        );
        assert!(kept.is_none());
        assert_eq!(
            s.bytes(),
            4 + relation(7).len() as u64,
            "only the Relation is kept"
        );
        let r = push_all(&mut s, &[commit(7, 100)]).expect("committed");
        assert_eq!(replayed(r), (Some("ezone_shanghai".into()), vec![]));
    }

    #[test]
    fn framing_out_of_order_is_refused() {
        let cases: &[&[Vec<u8>]] = &[
            &[start(1, false)],
            &[start(1, true), b"E".to_vec(), start(1, true)],
            &[start(1, true), start(2, true)],
            &[b"E".to_vec()],
            &[commit(3, 10)],
            &[start(1, true), commit(1, 10)],
            &[start(1, true), abort(1, 1)],
            &[start(1, true), b"B".to_vec()],
        ];
        for case in cases {
            let mut s = spool();
            let (last, before) = case.split_last().expect("a case");
            for m in before {
                s.push(m).expect("accepted");
            }
            let err = s.push(last).expect_err("refused");
            assert!(!err.is_transient(), "{err}");
        }
    }

    #[test]
    fn files_on_disk_have_no_name_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let mut s = Spool::new(Some(dir.path()));
        let mut msgs = vec![start(5, true)];
        msgs.extend((0..20_000).map(|i| insert(5, &format!("value {i}"))));
        msgs.push(b"E".to_vec());
        assert!(push_all(&mut s, &msgs).is_none());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("list").count(),
            0,
            "a spool file has a name"
        );
        let r = push_all(&mut s, &[commit(5, 1000)]).expect("committed");
        let (_, values) = replayed(r);
        assert_eq!(values.len(), 20_000);
        assert_eq!(values[19_999], "value 19999");

        let mut s = Spool::new(Some(&dir.path().join("missing")));
        let err = s.push(&start(1, true)).expect_err("no directory");
        assert!(err.is_transient());
        assert!(err.to_string().contains("spool_dir"), "{err}");

        // Not asked for: refused, for good.
        let err = Spool::new(None).push(&start(1, true)).expect_err("off");
        assert!(
            !err.is_transient() && err.to_string().contains("streaming is off"),
            "{err}"
        );
    }

    /// One step of a source transaction's script.
    #[derive(Debug, Clone)]
    enum Step {
        Savepoint,
        Release,
        RollbackTo,
        Write,
        /// The source streams what it has so far (a block).
        Block,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            2 => Just(Step::Savepoint),
            1 => Just(Step::Release),
            1 => Just(Step::RollbackTo),
            5 => Just(Step::Write),
            1 => Just(Step::Block),
        ]
    }

    /// Runs a script as Postgres would stream it (a transaction `top`
    /// whose subtransactions are numbered from `top + 1`), and what must
    /// survive, judged by savepoint semantics: a rolled-back savepoint
    /// takes the writes of its whole subtree with it.
    fn stream_script(top: Xid, steps: &[Step], committed: bool) -> (Vec<Vec<u8>>, Vec<String>) {
        // Each subtransaction's parent, and each write's author.
        let mut parent: HashMap<Xid, Xid> = HashMap::new();
        let mut stack = vec![top];
        let mut next = top + 1;
        let mut writes: Vec<(Xid, String, bool)> = Vec::new(); // author, value, alive
        let mut out = vec![start(top, true)];
        let in_subtree = |parent: &HashMap<Xid, Xid>, mut x: Xid, root: Xid| loop {
            if x == root {
                return true;
            }
            match parent.get(&x) {
                Some(p) => x = *p,
                None => return false,
            }
        };
        for (i, s) in steps.iter().enumerate() {
            match s {
                Step::Savepoint => {
                    parent.insert(next, *stack.last().unwrap());
                    stack.push(next);
                    next += 1;
                }
                Step::Release if stack.len() > 1 => {
                    stack.pop();
                }
                Step::RollbackTo if stack.len() > 1 => {
                    // ROLLBACK TO + RELEASE: the savepoint's subtree goes.
                    let gone = stack.pop().unwrap();
                    let mut aborted = Vec::new();
                    for w in writes.iter_mut() {
                        if w.2 && in_subtree(&parent, w.0, gone) {
                            w.2 = false;
                            if !aborted.contains(&w.0) {
                                aborted.push(w.0);
                            }
                        }
                    }
                    // Children first, then the savepoint itself, as the
                    // abort record lists them; each one that wrote.
                    aborted.sort_by_key(|x| std::cmp::Reverse(*x));
                    out.push(b"E".to_vec());
                    for x in aborted {
                        out.push(abort(top, x));
                    }
                    out.push(start(top, false));
                }
                Step::Write => {
                    let by = *stack.last().unwrap();
                    let value = format!("{top}.{i}");
                    out.push(insert(by, &value));
                    writes.push((by, value, true));
                }
                Step::Block => {
                    out.push(b"E".to_vec());
                    out.push(start(top, false));
                }
                _ => {}
            }
        }
        out.push(b"E".to_vec());
        if committed {
            out.push(commit(top, u64::from(top) * 1000));
        } else {
            out.push(abort(top, top));
        }
        let alive = if committed {
            writes.into_iter().filter(|w| w.2).map(|w| w.1).collect()
        } else {
            Vec::new()
        };
        (out, alive)
    }

    proptest! {
        // Two streamed transactions with savepoints, their blocks
        // interleaved: each that commits comes back with exactly the writes
        // savepoint semantics keep, in order; an aborted one never comes.
        #[test]
        fn replay_keeps_exactly_what_savepoints_keep(
            a in proptest::collection::vec(step(), 0..40),
            b in proptest::collection::vec(step(), 0..40),
            a_commits in any::<bool>(),
            b_commits in any::<bool>(),
            interleave in proptest::collection::vec(any::<bool>(), 0..80),
        ) {
            let (sa, want_a) = stream_script(100, &a, a_commits);
            let (sb, want_b) = stream_script(1000, &b, b_commits);
            // Interleave whole blocks (Start..Stop, and the aborts and
            // commit between them), as a walsender does.
            let blocks = |msgs: Vec<Vec<u8>>| {
                let mut blocks: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
                for m in msgs {
                    let ends = m[0] == b'E';
                    blocks.last_mut().unwrap().push(m);
                    if ends {
                        blocks.push(Vec::new());
                    }
                }
                blocks
            };
            let (mut ba, mut bb) = (blocks(sa).into_iter(), blocks(sb).into_iter());
            let mut s = spool();
            let mut got: HashMap<Xid, Vec<String>> = HashMap::new();
            let mut pick = interleave.into_iter();
            loop {
                let block = if pick.next().unwrap_or(false) {
                    ba.next().or_else(|| bb.next())
                } else {
                    bb.next().or_else(|| ba.next())
                };
                let Some(block) = block else { break };
                for m in block {
                    if let Outcome::Committed(r) = s.push(&m).expect("push") {
                        let xid = r.xid;
                        got.insert(xid, replayed(r).1);
                    }
                }
            }
            prop_assert_eq!(got.get(&100).cloned(), a_commits.then_some(want_a));
            prop_assert_eq!(got.get(&1000).cloned(), b_commits.then_some(want_b));
            prop_assert_eq!(s.open.len(), 0);
        }
    }

    #[test]
    fn replay_synthesises_the_begin_from_the_commit() {
        let mut s = spool();
        let mut r = push_all(&mut s, &[start(3, true), b"E".to_vec(), commit(3, 77)]).unwrap();
        assert_eq!(
            r.next_message().unwrap(),
            LogicalMessage::Begin(Begin {
                final_lsn: Lsn(77),
                commit_time: PgTimestamp(5),
                xid: 3
            })
        );
    }
}
