//! `compose.yaml` and the Dockerfile, held to the binary. There is no Docker engine on the
//! development machine, so neither is run here: these tests read them and check what a user
//! would find out at `docker compose up` — a command the binary does not have, a flag it does
//! not know, a variable it never reads, a queue nobody made, a health check that can never
//! pass — by running the real `fanqueue` binary. `healthcheck`, which the image's health
//! checks run, is driven against real servers.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use fanqueue::settings::ENV_VARS;
use serde_yaml_ng::Value;

use crate::helpers::{Sim, run_fanqueue};

/// Variables the AWS SDK reads (the emulator's credentials and region): not fanqueue settings,
/// but a fanqueue service may set them.
const AWS_SDK_VARS: &[&str] = &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"];

/// The images a service not built from this repository may run.
const OTHER_IMAGES: &[&str] = &["postgres:", "redis:", "motoserver/moto:", "amazon/aws-cli:"];

/// The subcommands that serve HTTP (and so can answer the image's health check).
const HTTP_SUBCOMMANDS: &[&str] = &["serve", "all", "platform-sim"];

/// moto's account id, in every queue URL it hands out.
const MOTO_ACCOUNT: &str = "123456789012";

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn fanqueue(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanqueue"))
        .args(args)
        .env_clear()
        .output()
        .expect("running the fanqueue binary")
}

/// `args` (a subcommand and its flags, as a container would pass them) is something the
/// binary accepts: the subcommand exists, every flag is in its help, and the whole line parses
/// (it is run with `--help` after it, so clap checks each value and stops before running).
fn assert_real_command(what: &str, args: &[String]) {
    let subcommand = args
        .first()
        .unwrap_or_else(|| panic!("{what}: an empty command"));
    let help = fanqueue(&[subcommand.clone(), "--help".into()]);
    assert!(
        help.status.success(),
        "{what}: `fanqueue {subcommand}` is not a subcommand: {}",
        String::from_utf8_lossy(&help.stderr)
    );
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            help.split(|c: char| c.is_whitespace() || c == ',')
                .any(|word| word == flag),
            "{what}: `fanqueue {subcommand}` has no flag {flag}; its help:\n{help}"
        );
    }
    let mut line = args.to_vec();
    line.push("--help".into());
    let parsed = fanqueue(&line);
    assert!(
        parsed.status.success(),
        "{what}: `fanqueue {}` does not parse: {}",
        args.join(" "),
        String::from_utf8_lossy(&parsed.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// compose.yaml, as compose reads it

/// Compose's own interpolation of a value: `$$` is a literal `$`, `${NAME:-default}` and
/// `${NAME-default}` are the default (the test stands for a user who set nothing). A variable
/// without a default would leave the value to whoever runs compose: refused.
fn interpolate(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').expect("an unclosed ${ in compose.yaml");
            let (_, default) = body[..end]
                .split_once(":-")
                .or_else(|| body[..end].split_once('-'))
                .unwrap_or_else(|| {
                    panic!("compose.yaml uses ${{{}}} without a default", &body[..end])
                });
            out.push_str(default);
            rest = &body[end + 1..];
        } else {
            let context: String = after.chars().take(40).collect();
            panic!("compose.yaml has a bare $ (write $$ for the shell) at ${context}");
        }
    }
    out.push_str(rest);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => interpolate(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        Value::String(s) => interpolate(s)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("expected a command, found {other:?}"),
    }
}

struct Service {
    name: String,
    def: Value,
}

impl Service {
    fn get(&self, key: &str) -> Option<&Value> {
        self.def.get(key)
    }

    fn image(&self) -> String {
        self.get("image").map(scalar).unwrap_or_default()
    }

    /// Built from this repository: a fanqueue role.
    fn is_fanqueue(&self) -> bool {
        match self.get("build") {
            Some(Value::String(context)) => context == ".",
            Some(build) => build.get("context").map(scalar).as_deref() == Some("."),
            None => false,
        }
    }

