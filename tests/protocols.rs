//! Not TLS, old TLS, weak TLS: each refused (with a protocol alert where TLS allows one),
//! logged with the peer address, and the daemon serves a good client right after. Then the
//! served versions and suites, proved by probing every suite OpenSSL's client knows one at a
//! time, equal the Mozilla intermediate profile (`SslAcceptor::mozilla_intermediate_v5`).

mod common;
mod hostile_support;

use common::tls_client;
use common::*;
use hostile_support::assert_log_count;
use hostile_support::probe::{self, Probe};
use hostile_support::raw::{self, RawEnd};
use openssl::ssl::SslVersion;
use std::collections::BTreeSet;
use std::time::Duration;

const STEP: Duration = Duration::from_secs(10);
/// The alert descriptions (RFC 8446 §6).
const PROTOCOL_VERSION: u8 = 70;
const HANDSHAKE_FAILURE: u8 = 40;

/// The TLS 1.2 suites of `mozilla_intermediate_v5` (openssl crate 0.10).
const INTERMEDIATE_TLS12: [&str; 8] = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
];
const INTERMEDIATE_TLS13: [&str; 3] =
    ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];
/// Every TLS 1.3 suite OpenSSL 3 implements (the CCM ones are off by default in clients).
const OPENSSL_TLS13: [&str; 5] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
];

/// A hub daemon; hub mode needs no upstream, and its welcome line proves a client was served.
fn hub(certs: &Certs, extra: &[&str]) -> Daemon {
    let mut args = vec!["--handshake-timeout", "2"];
    args.extend_from_slice(extra);
    Daemon::start(certs, &args)
}

/// A good client right after a bad one: handshake, the welcome line, a clean close.
fn assert_serves_a_good_client(daemon: &Daemon, certs: &Certs, after: &str) {
    let tls = tls_client::connector(&certs.ca(), None, None);
    let mut s =
        tls_client::connect(daemon.addr(), &tls, STEP).unwrap_or_else(|e| panic!("after {after}: {e}"));
    let welcome =
        tls_client::read_line(&mut s).unwrap_or_else(|e| panic!("after {after}: no welcome: {e:?}"));
    assert!(welcome.starts_with(b"* welcome to tlsrelay"), "after {after}: {welcome:?}");
    assert_eq!(tls_client::close_and_wait(&mut s).1, tls_client::End::Clean, "after {after}");
}

/// Sends `bytes` raw; the server must end the connection having sent nothing but TLS alerts,
/// log `handshake failed` naming this peer, and serve a good client afterwards. Returns the
/// alert codes it sent and its log reason.
fn refused_raw(daemon: &Daemon, certs: &Certs, what: &str, bytes: &[u8]) -> (Vec<u8>, String) {
    let mut tcp = std::net::TcpStream::connect(daemon.addr()).expect("connect");
    let local = tcp.local_addr().unwrap().to_string();
    match bytes {
        [] => tcp.shutdown(std::net::Shutdown::Write).unwrap(),
        _ => {
            let _ = std::io::Write::write_all(&mut tcp, bytes);
        }
    }
    let (got, end) = raw::read_until_closed(&mut tcp, STEP);
    assert_ne!(end, RawEnd::Open, "{what}: still open after {STEP:?}");
    assert!(raw::only_alerts(&got), "{what}: the server answered with non-alert bytes {got:02x?}");
    let needle = format!("from {local} handshake");
    let line = daemon.wait_for_log(&needle, STEP);
    let reason = line.split(&needle).nth(1).unwrap().trim().to_string();
    eprintln!("{what}: alerts {:?}, logged `{reason}`", raw::alert_codes(&got));
    assert_serves_a_good_client(daemon, certs, what);
    (raw::alert_codes(&got), reason)
}

