//! The client's TLS setup: whom to trust (system roots, --ca, --pin or nobody), which name
//! to send and check, an optional client certificate, and verification failures in words.

use std::fs;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509CheckFlags;
use openssl::x509::{X509Ref, X509StoreContextRef, X509VerifyResult, X509};

use crate::cli::{ConnectArgs, Pin};
use crate::error::{describe_io, describe_ssl, Error};

/// `X509_V_ERR_*` codes that get a hint (openssl-sys is not a direct dependency).
mod code {
    pub const UNABLE_TO_GET_ISSUER_CERT: i32 = 2;
    pub const DEPTH_ZERO_SELF_SIGNED_CERT: i32 = 18;
    pub const SELF_SIGNED_CERT_IN_CHAIN: i32 = 19;
    pub const UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;
    pub const HOSTNAME_MISMATCH: i32 = 62;
    pub const IP_ADDRESS_MISMATCH: i32 = 64;
}

const CA_HINT: &str = "pass --ca with a PEM file of the CA that signed the server's certificate";
const CLIENT_HINT: &str = "pass --cert/--key with a PEM certificate and its private key";

/// How the server's certificate is judged.
#[derive(Debug, Clone, Copy)]
enum Trust {
    /// A chain to the trusted roots, issued for the name or address we asked for.
    Chain,
    /// Exactly the certificate with this fingerprint, whoever signed it.
    Pin(Pin),
    /// Anything (--insecure).
    Anything,
}

/// What the verify callback saw of one handshake, for the messages after it.
#[derive(Debug, Default)]
pub struct Seen {
    /// The fingerprint of the server's certificate.
    pub leaf: Option<Pin>,
    /// --pin was given and the certificate did not match it.
    pub pin_mismatch: bool,
}

/// Builds one `Ssl` per connection from the options read once at start.
pub struct Connector {
    context: SslConnector,
    trust: Trust,
    /// The name sent as SNI and checked against the certificate (an IP: no SNI).
    name: String,
}

impl Connector {
    /// Reads every file named on the command line, so a bad one fails before any connection.
    pub fn new(args: &ConnectArgs) -> Result<Self, Error> {
        let mut builder = SslConnector::builder(SslMethod::tls_client())?;
        builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        if let Some(path) = &args.ca {
            let mut store = X509StoreBuilder::new()?;
            for ca in read_certs(path, "read CA file", CA_HINT)? {
                store.add_cert(ca)?;
            }
            builder.set_cert_store(store.build());
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let chain = read_certs(cert, "read client certificate", CLIENT_HINT)?;
            let (leaf, intermediates) = chain.split_first().expect("read_certs returns at least one");
            builder.set_certificate(leaf)?;
            for extra in intermediates {
                builder.add_extra_chain_cert(extra.clone())?;
            }
            let private_key = read_key(key)?;
            builder.set_private_key(&private_key)?;
            builder.check_private_key().map_err(|_| {
                Error::file_with_hint(key, "use key", "it does not match --cert", CLIENT_HINT)
            })?;
        }
        let trust = match (args.insecure, args.pin) {
            (true, _) => Trust::Anything,
            (false, Some(pin)) => Trust::Pin(pin),
            (false, None) => Trust::Chain,
        };
        let name = args.servername.clone().unwrap_or_else(|| args.target.host.clone());
        Ok(Connector { context: builder.build(), trust, name })
    }

