use crate::{Command, Error, Frame, Version};

/// How a subscription acknowledges messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckMode {
    /// Messages count as acknowledged when sent.
    Auto,
    /// ACK is cumulative: it acknowledges this and every earlier message of
    /// the subscription.
    Client,
    /// ACK acknowledges exactly one message (1.1+).
    ClientIndividual,
}

impl AckMode {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

/// A validated CONNECT or STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect<'a> {
    /// Versions the client accepts, newest first; `[V1_0]` when the header is
    /// absent, empty when it lists only versions this codec does not know.
    pub accept_version: Vec<Version>,
    /// `host` header (the virtual host); `None` when absent.
    pub host: Option<&'a str>,
    /// `login` header.
    pub login: Option<&'a str>,
    /// `passcode` header.
    pub passcode: Option<&'a str>,
    /// `(cx, cy)` from `heart-beat`; `(0, 0)` when absent.
    pub heart_beat: (u32, u32),
}

/// A validated SEND frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send<'a> {
    /// Where to publish.
    pub destination: &'a str,
    /// The transaction the SEND belongs to.
    pub transaction: Option<&'a str>,
}

/// A validated SUBSCRIBE frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// The destination or pattern.
    pub destination: &'a str,
    /// The subscription id; in 1.0, where it is optional, the destination.
    pub id: &'a str,
    /// Acknowledgement mode (`auto` when absent).
    pub ack: AckMode,
}

/// A validated UNSUBSCRIBE frame: `id`, or in 1.0 possibly only `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    /// The subscription id.
    pub id: Option<&'a str>,
    /// The destination (1.0 only, when `id` is absent).
    pub destination: Option<&'a str>,
}

/// A validated ACK or NACK frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAck<'a> {
    /// 1.2: the `ack` header value from the MESSAGE.
    pub id: Option<&'a str>,
    /// 1.0/1.1: the acknowledged message's `message-id`.
    pub message_id: Option<&'a str>,
    /// 1.1: the subscription of the message.
    pub subscription: Option<&'a str>,
    /// The transaction the acknowledgement belongs to.
    pub transaction: Option<&'a str>,
}

