//! (q): the pipeline of (c) in Quix Streams 3.28 (`quix/tumbling.py`), on the
//! same broker and input in the same run. Its Python environment is made once
//! in `~/.cache/flumen/quix-venv` from `quix/requirements.txt` (PyPI).

use std::path::PathBuf;
use std::process::Command;

use crate::{BoxError, Measured};
use flumen_testkit::{stack, unique_name, DevStack};

const REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/quix/requirements.txt");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/quix/tumbling.py");

/// The venv's python, creating the venv and installing the pinned
/// requirements when it is missing.
fn python() -> Result<PathBuf, BoxError> {
    let venv = stack::install::stack_dir()
        .parent()
        .map_or_else(|| PathBuf::from("quix-venv"), |d| d.join("quix-venv"));
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if ready.is_file() {
        return Ok(python);
    }
    eprintln!(
        "(q): installing Quix Streams into {} (once)...",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", "-r", REQUIREMENTS]))?;
    std::fs::write(&ready, "")?;
    Ok(python)
}

fn run(command: &mut Command) -> Result<(), BoxError> {
    let status = command.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}").into())
    }
}

/// Runs the Quix Streams pipeline over `topic` until it has read `events` records.
pub async fn quix_tumbling(
    stack: &DevStack,
    topic: &str,
    events: u64,
    partitions: i32,
) -> Result<Measured, BoxError> {
    let python = python()?;
    let output = unique_name("bench-quix-out");
    stack.create_topic(&output, partitions).await?;
    let state = tempfile::tempdir()?;
    let mut command = Command::new(python);
    command
        .arg(SCRIPT)
        .args([
            "--brokers",
            stack.brokers(),
            "--input",
            topic,
            "--output",
            &output,
        ])
        .args(["--events", &events.to_string()])
        .arg("--state-dir")
        .arg(state.path())
        .stderr(std::process::Stdio::null());
    let out = tokio::task::spawn_blocking(move || command.output()).await??;
    if !out.status.success() {
        return Err(format!("the Quix Streams pipeline exited with {}", out.status).into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(last)
        .map_err(|e| format!("the Quix Streams summary '{last}': {e}"))?;
    let number = |name: &str| summary[name].as_f64().unwrap_or(0.0);
    Ok(Measured {
        name: "q quix streams (c)",
        records: number("records") as u64,
        seconds: number("seconds"),
        cpu_seconds: number("cpu_seconds"),
        peak_rss_bytes: number("peak_rss_bytes") as u64,
        ..Measured::default()
    })
}
