//! An unclean end that reads as an error on every TLS stack (DESIGN §3): a fatal
//! `internal_error` alert (80) when it can go out without blocking, then a reset. A bare reset
//! is not enough: Node's `tls` reads an RST right behind data as a clean end, and Go's API
//! reads a bare FIN on a record boundary as one.
//!
//! OpenSSL 3.0 exports no call that sends an alert of our choice (`ssl3_send_alert` is
//! internal). But its record layer sends exactly this alert itself when a read finds no read
//! BIO (`ssl3_read_n`: `SSLfatal(s, SSL_AD_INTERNAL_ERROR, SSL_R_READ_BIO_NOT_SET)`), through
//! the write BIO — our socket — and only when no earlier write is still pending
//! (`ssl3_send_alert` defers it then), so it never blocks and never cuts a record in two.
//! So the read BIO is taken away for one `SSL_read`, then put back. Nothing crafted, no
//! secrets handled by us: the alert is encrypted and sequenced by OpenSSL like any record.
//! OpenSSL 3.2's new record layer has the same check (`RLAYERfatal`, same reason); only 3.0 is
//! tested here, by the unit tests below and tests/unclean_end.rs.

use std::net::TcpStream;
use std::os::raw::{c_int, c_void};

use foreign_types::ForeignTypeRef;
use openssl::ssl::{ShutdownState, SslStream};

use crate::sys;

extern "C" {
    // libssl 3 (ssl.h, bio.h); declared here as the rest of the crate's few direct calls are.
    fn SSL_get_rbio(ssl: *const c_void) -> *mut c_void;
    fn SSL_set0_rbio(ssl: *mut c_void, rbio: *mut c_void);
    fn SSL_read(ssl: *mut c_void, buf: *mut c_void, num: c_int) -> c_int;
    fn BIO_up_ref(bio: *mut c_void) -> c_int;
}

/// Records OpenSSL may still hold decrypted or read ahead: `SSL_read` returns those before it
/// touches the (missing) read BIO. Bounded so that a hostile peer cannot keep us here.
const MAX_BUFFERED_READS: usize = 1024;

/// Ends `stream` uncleanly: the fatal `internal_error` alert if the socket takes it now, then
/// `SO_LINGER` 0 so that dropping the stream resets the connection. Never sends close_notify.
/// The socket must be non-blocking (it is after every handshake).
pub fn abort(stream: &mut SslStream<TcpStream>) {
    send_internal_error(stream);
    sys::set_linger_zero(stream.get_ref());
}

