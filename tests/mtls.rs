//! Mutual TLS: `--client-ca FILE` demands a client certificate from that CA; `--allow-cn` and
//! `--allow-san` (repeatable; any one match passes) narrow which ones; the accepted subject
//! is in the `established` log line; every refusal fails the handshake with a log line
//! naming the peer and the reason, and the next good client is served.

mod common;
mod hostile_support;

use common::tls_client::{self, End};
use common::*;
use hostile_support::assert_log_count;
use openssl::ssl::SslVersion;
use std::path::{Path, PathBuf};
use std::time::Duration;

const STEP: Duration = Duration::from_secs(10);

/// `gen-cert --client alice --client bob --client carol`, plus `dave.crt`: CN `dave` but
/// SAN `dave.example`, to tell the CN check from the SAN check.
fn client_certs() -> Certs {
    let certs = Certs::with_args(&["--client", "alice", "--client", "bob", "--client", "carol"]);
    issue(&certs, "dave", "dave", "dave.example");
    certs
}

/// Issues `STEM.crt`/`STEM.key` (P-256, clientAuth) with this CN and one DNS SAN, signed by
/// the gen-cert CA in `certs`.
fn issue(certs: &Certs, stem: &str, cn: &str, san: &str) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{ExtendedKeyUsage, SubjectAlternativeName};
    use openssl::x509::{X509NameBuilder, X509};
    let dir = certs.dir();
    let ca = X509::from_pem(&std::fs::read(dir.join("ca.crt")).unwrap()).unwrap();
    let ca_key = PKey::private_key_from_pem(&std::fs::read(dir.join("ca.key")).unwrap()).unwrap();
    let key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    b.append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap()).unwrap();
    let san = SubjectAlternativeName::new().dns(san).build(&b.x509v3_context(Some(&ca), None)).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    std::fs::write(dir.join(format!("{stem}.crt")), b.build().to_pem().unwrap()).unwrap();
    std::fs::write(dir.join(format!("{stem}.key")), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
}

fn pair(certs: &Certs, stem: &str) -> (PathBuf, PathBuf) {
    (certs.dir().join(format!("{stem}.crt")), certs.dir().join(format!("{stem}.key")))
}

/// A hub daemon requiring client certificates from `certs`' CA, plus `extra`.
fn mtls_daemon(certs: &Certs, extra: &[&str]) -> Daemon {
    let ca = certs.ca().display().to_string();
    let mut args = vec!["--client-ca", ca.as_str()];
    args.extend_from_slice(extra);
    Daemon::start(certs, &args)
}

/// One client (our `openssl`-crate client) with this certificate, if any, over `version`.
/// Ok: the `established` log line of this very connection. Err: the `handshake failed`
/// reason logged for it. In TLS 1.3 the client finishes its handshake before the server has
/// judged its certificate, so a refusal shows on the first read.
fn attempt(
    daemon: &Daemon,
    certs: &Certs,
    cert: Option<(&Path, &Path)>,
    version: SslVersion,
) -> Result<String, String> {
    let tls = tls_client::connector(&certs.ca(), cert, Some(version));
    let tcp = tls_client::tcp_connect(daemon.addr(), None, STEP).expect("connect");
    tcp.set_read_timeout(Some(STEP)).unwrap();
    let local = tcp.local_addr().unwrap().to_string();
    let served = tls.connect("localhost", tcp).map_err(|e| e.to_string()).and_then(|mut s| {
        let welcome = tls_client::read_line(&mut s).map_err(|e| format!("{e:?}"))?;
        assert!(welcome.starts_with(b"* welcome to tlsrelay"), "{welcome:?}");
        assert_eq!(tls_client::close_and_wait(&mut s).1, End::Clean);
        Ok(())
    });
    let accepted = daemon.wait_for_log(&format!("from {local} accepted"), STEP);
    let id = accepted.split("conn ").nth(1).unwrap().split(' ').next().unwrap().to_string();
    match served {
        Ok(()) => Ok(daemon.wait_for_log(&format!("conn {id} established "), STEP)),
        Err(client_saw) => {
            let line = daemon.wait_for_log(&format!("conn {id} from {local} handshake failed: "), STEP);
            assert!(client_saw.contains("alert"), "the client must be told by an alert, saw: {client_saw}");
            Err(line.split("handshake failed: ").nth(1).unwrap().to_string())
        }
    }
}

