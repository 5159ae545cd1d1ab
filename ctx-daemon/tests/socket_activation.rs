//! `--web.systemd-socket`: the real daemon serving on the socket systemd passes, as
//! `ctx.socket` would, started here by `systemd-socket-activate`. Needs root (it attaches);
//! without root or the tool the test says why and returns, unless `CTX_REQUIRE_KERNEL_TESTS=1`.
#![allow(
    clippy::unwrap_used,
    reason = "test setup that fails should fail the test loudly"
)]

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serves_on_the_socket_systemd_passes() {
    let test = "serves_on_the_socket_systemd_passes";
    let required = std::env::var("CTX_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1");
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("needs root to load eBPF programs")
    } else if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        Some("`systemd-socket-activate` not installed (Debian package systemd)")
    } else {
        None
    };
    if let Some(why) = why {
        assert!(
            !required,
            "{test}: cannot run ({why}) and CTX_REQUIRE_KERNEL_TESTS=1"
        );
        return eprintln!("skipped {test}: {why}");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("ctx-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ctx.toml");
    // The file's address is not the one served: the passed socket is.
    std::fs::write(&cfg, "web.listen-address = \"127.0.0.1:1\"\n").unwrap();
    let log = dir.join("ctx.log");
    let pin_dir = format!("/sys/fs/bpf/ctx-test-socket-{}", std::process::id());
    // Without --accept the tool execs the daemon itself, so LISTEN_PID is the daemon's.
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(env!("CARGO_BIN_EXE_ctx-daemon"))
        .arg("--web.systemd-socket")
        .args(["--pin-dir", &pin_dir])
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reply = String::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
            reply.clear();
            let _ = s.read_to_string(&mut reply);
            if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
    let _ = child.wait();
    let _ = Command::new(env!("CARGO_BIN_EXE_ctx-daemon"))
        .args(["--detach", "--pin-dir", &pin_dir])
        .output();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        reply.contains(" 200 "),
        "no /healthz on the passed socket: {reply}\n{logged}"
    );
    assert!(logged.contains(&format!("127.0.0.1:{port}")), "{logged}");
}
