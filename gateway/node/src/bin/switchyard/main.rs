//! The `switchyard` binary: `serve` runs a gateway node, `demo` runs one with two sample
//! instances, `check-config` validates a configuration and prints it in full, and
//! `graphql-schema` prints the GraphQL schema (`docs/schema.graphql`), `token` makes
//! signing keys and control credentials, and `audit tail` reads the audit topics.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use switchyard::auth::Authenticator;
use switchyard::bus::{Bus, MemoryBus};
use switchyard::config::{self, BusKind, Config, LogFormat, Override, RuntimeLayout};
use switchyard::seams::{Seams, SystemClock, TokioConnector, os_seed};
use switchyard::serve::with_nodelay;
use switchyard::{Node, PublicListeners};
use tokio_util::sync::CancellationToken;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

mod audit;
#[cfg(feature = "demo")]
mod demo;
mod token;

/// mimalloc instead of the system allocator: a request allocates about a hundred small blocks
/// (hyper, h2, tonic, the translation), and glibc's malloc and free took more than a quarter
/// of the instructions per request (docs/benchmarks.md). Built without the `mimalloc` feature,
/// the binary uses the system allocator; issue 18's section of docs/benchmarks.md measures both.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An API gateway cluster for gRPC microservices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway node.
    Serve(ConfigArgs),
    /// Run a gateway with the in-memory bus and sample service instances, and print what to try.
    #[cfg(feature = "demo")]
    Demo {
        #[command(flatten)]
        config: ConfigArgs,
        /// How many sample instances to start.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
        instances: u16,
    },
    /// Validate the configuration and print it with every default filled in.
    CheckConfig(ConfigArgs),
    /// Print the GraphQL schema in SDL (docs/schema.graphql is this output).
    GraphqlSchema,
    /// Control credentials: make a signing key, issue a token.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Audit records: read the audit topics.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Public listener address (REST forwarding, /healthz, /readyz).
    #[arg(long)]
    public_listen: Option<String>,
    /// Control listener address (registration, registry views).
    #[arg(long)]
    control_listen: Option<String>,
    /// This node's id.
    #[arg(long)]
    node_id: Option<String>,
    /// Any config key, e.g. --set upstream.timeout_ms=500 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = config::parse_set_flag)]
    set: Vec<Override>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let mut overrides = config::env_overrides(std::env::vars());
        let flags = [
            ("public.listen", &self.public_listen, "flag --public-listen"),
            (
                "control.listen",
                &self.control_listen,
                "flag --control-listen",
            ),
            ("node_id", &self.node_id, "flag --node-id"),
        ];
        for (key, value, origin) in flags {
            if let Some(value) = value {
                overrides.push(Override {
                    key: key.to_owned(),
                    value: format!("{value:?}"),
                    origin: origin.to_owned(),
                });
            }
        }
        overrides.extend(self.set.iter().cloned());
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

/// Installs the log. Lines go to stderr (stdout carries only the one line that reports the
/// bound addresses) through a writer thread and a queue of `log.buffered_lines_max` lines:
/// a reader of stderr that falls behind (a full pipe, a slow collector) costs dropped lines,
/// counted in `switchyard_log_lines_dropped_total`, never a worker blocked on a write. Keep
/// the guard until exit: dropping it flushes what is queued.
fn init_logging(config: &Config) -> WorkerGuard {
    let filter = std::env::var("SWITCHYARD_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(&config.log.level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(config.log.buffered_lines_max)
        .thread_name("switchyard-log")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    switchyard::telemetry::metrics::set_log_lines_dropped(move || dropped.dropped_lines() as u64);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::GraphqlSchema => {
            print!("{}", switchyard::graphql::sdl());
            Ok(())
        }
        Command::Token(command) => token::run(command),
        Command::Audit(command) => audit::run(command),
        Command::CheckConfig(args) => {
            let config = args.load()?;
            let auth = Authenticator::load(&config.control)?;
            check_tls(&config)?;
            println!("{config:#?}");
            println!("control keys in force: {:?}", auth.keys());
            Ok(())
        }
        Command::Serve(args) => {
            let config = args.load()?;
            let auth = Arc::new(Authenticator::load(&config.control)?);
            check_tls(&config)?;
            let _log = init_logging(&config);
            runtime(&config)?.block_on(serve(config, auth))
        }
        #[cfg(feature = "demo")]
        Command::Demo { config, instances } => {
            let config = config.load()?;
            let _log = init_logging(&config);
            runtime(&config)?.block_on(async {
                let shutdown = on_signal();
                demo::run(config, usize::from(instances), shutdown)
                    .await
                    .context("demo failed")
            })
        }
    }
}

