//! The command line (DESIGN §2), parsed by clap and turned into a validated `ServeConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::Error;

#[derive(Parser, Debug)]
#[command(name = "tlsrelay", version, about = "A TLS relay that always completes the TLS closure")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: forward mode with --upstream, hub mode without it.
    Serve(ServeArgs),
    /// Make development certificates (CA, server, optional client certificates).
    GenCert(GenCertArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where to accept TLS (repeatable); port 0 picks a free port; IPv6 as [::1]:7443.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// PEM certificate, may carry the chain.
    #[arg(long, value_name = "FILE", default_value = "certs/server.crt")]
    pub cert: PathBuf,
    /// PEM private key.
    #[arg(long, value_name = "FILE", default_value = "certs/server.key")]
    pub key: PathBuf,
    /// Forward mode target; resolved per connection, every address tried.
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// Upstream connect deadline.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub connect_timeout: Duration,
    /// The whole closure of one connection takes at most this long.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub close_timeout: Duration,
    /// A client that has not finished its handshake by then is dropped.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    pub handshake_timeout: Duration,
    /// Close a connection with no traffic either way for that long (0 = off).
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds)]
    pub idle_timeout: Duration,
    /// TCP keepalive idle time on both sockets (0 = off).
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub keepalive: u32,
    /// Past this, new connections are closed before any handshake.
    #[arg(long, value_name = "N", default_value = "1024")]
    pub max_clients: usize,
    /// Listen backlog.
    #[arg(long, value_name = "N", default_value = "4096")]
    pub backlog: i32,
    /// Lowest TLS version accepted.
    #[arg(long, value_name = "VERSION", default_value = "1.2")]
    pub tls_min: TlsVersion,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// What the upstream gets when a client ends without close_notify.
    #[arg(long, value_name = "reset|fin", default_value = "reset")]
    pub client_eof: ClientEof,
    /// Written once listening; removed at a stop.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct GenCertArgs {
    /// Directory for ca.crt, ca.key, server.crt, server.key (an existing ca.key is reused).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Extra server names (DNS name or IP address), repeatable.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Also make NAME.crt/NAME.key for mutual TLS, repeatable.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    #[value(name = "1.2")]
    V1_2,
    #[value(name = "1.3")]
    V1_3,
}

/// What a client's unclean end (EOF without close_notify, reset) becomes upstream.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEof {
    /// An abortive close (RST): the upstream learns the stream was cut.
    Reset,
    /// A plain FIN, for upstreams that treat any end as a request to finish.
    Fin,
}

/// Where the listener binds when no --listen is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

impl ServeArgs {
    /// Checks what clap cannot; returns the listen addresses to bind.
    pub fn validate(&mut self) -> Result<(), Error> {
        if self.listen.is_empty() {
            self.listen.push(DEFAULT_LISTEN.parse().expect("default address parses"));
        }
        if self.max_clients == 0 {
            return Err(Error::Usage("--max-clients must be at least 1".into()));
        }
        if self.backlog <= 0 {
            return Err(Error::Usage("--backlog must be at least 1".into()));
        }
        if self.close_timeout.is_zero() || self.handshake_timeout.is_zero() || self.connect_timeout.is_zero()
        {
            return Err(Error::Usage(
                "--close-timeout, --handshake-timeout and --connect-timeout must be above 0".into(),
            ));
        }
        if let Some(upstream) = &self.upstream {
            if !upstream.contains(':') {
                return Err(Error::Usage(format!("--upstream {upstream}: expected HOST:PORT")));
            }
        }
        Ok(())
    }
}

/// Seconds as a number, fractions allowed ("1.5"), for tests that want short deadlines.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut argv = vec!["tlsrelay", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => Ok(args),
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let mut args = serve(&[]).unwrap();
        args.validate().unwrap();
        assert_eq!(args.listen, vec!["127.0.0.1:7443".parse().unwrap()]);
        assert_eq!(args.close_timeout, Duration::from_secs(5));
        assert_eq!(args.handshake_timeout, Duration::from_secs(10));
        assert_eq!(args.idle_timeout, Duration::ZERO);
        assert_eq!(args.max_clients, 1024);
        assert_eq!(args.backlog, 4096);
        assert_eq!(args.tls_min, TlsVersion::V1_2);
        assert_eq!(args.client_eof, ClientEof::Reset);
        assert!(args.upstream.is_none());
    }

    #[test]
    fn listen_is_repeatable_and_takes_ipv6() {
        let args = serve(&["--listen", "127.0.0.1:0", "--listen", "[::1]:7443"]).unwrap();
        assert_eq!(args.listen.len(), 2);
        assert!(args.listen[1].is_ipv6());
    }

    #[test]
    fn fractional_seconds_are_accepted() {
        let args = serve(&["--close-timeout", "1.5"]).unwrap();
        assert_eq!(args.close_timeout, Duration::from_millis(1500));
        assert!(serve(&["--close-timeout", "soon"]).is_err());
        assert!(serve(&["--close-timeout", "-1"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(serve(&["--tls-min", "1.1"]).is_err());
        assert!(serve(&["--client-eof", "maybe"]).is_err());
        let mut args = serve(&["--upstream", "nohostport"]).unwrap();
        assert_eq!(args.validate().unwrap_err().exit_code(), 2);
        let mut args = serve(&["--max-clients", "0"]).unwrap();
        assert_eq!(args.validate().unwrap_err().exit_code(), 2);
    }
}
