//! Hub fan-out benchmark (not a test): N TLS clients join a hub, S of them send M lines each
//! carrying a send timestamp, every other client records each line's delay.
//!
//! ```text
//! cargo run --release --example hub_fanout -- --clients 100 --lines 5000
//! cargo run --release --example hub_fanout -- --clients 100 --lines 5000 --addr 127.0.0.1:7443 --ca certs/ca.crt
//! ```
//!
//! Without `--addr` it makes certificates with `tlsrelay gen-cert` in a temporary directory and
//! starts its own hub (`--bin`, default `target/release/tlsrelay`) on 127.0.0.1:0. It prints
//! lines/s delivered (deliveries / wall time from the first send to the last delivery) and the
//! p50/p99/max delay. Senders send as fast as the hub takes lines unless `--rate` paces them.
//! Every wait is bounded by `--timeout`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslConnector, SslMethod, SslStream, SslVerifyMode};

/// The line every client waits for before the clock starts (it has drained the join noise).
const SYNC: &str = "bench-sync";

/// Queued output a sender keeps ahead of the socket, so timestamps stay close to the write.
const SEND_AHEAD: usize = 4096;

struct Config {
    clients: usize,
    lines: usize,
    senders: usize,
    size: usize,
    rate: f64,
    threads: usize,
    addr: Option<String>,
    ca: Option<PathBuf>,
    bin: PathBuf,
    timeout: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: hub_fanout [--clients N] [--lines M] [--senders S] [--size BYTES] [--rate LINES_PER_S]\n\
         \x20                 [--threads T] [--addr HOST:PORT [--ca FILE]] [--bin PATH] [--timeout SECS]"
    );
    std::process::exit(2);
}