    fn command(&self) -> Vec<String> {
        self.get("command").map(words).unwrap_or_default()
    }

    fn subcommand(&self) -> String {
        self.command().first().cloned().unwrap_or_default()
    }

    fn environment(&self) -> BTreeMap<String, String> {
        match self.get("environment") {
            None => BTreeMap::new(),
            Some(Value::Mapping(map)) => map
                .iter()
                .map(|(k, v)| {
                    (
                        scalar(k),
                        if v.is_null() {
                            String::new()
                        } else {
                            scalar(v)
                        },
                    )
                })
                .collect(),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|item| {
                    let item = scalar(item);
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            Some(other) => panic!("{}: environment is {other:?}", self.name),
        }
    }

    fn replicas(&self) -> u64 {
        self.def
            .get("deploy")
            .and_then(|d| d.get("replicas"))
            .map_or(1, |r| r.as_u64().expect("replicas is a number"))
    }

    /// The services this one waits for, with the condition of each.
    fn depends_on(&self) -> BTreeMap<String, String> {
        match self.get("depends_on") {
            None => BTreeMap::new(),
            Some(Value::Sequence(names)) => names
                .iter()
                .map(|n| (scalar(n), "service_started".to_owned()))
                .collect(),
            Some(Value::Mapping(map)) => map
                .iter()
                .map(|(k, v)| {
                    let condition = v.get("condition").map_or("service_started".into(), scalar);
                    (scalar(k), condition)
                })
                .collect(),
            Some(other) => panic!("{}: depends_on is {other:?}", self.name),
        }
    }

    /// The health check's command, `None` when it is turned off (`disable: true` or
    /// `test: ["NONE"]`), `Some([])` when the service keeps its image's.
    fn healthcheck(&self) -> Option<Vec<String>> {
        let Some(check) = self.get("healthcheck") else {
            return Some(Vec::new());
        };
        if check.get("disable").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let test = check.get("test").map(words).unwrap_or_default();
        if test.first().map(String::as_str) == Some("NONE") {
            return None;
        }
        Some(test)
    }

    /// The container ports it publishes.
    fn published_ports(&self) -> Vec<u16> {
        let Some(Value::Sequence(ports)) = self.get("ports") else {
            return Vec::new();
        };
        ports
            .iter()
            .map(|p| match p {
                Value::Mapping(_) => p.get("target").and_then(Value::as_u64).unwrap() as u16,
                other => {
                    let s = scalar(other);
                    let target = s.rsplit(':').next().unwrap();
                    target.split('/').next().unwrap().parse().unwrap()
                }
            })
            .collect()
    }
}

struct Compose {
    services: Vec<Service>,
}

impl Compose {
    fn load() -> Compose {
        let mut doc: Value =
            serde_yaml_ng::from_str(&repo_file("compose.yaml")).expect("compose.yaml is YAML");
        // A merge may bring in a mapping that merges another: resolve until nothing changes.
        loop {
            let before = doc.clone();
            doc.apply_merge().expect("compose.yaml's << merges resolve");
            if doc == before {
                break;
            }
        }
        let services = doc
            .get("services")
            .and_then(Value::as_mapping)
            .expect("compose.yaml has services")
            .iter()
            .map(|(name, def)| Service {
                name: scalar(name),
                def: def.clone(),
            })
            .collect();
        Compose { services }
    }

    fn service(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
    }

    fn fanqueue(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().filter(|s| s.is_fanqueue())
    }

    /// The one service running `image` (by its name before the tag).
    fn running(&self, image: &str) -> &Service {
        let found: Vec<&Service> = self
            .services
            .iter()
            .filter(|s| s.image().starts_with(image))
            .collect();
        assert_eq!(found.len(), 1, "one service runs {image}");
        found[0]
    }

