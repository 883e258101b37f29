//! The command line (clap).
//!
//! ```text
//! credential-service [serve] [--listen 127.0.0.1:10001] [--database-url sqlite://credential-service.db]
//!                    [--seed-demo-users] [--max-failures 10] [--lockout-seconds 300]
//!                    [--max-lock-seconds 86400] [--hard-lock-after 100] [--jwks-file PATH] …
//! credential-service users add|set-password|set-pin|link|unlink|unlock|delete|list …
//! ```
//!
//! With no subcommand, the flags are `serve`'s (what `make run` and the tests use). Secrets
//! (passwords, PINs) never come from argv: only from stdin or a named environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Upper bound of `--introspection-delay-ms`: enough for any timeout test.
pub const MAX_INTROSPECTION_DELAY_MS: u64 = 60_000;
pub const DEFAULT_DATABASE_URL: &str = "sqlite://credential-service.db";

#[derive(Debug, Parser)]
#[command(
    name = "credential-service",
    about = "Reference credential service for otp-filter",
    args_conflicts_with_subcommands = true,
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Manage users in the store given by --database-url.
    Users(UsersArgs),
}

#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct DbArgs {
    /// sqlite://PATH (created if missing) or postgres://USER@HOST/DB. Prefer the environment
    /// variable for a URL that carries a password.
    #[arg(long, env = "CREDENTIAL_SERVICE_DATABASE_URL", hide_env_values = true,
          default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub db_max_connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// key=value lines.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, Clone, Args, PartialEq, Eq)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:10001")]
    pub listen: String,
    #[command(flatten)]
    pub db: DbArgs,
    /// Insert the demo users if they are absent (demo-user, demo-user-2, unlinked-user).
    #[arg(long)]
    pub seed_demo_users: bool,
    /// Consecutive failures that engage each temporary lock.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_failures: u32,
    /// The first temporary lock; each further one doubles it.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub lockout_seconds: u64,
    /// The longest temporary lock.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_lock_seconds: u64,
    /// Consecutive failures that engage the hard lock (at most 100: NIST SP 800-63B).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub hard_lock_after: u32,
    /// argon2 runs at once (each takes 19 MiB and a core); default: the number of cores.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_concurrent_hashes: Option<u32>,
    /// Served as-is at GET /jwks.json, re-read on every request (503 without it).
    #[arg(long, value_parser = non_empty_path)]
    pub jwks_file: Option<PathBuf>,
    /// HTTP Basic client id of POST /v1/introspect (enabled by INTROSPECTION_CLIENT_SECRET).
    #[arg(long, default_value = "otp-filter", value_parser = basic_user_id)]
    pub introspection_client: String,
    /// RSA key whose RS256 tokens introspect as active [default: envoy/dev-keys/rs256-DEV-ONLY.pem]
    #[arg(long, value_parser = non_empty_path)]
    pub introspection_key: Option<PathBuf>,
    /// Delay every introspection answer (tests).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=MAX_INTROSPECTION_DELAY_MS))]
    pub introspection_delay_ms: u64,
    /// How often expired one-time codes are purged.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub purge_interval_seconds: u64,
    /// Connections served at once; more get a 503.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// A connection idle this long between requests is closed.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_seconds: u64,
    /// A request head must arrive within this time of its first byte.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_seconds: u64,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// error, warn, info, debug or trace. No level logs a secret.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
}

fn non_empty_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        Err("empty path".into())
    } else {
        Ok(PathBuf::from(s))
    }
}

/// RFC 7617: a Basic user-id cannot contain a colon.
fn basic_user_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(':') || s.chars().any(char::is_control) {
        Err("must be non-empty, without ':' or control characters".into())
    } else {
        Ok(s.to_owned())
    }
}

#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// Where a secret comes from: stdin (one line) or a named environment variable. Never argv.
#[derive(Debug, Clone, Args, PartialEq, Eq)]
#[group(required = true, multiple = false)]
pub struct SecretSource {
    /// Read the secret from stdin (one line; the newline is dropped).
    #[arg(long)]
    pub stdin: bool,
    /// Read the secret from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub from_env: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user. Secrets: --password-stdin/--pin-stdin (one line each, password first) or
    /// --password-from-env/--pin-from-env VAR.
    Add {
        id: String,
        /// The identity the account is linked to; without it, verify answers
        /// missing-linked-identity.
        #[arg(long)]
        linked_identity: Option<String>,
        #[arg(long, conflicts_with = "password_from_env")]
        password_stdin: bool,
        #[arg(long, value_name = "VAR")]
        password_from_env: Option<String>,
        #[arg(long, conflicts_with = "pin_from_env")]
        pin_stdin: bool,
        #[arg(long, value_name = "VAR")]
        pin_from_env: Option<String>,
    },
    /// Set a user's password; this also lifts every lock, the hard lock included.
    SetPassword {
        id: String,
        #[command(flatten)]
        source: SecretSource,
    },
    /// Set a user's PIN (PACE's PIN rule applies).
    SetPin {
        id: String,
        #[command(flatten)]
        source: SecretSource,
    },
    /// Link the account to an identity.
    Link { id: String, identity: String },
    /// Remove the linked identity.
    Unlink { id: String },
    /// Lift every lock of an id (temporary and hard) and start its budget over.
    Unlock { id: String },
    /// Delete a user and its budget.
    Delete { id: String },
    /// List users: id, linked identity, secrets (with pepper ids), failures, lock.
    List,
}

