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
    /// Find the gallery images nearest to each query image (a gallery file or folder).
    Search(SearchArgs),
    /// Evaluate a model on a dataset: verification and retrieval metrics.
    Eval(EvalArgs),
    /// Show a model file's metadata.
    Info(InfoArgs),
    /// Explain why a model outputs what it does: findings with evidence, pictures and fixes.
    Diagnose(DiagnoseArgs),
    /// Recalibrate a model's decision threshold on a dataset's validation pairs.
    Calibrate(CalibrateArgs),
    /// Short training runs over a grid of margins and learning rates, side by side.
    Sweep(SweepArgs),
    /// Print a fully resolved training config as TOML (a preset, a file, overrides), validated.
    Config(ConfigArgs),
    /// The learning-rate range test: a short run with a rate rising exponentially, the loss
    /// against the rate (JSON, SVG, PNG) and a suggested rate.
    LrFind(LrFindArgs),
}

#[derive(Args, Debug)]
pub struct LrFindArgs {
    /// The recipe to test (default: the default preset); a run's config.toml works.
    #[command(flatten)]
    pub source: ConfigSourceArgs,
    /// Data: fixtures, fashion-mnist, mnist, an IDX directory or an image folder.
    #[arg(long)]
    pub data: Option<String>,
    /// The first step's learning rate.
    #[arg(long, default_value_t = 1e-7)]
    pub start: f64,
    /// The last step's learning rate.
    #[arg(long, default_value_t = 1.0)]
    pub end: f64,
    /// Steps (batches) from --start to --end.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// The output folder (default runs/lr-find-<time>); it must not exist or be empty.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub source: ConfigSourceArgs,
}