/// Has OpenSSL send `internal_error` (see the module doc). A stream already failed sends
/// nothing: OpenSSL raises one fatal alert per connection at most.
fn send_internal_error(stream: &mut SslStream<TcpStream>) {
    // With the peer's close_notify received, `SSL_read` returns 0 before it reads anything.
    let shutdown = stream.get_shutdown();
    stream.set_shutdown(shutdown - ShutdownState::RECEIVED);
    let ssl = stream.ssl().as_ptr() as *mut c_void;
    let mut scratch = [0u8; 1024];
    // SAFETY: `ssl` is the live SSL of `stream`, borrowed mutably for this whole block, so no
    // other call can reach it. The read BIO gets one reference of our own before the SSL
    // drops its own (`SSL_set0_rbio` frees the previous one) and gives it back after, so
    // its count is unchanged. While it is away nothing calls into the `openssl` crate's
    // stream methods, which read their state out of the read BIO: only raw `SSL_read`.
    unsafe {
        let rbio = SSL_get_rbio(ssl);
        if rbio.is_null() || BIO_up_ref(rbio) != 1 {
            return;
        }
        SSL_set0_rbio(ssl, std::ptr::null_mut());
        for _ in 0..MAX_BUFFERED_READS {
            if SSL_read(ssl, scratch.as_mut_ptr().cast(), scratch.len() as c_int) <= 0 {
                break;
            }
        }
        SSL_set0_rbio(ssl, rbio);
    }
    let now = stream.get_shutdown();
    stream.set_shutdown(now | (shutdown & ShutdownState::RECEIVED));
    // The failed read left its reasons in this thread's error queue; the next connection on
    // this worker must not read them as its own.
    let _ = openssl::error::ErrorStack::get();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    use openssl::ssl::SslVersion;

    /// A TLS connection over loopback TCP at `version`: (our non-blocking server side, a
    /// blocking client).
    fn tls_pair(version: SslVersion) -> (SslStream<TcpStream>, SslStream<TcpStream>) {
        let (mut ours, mut client) = crate::tls::test_pair::loopback_pair(Some(version));
        // The client's first byte: afterwards TLS 1.3's tickets are on the client's side.
        client.write_all(b"x").unwrap();
        ours.read_exact(&mut [0u8; 1]).unwrap();
        ours.get_ref().set_nonblocking(true).unwrap();
        // As every accepted socket of the daemon (sys::set_accepted_options): without it Nagle
        // holds the alert behind unacknowledged bytes and the reset discards it unsent.
        ours.get_ref().set_nodelay(true).unwrap();
        (ours, client)
    }

    /// What the client's next read reports, as OpenSSL's reason text.
    fn client_error(client: &mut SslStream<TcpStream>) -> String {
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        loop {
            match client.ssl_read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(err) => return format!("{} after {:?}", err, String::from_utf8_lossy(&got)),
            }
        }
    }

    fn assert_internal_error(version: SslVersion) {
        let (mut ours, mut client) = tls_pair(version);
        ours.ssl_write(b"partial").unwrap();
        abort(&mut ours);
        drop(ours);
        let seen = client_error(&mut client);
        assert!(seen.contains("alert internal error"), "{version:?}: the client saw {seen}");
        assert!(seen.ends_with("\"partial\""), "{version:?}: the data before it is lost: {seen}");
    }

    #[test]
    fn the_client_reads_the_data_then_an_internal_error_alert_tls13() {
        assert_internal_error(SslVersion::TLS1_3);
    }

    #[test]
    fn the_client_reads_the_data_then_an_internal_error_alert_tls12() {
        assert_internal_error(SslVersion::TLS1_2);
    }

    #[test]
    fn data_the_client_sent_meanwhile_does_not_stop_the_alert() {
        let (mut ours, mut client) = tls_pair(SslVersion::TLS1_3);
        client.write_all(&vec![1u8; 40_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut first = [0u8; 10];
        ours.ssl_read(&mut first).unwrap();
        abort(&mut ours);
        drop(ours);
        assert!(client_error(&mut client).contains("alert internal error"));
    }

    #[test]
    fn a_client_that_already_sent_close_notify_still_gets_the_alert() {
        let (mut ours, mut client) = tls_pair(SslVersion::TLS1_3);
        client.shutdown().unwrap();
        let mut buf = [0u8; 16];
        let end = loop {
            match ours.ssl_read(&mut buf) {
                Err(err) if err.code() == openssl::ssl::ErrorCode::WANT_READ => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => break other,
            }
        };
        assert_eq!(end.unwrap_err().code(), openssl::ssl::ErrorCode::ZERO_RETURN);
        abort(&mut ours);
        assert!(ours.get_shutdown().contains(ShutdownState::RECEIVED));
        drop(ours);
        assert!(client_error(&mut client).contains("alert internal error"));
    }

    #[test]
    fn the_stream_is_usable_for_its_socket_after_the_abort() {
        let (mut ours, _client) = tls_pair(SslVersion::TLS1_3);
        abort(&mut ours);
        // The read BIO is back: the crate's accessors, which read through it, still work.
        assert!(ours.get_ref().peer_addr().is_ok());
        let linger = nix::sys::socket::getsockopt(ours.get_ref(), nix::sys::socket::sockopt::Linger).unwrap();
        assert_eq!((linger.l_onoff, linger.l_linger), (1, 0));
    }
}
