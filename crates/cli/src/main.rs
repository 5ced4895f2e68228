//! The `palisade` binary: parse flags, load the config, build the node, run until SIGTERM,
//! drain, exit.

mod admin_client;
mod allocator;
mod cluster_cli;
mod cluster_plane;
mod config;
mod control;
mod director_plane;
mod drill;
mod fault;
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
    /// Show this node's HA groups (state, current master, priorities, advert interval) and
    /// their director: every member's state and load (the seeds' `mfend-lb -s`).
    Status {
        /// Admin address of the node to ask.
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        /// Which node serves this client address, and why (ask the director).
        #[arg(long)]
        client: Option<std::net::IpAddr>,
    },
    /// The deep health check (seed 004): whether a request through this node's own proxy
    /// succeeds end to end, as a load balancer in front of the node would ask it (exits
    /// non-zero when it does not).
    Healthcheck {
        /// The deep health check's address.
        #[arg(long, default_value = "127.0.0.1:9099")]
        addr: std::net::SocketAddr,
    },
    /// The port monitor (the seeds' swg-mon): whether every redirect port and the scan port
    /// accept connections; `-v` lists each port (the test port is reported, never a failure).
    Monitor {
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
        #[arg(short, long)]
        verbose: bool,
        #[arg(long)]
        json: bool,
    },
    /// Take this node out of service without failing a request: leave the director's choice
    /// and the elections, answer 503 on /healthz, close each connection after its current
    /// response (reset what is still open at proxy.drain_timeout). A director hands its VIPs
    /// to the next node in line at once and keeps serving the connections it has (the next
    /// director sends their packets back) until they end. Survives restarts until `palisade
    /// resume`.
    Drain {
        /// Admin address of the node to drain.
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
        /// Drain even if no other healthy node is known to take over a VIP this node holds.
        #[arg(long)]
        force: bool,
        /// Hand the VIPs over at once and close nothing in order: the connections through
        /// this director fail, and clients retry.
        #[arg(long)]
        now: bool,
    },
    /// Put a drained node back in service.
    Resume {
        /// Admin address of the node to resume.
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Inject a fault into this node for a drill (on a test cluster): `crash` kills the
    /// process, `cut-link` drops all traffic on its VRRP interfaces for `--for` seconds,
    /// `stop` stops it in order (as SIGTERM).
    Fault {
        /// crash, cut-link or stop.
        kind: String,
        /// How long a cut lasts, in seconds (at most 600).
        #[arg(long = "for", default_value = "10")]
        seconds: u64,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// A failover drill against a test cluster: inject a fault while steady traffic goes
    /// through the VIP, and report the times to detection, VIP takeover and the first
    /// success, the requests and connections lost, and the requests left hanging (exits
    /// non-zero if any).
    Drill(drill::DrillArgs),
    /// Back up or restore the node's store (identity, drain marker) as versioned JSON, to
    /// move it to another release or machine. The node must be stopped: a running node
    /// holds its store's lock.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Central management: make a cluster, add nodes, see its state.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// The cluster's policy: save a new revision, see the history.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// The cluster's admin accounts (argon2id hashes, replicated with the policy). With an
    /// account, state-changing admin requests are accepted from other hosts too (HTTP Basic;
    /// the CLI sends PALISADE_ADMIN_USER / PALISADE_ADMIN_PASSWORD when set).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Write the whole cluster's configuration, from this node: the policy (head and
    /// history), every member's node-local settings (no secrets), the shared trust (CA
    /// certificates, removed nodes; no keys).
    Backup {
        /// Write here (default: standard output).
        #[arg(long)]
        to: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Restore a backup's policy as the cluster's new revision, after checking it compiles.
    Restore {
        file: PathBuf,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Make a cluster of this node: a cluster CA (its key stays on this node) and this
    /// node's certificate.
    Init {
        /// Node config file (for data_dir and the cluster port; default: ./palisade-data).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a one-time join token for a new node (on the node that holds the CA key).
    Token {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How long the token stays valid (e.g. 30m, 1h).
        #[arg(long, default_value = "1h", value_parser = parse_duration_arg)]
        valid: std::time::Duration,
    },
    /// Join a cluster: MEMBER is HOST:PORT of the node that holds the CA key, TOKEN from
    /// `palisade cluster token` there. This node's key never leaves it.
    Join {
        member: String,
        token: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Link to a node that already holds a certificate of this cluster's CA (the seeds'
    /// "add node"): HOST:PORT of its cluster port; a name resolves on this node.
    Add {
        address: String,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Remove a node from the cluster for good: its id goes on the trust bundle (signed by the
    /// CA, passed to every member) and every member closes its links and refuses it. Run on
    /// the node that holds the CA key.
    Remove {
        node_id: String,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Rotate the cluster CA (on the node that holds its key): a new CA trusted beside the old
    /// one on every member (a trust bundle the old CA signs); renew every member's certificate
    /// (`cluster renew`), then `--finish` drops the old CA.
    RotateCa {
        #[arg(long)]
        finish: bool,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// For a CA kept off the nodes: make this node's key (kept here) and print a signing
    /// request for the cluster of CA (the CA certificate, PEM).
    Request {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Sign a node's request with a CA kept off the nodes (run where the CA key is); prints
    /// the certificate.
    Sign {
        request: PathBuf,
        #[arg(long)]
        ca_cert: PathBuf,
        #[arg(long)]
        ca_key: PathBuf,
    },
    /// Take the certificate signed for this node's request: this node is then a member.
    Install {
        certificate: PathBuf,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Renew this node's certificate: a new key made here, signed by the node that holds
    /// the CA key over the authenticated cluster link (or here, if it is this node). New links
    /// use it at once.
    Renew {
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// The cluster as this node sees it: head revision, peers, certificate expiry.
    Status {
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminAction {
    /// Add an account; its password is read from standard input (no echo at a terminal).
    Add {
        name: String,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Set an account's password (read from standard input).
    Passwd {
        name: String,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Remove an account.
    Remove {
        name: String,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// The accounts and when each was last changed.
    List {
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Save FILE (and the lists it names) as the cluster's new policy revision, live on every
    /// node moments later. Refused if the policy changed since the revision FILE was written
    /// from (its header), unless --force.
    Apply {
        file: PathBuf,
        /// The revision your copy is based on (default: the one in FILE's header).
        #[arg(long)]
        base: Option<String>,
        /// Save over whatever the cluster's policy is now.
        #[arg(long)]
        force: bool,
        /// Why: kept in the history with who saved it.
        #[arg(long, short)]
        message: Option<String>,
        /// Return once this many peers run the new revision (at most 30 s); fail if fewer
        /// do, or if one cannot install it.
        #[arg(long, default_value_t = 0)]
        wait: u32,
        /// Roll back to the previous revision automatically unless `palisade policy confirm`
        /// comes within this long (e.g. 5m), as Junos' `commit confirmed`: a change that
        /// cuts the operator off undoes itself.
        #[arg(long, value_parser = parse_duration_arg)]
        confirm: Option<std::time::Duration>,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Keep the save made with `--confirm` (cancels its automatic rollback).
    Confirm {
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Print a revision's policy (default: the head), or write it with its lists to a file
    /// to edit and apply.
    Get {
        /// A revision id, a unique prefix of one (6 hex digits at least), or `head`.
        #[arg(default_value = "head")]
        revision: String,
        /// Write the document here (its first line naming the revision) and the lists beside it.
        #[arg(long)]
        to: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// What changed from revision A to revision B (ids, prefixes or `head`): the documents as
    /// a unified diff, each list's added and removed entries.
    Diff {
        a: String,
        b: String,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Make an earlier revision's policy the cluster's policy again (saved as a new revision:
    /// history only grows).
    Rollback {
        revision: String,
        #[arg(long, short)]
        message: Option<String>,
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
    },
    /// Every revision, newest first: who saved it, where, when and why.
    History {
        #[arg(long, default_value = "127.0.0.1:4711")]
        admin: std::net::SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(text).ok_or_else(|| format!("{text:?} is not a duration like 30m or 1h"))
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
        Command::Status {
            admin,
            json,
            client: None,
        } => admin_client::status(admin, json),
        Command::Status {
            admin,
            json,
            client: Some(client),
        } => admin_client::status_for_client(admin, client, json),
        Command::Healthcheck { addr } => admin_client::healthcheck(addr),
        Command::Monitor {
            admin,
            verbose,
            json,
        } => admin_client::monitor(admin, verbose, json),
        Command::Drain { admin, force, now } => admin_client::drain(admin, force, now),
        Command::Resume { admin } => admin_client::resume(admin),
        Command::Fault {
            kind,
            seconds,
            admin,
        } => admin_client::fault(admin, &kind, seconds),
        Command::Drill(args) => drill::drill(args),
        Command::Store {
            action: StoreAction::Export { config },
        } => node::store_export(config),
        Command::Store {
            action: StoreAction::Import { file, config },
        } => node::store_import(config, &file),
        Command::Cluster { action } => match action {
            ClusterAction::Init { config } => cluster_cli::init(config),
            ClusterAction::Token { config, valid } => cluster_cli::token(config, valid),
            ClusterAction::Join {
                member,
                token,
                config,
            } => cluster_cli::join(config, &member, &token),
            ClusterAction::Status { admin, json } => cluster_cli::status(admin, json),
            ClusterAction::Remove { node_id, admin } => cluster_cli::remove(admin, &node_id),
            ClusterAction::Add { address, admin } => cluster_cli::add(admin, &address),
            ClusterAction::Renew { admin } => cluster_cli::renew(admin),
            ClusterAction::RotateCa { finish, admin } => cluster_cli::rotate_ca(admin, finish),
            ClusterAction::Request { ca, config } => cluster_cli::request_certificate(config, &ca),
            ClusterAction::Sign {
                request,
                ca_cert,
                ca_key,
            } => cluster_cli::sign(&request, &ca_cert, &ca_key),
            ClusterAction::Install {
                certificate,
                config,
            } => cluster_cli::install(config, &certificate),
        },
        Command::Policy { action } => match action {
            PolicyAction::Apply {
                file,
                base,
                force,
                message,
                wait,
                confirm,
                admin,
            } => cluster_cli::apply(admin, &file, base, force, message, wait, confirm),
            PolicyAction::Confirm { admin } => cluster_cli::confirm(admin),
            PolicyAction::History { admin, json } => cluster_cli::history(admin, json),
            PolicyAction::Get {
                revision,
                to,
                admin,
            } => cluster_cli::get(admin, &revision, to.as_deref()),
            PolicyAction::Diff { a, b, admin } => cluster_cli::diff(admin, &a, &b),
            PolicyAction::Rollback {
                revision,
                message,
                admin,
            } => cluster_cli::rollback(admin, &revision, message),
        },
        Command::Admin { action } => match action {
            AdminAction::Add { name, admin } => cluster_cli::admin_change(admin, "add", &name),
            AdminAction::Passwd { name, admin } => {
                cluster_cli::admin_change(admin, "passwd", &name)
            }
            AdminAction::Remove { name, admin } => {
                cluster_cli::admin_change(admin, "remove", &name)
            }
            AdminAction::List { admin } => cluster_cli::admin_list(admin),
        },
        Command::Backup { to, admin } => cluster_cli::backup(admin, to.as_deref()),
        Command::Restore { file, admin } => cluster_cli::restore(admin, &file),
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
