//! The operator's certificate, key and CA files, read and checked against each other, with
//! errors that name every file involved and the fix: a key that belongs to another
//! certificate, a chain out of order, a CA file without a certificate, a file the service's
//! user may not read.

use std::fs;
use std::io;
use std::path::Path;

use openssl::pkey::{PKey, Private};
use openssl::x509::{X509VerifyResult, X509};

use crate::error::{describe_io, describe_ssl, Error};
use crate::sys;

/// What to tell an operator whose certificate files are missing or broken.
const CERT_HINT: &str = "pass --cert and --key; `tlsrelay gen-cert --out DIR` makes development ones";
const CLIENT_CA_HINT: &str =
    "--client-ca takes the PEM certificate(s) of the CA that signs client certificates";

/// The certificate file: the server's certificate first, then each issuer in order
/// (checked by [`check_pair`], once the key is known).
pub fn read_chain(path: &Path) -> Result<Vec<X509>, Error> {
    read_certs(path, "read certificate", CERT_HINT)
}

/// The --client-ca file: one or more CA certificates.
pub fn read_client_ca(path: &Path) -> Result<Vec<X509>, Error> {
    read_certs(path, "read client CA", CLIENT_CA_HINT)
}

pub fn read_key(path: &Path) -> Result<PKey<Private>, Error> {
    let pem = read(path, "read key", CERT_HINT)?;
    PKey::private_key_from_pem(&pem)
        .map_err(|_| Error::file_with_hint(path, "read key", "not a PEM private key", CERT_HINT))
}

/// The key must be the one of the chain's first certificate, and each certificate after
/// the first must have issued the one before it.
pub fn check_pair(chain: &[X509], key: &PKey<Private>, cert: &Path, key_path: &Path) -> Result<(), Error> {
    check_key_matches(chain, key, cert, key_path)?;
    check_chain_order(cert, chain)
}

/// When the key belongs to a later certificate of the file, the chain is out of order.
fn check_key_matches(chain: &[X509], key: &PKey<Private>, cert: &Path, key_path: &Path) -> Result<(), Error> {
    let matches = |c: &X509| c.public_key().is_ok_and(|public| public.public_eq(key));
    if chain.first().is_some_and(matches) {
        return Ok(());
    }
    if let Some(at) = chain.iter().position(matches) {
        return Err(Error::Setup(format!(
            "certificate file {} lists its chain out of order: the certificate of key {} is \
             number {} in it; put it first, then the certificate that issued it, and so on",
            cert.display(),
            key_path.display(),
            at + 1
        )));
    }
    Err(Error::Setup(format!(
        "key {} does not belong to certificate {}: pass the key made with this certificate \
         (or the certificate issued for this key) as --key/--cert",
        key_path.display(),
        cert.display()
    )))
}

/// Each certificate after the first must have issued the one before it.
fn check_chain_order(path: &Path, chain: &[X509]) -> Result<(), Error> {
    for (at, pair) in chain.windows(2).enumerate() {
        if pair[1].issued(&pair[0]) != X509VerifyResult::OK {
            return Err(Error::Setup(format!(
                "certificate file {} lists its chain out of order: certificate number {} ({}) \
                 did not issue number {} ({}); put the server's certificate first, then the \
                 certificate that issued it, and so on",
                path.display(),
                at + 2,
                subject(&pair[1]),
                at + 1,
                subject(&pair[0])
            )));
        }
    }
    Ok(())
}

fn subject(cert: &X509) -> String {
    let names: Vec<String> = cert
        .subject_name()
        .entries()
        .filter_map(|e| {
            Some(format!("{}={}", e.object().nid().short_name().ok()?, e.data().to_string().ok()?))
        })
        .collect();
    names.join(", ")
}

fn read_certs(path: &Path, what: &'static str, hint: &'static str) -> Result<Vec<X509>, Error> {
    let pem = read(path, what, hint)?;
    let certs =
        X509::stack_from_pem(&pem).map_err(|e| Error::file_with_hint(path, what, describe_ssl(&e), hint))?;
    if certs.is_empty() {
        let reason = "no certificate (-----BEGIN CERTIFICATE-----) in it";
        return Err(Error::file_with_hint(path, what, reason, hint));
    }
    Ok(certs)
}

/// Reads a whole file; a permission problem names the user we run as and the fix.
fn read(path: &Path, what: &'static str, hint: &'static str) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|err| match err.kind() {
        io::ErrorKind::PermissionDenied => {
            let (user, group) = sys::identity();
            Error::Setup(format!(
                "cannot {what} {}: permission denied for user {user} (let it read the file and \
                 its directories, e.g. chgrp {group} {} && chmod g+r {})",
                path.display(),
                path.display(),
                path.display()
            ))
        }
        _ => Error::file_with_hint(path, what, describe_io(&err), hint),
    })
}
