//! Hub mode (DESIGN §3 rows H, §5) against the real binary with real TLS clients: Python
//! `ssl` (tests/peers/hub_client.py, suppress_ragged_eofs=False), gnutls-cli, openssl s_client.

mod common;

use common::hub_client::{HubClient, LINE_DEADLINE};
use common::{gnutls, python, s_client, secs, Certs, Daemon};
use std::time::Instant;

const WELCOME_TAIL: &str = ". Commands: /nick NAME, /who, /me TEXT, /quit";

/// A hub with `n` clients connected, each having seen every later client join.
fn hub_with(n: usize, args: &[&str]) -> (Certs, Daemon, Vec<HubClient>) {
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, args);
    let mut clients: Vec<HubClient> = Vec::new();
    for _ in 0..n {
        let client = HubClient::connect(&daemon, &certs);
        for earlier in &clients {
            earlier.wait_line(&format!("* {} joined", client.nick), LINE_DEADLINE);
        }
        clients.push(client);
    }
    (certs, daemon, clients)
}

/// `from` says `text` and waits until `to` has read it: everything the hub queued for `to`
/// before has been read by then (each outbox is a FIFO).
fn sync(from: &mut HubClient, to: &HubClient, text: &str) {
    from.say(text);
    to.wait_line(&format!("<{}> {text}", from.nick), LINE_DEADLINE);
}

#[test]
fn welcome_names_the_guest_and_others_see_the_join() {
    let (_certs, _daemon, clients) = hub_with(2, &[]);
    let (a, b) = (&clients[0], &clients[1]);
    assert!(a.nick.starts_with("guest") && b.nick.starts_with("guest") && a.nick != b.nick);
    let welcome = a.lines()[0].clone();
    assert_eq!(welcome, format!("* welcome to tlsrelay; you are {}{WELCOME_TAIL}", a.nick));
    assert_eq!(a.lines()[1], format!("* {} joined", b.nick));
    assert_eq!(b.lines()[0], format!("* welcome to tlsrelay; you are {}{WELCOME_TAIL}", b.nick));
}

#[test]
fn two_clients_see_each_others_lines_and_not_their_own() {
    let (_certs, _daemon, mut clients) = hub_with(2, &[]);
    let (a, b) = clients.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    sync(a, b, "hello from a");
    sync(b, a, "hello from b");
    // Each outbox is a FIFO and b only spoke after a's line was fanned out, so had a been
    // sent its own line, it would have arrived before b's.
    sync(a, b, "sync a");
    assert!(
        !a.lines().iter().any(|l| l.contains("hello from a")),
        "a got its own line back: {:?}",
        a.lines()
    );
    assert!(
        !b.lines().iter().any(|l| l.contains("hello from b")),
        "b got its own line back: {:?}",
        b.lines()
    );
}

#[test]
fn nick_rename_collision_and_invalid_nick() {
    let (_certs, _daemon, mut clients) = hub_with(2, &[]);
    let old_a = clients[0].nick.clone();
    let old_b = clients[1].nick.clone();
    clients[0].say("/nick alice");
    for c in &clients {
        c.wait_line(&format!("* {old_a} is now alice"), LINE_DEADLINE);
    }
    clients[0].nick = "alice".into();

    // Nicks are unique regardless of case; the refusal goes to the sender only.
    clients[1].say("/nick ALICE");
    clients[1].wait_line("! nick ALICE is taken", LINE_DEADLINE);
    clients[1].say("/nick bad nick!");
    clients[1].say(&format!("/nick {}", "x".repeat(33)));
    clients[1].say("/nick caf\u{e9}");
    let invalid = |c: &HubClient| c.lines().iter().filter(|l| *l == "! invalid nick").count();
    let t0 = Instant::now();
    while invalid(&clients[1]) < 3 && t0.elapsed() < LINE_DEADLINE {
        clients[1].wait_line("! invalid nick", LINE_DEADLINE);
        std::thread::sleep(secs(0.02));
    }
    assert_eq!(invalid(&clients[1]), 3, "{}", clients[1].transcript());

    // 32 characters of the allowed set is fine.
    let long = format!("{}_-9", "B".repeat(29));
    clients[1].say(&format!("/nick {long}"));
    for c in &clients {
        c.wait_line(&format!("* {old_b} is now {long}"), LINE_DEADLINE);
    }
    clients[1].nick = long.clone();

    // Lines carry the new nicks; the refusals never reached the other client.
    let (a, b) = clients.split_at_mut(1);
    sync(&mut a[0], &b[0], "hi from alice");
    sync(&mut b[0], &a[0], "hi from the long one");
    let a_lines = a[0].lines();
    assert!(!a_lines.iter().any(|l| l.starts_with("! ")), "refusals leaked to another client: {a_lines:?}");

    // A freed nick can be taken again.
    a[0].say("/nick alice2");
    b[0].wait_line("* alice is now alice2", LINE_DEADLINE);
    b[0].say("/nick alice");
    a[0].wait_line(&format!("* {long} is now alice"), LINE_DEADLINE);
}

