//! The CopyBoth stream after `START_REPLICATION`: WAL data in, standby
//! status updates out.
//!
//! ```text
//!  caller              ReplicationStream      I/O task (owns the socket)     walsender
//!  next() ---------->  events (bounded) <---- 'w' XLogData  <--------------- decoded change
//!                                       <---- 'k' keepalive <--------------- heartbeat
//!                                             reply requested? -- 'r' ------> (at once)
//!  confirm(lsn) ---->  Progress (max only) -- 'r' every status_interval ---> confirmed_flush
//!  send_status() --->  command ------------>  'r' now ---------------------> "
//!                                       <---- ErrorResponse / EOF: error, end
//!                                       <---- CopyDone / CommandComplete: end (Ok(None))
//! ```
//!
//! # Why a task owns the socket
//!
//! The server ends a walsender whose client has been silent for
//! `wal_sender_timeout`. If status updates were sent only from inside
//! `next()`, a caller busy applying a large transaction for longer than that
//! would be disconnected, and after reconnecting would be sent the same
//! transaction and be disconnected again, forever. So one task owns the
//! connection: it reads frames into a bounded channel (at most
//! [`EVENT_BUFFER`] events ahead of the caller, then it stops reading), and,
//! whether or not the caller is reading, it sends a status update every
//! `status_interval` and answers every keepalive that asks for a reply.
//!
//! The positions it reports are the stream's [`Progress`]: `flushed` is what
//! the caller [`confirm`](ReplicationStream::confirm)ed and never goes
//! backwards (see [`super::progress`] for why). The caller confirms a
//! Commit's `end_lsn` only after the target transaction is durable.
//!
//! # Liveness the other way
//!
//! A paused or partitioned server keeps the TCP connection open and says
//! nothing. A periodic status update asks for a reply when the server has
//! been quiet for a `status_interval`; if nothing at all arrives for
//! `receive_timeout` while the caller waits, the stream fails with a
//! transient [`SourceError::Timeout`].
//!
//! Dropping the stream stops the task and closes the connection; the
//! server then releases the slot (the slot keeps its confirmed position).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use super::conn::StreamSettings;
use super::error::SourceError;
use super::progress::Progress;
use super::session::Session;
use super::wire::{self, Frame};
use crate::lsn::Lsn;
use crate::pgoutput::{decode_copy_data, PgTimestamp, ReplicationMessage};

/// How many events the I/O task reads ahead of the caller.
pub const EVENT_BUFFER: usize = 64;

/// What the task is doing, for error messages.
const STREAMING: &str = "streaming";
const SENDING_STATUS: &str = "sending a standby status update";

/// One message from the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// `'w'`: one pgoutput message (decode `data` with
    /// [`crate::pgoutput::decode`]).
    XLogData {
        /// The WAL position of the record the message was decoded from, or 0
        /// (see [`crate::pgoutput::copy`]): not a position to confirm.
        wal_start: Lsn,
        /// As `wal_start` for a logical slot.
        wal_end: Lsn,
        /// The server's clock when it sent this (for lag in seconds).
        send_time: PgTimestamp,
        /// The pgoutput message.
        data: Bytes,
    },
    /// `'k'`: the server's heartbeat. Already answered if it asked for a
    /// reply.
    Keepalive {
        /// The server's position: everything before it that was to be sent
        /// has been sent.
        wal_end: Lsn,
        /// The server's clock when it sent this.
        send_time: PgTimestamp,
        /// The server asked for a status update (which the stream sent).
        reply_requested: bool,
    },
}

/// What the task tells the handle: an event, the end (`None`), or the error
/// that ended the stream.
type Item = Result<Option<StreamEvent>, SourceError>;

/// Requests from the handle to the task.
enum Command {
    /// Send a status update now; say whether it went out.
    SendStatus {
        reply: bool,
        done: oneshot::Sender<Result<(), SourceError>>,
    },
}

