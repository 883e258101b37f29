//! `credential-service`: see `lib.rs` and docs/credential-service.md. `--help` lists the flags.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::filter::LevelFilter;

use credential_service::app;
use credential_service::cli::{Cli, Command, LogFormat, ServeArgs};

fn init_logs(args: &ServeArgs) {
    let level: LevelFilter = args.log_level.parse().unwrap_or(LevelFilter::INFO);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("credential-service: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match (cli.serve_args().cloned(), cli.command) {
        (Some(args), _) => {
            init_logs(&args);
            runtime.block_on(app::serve(args))
        }
        (None, Some(Command::Users(users))) => runtime.block_on(async {
            let peppers = app::peppers_from_env()?;
            let stdin = std::io::stdin().lock();
            let mut stdout = std::io::stdout().lock();
            credential_service::users::run(users, peppers, stdin, &mut stdout).await
        }),
        (None, _) => Err("nothing to do".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("credential-service: {msg}");
            ExitCode::from(2)
        }
    }
}