#[test]
fn who_lists_everyone_me_is_an_action_and_unknown_commands_are_refused() {
    let (_certs, _daemon, mut clients) = hub_with(3, &[]);
    for (i, name) in ["carol", "alice", "bob"].iter().enumerate() {
        let old = clients[i].nick.clone();
        clients[i].say(&format!("/nick {name}"));
        for c in &clients {
            c.wait_line(&format!("* {old} is now {name}"), LINE_DEADLINE);
        }
        clients[i].nick = name.to_string();
    }
    clients[2].say("/who");
    clients[2].wait_line("* online: alice, bob, carol", LINE_DEADLINE);

    clients[0].say("/me waves");
    clients[1].wait_line("* carol waves", LINE_DEADLINE);
    clients[2].wait_line("* carol waves", LINE_DEADLINE);

    clients[1].say("/dance");
    clients[1].wait_line("! unknown command /dance", LINE_DEADLINE);

    // carol saw neither her own action nor the others' /who or /dance.
    let (first, rest) = clients.split_at_mut(1);
    sync(&mut rest[0], &first[0], "after");
    let carol = first[0].lines();
    assert!(
        !carol.iter().any(|l| l == "* carol waves" || l.starts_with("* online") || l.starts_with("! ")),
        "{carol:?}"
    );
    // /who and /dance are not relayed as chat either.
    assert!(!carol.iter().any(|l| l.ends_with("> /who") || l.contains("/dance")), "{carol:?}");
}

#[test]
fn a_10_kib_line_is_refused_and_the_connection_keeps_working() {
    let (_certs, daemon, mut clients) = hub_with(2, &[]);
    let nick_a = clients[0].nick.clone();
    let mut payload = vec![b'x'; 10 * 1024];
    payload.extend_from_slice(b"\nafter the long line\n");
    clients[0].send(&payload);
    clients[0].wait_line("! line too long (max 4096 bytes)", LINE_DEADLINE);
    clients[1].wait_line(&format!("<{nick_a}> after the long line"), LINE_DEADLINE);

    // Exactly 4096 bytes is within the limit and arrives intact.
    let exact = "y".repeat(4096);
    clients[0].say(&exact);
    clients[1].wait_line(&format!("<{nick_a}> {exact}"), LINE_DEADLINE);

    // Nothing of the long line reached the other client, and both are still connected.
    let b_lines = clients[1].lines();
    assert!(!b_lines.iter().any(|l| l.contains("xxxx")), "part of the long line was relayed");
    let (a, b) = clients.split_at_mut(1);
    sync(&mut b[0], &a[0], "still here");
    let too_long = a[0].lines().iter().filter(|l| l.starts_with("! line too long")).count();
    assert_eq!(too_long, 1, "one error per long line: {:?}", a[0].lines());
    assert!(daemon.closed().is_empty(), "a connection closed: {}", daemon.log_text());
}

#[test]
fn crlf_invalid_utf8_and_control_characters_are_cleaned_before_fan_out() {
    let (_certs, _daemon, mut clients) = hub_with(2, &[]);
    let nick_a = clients[0].nick.clone();
    clients[0].send(b"crlf line\r\n");
    clients[1].wait_line(&format!("<{nick_a}> crlf line"), LINE_DEADLINE);

    clients[0].send(b"bad \xff\xfe utf8 \xe2\x82\n");
    clients[1].wait_line(&format!("<{nick_a}> bad \u{fffd}\u{fffd} utf8 \u{fffd}"), LINE_DEADLINE);

    clients[0].send(b"\x1b[31mred\x1b[0m\tand\x07tab\n");
    clients[1].wait_line(&format!("<{nick_a}> \u{fffd}[31mred\u{fffd}[0m\tand\u{fffd}tab"), LINE_DEADLINE);

    clients[0].send("caf\u{e9} \u{1F600}\n".as_bytes());
    clients[1].wait_line(&format!("<{nick_a}> caf\u{e9} \u{1F600}"), LINE_DEADLINE);

    // What went out is valid UTF-8 and carries no control byte but tab.
    for raw in clients[1].raw_lines() {
        assert!(std::str::from_utf8(&raw).is_ok(), "invalid UTF-8 relayed: {raw:?}");
        assert!(!raw.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f), "control byte relayed: {raw:?}");
    }
}

