//! Starting the server: configuration from flags and environment, the store, the hasher, the
//! demo users, the purge task, and the one stdout line the tests read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::cli::ServeArgs;
use crate::hasher::{default_params, Hasher, Peppers};
use crate::introspect::{self, Introspector};
use crate::metrics::Metrics;
use crate::routes::router;
use crate::server::{self, Limits};
use crate::service::Service;
use crate::store::lockout::LockPolicy;
use crate::store::Store;
use crate::users::seed_demo_users;

pub const AUTH_ENV: &str = "CREDENTIAL_SERVICE_AUTH";
pub const INTROSPECTION_SECRET_ENV: &str = "INTROSPECTION_CLIENT_SECRET";
pub const PEPPER_ENV: &str = "CREDENTIAL_SERVICE_PEPPER";
pub const PEPPERS_ENV: &str = "CREDENTIAL_SERVICE_PEPPERS";
pub const PEPPER_ACTIVE_ENV: &str = "CREDENTIAL_SERVICE_PEPPER_ACTIVE";
/// The dev key that signs introspectable tokens, relative to the repo root.
const DEFAULT_INTROSPECTION_KEY: &str = "envoy/dev-keys/rs256-DEV-ONLY.pem";

/// A non-empty environment variable, `None` when unset or empty.
pub fn env_value(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(Some(v)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// The peppers from the environment (`CREDENTIAL_SERVICE_PEPPER[S]`, `…_PEPPER_ACTIVE`).
pub fn peppers_from_env() -> Result<Peppers, String> {
    Peppers::from_env_values(
        env_value(PEPPER_ENV)?.as_deref(),
        env_value(PEPPERS_ENV)?.as_deref(),
        env_value(PEPPER_ACTIVE_ENV)?.as_deref(),
    )
}

/// The default key path: relative to the current directory (the repo root, normally), else
/// relative to this crate's source tree, as `demo-token` finds its keys.
fn default_introspection_key() -> PathBuf {
    let here = PathBuf::from(DEFAULT_INTROSPECTION_KEY);
    if here.exists() {
        return here;
    }
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DEFAULT_INTROSPECTION_KEY);
    if from_source.exists() {
        from_source
    } else {
        here
    }
}

/// The introspector, when `INTROSPECTION_CLIENT_SECRET` enables it. The key is loaded now,
/// so a bad key stops the start instead of failing every request; an explicit
/// `--introspection-key` is checked even while the endpoint is disabled, to catch typos.
fn introspector(args: &ServeArgs) -> Result<Option<Introspector>, String> {
    let secret = env_value(INTROSPECTION_SECRET_ENV)?;
    if secret.is_none() && args.introspection_key.is_none() {
        return Ok(None);
    }
    let path = args
        .introspection_key
        .clone()
        .unwrap_or_else(default_introspection_key);
    let key = introspect::load_public_key(&path)?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    Introspector::new(
        args.introspection_client.clone(),
        secret,
        key,
        Duration::from_millis(args.introspection_delay_ms),
    )
    .map(Some)
}

pub fn policy(args: &ServeArgs) -> Result<LockPolicy, String> {
    let policy = LockPolicy {
        max_failures: args.max_failures,
        lockout: Duration::from_secs(args.lockout_seconds),
        max_lock: Duration::from_secs(args.max_lock_seconds),
        hard_after: args.hard_lock_after,
    };
    policy.validate()?;
    Ok(policy)
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let auth = env_value(AUTH_ENV)?;
    let policy = policy(&args)?;
    let peppers = peppers_from_env()?;
    let introspector = introspector(&args)?;
    let metrics = Arc::new(Metrics::new());
    let hashes = args.max_concurrent_hashes.map_or_else(
        || std::thread::available_parallelism().map_or(2, usize::from),
        |n| n as usize,
    );
    let hasher = {
        let (peppers, metrics) = (peppers.clone(), Arc::clone(&metrics));
        tokio::task::spawn_blocking(move || Hasher::new(peppers, default_params(), hashes, metrics))
            .await
            .map_err(|e| e.to_string())??
    };
    let store = Store::connect(&args.db.database_url, args.db.db_max_connections).await?;
    if args.seed_demo_users {
        let added = seed_demo_users(&store, &hasher).await?;
        info!(added, "demo users seeded (insert if absent)");
    }
    match peppers.active_id() {
        Some(active) => {
            info!(active = active, ids = ?peppers.ids().collect::<Vec<_>>(), "pepper on")
        }
        None => warn!(
            "no pepper ({PEPPER_ENV} or {PEPPERS_ENV}): hashes are plain argon2id, and a copy of \
             the database is enough to test guesses offline. Fine for the demo, not for production"
        ),
    }
    if policy.max_failures >= policy.hard_after {
        warn!(
            max_failures = policy.max_failures,
            hard_lock_after = policy.hard_after,
            "--max-failures is not below --hard-lock-after: the first lock is the hard one"
        );
    }
    let introspection_on = introspector.is_some();
    let service = Service::new(store.clone(), hasher, policy, auth, Arc::clone(&metrics))
        .with_jwks_file(args.jwks_file.clone())
        .with_introspector(introspector);

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    // Paths and the client id are not secrets; the secrets themselves are never logged.
    info!(
        engine = store.engine().as_str(),
        max_failures = policy.max_failures,
        lockout_seconds = args.lockout_seconds,
        max_lock_seconds = args.max_lock_seconds,
        hard_lock_after = policy.hard_after,
        max_concurrent_hashes = hashes,
        auth = if service.auth().is_some() { "required" } else { "off" },
        jwks_file = ?args.jwks_file,
        introspection = introspection_on,
        introspection_client = ?args.introspection_client,
        introspection_delay_ms = args.introspection_delay_ms,
        "credential-service ready"
    );
    if service.auth().is_none() {
        warn!(
            "{AUTH_ENV} is not set: anyone who can reach the service can ask it to check secrets"
        );
    }

    let purge_store = store.clone();
    let every = Duration::from_secs(args.purge_interval_seconds);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match purge_store.purge().await {
                Ok(0) => {}
                Ok(n) => info!(codes = n, "purged expired one-time codes"),
                Err(e) => warn!(error = %e, "purge failed"),
            }
        }
    });

    // The one stdout line tests parse.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    drop(stdout);

    let limits = Limits {
        max_connections: args.max_connections as usize,
        idle_timeout: Duration::from_secs(args.idle_timeout_seconds),
        header_timeout: Duration::from_secs(args.header_timeout_seconds),
        ..Limits::default()
    };
    server::serve(listener, router(Arc::new(service)), limits).await;
    store.close().await;
    info!("stopped");
    Ok(())
}