/// A logical replication stream in CopyBoth mode, from
/// [`super::ReplicationConn::start_logical`]. See the module docs.
pub struct ReplicationStream {
    server: Arc<str>,
    slot: String,
    events: mpsc::Receiver<Item>,
    commands: mpsc::Sender<Command>,
    progress: Arc<Mutex<Progress>>,
    /// When the I/O task last received a frame: the caller may be busy
    /// elsewhere (applying a transaction it read earlier) while the task
    /// keeps hearing from the server.
    heard: Arc<Heard>,
    state: State,
    task: AbortOnDrop,
}

/// Whether the caller has seen the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Ended,
    Failed,
}

impl ReplicationStream {
    /// Starts the I/O task on a connection that just entered CopyBoth.
    pub(crate) fn spawn(session: Session, settings: StreamSettings, slot: String) -> Self {
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (commands, commands_rx) = mpsc::channel(4);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let server = session.server.clone();
        let now = Instant::now();
        let heard = Arc::new(Heard {
            born: now,
            ms: AtomicU64::new(0),
        });
        let pump = Pump {
            heard: heard.clone(),
            session,
            slot: slot.clone(),
            next_status: now + settings.status_interval,
            settings,
            progress: progress.clone(),
            commands: commands_rx,
        };
        let span = tracing::info_span!("walsender_stream", server = %server, slot = %slot);
        let task = tokio::spawn(pump.run(events_tx).instrument(span));
        ReplicationStream {
            server,
            slot,
            events,
            commands,
            progress,
            heard,
            state: State::Open,
            task: AbortOnDrop(task),
        }
    }

    /// How long since the server last sent anything on the stream (WAL
    /// or a keepalive), whether or not the caller has read it yet.
    pub fn silence(&self) -> std::time::Duration {
        self.heard.last().elapsed()
    }

    /// The next message from the server.
    ///
    /// `Ok(None)` means the server ended the stream (CopyDone, or a
    /// walsender finishing because the server shuts down): reconnect with
    /// backoff. An error ends the stream too; [`SourceError::is_transient`]
    /// says whether to reconnect. After either, `next` keeps returning the
    /// same kind of answer (`Ok(None)`, or [`SourceError::Closed`]).
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Option<StreamEvent>, SourceError> {
        match self.state {
            State::Open => {}
            State::Ended => return Ok(None),
            State::Failed => return Err(self.closed()),
        }
        match self.events.recv().await {
            Some(Ok(Some(event))) => Ok(Some(event)),
            Some(Ok(None)) => {
                self.state = State::Ended;
                Ok(None)
            }
            Some(Err(e)) => {
                self.state = State::Failed;
                Err(e)
            }
            None => {
                // The task is gone without a word: it panicked.
                self.state = State::Failed;
                Err(self.closed())
            }
        }
    }

    /// Everything before `flushed` is durably applied at the target: the
    /// next status update confirms it to the slot. A position not above the
    /// last confirmed one is ignored (see [`super::progress`]). Does not send
    /// anything by itself; the periodic update (or
    /// [`ReplicationStream::send_status`]) does.
    pub fn confirm(&mut self, flushed: Lsn) {
        if lock(&self.progress).confirm(flushed) {
            tracing::trace!(slot = %self.slot, %flushed, "Confirmed.");
        }
    }

    /// Sends a status update with the current positions now, and returns once
    /// it is written to the socket. With `reply`, the server answers with a
    /// keepalive (handy to learn its current position, or to know it has
    /// processed this update).
    pub async fn send_status(&mut self, reply: bool) -> Result<(), SourceError> {
        let (done, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::SendStatus { reply, done })
            .await
            .is_err()
        {
            return Err(self.closed());
        }
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// The positions reported to the server (as of the next update).
    pub fn progress(&self) -> Progress {
        *lock(&self.progress)
    }

    /// The slot being streamed.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// `host:port/dbname`.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn closed(&self) -> SourceError {
        SourceError::Closed {
            server: self.server.to_string(),
            slot: Some(self.slot.clone()),
        }
    }
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("server", &self.server)
            .field("slot", &self.slot)
            .field("state", &self.state)
            .field("progress", &self.progress())
            .field("task_finished", &self.task.0.is_finished())
            .finish()
    }
}