#[test]
fn quit_announces_the_close_then_ends_with_close_notify() {
    let (_certs, daemon, mut clients) = hub_with(2, &[]);
    let nick_a = clients[0].nick.clone();
    clients[0].say("/quit");
    assert_eq!(clients[0].wait_end(LINE_DEADLINE), "clean", "{}", clients[0].transcript());
    let lines = clients[0].lines();
    assert_eq!(lines.last().map(String::as_str), Some("* closing: quit"), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("* closing:")).count(), 1, "{lines:?}");
    assert!(!clients[0].transcript().contains("PARTIAL"), "{}", clients[0].transcript());
    clients[1].wait_line(&format!("* {nick_a} left (quit)"), LINE_DEADLINE);
    let closed = daemon.wait_closed(LINE_DEADLINE);
    assert_eq!(closed.kind, "clean", "{}", daemon.log_text());
}

#[test]
fn quit_with_a_message_still_quits() {
    let (_certs, _daemon, mut clients) = hub_with(1, &[]);
    clients[0].say("/quit see you tomorrow");
    assert_eq!(clients[0].wait_end(LINE_DEADLINE), "clean", "{}", clients[0].transcript());
    assert_eq!(clients[0].lines().last().map(String::as_str), Some("* closing: quit"));
}

#[test]
fn a_client_close_notify_gets_no_closing_line_and_others_read_quit() {
    let (_certs, daemon, mut clients) = hub_with(2, &[]);
    let nick_a = clients[0].nick.clone();
    clients[0].command("close");
    assert_eq!(clients[0].wait_end(LINE_DEADLINE), "clean", "{}", clients[0].transcript());
    assert!(
        !clients[0].lines().iter().any(|l| l.starts_with("* closing")),
        "a close the client starts is not announced: {:?}",
        clients[0].lines()
    );
    clients[1].wait_line(&format!("* {nick_a} left (quit)"), LINE_DEADLINE);
    assert_eq!(daemon.wait_closed(LINE_DEADLINE).kind, "clean", "{}", daemon.log_text());
}

#[test]
fn a_client_that_drops_tcp_without_close_notify_is_connection_lost() {
    let (_certs, daemon, mut clients) = hub_with(3, &[]);
    let (nick_a, nick_b) = (clients[0].nick.clone(), clients[1].nick.clone());
    clients[0].command("drop");
    clients[2].wait_line(&format!("* {nick_a} left (connection lost)"), LINE_DEADLINE);
    assert_eq!(daemon.wait_closed(LINE_DEADLINE).kind, "truncated by client", "{}", daemon.log_text());

    clients[1].command("reset");
    clients[2].wait_line(&format!("* {nick_b} left (connection lost)"), LINE_DEADLINE);
    daemon.wait_for_log_count(" closed: ", 2, LINE_DEADLINE);
    assert_eq!(daemon.closed()[1].kind, "reset by client", "{}", daemon.log_text());
    // The survivor is unaffected.
    let survivor = &clients[2];
    assert!(!survivor.ended(), "{}", survivor.transcript());
}

#[test]
fn idle_timeout_closes_with_closing_idle_and_a_clean_close() {
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &["--idle-timeout", "2"]);
    // b stays busy with /who (answered to b alone, so a sees no traffic after b's join) from
    // its welcome until a is closed; a connects meanwhile and then stays silent.
    let mut b = HubClient::connect(&daemon, &certs);
    let t0 = Instant::now();
    let mut a = HubClient::spawn(&daemon, &certs, &[]);
    let deadline = secs(30.0);
    while !a.ended() && t0.elapsed() < deadline {
        b.say("/who");
        std::thread::sleep(secs(0.2));
    }
    a.wait_welcome();
    assert_eq!(a.wait_end(LINE_DEADLINE), "clean", "{}", a.transcript());
    assert!(t0.elapsed() >= secs(2.0), "closed after {:?}, before the idle timeout", t0.elapsed());
    assert_eq!(a.lines().last().map(String::as_str), Some("* closing: idle"), "{}", a.transcript());
    b.wait_line(&format!("* {} joined", a.nick), LINE_DEADLINE);
    b.wait_line(&format!("* {} left (idle)", a.nick), LINE_DEADLINE);
    assert_eq!(daemon.wait_closed(LINE_DEADLINE).kind, "clean", "{}", daemon.log_text());
    assert!(!b.ended(), "the busy client was closed too: {}", b.transcript());
}

