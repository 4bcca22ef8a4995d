//! The command line (DESIGN §2): clap definitions, and the validated configuration (`config.rs`) they turn into.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::cidr::Cidr;
use crate::config::upstream_addr::UpstreamAddr;
use crate::config::{ClientEof, ProxyVersion, RelayConfig, TlsConfig, TlsVersion};
use crate::error::Error;

#[derive(Parser, Debug)]
#[command(name = "tlsrelay", version, about = "A TLS relay that always completes the TLS closure")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `serve --help` and the man page's closing section: signals, systemd, exit codes, files.
const SERVE_NOTES: &str = "\
Signals: SIGTERM or SIGINT stops, closing every connection cleanly (again: a fast stop); \
SIGHUP or SIGUSR1 reloads the certificate, key and client CA for new handshakes; SIGUSR2 \
upgrades without a lost connection (`tlsrelay upgrade --pid-file FILE`).

Under systemd (tlsrelay.service, Type=notify): READY=1 once every listener is bound, \
RELOADING=1 and STOPPING=1 around a reload and a stop, STATUS= with the live counts, and \
after an upgrade the new process announces itself with MAINPID=. Sockets passed by systemd \
(tlsrelay.socket, LISTEN_FDS) are served instead of binding; --listen must then be absent \
or name exactly their addresses.

Exit status: 0 after a requested stop; 1 when it cannot start (the line names the file or \
address and the fix); 2 usage error; 3 a failure while running.

Files (package): /etc/default/tlsrelay (TLSRELAY_OPTS), /etc/tlsrelay/ (certificates; \
NAME.env for tlsrelay@NAME.service).";

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: forward mode with --upstream, hub mode without it.
    #[command(after_long_help = SERVE_NOTES)]
    Serve(ServeArgs),
    /// Make development certificates (CA, server, optional client certificates).
    GenCert(GenCertArgs),
    /// Ask the running daemon for a hitless upgrade and wait for its outcome.
    Upgrade(UpgradeArgs),
    /// Connect to a TLS server: stdin to TLS, TLS to stdout; tells a clean end from a truncated one.
    Connect(ConnectArgs),
    /// Print a one-screen summary of a running daemon, read from its --status endpoint.
    Status(StatusArgs),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    GenerateDocs(GenerateDocsArgs),
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
    /// Forward mode target: HOST:PORT (resolved per connection, every address tried),
    /// unix:/PATH or unix:@ABSTRACT (a unix stream socket).
    #[arg(long, value_name = "HOST:PORT|unix:/PATH")]
    pub upstream: Option<UpstreamAddr>,
    /// Send a PROXY protocol header to the upstream before any client byte.
    #[arg(long, value_name = "v1|v2", requires = "upstream")]
    pub proxy_protocol: Option<ProxyVersion>,
    /// Connections from these sources must open with a PROXY v1/v2 header naming the real
    /// client (repeatable; e.g. 10.0.0.0/8).
    #[arg(long = "accept-proxy", value_name = "CIDR")]
    pub accept_proxy: Vec<Cidr>,
    /// SO_REUSEPORT on each listener: several processes share the port.
    #[arg(long)]
    pub reuse_port: bool,
    /// ALPN protocols offered to clients, in our order of preference (e.g. h2,http/1.1).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub alpn: Vec<String>,
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
    /// Past this many connections from one address, new ones from it are closed before any
    /// handshake (0 = off).
    #[arg(long, value_name = "N", default_value = "0")]
    pub max_clients_per_ip: usize,
    /// Listen backlog.
    #[arg(long, value_name = "N", default_value = "4096")]
    pub backlog: i32,
    /// Lowest TLS version accepted.
    #[arg(long, value_name = "VERSION", default_value = "1.2")]
    pub tls_min: TlsVersion,
    /// Require client certificates signed by this CA (mutual TLS).
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// With --client-ca: accept a client certificate whose subject CN is NAME (repeatable).
    #[arg(long = "allow-cn", value_name = "NAME")]
    pub allow_cn: Vec<String>,
    /// With --client-ca: accept a client certificate with NAME among its DNS SANs (repeatable).
    #[arg(long = "allow-san", value_name = "NAME")]
    pub allow_san: Vec<String>,
    /// What the upstream gets when a client ends without close_notify.
    #[arg(long, value_name = "reset|fin", default_value = "reset")]
    pub client_eof: ClientEof,
    /// Written once listening; removed at a stop; after an upgrade it names the new process.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// On upgrade, how long old connections may run on before their clean close.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds)]
    pub drain: Duration,
    /// Plain-HTTP GET /metrics (Prometheus) and GET /health on this address (localhost or a
    /// management network only).
    #[arg(long, value_name = "ADDR:PORT")]
    pub status: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, /health turns 503 at once and the closures start this much later.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_seconds)]
    pub stop_delay: Duration,
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct StatusArgs {
    /// The running daemon's --status address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub status: Option<SocketAddr>,
    /// Or its --pid-file: the address is read from that process's command line.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateDocsArgs {
    /// Directory for man/ and completions/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct UpgradeArgs {
    /// The running daemon's --pid-file.
    #[arg(long, value_name = "FILE")]
    pub pid_file: PathBuf,
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

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The server; a name is sent as SNI and checked against the certificate's DNS entries,
    /// an address ([::1]:7443 for IPv6) against its IP entries.
    #[arg(value_name = "HOST:PORT")]
    pub target: Target,
    /// PEM file of the CA(s) to trust instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Name to send as SNI and to check the certificate against, instead of HOST.
    #[arg(long, value_name = "NAME")]
    pub servername: Option<String>,
    /// Do not check the server's certificate at all (prints a warning).
    #[arg(long, conflicts_with_all = ["ca", "pin"])]
    pub insecure: bool,
    /// Accept exactly the certificate whose DER has this SHA-256, instead of the CA and name checks.
    #[arg(long, value_name = "sha256:HEX", conflicts_with = "ca")]
    pub pin: Option<Pin>,
    /// Client certificate (PEM, may carry the chain) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Reconnect, with backoff, whenever the connection ends without being asked to.
    #[arg(long)]
    pub reconnect: bool,
    /// Longest wait between two reconnection attempts.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_seconds)]
    pub reconnect_max: Duration,
    /// First wait between reconnection attempts (doubles up to --reconnect-max); for tests.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_seconds, hide = true)]
    pub reconnect_min: Duration,
    /// After our close_notify, how long the server may stay silent before we give up; for tests.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds, hide = true)]
    pub close_timeout: Duration,
    /// Notices on stderr: connected, the server's closing reason, each failed attempt.
    #[arg(long, short)]
    pub verbose: bool,
}