fn parse_args() -> Config {
    let mut cfg = Config {
        clients: 10,
        lines: 2000,
        senders: 1,
        size: 64,
        rate: 0.0,
        threads: 4,
        addr: None,
        ca: None,
        bin: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/tlsrelay")),
        timeout: Duration::from_secs(120),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--clients" => cfg.clients = value().parse().unwrap_or_else(|_| usage()),
            "--lines" => cfg.lines = value().parse().unwrap_or_else(|_| usage()),
            "--senders" => cfg.senders = value().parse().unwrap_or_else(|_| usage()),
            "--size" => cfg.size = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => cfg.rate = value().parse().unwrap_or_else(|_| usage()),
            "--threads" => cfg.threads = value().parse().unwrap_or_else(|_| usage()),
            "--addr" => cfg.addr = Some(value()),
            "--ca" => cfg.ca = Some(PathBuf::from(value())),
            "--bin" => cfg.bin = PathBuf::from(value()),
            "--timeout" => cfg.timeout = Duration::from_secs_f64(value().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if cfg.senders == 0 || cfg.senders >= cfg.clients || cfg.size < 48 {
        eprintln!("need 1 <= senders < clients and --size >= 48");
        usage();
    }
    cfg
}

/// Nanoseconds on one monotonic clock shared by every thread of this process.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (each client holds one socket).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

// ---- the hub we start ourselves ----------------------------------------------------------

/// A `tlsrelay serve` child; stopped with SIGTERM (then SIGKILL) on Drop.
struct Hub {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Hub {
    fn start(cfg: &Config) -> Result<(Hub, SocketAddr, PathBuf), String> {
        if !cfg.bin.is_file() {
            return Err(format!("{} not found: run `cargo build --release` first", cfg.bin.display()));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new(&cfg.bin)
            .args(["gen-cert", "--out"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("gen-cert: {e}"))?;
        if !out.status.success() {
            return Err(format!("gen-cert failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut child = Command::new(&cfg.bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--max-clients", &(cfg.clients + 16).to_string()])
            .arg("--cert")
            .arg(dir.path().join("server.crt"))
            .arg("--key")
            .arg(dir.path().join("server.key"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cfg.bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(addr) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                } else if !line.trim().is_empty() {
                    eprint!("tlsrelay: {line}");
                }
                line.clear();
            }
        });
        let ca = dir.path().join("ca.crt");
        let hub = Hub { child, _dir: dir };
        let addr =
            rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "tlsrelay did not start listening")?;
        let addr = addr.parse().map_err(|e| format!("bad listening address {addr:?}: {e}"))?;
        Ok((hub, addr, ca))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the clients -------------------------------------------------------------------------

/// What the main thread tells the clients, through flags they look at between polls.
#[derive(Default)]
struct Shared {
    /// Clients that have read their welcome line (the hub has them as members).
    welcomed: AtomicUsize,
    /// Sender 0 sends the sync line.
    sync: AtomicBool,
    /// Clients that have read the sync line.
    synced: AtomicUsize,
    /// Senders start; the clock runs.
    go: AtomicBool,
    /// Every client stops (the deadline passed, or everyone is done).
    stop: AtomicBool,
    /// Clients that have received every other sender's end marker (and sent their own).
    done: AtomicUsize,
}

/// Measurements of one thread's clients.
#[derive(Default)]
struct Report {
    /// Per delivered bench line: microseconds from its send timestamp to its arrival.
    delays_us: Vec<u32>,
    /// Lines that arrived out of order or with a damaged payload.
    bad: usize,
    last_delivery_ns: u64,
    error: Option<String>,
}

/// One TLS client of the hub, driven without blocking by the thread that owns it.
struct Client {
    index: usize,
    tls: SslStream<TcpStream>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Next sequence number expected from each sender.
    next_seq: Vec<usize>,
    ends_seen: usize,
    welcomed: bool,
    /// Lines queued so far; `lines + 1` once the end marker is queued.
    sent: usize,
    first_send_ns: Option<u64>,
    sync_sent: bool,
    finished: bool,
}

fn connect(
    connector: &SslConnector,
    addr: SocketAddr,
    deadline: Duration,
) -> Result<SslStream<TcpStream>, String> {
    let tcp = TcpStream::connect_timeout(&addr, deadline).map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(deadline)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(deadline)).map_err(|e| e.to_string())?;
    let tls = connector.connect("localhost", tcp).map_err(|e| format!("handshake: {e}"))?;
    tls.get_ref().set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(tls)
}

impl Client {
    fn new(index: usize, tls: SslStream<TcpStream>, cfg: &Config) -> Client {
        Client {
            index,
            tls,
            inbuf: Vec::new(),
            out: Vec::new(),
            next_seq: vec![0; cfg.senders],
            ends_seen: 0,
            welcomed: false,
            sent: 0,
            first_send_ns: None,
            sync_sent: false,
            finished: false,
        }
    }

    fn is_sender(&self, cfg: &Config) -> bool {
        self.index < cfg.senders
    }

    /// Does whatever can be done without blocking: queue, write, read.
    fn step(&mut self, cfg: &Config, shared: &Shared, report: &mut Report) -> Result<(), String> {
        if self.index == 0 && !self.sync_sent && shared.sync.load(Ordering::Acquire) {
            self.out.extend_from_slice(format!("{SYNC}\n").as_bytes());
            self.sync_sent = true;
        }
        if self.is_sender(cfg) && shared.go.load(Ordering::Acquire) {
            self.produce(cfg);
        }
        self.flush()?;
        self.read_all(cfg, shared, report)?;
        let others = if self.is_sender(cfg) { cfg.senders - 1 } else { cfg.senders };
        let own_done = !self.is_sender(cfg) || (self.sent > cfg.lines && self.out.is_empty());
        if !self.finished && self.ends_seen >= others && own_done {
            self.finished = true;
            shared.done.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Waiting on a flag from the main thread, or pacing: its thread should poll briefly.
    fn waiting(&self, cfg: &Config) -> bool {
        (self.index == 0 && !self.sync_sent)
            || (self.is_sender(cfg) && self.sent <= cfg.lines && self.out.is_empty())
    }

    /// Queues the next lines: `bench SENDER SEQ NANOS PAD`, then `bench SENDER end`.
    fn produce(&mut self, cfg: &Config) {
        let start = *self.first_send_ns.get_or_insert_with(now_ns);
        while self.out.len() < SEND_AHEAD && self.sent <= cfg.lines {
            if self.sent == cfg.lines {
                self.out.extend_from_slice(format!("bench {} end\n", self.index).as_bytes());
                self.sent += 1;
                break;
            }
            if cfg.rate > 0.0 {
                let due = start + (self.sent as f64 / cfg.rate * 1e9) as u64;
                if now_ns() < due {
                    break;
                }
            }
            let head = format!("bench {} {} {} ", self.index, self.sent, now_ns());
            self.out.extend_from_slice(head.as_bytes());
            let pad = cfg.size.saturating_sub(head.len());
            self.out.extend(std::iter::repeat_n(b'a' + (self.sent % 26) as u8, pad));
            self.out.push(b'\n');
            self.sent += 1;
        }
    }

    fn flush(&mut self) -> Result<(), String> {
        while !self.out.is_empty() {
            match self.tls.ssl_write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_WRITE | ErrorCode::WANT_READ) => return Ok(()),
                Err(e) => return Err(format!("client {} write: {e}", self.index)),
            }
        }
        Ok(())
    }

    fn read_all(&mut self, cfg: &Config, shared: &Shared, report: &mut Report) -> Result<(), String> {
        let mut buf = [0u8; 65536];
        loop {
            match self.tls.ssl_read(&mut buf) {
                Ok(0) => return Err(format!("client {}: the hub closed the connection", self.index)),
                Ok(n) => {
                    let at = now_ns();
                    self.inbuf.extend_from_slice(&buf[..n]);
                    self.take_lines(at, cfg, shared, report);
                }
                Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => return Ok(()),
                Err(e) => return Err(format!("client {} read: {e}", self.index)),
            }
        }
    }

    fn take_lines(&mut self, at: u64, cfg: &Config, shared: &Shared, report: &mut Report) {
        let mut start = 0;
        while let Some(pos) = self.inbuf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.inbuf[start..start + pos];
            start += pos + 1;
            if !self.welcomed && line.starts_with(b"* welcome") {
                self.welcomed = true;
                shared.welcomed.fetch_add(1, Ordering::AcqRel);
            }
            let Some(body) = line.windows(2).position(|w| w == b"> ").map(|p| &line[p + 2..]) else {
                continue; // welcome, joins, leaves
            };
            if body == SYNC.as_bytes() {
                shared.synced.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            let text = String::from_utf8_lossy(body);
            let mut f = text.split(' ');
            if f.next() != Some("bench") {
                continue;
            }
            let (Some(Ok(sender)), Some(seq)) = (f.next().map(str::parse::<usize>), f.next()) else {
                report.bad += 1;
                continue;
            };
            if sender >= cfg.senders {
                report.bad += 1;
                continue;
            }
            if seq == "end" {
                self.ends_seen += 1;
                continue;
            }
            let (Ok(seq), Some(Ok(sent_ns))) = (seq.parse::<usize>(), f.next().map(str::parse::<u64>)) else {
                report.bad += 1;
                continue;
            };
            let pad = f.next().unwrap_or("");
            let letter = (b'a' + (seq % 26) as u8) as char;
            let intact =
                body.len() == cfg.size.max(body.len() - pad.len()) && pad.chars().all(|c| c == letter);
            if seq != self.next_seq[sender] || !intact {
                report.bad += 1;
            }
            self.next_seq[sender] = seq + 1;
            report.delays_us.push((at.saturating_sub(sent_ns) / 1000).min(u32::MAX as u64) as u32);
            report.last_delivery_ns = at;
        }
        self.inbuf.drain(..start);
    }
}

/// One client thread: connects its clients, then serves them all with poll(2) until stopped.
fn client_thread(
    indices: Vec<usize>,
    cfg: &Config,
    shared: &Shared,
    connector: &SslConnector,
    addr: SocketAddr,
    ready: mpsc::Sender<Result<(), String>>,
) -> Report {
    let mut report = Report::default();
    let mut clients = Vec::with_capacity(indices.len());
    for index in indices {
        match connect(connector, addr, Duration::from_secs(30)) {
            Ok(tls) => {
                clients.push(Client::new(index, tls, cfg));
                let _ = ready.send(Ok(()));
            }
            Err(err) => {
                let _ = ready.send(Err(err.clone()));
                report.error = Some(err);
                return report;
            }
        }
    }
    let mut fds: Vec<libc::pollfd> = clients
        .iter()
        .map(|c| libc::pollfd { fd: c.tls.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    let mut first = true;
    while !shared.stop.load(Ordering::Acquire) {
        let mut waiting = false;
        for (client, pfd) in clients.iter_mut().zip(fds.iter_mut()) {
            // Step a client when poll said so, or when it has something of its own to do.
            if first || pfd.revents != 0 || client.waiting(cfg) || !client.out.is_empty() {
                if let Err(err) = client.step(cfg, shared, &mut report) {
                    report.error = Some(err);
                    return report;
                }
            }
            waiting |= client.waiting(cfg);
            pfd.events = libc::POLLIN | if client.out.is_empty() { 0 } else { libc::POLLOUT };
            pfd.revents = 0;
        }
        first = false;
        let timeout_ms = if waiting { 1 } else { 100 };
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    }
    report
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

// ---- the run -----------------------------------------------------------------------------

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn wait_for(deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    while !cond() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn main() {
    let cfg = Arc::new(parse_args());
    raise_nofile();
    now_ns();
    if let Err(err) = run(cfg) {
        eprintln!("hub_fanout: {err}");
        std::process::exit(1);
    }
}

fn run(cfg: Arc<Config>) -> Result<(), String> {
    let deadline = Instant::now() + cfg.timeout;
    let (hub, addr, ca) = match &cfg.addr {
        Some(addr) => {
            let addr = addr.to_socket_addrs().map_err(|e| e.to_string())?.next().ok_or("no address")?;
            (None, addr, cfg.ca.clone())
        }
        None => {
            let (hub, addr, ca) = Hub::start(&cfg)?;
            (Some(hub), addr, Some(ca))
        }
    };
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    match &ca {
        Some(ca) => builder.set_ca_file(ca).map_err(|e| format!("{}: {e}", ca.display()))?,
        None => builder.set_verify(SslVerifyMode::NONE),
    }
    let connector = Arc::new(builder.build());
    let shared = Arc::new(Shared::default());

    // Each sender has a thread of its own; the readers are spread over --threads threads.
    let mut groups: Vec<Vec<usize>> = (0..cfg.senders).map(|i| vec![i]).collect();
    let reader_threads = cfg.threads.clamp(1, cfg.clients - cfg.senders);
    let mut readers = vec![Vec::new(); reader_threads];
    for index in cfg.senders..cfg.clients {
        readers[index % reader_threads].push(index);
    }
    groups.extend(readers);

    let t_connect = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(groups.len());
    for (n, indices) in groups.into_iter().enumerate() {
        let (cfg, shared, connector, ready) =
            (cfg.clone(), shared.clone(), connector.clone(), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("clients-{n}"))
            .spawn(move || client_thread(indices, &cfg, &shared, &connector, addr, ready))
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        threads.push(handle);
    }
    drop(ready_tx);
    let mut outcome: Result<u64, String> = Ok(0);
    for _ in 0..cfg.clients {
        match ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => outcome = Err(format!("a client failed: {err}")),
            Err(_) => outcome = Err("timed out connecting the clients".into()),
        }
        if outcome.is_err() {
            break;
        }
    }
    let connect_time = t_connect.elapsed();
    let mut cpu_before = (None, None);
    let mut t_start = Instant::now();

    // Sync: every client is a member and has drained the join notices before the clock starts.
    if outcome.is_ok() {
        outcome = wait_for(deadline, "every welcome line", || {
            shared.welcomed.load(Ordering::Acquire) >= cfg.clients
        })
        .and_then(|_| {
            shared.sync.store(true, Ordering::Release);
            wait_for(deadline, "the sync line", || shared.synced.load(Ordering::Acquire) >= cfg.clients - 1)
        })
        .and_then(|_| {
            cpu_before =
                (hub.as_ref().and_then(|h| cpu_seconds(h.child.id())), cpu_seconds(std::process::id()));
            t_start = Instant::now();
            let t0 = now_ns();
            shared.go.store(true, Ordering::Release);
            wait_for(deadline, "every client's last line", || {
                shared.done.load(Ordering::Acquire) >= cfg.clients
            })
            .map(|_| t0)
        });
    }
    let cpu_hub = hub.as_ref().and_then(|h| Some(cpu_seconds(h.child.id())? - cpu_before.0?));
    let cpu_self = cpu_seconds(std::process::id()).zip(cpu_before.1).map(|(after, before)| after - before);
    let elapsed = t_start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Release);
    let reports: Vec<Report> = threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
    if let Some(err) = reports.iter().find_map(|r| r.error.clone()) {
        return Err(format!("a client failed: {err}"));
    }
    let t0 = outcome.map_err(|e| {
        format!(
            "{e} (welcomed {}, synced {}, done {} of {})",
            shared.welcomed.load(Ordering::Acquire),
            shared.synced.load(Ordering::Acquire),
            shared.done.load(Ordering::Acquire),
            cfg.clients
        )
    })?;

    let mut delays: Vec<u32> = reports.iter().flat_map(|r| r.delays_us.iter().copied()).collect();
    delays.sort_unstable();
    let expected = cfg.lines * cfg.senders * (cfg.clients - 1);
    let last = reports.iter().map(|r| r.last_delivery_ns).max().unwrap_or(t0);
    let wall = (last.saturating_sub(t0)) as f64 / 1e9;
    let bad: usize = reports.iter().map(|r| r.bad).sum();
    println!(
        "hub fan-out: {} clients ({} sender{}, {} readers on {} threads), {} lines of {} B per sender{}; connect {:.2} s",
        cfg.clients,
        cfg.senders,
        if cfg.senders == 1 { "" } else { "s" },
        cfg.clients - cfg.senders,
        reader_threads,
        cfg.lines,
        cfg.size,
        if cfg.rate > 0.0 { format!(" at {} lines/s", cfg.rate) } else { String::new() },
        connect_time.as_secs_f64()
    );
    println!(
        "  {} of {} deliveries ({} lost, {} out of order or damaged) in {:.2} s: {:.0} lines/s delivered",
        delays.len(),
        expected,
        expected.saturating_sub(delays.len()),
        bad,
        wall,
        delays.len() as f64 / wall
    );
    println!(
        "  delay p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&delays, 0.50),
        percentile(&delays, 0.99),
        percentile(&delays, 1.0)
    );
    if let Some(hub_cpu) = cpu_hub {
        println!(
            "  CPU from the first send to the last delivery ({elapsed:.2} s): tlsrelay {hub_cpu:.2} s, the clients {:.2} s",
            cpu_self.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
