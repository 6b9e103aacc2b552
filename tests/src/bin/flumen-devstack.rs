//! `flumen-devstack`: install the pinned dev broker, or run a dev stack until Ctrl-C.
//!
//! - `flumen-devstack install`: installs Tansu when missing and prints its path.
//! - `flumen-devstack run`: starts the broker on a free port, prints its address, waits for Ctrl-C.

use std::io::BufRead;

use clap::{Parser, Subcommand};
use flumen_testkit::{ensure_tansu, DevStack};

#[derive(Parser)]
#[command(about = "The flumen local dev stack")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the pinned Tansu broker when it is missing.
    Install,
    /// Start a broker and keep it running until stdin closes or Ctrl-C.
    Run,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::Install => {
            let bin = ensure_tansu()?;
            println!("tansu: {}", bin.display());
        }
        Command::Run => {
            let stack = DevStack::start()?;
            println!("brokers: {}", stack.brokers());
            println!("(press Ctrl-C or close stdin to stop)");
            for line in std::io::stdin().lock().lines() {
                if line.is_err() {
                    break;
                }
            }
            drop(stack);
        }
    }
    Ok(())
}
