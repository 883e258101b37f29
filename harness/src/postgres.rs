//! A throwaway PostgreSQL cluster for tests: `initdb` into a scratch directory, `postgres`
//! listening only on a unix socket in that directory (so no port can clash), killed on drop.
//!
//! Uses Debian's `postgresql` package (`.ci/run` installs it), never a system cluster. PostgreSQL
//! refuses to run as root, so under root the cluster runs as the `postgres` user, in a directory
//! it owns; the processes are still our children (setuid in the child, no `runuser` in between),
//! so they die with the test through PR_SET_PDEATHSIG like every other process here.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The socket's "port": only the socket file's name, since nothing listens on TCP.
const PORT: u16 = 5432;

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                .filter(|bin| bin.join("postgres").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): \
             apt-get install postgresql (.ci/run does)"
        )
    })
}

/// uid and gid to run as: `postgres` when we are root, else ourselves.
fn identity() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no `postgres` user: apt-get install postgresql"
    );
    let pw = unsafe { &*pw };
    Some((pw.pw_uid, pw.pw_gid))
}

fn as_owner(cmd: &mut Command, who: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = who {
        cmd.uid(uid).gid(gid);
    }
    // After the uid change (std runs pre_exec closures last), so the death signal survives it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn chown(path: &Path, who: Option<(u32, u32)>) {
    if let Some((uid, gid)) = who {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::chown(c.as_ptr(), uid, gid) },
            0,
            "chown {}",
            path.display()
        );
    }
}

pub struct Postgres {
    dir: PathBuf,
    who: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    /// A new cluster, started and accepting connections.
    pub fn start() -> Self {
        let dir = crate::scratch_dir().join("pg");
        std::fs::create_dir_all(&dir).expect("pg dir");
        let who = identity();
        chown(&dir, who);
        let out = as_owner(
            Command::new(bin_dir().join("initdb"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-N",
                    "-D",
                ])
                .arg(dir.join("data")),
            who,
        )
        .output()
        .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            who,
            child: None,
        };
        pg.run();
        pg
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.log()).expect("pg log");
        chown(&self.log(), self.who);
        let child = as_owner(
            Command::new(bin_dir().join("postgres"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-k")
                .arg(&self.dir)
                .args(["-p", &PORT.to_string()])
                .args(["-c", "listen_addresses="])
                // fsync off: a killed server loses nothing (the OS has the WAL), only a crashed machine would.
                .args(["-c", "fsync=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
                .args(["-c", "shared_buffers=32MB"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
            self.who,
        )
        .spawn()
        .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .contains("ready to accept connections")
        {
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL of the `postgres` database over the unix socket.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost:{PORT}/postgres?host={}",
            self.dir.display()
        )
    }

    fn psql(&self, db: &str) -> Command {
        let mut cmd = Command::new(bin_dir().join("psql"));
        cmd.arg("-h").arg(&self.dir).args([
            "-p",
            &PORT.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-X",
        ]);
        cmd
    }

    /// Runs `sql` in database `db`; whether it succeeded.
    pub fn query(&self, db: &str, sql: &str) -> bool {
        self.psql(db)
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The single number `sql` (a count) answers in database `db`, if it answers one.
    pub fn count(&self, db: &str, sql: &str) -> Option<u64> {
        let out = self
            .psql(db)
            .args(["-t", "-A", "-c", sql])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    }

    /// The URL of database `db` over the unix socket, created if it does not exist yet.
    pub fn database_url(&self, db: &str) -> String {
        assert!(
            db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "a plain database name"
        );
        if !self.query(db, "SELECT 1") {
            assert!(
                self.query("postgres", &format!("CREATE DATABASE {db}")),
                "create database {db}"
            );
        }
        self.url()
            .replace("/postgres?host=", &format!("/{db}?host="))
    }

    /// Stops the server (immediate shutdown); [`Postgres::restart`] brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(self.log());
    }

    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