const VERSIONS: [SslVersion; 2] = [SslVersion::TLS1_3, SslVersion::TLS1_2];

#[test]
fn client_ca_requires_a_certificate_from_that_ca() {
    let certs = client_certs();
    let stranger = Certs::with_args(&["--client", "alice"]); // another CA, same names
    let daemon = mtls_daemon(&certs, &[]);
    let (alice, strange_alice) = (pair(&certs, "alice"), pair(&stranger, "alice"));
    for v in VERSIONS {
        let line = attempt(&daemon, &certs, Some((&alice.0, &alice.1)), v).expect("alice from our CA");
        assert!(line.ends_with(" client CN=alice"), "{line}");
        let reason = attempt(&daemon, &certs, None, v).expect_err("no certificate");
        assert_eq!(reason, "peer did not return a certificate");
        let reason = attempt(&daemon, &certs, Some((&strange_alice.0, &strange_alice.1)), v)
            .expect_err("alice from another CA");
        assert_eq!(reason, "certificate verify failed (unable to get local issuer certificate)");
        assert!(attempt(&daemon, &certs, Some((&alice.0, &alice.1)), v).is_ok(), "served after the refusals");
    }
}

/// The same with the command-line clients: `openssl s_client -cert/-key` and gnutls-cli.
#[test]
fn client_ca_with_s_client_and_gnutls_cli() {
    let certs = client_certs();
    let stranger = Certs::with_args(&["--client", "alice"]);
    let daemon = mtls_daemon(&certs, &[]);
    let (cert, key) = pair(&certs, "alice");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    for version in ["-tls1_3", "-tls1_2"] {
        let mut ok = s_client(daemon.port(), &certs, &["-cert", cert, "-key", key, version]);
        assert!(ok.wait_output("* welcome to tlsrelay", STEP), "s_client {version} with alice");
        ok.close_stdin();
        assert!(ok.finish(STEP).status.is_some(), "s_client {version} must end at stdin EOF");

        let none = s_client(daemon.port(), &certs, &[version]).finish(STEP);
        let alert = if version == "-tls1_3" { "SSL alert number 116" } else { "SSL alert number 40" };
        assert!(none.contains(alert) && !none.contains("* welcome"), "s_client {version} without: {none:?}");
        let (scert, skey) = pair(&stranger, "alice");
        let args = ["-cert", scert.to_str().unwrap(), "-key", skey.to_str().unwrap(), version];
        let wrong = s_client(daemon.port(), &certs, &args).finish(STEP);
        assert!(wrong.contains("SSL alert number 48") && !wrong.contains("* welcome"), "wrong CA: {wrong:?}");
    }
    assert_log_count(&daemon, " client CN=alice", 2);
    assert_log_count(&daemon, "closed: handshake failed: peer did not return a certificate", 2);
    let wrong_ca =
        "closed: handshake failed: certificate verify failed (unable to get local issuer certificate)";
    assert_log_count(&daemon, wrong_ca, 2);

    // gnutls-cli: with alice's certificate served, without one refused.
    let mut g = gnutls_cli(&daemon, &certs, &["--x509certfile", cert, "--x509keyfile", key]);
    assert!(
        g.wait_until(STEP, |o| o.contains("* welcome to tlsrelay")),
        "gnutls-cli with alice:\n{}",
        g.stdout()
    );
    g.close_stdin();
    assert!(g.wait_exit(STEP).is_some());
    let mut none = gnutls_cli(&daemon, &certs, &[]);
    assert!(none.wait_exit(STEP).is_some(), "gnutls-cli without a certificate must end");
    let out = format!("{}{}", none.stdout(), none.stderr());
    assert!(out.contains("Received alert [116]") && !out.contains("* welcome"), "gnutls-cli without: {out}");
    assert_log_count(&daemon, " client CN=alice", 3);
}

