/// Everything that can be wrong with STOMP input.
///
/// A small `Copy + Eq` enum so tests can `assert_eq!` it and the broker can
/// turn it into an ERROR frame ([`Error::message`]). After any of these the
/// connection should be closed: the byte stream can no longer be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line is not a known STOMP command.
    #[error("unknown command")]
    UnknownCommand,
    /// A client sent a server command or vice versa.
    #[error("command not allowed from this peer")]
    CommandNotAllowed,
    /// A `\r` not followed by `\n` where an end of line was expected.
    #[error("malformed end of line")]
    BadEol,
    /// A command or header line is longer than [`crate::Limits::max_header_line`].
    #[error("header line too long")]
    HeaderLineTooLong,
    /// The header section is longer than [`crate::Limits::max_header_bytes`].
    #[error("header section too large")]
    HeadersTooLarge,
    /// More headers than [`crate::Limits::max_headers`].
    #[error("too many headers")]
    TooManyHeaders,
    /// A header line without a `:`.
    #[error("header without colon")]
    HeaderWithoutColon,
    /// A header line starting with `:`.
    #[error("empty header name")]
    EmptyHeaderName,
    /// An undefined escape sequence (1.1+), or a trailing backslash.
    #[error("invalid escape sequence in header")]
    InvalidEscape,
    /// A header that must be UTF-8 text is not.
    #[error("header is not valid UTF-8")]
    NonUtf8Header,
    /// A NUL byte inside a header line.
    #[error("NUL byte in header")]
    NulInHeader,
    /// `content-length` is not a non-negative decimal number.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// The body (declared or buffered) exceeds [`crate::Limits::max_body`].
    #[error("body too large")]
    BodyTooLarge,
    /// The whole frame exceeds [`crate::Limits::max_frame`].
    #[error("frame too large")]
    FrameTooLarge,
    /// The octet after a `content-length` body is not NUL.
    #[error("frame not terminated by NUL after content-length bytes")]
    MissingNul,
    /// A body on a frame that may not carry one (only SEND, MESSAGE, ERROR may).
    #[error("frame may not have a body")]
    BodyNotAllowed,
    /// A required header is absent; the name says which.
    #[error("missing required header")]
    MissingHeader(&'static str),
    /// A header has a value this version does not allow; the name says which.
    #[error("invalid header value")]
    InvalidHeader(&'static str),
    /// The command does not exist in the negotiated version (NACK or STOMP in 1.0).
    #[error("command not supported in this protocol version")]
    UnsupportedInVersion,
}

impl Error {
    /// A one-line human description, suitable for an ERROR frame's `message`
    /// header (names the header for [`Error::MissingHeader`] and
    /// [`Error::InvalidHeader`]).
    pub fn message(&self) -> String {
        match self {
            Error::MissingHeader(h) => format!("missing required header '{h}'"),
            Error::InvalidHeader(h) => format!("invalid value for header '{h}'"),
            other => other.to_string(),
        }
    }
}