/// A validated client frame, borrowing from its [`Frame`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// CONNECT or STOMP.
    Connect(Connect<'a>),
    /// SEND.
    Send(Send<'a>),
    /// SUBSCRIBE.
    Subscribe(Subscribe<'a>),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe<'a>),
    /// ACK.
    Ack(FrameAck<'a>),
    /// NACK (1.1+).
    Nack(FrameAck<'a>),
    /// BEGIN with its transaction.
    Begin(&'a str),
    /// COMMIT with its transaction.
    Commit(&'a str),
    /// ABORT with its transaction.
    Abort(&'a str),
    /// DISCONNECT.
    Disconnect,
}

/// Parses a `heart-beat` value `cx,cy`.
pub fn parse_heart_beat(value: &str) -> Result<(u32, u32), Error> {
    use nom::{
        character::complete::{char, space0, u32 as num},
        combinator::all_consuming,
        sequence::{delimited, separated_pair},
        Parser,
    };
    let item = || delimited(space0, num, space0);
    all_consuming(separated_pair(
        item(),
        char::<&str, nom::error::Error<&str>>(','),
        item(),
    ))
    .parse(value)
    .map(|(_, hb)| hb)
    .map_err(|_| Error::InvalidHeader("heart-beat"))
}

fn text<'a>(frame: &'a Frame, name: &'static str) -> Result<Option<&'a str>, Error> {
    match frame.header(name) {
        None => Ok(None),
        Some(raw) => std::str::from_utf8(raw)
            .map(Some)
            .map_err(|_| Error::NonUtf8Header),
    }
}

fn required<'a>(frame: &'a Frame, name: &'static str) -> Result<&'a str, Error> {
    match text(frame, name)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(Error::MissingHeader(name)),
    }
}

impl<'a> ClientFrame<'a> {
    /// Validates `frame` as a client frame of `version`: known client command,
    /// required headers present and UTF-8, header values allowed.
    pub fn parse(frame: &'a Frame, version: Version) -> Result<Self, Error> {
        Ok(match frame.command {
            Command::Connect | Command::Stomp => ClientFrame::Connect(parse_connect(frame)?),
            Command::Send => ClientFrame::Send(Send {
                destination: required(frame, "destination")?,
                transaction: text(frame, "transaction")?,
            }),
            Command::Subscribe => {
                let destination = required(frame, "destination")?;
                let id = match (text(frame, "id")?, version) {
                    (Some(id), _) if !id.is_empty() => id,
                    (_, Version::V1_0) => destination,
                    _ => return Err(Error::MissingHeader("id")),
                };
                let ack = match text(frame, "ack")? {
                    None | Some("auto") => AckMode::Auto,
                    Some("client") => AckMode::Client,
                    Some("client-individual") if version >= Version::V1_1 => {
                        AckMode::ClientIndividual
                    }
                    Some(_) => return Err(Error::InvalidHeader("ack")),
                };
                ClientFrame::Subscribe(Subscribe {
                    destination,
                    id,
                    ack,
                })
            }
            Command::Unsubscribe => {
                let id = text(frame, "id")?.filter(|s| !s.is_empty());
                let destination = text(frame, "destination")?.filter(|s| !s.is_empty());
                match (id, destination, version) {
                    (None, None, _) => return Err(Error::MissingHeader("id")),
                    (None, Some(_), v) if v > Version::V1_0 => {
                        return Err(Error::MissingHeader("id"))
                    }
                    _ => {}
                }
                ClientFrame::Unsubscribe(Unsubscribe { id, destination })
            }
            Command::Ack | Command::Nack => {
                if frame.command == Command::Nack && version == Version::V1_0 {
                    return Err(Error::UnsupportedInVersion);
                }
                let ack = FrameAck {
                    id: text(frame, "id")?.filter(|s| !s.is_empty()),
                    message_id: text(frame, "message-id")?.filter(|s| !s.is_empty()),
                    subscription: text(frame, "subscription")?.filter(|s| !s.is_empty()),
                    transaction: text(frame, "transaction")?,
                };
                match version {
                    Version::V1_2 if ack.id.is_none() => return Err(Error::MissingHeader("id")),
                    Version::V1_1 | Version::V1_0 if ack.message_id.is_none() => {
                        return Err(Error::MissingHeader("message-id"))
                    }
                    Version::V1_1 if ack.subscription.is_none() => {
                        return Err(Error::MissingHeader("subscription"))
                    }
                    _ => {}
                }
                if frame.command == Command::Ack {
                    ClientFrame::Ack(ack)
                } else {
                    ClientFrame::Nack(ack)
                }
            }
            Command::Begin => ClientFrame::Begin(required(frame, "transaction")?),
            Command::Commit => ClientFrame::Commit(required(frame, "transaction")?),
            Command::Abort => ClientFrame::Abort(required(frame, "transaction")?),
            Command::Disconnect => ClientFrame::Disconnect,
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                return Err(Error::CommandNotAllowed)
            }
        })
    }
}

fn parse_connect(frame: &Frame) -> Result<Connect<'_>, Error> {
    let accept_version = match text(frame, "accept-version")? {
        None => vec![Version::V1_0],
        Some(list) => {
            let mut versions: Vec<Version> = list.split(',').filter_map(Version::parse).collect();
            versions.sort_unstable_by(|a, b| b.cmp(a));
            versions.dedup();
            versions
        }
    };
    if frame.command == Command::Stomp && text(frame, "accept-version")?.is_none() {
        return Err(Error::MissingHeader("accept-version"));
    }
    let heart_beat = match text(frame, "heart-beat")? {
        None => (0, 0),
        Some(v) => parse_heart_beat(v)?,
    };
    Ok(Connect {
        accept_version,
        host: text(frame, "host")?,
        login: text(frame, "login")?,
        passcode: text(frame, "passcode")?,
        heart_beat,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heart_beat_parses() {
        assert_eq!(parse_heart_beat("10000,5000"), Ok((10000, 5000)));
        assert_eq!(parse_heart_beat("0, 0"), Ok((0, 0)));
        assert!(parse_heart_beat("10000").is_err());
        assert!(parse_heart_beat("a,b").is_err());
        assert!(parse_heart_beat("1,2,3").is_err());
    }

    #[test]
    fn subscribe_needs_id_from_1_1() {
        let f = Frame::new(Command::Subscribe).with_header("destination", "/topic/a");
        assert_eq!(
            ClientFrame::parse(&f, Version::V1_1),
            Err(Error::MissingHeader("id"))
        );
        let ClientFrame::Subscribe(s) = ClientFrame::parse(&f, Version::V1_0).unwrap() else {
            panic!()
        };
        assert_eq!(s.id, "/topic/a");
    }

    #[test]
    fn ack_headers_per_version() {
        let f12 = Frame::new(Command::Ack).with_header("message-id", "1");
        assert_eq!(
            ClientFrame::parse(&f12, Version::V1_2),
            Err(Error::MissingHeader("id"))
        );
        assert_eq!(
            ClientFrame::parse(&f12, Version::V1_1),
            Err(Error::MissingHeader("subscription"))
        );
        assert!(ClientFrame::parse(&f12, Version::V1_0).is_ok());
        let nack = Frame::new(Command::Nack).with_header("message-id", "1");
        assert_eq!(
            ClientFrame::parse(&nack, Version::V1_0),
            Err(Error::UnsupportedInVersion)
        );
    }

    #[test]
    fn connect_versions_sorted_newest_first() {
        let f = Frame::new(Command::Connect).with_header("accept-version", "1.0,1.2,1.1,9.9");
        let ClientFrame::Connect(c) = ClientFrame::parse(&f, Version::V1_2).unwrap() else {
            panic!()
        };
        assert_eq!(
            c.accept_version,
            vec![Version::V1_2, Version::V1_1, Version::V1_0]
        );
    }
}
