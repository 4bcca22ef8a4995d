//! `tlsrelay connect HOST:PORT` (DESIGN §2, issue 4): stdin to TLS and TLS to stdout, like
//! `openssl s_client -quiet`, but it tells a clean end from a truncated one, stays quiet on a
//! close the server announced, and with --reconnect comes back by itself.

mod backoff;
mod closing;
mod connector;
mod console;
mod dial;
mod interrupt;
mod session;

use std::io;
use std::net::TcpStream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;

use crate::cli::ConnectArgs;
use crate::error::Error;
use crate::sys::PollSet;
use backoff::{jitter, Backoff};
use connector::{fingerprint, Connector};
use console::Console;
use dial::{dial, DialError};
use interrupt::Interrupt;
use session::{End, Outcome, Request, Session};

/// How `connect` ended when nothing failed; `main` turns it into the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The server's close_notify arrived.
    Clean,
    /// The stream ended without it: what was shown may be cut short.
    Truncated,
}

impl Ending {
    /// DESIGN §2: 0 after the server's close_notify, 3 for a truncated stream.
    pub fn exit_code(self) -> i32 {
        match self {
            Ending::Clean => 0,
            Ending::Truncated => 3,
        }
    }
}

/// The one line --insecure prints: what the user gives up.
const INSECURE: &str =
    "the server's certificate is not checked; anyone on the path can read and change this connection";

/// Runs `connect` until the user or the server ends it for good.
pub fn run(args: ConnectArgs) -> Result<Ending, Error> {
    args.validate()?;
    let connector = Connector::new(&args)?;
    if args.insecure {
        eprintln!("warning: --insecure: {INSECURE}");
    }
    let client = Client {
        backoff: Backoff::new(args.reconnect_min, args.reconnect_max),
        connector,
        console: Console::open()?,
        interrupt: Interrupt::install()?,
        args,
    };
    client.run()
}

/// After a close the server announced, failed attempts stay quiet this long: a restart
/// takes seconds; past this the user should hear that the server is not back.
const QUIET_OUTAGE: Duration = Duration::from_secs(10);

/// What follows a session.
enum Next {
    Exit(Ending),
    /// Reconnect after `wait`; `announced`: the server said it was closing (upgrade, shutdown).
    RetryIn {
        wait: Duration,
        announced: bool,
    },
}

/// The time without a connection.
struct Outage {
    since: Instant,
    /// A connection existed before (so success is a "reconnected").
    after_session: bool,
    announced: bool,
    failures: u32,
    /// A failed attempt was already reported.
    warned: bool,
}

impl Outage {
    fn new(after_session: bool, announced: bool) -> Self {
        Outage { since: Instant::now(), after_session, announced, failures: 0, warned: false }
    }
}

struct Client {
    args: ConnectArgs,
    connector: Connector,
    console: Console,
    interrupt: Arc<Interrupt>,
    backoff: Backoff,
}

impl Client {
    fn run(mut self) -> Result<Ending, Error> {
        let mut outage = Outage::new(false, false);
        loop {
            let wait = match dial(&self.args.target, &self.connector, &self.interrupt.fds()) {
                Ok(tls) => {
                    self.announce(&outage, &tls);
                    let session =
                        Session::new(tls, &mut self.console, &self.interrupt, self.args.close_timeout);
                    let outcome = session.run();
                    match self.after_session(outcome)? {
                        Next::Exit(ending) => return Ok(ending),
                        Next::RetryIn { wait, announced } => {
                            outage = Outage::new(true, announced);
                            wait
                        }
                    }
                }
                Err(err) if self.args.reconnect && err.retryable() => {
                    outage.failures += 1;
                    let wait = self.backoff.next(jitter());
                    self.report_failed_attempt(&err, &mut outage, wait);
                    wait
                }
                Err(err) => return Err(failure(err.to_string())),
            };
            if !self.sleep(wait) {
                return Err(failure(format!("reconnecting to {}: interrupted", self.args.target)));
            }
        }
    }

