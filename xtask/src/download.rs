//! `cargo xtask download <fashion-mnist|mnist>`: takes the system copy when present, else the
//! dataset's public mirrors, and verifies every file against a digest pinned here before it is
//! written (atomically). A partial or corrupt file never passes.
//!
//! Fashion-MNIST is pinned by the SHA-256 of the decompressed IDX payload, which every source
//! shares (Debian recompresses the files, so their `.gz` bytes differ from Zalando's). MNIST is
//! pinned by the SHA-384 of the original `.gz` files, as published with the dataset's mirrors.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256, Sha384};

/// How a file is verified.
#[derive(Debug, Clone, Copy)]
pub enum Pin {
    /// SHA-256 of the decompressed content (hex).
    Payload(&'static str),
    /// SHA-384 of the `.gz` file as published (hex).
    Gz(&'static str),
}

/// A dataset that can be downloaded.
#[derive(Debug, Clone)]
pub struct DatasetSpec {
    /// Its name (the folder under the data directory).
    pub name: String,
    /// (file name, pin) for each `.gz` file.
    pub files: Vec<(String, Pin)>,
    /// Base URLs, tried in order.
    pub mirrors: Vec<String>,
    /// A folder where the system may already hold the files.
    pub system: Option<PathBuf>,
}

/// The datasets this build knows.
pub fn spec(name: &str) -> Result<DatasetSpec> {
    let f = |list: &[(&str, Pin)]| list.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    match name {
        "fashion-mnist" => Ok(DatasetSpec {
            name: name.into(),
            files: f(&[
                (
                    "train-images-idx3-ubyte.gz",
                    Pin::Payload(
                        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                    ),
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    Pin::Payload(
                        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                    ),
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    Pin::Payload(
                        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    ),
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    Pin::Payload(
                        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                    ),
                ),
            ]),
            mirrors: vec!["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/".into()],
            system: Some(PathBuf::from(siam_train::data::SYSTEM_FASHION_MNIST)),
        }),
        "mnist" => Ok(DatasetSpec {
            name: name.into(),
            files: f(&[
                (
                    "train-images-idx3-ubyte.gz",
                    Pin::Gz(
                        "f40eb179f7c3d2637e789663bde56d444a23e4a0a14477a9e6ed88bc39c8ad6eaff68056c0cd9bb60daf0062b70dc8ee",
                    ),
                ),
                (
                    "train-labels-idx1-ubyte.gz",
                    Pin::Gz(
                        "ba9c11bf9a7f7c2c04127b8b3e568cf70dd3429d9029ca59b7650977a4ac32f8ff5041fe42bc872097487b06a6794e00",
                    ),
                ),
                (
                    "t10k-images-idx3-ubyte.gz",
                    Pin::Gz(
                        "1bf45877962fd391f7abb20534a30fd2203d0865309fec5f87d576dbdbefdcb16adb49220afc22a0f3478359d229449c",
                    ),
                ),
                (
                    "t10k-labels-idx1-ubyte.gz",
                    Pin::Gz(
                        "ccc1ee70f798a04e6bfeca56a4d0f0de8d8eeeca9f74641c1e1bfb00cf7cc4aa4d023f6ea1b40e79bb4707107845479d",
                    ),
                ),
            ]),
            mirrors: vec![
                "https://ossci-datasets.s3.amazonaws.com/mnist/".into(),
                "https://storage.googleapis.com/cvdf-datasets/mnist/".into(),
            ],
            system: None,
        }),
        other => bail!("unknown dataset '{other}' (known: fashion-mnist, mnist)"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `bytes` (a `.gz` file) against `pin`; the error says what differs.
pub fn verify(bytes: &[u8], pin: Pin) -> Result<()> {
    match pin {
        Pin::Payload(want) => {
            let mut raw = Vec::new();
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut raw)
                .context("not a complete gzip stream (truncated or corrupt)")?;
            let got = hex(&Sha256::digest(&raw));
            if got != want {
                bail!("decompressed SHA-256 {got}, expected {want}");
            }
        }
        Pin::Gz(want) => {
            let got = hex(&Sha384::digest(bytes));
            if got != want {
                bail!("SHA-384 {got}, expected {want}");
            }
        }
    }
    Ok(())
}

fn fetch(url: &str) -> Result<Vec<u8>> {
    let resp = ureq::get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let mut body = resp.into_body();
    let bytes = body
        .with_config()
        .limit(200 * 1024 * 1024)
        .read_to_vec()
        .with_context(|| format!("reading {url}"))?;
    Ok(bytes)
}

/// Puts every file of `spec` into `dest`, verified. Returns where each came from.
pub fn download(spec: &DatasetSpec, dest: &Path) -> Result<Vec<(String, String)>> {
    std::fs::create_dir_all(dest).with_context(|| format!("{}: cannot create", dest.display()))?;
    let mut report = Vec::new();
    for (file, pin) in &spec.files {
        let target = dest.join(file);
        if let Ok(b) = std::fs::read(&target)
            && verify(&b, *pin).is_ok()
        {
            report.push((file.clone(), "already present".into()));
            continue;
        }
        let mut tried = Vec::new();
        let mut got = None;
        if let Some(sys) = &spec.system {
            let p = sys.join(file);
            match std::fs::read(&p) {
                Ok(b) => match verify(&b, *pin) {
                    Ok(()) => got = Some((b, format!("system copy {}", p.display()))),
                    Err(e) => tried.push(format!("{}: {e:#}", p.display())),
                },
                Err(e) => tried.push(format!("{}: {e}", p.display())),
            }
        }
        for m in &spec.mirrors {
            if got.is_some() {
                break;
            }
            let url = format!("{m}{file}");
            match fetch(&url).and_then(|b| verify(&b, *pin).map(|()| b)) {
                Ok(b) => got = Some((b, url)),
                Err(e) => tried.push(format!("{url}: {e:#}")),
            }
        }
        let Some((bytes, from)) = got else {
            bail!(
                "could not get a verified {file} for {}:\n  {}\nOffline? {}copy the four .gz files into {} and run this again.",
                spec.name,
                tried.join("\n  "),
                if spec.name == "fashion-mnist" {
                    "Install Debian's copy (`apt-get install dataset-fashion-mnist`), or "
                } else {
                    ""
                },
                dest.display()
            );
        };
        siam_model::model::write_atomic(&target, &bytes)
            .with_context(|| format!("{}: cannot write", target.display()))?;
        report.push((file.clone(), from));
    }
    Ok(report)
}

/// Options of `cargo xtask download`.
#[derive(clap::Args)]
pub struct Args {
    /// fashion-mnist or mnist.
    pub dataset: String,
    /// Destination folder (default: $SIAM_DATA_DIR/<dataset>, else data/<dataset>).
    #[arg(long)]
    pub dest: Option<PathBuf>,
}

pub fn run(a: &Args) -> Result<()> {
    let spec = spec(&a.dataset)?;
    let dest = a.dest.clone().unwrap_or_else(|| {
        crate::project_root()
            .join(siam_train::data::data_dir())
            .join(&a.dataset)
    });
    let report = match download(&spec, &dest) {
        Ok(r) => r,
        #[cfg(feature = "hub")]
        Err(e) => {
            eprintln!("{e:#}\ntrying the Hugging Face hub through candle-datasets...");
            from_hub(&spec, &dest)?
        }
        #[cfg(not(feature = "hub"))]
        Err(e) => return Err(e),
    };
    for (file, from) in report {
        println!("{file}: {from}");
    }
    println!("{} is in {}", a.dataset, dest.display());
    Ok(())
}

/// Fetches the dataset through candle-datasets, writes it as IDX and verifies it like any source.
#[cfg(feature = "hub")]
fn from_hub(spec: &DatasetSpec, dest: &Path) -> Result<Vec<(String, String)>> {
    use siam_data::hub::{HubDataset, load};
    use siam_data::idx::{self, IdxSplit};
    let which = if spec.name == "mnist" {
        HubDataset::Mnist
    } else {
        HubDataset::FashionMnist
    };
    let (train, test) = load(which)?;
    let tmp = dest.join(".hub");
    idx::write_dir(&tmp, IdxSplit::Train, &train)?;
    idx::write_dir(&tmp, IdxSplit::Test, &test)?;
    let mut report = Vec::new();
    for (file, pin) in &spec.files {
        let bytes = std::fs::read(tmp.join(file))?;
        // The hub serves PNGs, not the original .gz files: only a payload pin can check them.
        if let Pin::Gz(_) = pin {
            bail!(
                "{file}: pinned by its original .gz digest, which a hub copy cannot match; not trusting it"
            );
        }
        verify(&bytes, *pin).with_context(|| format!("{file} from the hub"))?;
        siam_model::model::write_atomic(&dest.join(file), &bytes)?;
        report.push((file.clone(), "Hugging Face hub (candle-datasets)".into()));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// Serves `files` (path → bytes) on 127.0.0.1 for `requests` requests; returns the base URL.
    fn serve(files: Vec<(String, Vec<u8>)>, requests: usize) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in l.incoming().take(requests) {
                let mut s = stream.unwrap();
                let mut line = String::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                r.read_line(&mut line).unwrap();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_string();
                match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => {
                        write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .unwrap();
                        s.write_all(body).unwrap();
                    }
                    None => write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .unwrap(),
                }
            }
        });
        base
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            crate::project_root()
                .join("fixtures/fashion-mnist-subset")
                .join(name),
        )
        .unwrap()
    }

