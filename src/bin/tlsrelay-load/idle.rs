//! M5/M6: hold N idle TLS connections; prints `ready {json}` once they are up. On the line
//! `watch` (stdin) it starts classifying how each ends (close_notify, which it answers with
//! its own; EOF without close_notify; reset); on `report` (or after --max-secs) it prints
//! the counts and exits.

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslConnector};

use crate::client::{connect, connector, loopback, tls_json, Tls};
use crate::proto::{header, IDLE};
use crate::IdleArgs;

#[derive(Clone, Copy, PartialEq)]
enum End {
    CloseNotify,
    Eof,
    Reset,
}

pub fn run(args: &IdleArgs) -> io::Result<()> {
    let addr = loopback(&args.target)?;
    let give_up = Instant::now() + Duration::from_secs(args.max_secs);
    let connector = Arc::new(connector(&args.target.ca, None)?);
    let started = Instant::now();
    let (mut conns, failed, first_error) =
        open_all(addr, &connector, args.conns, args.threads.max(1), give_up);
    let tls = conns.first().map(tls_json).unwrap_or_else(|| "\"version\":null,\"cipher\":null".into());
    println!(
        "ready {{\"established\":{},\"failed\":{failed},\"first_error\":\"{}\",\"secs\":{:.3},{tls}}}",
        conns.len(),
        first_error.replace('"', "'"),
        started.elapsed().as_secs_f64()
    );
    io::stdout().flush()?;

    let lines = stdin_lines();
    // Idle until told to watch: no wake-ups of our own.
    loop {
        match lines.recv_timeout(give_up.saturating_duration_since(Instant::now())) {
            Ok(line) if line == "watch" => break,
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    let watch_start = Instant::now();
    let mut ends: Vec<(End, f64)> = Vec::new();
    let mut scratch = vec![0u8; 16 * 1024];
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        if lines.try_iter().any(|l| l == "report") || Instant::now() >= give_up {
            break;
        }
        fds.clear();
        fds.extend(conns.iter().map(|c| libc::pollfd {
            fd: c.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `fds` is a valid array of initialised pollfd records.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        let mut gone = Vec::new();
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            if let Some(end) = classify(&mut conns[i], &mut scratch) {
                ends.push((end, watch_start.elapsed().as_secs_f64()));
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            conns.swap_remove(i);
        }
    }
    let count = |e: End| ends.iter().filter(|(x, _)| *x == e).count();
    let mut cn_times: Vec<f64> =
        ends.iter().filter(|(e, _)| *e == End::CloseNotify).map(|(_, t)| *t).collect();
    cn_times.sort_by(f64::total_cmp);
    let last = ends.iter().map(|(_, t)| *t).fold(0.0, f64::max);
    println!(
        "{{\"close_notify\":{},\"eof\":{},\"reset\":{},\"open\":{},\"last_close_notify_s\":{:.3},\"median_close_notify_s\":{:.3},\"last_end_s\":{last:.3}}}",
        count(End::CloseNotify),
        count(End::Eof),
        count(End::Reset),
        conns.len(),
        cn_times.last().copied().unwrap_or(0.0),
        cn_times.get(cn_times.len() / 2).copied().unwrap_or(0.0),
    );
    io::stdout().flush()
}

/// Opens `n` connections on `threads` threads; each sends the IDLE header, then turns
/// non-blocking.
fn open_all(
    addr: SocketAddr,
    connector: &Arc<SslConnector>,
    n: usize,
    threads: usize,
    give_up: Instant,
) -> (Vec<Tls>, usize, String) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let connector = connector.clone();
            let share = n / threads + usize::from(t < n % threads);
            thread::spawn(move || {
                let (mut ok, mut failed, mut first) = (Vec::with_capacity(share), 0, String::new());
                for _ in 0..share {
                    if Instant::now() >= give_up {
                        failed += 1;
                        continue;
                    }
                    let opened = connect(addr, &connector, None).and_then(|mut s| {
                        s.write_all(&header(IDLE, 0))?;
                        s.get_ref().set_nonblocking(true)?;
                        Ok(s)
                    });
                    match opened {
                        Ok(s) => ok.push(s),
                        Err(e) => {
                            failed += 1;
                            if first.is_empty() {
                                first = e.to_string();
                            }
                        }
                    }
                }
                (ok, failed, first)
            })
        })
        .collect();
    let (mut all, mut failed, mut first) = (Vec::with_capacity(n), 0, String::new());
    for h in handles {
        if let Ok((ok, f, e)) = h.join() {
            all.extend(ok);
            failed += f;
            if first.is_empty() {
                first = e;
            }
        }
    }
    (all, failed, first)
}

/// Reads what is there; returns how the connection ended, or `None` while it is open.
fn classify(s: &mut Tls, scratch: &mut [u8]) -> Option<End> {
    loop {
        match s.ssl_read(scratch) {
            Ok(0) => return Some(End::Eof),
            Ok(_) => continue,
            Err(err) => {
                return match err.code() {
                    ErrorCode::ZERO_RETURN => {
                        // Answer, so the relay can complete its closure cleanly.
                        let _ = s.shutdown();
                        Some(End::CloseNotify)
                    }
                    ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => None,
                    ErrorCode::SYSCALL => match err.io_error() {
                        Some(e) if e.kind() == io::ErrorKind::ConnectionReset => Some(End::Reset),
                        Some(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        _ => Some(End::Eof),
                    },
                    _ if err.to_string().contains("unexpected eof") => Some(End::Eof),
                    _ => Some(End::Reset),
                };
            }
        }
    }
}

/// Lines from stdin, read on their own thread; a closed stdin ends the channel.
fn stdin_lines() -> crossbeam_channel::Receiver<String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });
    rx
}