    /// The fanqueue containers running `subcommand`, counting replicas.
    fn instances_of(&self, subcommand: &str) -> u64 {
        self.fanqueue()
            .filter(|s| s.subcommand() == subcommand)
            .map(Service::replicas)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile, as docker reads it

/// Its instructions, continuation lines joined and comments dropped: (keyword, the rest).
fn dockerfile() -> Vec<(String, String)> {
    let text = repo_file("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push((keyword.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// The instructions of the last stage: the image that runs.
fn runtime_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let from = all
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .expect("the Dockerfile has a FROM");
    all[from..].to_vec()
}

/// An exec-form instruction's words (`["fanqueue", "all"]`).
fn exec_form(what: &str, rest: &str) -> Vec<String> {
    serde_json::from_str(rest)
        .unwrap_or_else(|e| panic!("{what} {rest} is not in exec form ([\"…\"]): {e}"))
}

/// The runtime image's ENV: what every container of it starts with.
fn image_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (_, rest) in runtime_stage().iter().filter(|(k, _)| k == "ENV") {
        let pairs: Vec<&str> = rest.split_whitespace().collect();
        if pairs.first().is_some_and(|p| !p.contains('=')) {
            env.insert(pairs[0].to_owned(), pairs[1..].join(" "));
            continue;
        }
        for pair in pairs {
            let (k, v) = pair.split_once('=').unwrap();
            env.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
    }
    env
}

fn port_of(listen: &str) -> u16 {
    listen
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{listen} is not an address: {e}"))
        .port()
}

fn url_port(url: &str) -> u16 {
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    authority.rsplit(':').next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn every_fanqueue_service_runs_a_real_subcommand_with_real_flags() {
    let compose = Compose::load();
    let roles: Vec<&Service> = compose.fanqueue().collect();
    assert!(roles.len() >= 6, "the fanqueue roles are in compose.yaml");
    let image = roles[0].image();
    for service in &roles {
        assert_eq!(
            service.image(),
            image,
            "{}: every role runs the one image",
            service.name
        );
        assert_real_command(&format!("service {}", service.name), &service.command());
        if let Some(test) = service.healthcheck()
            && let Some(args) = test.strip_prefix(&["CMD".to_owned(), "fanqueue".to_owned()])
        {
            assert_real_command(&format!("service {}'s health check", service.name), args);
        }
    }
    for service in compose.services.iter().filter(|s| !s.is_fanqueue()) {
        assert!(
            OTHER_IMAGES.iter().any(|i| service.image().starts_with(i)),
            "{}: neither built from this repository nor a known image ({})",
            service.name,
            service.image()
        );
    }
}

#[test]
fn every_variable_a_fanqueue_service_sets_is_a_setting_and_loads() {
    let settings: BTreeSet<&str> = ENV_VARS.iter().map(|(name, _)| *name).collect();
    let compose = Compose::load();
    let dir = tempfile::tempdir().unwrap();
    for service in compose.fanqueue() {
        let env = service.environment();
        for name in env.keys() {
            assert!(
                settings.contains(name.as_str()) || AWS_SDK_VARS.contains(&name.as_str()),
                "{}: {name} is neither a fanqueue setting (`fanqueue --help` lists them) nor an AWS SDK variable",
                service.name
            );
        }
        // The container's environment (the image's, then the service's) loads as settings:
        // `token` reads every setting and signs with JWT_SECRET (or a generated secret; the
        // image's data directory is replaced by one of the test's for that).
        let mut all = image_env();
        all.insert("DATA_DIR".into(), dir.path().display().to_string());
        all.extend(env);
        let vars: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = run_fanqueue(dir.path(), &["token", "--user-id", "1"], &vars);
        assert!(
            out.status.success(),
            "{}: its settings do not load: {}",
            service.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout);
        assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    }
}

#[test]
fn the_distributed_setup_is_all_there() {
    let compose = Compose::load();
    let postgres = compose.running("postgres");
    assert!(
        postgres
            .healthcheck()
            .unwrap()
            .contains(&"pg_isready".into()),
        "PostgreSQL's health check is pg_isready"
    );
    let redis = compose.running("redis");
    assert!(redis.healthcheck().is_some_and(|t| !t.is_empty()));
    let emulator = compose.running("motoserver/moto");
    assert!(emulator.healthcheck().is_some_and(|t| !t.is_empty()));
    let init = compose.running("amazon/aws-cli");
    assert_eq!(
        init.depends_on().get(&emulator.name).map(String::as_str),
        Some("service_healthy"),
        "the queues are made once the emulator answers"
    );

    for (subcommand, at_least) in [
        ("platform-sim", 1),
        ("serve", 1),
        ("worker", 2),
        ("dispatch", 2),
        ("sweep", 1),
    ] {
        let n = compose.instances_of(subcommand);
        assert!(
            n >= at_least,
            "{at_least} × `fanqueue {subcommand}` in compose.yaml, found {n}"
        );
    }
    let api = compose
        .fanqueue()
        .find(|s| s.subcommand() == "serve")
        .unwrap();
    let listen = api
        .environment()
        .get("LISTEN_ADDR")
        .cloned()
        .or_else(|| image_env().get("LISTEN_ADDR").cloned())
        .expect("the API's LISTEN_ADDR is set (the default listens on loopback only)");
    assert!(
        !listen.starts_with("127."),
        "the API listens beyond the container's loopback: {listen}"
    );
    assert!(
        api.published_ports().contains(&port_of(&listen)),
        "the API's port {listen} is published"
    );
}

#[test]
fn the_queues_and_bucket_the_roles_use_are_the_ones_the_init_service_makes() {
    let compose = Compose::load();
    let emulator = compose.running("motoserver/moto");
    let init = compose.running("amazon/aws-cli");
    let endpoint = init.environment()["AWS_ENDPOINT_URL"].clone();
    assert_eq!(
        endpoint,
        format!("http://{}:5000", emulator.name),
        "the init service talks to the emulator (moto listens on 5000)"
    );
    // The init script as its shell sees it: compose's $$ undone, continuation lines joined.
    let script = match init.get("command") {
        Some(Value::Sequence(items)) => items.iter().map(scalar).collect::<Vec<_>>().join("\n"),
        Some(other) => scalar(other),
        None => panic!("the init service runs a script"),
    }
    .replace("\\\n", " ");
    let lines: Vec<&str> = script.lines().map(str::trim).collect();
    let arg_after = |line: &str, flag: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == flag)?;
        words.next().map(|w| w.trim_matches('"').to_owned())
    };
    let bucket = lines
        .iter()
        .find(|l| l.contains("create-bucket"))
        .and_then(|l| arg_after(l, "--bucket"))
        .expect("the init service makes the bucket");
    let created: Vec<(String, &str)> = lines
        .iter()
        .filter(|l| l.contains("sqs create-queue"))
        .map(|l| (arg_after(l, "--queue-name").expect("a queue name"), *l))
        .collect();

    // The outbound queue: made with its attributes from a file the script writes, whose
    // redrive policy sends a message to the DLQ after 5 receives.
    let (_, outbound_line) = created
        .iter()
        .find(|(_, l)| l.contains("--attributes"))
        .expect("the outbound queue is made with attributes");
    let outbound = arg_after(outbound_line, "--queue-name").unwrap();
    let file = arg_after(outbound_line, "--attributes").unwrap();
    let path = file
        .strip_prefix("file://")
        .expect("attributes from a file");
    let heredoc_start = lines
        .iter()
        .position(|l| l.starts_with(&format!("cat > {path} <<")))
        .expect("the script writes the attributes file");
    let end_word = lines[heredoc_start].rsplit("<<").next().unwrap().trim();
    let body: Vec<&str> = lines[heredoc_start + 1..]
        .iter()
        .take_while(|l| **l != end_word)
        .copied()
        .collect();
    // The shell expands $variables in an unquoted heredoc; the ARN's variable is followed
    // back to the queue it was read from.
    let body = body.join("\n");
    let arn_var = body
        .split('$')
        .nth(1)
        .and_then(|s| s.split(|c: char| !(c.is_alphanumeric() || c == '_')).next())
        .expect("the DLQ's ARN comes from a shell variable")
        .to_owned();
    let attributes: serde_json::Value = serde_json::from_str(
        &body.replace(&format!("${arn_var}"), "arn:aws:sqs:us-east-1:1:the-dlq"),
    )
    .unwrap_or_else(|e| panic!("the queue attributes are JSON: {e}\n{body}"));
    let redrive: serde_json::Value = serde_json::from_str(
        attributes["RedrivePolicy"]
            .as_str()
            .expect("a RedrivePolicy (a JSON string)"),
    )
    .expect("the RedrivePolicy is JSON");
    assert_eq!(redrive["maxReceiveCount"].as_str(), Some("5"));
    assert_eq!(
        redrive["deadLetterTargetArn"].as_str(),
        Some("arn:aws:sqs:us-east-1:1:the-dlq")
    );
    let assigned = |var: &str| -> &str {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{var}=$(")))
            .unwrap_or_else(|| panic!("the script sets ${var}"))
    };
    let arn_line = assigned(&arn_var);
    assert!(arn_line.contains("get-queue-attributes") && arn_line.contains("QueueArn"));
    let url_var = arg_after(arn_line, "--queue-url")
        .unwrap()
        .trim_start_matches('$')
        .to_owned();
    let dlq = arg_after(assigned(&url_var), "--queue-name").expect("the DLQ is made");
    assert_ne!(dlq, outbound);
    assert!(
        created.iter().any(|(name, _)| *name == dlq),
        "the DLQ is made by create-queue"
    );

    let roles: Vec<&Service> = compose
        .fanqueue()
        .filter(|s| s.environment().contains_key("SQS_QUEUE_URL"))
        .collect();
    assert!(
        roles.iter().any(|s| s.subcommand() == "dispatch"),
        "the dispatchers use SQS"
    );
    for service in roles {
        let env = service.environment();
        let url = |name: &str| format!("{endpoint}/{MOTO_ACCOUNT}/{name}");
        assert_eq!(env["AWS_ENDPOINT_URL"], endpoint, "{}", service.name);
        assert_eq!(env["SQS_QUEUE_URL"], url(&outbound), "{}", service.name);
        assert_eq!(
            env.get("SQS_DLQ_URL"),
            Some(&url(&dlq)),
            "{}: the DLQ",
            service.name
        );
        assert_eq!(
            env.get("S3_BUCKET"),
            Some(&bucket),
            "{}: the bucket",
            service.name
        );
        for name in AWS_SDK_VARS {
            assert!(
                env.contains_key(*name),
                "{}: {name} for the emulator",
                service.name
            );
        }
    }
}

#[test]
fn every_service_waits_for_what_it_needs_and_its_health_check_can_pass() {
    let compose = Compose::load();
    for service in &compose.services {
        for (target, condition) in service.depends_on() {
            let other = compose.service(&target);
            match condition.as_str() {
                // A service without a health check never becomes healthy.
                "service_healthy" => assert!(
                    other.healthcheck().is_some_and(|t| !t.is_empty()),
                    "{} waits for {target} to be healthy, which has no health check",
                    service.name
                ),
                // A one-shot that restarts never completes.
                "service_completed_successfully" => assert!(
                    other
                        .get("restart")
                        .is_none_or(|r| scalar(r) == "no" || scalar(r) == "on-failure"),
                    "{} waits for {target} to complete, which restarts",
                    service.name
                ),
                "service_started" => {}
                other => panic!("{}: unknown condition {other}", service.name),
            }
        }
    }
    let migrate = compose
        .fanqueue()
        .find(|s| s.subcommand() == "migrate")
        .expect("a one-shot applies the migrations");
    let postgres = compose.running("postgres");
    assert_eq!(
        migrate.depends_on().get(&postgres.name).map(String::as_str),
        Some("service_healthy")
    );
    let init = compose.running("amazon/aws-cli");
    let redis = compose.running("redis");
    for service in compose
        .fanqueue()
        .filter(|s| ["serve", "worker", "dispatch", "sweep"].contains(&s.subcommand().as_str()))
    {
        let waits = service.depends_on();
        for (needed, condition) in [
            (&migrate.name, "service_completed_successfully"),
            (&init.name, "service_completed_successfully"),
            (&redis.name, "service_healthy"),
        ] {
            assert_eq!(
                waits.get(needed).map(String::as_str),
                Some(condition),
                "{} waits for {needed}",
                service.name
            );
        }
    }
    let sim = compose
        .fanqueue()
        .find(|s| s.subcommand() == "platform-sim")
        .unwrap();
    for dispatcher in compose.fanqueue().filter(|s| s.subcommand() == "dispatch") {
        assert_eq!(
            dispatcher.depends_on().get(&sim.name).map(String::as_str),
            Some("service_healthy"),
            "{} waits for the platform stand-in",
            dispatcher.name
        );
        let platform = &dispatcher.environment()["PLATFORM_API_URL"];
        assert!(
            platform.starts_with(&format!("http://{}:", sim.name)),
            "{}: PLATFORM_API_URL {platform} is the stand-in",
            dispatcher.name
        );
    }

    // The image's health check probes /healthz at LISTEN_ADDR: a role serving no HTTP turns
    // it off (or it would be marked unhealthy for ever); one that serves HTTP (its API, or
    // /metrics on METRICS_ADDR) probes the port it listens on.
    let image_listen = image_env()["LISTEN_ADDR"].clone();
    for service in compose.fanqueue() {
        let subcommand = service.subcommand();
        let check = service.healthcheck();
        let metrics_addr = service.environment().get("METRICS_ADDR").cloned();
        let serves_api = HTTP_SUBCOMMANDS.contains(&subcommand.as_str());
        if !serves_api && let Some(addr) = &metrics_addr {
            let check = check.unwrap_or_else(|| {
                panic!("{} serves /metrics but has no health check", service.name)
            });
            let url = &check[check.iter().position(|a| a == "--url").expect("a --url") + 1];
            assert_eq!(
                url_port(url),
                port_of(addr),
                "{}: the health check probes METRICS_ADDR",
                service.name
            );
            assert!(url.ends_with("/metrics"), "{}: {url}", service.name);
            continue;
        }
        if !serves_api {
            assert!(
                check.is_none(),
                "{} (`{subcommand}`) serves no HTTP: its health check must be disabled",
                service.name
            );
            continue;
        }
        let check = check.unwrap_or_else(|| panic!("{} has no health check", service.name));
        let command = service.command();
        let listen = match command.iter().position(|a| a == "--listen") {
            Some(i) => command[i + 1].clone(),
            None => service
                .environment()
                .get("LISTEN_ADDR")
                .cloned()
                .unwrap_or(image_listen.clone()),
        };
        let probed = match check.iter().position(|a| a == "--url") {
            Some(i) => url_port(&check[i + 1]),
            None => port_of(&image_listen),
        };
        assert_eq!(
            probed,
            port_of(&listen),
            "{}: the health check probes the port it listens on",
            service.name
        );
    }
}

#[test]
fn the_dockerfile_caches_dependencies_and_runs_unprivileged_with_a_health_check() {
    let all = dockerfile();
    let runs: Vec<&str> = all
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(
        runs.iter().any(|r| r.contains("cargo chef prepare")),
        "a planner stage makes the cargo-chef recipe"
    );
    assert!(
        runs.iter().any(|r| r.contains("cargo chef cook")
            && r.contains("--release")
            && r.contains("--locked")),
        "the dependencies are cooked in a layer of their own, release, locked"
    );
    assert!(
        runs.iter().any(|r| r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")),
        "the binary is built release, locked"
    );
    let stages = all.iter().filter(|(k, _)| k == "FROM").count();
    assert!(stages >= 3, "planner, build and runtime stages: {stages}");

    let runtime = runtime_stage();
    let base = &runtime[0].1;
    assert!(
        base.contains("slim") || base.contains("distroless"),
        "a slim runtime image: {base}"
    );
    let user = runtime
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, u)| u.clone())
        .expect("the runtime stage sets USER");
    assert!(
        !["root", "0", "0:0", "root:root"].contains(&user.as_str()),
        "the image runs as a non-root user, not {user}"
    );
    let entrypoint = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, r)| exec_form("ENTRYPOINT", r))
        .expect("an ENTRYPOINT");
    assert_eq!(
        entrypoint,
        ["fanqueue"],
        "compose's commands are subcommands"
    );
    let cmd = runtime
        .iter()
        .find(|(k, _)| k == "CMD")
        .map(|(_, r)| exec_form("CMD", r))
        .expect("a CMD");
    assert_real_command("the image's CMD", &cmd);
    let health = runtime
        .iter()
        .find(|(k, _)| k == "HEALTHCHECK")
        .map(|(_, r)| r.clone())
        .expect("the runtime stage has a HEALTHCHECK");
    let (_, probe) = health.split_once("CMD ").expect("HEALTHCHECK … CMD […]");
    let probe = exec_form("HEALTHCHECK CMD", probe);
    let args = probe
        .strip_prefix(&["fanqueue".to_owned()])
        .expect("the health check runs the binary itself (no curl in the image)");
    assert_real_command("the image's HEALTHCHECK", args);