/// Loads both listeners' TLS files once, so a bad certificate stops the start with its key
/// named (the node loads them again when it builds).
fn check_tls(config: &Config) -> anyhow::Result<()> {
    switchyard::tls::ServerTls::load(&config.public.tls).context("public.tls")?;
    switchyard::tls::ServerTls::load(&config.control.tls).context("control.tls")?;
    switchyard::tls::upstream_client(&config.upstream.tls).context("upstream.tls")?;
    Ok(())
}

/// The multi-threaded runtime, with `runtime.worker_threads` workers (0: tokio's default, one
/// per core the process may run on).
/// In the per-core layout the public front has threads of its own, and the runtime two workers
/// for the control listener and the background tasks: replication applying a catch-up batch
/// holds one for as long as the batch takes (about a second for a million records).
fn runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match config.runtime.layout {
        RuntimeLayout::Shared if config.runtime.worker_threads > 0 => {
            builder.worker_threads(config.runtime.worker_threads);
        }
        RuntimeLayout::Shared => {}
        RuntimeLayout::PerCore => {
            builder.worker_threads(2);
        }
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn serve(config: Config, auth: Arc<Authenticator>) -> anyhow::Result<()> {
    let bus: Arc<dyn Bus> = match config.bus.kind {
        BusKind::Memory => Arc::new(MemoryBus::new()),
        #[cfg(not(feature = "kafka"))]
        BusKind::Kafka => anyhow::bail!(
            "bus.kind is \"kafka\" but this binary was built without the kafka feature"
        ),
        #[cfg(feature = "kafka")]
        BusKind::Kafka => {
            use switchyard::bus::kafka::KafkaBus;
            let client_id = match config.node_id.as_str() {
                "" => "switchyard".to_owned(),
                id => format!("switchyard-{id}"),
            };
            let kafka = KafkaBus::new(&config.bus.kafka, &client_id)
                .context("cannot set up the Kafka clients (bus.kafka)")?;
            tracing::info!(brokers = %config.bus.kafka.brokers, topic = %config.bus.kafka.topic, "registry bus: Kafka");
            Arc::new(kafka)
        }
    };
    if let Some(seed) = config.seed {
        tracing::warn!(
            seed,
            "a fixed seed (seed): request ids and balancing choices repeat at every start, so ids of requests before and after a restart collide in logs and audit records; leave it unset outside tests"
        );
    }
    let seams = Seams {
        connector: Arc::new(TokioConnector),
        clock: Arc::new(SystemClock),
        bus,
        seed: config.seed.unwrap_or_else(os_seed),
    };
    let public = PublicListeners::bind(&config)
        .await
        .with_context(|| format!("cannot listen on {} (public.listen)", config.public.listen))?;
    if let PublicListeners::PerCore(sockets) = &public {
        tracing::info!(
            threads = sockets.len(),
            "runtime.layout = \"per_core\": each thread serves the public front on its own socket"
        );
    }
    let control = tokio::net::TcpListener::bind(config.control.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (control.listen)",
                config.control.listen
            )
        })?;
    // One line on stdout with the bound addresses, for scripts that start on port 0.
    println!(
        "switchyard listening: public={} control={}",
        public.local_addr()?,
        control.local_addr()?
    );
    let shutdown = on_signal();
    Node::builder(config, seams)
        .authenticator(auth)
        .build()
        .serve_public(public.map(with_nodelay), with_nodelay(control), shutdown)
        .await
        .context("gateway failed")
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        cancel.cancel();
    });
    token
}