#[test]
fn not_tls_at_all_is_dropped_without_a_plaintext_answer_and_a_good_client_is_served() {
    let certs = Certs::new();
    let daemon = hub(&certs, &[]);
    let (alerts, reason) =
        refused_raw(&daemon, &certs, "plain HTTP", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(alerts.is_empty() && reason.contains("http request"), "plain HTTP: {alerts:?} {reason}");
    let (_, reason) = refused_raw(&daemon, &certs, "an immediate FIN", b"");
    assert!(reason.starts_with("failed:"), "an immediate FIN: {reason}");
    let mut rng = raw::Rng::new(6);
    for i in 0..16 {
        let len = 1 + (rng.next() % 3000) as usize;
        let junk = rng.bytes(len);
        let (_, reason) = refused_raw(&daemon, &certs, &format!("random bytes #{i} ({len} B)"), &junk);
        assert!(reason.starts_with("failed:") || reason == "timeout", "random bytes #{i}: {reason}");
    }
    // Random bytes inside a well-formed record and ClientHello header reach the hello parser.
    for i in 0..8 {
        let n = 40 + (rng.next() % 1000) as usize;
        let mut body = vec![0x01, 0, (n >> 8) as u8, n as u8, 0x03, 0x03];
        body.extend(rng.bytes(n - 2));
        let mut record = vec![0x16, 0x03, 0x01, (body.len() >> 8) as u8, body.len() as u8];
        record.extend(body);
        let (_, reason) = refused_raw(&daemon, &certs, &format!("random ClientHello #{i} ({n} B)"), &record);
        assert!(reason.starts_with("failed:"), "random ClientHello #{i}: {reason}");
    }
    assert_log_count(&daemon, " established ", 26); // only the good clients
}

/// An SSLv2 CLIENT-HELLO record (2-byte header, high bit set) offering `version`.
fn sslv2_hello(version: [u8; 2]) -> Vec<u8> {
    let ciphers = [0x01, 0x00, 0x80, 0x03, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x00, 0x00, 0x2f, 0x00, 0x00, 0x35];
    let challenge = [0x5au8; 16];
    let mut body = vec![1, version[0], version[1]];
    body.extend_from_slice(&(ciphers.len() as u16).to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes()); // no session id
    body.extend_from_slice(&(challenge.len() as u16).to_be_bytes());
    body.extend_from_slice(&ciphers);
    body.extend_from_slice(&challenge);
    let mut record = vec![0x80 | (body.len() >> 8) as u8, body.len() as u8];
    record.extend_from_slice(&body);
    record
}

#[test]
fn sslv2_and_sslv3_hellos_are_refused_with_a_protocol_version_alert() {
    let certs = Certs::new();
    let daemon = hub(&certs, &[]);
    for (what, hello) in
        [("SSLv2 hello", sslv2_hello([0, 2])), ("SSLv2-format hello for TLS 1.0", sslv2_hello([3, 1]))]
    {
        let (alerts, reason) = refused_raw(&daemon, &certs, what, &hello);
        assert_eq!(alerts, vec![PROTOCOL_VERSION], "{what}: {reason}");
        assert!(reason.contains("protocol"), "{what}: {reason}");
    }
    // A real TLS 1.2 ClientHello rewritten to say SSL 3.0 in the record and the hello. SSL 3.0
    // has no protocol_version alert, so OpenSSL answers an SSL 3.0 peer with handshake_failure.
    let tls12 = tls_client::connector(&certs.ca(), None, Some(SslVersion::TLS1_2));
    let mut hello = tls_client::client_hello(&tls12);
    hello[1..3].copy_from_slice(&[3, 0]);
    hello[9..11].copy_from_slice(&[3, 0]);
    let (alerts, reason) = refused_raw(&daemon, &certs, "SSLv3 hello", &hello);
    assert_eq!(alerts, vec![HANDSHAKE_FAILURE], "SSLv3 hello: {reason}");
    assert_eq!(reason, "failed: version too low");
}

#[test]
fn tls_1_0_and_1_1_clients_are_refused_with_a_protocol_version_alert() {
    let certs = Certs::new();
    let daemon = hub(&certs, &[]);
    // OpenSSL 3's default security level keeps its own client from offering them at all.
    for (what, flag) in [("TLS 1.0", "-tls1"), ("TLS 1.1", "-tls1_1")] {
        let p = probe::s_client(daemon.port(), &[flag, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(p.negotiated.is_none() && p.alert == Some(PROTOCOL_VERSION), "s_client {what}: {}", p.output);
        assert_serves_a_good_client(&daemon, &certs, what);
    }
    for (what, vers) in [("TLS 1.0", "TLS1.0"), ("TLS 1.1", "TLS1.1")] {
        let p = probe::gnutls(daemon.port(), &format!("NORMAL:-VERS-ALL:+VERS-{vers}"));
        assert!(
            p.negotiated.is_none() && p.alert == Some(PROTOCOL_VERSION),
            "gnutls-cli {what}: {}",
            p.output
        );
        assert_serves_a_good_client(&daemon, &certs, what);
    }
    assert_log_count(&daemon, "closed: handshake failed: unsupported protocol", 4);
}

#[test]
fn clients_offering_only_weak_suites_are_refused() {
    let certs = Certs::new();
    let daemon = hub(&certs, &[]);
    let weak = [
        // RC4 and 3DES: gone from OpenSSL 3's default provider, so gnutls offers them.
        ("gnutls RC4 + 3DES", None, Some("NONE:+VERS-TLS1.2:+ARCFOUR-128:+3DES-CBC:+RSA:+ECDHE-RSA:+ECDHE-ECDSA:+SHA1:+COMP-NULL:+SIGN-ALL:+GROUP-ALL")),
        ("no forward secrecy", Some("AES128-SHA:AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384"), None),
        ("CBC with SHA-1", Some("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES128-SHA"), None),
        ("CBC with SHA-2", Some("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384"), None),
        ("anonymous and null", Some("aNULL:eNULL"), None),
        ("CCM", Some("ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-AES256-CCM8"), None),
    ];
    for (what, openssl, gnutls) in weak {
        let p = match (openssl, gnutls) {
            (Some(list), _) => {
                probe::s_client(daemon.port(), &["-tls1_2", "-cipher", &format!("{list}:@SECLEVEL=0")])
            }
            (_, Some(priority)) => probe::gnutls(daemon.port(), priority),
            _ => unreachable!(),
        };
        assert!(p.negotiated.is_none(), "{what} negotiated {:?}", p.negotiated);
        assert_eq!(p.alert, Some(HANDSHAKE_FAILURE), "{what}: {}", p.output);
        assert_serves_a_good_client(&daemon, &certs, what);
    }
    let p = probe::s_client(
        daemon.port(),
        &["-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256"],
    );
    assert!(p.negotiated.is_none() && p.alert == Some(HANDSHAKE_FAILURE), "TLS 1.3 CCM: {}", p.output);
    assert_log_count(&daemon, "closed: handshake failed: no shared cipher", weak.len() + 1);
}

/// The served TLS versions: `(version name, negotiated?)` for each s_client version flag.
fn served_versions(port: u16) -> BTreeSet<String> {
    let mut served = BTreeSet::new();
    for flag in ["-tls1", "-tls1_1", "-tls1_2", "-tls1_3"] {
        let p = probe::s_client(port, &[flag, "-cipher", "DEFAULT@SECLEVEL=0"]);
        match p.negotiated {
            Some((version, _)) => {
                served.insert(version);
            }
            None => assert_eq!(p.alert, Some(PROTOCOL_VERSION), "{flag}: {}", p.output),
        }
    }
    served
}

/// Offers each suite alone and returns those the daemon negotiated. Every probe must end in
/// a verdict: that very suite negotiated, or a handshake_failure alert (so a suite the client
/// silently left out cannot pass for a refused one).
fn served_suites(port: u16, tls12: &[String], tls13: &[&str]) -> BTreeSet<String> {
    let mut jobs: Vec<(String, Vec<String>)> =
        tls12.iter().map(|s| (s.clone(), probe::offer_tls12(s))).collect();
    for s in tls13 {
        jobs.push((s.to_string(), vec!["-tls1_3".into(), "-ciphersuites".into(), s.to_string()]));
    }
    let results: Vec<(String, Probe)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = jobs.chunks(jobs.len().div_ceil(4)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(suite, args)| {
                            let args: Vec<&str> = args.iter().map(String::as_str).collect();
                            (suite.clone(), probe::s_client(port, &args))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut served = BTreeSet::new();
    for (suite, p) in results {
        match &p.negotiated {
            Some((_, cipher)) => {
                assert_eq!(cipher, &suite, "offered {suite} alone, got {cipher}");
                served.insert(suite);
            }
            None => assert_eq!(p.alert, Some(HANDSHAKE_FAILURE), "{suite}: no verdict:\n{}", p.output),
        }
    }
    served
}

/// A self-signed RSA-2048 certificate for localhost (gen-cert makes P-256 ones), so the
/// ECDHE-RSA and DHE-RSA suites can be negotiated at all.
fn rsa_certs(certs: &Certs) -> (String, String) {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let (cert, key_path) = (certs.dir().join("rsa.crt"), certs.dir().join("rsa.key"));
    std::fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert.display().to_string(), key_path.display().to_string())
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The proof behind the README's table: every suite OpenSSL's client knows, offered alone,
/// against an ECDSA (gen-cert) and an RSA certificate. Together the negotiated ones are
/// exactly the Mozilla intermediate list; only TLS 1.2 and 1.3 are served.
#[test]
fn served_versions_and_suites_are_exactly_mozilla_intermediate() {
    let certs = Certs::new();
    let (rsa_cert, rsa_key) = rsa_certs(&certs);
    let ecdsa = hub(&certs, &[]);
    let rsa = hub(&certs, &["--cert", &rsa_cert, "--key", &rsa_key]);
    let (tls12, _) = probe::openssl_suites();
    assert!(tls12.len() > 100, "openssl knows only {} suites?", tls12.len());

    for d in [&ecdsa, &rsa] {
        assert_eq!(served_versions(d.port()), set(&["TLSv1.2", "TLSv1.3"]));
    }
    let on_ecdsa = served_suites(ecdsa.port(), &tls12, &OPENSSL_TLS13);
    let on_rsa = served_suites(rsa.port(), &tls12, &OPENSSL_TLS13);
    eprintln!("ECDSA certificate: {on_ecdsa:?}\nRSA certificate: {on_rsa:?}");
    let tls13 = set(&INTERMEDIATE_TLS13);
    let ecdsa12: BTreeSet<String> = on_ecdsa.difference(&tls13).cloned().collect();
    let rsa12: BTreeSet<String> = on_rsa.difference(&tls13).cloned().collect();
    assert!(on_ecdsa.is_superset(&tls13) && on_rsa.is_superset(&tls13), "TLS 1.3 suites");
    assert_eq!(ecdsa12, set(&INTERMEDIATE_TLS12[..]).into_iter().filter(|s| s.contains("ECDSA")).collect());
    assert_eq!(rsa12, set(&INTERMEDIATE_TLS12[..]).into_iter().filter(|s| s.contains("RSA")).collect());
    let union: BTreeSet<String> = ecdsa12.union(&rsa12).cloned().collect();
    assert_eq!(union, set(&INTERMEDIATE_TLS12), "the TLS 1.2 suites served with either certificate");
    assert_serves_a_good_client(&ecdsa, &certs, "the suite probes");
}

#[test]
fn tls_min_13_serves_only_tls_1_3() {
    let certs = Certs::new();
    let daemon = hub(&certs, &["--tls-min", "1.3"]);
    assert_eq!(served_versions(daemon.port()), set(&["TLSv1.3"]));
    let p = probe::gnutls(daemon.port(), "NORMAL:-VERS-ALL:+VERS-TLS1.2");
    assert_eq!(p.alert, Some(PROTOCOL_VERSION), "gnutls TLS 1.2: {}", p.output);
    assert_serves_a_good_client(&daemon, &certs, "the version probes");
}

/// Mozilla intermediate also fixes the key exchange groups: X25519, prime256v1, secp384r1.
#[test]
fn key_exchange_groups_are_mozilla_intermediate() {
    let certs = Certs::new();
    let daemon = hub(&certs, &[]);
    let mut served = BTreeSet::new();
    for group in [
        "X25519",
        "X448",
        "P-256",
        "P-384",
        "P-521",
        "ffdhe2048",
        "ffdhe3072",
        "ffdhe4096",
        "ffdhe6144",
        "ffdhe8192",
    ] {
        let p = probe::s_client(daemon.port(), &["-tls1_3", "-groups", group]);
        if p.negotiated.is_some() {
            served.insert(group.to_string());
        }
    }
    assert_eq!(served, set(&["P-256", "P-384", "X25519"]));
}