    fn test_spec(mirrors: Vec<String>) -> DatasetSpec {
        // The fixture subset's files, pinned like the real dataset (digests computed with
        // `zcat FILE | sha256sum`).
        let names = ["train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];
        let files = names
            .iter()
            .map(|n| {
                let mut raw = Vec::new();
                flate2::read::MultiGzDecoder::new(&fixture(n)[..])
                    .read_to_end(&mut raw)
                    .unwrap();
                let d: &'static str = Box::leak(hex(&Sha256::digest(&raw)).into_boxed_str());
                (n.to_string(), Pin::Payload(d))
            })
            .collect();
        DatasetSpec {
            name: "subset".into(),
            files,
            mirrors,
            system: None,
        }
    }

    #[test]
    fn downloads_verify_and_fall_back_across_mirrors() {
        let good = fixture("train-labels-idx1-ubyte.gz");
        let good2 = fixture("t10k-labels-idx1-ubyte.gz");
        let truncated = good[..good.len() / 2].to_vec();
        let mut corrupt = good2.clone();
        let k = corrupt.len() / 2;
        corrupt[k] ^= 0x55;
        // Mirror 1: truncated and corrupt files; mirror 2: good ones.
        let bad = serve(
            vec![
                ("train-labels-idx1-ubyte.gz".into(), truncated),
                ("t10k-labels-idx1-ubyte.gz".into(), corrupt),
            ],
            2,
        );
        let ok = serve(
            vec![
                ("train-labels-idx1-ubyte.gz".into(), good.clone()),
                ("t10k-labels-idx1-ubyte.gz".into(), good2),
            ],
            2,
        );
        let dir = tempfile::tempdir().unwrap();
        let report = download(&test_spec(vec![bad, ok.clone()]), dir.path()).unwrap();
        assert!(
            report.iter().all(|(_, from)| from.starts_with(&ok)),
            "{report:?}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("train-labels-idx1-ubyte.gz")).unwrap(),
            good
        );
        // A second run finds them present and verified, without the network.
        let again = download(&test_spec(vec![]), dir.path()).unwrap();
        assert!(again.iter().all(|(_, from)| from == "already present"));
    }

    #[test]
    fn only_bad_sources_fail_clearly_and_write_nothing() {
        let good = fixture("train-labels-idx1-ubyte.gz");
        let bad = serve(
            vec![("train-labels-idx1-ubyte.gz".into(), good[..10].to_vec())],
            1,
        );
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            download(
                &test_spec(vec![bad, "http://127.0.0.1:9/".into()]),
                dir.path()
            )
            .unwrap_err()
        );
        assert!(
            e.contains("truncated or corrupt")
                && e.contains("127.0.0.1:9")
                && e.contains("Offline?"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing half-written"
        );
    }

    #[test]
    fn the_system_copy_matches_the_pins_when_installed() {
        let s = spec("fashion-mnist").unwrap();
        let sys = s.system.clone().unwrap();
        if !sys.join("train-labels-idx1-ubyte.gz").is_file() {
            eprintln!("skipped: Debian's dataset-fashion-mnist is not installed");
            return;
        }
        for (f, pin) in &s.files {
            verify(&std::fs::read(sys.join(f)).unwrap(), *pin).unwrap();
        }
    }
}
