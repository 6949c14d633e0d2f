//! The `segtune` command line: synthetic data, preprocessing, and (as they land) studies.

pub mod data;
pub mod demo;
pub mod gpu_check;
pub mod job;
pub mod predict;
pub mod study;
pub mod up;

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
    /// Train one model with a strategy, without the bus; prints the checkpoint path.
    Train(job::TrainArgs),
    /// Validation Dice of a checkpoint; prints the mean Dice as its last line.
    Eval(job::EvalArgs),
    /// Segment new scans with a model bundle: masks on each scan's own grid, as .nii.gz.
    Predict(predict::PredictArgs),
    /// Studies: submit a study file to the controller and follow it.
    #[command(subcommand)]
    Study(study::StudyCommand),
    /// Run the local stack (nats-server, preprocessor, controller, trainers, evaluator) until
    /// Ctrl-C; logs in DATA_DIR/logs.
    Up(up::UpArgs),
    /// A real search in one command: phantom data, the local stack, the demo study followed
    /// live, the best strategy against the routine one, a report; then stops.
    Demo(demo::DemoArgs),
    /// First thing on a GPU host: the device opens, the U-Net's logits there equal the CPU's,
    /// and a few training steps there lower the loss.
    GpuCheck(gpu_check::GpuCheckArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Data(cmd) => data::run(cmd).await,
        Command::Train(a) => job::train(a).await,
        Command::Eval(a) => job::eval(a).await,
        Command::Predict(a) => predict::run(a).await,
        Command::Study(c) => study::run(c).await,
        Command::Up(a) => up::run(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::GpuCheck(a) => gpu_check::run(a),
    }
}
