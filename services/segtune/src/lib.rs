//! The `segtune` command line: synthetic data, preprocessing, and (as they land) studies.

pub mod data;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "segtune",
    version,
    about = "Search the training strategy of a 3D segmentation network with RL",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Datasets: synthesize MSD-layout phantoms, preprocess a task folder.
    #[command(subcommand)]
    Data(data::DataCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd).await,
    }
}
