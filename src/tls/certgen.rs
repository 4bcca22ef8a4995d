//! `tlsrelay gen-cert`: a development CA and the certificates it signs, made with the `openssl` crate.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

use crate::error::{describe_io, describe_ssl, Error};

/// What `tlsrelay gen-cert` was asked for.
pub struct Options {
    /// Directory for every file written (created if missing).
    pub out: PathBuf,
    /// Extra names for the server certificate: an IP address if it parses as one, else a DNS name.
    pub names: Vec<String>,
    /// One client certificate (`NAME.crt`, `NAME.key`) per entry, for mutual TLS.
    pub clients: Vec<String>,
}

/// Subject CN of the CA; tests and operators recognise the dev CA by it.
const CA_COMMON_NAME: &str = "tlsrelay development CA";
/// CA lifetime: long enough that a dev checkout never sees it expire.
const CA_DAYS: u32 = 3650;
/// Leaf lifetime: 825 days is the longest that Apple's TLS clients accept.
const LEAF_DAYS: u32 = 825;
/// notBefore is backdated so a peer whose clock is a little behind still accepts a fresh cert.
const BACKDATE_SECS: i64 = 3600;
/// Random serials, so a re-issued certificate never collides with a cached one.
const SERIAL_BITS: i32 = 128;
/// Names the server certificate always carries, so `make run` works over every loopback form.
const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What a leaf certificate may be used for.
#[derive(Clone, Copy)]
enum Usage {
    Server,
    Client,
}

/// One subjectAltName entry.
#[derive(Clone, PartialEq)]
enum San {
    Dns(String),
    Ip(IpAddr),
}

/// The signing CA: its certificate and key.
struct Ca {
    cert: X509,
    key: PKey<Private>,
}

/// Writes (or reuses) the CA, then the server certificate, then one certificate per client.
pub fn run(opts: &Options) -> Result<(), Error> {
    let server_sans = server_sans(&opts.names)?;
    for name in &opts.clients {
        check_client_name(name)?;
    }
    fs::create_dir_all(&opts.out).map_err(|e| Error::file(&opts.out, "create directory", describe_io(&e)))?;
    let ca = load_or_make_ca(&opts.out)?;
    issue_leaf(&opts.out, "server", "localhost", &server_sans, Usage::Server, &ca)?;
    for name in &opts.clients {
        issue_leaf(&opts.out, name, name, &[San::Dns(name.clone())], Usage::Client, &ca)?;
    }
    Ok(())
}

/// The loopback names plus each `--name`, without duplicates.
fn server_sans(names: &[String]) -> Result<Vec<San>, Error> {
    let mut sans = Vec::new();
    for name in SERVER_NAMES.iter().copied().chain(names.iter().map(String::as_str)) {
        let san = parse_san(name)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// An IP address (brackets allowed, as in `[::1]`) or a DNS name (`*.` wildcards allowed).
fn parse_san(name: &str) -> Result<San, Error> {
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')).unwrap_or(name);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(San::Ip(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-._*".contains(c));
    if !valid {
        return Err(Error::Usage(format!("invalid --name {name:?}: give a DNS name or an IP address")));
    }
    Ok(San::Dns(name.to_ascii_lowercase()))
}

/// A client name becomes a file name and a CN, so it must not escape `--out` or replace our files.
fn check_client_name(name: &str) -> Result<(), Error> {
    let valid = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && name != "ca"
        && name != "server";
    if valid {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid --client {name:?}: use 1-64 of A-Z a-z 0-9 . _ - (not \"ca\" or \"server\")"
        )))
    }
}

/// Reuses `ca.key` when present, so certificates already trusted elsewhere stay valid.
fn load_or_make_ca(out: &Path) -> Result<Ca, Error> {
    let key_path = out.join("ca.key");
    let cert_path = out.join("ca.crt");
    let key = match read_key(&key_path)? {
        Some(key) => key,
        None => {
            let key = new_key()?;
            write_key(&key_path, &key)?;
            key
        }
    };
    if let Some(cert) = matching_cert(&cert_path, &key) {
        log::debug!("reusing {} and {}", key_path.display(), cert_path.display());
        return Ok(Ca { cert, key });
    }
    let cert = make_ca_cert(&key)?;
    write_cert(&cert_path, &cert)?;
    Ok(Ca { cert, key })
}

