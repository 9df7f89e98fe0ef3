//! What the HTTP tests share: the app on a random port with a database of its own (`app`),
//! the two backends and the macro that runs a test on both (`backends`), one HTTP client
//! (`client`), one poller (`eventually`), fanqueue as processes (`process`) and the AWS
//! emulator and platform simulator (`aws`).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use fanqueue::{
    auth::JwtKeys,
    settings::Settings,
    startup::{self, Application, Services},
    supervisor::Supervisor,
};
use fanqueue_jobs::{domain::UserId, runtime::Kind};
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

mod app;
mod aws;
mod backends;
mod client;
mod eventually;
mod process;

pub use app::*;
pub use aws::*;
pub use backends::*;
pub use client::*;
pub use eventually::*;
pub use process::*;
