//! The `--upstream` target: `HOST:PORT` (resolved per connection), `unix:/PATH` or
//! `unix:@ABSTRACT` (a unix stream socket, the latter in Linux's abstract namespace).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Where forward mode relays to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `HOST:PORT`, resolved at each connection (DNS may change), every address tried.
    Tcp(String),
    /// `unix:/PATH`: a socket file.
    Unix(PathBuf),
    /// `unix:@NAME`: an abstract socket (no file; the name without the `@`).
    Abstract(Vec<u8>),
}

/// The longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_UNIX_PATH: usize = 107;

impl FromStr for UpstreamAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix("unix:") else {
            return tcp(text);
        };
        if let Some(name) = rest.strip_prefix('@') {
            if name.is_empty() || name.len() > MAX_UNIX_PATH - 1 {
                return Err(format!("--upstream {text}: the abstract name must be 1 to 106 bytes"));
            }
            return Ok(UpstreamAddr::Abstract(name.as_bytes().to_vec()));
        }
        if !rest.starts_with('/') {
            return Err(format!(
                "--upstream {text}: a unix socket needs an absolute path (unix:/run/app.sock) \
                 or an abstract name (unix:@name)"
            ));
        }
        if rest.len() > MAX_UNIX_PATH {
            return Err(format!("--upstream {text}: a socket path is at most {MAX_UNIX_PATH} bytes"));
        }
        Ok(UpstreamAddr::Unix(PathBuf::from(rest)))
    }
}

fn tcp(text: &str) -> Result<UpstreamAddr, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(UpstreamAddr::Tcp(text.to_string()))
        }
        _ => Err(format!("--upstream {text}: expected HOST:PORT, unix:/PATH or unix:@NAME")),
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp(target) => f.write_str(target),
            UpstreamAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            UpstreamAddr::Abstract(name) => write!(f, "unix:@{}", String::from_utf8_lossy(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_unix_and_abstract_targets() {
        assert_eq!("localhost:6667".parse(), Ok(UpstreamAddr::Tcp("localhost:6667".into())));
        assert_eq!("[::1]:80".parse(), Ok(UpstreamAddr::Tcp("[::1]:80".into())));
        assert_eq!("unix:/run/relay.sock".parse(), Ok(UpstreamAddr::Unix("/run/relay.sock".into())));
        assert_eq!("unix:@weechat".parse(), Ok(UpstreamAddr::Abstract(b"weechat".to_vec())));
        for text in ["localhost:6667", "unix:/run/relay.sock", "unix:@weechat"] {
            assert_eq!(text.parse::<UpstreamAddr>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn refuses_what_cannot_be_connected_to() {
        for bad in ["nohostport", ":80", "host:0", "host:x", "unix:", "unix:relative.sock", "unix:@"] {
            assert!(bad.parse::<UpstreamAddr>().is_err(), "{bad}");
        }
        let long = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH));
        assert!(long.parse::<UpstreamAddr>().is_err(), "a path longer than sun_path");
    }
}
