//! Logging in: the authentication exchange right after the startup message.
//!
//! The server picks the method (from `pg_hba.conf`) and we follow:
//!
//! ```text
//! server                                   client
//! AuthenticationOk ----------------------> (trust: done)
//! AuthenticationCleartextPassword -------> PasswordMessage(password)
//! AuthenticationMD5Password(salt) -------> PasswordMessage(md5 of (md5(password+user), salt))
//! AuthenticationSASL([SCRAM-SHA-256..]) -> SASLInitialResponse(SCRAM-SHA-256, client-first)
//! AuthenticationSASLContinue(server-first) -> SASLResponse(client-final with proof)
//! AuthenticationSASLFinal(server-final) -> (verify the server's signature)
//! AuthenticationOk ----------------------> (done)
//! ```
//!
//! Over TLS, SCRAM binds to the channel when the server offers
//! `SCRAM-SHA-256-PLUS`: the proof then covers the server's certificate
//! (`tls-server-end-point`), so a man in the middle with another certificate
//! cannot relay the login. Over TLS without a PLUS offer the gs2 header is
//! `y,,` (we could bind, the server did not offer), without TLS it is `n,,`.
//! The server's final message is verified, so SCRAM also proves the
//! *server* knows the password.
//! A wrong password is the server's ErrorResponse (`28P01`), which the
//! caller turns into a definite [`SourceError::Server`]; failures on our side
//! (no password configured, a method we do not speak, a bad server signature)
//! are a definite [`SourceError::Auth`].

use std::fmt;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::error::SourceError;
use super::session::Session;
use super::wire::Frame;

/// How we logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// No password asked (`trust`, or `peer`-like methods the server settled).
    Trust,
    /// The password in clear text (`password` in pg_hba.conf).
    Cleartext,
    /// `md5`.
    Md5,
    /// `scram-sha-256`, without channel binding.
    ScramSha256,
    /// `scram-sha-256` bound to the TLS channel (`SCRAM-SHA-256-PLUS`).
    ScramSha256Plus,
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Cleartext => "password (cleartext)",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "SCRAM-SHA-256",
            AuthMethod::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
        })
    }
}

const DURING: &str = "authentication";

/// Runs the exchange until AuthenticationOk.
///
/// `binding` is the connection's channel-binding data: `None` without TLS,
/// `Some(None)` over TLS with a certificate that has no binding digest,
/// `Some(Some(data))` over TLS with `tls-server-end-point` data.
pub(crate) async fn authenticate(
    session: &mut Session,
    user: &str,
    password: Option<&str>,
    binding: Option<Option<Vec<u8>>>,
) -> Result<AuthMethod, SourceError> {
    let mut method = AuthMethod::Trust;
    loop {
        let message = match session.read(DURING).await? {
            Frame::Message(message) => message,
            other => return Err(session.unexpected(DURING, other.name())),
        };
        match message {
            Message::AuthenticationOk => return Ok(method),
            Message::AuthenticationCleartextPassword => {
                let password = need_password(session, user, password, "password (cleartext)")?;
                frontend::password_message(password.as_bytes(), session.writer.buf())
                    .map_err(|e| auth_error(session, user, e.to_string()))?;
                session.flush(DURING).await?;
                method = AuthMethod::Cleartext;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = need_password(session, user, password, "md5")?;
                let hash = md5_hash(user.as_bytes(), password.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), session.writer.buf())
                    .map_err(|e| auth_error(session, user, e.to_string()))?;
                session.flush(DURING).await?;
                method = AuthMethod::Md5;
            }
            Message::AuthenticationSasl(body) => {
                let mechanisms: Vec<String> = body
                    .mechanisms()
                    .map(|m| Ok(m.to_owned()))
                    .collect()
                    .map_err(|e| {
                        session.protocol(DURING, format!("bad SASL mechanism list: {e}"))
                    })?;
                if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                    return Err(auth_error(
                        session,
                        user,
                        format!(
                            "the server offers SASL mechanisms {mechanisms:?} but this client \
                             speaks {SCRAM_SHA_256} (with {SCRAM_SHA_256_PLUS} over TLS). Fix: set \
                             the pg_hba.conf method for this host to scram-sha-256 (or md5)"
                        ),
                    ));
                }
                let password = need_password(session, user, password, "scram-sha-256")?;
                let plus = mechanisms.iter().any(|m| m == SCRAM_SHA_256_PLUS);
                let (mechanism, channel) = match (&binding, plus) {
                    (Some(Some(data)), true) => (
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(data.clone()),
                    ),
                    (Some(_), _) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
                    (None, _) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                };
                scram(session, user, password, mechanism, channel).await?;
                method = if mechanism == SCRAM_SHA_256_PLUS {
                    AuthMethod::ScramSha256Plus
                } else {
                    AuthMethod::ScramSha256
                };
            }
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationGssContinue(_)
            | Message::AuthenticationSspi => {
                return Err(auth_error(
                    session,
                    user,
                    "the server asks for Kerberos, GSSAPI, SSPI or SCM credentials, which this \
                     client does not support. Fix: set the pg_hba.conf method for this host to \
                     scram-sha-256"
                        .to_owned(),
                ))
            }
            Message::ErrorResponse(body) => return Err(session.server_error(DURING, &body)),
            Message::NoticeResponse(body) => session.log_notice(&body),
            other => {
                return Err(session.unexpected(DURING, super::wire::message_name(&other)));
            }
        }
    }
}

