//! The only file that talks to the OS below std: poll, pipes, socket options, limits.

use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage};

/// A small fixed poll set, rebuilt before every wait; an unneeded fd is simply not added,
/// because a hung-up socket reports POLLHUP even with no events asked and would spin.
pub struct PollSet {
    fds: [libc::pollfd; 4],
    len: usize,
}

/// Index of an fd in a [`PollSet`]; `None` when it was not added this round.
pub type Slot = Option<usize>;

impl PollSet {
    pub fn new() -> Self {
        PollSet { fds: [libc::pollfd { fd: -1, events: 0, revents: 0 }; 4], len: 0 }
    }

    /// Adds `fd` with the given interest; returns its slot, or `None` if no interest.
    pub fn add(&mut self, fd: RawFd, read: bool, write: bool) -> Slot {
        if !read && !write {
            return None;
        }
        let mut events = 0;
        if read {
            events |= libc::POLLIN;
        }
        if write {
            events |= libc::POLLOUT;
        }
        self.fds[self.len] = libc::pollfd { fd, events, revents: 0 };
        self.len += 1;
        Some(self.len - 1)
    }

    /// Waits until an fd is ready or `deadline` passes (`None`: no deadline). EINTR counts as a wake-up.
    pub fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let timeout_ms = match deadline {
            None => -1,
            Some(at) => millis_until(at),
        };
        // SAFETY: `fds[..len]` are initialised pollfd records owned by self.
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), self.len as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        Ok(())
    }

    /// True when the slot reported anything (readable, writable, hang-up or error).
    pub fn ready(&self, slot: Slot) -> bool {
        slot.is_some_and(|i| self.fds[i].revents != 0)
    }

    /// A read would not block: data, end of stream, or an error to collect.
    pub fn readable(&self, slot: Slot) -> bool {
        slot.is_some_and(|i| self.fds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
    }

    /// A write would not block, or would fail at once.
    pub fn writable(&self, slot: Slot) -> bool {
        slot.is_some_and(|i| self.fds[i].revents & (libc::POLLOUT | libc::POLLHUP | libc::POLLERR) != 0)
    }
}

/// Milliseconds until `at`, rounded up so a wait never ends just before its deadline.
fn millis_until(at: Instant) -> i32 {
    let left = at.saturating_duration_since(Instant::now());
    let ms = left.as_micros().div_ceil(1000);
    ms.min(i32::MAX as u128) as i32
}

/// Waits for one fd (read or write) and the stop descriptors, until `deadline`.
/// Returns which of them woke up first.
pub fn wait_one(fd: RawFd, write: bool, stops: &[RawFd], deadline: Instant) -> io::Result<Wake> {
    let mut set = PollSet::new();
    let slot = set.add(fd, !write, write);
    let stop_slots: Vec<Slot> = stops.iter().map(|&s| set.add(s, true, false)).collect();
    set.wait(Some(deadline))?;
    if stop_slots.iter().any(|&s| set.ready(s)) {
        return Ok(Wake::Stop);
    }
    if set.ready(slot) {
        return Ok(Wake::Ready);
    }
    if Instant::now() >= deadline {
        return Ok(Wake::Deadline);
    }
    Ok(Wake::Spurious)
}

/// Why [`wait_one`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    Ready,
    Stop,
    Deadline,
    Spurious,
}

/// A broadcast flag readable by any number of pollers: written once, never drained,
/// so it stays readable for everyone (DESIGN §4).
pub struct Beacon {
    read: OwnedFd,
    write: OwnedFd,
}

impl Beacon {
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(io::Error::from)?;
        Ok(Beacon { read, write })
    }

    /// Lights the beacon; lighting it twice is harmless.
    pub fn light(&self) {
        if !self.is_lit() {
            let _ = nix::unistd::write(&self.write, b"!");
        }
    }

    pub fn is_lit(&self) -> bool {
        let mut set = PollSet::new();
        let slot = set.add(self.fd(), true, false);
        set.wait(Some(Instant::now())).is_ok() && set.ready(slot)
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// Binds a non-blocking, close-on-exec listening socket with an explicit backlog
/// (std's fixed 128 overflows under a flood); IPv6 sockets are V6ONLY.
/// With `reuse_port`, SO_REUSEPORT: several processes share the port, each with its own
/// accept queue.
pub fn bind_listener(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    let family = if addr.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd =
        socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if reuse_port {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    }
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    let backlog = socket::Backlog::new(backlog).unwrap_or(socket::Backlog::MAXCONN);
    socket::listen(&fd, backlog)?;
    Ok(TcpListener::from(fd))
}

/// `accept4(2)`: the new socket comes non-blocking and close-on-exec in one call.
pub fn accept(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: `storage` and `len` describe a buffer large enough for any socket address.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: accept4 filled `len` bytes of `storage` with the peer's address.
    let addr =
        unsafe { SockaddrStorage::from_raw((&storage as *const libc::sockaddr_storage).cast(), Some(len)) };
    let peer = addr.and_then(|addr| match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
        (Some(v4), _) => Some(SocketAddr::from(std::net::SocketAddrV4::from(*v4))),
        (_, Some(v6)) => Some(SocketAddr::from(std::net::SocketAddrV6::from(*v6))),
        _ => None,
    });
    match peer {
        Some(peer) => Ok((stream, peer)),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, "accepted a socket without an IP address")),
    }
}

