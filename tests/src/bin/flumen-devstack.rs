//! `flumen-devstack`: a local Kafka broker and Cassandra node that stay up
//! between runs, so iterating on a pipeline does not wait for Cassandra each
//! time.
//!
//! - `flumen-devstack up`: starts both servers in the background (once) and
//!   prints `export FLUMEN_KAFKA_BROKERS=...` / `export FLUMEN_CASSANDRA_NODES=...`
//!   for `eval "$(flumen-devstack up)"`; examples and tests then use them.
//! - `flumen-devstack status`: whether they run and answer.
//! - `flumen-devstack down`: stops them and removes their data.
//! - `flumen-devstack fetch`: fetches the server jars (what `tests/bootstrap.sh` calls).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use flumen_testkit::stack::{
    install, CassandraOptions, CassandraServer, KafkaOptions, KafkaServer,
};
use serde_json::json;

type BoxError = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(about = "The flumen local dev stack: real Kafka and Cassandra")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Kafka and Cassandra in the background (if not running) and print their addresses.
    Up,
    /// Stop the background servers and remove their data.
    Down,
    /// Show whether the background servers run and answer.
    Status,
    /// Fetch the server jars from Maven Central (skipped when present) and check for Java 17.
    Fetch,
    /// (internal) Run both servers in the foreground until SIGTERM.
    #[command(hide = true)]
    Serve,
}

fn main() -> Result<(), BoxError> {
    match Cli::parse().command {
        Command::Up => up(),
        Command::Down => down(),
        Command::Status => status(),
        Command::Fetch => {
            let jars = install::ensure_jars()?;
            let java = install::java17()?;
            eprintln!(
                "kafka jars: {}\ncassandra jars: {}\njava: {}",
                jars.kafka.display(),
                jars.cassandra.display(),
                java.display()
            );
            Ok(())
        }
        Command::Serve => serve(),
    }
}

/// Where the background stack records itself.
fn state_file() -> PathBuf {
    install::stack_dir().join("devstack.json")
}

fn log_file() -> PathBuf {
    install::stack_dir().join("devstack.log")
}

/// The recorded state, when the recorded process still runs.
fn running() -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(state_file()).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = state["pid"].as_u64()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(state)
}

fn print_exports(state: &serde_json::Value) {
    println!(
        "export FLUMEN_KAFKA_BROKERS={}",
        state["brokers"].as_str().unwrap_or_default()
    );
    println!(
        "export FLUMEN_CASSANDRA_NODES={}",
        state["nodes"].as_str().unwrap_or_default()
    );
}

fn up() -> Result<(), BoxError> {
    if let Some(state) = running().filter(|s| s["ready"] == true) {
        eprintln!("flumen-devstack: already running (pid {})", state["pid"]);
        print_exports(&state);
        return Ok(());
    }
    std::fs::create_dir_all(install::stack_dir())?;
    let _ = std::fs::remove_file(state_file());
    let log = std::fs::File::create(log_file())?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    eprintln!(
        "flumen-devstack: starting Kafka and Cassandra (about 30 s; log: {})",
        log_file().display()
    );
    let start = Instant::now();
    loop {
        if let Some(state) = running().filter(|s| s["ready"] == true) {
            eprintln!("flumen-devstack: up in {:.0?}", start.elapsed());
            print_exports(&state);
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!(
                "the stack exited with {status} while starting; see {}",
                log_file().display()
            )
            .into());
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(format!("not up after 5 minutes; see {}", log_file().display()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn down() -> Result<(), BoxError> {
    let Some(state) = running() else {
        eprintln!("flumen-devstack: not running");
        let _ = std::fs::remove_file(state_file());
        return Ok(());
    };
    let pid = state["pid"].as_u64().unwrap_or_default();
    let status = std::process::Command::new("kill")
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("kill {pid} failed").into());
    }
    let start = Instant::now();
    while running().is_some() {
        if start.elapsed() > Duration::from_secs(90) {
            return Err(format!("pid {pid} still runs after 90 s").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(state_file());
    eprintln!("flumen-devstack: stopped");
    Ok(())
}

fn status() -> Result<(), BoxError> {
    let Some(state) = running() else {
        println!("not running");
        return Ok(());
    };
    let brokers = state["brokers"].as_str().unwrap_or_default();
    let kafka = flumen_kafka::Admin::new(&flumen_kafka::KafkaConfig::new(brokers))?
        .ping(Duration::from_secs(5))
        .is_ok();
    let answer = |ok: bool| if ok { "answers" } else { "DOES NOT ANSWER" };
    println!("pid {}", state["pid"]);
    println!("kafka {brokers}: {}", answer(kafka));
    println!(
        "cassandra {}: {}",
        state["nodes"].as_str().unwrap_or_default(),
        if state["ready"] == true {
            "started"
        } else {
            "starting"
        }
    );
    println!("logs: {} {}", state["kafka_log"], state["cassandra_log"]);
    Ok(())
}

/// Starts both servers (in parallel), records them, and waits for SIGTERM
/// or SIGINT; then stops them.
fn serve() -> Result<(), BoxError> {
    let cassandra = std::thread::spawn(|| CassandraServer::start(&CassandraOptions::default()));
    let kafka = KafkaServer::start(&KafkaOptions::default())?;
    let cassandra = cassandra
        .join()
        .map_err(|_| "the Cassandra start panicked")??;
    let state = json!({
        "pid": std::process::id(),
        "ready": true,
        "brokers": kafka.brokers(),
        "nodes": cassandra.node(),
        "kafka_log": kafka.log_path(),
        "cassandra_log": cassandra.log_path(),
    });
    std::fs::write(state_file(), serde_json::to_string_pretty(&state)?)?;
    eprintln!("flumen-devstack: serving {state}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), std::io::Error>(())
    })?;
    eprintln!("flumen-devstack: stopping");
    kafka.stop();
    cassandra.stop();
    let _ = std::fs::remove_file(state_file());
    Ok(())
}
