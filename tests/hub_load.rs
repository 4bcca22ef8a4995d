//! Hub mode under load (DESIGN §3 rows H, §4 hub thread): a stop with 100 clients, and a
//! client that stops reading while others chat hard. Tests here run one at a time.

mod common;

use common::hub_client::{HubClient, ManyClients, LINE_DEADLINE};
use common::{secs, Certs, Daemon};
use std::sync::Mutex;

/// These tests each load the machine; running them side by side would only add noise.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The most a TCP socket's send buffer grows to (net.ipv4.tcp_wmem[2]); 4 MiB if unreadable.
fn wmem_max() -> usize {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap_or_default();
    text.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or(4 << 20)
}

#[test]
fn sigterm_with_100_hub_clients_closes_each_with_the_closing_line_and_close_notify() {
    let _guard = serial();
    const N: usize = 100;
    let certs = Certs::new();
    let mut daemon = Daemon::start(&certs, &[]);
    let clients = ManyClients::start(&daemon, &certs, N, 90);
    assert_eq!(clients.ready(secs(60.0)), N, "not every handshake finished");
    daemon.wait_for_log_count(" established ", N, secs(30.0));

    let (status, _) = daemon.stop(libc::SIGTERM, secs(30.0));
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());

    let (counts, ends) = clients.done(secs(30.0));
    assert_eq!(ends.len(), N, "{counts}");
    for (i, (end, last)) in ends.iter().enumerate() {
        assert_eq!(end, "clean", "client {i} ended {end} (recv did not return b''); {counts}");
        assert_eq!(last, "* closing: shutdown", "client {i}: last line; {counts}");
    }
    let summary = daemon.summary();
    assert_eq!(summary.total, N as u64, "{}", daemon.log_text());
    // Every client answered our close_notify, so every closure completed.
    assert_eq!(summary.clean, N as u64, "{}", daemon.log_text());
    assert_eq!(daemon.count_log(" closed: clean,"), N, "{}", daemon.log_text());
}

#[test]
fn a_client_that_stops_reading_is_closed_as_too_slow_and_the_others_get_every_line() {
    let _guard = serial();
    // The stalled client's outbox (256 KiB) fills only once the kernel holds all it will for
    // it: Linux grows the daemon's send buffer up to net.ipv4.tcp_wmem[2] even for a peer that
    // never reads. So the two senders send that much plus the outbox plus a margin, together.
    const SIZE: usize = 400;
    let total = wmem_max() + 256 * 1024 + 1024 * 1024;
    let lines = (total / 2 / (SIZE + 1) + 1).min(50_000);
    // Bytes a second per sender: steady, hard chat, yet well within what every reader takes in.
    // The hub never slows a sender down for a reader: a reader whose worker falls 256 KiB
    // behind (a quarter of a second at this rate) loses lines, and this test would see a gap.
    const RATE: usize = 500_000;
    let flood_secs = (lines * (SIZE + 1) / RATE) as f64;
    let client_args = ["--timeout", "300"];
    let certs = Certs::new();
    let mut daemon = Daemon::start(&certs, &["--close-timeout", "1"]);

    // A small receive window, so its own kernel holds little of what the daemon sends it.
    let mut slow = HubClient::connect_with(&daemon, &certs, &["--rcvbuf", "4096", "--timeout", "300"]);
    let mut senders = [
        HubClient::connect_with(&daemon, &certs, &client_args),
        HubClient::connect_with(&daemon, &certs, &client_args),
    ];
    let reader = HubClient::connect_with(&daemon, &certs, &client_args);
    let slow_nick = slow.nick.clone();
    slow.say("/nick slow");
    for c in senders.iter().chain([&reader]) {
        c.wait_line(&format!("* {slow_nick} is now slow"), LINE_DEADLINE);
    }
    slow.wait_line(&format!("* {slow_nick} is now slow"), LINE_DEADLINE);
    slow.command("pause");

    senders[0].command(&format!("flood A {lines} {SIZE} {RATE}"));
    senders[1].command(&format!("flood B {lines} {SIZE} {RATE}"));

    // Every reader got each flood complete and in order (hub_client.py checks each line's
    // sequence number and content, then prints `FLOOD TAG GOT ERRORS FIRST_ERROR`).
    let expect = |client: &HubClient, tag: &str| {
        let line = client.wait_output(&format!("FLOOD {tag} "), secs(60.0 + 2.0 * flood_secs));
        assert_eq!(line, format!("FLOOD {tag} {lines} 0 -"), "client {}: {}", client.nick, daemon.log_text());
    };
    expect(&reader, "A");
    expect(&reader, "B");
    expect(&senders[1], "A");
    expect(&senders[0], "B");

    // The stalled client is closed as too slow (5 s of a full outbox, then a closure of at
    // most --close-timeout), and everyone else is told.
    for c in senders.iter().chain([&reader]) {
        c.wait_line("* slow left (too slow)", secs(30.0));
    }
    // The worker tells the hub it left before it logs its `closed:` line.
    daemon.wait_closed(LINE_DEADLINE);
    let closed = daemon.closed();
    assert_eq!(closed.len(), 1, "only the stalled client was closed: {}", daemon.log_text());
    assert!(
        closed[0].kind == "write stalled" || closed[0].kind == "peer did not answer",
        "stalled client closed as {:?}; log:\n{}",
        closed[0].kind,
        daemon.log_text()
    );

    // The others are still served.
    senders[0].say("still chatting");
    reader.wait_line(&format!("<{}> still chatting", senders[0].nick), LINE_DEADLINE);
    slow.command("resume");
    let end = slow.wait_end(secs(20.0));
    assert!(
        end == "reset" || end == "truncated",
        "the stalled client's connection ended {end}: {}",
        slow.transcript()
    );

    let (status, _) = daemon.stop(libc::SIGTERM, secs(30.0));
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    daemon.summary();
}