/// Stops the task (and so closes the connection) when the stream is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    // The lock is never held across an await or a panic point that matters:
    // a poisoned value is still the right value.
    progress
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// When a stream's I/O task last received a frame, readable from the
/// caller's side without a lock.
#[derive(Debug)]
struct Heard {
    born: Instant,
    /// Milliseconds after `born`.
    ms: AtomicU64,
}

impl Heard {
    fn record(&self, at: Instant) {
        let ms = at.duration_since(self.born).as_millis();
        self.ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.born + std::time::Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }
}

/// The I/O task's state.
struct Pump {
    session: Session,
    slot: String,
    settings: StreamSettings,
    progress: Arc<Mutex<Progress>>,
    commands: mpsc::Receiver<Command>,
    /// When the last frame arrived (at first, when the stream started).
    heard: Arc<Heard>,
    /// When the next periodic status update is due.
    next_status: Instant,
}

/// What one frame amounts to.
enum Step {
    Event(StreamEvent),
    Nothing,
    End,
}

impl Pump {
    async fn run(mut self, events: mpsc::Sender<Item>) {
        let item = match self.pump(&events).await {
            Ok(()) => Ok(None),
            Err(e) => {
                let e = e.with_slot(&self.slot);
                if e.is_transient() {
                    tracing::warn!(
                        error = %e,
                        "Replication stream failed; the link should reconnect."
                    );
                } else {
                    tracing::error!(error = %e, "Replication stream failed.");
                }
                Err(e)
            }
        };
        // Nobody may be listening any more; that is fine.
        let _ = events.send(item).await;
    }

