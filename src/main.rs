//! The `fanqueue` binary: one subcommand per process role.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fanqueue::{
    auth::JwtKeys,
    settings::{ENV_VARS, Settings},
    startup::{Application, open_db, shutdown_signal},
    telemetry,
};
use fanqueue_jobs::domain::UserId;

#[derive(Parser)]
#[command(name = "fanqueue", version, about = "Durable job system for creator CRMs", after_help = settings_help())]
struct Cli {
    /// A settings file layered over config/default.toml (environment variables still win).
    #[arg(long, global = true, env = "FANQUEUE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API.
    Serve,
    /// Run every role in one process (the embedded default's way to run).
    All,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a bearer token for a user (development and scripts).
    Token {
        /// The user id the token stands for (its `sub`).
        #[arg(long)]
        user_id: i64,
        /// How long the token is valid, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn settings_help() -> String {
    let mut help =
        String::from("Settings (environment variables; defaults in config/default.toml):\n");
    for (name, what) in ENV_VARS {
        help.push_str(&format!("  {name:<26} {what}\n"));
    }
    help
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(settings.log_format);
    match cli.command {
        Command::Serve | Command::All => {
            let app = Application::build(&settings).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            let db = open_db(&settings).await?;
            db.close().await;
            println!("migrations applied ({})", db.backend_name());
            Ok(())
        }
        Command::Token { user_id, ttl } => {
            anyhow::ensure!(user_id > 0, "--user-id must be a positive number");
            let keys = JwtKeys::new(&settings.jwt_secret().context("loading the JWT secret")?);
            println!("{}", keys.issue(UserId(user_id), ttl));
            Ok(())
        }
    }
}
