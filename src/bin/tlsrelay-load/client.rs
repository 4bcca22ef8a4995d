//! The client side of M1–M4: TLS 1.3 with AES-256-GCM only, the server verified against
//! the bench CA as `localhost`; each measure prints one JSON line on stdout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslSession, SslSessionCacheMode, SslStream, SslVersion};

use crate::cpu::Meter;
use crate::proto::{self, header, DOWNLOAD, ECHO, UPLOAD};
use crate::{BulkArgs, Dir, HandshakeArgs, RttArgs, Target, IO_TIMEOUT};

/// The one suite offered, so every relay negotiates the same cipher.
const SUITE: &str = "TLS_AES_256_GCM_SHA384";
/// Most round trips one RTT connection records.
const MAX_PINGS: usize = 2_000_000;

pub type Tls = SslStream<TcpStream>;
type SessionSlot = Arc<Mutex<Option<SslSession>>>;

/// Refuses anything but a loopback address: the bench never leaves 127.0.0.1.
pub fn loopback(target: &Target) -> io::Result<SocketAddr> {
    let addr: SocketAddr = target
        .connect
        .parse()
        .map_err(|_| io::Error::other(format!("--connect {}: want IP:PORT", target.connect)))?;
    if !addr.ip().is_loopback() {
        return Err(io::Error::other(format!("--connect {addr}: only loopback addresses are allowed")));
    }
    Ok(addr)
}

pub fn connector(ca: &Path, sessions: Option<SessionSlot>) -> io::Result<SslConnector> {
    let build = || -> Result<SslConnector, openssl::error::ErrorStack> {
        let mut b = SslConnector::builder(SslMethod::tls_client())?;
        b.set_ca_file(ca)?;
        b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
        b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
        b.set_ciphersuites(SUITE)?;
        if let Some(slot) = sessions {
            b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
            b.set_new_session_callback(move |_, session| {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
            });
        }
        Ok(b.build())
    };
    build().map_err(|e| io::Error::other(format!("client TLS setup: {e}")))
}

/// Connects and completes the handshake (blocking, with [`IO_TIMEOUT`] on every call).
pub fn connect(addr: SocketAddr, connector: &SslConnector, session: Option<&SslSession>) -> io::Result<Tls> {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut cfg = connector.configure().map_err(|e| io::Error::other(e.to_string()))?;
    if let Some(session) = session {
        // SAFETY: the session comes from a connector with the same context settings.
        unsafe { cfg.set_session(session) }.map_err(|e| io::Error::other(e.to_string()))?;
    }
    cfg.connect("localhost", tcp).map_err(|e| io::Error::other(format!("handshake: {e}")))
}

/// `"version":"TLSv1.3","cipher":"…"` of an established stream.
pub fn tls_json(s: &Tls) -> String {
    let ssl = s.ssl();
    let cipher = ssl.current_cipher().map(|c| c.name()).unwrap_or("none");
    format!("\"version\":\"{}\",\"cipher\":\"{}\"", ssl.version_str(), cipher)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.6}"))
}

fn errors_json(errors: &[String]) -> String {
    let first = errors.first().map(|e| e.replace('"', "'")).unwrap_or_default();
    format!("\"errors\":{},\"first_error\":\"{first}\"", errors.len())
}

// ---- M1, M2 ----

/// Bytes per operation: short enough that the tail after the deadline is small.
fn op_size(conns: usize) -> u64 {
    (16 << 20) / conns.max(1) as u64
}

fn bulk_op(s: &mut Tls, dir: Dir, size: u64, buf: &mut [u8]) -> io::Result<()> {
    match dir {
        Dir::Up => {
            s.write_all(&header(UPLOAD, size))?;
            proto::source(s, size, buf)?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack)
        }
        Dir::Down => {
            s.write_all(&header(DOWNLOAD, size))?;
            proto::sink(s, size, buf)
        }
    }
}