    async fn pump(&mut self, events: &mpsc::Sender<Item>) -> Result<(), SourceError> {
        loop {
            // Room for one more event, serving timers and commands meanwhile.
            // Not reading while the caller is behind is the backpressure.
            // When there is room at once, no select (and no timer) is set
            // up for it: that is the common case, once per message.
            let permit = match events.try_reserve() {
                Ok(permit) => Some(permit),
                Err(mpsc::error::TrySendError::Closed(())) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(())) => None,
            };
            let permit = match permit {
                Some(permit) => permit,
                None => loop {
                    tokio::select! {
                    biased;
                    command = self.commands.recv() => match command {
                        Some(command) => self.handle(command).await?,
                        None => return Ok(()),
                    },
                    _ = sleep_until(self.next_status) => self.periodic_status().await?,
                    permit = events.reserve() => match permit {
                        Ok(permit) => break permit,
                        // The stream handle is gone.
                        Err(_) => return Ok(()),
                    },
                    }
                },
            };
            // Read until a frame gives an event. A message already read (a
            // socket read, or a TLS record, holds several) is taken without
            // a select; the timers and commands are served whenever the
            // buffer runs dry, a read's worth of messages later at most.
            let waiting_since = Instant::now();
            loop {
                let buffered = self
                    .session
                    .reader
                    .buffered_frame()
                    .map_err(|e| self.session.wire_error(STREAMING, e))?;
                let frame = match buffered {
                    Some(frame) => frame,
                    None => {
                        let quiet_limit =
                            self.heard.last().max(waiting_since) + self.settings.receive_timeout;
                        tokio::select! {
                            biased;
                            command = self.commands.recv() => {
                                match command {
                                    Some(command) => self.handle(command).await?,
                                    None => return Ok(()),
                                }
                                continue;
                            }
                            frame = self.session.reader.read_frame() => {
                                frame.map_err(|e| self.session.wire_error(STREAMING, e))?
                            }
                            _ = sleep_until(self.next_status) => {
                                self.periodic_status().await?;
                                continue;
                            }
                            _ = sleep_until(quiet_limit) => {
                                return Err(SourceError::Timeout {
                                    server: self.session.server.to_string(),
                                    slot: None,
                                    during: "waiting for the replication stream (nothing received)",
                                    after: self.settings.receive_timeout,
                                });
                            }
                        }
                    }
                };
                self.heard.record(Instant::now());
                match self.on_frame(frame).await? {
                    Step::Event(event) => {
                        permit.send(Ok(Some(event)));
                        break;
                    }
                    Step::Nothing => {}
                    Step::End => return Ok(()),
                }
            }
        }
    }

    /// Turns one frame into an event, answering what needs an answer.
    async fn on_frame(&mut self, frame: Frame) -> Result<Step, SourceError> {
        let message = match frame {
            Frame::Message(message) => message,
            other => return Err(self.session.unexpected(STREAMING, other.name())),
        };
        match message {
            Message::CopyData(body) => {
                let bytes = body.into_bytes();
                let decoded = decode_copy_data(&bytes).map_err(|source| SourceError::Decode {
                    server: self.session.server.to_string(),
                    slot: None,
                    source,
                })?;
                match decoded {
                    ReplicationMessage::XLogData {
                        wal_start,
                        wal_end,
                        send_time,
                        data,
                    } => {
                        let offset = bytes.len() - data.len();
                        lock(&self.progress).receive(wal_end);
                        Ok(Step::Event(StreamEvent::XLogData {
                            wal_start,
                            wal_end,
                            send_time,
                            data: bytes.slice(offset..),
                        }))
                    }
                    ReplicationMessage::PrimaryKeepalive {
                        wal_end,
                        send_time,
                        reply_requested,
                    } => {
                        if reply_requested {
                            self.send_status(false).await?;
                        }
                        Ok(Step::Event(StreamEvent::Keepalive {
                            wal_end,
                            send_time,
                            reply_requested,
                        }))
                    }
                }
            }
            Message::CopyDone => {
                // The server ends the stream; end our half too.
                frontend::copy_done(self.session.writer.buf());
                self.session.flush(STREAMING).await?;
                tracing::info!("The server ended the replication stream (CopyDone).");
                Ok(Step::End)
            }
            Message::CommandComplete(_) => {
                // A walsender that stops because the server shuts down ends
                // the COPY this way, then exits.
                tracing::info!("The server ended the replication stream (shutting down).");
                Ok(Step::End)
            }
            Message::ErrorResponse(body) => Err(self.session.server_error(STREAMING, &body)),
            Message::NoticeResponse(body) => {
                self.session.log_notice(&body);
                Ok(Step::Nothing)
            }
            Message::ParameterStatus(_) => Ok(Step::Nothing),
            other => Err(self
                .session
                .unexpected(STREAMING, wire::message_name(&other))),
        }
    }

    async fn handle(&mut self, command: Command) -> Result<(), SourceError> {
        match command {
            Command::SendStatus { reply, done } => match self.send_status(reply).await {
                Ok(()) => {
                    let _ = done.send(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    let _ = done.send(Err(e.duplicate().with_slot(&self.slot)));
                    Err(e)
                }
            },
        }
    }

    /// The update due every `status_interval`. It asks for a reply when the
    /// server has been quiet that long, so a live server always says
    /// something within `receive_timeout`.
    async fn periodic_status(&mut self) -> Result<(), SourceError> {
        let quiet = self.heard.last().elapsed() >= self.settings.status_interval;
        self.send_status(quiet).await
    }

    async fn send_status(&mut self, reply: bool) -> Result<(), SourceError> {
        let progress = *lock(&self.progress);
        let update = progress.status_update(PgTimestamp::now(), reply).encode();
        frontend::CopyData::new(&update[..])
            .map_err(|e| self.session.protocol(SENDING_STATUS, e.to_string()))?
            .write(self.session.writer.buf());
        self.session.flush(SENDING_STATUS).await?;
        self.next_status = Instant::now() + self.settings.status_interval;
        tracing::trace!(
            written = %progress.written,
            flushed = %progress.flushed,
            applied = %progress.applied,
            reply,
            "Sent a standby status update."
        );
        Ok(())
    }
}