impl Cli {
    /// The server's arguments, with or without the `serve` subcommand.
    pub fn serve_args(&self) -> Option<&ServeArgs> {
        match &self.command {
            None => Some(&self.serve),
            Some(Command::Serve(args)) => Some(args),
            Some(Command::Users(_)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(a: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli =
            Cli::try_parse_from(std::iter::once("credential-service").chain(a.iter().copied()))?;
        Ok(cli.serve_args().cloned().expect("serve"))
    }

    #[test]
    fn cli_defaults_and_flags() {
        std::env::remove_var("CREDENTIAL_SERVICE_DATABASE_URL");
        let d = serve(&[]).unwrap();
        assert_eq!(
            (
                d.listen.as_str(),
                d.max_failures,
                d.lockout_seconds,
                d.max_lock_seconds
            ),
            ("127.0.0.1:10001", 10, 300, 86_400)
        );
        assert_eq!((d.hard_lock_after, d.introspection_delay_ms), (100, 0));
        assert_eq!(d.introspection_client, "otp-filter");
        assert_eq!(
            (d.jwks_file.as_ref(), d.introspection_key.as_ref()),
            (None, None)
        );
        assert_eq!(d.db.database_url, DEFAULT_DATABASE_URL);
        assert!(!d.seed_demo_users);

        let s = serve(&[
            "--listen",
            "127.0.0.1:0",
            "--max-failures=3",
            "--lockout-seconds",
            "5",
        ])
        .unwrap();
        assert_eq!(
            (s.listen.as_str(), s.max_failures, s.lockout_seconds),
            ("127.0.0.1:0", 3, 5)
        );
        let s = serve(&[
            "--jwks-file",
            "/tmp/jwks.json",
            "--introspection-client=filter-2",
            "--introspection-key",
            "k.pem",
            "--introspection-delay-ms",
            "2500",
        ])
        .unwrap();
        assert_eq!(s.jwks_file, Some(PathBuf::from("/tmp/jwks.json")));
        assert_eq!(s.introspection_client, "filter-2");
        assert_eq!(s.introspection_key, Some(PathBuf::from("k.pem")));
        assert_eq!(s.introspection_delay_ms, 2500);
        // The same flags after `serve`.
        let cli =
            Cli::try_parse_from(["credential-service", "serve", "--max-failures", "4"]).unwrap();
        assert_eq!(cli.serve_args().unwrap().max_failures, 4);

        for bad in [
            &["--jwks-file"][..],
            &["--jwks-file="],
            &["--introspection-client", ""],
            &["--introspection-client", "a:b"],
            &["--introspection-key="],
            &["--introspection-delay-ms", "-1"],
            &["--introspection-delay-ms", "60001"],
            &["--introspection-delay-ms", "soon"],
            &["--max-failures", "0"],
            &["--lockout-seconds", "-1"],
            &["--hard-lock-after", "101"],
            &["--hard-lock-after", "0"],
            &["--listen"],
            &["--bogus"],
            &["hash"],
        ] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
        let help = Cli::try_parse_from(["credential-service", "--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn users_commands_take_no_secret_from_argv() {
        let parse = |a: &[&str]| {
            Cli::try_parse_from(std::iter::once("credential-service").chain(a.iter().copied()))
        };
        assert!(parse(&["users", "set-pin", "u", "--stdin"]).is_ok());
        assert!(parse(&["users", "set-pin", "u", "--from-env", "NEW_PIN"]).is_ok());
        // Exactly one source; a secret as a value is refused.
        assert!(parse(&["users", "set-pin", "u"]).is_err());
        assert!(parse(&["users", "set-pin", "u", "--stdin", "--from-env", "X"]).is_err());
        assert!(parse(&["users", "set-pin", "u", "8299"]).is_err());
        assert!(parse(&["users", "set-password", "u", "--password", "x"]).is_err());
        assert!(parse(&["users", "add", "u", "--pin", "8299"]).is_err());
        assert!(parse(&["users", "add", "u", "--pin-stdin", "--pin-from-env", "X"]).is_err());
        assert!(parse(&["users", "add", "u", "--linked-identity", "x", "--pin-stdin"]).is_ok());
        assert!(parse(&["users", "list"]).is_ok());
        // Server flags do not mix with subcommands.
        assert!(parse(&["--listen", "x", "users", "list"]).is_err());
    }
}