fn gnutls_cli(daemon: &Daemon, certs: &Certs, args: &[&str]) -> common::process::Proc {
    let mut cmd = std::process::Command::new("gnutls-cli");
    cmd.arg("--x509cafile").arg(certs.ca()).args(args).args(["-p", &daemon.port().to_string(), "localhost"]);
    common::process::Proc::spawn("gnutls-cli", cmd)
}

/// Which of `names` (certificate stems) a daemon with these `--allow-*` flags admits, over
/// both TLS versions; a refusal must give the allow-list reason.
fn admitted(certs: &Certs, allow: &[&str], names: &[&str]) -> Vec<String> {
    let daemon = mtls_daemon(certs, allow);
    let mut passed = Vec::new();
    for name in names {
        let (cert, key) = pair(certs, name);
        let verdicts: Vec<Result<String, String>> =
            VERSIONS.iter().map(|&v| attempt(&daemon, certs, Some((&cert, &key)), v)).collect();
        match &verdicts[..] {
            [Ok(a), Ok(b)] => {
                for line in [a, b] {
                    assert!(line.ends_with(&format!(" client CN={name}")), "{allow:?}, {name}: {line}");
                }
                passed.push(name.to_string());
            }
            [Err(a), Err(b)] => {
                for reason in [a, b] {
                    assert_eq!(
                        reason,
                        "certificate verify failed (client certificate matches no --allow-cn/--allow-san)",
                        "{allow:?}, {name}"
                    );
                }
            }
            other => panic!("{allow:?}, {name}: TLS 1.3 and 1.2 disagree: {other:?}"),
        }
    }
    passed
}

#[test]
fn allow_cn_and_allow_san_restrict_which_certificates_pass() {
    let certs = client_certs();
    let all = ["alice", "bob", "carol", "dave"];
    let cases: [(&[&str], &[&str]); 8] = [
        (&[], &["alice", "bob", "carol", "dave"]),
        (&["--allow-cn", "alice"], &["alice"]),
        (&["--allow-san", "bob"], &["bob"]),
        (&["--allow-cn", "alice", "--allow-cn", "carol"], &["alice", "carol"]),
        (&["--allow-cn", "alice", "--allow-san", "bob"], &["alice", "bob"]),
        // dave: CN dave, SAN dave.example. Each list is checked against its own field.
        (&["--allow-cn", "dave"], &["dave"]),
        (&["--allow-san", "dave.example"], &["dave"]),
        (&["--allow-cn", "dave.example", "--allow-san", "dave"], &[]),
    ];
    for (allow, want) in cases {
        assert_eq!(admitted(&certs, allow, &all), want.to_vec(), "with {allow:?}");
    }
}

/// An allowed name on a certificate from another CA is still refused: the CA comes first.
#[test]
fn an_allowed_name_from_another_ca_is_refused() {
    let certs = client_certs();
    let stranger = Certs::with_args(&["--client", "alice"]);
    let daemon = mtls_daemon(&certs, &["--allow-cn", "alice", "--allow-san", "alice"]);
    let (cert, key) = pair(&stranger, "alice");
    for v in VERSIONS {
        let reason = attempt(&daemon, &certs, Some((&cert, &key)), v).expect_err("another CA's alice");
        assert_eq!(reason, "certificate verify failed (unable to get local issuer certificate)");
    }
    let (cert, key) = pair(&certs, "alice");
    assert!(attempt(&daemon, &certs, Some((&cert, &key)), SslVersion::TLS1_3).is_ok());
}
