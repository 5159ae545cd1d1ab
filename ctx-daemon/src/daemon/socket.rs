//! systemd socket activation (`--web.systemd-socket`, `ctx.socket`): the listening socket
//! systemd bound and passed as descriptor 3 (`LISTEN_FDS`, `sd_listen_fds(3)`).

use std::net::TcpListener;
use std::os::fd::{FromRawFd as _, RawFd};

use thiserror::Error;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

#[derive(Debug, Error)]
pub enum SocketError {
    #[error(
        "--web.systemd-socket: no socket passed by systemd (LISTEN_PID/LISTEN_FDS {why}); start \
         ctx through ctx.socket, or drop the flag to bind --web.listen-address"
    )]
    NotPassed { why: String },
    #[error(
        "--web.systemd-socket: systemd passed {n} sockets; ctx serves one (one ListenStream= \
         in ctx.socket)"
    )]
    Several { n: u32 },
    #[error(
        "--web.systemd-socket: descriptor 3 is not a listening TCP socket (ListenStream= in \
         ctx.socket must name ADDR:PORT)"
    )]
    NotTcp,
}

/// Takes descriptor 3 as the listener, after checking that systemd meant it for this process
/// and that it is a TCP stream socket.
pub fn systemd_listener() -> Result<TcpListener, SocketError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Err(SocketError::NotPassed {
            why: "unset".into(),
        });
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Err(SocketError::NotPassed {
            why: format!("name pid {pid}, not this process"),
        });
    }
    match fds.parse::<u32>() {
        Ok(1) => {}
        Ok(0) | Err(_) => {
            return Err(SocketError::NotPassed {
                why: format!("LISTEN_FDS={fds:?}"),
            });
        }
        Ok(n) => return Err(SocketError::Several { n }),
    }
    if !is_tcp_listener(FIRST_FD) {
        return Err(SocketError::NotTcp);
    }
    // SAFETY: systemd handed descriptor 3 to this process (LISTEN_PID checked) and nothing
    // else owns it; it is a listening stream socket of family AF_INET/AF_INET6.
    let l = unsafe { TcpListener::from_raw_fd(FIRST_FD) };
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(FIRST_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(l)
}

fn is_tcp_listener(fd: RawFd) -> bool {
    let opt = |name| {
        let mut v: libc::c_int = 0;
        let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4);
        // SAFETY: valid out pointers of the advertised size.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        (r == 0).then_some(v)
    };
    opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && opt(libc::SO_ACCEPTCONN) == Some(1)
        && matches!(opt(libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_descriptors_are_not_listeners() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_tcp_listener(std::os::fd::AsRawFd::as_raw_fd(&l)));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_tcp_listener(std::os::fd::AsRawFd::as_raw_fd(&f)));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(!is_tcp_listener(std::os::fd::AsRawFd::as_raw_fd(&u)));
    }
}
