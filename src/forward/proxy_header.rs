//! The PROXY protocol header tlsrelay sends to its upstream before any client byte
//! (`--proxy-protocol v1|v2`, haproxy's doc/proxy-protocol.txt): the client's address and
//! port, the address it connected to, and in v2 what the TLS handshake settled (ALPN, SNI,
//! version, cipher, the verified client certificate's CN) as TLVs.

use std::net::{IpAddr, SocketAddr};

use openssl::nid::Nid;
use openssl::ssl::{NameType, SslRef};
use openssl::x509::X509VerifyResult;
use ppp::v2::{Builder, Command, Protocol, Type, Version};

use crate::config::ProxyVersion;

/// `PP2_SUBTYPE_SSL` client flags: the connection used TLS, a certificate was presented.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// What the TLS handshake settled that a v2 backend can use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    pub alpn: Option<Vec<u8>>,
    /// The SNI the client sent (`PP2_TYPE_AUTHORITY`).
    pub sni: Option<String>,
    /// `TLSv1.3`, as OpenSSL names it.
    pub version: String,
    pub cipher: String,
    /// The CN of a client certificate that was presented and verified.
    pub client_cn: Option<String>,
    /// A client certificate was presented on this connection.
    pub client_cert: bool,
}

impl TlsFacts {
    /// Reads them off an established connection.
    pub fn of(ssl: &SslRef) -> TlsFacts {
        let cert = ssl.peer_certificate();
        let verified = cert.is_some() && ssl.verify_result() == X509VerifyResult::OK;
        let client_cn = cert.as_ref().filter(|_| verified).and_then(|cert| {
            let entry = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
            entry.data().to_string().ok().map(|cn| cn.to_string())
        });
        TlsFacts {
            alpn: ssl.selected_alpn_protocol().map(<[u8]>::to_vec),
            sni: ssl.servername(NameType::HOST_NAME).map(str::to_string),
            version: ssl.version_str().to_string(),
            cipher: ssl.current_cipher().map(|c| c.name().to_string()).unwrap_or_default(),
            client_cn,
            client_cert: cert.is_some(),
        }
    }
}

/// The header for a client at `source` that connected to `destination`. An error (a value
/// over a TLV's length limit) means no header: the upstream must never get the client's bytes
/// without the header it was promised.
pub fn build(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
    tls: &TlsFacts,
) -> Result<Vec<u8>, String> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyVersion::V1 => Ok(v1(source, destination)),
        ProxyVersion::V2 => v2(source, destination, tls),
    }
}

/// Both addresses in one family, as both formats demand: IPv4 is mapped into IPv6 when the
/// other one is IPv6 (a v4 client behind a balancer that reached us over v6, say).
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let to_v6 = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (to_v6(source), to_v6(destination))
    }
}

fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

fn v2(source: SocketAddr, destination: SocketAddr, tls: &TlsFacts) -> Result<Vec<u8>, String> {
    let mut tlvs: Vec<(Type, Vec<u8>)> = Vec::new();
    if let Some(alpn) = &tls.alpn {
        tlvs.push((Type::ALPN, alpn.clone()));
    }
    if let Some(sni) = &tls.sni {
        tlvs.push((Type::Authority, sni.as_bytes().to_vec()));
    }
    tlvs.push((Type::SSL, ssl_tlv(tls)));
    let builder =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (source, destination));
    tlvs.iter()
        .try_fold(builder, |builder, (kind, value)| builder.write_tlv(*kind, value))
        .and_then(Builder::build)
        .map_err(|e| format!("cannot build the PROXY v2 header: {e}"))
}

/// `PP2_TYPE_SSL`: client flags, the verify result (0 = a certificate was presented and
/// verified), then the version, cipher and CN sub-TLVs.
fn ssl_tlv(tls: &TlsFacts) -> Vec<u8> {
    let mut client = PP2_CLIENT_SSL;
    if tls.client_cert {
        client |= PP2_CLIENT_CERT_CONN;
    }
    let verify: u32 = if tls.client_cn.is_some() { 0 } else { 1 };
    let mut value = vec![client];
    value.extend_from_slice(&verify.to_be_bytes());
    let mut sub = |kind: Type, bytes: &[u8]| {
        value.push(kind.into());
        value.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        value.extend_from_slice(bytes);
    };
    sub(Type::SSLVersion, tls.version.as_bytes());
    sub(Type::SSLCipher, tls.cipher.as_bytes());
    if let Some(cn) = &tls.client_cn {
        sub(Type::SSLCommonName, cn.as_bytes());
    }
    value
}