fn gnutls_sees_a_clean_close_on_sigterm(tls12: bool) {
    let certs = Certs::new();
    let mut daemon = Daemon::start(&certs, &[]);
    let peer = gnutls(daemon.port(), &certs, tls12);
    peer.wait_handshake();
    assert!(peer.wait_output("* welcome to tlsrelay", LINE_DEADLINE), "no welcome line");
    let (status, _) = daemon.stop(libc::SIGTERM, secs(20.0));
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    let out = peer.finish(secs(10.0));
    assert!(out.contains("* closing: shutdown"), "{out:?}");
    assert!(out.gnutls_clean(), "gnutls-cli did not see close_notify: {out:?}");
    assert!(!out.contains("non-properly terminated"), "{out:?}");
    daemon.summary();
}

#[test]
fn sigterm_gnutls_cli_sees_the_peer_close_the_connection() {
    gnutls_sees_a_clean_close_on_sigterm(false);
}

#[test]
fn sigterm_gnutls_cli_tls12_sees_the_peer_close_the_connection() {
    gnutls_sees_a_clean_close_on_sigterm(true);
}

#[test]
fn sigterm_s_client_prints_closed_after_the_closing_line() {
    let certs = Certs::new();
    let mut daemon = Daemon::start(&certs, &[]);
    let peer = s_client(daemon.port(), &certs, &[]);
    peer.wait_handshake();
    assert!(peer.wait_output("* welcome to tlsrelay", LINE_DEADLINE), "no welcome line");
    let (status, _) = daemon.stop(libc::SIGTERM, secs(20.0));
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    let out = peer.finish(secs(10.0));
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let closing = lines.iter().position(|l| *l == "* closing: shutdown");
    let closed = lines.iter().position(|l| *l == "closed");
    assert!(
        matches!((closing, closed), (Some(a), Some(b)) if a < b),
        "expected `* closing: shutdown` then `closed`: {out:?}"
    );
    let summary = daemon.summary();
    assert_eq!((summary.total, summary.clean), (1, 1), "{}", daemon.log_text());
}

/// DESIGN §3 (H, TLS 1.3): a client that sends its line and at once its close_notify still
/// gets what the hub had queued for it (its welcome), then our close_notify. Repeated: the
/// welcome is queued by the hub thread while the client's close_notify may already be read.
#[test]
fn tls13_half_close_still_delivers_the_welcome_then_a_clean_close_python() {
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &[]);
    for round in 0..10 {
        let r = python(
            daemon.port(),
            &certs,
            &["--tls", "1.3", "--send", "x\n", "--then", "close-notify"],
            secs(10.0),
        );
        assert_eq!(r.version, "TLSv1.3", "{}", r.raw);
        assert!(
            r.text.starts_with("* welcome to tlsrelay; you are "),
            "round {round}: got {:?}; {}",
            r.text,
            r.raw
        );
        assert_eq!(r.end, "clean", "round {round}: {}", r.raw);
    }
    daemon.wait_for_log_count(" closed: clean,", 10, LINE_DEADLINE);
}

#[test]
fn tls13_half_close_still_delivers_the_welcome_then_a_clean_close_tlsrelay_connect() {
    let certs = Certs::new();
    let daemon = Daemon::start(&certs, &[]);
    let target = format!("127.0.0.1:{}", daemon.port());
    for round in 0..10 {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tlsrelay"));
        cmd.args(["connect", &target, "--ca"]).arg(certs.ca());
        let mut client = common::process::Proc::spawn("tlsrelay connect", cmd);
        // `printf 'x\n' | tlsrelay connect …`: a line, then stdin's end, which sends close_notify.
        client.write_stdin(b"x\n");
        client.close_stdin();
        let status = client.wait_exit(secs(10.0)).expect("tlsrelay connect did not exit");
        let stdout = client.stdout();
        assert!(
            stdout.starts_with("* welcome to tlsrelay; you are "),
            "round {round}: stdout {stdout:?}, stderr {:?}",
            client.stderr()
        );
        assert_eq!(status.code(), Some(0), "round {round}: the server's close_notify must arrive");
    }
}
