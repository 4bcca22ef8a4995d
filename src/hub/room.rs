//! The hub thread: owns the nick table and fans lines out to every client's outbox (DESIGN §5).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::hub::lines::MAX_LINE;
use crate::hub::outbox::Outbox;

/// What workers tell the hub.
pub enum HubMsg {
    Join {
        id: u64,
        outbox: Arc<Outbox>,
    },
    Line {
        id: u64,
        text: String,
    },
    /// The client sent a line over the limit; told in order with its other replies.
    LineTooLong {
        id: u64,
    },
    /// The client's closure began: what its outbox holds once this is handled, in order
    /// after its Join and its lines, is the last it gets.
    LastDelivery {
        id: u64,
    },
    Leave {
        id: u64,
        reason: LeaveReason,
    },
}

/// Why a client left, as the others read it (`* NICK left (REASON)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Quit,
    ConnectionLost,
    Idle,
    TooSlow,
    /// The whole hub is closing: nobody is told.
    Silent,
}

impl LeaveReason {
    fn text(self) -> &'static str {
        match self {
            LeaveReason::Quit => "quit",
            LeaveReason::ConnectionLost => "connection lost",
            LeaveReason::Idle => "idle",
            LeaveReason::TooSlow => "too slow",
            LeaveReason::Silent => "",
        }
    }
}

/// The longest nick, in characters of `A-Z a-z 0-9 _ -`.
const MAX_NICK: usize = 32;

struct Member {
    nick: String,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct Hub {
    members: HashMap<u64, Member>,
    /// Lower-cased nick → id, so `Alice` and `alice` cannot both exist.
    nicks: BTreeMap<String, u64>,
    next_guest: u64,
}

/// Starts the hub thread; it ends when every sender is gone.
pub fn spawn() -> std::io::Result<Sender<HubMsg>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new().name("hub".into()).spawn(move || run(rx))?;
    Ok(tx)
}

fn run(rx: Receiver<HubMsg>) {
    let mut hub = Hub::default();
    for msg in rx {
        match msg {
            HubMsg::Join { id, outbox } => hub.join(id, outbox),
            HubMsg::Line { id, text } => hub.line(id, &text),
            HubMsg::LineTooLong { id } => hub.too_long(id),
            HubMsg::LastDelivery { id } => hub.last_delivery(id),
            HubMsg::Leave { id, reason } => hub.leave(id, reason),
        }
    }
}

impl Hub {
    fn join(&mut self, id: u64, outbox: Arc<Outbox>) {
        let nick = self.free_guest_nick();
        outbox.push_line(&format!(
            "* welcome to tlsrelay; you are {nick}. Commands: /nick NAME, /who, /me TEXT, /quit"
        ));
        self.broadcast_except(id, &format!("* {nick} joined"));
        self.nicks.insert(nick.to_lowercase(), id);
        self.members.insert(id, Member { nick, outbox });
    }

    fn free_guest_nick(&mut self) -> String {
        loop {
            self.next_guest += 1;
            let nick = format!("guest{}", self.next_guest);
            if !self.nicks.contains_key(&nick) {
                return nick;
            }
        }
    }

    fn leave(&mut self, id: u64, reason: LeaveReason) {
        let Some(member) = self.members.remove(&id) else { return };
        self.nicks.remove(&member.nick.to_lowercase());
        if reason != LeaveReason::Silent {
            self.broadcast_except(id, &format!("* {} left ({})", member.nick, reason.text()));
        }
    }

    fn line(&mut self, id: u64, text: &str) {
        let Some(member) = self.members.get(&id) else { return };
        member.outbox.line_handled();
        let nick = member.nick.clone();
        match text.strip_prefix('/') {
            None => self.broadcast_except(id, &format!("<{nick}> {text}")),
            Some(command) => self.command(id, &nick, command),
        }
    }

    fn too_long(&self, id: u64) {
        if let Some(member) = self.members.get(&id) {
            member.outbox.line_handled();
            member.outbox.push_line(&format!("! line too long (max {MAX_LINE} bytes)"));
        }
    }

    fn last_delivery(&self, id: u64) {
        if let Some(member) = self.members.get(&id) {
            member.outbox.mark_last_delivery();
        }
    }

    fn command(&mut self, id: u64, nick: &str, command: &str) {
        let (name, arg) = command.split_once(' ').unwrap_or((command, ""));
        match name {
            "me" => self.broadcast_except(id, format!("* {nick} {arg}").trim_end()),
            "nick" => self.rename(id, nick, arg.trim()),
            "who" => {
                let mut names: Vec<&str> = self.members.values().map(|m| m.nick.as_str()).collect();
                names.sort_unstable();
                self.tell(id, &format!("* online: {}", names.join(", ")));
            }
            _ => self.tell(id, &format!("! unknown command /{name}")),
        }
    }

