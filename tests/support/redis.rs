//! A private `redis-server` per test: a free loopback port, no persistence
//! (or AOF with `appendfsync always` in a given directory), killed on drop.
//! Never the machine's shared Redis on 6379.
//!
//! When the `redis-server` binary is missing, [`RedisServer::start`]
//! returns `None` after printing why, so the test returns early — unless
//! `RUNLEDGER_REQUIRE_REDIS=1`, where it panics and the test fails.
//! `RUNLEDGER_REDIS_SERVER` names another binary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Holds the temporary directory when the server owns it.
    _temp: Option<tempfile::TempDir>,
    aof: bool,
}

fn binary() -> String {
    std::env::var("RUNLEDGER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

fn required() -> bool {
    std::env::var("RUNLEDGER_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

/// Whether the binary runs at all; the reason when it does not.
fn available() -> Result<(), String> {
    match Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{} --version` exited with {status}", binary())),
        Err(e) => Err(format!("cannot run `{}`: {e}", binary())),
    }
}

/// Whether `redis-server` can run here, for a test that starts its own
/// (e.g. through `runledger bench`): `false` after printing why (skip),
/// a panic instead when `RUNLEDGER_REQUIRE_REDIS=1`.
pub fn usable() -> bool {
    match available() {
        Ok(()) => true,
        Err(reason) if required() => {
            panic!("RUNLEDGER_REQUIRE_REDIS=1 but redis-server is unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!(
                "skipped: redis-server is unavailable ({reason}); set RUNLEDGER_REQUIRE_REDIS=1 to fail instead"
            );
            false
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn pings(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl RedisServer {
    /// A server without persistence, or `None` (skip) when the binary is
    /// missing and not required.
    pub fn start() -> Option<Self> {
        let temp = tempfile::tempdir().expect("temporary directory");
        let dir = temp.path().to_owned();
        Self::launch(dir, Some(temp), false)
    }

    /// A server with `--appendonly yes --appendfsync always` writing in
    /// `dir`, which survives [`RedisServer::restart`].
    pub fn start_aof(dir: &Path) -> Option<Self> {
        Self::launch(dir.to_owned(), None, true)
    }

    fn launch(dir: PathBuf, temp: Option<tempfile::TempDir>, aof: bool) -> Option<Self> {
        if !usable() {
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            _temp: temp,
            aof,
        };
        // A free port can be taken between the probe and the bind: retry.
        let mut last_error = String::new();
        for _ in 0..3 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new(binary());
        command
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--daemonize")
            .arg("no")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.aof {
            command
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--appendfilename", "runledger.aof"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", binary()))?;
        let give_up = Instant::now() + START_TIMEOUT;
        loop {
            if pings(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {} exited with {status}",
                    self.port
                ));
            }
            if Instant::now() > give_up {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL); the port and directory stay reserved.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and directory
    /// (with AOF, it reloads what it had appended).
    pub fn restart(&mut self) {
        self.kill();
        let give_up = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > give_up => panic!("restarting redis-server: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
