//! The `pushgate` binary: load and check the config, bind, run, drain on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use pushgate::config::Overrides;
use pushgate::{Config, Listeners, Shutdown};

/// `--features mimalloc`: mimalloc instead of glibc's malloc (see Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A push gateway: streams a log (an embedded log, Kafka or Kinesis) to WebSocket, SSE and gRPC clients, with key and value filters and resume by cursor.
///
/// With no --config it runs the demo: loopback only, anonymous access, a
/// simulated stock ticker on topic `prices`, the dashboard at /.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML config file (every key is documented in config/pushgate.toml).
    #[arg(long, env = "PUSHGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.listen and PUSHGATE__SERVER__LISTEN).
    #[arg(long, env = "PUSHGATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Log lines as `text` (for people) or `json` (one object per line, with the
    /// event's spans: connection id, transport, peer, subject; for log shippers).
    #[arg(long, env = "PUSHGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Folder of the embedded log (overrides embedded.data_dir and PUSHGATE__EMBEDDED__DATA_DIR).
    #[arg(long, env = "PUSHGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        // Colour only on a terminal: a file or a log shipper's pipe gets plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
    // Validated once, after the flags are applied.
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
    };
    let config = Config::load(args.config.as_deref(), std::env::vars(), &overrides)?;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let listener = pushgate::bind_listener(config.server.listen, config.server.listen_backlog)
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!("listening on {scheme}://{}", listener.local_addr()?);
        let shutdown = Shutdown::new();
        tokio::spawn(trigger_on_signal(shutdown.clone()));
        // One line: RunError's message already carries its cause.
        pushgate::run(config, Listeners { http: listener }, shutdown)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    })
}

async fn trigger_on_signal(shutdown: Shutdown) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
    shutdown.trigger();
}
