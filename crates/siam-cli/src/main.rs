//! `siam`: train, compare, embed, search, evaluate and inspect Siamese networks.
//! This binary is glue: it parses arguments, calls the siam libraries, and renders results.

mod cli;
mod commands;
mod gallery;
mod pairs;
mod render;
mod runtime;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    runtime::configure();
    let cli = <cli::Cli as clap::Parser>::parse();
    if let Err(e) = commands::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