/// Where a training config comes from: `train`, `sweep` and `config` share these.
#[derive(Args, Debug)]
pub struct ConfigSourceArgs {
    /// A TOML config (see docs/guide.md); with --preset, it holds only what differs from the
    /// preset. --set and the flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A built-in recipe: default, unseen, fast, seed, quick, convnet, resnet.
    #[arg(long)]
    pub preset: Option<String>,
    /// Override any config key, dotted for nested tables (--set loss.margin=0.5 --set
    /// data.class-split.test.count=3); repeatable, applied in order, before the flags.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl ConfigSourceArgs {
    /// The sources, with `fallback` as the preset when neither a preset nor a file is given.
    pub fn source<'a>(&'a self, fallback: &'a str) -> siam_train::config::ConfigSource<'a> {
        let preset = match (&self.preset, &self.config) {
            (Some(p), _) => Some(p.as_str()),
            (None, Some(_)) => None,
            (None, None) => Some(fallback),
        };
        siam_train::config::ConfigSource {
            preset,
            file: self.config.as_deref(),
            sets: &self.sets,
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub source: ConfigSourceArgs,
    /// Data: fixtures, fashion-mnist, mnist, an IDX directory or an image folder.
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Margin of the loss (contrastive, triplet, CosFace or ArcFace).
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
    /// A torchvision or timm ResNet state dict (safetensors) to start a resnet18/resnet34
    /// backbone from (`model.encoder.pretrained`).
    #[arg(long, value_name = "FILE")]
    pub pretrained: Option<String>,
    /// Resume the run in this folder from its last checkpoint.
    #[arg(long, conflicts_with_all = ["config", "preset", "out", "sets", "pretrained"])]
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
    /// The first image.
    #[arg(required_unless_present = "pairs", conflicts_with = "pairs")]
    pub a: Option<PathBuf>,
    /// The second image.
    #[arg(required_unless_present = "pairs")]
    pub b: Option<PathBuf>,
    /// Decide every pair of a list instead (CSV/TSV with an `a,b[,same]` header, or LFW's
    /// pairs.txt): one line per pair on stdout, `a,b,distance,threshold,same`, streaming; each
    /// image is decoded and embedded once.
    #[arg(long, value_name = "LIST")]
    pub pairs: Option<PathBuf>,
    /// With --pairs: the folder its relative paths (LFW: its names) are under; default the
    /// list's own folder.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// With --pairs: csv (the default) or jsonl.
    #[arg(long, value_enum)]
    pub format: Option<PairsFormat>,
    #[command(flatten)]
    pub model: ModelArg,
    /// Print one JSON object (with --pairs: JSON Lines, one object per pair).
    #[arg(long)]
    pub json: bool,
}

/// Output formats of `siam compare --pairs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PairsFormat {
    Csv,
    Jsonl,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Image files or folders (searched recursively for .png/.jpg/.jpeg).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output file: .safetensors (a gallery for `siam search`: tensor "embeddings", the file
    /// list and the model's fingerprint in metadata) or .csv.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Add the inputs to an existing .safetensors gallery (created if missing); images
    /// already in it are not embedded again. The model must be the gallery's.
    #[arg(long)]
    pub append: bool,
    #[command(flatten)]
    pub model: ModelArg,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Query images or folders of them (recursively).
    pub query: Vec<PathBuf>,
    /// More queries: a folder, or a text file listing one image per line (relative to it).
    #[arg(long, value_name = "FOLDER|LIST")]
    pub queries: Option<PathBuf>,
    /// The gallery: a .safetensors file from `siam embed`, or a folder of images (embedded
    /// on every call).
    #[arg(long)]
    pub gallery: PathBuf,
    /// Results per query.
    #[arg(short, default_value_t = 5)]
    pub k: usize,
    /// Output: text, csv (query,rank,file,distance,same) or jsonl (one object per query).
    #[arg(long, value_enum, default_value = "text")]
    pub format: SearchFormat,
    /// The same as --format jsonl.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArg,
}

/// Output formats of `siam search`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SearchFormat {
    Text,
    Csv,
    Jsonl,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// fixtures, fashion-mnist, mnist, an IDX directory (its test split) or an image folder.
    #[arg(long, required_unless_present = "pairs")]
    pub data: Option<String>,
    /// A number of balanced pairs to draw from --data (default 10000), or a pair list (CSV/TSV
    /// with an `a,b,same[,fold]` header, or LFW's pairs.txt) to evaluate exactly those pairs.
    #[arg(long, value_name = "N|LIST")]
    pub pairs: Option<String>,
    /// With a pair list: the k-fold protocol over K contiguous folds (a list's fold column,
    /// or LFW's folds, are used without it).
    #[arg(long, value_name = "K")]
    pub folds: Option<usize>,
    /// With a pair list: the folder its relative paths (LFW: its names) are under; default
    /// the list's own folder.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
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

#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// fixtures, fashion-mnist, mnist, an IDX directory (its test split) or an image folder.
    #[arg(long)]
    pub data: String,
    /// The model's run folder: adds its training history, config and train/validation gap
    /// (and the model defaults to RUN/model.safetensors).
    #[arg(long)]
    pub run: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArg,
    /// Print the diagnosis as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a self-contained HTML report (findings and pictures).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the pictures as PNG and SVG into this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Project the embedding map with t-SNE instead of PCA (slower).
    #[arg(long)]
    pub tsne: bool,
    /// Balanced pairs for the verification figures.
    #[arg(long, default_value_t = 4000)]
    pub pairs: usize,
    /// At most this many images (a class-stratified sample).
    #[arg(long, default_value_t = 5000)]
    pub max_images: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Skip the raw-pixel and untrained-encoder baselines (the weak-features check).
    #[arg(long)]
    pub no_baselines: bool,
    /// Exit with status 3 when any warning or error is found.
    #[arg(long)]
    pub strict: bool,
    /// Also run the learning-rate range test on the run's config (`siam lr-find`): its
    /// suggestion in the text and JSON, its curve in the report and the plots.
    #[arg(long, requires = "run")]
    pub lr_find: bool,
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The calibration data: fixtures, fashion-mnist, mnist or an IDX directory (their
    /// validation split), or an image folder (all of it).
    #[arg(long, required_unless_present = "pairs")]
    pub data: Option<String>,
    #[command(flatten)]
    pub model: ModelArg,
    /// The calibrated model file to write (never the input file).
    #[arg(long, short)]
    pub out: PathBuf,
    /// balanced-accuracy, eer, or far=RATE (the largest threshold with at most that false-accept rate).
    #[arg(long, default_value = "balanced-accuracy")]
    pub method: String,
    /// A number of balanced pairs to draw from --data (default 10000), or a pair list (CSV/TSV
    /// with an `a,b,same` header, or LFW's pairs.txt) to calibrate on exactly those pairs.
    #[arg(long, value_name = "N|LIST")]
    pub pairs: Option<String>,
    /// With a pair list: the folder its relative paths (LFW: its names) are under; default
    /// the list's own folder.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The base config (default: the quick preset).
    #[command(flatten)]
    pub source: ConfigSourceArgs,
    /// Margins to try, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub margin: Vec<f64>,
    /// Learning rates to try, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub lr: Vec<f64>,
    /// Data source for every trial.
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Trials run at once (default: as many as cores, at most the number of trials).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// The sweep folder (default runs/sweep-<time>); it must not exist.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}
