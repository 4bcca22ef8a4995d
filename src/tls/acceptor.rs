//! The server's `SslAcceptor`, built from the operator's files with errors that name them.

use openssl::nid::Nid;
use openssl::ssl::{AlpnError, SslAcceptor, SslAcceptorBuilder, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Ref, X509VerifyResult};

use crate::config::{TlsConfig, TlsVersion};
use crate::error::Error;
use crate::tls::files;

/// Builds the acceptor: Mozilla intermediate profile, the given minimum version,
/// certificate chain and key checked against each other, optional client CA.
pub fn acceptor(config: &TlsConfig) -> Result<SslAcceptor, Error> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    let min = match config.tls_min {
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    builder.set_min_proto_version(Some(min))?;
    // Mozilla intermediate's groups; the crate leaves OpenSSL 3's defaults, whose ffdhe8192
    // costs the server ~100 times the CPU of X25519 per handshake a client asks for.
    builder.set_groups_list("X25519:P-256:P-384")?;
    // One recv(2) takes whatever records have arrived, instead of two per record (header,
    // then body). Records OpenSSL has read ahead are invisible to poll(2); that is safe here
    // because a worker polls the client socket for reading only after ssl_read said
    // WANT_READ (TlsSide), and a read paused by backpressure resumes when there is room, not
    // when the socket becomes readable (tests/records.rs).
    builder.set_read_ahead(true);
    offer_alpn(&mut builder, &config.alpn);

    let chain = files::read_chain(&config.cert)?;
    let key = files::read_key(&config.key)?;
    // Before OpenSSL sees them: its own word for a wrong pair is "key values mismatch".
    files::check_pair(&chain, &key, &config.cert, &config.key)?;
    let (leaf, intermediates) = chain.split_first().expect("read_chain returns at least one");
    builder.set_certificate(leaf)?;
    for cert in intermediates {
        builder.add_extra_chain_cert(cert.clone())?;
    }
    builder.set_private_key(&key)?;
    builder.check_private_key()?;

    if let Some(ca_path) = &config.client_ca {
        let mut store = X509StoreBuilder::new()?;
        for ca in files::read_client_ca(ca_path)? {
            store.add_cert(ca)?;
        }
        builder.set_verify_cert_store(store.build())?;
        let allowed = AllowedClients { cns: config.allow_cn.clone(), sans: config.allow_san.clone() };
        // Checked in the verify callback, so a refused client fails its handshake.
        builder.set_verify_callback(
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
            move |ok, ctx| {
                if !ok || ctx.error_depth() != 0 || allowed.is_empty() {
                    return ok;
                }
                let passes = ctx.current_cert().is_some_and(|cert| allowed.admits(cert));
                if !passes {
                    ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
                }
                passes
            },
        );
    }
    Ok(builder.build())
}

/// `--alpn`: the first protocol of ours the client also offers (our order of preference);
/// none in common: the handshake goes on without ALPN, as without the flag.
fn offer_alpn(builder: &mut SslAcceptorBuilder, protocols: &[String]) {
    if protocols.is_empty() {
        return;
    }
    let wire: Vec<u8> =
        protocols.iter().flat_map(|p| std::iter::once(p.len() as u8).chain(p.bytes())).collect();
    builder.set_alpn_select_callback(move |_, client| choose_alpn(&wire, client));
}

/// The first of `ours` (wire format: length-prefixed names) that the client's list also
/// holds, as a slice of the client's list (OpenSSL keeps that one).
fn choose_alpn<'a>(ours: &[u8], client: &'a [u8]) -> Result<&'a [u8], AlpnError> {
    let offered = wire_names(client);
    wire_names(ours).find_map(|ours| offered.clone().find(|&theirs| theirs == ours)).ok_or(AlpnError::NOACK)
}

/// The names of an ALPN list in wire format; stops at a malformed length.
fn wire_names(mut wire: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    std::iter::from_fn(move || {
        let (&len, rest) = wire.split_first()?;
        let name = rest.get(..len as usize)?;
        wire = &rest[len as usize..];
        Some(name)
    })
}

/// The --allow-cn / --allow-san lists: a certificate passes if any one entry matches.
struct AllowedClients {
    cns: Vec<String>,
    sans: Vec<String>,
}

impl AllowedClients {
    fn is_empty(&self) -> bool {
        self.cns.is_empty() && self.sans.is_empty()
    }

    fn admits(&self, cert: &X509Ref) -> bool {
        let cn_matches = cert
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .filter_map(|entry| entry.data().to_string().ok())
            .any(|cn| self.cns.contains(&cn));
        let san_matches = cert.subject_alt_names().is_some_and(|names| {
            names.iter().filter_map(|name| name.dnsname()).any(|dns| self.sans.iter().any(|s| s == dns))
        });
        cn_matches || san_matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_takes_our_first_choice_the_client_also_offers() {
        let ours = b"\x02h2\x08http/1.1";
        assert_eq!(choose_alpn(ours, b"\x08http/1.1\x02h2"), Ok(&b"h2"[..]), "our order, not theirs");
        assert_eq!(choose_alpn(ours, b"\x06spdy/3\x08http/1.1"), Ok(&b"http/1.1"[..]));
        assert!(choose_alpn(ours, b"\x06spdy/3").is_err(), "nothing in common: no ALPN");
        assert!(choose_alpn(ours, b"\x09h2").is_err(), "a malformed client list");
    }
}
