//! "More than one machine" (issue 13, DESIGN §9): Debian's haproxy in `mode tcp` balances
//! 300 TLS clients over three tlsrelay instances with `send-proxy-v2` and health checks; the
//! relays take the balancer's header (`--accept-proxy`) and send v2 on to one echo upstream.
//! SIGTERM to one instance: each of its clients gets a clean close and reconnects through
//! haproxy to the others, haproxy marks it down, the other clients see nothing, and the
//! upstream sees every client's real address and port throughout.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::process::Proc;
use common::proxy_peers::{free_port, read_v2, Haproxy};
use common::upstream::echo;
use common::*;

const CLIENTS: usize = 300;
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/fleet_client.py");

/// The fleet's `TAG {json}` lines.
fn tagged(fleet: &Proc, tag: &str) -> Vec<HashMap<String, String>> {
    let stdout = fleet.stdout();
    stdout.lines().filter_map(|l| l.strip_prefix(tag)).map(peers::parse_flat_json).collect()
}

fn wait_tagged(fleet: &Proc, tag: &str, n: usize, timeout: Duration) {
    let ok =
        fleet.wait_until(timeout, |o| o.stdout_text().lines().filter(|l| l.starts_with(tag)).count() >= n);
    assert!(
        ok,
        "fleet: fewer than {n} {tag:?} lines within {timeout:?} (saw {}); stderr:\n{}",
        tagged(fleet, tag).len(),
        fleet.stderr()
    );
}

/// Client ports each relay accepted through haproxy (`from 127.0.0.1:P via … accepted`).
fn client_ports(relay: &Daemon) -> HashSet<u16> {
    relay
        .logs()
        .iter()
        .filter(|l| l.contains(" via ") && l.ends_with(" accepted"))
        .filter_map(|l| l.split(" from ").nth(1)?.split(' ').next()?.parse::<SocketAddr>().ok())
        .map(|addr| addr.port())
        .collect()
}

#[test]
fn sigterm_to_one_of_three_instances_behind_haproxy_moves_only_its_clients_cleanly() {
    let t0 = Instant::now();
    // The upstream: decodes each relay's v2 header, then echoes.
    let (tx, sources) = channel::<SocketAddr>();
    let tx = Mutex::new(tx);
    let upstream = Upstream::start(move |mut stream: TcpStream, report: &Sender<Seen>| {
        if let Some(source) = read_v2(&mut stream).source {
            let _ = tx.lock().unwrap().send(source);
        }
        echo()(stream, report);
    });
    let certs = Certs::new();
    let target = upstream.arg();
    let relay_args = [
        "--upstream",
        &target,
        "--proxy-protocol",
        "v2",
        "--accept-proxy",
        "127.0.0.1",
        "--close-timeout",
        "3",
    ];
    let mut relays: Vec<Daemon> = (0..3).map(|_| Daemon::start(&certs, &relay_args)).collect();

    let port = free_port();
    let servers: String = relays
        .iter()
        .enumerate()
        .map(|(i, r)| format!("  server r{i} {} send-proxy-v2 check inter 200ms fall 1 rise 2\n", r.addr()))
        .collect();
    let config = format!(
        "frontend fe\n  bind 127.0.0.1:{port}\n  default_backend relays\n\n\
         backend relays\n  balance roundrobin\n  option redispatch\n  retries 3\n{servers}"
    );
    let haproxy = Haproxy::start(&config, port);

    let mut cmd = Command::new("python3");
    cmd.arg(FLEET).arg("127.0.0.1").arg(port.to_string()).arg("--ca").arg(certs.ca());
    cmd.args(["--clients", &CLIENTS.to_string(), "--timeout", "45"]);
    let mut fleet = Proc::spawn("fleet_client.py", cmd);
    wait_tagged(&fleet, "READY ", 1, secs(40.0));
    assert_eq!(tagged(&fleet, "READY ")[0]["ok"], CLIENTS.to_string(), "{}", fleet.stderr());
    // Each echoed connection's port, as the relay that served it logged it.
    let first: HashSet<u16> = tagged(&fleet, "CONN ").iter().map(|c| c["port"].parse().unwrap()).collect();
    let served =
        |relay: &Daemon| -> HashSet<u16> { client_ports(relay).intersection(&first).copied().collect() };
    let on_victim = served(&relays[1]);
    let on_others: usize = [0, 2].iter().map(|&i| served(&relays[i]).len()).sum();
    assert_eq!(on_victim.len() + on_others, CLIENTS, "every client went through a relay");
    assert!(on_victim.len() >= CLIENTS / 6, "round robin gave r1 {} of {CLIENTS}", on_victim.len());

    // SIGTERM one instance: its clients get their clean close.
    let (status, took) = relays[1].stop(libc::SIGTERM, secs(10.0));
    assert!(status.success(), "exit {status} after {took:?}");
    let victim_closed = relays[1].closed();
    let theirs: Vec<_> = victim_closed.iter().filter(|c| c.bytes_in > 0).collect();
    assert_eq!(theirs.len(), on_victim.len(), "one closed: line per client; log:\n{}", relays[1].log_text());
    assert!(theirs.iter().all(|c| c.kind == "clean"), "not all clean: {theirs:?}");

    // They reconnect through haproxy to the two others; haproxy marks r1 down.
    wait_tagged(&fleet, "CONN ", CLIENTS + on_victim.len(), secs(20.0));
    haproxy.wait_logged("relays/r1 is DOWN", 1, secs(10.0));
    std::thread::sleep(secs(0.5)); // time for any stray end to show
    let ends = tagged(&fleet, "END ");
    assert_eq!(ends.len(), on_victim.len(), "only r1's clients saw an end: {ends:?}");
    assert!(ends.iter().all(|e| e["kind"] == "clean"), "an end was not clean: {ends:?}");
    let conns = tagged(&fleet, "CONN ");
    let first_ports: HashMap<String, String> =
        conns[..CLIENTS].iter().map(|c| (c["client"].clone(), c["port"].clone())).collect();
    for end in &ends {
        let port: u16 = first_ports[&end["client"]].parse().unwrap();
        assert!(on_victim.contains(&port), "client {} was not on r1", end["client"]);
    }
    let all: HashSet<u16> = conns.iter().map(|c| c["port"].parse().unwrap()).collect();
    let after: usize = [0, 2].iter().map(|&i| client_ports(&relays[i]).intersection(&all).count()).sum();
    assert_eq!(after, conns.len() - on_victim.len(), "r1's clients are now on r0 and r2, the others stayed");

    // The upstream saw every connection's real address: 127.0.0.1 and the client's own port.
    let deadline = Instant::now() + secs(10.0);
    let mut seen = HashSet::new();
    while seen.len() < conns.len() && Instant::now() < deadline {
        if let Ok(source) = sources.recv_timeout(secs(0.5)) {
            assert_eq!(source.ip().to_string(), "127.0.0.1");
            seen.insert(source.port());
        }
    }
    for conn in &conns {
        let port: u16 = conn["port"].parse().unwrap();
        assert!(seen.contains(&port), "the upstream never saw client port {port}");
    }
    fleet.close_stdin();
    wait_tagged(&fleet, "DONE ", 1, secs(10.0));
    let done = &tagged(&fleet, "DONE ")[0];
    assert_eq!(done["end_truncated"], "0", "{done:?}");
    assert_eq!(done["reconnected"], on_victim.len().to_string(), "{done:?}");
    assert!(t0.elapsed() < secs(60.0), "the scenario took {:?}", t0.elapsed());
    eprintln!("fleet scenario: {:?}, r1 had {} clients, {done:?}", t0.elapsed(), on_victim.len());
}