/// `None` when the file does not exist; any other failure names the file.
fn read_key(path: &Path) -> Result<Option<PKey<Private>>, Error> {
    let pem = match fs::read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(path, "read key", describe_io(&e))),
    };
    // An empty passphrase instead of none: OpenSSL would otherwise prompt on the terminal.
    PKey::private_key_from_pem_passphrase(&pem, b"").map(Some).map_err(|e| {
        Error::file_with_hint(path, "read key", describe_ssl(&e), "gen-cert needs an unencrypted PEM key")
    })
}

/// The certificate at `path` if it holds the public half of `key`; anything else is re-issued.
fn matching_cert(path: &Path, key: &PKey<Private>) -> Option<X509> {
    let cert = X509::from_pem(&fs::read(path).ok()?).ok()?;
    let public = cert.public_key().ok()?;
    public.public_eq(key).then_some(cert)
}

fn new_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

/// Self-signed CA certificate for `key`.
fn make_ca_cert(key: &PKey<Private>) -> Result<X509, ErrorStack> {
    let mut builder = base_builder(CA_COMMON_NAME, key, CA_DAYS)?;
    let subject = subject_name_for(CA_COMMON_NAME)?;
    builder.set_issuer_name(&subject)?;
    builder.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    builder.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(ski)?;
    builder.sign(key, MessageDigest::sha256())?;
    Ok(builder.build())
}

/// Writes `STEM.key` (a fresh key) and `STEM.crt` signed by `ca`.
fn issue_leaf(out: &Path, stem: &str, cn: &str, sans: &[San], usage: Usage, ca: &Ca) -> Result<(), Error> {
    let key = new_key()?;
    let cert = make_leaf_cert(cn, sans, usage, &key, ca)?;
    write_key(&out.join(format!("{stem}.key")), &key)?;
    write_cert(&out.join(format!("{stem}.crt")), &cert)
}

fn make_leaf_cert(
    cn: &str,
    sans: &[San],
    usage: Usage,
    key: &PKey<Private>,
    ca: &Ca,
) -> Result<X509, ErrorStack> {
    let mut builder = base_builder(cn, key, LEAF_DAYS)?;
    builder.set_issuer_name(ca.cert.subject_name())?;
    builder.append_extension(BasicConstraints::new().build()?)?;
    // digitalSignature alone: an EC key signs the (EC)DHE handshake, it never encrypts.
    builder.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    builder.append_extension(extended_key_usage(usage).build()?)?;
    let san = subject_alt_name(sans).build(&builder.x509v3_context(Some(&ca.cert), None))?;
    builder.append_extension(san)?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(Some(&ca.cert), None))?;
    builder.append_extension(ski)?;
    let aki =
        AuthorityKeyIdentifier::new().keyid(false).build(&builder.x509v3_context(Some(&ca.cert), None))?;
    builder.append_extension(aki)?;
    builder.sign(&ca.key, MessageDigest::sha256())?;
    Ok(builder.build())
}

fn extended_key_usage(usage: Usage) -> ExtendedKeyUsage {
    let mut eku = ExtendedKeyUsage::new();
    match usage {
        Usage::Server => eku.server_auth(),
        Usage::Client => eku.client_auth(),
    };
    eku
}

fn subject_alt_name(sans: &[San]) -> SubjectAlternativeName {
    let mut ext = SubjectAlternativeName::new();
    for san in sans {
        match san {
            San::Dns(name) => ext.dns(name),
            San::Ip(ip) => ext.ip(&ip.to_string()),
        };
    }
    ext
}

/// Version 3, random serial, subject CN, public key and validity: what CA and leaves share.
fn base_builder(cn: &str, key: &PKey<Private>, days: u32) -> Result<X509Builder, ErrorStack> {
    let mut builder = X509Builder::new()?;
    builder.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(SERIAL_BITS, MsbOption::MAYBE_ZERO, false)?;
    builder.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    builder.set_subject_name(subject_name_for(cn)?.as_ref())?;
    builder.set_pubkey(key)?;
    builder.set_not_before(Asn1Time::from_unix(backdated_now())?.as_ref())?;
    builder.set_not_after(Asn1Time::days_from_now(days)?.as_ref())?;
    Ok(builder)
}

