//! `cargo xtask bench-gallery`: exact gallery search at scale. For each size it writes a
//! gallery of synthetic unit vectors (the search does not care where they came from), then,
//! in a fresh process so that the peak memory is the user's, loads it and searches a batch
//! of queries and single queries. Prints a table and writes `target/bench/gallery.json`.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use siam_model::{Distance, Gallery, GalleryIdentity};

use crate::project_root;

/// Options of `cargo xtask bench-gallery`.
#[derive(clap::Args)]
pub struct Args {
    /// Gallery sizes (embeddings), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    sizes: Vec<usize>,
    /// Embedding dimension (the presets embed in 128).
    #[arg(long, default_value_t = 128)]
    dim: usize,
    /// Queries in the batch measurement.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Results per query.
    #[arg(short, default_value_t = 10)]
    k: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Internal: measure one gallery file in this process and print one JSON line.
    #[arg(long, hide = true)]
    measure: Option<std::path::PathBuf>,
}

/// Unit vectors from a seeded generator (splitmix64 → Box–Muller would be overkill: uniform
/// coordinates normalised are fine for timing).
fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut v: Vec<f32> = (0..n * dim).map(|_| next()).collect();
    for row in v.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(path: &std::path::Path, a: &Args) -> Result<serde_json::Value> {
    // The first load reads a file just written (partly from disk); the second from the page
    // cache.
    let t = Instant::now();
    drop(Gallery::load(path)?);
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let g = Gallery::load(path)?;
    let load_warm_s = t.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mib();
    let q = unit_vectors(a.queries, g.dim(), 12345);
    let mut batch = Vec::new();
    for _ in 0..a.reps.max(1) {
        let t = Instant::now();
        let hits = g.search(&q, a.k)?;
        batch.push(t.elapsed().as_secs_f64());
        assert_eq!(hits.len(), a.queries);
    }
    let mut single = Vec::new();
    for i in 0..(5 * a.reps.max(1)) {
        let row = &q[(i % a.queries) * g.dim()..][..g.dim()];
        let t = Instant::now();
        g.search(row, a.k)?;
        single.push(t.elapsed().as_secs_f64());
    }
    let batch_s = median(batch);
    Ok(serde_json::json!({
        "embeddings": g.len(),
        "dim": g.dim(),
        "k": a.k,
        "file_mib": std::fs::metadata(path)?.len() as f64 / (1 << 20) as f64,
        "load_s": load_s,
        "load_warm_s": load_warm_s,
        "batch_queries": a.queries,
        "batch_queries_per_s": a.queries as f64 / batch_s,
        "single_query_ms": median(single) * 1e3,
        "peak_rss_mib_after_load": rss_after_load,
        "peak_rss_mib": peak_rss_mib(),
        "threads": rayon_threads(),
    }))
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

pub fn run(a: &Args) -> Result<()> {
    if let Some(p) = &a.measure {
        println!("{}", measure(p, a)?);
        return Ok(());
    }
    let dir = project_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut rows = Vec::new();
    for &n in &a.sizes {
        let path = dir.join(format!("gallery-{n}.safetensors"));
        let identity = GalleryIdentity {
            fingerprint: "synthetic".into(),
            model: "synthetic unit vectors".into(),
            distance: Distance::Euclidean,
            embedding_dim: a.dim,
        };
        let names = (0..n).map(|i| format!("gallery/{:07}.png", i)).collect();
        let g = Gallery::from_parts(identity, names, unit_vectors(n, a.dim, n as u64))?;
        let t = Instant::now();
        g.save(&path)?;
        let write_s = t.elapsed().as_secs_f64();
        drop(g);
        let exe = std::env::current_exe()?;
        let out = Command::new(exe)
            .args(["bench-gallery", "--dim"])
            .arg(a.dim.to_string())
            .arg("--queries")
            .arg(a.queries.to_string())
            .arg("-k")
            .arg(a.k.to_string())
            .arg("--reps")
            .arg(a.reps.to_string())
            .arg("--measure")
            .arg(&path)
            .output()?;
        let _ = std::fs::remove_file(&path);
        if !out.status.success() {
            bail!("measuring {n}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        v["write_s"] = write_s.into();
        eprintln!(
            "{n:>9} × {}: write {:.2} s, load {:.2} s (again: {:.2} s), {:.0} queries/s in batches of {}, one query {:.1} ms, peak RSS {:.0} MiB ({:.0} MiB file)",
            a.dim,
            write_s,
            v["load_s"].as_f64().unwrap_or(0.0),
            v["load_warm_s"].as_f64().unwrap_or(0.0),
            v["batch_queries_per_s"].as_f64().unwrap_or(0.0),
            a.queries,
            v["single_query_ms"].as_f64().unwrap_or(0.0),
            v["peak_rss_mib"].as_f64().unwrap_or(0.0),
            v["file_mib"].as_f64().unwrap_or(0.0),
        );
        rows.push(v);
    }
    let json = serde_json::json!({"gallery": rows});
    let out = dir.join("gallery.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
