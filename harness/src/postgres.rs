//! A real PostgreSQL server for tests: Debian's `postgresql` package (installed by `.ci/run`),
//! a fresh cluster in a scratch directory, on a port the OS picked, stopped and removed on drop.
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.

use std::ffi::CString;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{guarded, scratch_dir, Proc};

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    user: Option<(u32, u32)>,
    server: Option<Proc>,
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// The `postgres` user's uid and gid when running as root; `None` otherwise.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls on a NUL-terminated name; the result is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let name = CString::new("postgres").ok()?;
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "no postgres user: apt-get install postgresql"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl Postgres {
    /// initdb (trust auth for local connections; a test cluster only) and start the server.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let user = server_user();
        let data = scratch_dir().join("pgdata");
        std::fs::create_dir_all(&data).expect("pg data dir");
        if let Some((uid, gid)) = user {
            chown_all(data.parent().expect("scratch"), uid, gid);
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut initdb, user);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            bin,
            data,
            user,
            server: None,
        };
        pg.start_again();
        pg
    }

    /// Starts the server (again, after `stop`) on the same port and data, and waits until it
    /// accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "already running");
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut cmd, self.user);
        self.server = Some(Proc(guarded(&mut cmd).spawn().expect("start postgres")));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.query("postgres", "SELECT 1") {
            assert!(Instant::now() < deadline, "PostgreSQL not ready after 30 s");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server at once (SIGINT: fast shutdown, as an outage would look to clients).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(server.0.id() as i32, libc::SIGINT);
            }
            let _ = server.0.wait();
        }
    }

    /// Runs `sql` in database `db` with psql; whether it succeeded.
    pub fn query(&self, db: &str, sql: &str) -> bool {
        Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The single number `sql` (a count) answers in database `db`, if it answers one.
    pub fn count(&self, db: &str, sql: &str) -> Option<u64> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-X", "-t", "-A", "-c", sql])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    }

    /// A URL for database `db`, created if it does not exist yet.
    pub fn database_url(&self, db: &str) -> String {
        assert!(
            db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "plain name"
        );
        if !self.query(db, "SELECT 1") {
            assert!(
                self.query("postgres", &format!("CREATE DATABASE {db}")),
                "create {db}"
            );
        }
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn chown_all(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown scratch dir");
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read scratch dir").flatten() {
            chown_all(&entry.path(), uid, gid);
        }
    }
}