/// Connects without blocking past `deadline` or a lit stop descriptor.
pub fn connect(addr: SocketAddr, deadline: Instant, stops: &[RawFd]) -> io::Result<TcpStream> {
    let family = if addr.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let fd =
        socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => return Ok(TcpStream::from(fd)),
        Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(err) => return Err(err.into()),
    }
    let stream = TcpStream::from(fd);
    loop {
        match wait_one(stream.as_raw_fd(), true, stops, deadline)? {
            Wake::Ready => break,
            Wake::Stop => return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping")),
            Wake::Deadline => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
            Wake::Spurious => {}
        }
    }
    match stream.take_error()? {
        Some(err) => Err(err),
        None => Ok(stream),
    }
}

/// Connects to a unix stream socket (`abstract_name`: in Linux's abstract namespace)
/// without blocking: a unix connect completes at once or fails (EAGAIN when the listener's
/// queue is full), so no deadline is needed.
pub fn connect_unix(path: &std::path::Path, abstract_name: Option<&[u8]>) -> io::Result<UnixStream> {
    let addr = match abstract_name {
        Some(name) => socket::UnixAddr::new_abstract(name)?,
        None => socket::UnixAddr::new(path)?,
    };
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// `recv(MSG_PEEK)` without blocking: what has arrived, left in the socket for the next read.
pub fn peek(stream: &impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    let flags = socket::MsgFlags::MSG_PEEK | socket::MsgFlags::MSG_DONTWAIT;
    socket::recv(stream.as_fd().as_raw_fd(), buf, flags).map_err(io::Error::from)
}

/// Makes the next close an abortive one (RST), for ends that must not look clean.
pub fn set_linger_zero(stream: &impl AsFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = socket::setsockopt(&stream.as_fd(), sockopt::Linger, &linger);
}

/// TCP keepalive with `idle_secs` of silence before the first probe (0: off).
pub fn set_keepalive(socket: &impl AsFd, idle_secs: u32) {
    let fd = socket.as_fd();
    let _ = socket::setsockopt(&fd, sockopt::KeepAlive, &(idle_secs > 0));
    if idle_secs == 0 {
        return;
    }
    let _ = socket::setsockopt(&fd, sockopt::TcpKeepIdle, &idle_secs);
    let _ = socket::setsockopt(&fd, sockopt::TcpKeepInterval, &idle_secs.clamp(1, 10));
    let _ = socket::setsockopt(&fd, sockopt::TcpKeepCount, &5);
}

/// Sets on a listening socket the options every socket it accepts inherits on Linux
/// (TCP_NODELAY and keepalive), so a new connection costs no setsockopt of its own.
pub fn set_accepted_options(listener: &TcpListener, keepalive_secs: u32) -> io::Result<()> {
    socket::setsockopt(&listener.as_fd(), sockopt::TcpNoDelay, &true)?;
    set_keepalive(listener, keepalive_secs);
    Ok(())
}

/// Stack kept below the local variable [`trim_stack`] measures from: the rest of its frame
/// (15 bytes in a release build, 103 in a debug one, on x86-64), the return address the call
/// into `madvise` pushes, and x86-64's 128-byte red zone must all survive.
const STACK_KEPT_BELOW: usize = 1024;

thread_local! {
    /// Lowest address of this thread's stack, looked up once per thread. None for the main
    /// thread, whose stack glibc describes from the stack limit, gaps included.
    static STACK_LOW: Option<usize> = if is_main_thread() { None } else { stack_low() };
}

/// Gives the kernel back the stack pages below the caller's frame: a handshake touches
/// tens of KiB of stack that an idle connection never needs again, and a thread per
/// connection would otherwise hold them until it ends. They are private anonymous pages,
/// so a later deep call simply gets fresh zeroed ones.
#[inline(never)]
pub fn trim_stack() {
    let marker = 0u8;
    let frame = std::hint::black_box(&marker) as *const u8 as usize;
    let page = page_size();
    let Some(low) = STACK_LOW.with(|low| *low) else { return };
    let start = low.saturating_add(page - 1) & !(page - 1);
    let end = frame.saturating_sub(STACK_KEPT_BELOW) & !(page - 1);
    if end > start {
        // SAFETY: [start, end) lies in this thread's own stack mapping, below the current
        // frame and its margin, so nothing live is stored there.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

fn is_main_thread() -> bool {
    // SAFETY: gettid and getpid have no preconditions.
    unsafe { libc::gettid() == libc::getpid() }
}

fn stack_low() -> Option<usize> {
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread, which is then read
    // and destroyed here only.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let (mut addr, mut size) = (std::ptr::null_mut(), 0);
        let rc = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        (rc == 0).then_some(addr as usize)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// Whether this process runs in glibc's secure-execution mode (setuid, setgid or file
/// capabilities), in which glibc ignores `GLIBC_TUNABLES`.
pub fn secure_execution() -> bool {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Renames the calling thread, as `top -H` and `ps -L` show it (Linux keeps 15 bytes).
pub fn set_thread_name(name: &str) {
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: `bytes` is NUL-terminated, at most 16 bytes, and outlives the call.
    unsafe { libc::pthread_setname_np(libc::pthread_self(), bytes.as_ptr().cast()) };
}

/// `read(2)` into memory that need not be initialised, so relay buffers are never zeroed.
pub fn read_uninit(source: &impl AsFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, which we own mutably.
    let n = unsafe { libc::read(source.as_fd().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Bytes written to `stream` that the peer has not acknowledged yet (SIOCOUTQ).
/// On a unix socket it counts the memory of sent buffers the peer has not read yet.
pub fn unsent_bytes(stream: &impl AsFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(stream.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(queued.max(0) as usize)
}

/// Raises the soft descriptor limit to the hard one; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// How many more threads this process may start: RLIMIT_NPROC and the cgroup's pids.max.
pub fn thread_budget() -> u64 {
    use nix::sys::resource::{getrlimit, Resource};
    let nproc = getrlimit(Resource::RLIMIT_NPROC).map(|(soft, _)| soft).unwrap_or(u64::MAX);
    let pids_max = std::fs::read_to_string("/sys/fs/cgroup/pids.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    nproc.min(pids_max)
}

/// In a forked child before exec: clears close-on-exec on exactly these descriptors.
pub fn keep_across_exec(fds: &[RawFd]) -> io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl on a descriptor number; async-signal-safe, allocates nothing.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets close-on-exec again on a descriptor we inherited.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number only changes its flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes over an inherited descriptor after checking it is a listening TCP socket.
pub fn adopt_listener(fd: RawFd) -> io::Result<TcpListener> {
    let not_listening = || io::Error::new(io::ErrorKind::InvalidInput, "not a listening TCP socket");
    if int_sockopt(fd, libc::SO_ACCEPTCONN)? != 1 || int_sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(not_listening());
    }
    let domain = int_sockopt(fd, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(not_listening());
    }
    set_cloexec(fd)?;
    // SAFETY: checked above to be an open listening socket, handed to this process alone.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn int_sockopt(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len point to live locals of the sizes getsockopt is told.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, option, (&mut value as *mut libc::c_int).cast(), &mut len)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

pub fn send_signal(pid: i32, signal: nix::sys::signal::Signal) -> io::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(io::Error::from)
}

/// The names of the user and group this process runs as (numbers when they have none),
/// for errors that tell the operator whom to give access.
pub fn identity() -> (String, String) {
    use nix::unistd::{Gid, Group, Uid, User};
    let (uid, gid) = (Uid::effective(), Gid::effective());
    let user = User::from_uid(uid).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name);
    let group = Group::from_gid(gid).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name);
    (user, group)
}

/// CLOCK_MONOTONIC in microseconds, as systemd's `MONOTONIC_USEC=` wants it.
pub fn monotonic_usec() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// Whether `pid` names a live process (signal 0 probes without sending anything).
pub fn is_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// poll(2) on any number of descriptors until one is ready or `deadline` passes (`None`:
/// no deadline); EINTR counts as a wake-up. For the status endpoint's connection table.
pub fn poll_fds(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> io::Result<()> {
    let timeout_ms = deadline.map_or(-1, millis_until);
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd records.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of this thread's stack between its lowest address and `below`.
    fn resident_stack_pages(below: usize) -> usize {
        let page = page_size();
        let low = STACK_LOW.with(|low| low.expect("a spawned thread"));
        let start = low.saturating_add(page - 1) & !(page - 1);
        let end = below & !(page - 1);
        let mut vec = vec![0u8; (end - start) / page];
        // SAFETY: [start, end) is inside this thread's stack mapping; `vec` has a byte a page.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[inline(never)]
    fn touch_stack(kib: usize) {
        let mut chunk = [0u8; 1024];
        std::hint::black_box(&mut chunk);
        if kib > 1 {
            touch_stack(kib - 1);
        }
    }

    #[test]
    fn trim_stack_gives_back_the_pages_below_the_frame() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                touch_stack(96);
                let marker = 0u8;
                let frame = std::hint::black_box(&marker) as *const u8 as usize;
                let before = resident_stack_pages(frame - 16 * 1024);
                assert!(before >= 16, "the deep calls touched the stack: {before} pages");
                trim_stack();
                let after = resident_stack_pages(frame - 16 * 1024);
                assert_eq!(after, 0, "{before} resident pages before the trim");
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