    /// `reconnected to HOST:PORT after 1.2 s` (the one status line of a reconnection).
    fn announce(&self, outage: &Outage, tls: &SslStream<TcpStream>) {
        let target = &self.args.target;
        if self.args.verbose {
            let ssl = tls.ssl();
            let cipher = ssl.current_cipher().map(|c| c.name()).unwrap_or("unknown cipher");
            let pin = ssl.peer_certificate().and_then(|cert| fingerprint(&cert));
            let pin = pin.map(|pin| format!(", certificate {pin}")).unwrap_or_default();
            eprintln!("connected to {target}: {} {cipher}{pin}", ssl.version_str());
        }
        let after = outage.since.elapsed().as_secs_f64();
        if outage.after_session {
            eprintln!("reconnected to {target} after {after:.1} s");
        } else if outage.failures > 0 {
            eprintln!("connected to {target} after {after:.1} s");
        }
    }

    /// Decides between exiting and reconnecting, and says what the user needs to know.
    fn after_session(&mut self, outcome: Outcome) -> Result<Next, Error> {
        let target = &self.args.target;
        if let Some(Request::StdoutFailed(reason)) = &outcome.requested {
            return Err(failure(format!("cannot write to stdout: {reason}; connection to {target} closed")));
        }
        if self.args.verbose {
            self.notice_end(&outcome);
        }
        // `/quit` in the hub is the user's own request, announced as `* closing: quit`.
        let user_asked = outcome.requested.is_some() || outcome.closing.as_deref() == Some("quit");
        if user_asked || !self.args.reconnect || self.interrupt.stop.is_lit() {
            return Ok(Next::Exit(match outcome.end {
                End::Clean => Ending::Clean,
                ref end => {
                    self.warn_unclean(end);
                    Ending::Truncated
                }
            }));
        }
        self.backoff.connection_lived(outcome.lived);
        let announced = matches!(outcome.closing.as_deref(), Some("upgrade" | "shutdown"));
        match &outcome.end {
            End::Clean if announced => {} // expected: the server is coming back
            End::Clean => eprintln!("connection to {target} closed by the server{}", reason(&outcome)),
            end => self.warn_unclean(end),
        }
        let wait = if announced { self.backoff.quick(jitter()) } else { self.backoff.next(jitter()) };
        if self.args.verbose {
            eprintln!("reconnecting to {target} in {:.1} s", wait.as_secs_f64());
        }
        Ok(Next::RetryIn { wait, announced })
    }

    /// The lines of an end without the server's close_notify; the last one is fixed (DESIGN §2).
    fn warn_unclean(&self, end: &End) {
        let target = &self.args.target;
        if let End::Lost(why) = end {
            eprintln!("connection to {target} lost: {why}");
        }
        eprintln!("connection to {target} ended without TLS close_notify: data may be truncated");
    }

    fn notice_end(&self, outcome: &Outcome) {
        let target = &self.args.target;
        if outcome.end == End::Clean {
            eprintln!("connection to {target} closed cleanly{}", reason(outcome));
        } else if outcome.end == End::NoAnswer {
            eprintln!(
                "the server did not send close_notify within {:.1} s of silence",
                self.args.close_timeout.as_secs_f64()
            );
        } else if outcome.end == End::Abandoned {
            eprintln!("stopped waiting for the server's close_notify");
        }
    }

    /// Without --verbose one failed attempt per outage is shown, and only when nothing else
    /// explains the wait: before the first connection, or when an announced restart takes
    /// longer than [`QUIET_OUTAGE`] (a lost connection already had its warning).
    fn report_failed_attempt(&self, err: &DialError, outage: &mut Outage, wait: Duration) {
        if self.args.verbose {
            eprintln!("{err}; retrying in {:.1} s", wait.as_secs_f64());
            return;
        }
        let unexplained =
            !outage.after_session || (outage.announced && outage.since.elapsed() >= QUIET_OUTAGE);
        if unexplained && !outage.warned {
            outage.warned = true;
            eprintln!("{err}; still trying");
        }
    }

    /// Waits before the next attempt; false when Ctrl-C came first.
    fn sleep(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            let mut set = PollSet::new();
            let slots = self.interrupt.fds().map(|fd| set.add(fd, true, false));
            if set.wait(Some(until)).is_err() || slots.iter().any(|&slot| set.ready(slot)) {
                return false;
            }
        }
        true
    }
}

/// ` (server closing: REASON)` when the server announced its close.
fn reason(outcome: &Outcome) -> String {
    outcome.closing.as_ref().map(|why| format!(" (server closing: {why})")).unwrap_or_default()
}

/// A failure of `connect` as main reports it: one line, exit code 1.
fn failure(message: String) -> Error {
    Error::Io(io::Error::other(message))
}
