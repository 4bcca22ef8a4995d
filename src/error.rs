//! The errors an operator can see, each worded to name the file or address and the fix.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that stops a subcommand; `main` turns it into one line and an exit code.
#[derive(Debug)]
pub enum Error {
    /// A file the operator named could not be read, written or parsed.
    File { path: PathBuf, what: &'static str, reason: String, hint: &'static str },
    /// A listening address could not be bound.
    Bind { addr: String, flag: &'static str, source: io::Error },
    /// The command line was consistent for clap but not for us (exit code 2).
    Usage(String),
    /// An OpenSSL call failed outside of any file (building a context, signing).
    Tls(openssl::error::ErrorStack),
    /// A start-up problem already worded in full: every file involved and the fix (a key
    /// that belongs to another certificate, a chain out of order, a file we may not read).
    Setup(String),
    /// A requested upgrade did not happen (exit code 1), with the old process's reason.
    Upgrade(String),
    /// `tlsrelay status` could not read the daemon's --status endpoint.
    Status(String),
    /// Any other operating system failure.
    Io(io::Error),
}

impl Error {
    /// An error about `path`, e.g. `cannot read key certs/server.key: permission denied`.
    pub fn file(path: impl Into<PathBuf>, what: &'static str, reason: impl ToString) -> Self {
        Error::File { path: path.into(), what, reason: reason.to_string(), hint: "" }
    }

    /// Like [`Error::file`], with a suggestion appended (e.g. "run `make certs`").
    pub fn file_with_hint(
        path: impl Into<PathBuf>,
        what: &'static str,
        reason: impl ToString,
        hint: &'static str,
    ) -> Self {
        Error::File { path: path.into(), what, reason: reason.to_string(), hint }
    }

    /// The process exit code of DESIGN §2.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::File { path, what, reason, hint } => {
                write!(f, "cannot {what} {}: {reason}", path.display())?;
                if !hint.is_empty() {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
            Error::Bind { addr, flag, source } => write!(
                f,
                "cannot listen on {addr}: {} (choose another {flag} address or stop what uses it)",
                describe_io(source)
            ),
            Error::Usage(msg) | Error::Upgrade(msg) | Error::Status(msg) | Error::Setup(msg) => {
                write!(f, "{msg}")
            }
            Error::Tls(stack) => write!(f, "TLS setup failed: {}", describe_ssl(stack)),
            Error::Io(err) => write!(f, "{}", describe_io(err)),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::Io(err)
    }
}

impl From<openssl::error::ErrorStack> for Error {
    fn from(stack: openssl::error::ErrorStack) -> Self {
        Error::Tls(stack)
    }
}

/// An io::Error as an operator reads it: "permission denied", not "Permission denied (os error 13)".
pub fn describe_io(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    };
    lowercase_first(&text)
}

/// The reasons of an OpenSSL error stack, without the library's codes and file names.
pub fn describe_ssl(stack: &openssl::error::ErrorStack) -> String {
    let reasons: Vec<String> = stack
        .errors()
        .iter()
        .map(|e| e.reason().map(str::to_string).unwrap_or_else(|| e.code().to_string()))
        .collect();
    if reasons.is_empty() {
        "unknown OpenSSL error".to_string()
    } else {
        reasons.join("; ")
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_error_names_the_file_and_the_fix() {
        let err = Error::file_with_hint(
            "certs/server.key",
            "read key",
            describe_io(&io::Error::from(io::ErrorKind::PermissionDenied)),
            "run `make certs`",
        );
        assert_eq!(err.to_string(), "cannot read key certs/server.key: permission denied (run `make certs`)");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn os_errors_lose_their_number() {
        let err = io::Error::from_raw_os_error(13);
        assert_eq!(describe_io(&err), "permission denied");
    }
}