/// The SCRAM-SHA-256 exchange after AuthenticationSASL.
async fn scram(
    session: &mut Session,
    user: &str,
    password: &str,
    mechanism: &str,
    channel: ChannelBinding,
) -> Result<(), SourceError> {
    let mut scram = ScramSha256::new(password.as_bytes(), channel);
    frontend::sasl_initial_response(mechanism, scram.message(), session.writer.buf())
        .map_err(|e| auth_error(session, user, e.to_string()))?;
    session.flush(DURING).await?;

    let body = match expect_auth(session).await? {
        Message::AuthenticationSaslContinue(body) => body,
        other => return Err(session.unexpected(DURING, super::wire::message_name(&other))),
    };
    scram.update(body.data()).map_err(|e| {
        auth_error(
            session,
            user,
            format!("the server's SCRAM challenge is invalid: {e}"),
        )
    })?;
    frontend::sasl_response(scram.message(), session.writer.buf())
        .map_err(|e| auth_error(session, user, e.to_string()))?;
    session.flush(DURING).await?;

    let body = match expect_auth(session).await? {
        Message::AuthenticationSaslFinal(body) => body,
        other => return Err(session.unexpected(DURING, super::wire::message_name(&other))),
    };
    scram.finish(body.data()).map_err(|e| {
        auth_error(
            session,
            user,
            format!(
                "the server's SCRAM signature does not verify ({e}): it does not know this \
                 user's password. Fix: check that the DSN points at the right server"
            ),
        )
    })
}

/// The next authentication message; an ErrorResponse (wrong password) is
/// the server's error.
async fn expect_auth(session: &mut Session) -> Result<Message, SourceError> {
    loop {
        match session.read(DURING).await? {
            Frame::Message(Message::ErrorResponse(body)) => {
                return Err(session.server_error(DURING, &body))
            }
            Frame::Message(Message::NoticeResponse(body)) => session.log_notice(&body),
            Frame::Message(message) => return Ok(message),
            other => return Err(session.unexpected(DURING, other.name())),
        }
    }
}

fn need_password<'a>(
    session: &Session,
    user: &str,
    password: Option<&'a str>,
    method: &str,
) -> Result<&'a str, SourceError> {
    password.ok_or_else(|| {
        auth_error(
            session,
            user,
            format!(
                "the server requires {method} authentication but no password is configured. \
                 Fix: add password=... to the source DSN"
            ),
        )
    })
}

fn auth_error(session: &Session, user: &str, why: String) -> SourceError {
    SourceError::Auth {
        server: session.server.to_string(),
        user: user.to_owned(),
        why,
    }
}