/// The TLVs of a v2 header, as (type, value) pairs; for tests and the test backends.
#[cfg(test)]
pub fn tlvs(header: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let header = ppp::v2::Header::try_from(header).expect("a v2 header");
    header.tlvs().filter_map(Result::ok).map(|tlv| (tlv.kind, tlv.value.to_vec())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2;

    fn facts() -> TlsFacts {
        TlsFacts {
            alpn: Some(b"h2".to_vec()),
            sni: Some("chat.example".into()),
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            client_cn: Some("alice".into()),
            client_cert: true,
        }
    }

    #[test]
    fn v1_names_both_endpoints_in_one_family() {
        let (src, dst) = ("203.0.113.7:51000".parse().unwrap(), "10.0.0.1:443".parse().unwrap());
        let line = build(ProxyVersion::V1, src, dst, &TlsFacts::default()).unwrap();
        assert_eq!(line, b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n");
        let dst6 = "[2001:db8::1]:443".parse().unwrap();
        let line =
            String::from_utf8(build(ProxyVersion::V1, src, dst6, &TlsFacts::default()).unwrap()).unwrap();
        assert_eq!(line, "PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 51000 443\r\n");
        let parsed = ppp::v1::Header::try_from(line.as_str()).expect("ppp reads our v1 line");
        assert_eq!(parsed.header, line);
    }

    #[test]
    fn v2_carries_addresses_alpn_sni_and_the_tls_session() {
        let (src, dst) = ("[2001:db8::7]:51000".parse().unwrap(), "[::1]:443".parse().unwrap());
        let header = build(ProxyVersion::V2, src, dst, &facts()).unwrap();
        let parsed = v2::Header::try_from(header.as_slice()).expect("ppp reads our v2 header");
        assert_eq!(parsed.command, Command::Proxy);
        assert_eq!(parsed.len(), header.len(), "nothing follows the header");
        match parsed.addresses {
            v2::Addresses::IPv6(a) => {
                assert_eq!((a.source_address, a.source_port), ("2001:db8::7".parse().unwrap(), 51000));
                assert_eq!((a.destination_address, a.destination_port), ("::1".parse().unwrap(), 443));
            }
            other => panic!("not IPv6: {other:?}"),
        }
        let tlvs = tlvs(&header);
        assert_eq!(tlvs[0], (0x01, b"h2".to_vec()));
        assert_eq!(tlvs[1], (0x02, b"chat.example".to_vec()));
        let (kind, ssl) = &tlvs[2];
        assert_eq!(*kind, 0x20);
        assert_eq!(ssl[0], PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN);
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
        let subs: Vec<(u8, Vec<u8>)> = v2::TypeLengthValues::from(&ssl[5..])
            .filter_map(Result::ok)
            .map(|tlv| (tlv.kind, tlv.value.to_vec()))
            .collect();
        assert_eq!(
            subs,
            vec![
                (0x21, b"TLSv1.3".to_vec()),
                (0x23, b"TLS_AES_256_GCM_SHA384".to_vec()),
                (0x22, b"alice".to_vec())
            ]
        );
    }

    #[test]
    fn v2_without_client_certificate_says_not_verified_and_sends_no_cn() {
        let tls = TlsFacts { alpn: None, sni: None, client_cn: None, client_cert: false, ..facts() };
        let src = "127.0.0.1:5000".parse().unwrap();
        let header = build(ProxyVersion::V2, src, "127.0.0.1:443".parse().unwrap(), &tls).unwrap();
        let tlvs = tlvs(&header);
        assert_eq!(tlvs.len(), 1, "only PP2_TYPE_SSL: {tlvs:?}");
        assert_eq!(tlvs[0].1[0], PP2_CLIENT_SSL);
        assert_ne!(&tlvs[0].1[1..5], &[0, 0, 0, 0]);
    }
}
