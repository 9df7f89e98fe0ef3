//! The `fanqueue` binary: one subcommand per process role.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fanqueue::{
    auth::{self, JwtKeys},
    cli,
    platform_sim::PlatformSim,
    settings::{ENV_VARS, Settings},
    startup::{self, Role, open_db, open_job_backend, shutdown_signal},
    telemetry,
};
use fanqueue_jobs::domain::UserId;
use tokio_util::sync::CancellationToken;

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
    /// Run the job workers (CSV imports, …); as many processes as you like.
    Worker,
    /// Deliver queued messages to the platform at each creator's rate; as many processes as
    /// you like (they share the rate through Redis).
    Dispatch,
    /// Run the sweeper: on every tick of SWEEP_CRON one sweep (however many sweepers run)
    /// reconciles the DLQ, re-queues stuck messages and prunes old records.
    Sweep,
    /// Run every role in one process (the embedded default's way to run).
    All {
        /// Also serve the platform stand-in (see `platform-sim`) at this address, enforcing
        /// DELIVERY_RATE_PER_MINUTE, and deliver to it: the whole system in one command, with
        /// deliveries to read at http://ADDR/deliveries. Not with PLATFORM_API_URL.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9090")]
        platform_sim: Option<SocketAddr>,
    },
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
        /// An operator's token: the whole queue, every creator's failed messages, monitoring.
        #[arg(long)]
        operator: bool,
        /// Print a link that opens the web app signed in (the token rides in the URL's
        /// fragment, which browsers never send to the server) instead of the bare token.
        #[arg(long)]
        url: bool,
    },
    /// Upload a CSV fan export to a running server, follow the import, print its summary.
    Import {
        /// The .csv file.
        file: PathBuf,
        /// The server.
        #[arg(long, env = "FANQUEUE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// A bearer token (see `fanqueue token`).
        #[arg(long, env = "FANQUEUE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Run a stand-in for the platform's messaging API (tests, benchmarks, trying fanqueue out).
    #[command(name = "platform-sim")]
    PlatformSim {
        /// The address to listen on (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// The platform's own limit: deliveries per creator per minute.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        rate_per_minute: u32,
    },
    /// Probe a health route: exit 0 on a 200, 1 otherwise. For container health checks: the
    /// slim runtime image has no curl.
    Healthcheck {
        /// The route to probe [default: /healthz of the API at LISTEN_ADDR].
        #[arg(long)]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
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
    telemetry::init(settings.telemetry.log_format);
    match cli.command {
        Command::Serve => startup::run(Role::Serve, &settings, None, shutdown_signal()).await,
        Command::Worker => startup::run(Role::Worker, &settings, None, shutdown_signal()).await,
        Command::Dispatch => startup::run(Role::Dispatch, &settings, None, shutdown_signal()).await,
        Command::Sweep => startup::run(Role::Sweep, &settings, None, shutdown_signal()).await,
        Command::All { platform_sim: None } => {
            startup::run(Role::All, &settings, None, shutdown_signal()).await
        }
        Command::All {
            platform_sim: Some(addr),
        } => {
            anyhow::ensure!(
                settings.delivery.platform_api_url.is_none(),
                "--platform-sim and PLATFORM_API_URL both say where to deliver: give one"
            );
            let sim = PlatformSim::bind(addr, settings.delivery.delivery_rate_per_minute).await?;
            let mut settings = settings;
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                addr.ip().to_string()
            };
            settings.delivery.platform_api_url =
                Some(format!("http://{host}:{}/messages", sim.port()));
            startup::run(Role::All, &settings, Some(sim), shutdown_signal()).await
        }
        Command::Migrate => {
            let db = open_db(&settings).await?;
            let jobs = open_job_backend(&settings, &db).await?;
            db.close().await;
            println!(
                "migrations applied ({}, jobs on {})",
                db.backend_name(),
                jobs.name()
            );
            Ok(())
        }
        Command::Import { file, url, token } => {
            let result = cli::import(&url, &token, &file).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(())
        }
        Command::PlatformSim {
            listen,
            rate_per_minute,
        } => {
            let sim = PlatformSim::bind(listen, rate_per_minute).await?;
            let cancel = CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                on_signal.cancel();
            });
            sim.run(cancel).await
        }
        Command::Healthcheck { url, timeout } => {
            let url = url.unwrap_or_else(|| format!("http://{}/healthz", local_addr(&settings)));
            let status = reqwest::Client::builder()
                .timeout(timeout)
                .build()?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("probing {url}"))?
                .status();
            anyhow::ensure!(status == reqwest::StatusCode::OK, "{url} answered {status}");
            Ok(())
        }
        Command::Token {
            user_id,
            ttl,
            operator,
            url,
        } => {
            anyhow::ensure!(user_id > 0, "--user-id must be a positive number");
            let keys = JwtKeys::new(&settings.jwt_secret().context("loading the JWT secret")?);
            let role = if operator {
                auth::Role::Operator
            } else {
                auth::Role::Creator
            };
            let token = keys.issue_as(UserId(user_id), role, ttl);
            if url {
                println!("http://{}/app/#token={token}", local_addr(&settings));
            } else {
                println!("{token}");
            }
            Ok(())
        }
    }
}

/// Where this machine reaches the API: `LISTEN_ADDR`, with loopback for an unspecified address.
fn local_addr(settings: &Settings) -> SocketAddr {
    let mut addr = settings.api.listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}
