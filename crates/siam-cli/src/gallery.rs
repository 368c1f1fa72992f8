//! `siam embed` and `siam search`: galleries written once and searched many times. The work
//! is `siam_model::Gallery`'s; this module resolves the inputs and renders the results.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use siam_model::{Gallery, SiameseModel};

use crate::cli::{EmbedArgs, SearchArgs, SearchFormat};
use crate::commands::load;

/// Queries embedded and searched per round (results stream out after each).
const QUERY_ROUND: usize = 256;

pub fn embed(a: EmbedArgs) -> Result<()> {
    let (model, path, _) = load(&a.model)?;
    let files = siam_data::folder::list_images(&a.inputs)?;
    match a.out.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "csv" if a.append => bail!(
            "{}: --append adds to a .safetensors gallery, not to a CSV file",
            a.out.display()
        ),
        "csv" => write_csv(&model, &path, &files, &a.out),
        "safetensors" => {
            let (mut gallery, before) = if a.append && a.out.exists() {
                let g = Gallery::load(&a.out)?;
                g.check_model(&model, &path)
                    .with_context(|| format!("{}: cannot append", a.out.display()))?;
                let n = g.len();
                (g, n)
            } else {
                (Gallery::for_model(&model, &path)?, 0)
            };
            let added = gallery.add_images(&model, &files)?;
            gallery.save(&a.out)?;
            let skipped = files.len() - added;
            eprintln!(
                "wrote {} embeddings of dimension {} to {}{}",
                gallery.len(),
                gallery.dim(),
                a.out.display(),
                if a.append {
                    format!(
                        " ({added} added to {before}{})",
                        if skipped > 0 {
                            format!("; {skipped} already in the gallery, not embedded again")
                        } else {
                            String::new()
                        }
                    )
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        _ => bail!(
            "{}: the output must end in .safetensors or .csv",
            a.out.display()
        ),
    }
}

fn write_csv(model: &SiameseModel, path: &Path, files: &[PathBuf], out: &Path) -> Result<()> {
    let mut gallery = Gallery::for_model(model, path)?;
    gallery.add_images(model, files)?;
    let d = gallery.dim();
    let mut s = String::from("file");
    for j in 0..d {
        s.push_str(&format!(",e{j}"));
    }
    s.push('\n');
    for (name, row) in gallery
        .items()
        .iter()
        .zip(gallery.embeddings().chunks_exact(d))
    {
        s.push_str(&csv_field(name));
        for v in row {
            s.push_str(&format!(",{v}"));
        }
        s.push('\n');
    }
    siam_model::model::write_atomic(out, s.as_bytes())
        .with_context(|| format!("{}: cannot write", out.display()))?;
    eprintln!(
        "wrote {} embeddings of dimension {d} to {}",
        gallery.len(),
        out.display()
    );
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The queries named on the command line and by --queries, in that order.
fn queries(a: &SearchArgs) -> Result<Vec<PathBuf>> {
    let mut out = if a.query.is_empty() {
        Vec::new()
    } else {
        siam_data::folder::list_images(&a.query)?
    };
    if let Some(q) = &a.queries {
        if q.is_dir() || siam_data::folder::is_image_file(q) {
            out.extend(siam_data::folder::list_images(std::slice::from_ref(q))?);
        } else {
            out.extend(siam_data::folder::read_image_list(q)?);
        }
    }
    if out.is_empty() {
        bail!("no query: name query images or folders, or pass --queries FOLDER|LIST");
    }
    Ok(out)
}

pub fn search(a: SearchArgs) -> Result<()> {
    let (model, path, source) = load(&a.model)?;
    let queries = queries(&a)?;
    let gallery = if a.gallery.is_dir() {
        let files = siam_data::folder::list_images(std::slice::from_ref(&a.gallery))?;
        let mut g = Gallery::for_model(&model, &path)?;
        g.add_images(&model, &files)?;
        g
    } else {
        let g = Gallery::load(&a.gallery)?;
        g.check_model(&model, &path)
            .with_context(|| format!("{}: cannot search", a.gallery.display()))?;
        g
    };
    let format = if a.json {
        SearchFormat::Jsonl
    } else {
        a.format
    };
    let threshold = model.meta().threshold;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let r = (|| -> std::io::Result<()> {
        match format {
            SearchFormat::Text => writeln!(
                out,
                "model: {} ({source}); gallery: {} ({} images); {} quer{}",
                path.display(),
                a.gallery.display(),
                gallery.len(),
                queries.len(),
                if queries.len() == 1 { "y" } else { "ies" }
            )?,
            SearchFormat::Csv => writeln!(out, "query,rank,file,distance,same")?,
            SearchFormat::Jsonl => {}
        }
        Ok(())
    })();
    if quiet_pipe(r)? {
        return Ok(());
    }
    for round in queries.chunks(QUERY_ROUND) {
        let xs = round
            .iter()
            .map(|q| model.load_image(q))
            .collect::<siam_model::Result<Vec<_>>>()?;
        // The input check runs on the same forward pass: a query unlike the training data is
        // still searched, with a warning on stderr (and `warnings` in JSON Lines).
        let (e, warnings) = model.embed_checked(&candle_core::Tensor::cat(&xs, 0)?)?;
        let e: Vec<f32> = e
            .to_device(&candle_core::Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        for (q, ws) in round.iter().zip(&warnings) {
            for w in ws {
                eprintln!(
                    "warning: {}: unlike the training data: {}",
                    q.display(),
                    w.detail
                );
            }
        }
        let hits = gallery.search(&e, a.k)?;
        let r = (|| -> std::io::Result<()> {
            for ((q, hits), ws) in round.iter().zip(&hits).zip(&warnings) {
                render(
                    &mut out, format, q, hits, ws, &gallery, threshold, &path, &a.gallery,
                )?;
            }
            out.flush()
        })();
        if quiet_pipe(r)? {
            return Ok(());
        }
    }
    Ok(())
}

/// True when the reader of stdout went away (`siam search ... | head`): stop quietly.
fn quiet_pipe(r: std::io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("cannot write the results"),
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    out: &mut impl Write,
    format: SearchFormat,
    query: &Path,
    hits: &[siam_model::Hit],
    warnings: &[siam_model::ood::InputWarning],
    gallery: &Gallery,
    threshold: Option<f32>,
    model: &Path,
    gallery_path: &Path,
) -> std::io::Result<()> {
    let same = |d: f32| threshold.map(|t| d <= t);
    match format {
        SearchFormat::Text => {
            writeln!(out, "query: {}", query.display())?;
            for (rank, h) in hits.iter().enumerate() {
                let verdict = match same(h.distance) {
                    Some(true) => "same",
                    Some(false) => "different",
                    None => "",
                };
                writeln!(
                    out,
                    "{:>3}  {:.4}  {:<9}  {}",
                    rank + 1,
                    h.distance,
                    verdict,
                    gallery.item(h.index)
                )?;
            }
        }
        SearchFormat::Csv => {
            for (rank, h) in hits.iter().enumerate() {
                writeln!(
                    out,
                    "{},{},{},{},{}",
                    csv_field(&query.display().to_string()),
                    rank + 1,
                    csv_field(gallery.item(h.index)),
                    h.distance,
                    same(h.distance).map_or(String::new(), |s| s.to_string())
                )?;
            }
        }
        SearchFormat::Jsonl => {
            let results: Vec<serde_json::Value> = hits
                .iter()
                .enumerate()
                .map(|(rank, h)| {
                    serde_json::json!({
                        "rank": rank + 1,
                        "file": gallery.item(h.index),
                        "distance": h.distance,
                        "same": same(h.distance),
                    })
                })
                .collect();
            let line = serde_json::json!({
                "model": model,
                "gallery": gallery_path,
                "query": query,
                "warnings": warnings,
                "threshold": threshold,
                "results": results,
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
