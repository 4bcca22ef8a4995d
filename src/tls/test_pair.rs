//! For unit tests: a TLS connection over loopback TCP with a fresh development certificate.

use std::net::{TcpListener, TcpStream};

use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode, SslVersion};

use crate::tls::certgen;

/// (our server side, the client), both blocking, handshake done; `max` caps the version.
pub fn loopback_pair(max: Option<SslVersion>) -> (SslStream<TcpStream>, SslStream<TcpStream>) {
    let dir = tempfile::tempdir().unwrap();
    certgen::run(&certgen::Options { out: dir.path().into(), names: vec![], clients: vec![] }).unwrap();
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acceptor.set_certificate_chain_file(dir.path().join("server.crt")).unwrap();
    acceptor.set_private_key_file(dir.path().join("server.key"), SslFiletype::PEM).unwrap();
    acceptor.set_max_proto_version(max).unwrap();
    let acceptor = acceptor.build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
        connector.set_verify(SslVerifyMode::NONE);
        connector.build().connect("localhost", TcpStream::connect(addr).unwrap()).unwrap()
    });
    let ours = acceptor.accept(listener.accept().unwrap().0).unwrap();
    (ours, client.join().unwrap())
}