    fn rename(&mut self, id: u64, old: &str, new: &str) {
        if !is_valid_nick(new) {
            return self.tell(id, "! invalid nick");
        }
        match self.nicks.get(&new.to_lowercase()) {
            Some(&owner) if owner != id => return self.tell(id, &format!("! nick {new} is taken")),
            _ => {}
        }
        self.nicks.remove(&old.to_lowercase());
        self.nicks.insert(new.to_lowercase(), id);
        if let Some(member) = self.members.get_mut(&id) {
            member.nick = new.to_string();
        }
        self.broadcast_except(u64::MAX, &format!("* {old} is now {new}"));
    }

    fn tell(&self, id: u64, line: &str) {
        if let Some(member) = self.members.get(&id) {
            member.outbox.push_line(line);
        }
    }

    /// Sends `line` to everyone but `sender`; a full outbox loses the line, never blocks us.
    fn broadcast_except(&self, sender: u64, line: &str) {
        for (&id, member) in &self.members {
            if id != sender {
                member.outbox.push_line(line);
            }
        }
    }
}

fn is_valid_nick(nick: &str) -> bool {
    (1..=MAX_NICK).contains(&nick.len())
        && nick.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(outbox: &Outbox) -> String {
        let mut buf = crate::buffer::Buffer::new(65536);
        let n = outbox.take(buf.space());
        // SAFETY: `take` wrote `n` bytes into the space.
        unsafe { buf.filled(n) };
        String::from_utf8(buf.pending().to_vec()).unwrap()
    }

    fn hub_with(n: u64) -> (Hub, Vec<Arc<Outbox>>) {
        let mut hub = Hub::default();
        let outboxes: Vec<Arc<Outbox>> = (0..n).map(|_| Arc::new(Outbox::new().unwrap())).collect();
        for (id, outbox) in outboxes.iter().enumerate() {
            hub.join(id as u64, outbox.clone());
        }
        for outbox in &outboxes {
            drain(outbox);
        }
        (hub, outboxes)
    }

    #[test]
    fn welcome_names_the_guest_and_others_see_the_join() {
        let mut hub = Hub::default();
        let (a, b) = (Arc::new(Outbox::new().unwrap()), Arc::new(Outbox::new().unwrap()));
        hub.join(1, a.clone());
        hub.join(2, b.clone());
        assert_eq!(
            drain(&a),
            "* welcome to tlsrelay; you are guest1. Commands: /nick NAME, /who, /me TEXT, /quit\n* guest2 joined\n"
        );
        assert!(drain(&b).starts_with("* welcome to tlsrelay; you are guest2."));
    }

    #[test]
    fn lines_go_to_others_not_back_to_the_sender() {
        let (mut hub, boxes) = hub_with(2);
        hub.line(0, "hello");
        hub.line(0, "/me waves");
        assert_eq!(drain(&boxes[1]), "<guest1> hello\n* guest1 waves\n");
        assert_eq!(drain(&boxes[0]), "");
    }

    #[test]
    fn nick_rename_collision_and_validation() {
        let (mut hub, boxes) = hub_with(2);
        hub.line(0, "/nick alice");
        assert_eq!(drain(&boxes[0]), "* guest1 is now alice\n");
        assert_eq!(drain(&boxes[1]), "* guest1 is now alice\n");
        hub.line(1, "/nick Alice");
        assert_eq!(drain(&boxes[1]), "! nick Alice is taken\n");
        hub.line(1, "/nick bad nick!");
        assert_eq!(drain(&boxes[1]), "! invalid nick\n");
        hub.line(1, &format!("/nick {}", "x".repeat(33)));
        assert_eq!(drain(&boxes[1]), "! invalid nick\n");
        hub.line(1, "/who");
        assert_eq!(drain(&boxes[1]), "* online: alice, guest2\n");
        hub.line(1, "/dance");
        assert_eq!(drain(&boxes[1]), "! unknown command /dance\n");
    }

    #[test]
    fn leaving_frees_the_nick_and_tells_the_others() {
        let (mut hub, boxes) = hub_with(2);
        hub.line(0, "/nick bob");
        drain(&boxes[1]);
        hub.leave(0, LeaveReason::ConnectionLost);
        assert_eq!(drain(&boxes[1]), "* bob left (connection lost)\n");
        hub.line(1, "/nick bob");
        assert_eq!(drain(&boxes[1]), "* guest2 is now bob\n");
        hub.leave(1, LeaveReason::Silent);
        assert!(hub.members.is_empty());
    }
}