fn subject_name_for(cn: &str) -> Result<openssl::x509::X509Name, ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(name.build())
}

fn backdated_now() -> libc::time_t {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    (now - BACKDATE_SECS) as libc::time_t
}

fn write_key(path: &Path, key: &PKey<Private>) -> Result<(), Error> {
    let pem = key.private_key_to_pem_pkcs8()?;
    write_file(path, &pem, 0o600).map_err(|e| Error::file(path, "write key", describe_io(&e)))
}

fn write_cert(path: &Path, cert: &X509) -> Result<(), Error> {
    let pem = cert.to_pem()?;
    write_file(path, &pem, 0o644).map_err(|e| Error::file(path, "write certificate", describe_io(&e)))
}

/// Writes a fresh file with `mode` and renames it into place: a key is never readable by others,
/// not even for a moment, and a server reloading on SIGHUP never sees half a file.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // A leftover from an interrupted run may have another mode; create_new needs it gone.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let result = write_new(&tmp, bytes, mode).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    log::info!("wrote {}", path.display());
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509PurposeId, X509StoreContext};
    use std::os::unix::fs::PermissionsExt;

    fn generate(dir: &Path, names: &[&str], clients: &[&str]) {
        let opts = Options {
            out: dir.to_path_buf(),
            names: names.iter().map(|n| n.to_string()).collect(),
            clients: clients.iter().map(|n| n.to_string()).collect(),
        };
        run(&opts).expect("gen-cert");
    }

    fn cert(dir: &Path, file: &str) -> X509 {
        X509::from_pem(&fs::read(dir.join(file)).unwrap()).unwrap()
    }

    /// Verifies `leaf` against `ca` for `purpose`, optionally also checking a host name.
    fn verifies(ca: &X509, leaf: &X509, purpose: X509PurposeId, host: Option<&str>) -> bool {
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(ca.clone()).unwrap();
        store.set_purpose(purpose).unwrap();
        if let Some(host) = host {
            let mut param = openssl::x509::verify::X509VerifyParam::new().unwrap();
            match host.parse::<IpAddr>() {
                Ok(ip) => param.set_ip(ip).unwrap(),
                Err(_) => param.set_host(host).unwrap(),
            }
            store.set_param(&param).unwrap();
        }
        let store = store.build();
        let mut ctx = X509StoreContext::new().unwrap();
        let chain = Stack::new().unwrap();
        ctx.init(&store, leaf, &chain, |c| c.verify_cert()).unwrap()
    }

    fn sans(cert: &X509) -> Vec<String> {
        let names = cert.subject_alt_names().expect("subjectAltName");
        names
            .iter()
            .map(|n| match (n.dnsname(), n.ipaddress()) {
                (Some(dns), _) => format!("DNS:{dns}"),
                (_, Some(ip)) if ip.len() == 4 => {
                    format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(ip).unwrap()))
                }
                (_, Some(ip)) => format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(ip).unwrap())),
                _ => "other".to_string(),
            })
            .collect()
    }

    fn common_name(cert: &X509) -> String {
        cert.subject_name().entries_by_nid(Nid::COMMONNAME).next().unwrap().data().to_string().unwrap()
    }

    fn mode(path: PathBuf) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn server_cert_verifies_against_the_ca_for_every_name() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &["relay.example", "10.1.2.3"], &[]);
        let (ca, server) = (cert(dir.path(), "ca.crt"), cert(dir.path(), "server.crt"));
        for host in ["localhost", "127.0.0.1", "::1", "relay.example", "10.1.2.3"] {
            assert!(verifies(&ca, &server, X509PurposeId::SSL_SERVER, Some(host)), "{host}");
        }
        assert!(!verifies(&ca, &server, X509PurposeId::SSL_SERVER, Some("other.example")));
        assert!(!verifies(&ca, &server, X509PurposeId::SSL_CLIENT, None), "server cert is not a client cert");
    }

    #[test]
    fn server_cert_has_the_loopback_names_and_the_extra_ones_once() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &["relay.example", "[::1]", "localhost", "192.0.2.7"], &[]);
        let server = cert(dir.path(), "server.crt");
        assert_eq!(
            sans(&server),
            ["DNS:localhost", "IP:127.0.0.1", "IP:::1", "DNS:relay.example", "IP:192.0.2.7"]
        );
        assert_eq!(common_name(&server), "localhost");
    }

    #[test]
    fn ca_is_a_ca_and_leaves_carry_its_key_id() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[], &[]);
        let (ca, server) = (cert(dir.path(), "ca.crt"), cert(dir.path(), "server.crt"));
        assert!(verifies(&ca, &ca, X509PurposeId::ANY, None), "self-signed CA verifies");
        let ca_id = ca.subject_key_id().expect("CA has a subject key identifier");
        let leaf_aki = server.authority_key_id().expect("leaf has an authority key identifier");
        assert_eq!(ca_id.as_slice(), leaf_aki.as_slice());
    }

    #[test]
    fn keys_are_private_and_certificates_public() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[], &["alice"]);
        for key in ["ca.key", "server.key", "alice.key"] {
            assert_eq!(mode(dir.path().join(key)), 0o600, "{key}");
            let pem = fs::read_to_string(dir.path().join(key)).unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key} is PKCS#8");
        }
        assert_eq!(mode(dir.path().join("server.crt")) & 0o600, 0o600);
        assert!(!dir.path().join(".server.key.tmp").exists());
    }

    #[test]
    fn rerun_reuses_the_ca_key_and_issues_a_new_server_serial() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[], &[]);
        let (ca1, server1) = (cert(dir.path(), "ca.crt"), cert(dir.path(), "server.crt"));
        generate(dir.path(), &[], &[]);
        let (ca2, server2) = (cert(dir.path(), "ca.crt"), cert(dir.path(), "server.crt"));
        assert!(ca1.public_key().unwrap().public_eq(&ca2.public_key().unwrap()));
        assert_eq!(ca1.to_der().unwrap(), ca2.to_der().unwrap(), "ca.crt reused as is");
        let serial = |c: &X509| c.serial_number().to_bn().unwrap();
        assert_ne!(serial(&server1), serial(&server2));
        assert!(verifies(&ca1, &server2, X509PurposeId::SSL_SERVER, Some("localhost")));
    }

    #[test]
    fn missing_ca_cert_is_reissued_from_the_kept_key() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[], &[]);
        let (ca1, server1) = (cert(dir.path(), "ca.crt"), cert(dir.path(), "server.crt"));
        fs::remove_file(dir.path().join("ca.crt")).unwrap();
        generate(dir.path(), &[], &[]);
        let ca2 = cert(dir.path(), "ca.crt");
        assert!(ca1.public_key().unwrap().public_eq(&ca2.public_key().unwrap()));
        assert!(verifies(&ca2, &server1, X509PurposeId::SSL_SERVER, None), "old leaves stay valid");
    }

    #[test]
    fn client_cert_is_for_client_auth_only() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[], &["alice"]);
        let (ca, alice) = (cert(dir.path(), "ca.crt"), cert(dir.path(), "alice.crt"));
        assert!(verifies(&ca, &alice, X509PurposeId::SSL_CLIENT, None));
        assert!(!verifies(&ca, &alice, X509PurposeId::SSL_SERVER, None));
        assert_eq!(sans(&alice), ["DNS:alice"]);
        assert_eq!(common_name(&alice), "alice");
    }

    #[test]
    fn bad_names_are_usage_errors_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        for (names, clients) in [(vec![], vec!["../evil"]), (vec![], vec!["server"]), (vec!["a,b"], vec![])] {
            let opts = Options {
                out: out.clone(),
                names: names.iter().map(|n: &&str| n.to_string()).collect(),
                clients: clients.iter().map(|n| n.to_string()).collect(),
            };
            let err = run(&opts).expect_err("rejected");
            assert_eq!(err.exit_code(), 2, "{err}");
        }
        assert!(!out.exists());
    }

    #[test]
    fn unreadable_ca_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca.key"), "not a key").unwrap();
        let opts = Options { out: dir.path().to_path_buf(), names: vec![], clients: vec![] };
        let err = run(&opts).expect_err("garbage key rejected").to_string();
        assert!(err.starts_with("cannot read key ") && err.contains("ca.key"), "{err}");
    }
}
