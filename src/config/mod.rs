//! The validated configuration that `cli.rs` produces and the layers below it read: the TLS
//! files and policy, and what every connection's pump needs. Nothing here knows the daemon.

pub mod cidr;
pub mod upstream_addr;

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use cidr::Cidr;
use upstream_addr::UpstreamAddr;

/// The lowest TLS version served (`--tls-min`).
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

/// The server's certificate, key and client-certificate policy; re-read on every reload.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tls_min: TlsVersion,
    pub client_ca: Option<PathBuf>,
    pub allow_cn: Vec<String>,
    pub allow_san: Vec<String>,
    /// ALPN protocols offered, our preference first; empty: none negotiated.
    pub alpn: Vec<String>,
}

/// Which PROXY protocol header goes to the upstream (`--proxy-protocol`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text line `PROXY TCP4 SRC DST SPORT DPORT\r\n` (stunnel, older consumers).
    V1,
    /// The binary header, with TLVs for ALPN, SNI and the TLS session.
    V2,
}

/// What the worker, the forward pump and the hub session read for every connection.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Forward mode's target; `None` in hub mode.
    pub upstream: Option<UpstreamAddr>,
    /// The PROXY header sent to the upstream before any client byte.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Sources that must open with a PROXY header (a balancer in front).
    pub accept_proxy: Vec<Cidr>,
    pub connect_timeout: Duration,
    pub close_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Zero: off.
    pub idle_timeout: Duration,
    /// TCP keepalive idle seconds on both sockets; zero: off.
    pub keepalive: u32,
    pub client_eof: ClientEof,
}