    /// A fresh `Ssl` for one connection and the slot its verify callback fills.
    pub fn ssl(&self) -> Result<(Ssl, Arc<Mutex<Seen>>), Error> {
        let mut ssl = Ssl::new(self.context.context())?;
        let ip: Option<IpAddr> = self.name.parse().ok();
        if ip.is_none() {
            ssl.set_hostname(&self.name)?; // SNI is for names only (RFC 6066 §3)
        }
        if let Trust::Chain = self.trust {
            let param = ssl.param_mut();
            param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
            match ip {
                Some(ip) => param.set_ip(ip)?,
                None => param.set_host(&self.name)?,
            }
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (trust, slot) = (self.trust, seen.clone());
        let mode = match trust {
            Trust::Anything => SslVerifyMode::NONE,
            _ => SslVerifyMode::PEER,
        };
        ssl.set_verify_callback(mode, move |chain_ok, ctx| verify(trust, &slot, chain_ok, ctx));
        Ok((ssl, seen))
    }

    /// Why the handshake was refused on our side, or `None` if the certificate was not the
    /// problem: `certificate verify failed: REASON (what to do)`.
    pub fn refusal(&self, result: X509VerifyResult, seen: &Seen) -> Option<String> {
        let leaf = seen.leaf.map(|pin| pin.to_string()).unwrap_or_else(|| "unknown".into());
        match self.trust {
            // OpenSSL may have recorded a chain error that --pin or --insecure overruled.
            Trust::Anything => return None,
            Trust::Pin(pin) => {
                return seen.pin_mismatch.then(|| {
                    format!(
                        "certificate verify failed: the server's certificate is {leaf}, not the --pin {pin}"
                    )
                })
            }
            Trust::Chain if result == X509VerifyResult::OK => return None,
            Trust::Chain => {}
        }
        let hint = match result.as_raw() {
            code::HOSTNAME_MISMATCH | code::IP_ADDRESS_MISMATCH => format!(
                "the certificate is not for {}: connect by a name it carries or pass --servername",
                self.name
            ),
            code::UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            | code::UNABLE_TO_GET_ISSUER_CERT
            | code::DEPTH_ZERO_SELF_SIGNED_CERT
            | code::SELF_SIGNED_CERT_IN_CHAIN => format!(
                "pass --ca with the CA that signed it, or --pin {leaf} to accept exactly this certificate"
            ),
            _ => String::new(),
        };
        let reason = result.error_string();
        Some(match hint.is_empty() {
            true => format!("certificate verify failed: {reason}"),
            false => format!("certificate verify failed: {reason} ({hint})"),
        })
    }
}

/// The verify callback: records the leaf's fingerprint; under --pin the fingerprint alone
/// decides (a self-signed certificate is fine), otherwise OpenSSL's verdict stands.
fn verify(trust: Trust, seen: &Mutex<Seen>, chain_ok: bool, ctx: &mut X509StoreContextRef) -> bool {
    if ctx.error_depth() != 0 {
        return chain_ok || !matches!(trust, Trust::Chain); // only the leaf matters to --pin
    }
    let leaf = ctx.current_cert().and_then(fingerprint);
    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    seen.leaf = leaf;
    match trust {
        Trust::Pin(pin) => {
            let matches = leaf == Some(pin);
            if !matches {
                seen.pin_mismatch = true;
                ctx.set_error(X509VerifyResult::APPLICATION_VERIFICATION);
            }
            matches
        }
        Trust::Chain => chain_ok,
        Trust::Anything => true,
    }
}

/// SHA-256 of the certificate's DER, the value --pin takes.
pub fn fingerprint(cert: &X509Ref) -> Option<Pin> {
    let digest = cert.digest(MessageDigest::sha256()).ok()?;
    Some(Pin(digest.as_ref().try_into().ok()?))
}

fn read_certs(path: &Path, what: &'static str, hint: &'static str) -> Result<Vec<X509>, Error> {
    let pem = fs::read(path).map_err(|e| Error::file_with_hint(path, what, describe_io(&e), hint))?;
    let certs =
        X509::stack_from_pem(&pem).map_err(|e| Error::file_with_hint(path, what, describe_ssl(&e), hint))?;
    if certs.is_empty() {
        return Err(Error::file_with_hint(path, what, "no PEM certificate in it", hint));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PKey<Private>, Error> {
    let what = "read client key";
    let pem = fs::read(path).map_err(|e| Error::file_with_hint(path, what, describe_io(&e), CLIENT_HINT))?;
    PKey::private_key_from_pem(&pem)
        .map_err(|_| Error::file_with_hint(path, what, "not a PEM private key", CLIENT_HINT))
}
