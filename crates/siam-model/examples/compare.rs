//! Compare two images with a trained siam model from your own Rust code.
//!
//! ```sh
//! cargo run -p siam-model --example compare -- MODEL.safetensors A.png B.png
//! ```

use siam_model::{SiameseModel, parse_device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, a, b] = args.as_slice() else {
        eprintln!("usage: compare MODEL.safetensors IMAGE_A IMAGE_B");
        std::process::exit(2);
    };
    let device = parse_device("auto")?;
    let model = SiameseModel::load(model, &device)?;
    let c = model.compare_paths(a, b)?;
    match (c.threshold, c.same) {
        (Some(t), Some(same)) => println!(
            "distance {:.4}, threshold {t:.4}: {}",
            c.distance,
            if same { "same" } else { "different" }
        ),
        _ => println!(
            "distance {:.4} (the model has no calibrated threshold)",
            c.distance
        ),
    }
    Ok(())
}
