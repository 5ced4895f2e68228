//! The `palisade` binary: parse flags, load the config, build the node, run until SIGTERM,
//! drain, exit.

mod admin_client;
mod allocator;
mod config;
mod control;
mod file_watch;
mod node;
mod policy_install;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// palisade: a high-availability forward proxy (secure web gateway) in one binary.
#[derive(Parser)]
#[command(name = "palisade", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. Without --config: proxy on 127.0.0.1:9090, test port 127.0.0.1:9091,
    /// admin and metrics on 127.0.0.1:4711, state in ./palisade-data.
    Run {
        /// Node config file (TOML); see examples/palisade.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a node config file and the policy it names; print every problem.
    CheckConfig {
        /// Node config file (TOML).
        file: PathBuf,
        /// Also validate this policy document (default: the one the config names, if any).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Show this node's HA groups: state, current master, priorities, advert interval.
    Status {
        /// Admin address of the node to ask.
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take this node out of service: hand every VIP it holds to the next node in line (at
    /// once over the heartbeat), leave the elections, answer 503 on /healthz. In-flight and
    /// new connections to the node's own addresses are still served. Survives restarts until
    /// `palisade resume`.
    Drain {
        /// Admin address of the node to drain.
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
        /// Drain even if no other healthy node is known to take over a VIP this node holds.
        #[arg(long)]
        force: bool,
    },
    /// Put a drained node back in service.
    Resume {
        /// Admin address of the node to resume.
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Back up or restore the node's store (identity, drain marker) as versioned JSON, to
    /// move it to another release or machine. The node must be stopped: a running node
    /// holds its store's lock.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum StoreAction {
    /// Print the store as JSON.
    Export {
        /// Node config file (for data_dir; default: ./palisade-data).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replace the store's contents with an export (the node then has the exported identity).
    Import {
        /// The export (JSON).
        file: PathBuf,
        /// Node config file (for data_dir; default: ./palisade-data).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => node::run(config),
        Command::CheckConfig { file, policy } => node::check_config(&file, policy.as_deref()),
        Command::Status { admin, json } => admin_client::status(admin, json),
        Command::Drain { admin, force } => admin_client::drain(admin, force),
        Command::Resume { admin } => admin_client::resume(admin),
        Command::Store {
            action: StoreAction::Export { config },
        } => node::store_export(config),
        Command::Store {
            action: StoreAction::Import { file, config },
        } => node::store_import(config, &file),
        Command::Version => {
            println!("palisade {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("palisade: {error:#}");
            ExitCode::from(2)
        }
    }
}
