//! The error a handler returns and a remote peer sends back: an errno and a sentence.

use std::fmt;

use crate::{Errno, Message};

/// An errno with text that says what went wrong, as carried in an error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub errnum: Errno,
    pub text: String,
}

impl Error {
    pub fn new(errnum: Errno, text: impl Into<String>) -> Self {
        Error { errnum, text: text.into() }
    }
    pub fn invalid(text: impl Into<String>) -> Self {
        Self::new(Errno::EINVAL, text)
    }
    pub fn not_found(text: impl Into<String>) -> Self {
        Self::new(Errno::ENOENT, text)
    }
    pub fn proto(text: impl Into<String>) -> Self {
        Self::new(Errno::EPROTO, text)
    }

    /// The error carried by an error response (None for a success).
    pub fn from_response(msg: &Message) -> Option<Self> {
        msg.is_error().then(|| Error {
            errnum: Errno(msg.errnum),
            text: msg.errstr.clone().unwrap_or_else(|| Errno(msg.errnum).description().to_string()),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.errnum.name(), self.text)
    }
}

impl std::error::Error for Error {}

impl From<rmp_serde::decode::Error> for Error {
    fn from(e: rmp_serde::decode::Error) -> Self {
        Error::proto(format!("payload does not decode: {e}"))
    }
}

impl From<rmp_serde::encode::Error> for Error {
    fn from(e: rmp_serde::encode::Error) -> Self {
        Error::proto(format!("payload does not encode: {e}"))
    }
}