/// DESIGN §5: a reader that pauses long enough to overflow its outbox, but not the 5 s that
/// would close it as too slow, is told how many lines it lost before the room goes on.
#[test]
fn a_reader_that_pauses_and_resumes_is_told_how_many_lines_it_lost() {
    let _guard = serial();
    const SIZE: usize = 1000;
    // Enough to fill what the kernel holds for the paused reader, its 256 KiB outbox, and more.
    let lines = (wmem_max() + 256 * 1024 + 2 * 1024 * 1024) / (SIZE + 1) + 1;
    let certs = Certs::new();
    let mut daemon = Daemon::start(&certs, &[]);
    let mut paused = HubClient::connect_with(&daemon, &certs, &["--rcvbuf", "4096", "--timeout", "120"]);
    let mut sender = HubClient::connect_with(&daemon, &certs, &["--timeout", "120"]);
    let witness = HubClient::connect_with(&daemon, &certs, &["--timeout", "120"]);
    paused.wait_line(&format!("* {} joined", witness.nick), LINE_DEADLINE);
    paused.command("pause");
    paused.wait_output("PAUSED", LINE_DEADLINE);

    // As fast as the hub takes them: the outbox overflows well within the 5 s too-slow limit.
    sender.command(&format!("flood A {lines} {SIZE}"));
    sender.wait_output("FLOODSENT A", secs(60.0));
    // Written is not yet fanned out: once a reader that keeps up has the flood's end, the hub
    // has offered the paused reader every line too (each outbox is a FIFO).
    witness.wait_output("FLOOD A ", secs(60.0));
    paused.command("resume");
    sender.say("after the flood");
    paused.wait_line(&format!("<{}> after the flood", sender.nick), secs(30.0));

    let seen = paused.lines();
    let is_notice = |l: &String| l.starts_with("! ") && l.ends_with(" lines dropped");
    let first = seen.iter().position(is_notice);
    let first = first.unwrap_or_else(|| panic!("no drop notice; lines: {:?}", &seen[..seen.len().min(20)]));
    let after = seen.iter().position(|l| l.ends_with("> after the flood")).unwrap();
    assert!(first < after, "the notice must come before the room goes on: {:?}", &seen[first..=after]);
    // The outbox may fill again after a notice: each loss is told once, in its place.
    let dropped: usize = seen
        .iter()
        .filter(|l| is_notice(l))
        .map(|l| l.split(' ').nth(1).and_then(|n| n.parse::<usize>().ok()).expect("a count"))
        .sum();
    assert!(dropped > 0 && dropped <= lines + 1, "{dropped} lines dropped of {lines}");
    let transcript = paused.transcript();
    if let Some(summary) = transcript.lines().find(|l| l.starts_with("FLOOD A ")) {
        let got: usize = summary.split(' ').nth(2).and_then(|n| n.parse().ok()).expect("FLOOD A GOT …");
        assert_eq!(got + dropped, lines, "every line was either delivered or counted as dropped: {summary}");
    }
    assert_eq!(daemon.closed().len(), 0, "nobody was closed: {}", daemon.log_text());
    let (status, _) = daemon.stop(libc::SIGTERM, secs(30.0));
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
}