impl ConnectArgs {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.reconnect_min.is_zero() || self.close_timeout.is_zero() {
            return Err(Error::Usage("--reconnect-min and --close-timeout must be above 0".into()));
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(Error::Usage(format!(
                "--reconnect-max {} s is below --reconnect-min {} s",
                self.reconnect_max.as_secs_f64(),
                self.reconnect_min.as_secs_f64()
            )));
        }
        Ok(())
    }
}

/// A server to connect to: `HOST:PORT`, `ADDR:PORT` or `[IPV6]:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The host as an IP address, when it is one (then it is verified without SNI).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || format!("'{text}' is not HOST:PORT (e.g. example.com:443, [::1]:7443)");
        let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(expected)?,
            None if host.contains(':') => return Err(expected()),
            None => host,
        };
        let port: u16 = port.parse().map_err(|_| expected())?;
        if host.is_empty() || port == 0 {
            return Err(expected());
        }
        Ok(Target { host: host.to_string(), port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The SHA-256 of a certificate's DER, as `sha256:HEX`; colons between the hex pairs are
/// allowed, so `openssl x509 -fingerprint -sha256` output can be pasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl FromStr for Pin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = || format!("'{text}' is not sha256:HEX (64 hex digits)");
        let (algo, hex) = text.split_once(':').ok_or_else(expected)?;
        if !algo.eq_ignore_ascii_case("sha256") {
            return Err(expected());
        }
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(expected());
        }
        let mut pin = [0u8; 32];
        for (byte, pair) in pin.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| expected())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| expected())?;
        }
        Ok(Pin(pin))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
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
        if self.client_ca.is_none() && !(self.allow_cn.is_empty() && self.allow_san.is_empty()) {
            return Err(Error::Usage("--allow-cn and --allow-san need --client-ca FILE".into()));
        }
        if let Some(bad) = self.alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
            return Err(Error::Usage(format!("--alpn: '{bad}' is not a protocol name (1-255 bytes)")));
        }
        Ok(())
    }

    /// The TLS files and policy, for the acceptor (built at start and on every reload).
    pub fn tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
            tls_min: self.tls_min,
            client_ca: self.client_ca.clone(),
            allow_cn: self.allow_cn.clone(),
            allow_san: self.allow_san.clone(),
            alpn: self.alpn.clone(),
        }
    }

    /// What every connection's worker and pump read.
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            upstream: self.upstream.clone(),
            proxy_protocol: self.proxy_protocol,
            accept_proxy: self.accept_proxy.clone(),
            connect_timeout: self.connect_timeout,
            close_timeout: self.close_timeout,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            keepalive: self.keepalive,
            client_eof: self.client_eof,
        }
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
    fn upstream_and_proxy_flags_parse() {
        let args = serve(&[
            "--upstream",
            "unix:@app",
            "--proxy-protocol",
            "v2",
            "--accept-proxy",
            "10.0.0.0/8",
            "--accept-proxy",
            "::1",
            "--reuse-port",
            "--alpn",
            "h2,http/1.1",
        ])
        .unwrap();
        assert_eq!(args.upstream, Some(UpstreamAddr::Abstract(b"app".to_vec())));
        assert_eq!(args.proxy_protocol, Some(ProxyVersion::V2));
        assert_eq!(args.accept_proxy.len(), 2);
        assert!(args.reuse_port);
        assert_eq!(args.alpn, vec!["h2", "http/1.1"]);
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
        assert!(serve(&["--upstream", "nohostport"]).is_err());
        assert!(serve(&["--upstream", "unix:relative"]).is_err());
        assert!(serve(&["--proxy-protocol", "v2"]).is_err(), "--proxy-protocol needs --upstream");
        assert!(serve(&["--accept-proxy", "10.0.0.0/33"]).is_err());
        let mut args = serve(&["--max-clients", "0"]).unwrap();
        assert_eq!(args.validate().unwrap_err().exit_code(), 2);
        let mut args = serve(&["--allow-cn", "alice"]).unwrap();
        assert_eq!(args.validate().unwrap_err().exit_code(), 2, "--allow-cn without --client-ca");
    }

    mod connect_args {
        use super::*;
        use proptest::prelude::*;

        fn connect(args: &[&str]) -> Result<ConnectArgs, clap::Error> {
            let mut argv = vec!["tlsrelay", "connect"];
            argv.extend_from_slice(args);
            match Cli::try_parse_from(argv)?.command {
                Command::Connect(args) => Ok(args),
                _ => unreachable!(),
            }
        }

        #[test]
        fn defaults_match_the_design() {
            let args = connect(&["example.com:443"]).unwrap();
            args.validate().unwrap();
            assert_eq!(args.target, Target { host: "example.com".into(), port: 443 });
            assert_eq!(args.reconnect_max, Duration::from_secs(30));
            assert_eq!(args.reconnect_min, Duration::from_secs(1));
            assert_eq!(args.close_timeout, Duration::from_secs(5));
            assert!(!args.reconnect && !args.insecure && !args.verbose);
            assert!(args.ca.is_none() && args.pin.is_none() && args.cert.is_none());
        }

        #[test]
        fn targets_take_names_addresses_and_bracketed_ipv6() {
            let target: Target = "[::1]:7443".parse().unwrap();
            assert_eq!((target.host.as_str(), target.port), ("::1", 7443));
            assert_eq!(target.to_string(), "[::1]:7443");
            assert!(target.ip().is_some());
            let target: Target = "127.0.0.1:7443".parse().unwrap();
            assert!(target.ip().is_some());
            assert!("localhost:7443".parse::<Target>().unwrap().ip().is_none());
            for bad in ["localhost", "::1:7443", "[::1]7443", ":443", "host:0", "host:99999", "host:x"] {
                assert!(bad.parse::<Target>().is_err(), "{bad}");
            }
        }

        #[test]
        fn pins_take_hex_with_or_without_colons() {
            let hex = "99f70e36f350a0d27e5a83a6cd33200b1973e914e4c020d2d2ff63e994fe2aa5";
            let pin: Pin = format!("sha256:{hex}").parse().unwrap();
            assert_eq!(pin.to_string(), format!("sha256:{hex}"));
            let fingerprint = "99:F7:0E:36:F3:50:A0:D2:7E:5A:83:A6:CD:33:20:0B:19:73:E9:14:E4:C0:20:D2:D2:FF:63:E9:94:FE:2A:A5";
            assert_eq!(format!("SHA256:{fingerprint}").parse::<Pin>().unwrap(), pin);
            for bad in [
                hex,
                "sha1:abcd",
                "sha256:abcd",
                &format!("sha256:{hex}00"),
                &format!("sha256:{}", "zz".repeat(32)),
            ] {
                assert!(bad.parse::<Pin>().is_err(), "{bad}");
            }
        }

        #[test]
        fn contradictory_or_incomplete_options_are_usage_errors() {
            assert!(connect(&[]).is_err());
            assert!(connect(&["h:1", "--insecure", "--ca", "ca.crt"]).is_err());
            assert!(connect(&["h:1", "--insecure", "--pin", &format!("sha256:{}", "00".repeat(32))]).is_err());
            assert!(
                connect(&["h:1", "--ca", "ca.crt", "--pin", &format!("sha256:{}", "00".repeat(32))]).is_err()
            );
            assert!(connect(&["h:1", "--cert", "c.crt"]).is_err(), "--cert needs --key");
            assert!(connect(&["h:1", "--key", "c.key"]).is_err(), "--key needs --cert");
            let args = connect(&["h:1", "--reconnect-max", "0.5"]).unwrap();
            assert_eq!(args.validate().unwrap_err().exit_code(), 2, "max below the 1 s min");
            let args = connect(&["h:1", "--reconnect-min", "0"]).unwrap();
            assert_eq!(args.validate().unwrap_err().exit_code(), 2);
        }

        proptest! {
            /// Every fingerprint printed as --pin parses back to itself.
            #[test]
            fn pins_round_trip(bytes in any::<[u8; 32]>()) {
                let pin = Pin(bytes);
                prop_assert_eq!(pin.to_string().parse::<Pin>().unwrap(), pin);
            }

            /// Every socket address printed as a target parses back to the same host and port.
            #[test]
            fn socket_addresses_are_targets(ip in any::<IpAddr>(), port in 1u16..) {
                let addr = SocketAddr::new(ip, port);
                let target: Target = addr.to_string().parse().unwrap();
                prop_assert_eq!(target.ip(), Some(addr.ip()));
                prop_assert_eq!(target.port, addr.port());
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any seconds value clap accepts is the Duration it names, to the millisecond.
            #[test]
            fn seconds_parse_to_the_same_duration(millis in 0u64..10_000_000) {
                let text = format!("{}.{:03}", millis / 1000, millis % 1000);
                prop_assert_eq!(parse_seconds(&text).unwrap(), Duration::from_millis(millis));
            }

            /// Arbitrary text never panics the parser: it parses or is a clean error.
            #[test]
            fn arbitrary_arguments_never_panic(args in proptest::collection::vec("[ -~]{0,20}", 0..6)) {
                let mut argv = vec!["tlsrelay".to_string(), "serve".to_string()];
                argv.extend(args);
                if let Ok(Cli { command: Command::Serve(mut serve) }) = Cli::try_parse_from(argv) {
                    let _ = serve.validate();
                }
            }

            /// Every IPv4 listen address with a port round-trips through --listen.
            #[test]
            fn listen_addresses_round_trip(a in any::<[u8; 4]>(), port in any::<u16>()) {
                let addr = format!("{}.{}.{}.{}:{port}", a[0], a[1], a[2], a[3]);
                let args = serve(&["--listen", &addr]).unwrap();
                prop_assert_eq!(args.listen[0].to_string(), addr);
            }
        }
    }
}