pub fn bulk(args: &BulkArgs) -> io::Result<()> {
    let addr = loopback(&args.target)?;
    let conns = args.conns.max(1);
    let size = op_size(conns).max(256 << 10);
    let connector = Arc::new(connector(&args.target.ca, None)?);
    let barrier = Arc::new(Barrier::new(conns + 1));
    let deadline: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let dir = args.dir;
    let mut handles = Vec::new();
    for _ in 0..conns {
        let (connector, barrier, deadline) = (connector.clone(), barrier.clone(), deadline.clone());
        handles.push(thread::spawn(move || -> io::Result<(u64, Instant, String, Tls)> {
            let mut buf = vec![0u8; 64 * 1024];
            let ready = connect(addr, &connector, None).and_then(|mut s| {
                bulk_op(&mut s, dir, size, &mut buf)?;
                Ok(s)
            });
            barrier.wait();
            barrier.wait();
            let mut s = ready?;
            let end = *deadline.get().expect("set between the barriers");
            let mut bytes = 0;
            while Instant::now() < end {
                bulk_op(&mut s, dir, size, &mut buf)?;
                bytes += size;
            }
            let tls = tls_json(&s);
            Ok((bytes, Instant::now(), tls, s))
        }));
    }
    barrier.wait(); // every connection is up
    let meter = Meter::start(args.target.cpu_pid);
    let t0 = Instant::now();
    let _ = deadline.set(t0 + Duration::from_secs_f64(args.secs));
    barrier.wait(); // go
    let (mut bytes, mut last, mut tls, mut errors, mut open) =
        (0u64, t0, String::new(), Vec::new(), Vec::new());
    for h in handles {
        match h.join().unwrap_or_else(|_| Err(io::Error::other("thread panicked"))) {
            Ok((b, at, t, s)) => {
                bytes += b;
                last = last.max(at);
                tls = t;
                open.push(s);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    // Read the relay's CPU while every connection (and so every socat child) still lives.
    let cpu = meter.end();
    close_all(open);
    let secs = (last - t0).as_secs_f64();
    let gb = bytes as f64 / 1e9;
    println!(
        "{{\"mbps\":{:.1},\"bytes\":{bytes},\"secs\":{secs:.4},\"conns\":{conns},\"relay_cpu_s\":{},\"cpu_s_per_gb\":{},{},{}}}",
        bytes as f64 / secs.max(1e-9) / 1e6,
        opt(cpu),
        opt(cpu.filter(|_| gb > 0.0).map(|c| c / gb)),
        if tls.is_empty() { "\"version\":null,\"cipher\":null".into() } else { tls },
        errors_json(&errors),
    );
    Ok(())
}

// ---- M3 ----

pub fn rtt(args: &RttArgs) -> io::Result<()> {
    let addr = loopback(&args.target)?;
    let conns = args.conns.max(1);
    let size = args.size.clamp(1, 16 * 1024);
    let connector = Arc::new(connector(&args.target.ca, None)?);
    let barrier = Arc::new(Barrier::new(conns + 1));
    let deadline: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let mut handles = Vec::new();
    for _ in 0..conns {
        let (connector, barrier, deadline) = (connector.clone(), barrier.clone(), deadline.clone());
        handles.push(thread::spawn(move || -> io::Result<(Vec<u32>, Tls)> {
            let mut msg = vec![b'x'; size];
            let ready = connect(addr, &connector, None).and_then(|mut s| {
                s.write_all(&header(ECHO, u64::MAX))?;
                for _ in 0..50 {
                    ping(&mut s, &mut msg)?;
                }
                Ok(s)
            });
            barrier.wait();
            barrier.wait();
            let mut s = ready?;
            let end = *deadline.get().expect("set between the barriers");
            let mut samples = Vec::with_capacity(1 << 16);
            while samples.len() < MAX_PINGS && Instant::now() < end {
                let t = Instant::now();
                ping(&mut s, &mut msg)?;
                samples.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
            }
            Ok((samples, s))
        }));
    }
    barrier.wait(); // every connection is up
    let meter = Meter::start(args.target.cpu_pid);
    let t0 = Instant::now();
    let _ = deadline.set(t0 + Duration::from_secs_f64(args.secs));
    barrier.wait(); // go
    let (mut all, mut errors, mut open) = (Vec::new(), Vec::new(), Vec::new());
    for h in handles {
        match h.join().unwrap_or_else(|_| Err(io::Error::other("thread panicked"))) {
            Ok((samples, s)) => {
                all.extend(samples);
                open.push(s);
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let cpu = meter.end();
    close_all(open);
    all.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        (!all.is_empty()).then(|| all[((all.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0)
    };
    let n = all.len();
    println!(
        "{{\"p50_us\":{},\"p99_us\":{},\"count\":{n},\"per_sec\":{:.1},\"conns\":{conns},\"relay_cpu_s\":{},\"cpu_us_per_rt\":{},{}}}",
        opt(pct(0.5)),
        opt(pct(0.99)),
        n as f64 / t0.elapsed().as_secs_f64(),
        opt(cpu),
        opt(cpu.filter(|_| n > 0).map(|c| c * 1e6 / n as f64)),
        errors_json(&errors),
    );
    Ok(())
}

/// Sends close_notify on every stream, then closes them.
fn close_all(streams: Vec<Tls>) {
    for mut s in streams {
        let _ = s.shutdown();
    }
}

fn ping(s: &mut Tls, msg: &mut [u8]) -> io::Result<()> {
    s.write_all(msg)?;
    s.read_exact(msg)
}

// ---- M4 ----

pub fn handshakes(args: &HandshakeArgs) -> io::Result<()> {
    let addr = loopback(&args.target)?;
    let threads = args.threads.max(1);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let deadline: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let resume = args.resume;
    let mut handles = Vec::new();
    for _ in 0..threads {
        let slot: SessionSlot = Arc::new(Mutex::new(None));
        let connector = connector(&args.target.ca, resume.then(|| slot.clone()))?;
        let (barrier, deadline) = (barrier.clone(), deadline.clone());
        handles.push(thread::spawn(move || -> (u64, u64, Vec<String>, String) {
            // One connection first: warms up, and with --resume fetches the first ticket.
            let warm = one_connection(addr, &connector, None).map(|(_, tls)| tls);
            barrier.wait();
            barrier.wait();
            let end = *deadline.get().expect("set between the barriers");
            let (mut count, mut reused, mut errors) = (0u64, 0u64, Vec::new());
            let tls = warm.unwrap_or_else(|e| {
                errors.push(e.to_string());
                String::new()
            });
            while Instant::now() < end && errors.len() < 1000 {
                let session =
                    if resume { slot.lock().unwrap_or_else(|e| e.into_inner()).clone() } else { None };
                match one_connection(addr, &connector, session.as_ref()) {
                    Ok((was_reused, _)) => {
                        count += 1;
                        reused += was_reused as u64;
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            (count, reused, errors, tls)
        }));
    }
    barrier.wait(); // every connection is up
    let meter = Meter::start(args.target.cpu_pid);
    let t0 = Instant::now();
    let _ = deadline.set(t0 + Duration::from_secs_f64(args.secs));
    barrier.wait(); // go
    let (mut count, mut reused, mut errors, mut tls) = (0, 0, Vec::new(), String::new());
    for h in handles {
        if let Ok((c, r, e, t)) = h.join() {
            count += c;
            reused += r;
            errors.extend(e);
            if !t.is_empty() {
                tls = t;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = meter.end();
    println!(
        "{{\"per_sec\":{:.1},\"count\":{count},\"reused\":{reused},\"secs\":{secs:.4},\"relay_cpu_s\":{},\"cpu_us_per_hs\":{},{},{}}}",
        count as f64 / secs,
        opt(cpu),
        opt(cpu.filter(|_| count > 0).map(|c| c * 1e6 / count as f64)),
        if tls.is_empty() { "\"version\":null,\"cipher\":null".into() } else { tls },
        errors_json(&errors),
    );
    Ok(())
}

/// Handshake, one byte through the relay to the backend and back, close_notify, close.
/// Returns whether the session was resumed.
fn one_connection(
    addr: SocketAddr,
    connector: &SslConnector,
    session: Option<&SslSession>,
) -> io::Result<(bool, String)> {
    let mut s = connect(addr, connector, session)?;
    let mut msg = [0u8; proto::HEADER_LEN + 1];
    msg[..proto::HEADER_LEN].copy_from_slice(&header(ECHO, 1));
    s.write_all(&msg)?;
    let mut one = [0u8; 1];
    s.read_exact(&mut one)?;
    let reused = s.ssl().session_reused();
    let tls = tls_json(&s);
    let _ = s.shutdown();
    Ok((reused, tls))
}