    let settings: BTreeSet<&str> = ENV_VARS.iter().map(|(name, _)| *name).collect();
    let env = image_env();
    for name in env.keys() {
        assert!(
            settings.contains(name.as_str()),
            "the image sets {name}, not a setting"
        );
    }
    let exposed: Vec<u16> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, r)| r.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    assert!(exposed.contains(&port_of(&env["LISTEN_ADDR"])));

    let ignored = repo_file(".dockerignore");
    for path in ["target", ".git", "data"] {
        assert!(
            ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == path),
            ".dockerignore keeps {path} out of the build context"
        );
    }
}

/// Runs `fanqueue healthcheck args…` off the async runtime (the probed server is on it).
async fn healthcheck(args: &[String], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut line = vec!["healthcheck".to_owned()];
    line.extend_from_slice(args);
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<&str> = line.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let started = Instant::now();
        let out = run_fanqueue(dir.path(), &args, &env);
        (out, started.elapsed())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_0_on_a_200_and_1_otherwise() {
    let sim = Sim::start(10).await;
    let port = url_port(&sim.base);

    let (ok, _) = healthcheck(&["--url".into(), format!("{}/healthz", sim.base)], &[]).await;
    assert!(
        ok.status.success(),
        "a 200: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Without --url: /healthz at LISTEN_ADDR, the image's 0.0.0.0 probed on loopback.
    let listen = format!("0.0.0.0:{port}");
    let (ok, _) = healthcheck(&[], &[("LISTEN_ADDR", &listen)]).await;
    assert!(
        ok.status.success(),
        "LISTEN_ADDR's /healthz: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let (not_found, _) = healthcheck(
        &["--url".into(), format!("{}/no-such-route", sim.base)],
        &[],
    )
    .await;
    assert_eq!(not_found.status.code(), Some(1), "a 404 is unhealthy");
    assert!(String::from_utf8_lossy(&not_found.stderr).contains("404"));

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (refused, _) = healthcheck(
        &["--url".into(), format!("http://127.0.0.1:{closed}/healthz")],
        &[],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "nothing listening");

    // A server that accepts and never answers: unhealthy once the timeout is up.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let (hung, took) =
        healthcheck(&["--url".into(), url, "--timeout".into(), "1s".into()], &[]).await;
    assert_eq!(hung.status.code(), Some(1), "no answer in time");
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    drop(silent);
}
