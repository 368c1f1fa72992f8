//! The command line, as clap derive structs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Train, evaluate and use Siamese networks (deep metric learning) on images.
#[derive(Parser, Debug)]
#[command(name = "siam", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model; writes a run folder with the best model and its test metrics.
    Train(TrainArgs),
    /// Compare two images: distance, threshold and verdict.
    Compare(CompareArgs),
    /// Embed images into vectors (safetensors or CSV).
    Embed(EmbedArgs),
    /// Find the gallery images nearest to a query image.
    Search(SearchArgs),
    /// Evaluate a model on a dataset: verification and retrieval metrics.
    Eval(EvalArgs),
    /// Show a model file's metadata.
    Info(InfoArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A TOML config (see docs/guide.md); flags below override it.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A built-in recipe: default, seed, quick.
    #[arg(long)]
    pub preset: Option<String>,
    /// Data: fixtures, fashion-mnist, mnist, an IDX directory or an image folder.
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Margin of the contrastive or triplet loss.
    #[arg(long)]
    pub margin: Option<f64>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// The run folder (default runs/<preset>-<time>); it must not exist.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume the run in this folder from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "preset", "out"])]
    pub resume: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ModelArg {
    /// The model file (default: $SIAM_MODEL, else the newest runs/*/model.safetensors, else the shipped model).
    #[arg(long, short)]
    pub model: Option<PathBuf>,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Image files or folders (searched recursively for .png/.jpg/.jpeg).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file: .safetensors (tensor "embeddings" and the file list in metadata) or .csv.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArg,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    pub query: PathBuf,
    /// A folder of images to search (recursively).
    #[arg(long)]
    pub gallery: PathBuf,
    /// Results to show.
    #[arg(short, default_value_t = 5)]
    pub k: usize,
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// fixtures, fashion-mnist, mnist, an IDX directory (its test split) or an image folder.
    #[arg(long)]
    pub data: String,
    /// Balanced pairs for the verification metrics.
    #[arg(long, default_value_t = 10000)]
    pub pairs: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArg,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    pub model: PathBuf,
    #[arg(long)]
    pub json: bool,
}
