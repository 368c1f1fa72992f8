//! Parses a device name: "cpu", "cuda", "cuda:N", "metal", "metal:N" or "auto".

use candle_core::Device;

use crate::error::{ModelError, Result};

/// Parses `name` into a candle device. "auto" takes CUDA, then Metal, when this build has the
/// feature and a device answers, else the CPU.
pub fn parse_device(name: &str) -> Result<Device> {
    let bad = |why: String| ModelError::Device {
        name: name.to_string(),
        why,
    };
    let (kind, ordinal) = match name.split_once(':') {
        Some((k, n)) => (
            k,
            n.parse::<usize>()
                .map_err(|_| bad(format!("'{n}' is not a device number")))?,
        ),
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !cfg!(feature = "cuda") {
                return Err(bad(
                    "this build has no CUDA support; rebuild with `--features cuda`".into(),
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| bad(e.to_string()))
        }
        "metal" => {
            if !cfg!(feature = "metal") {
                return Err(bad(
                    "this build has no Metal support; rebuild with `--features metal`".into(),
                ));
            }
            Device::new_metal(ordinal).map_err(|e| bad(e.to_string()))
        }
        "auto" => {
            if cfg!(feature = "cuda")
                && let Ok(d) = Device::new_cuda(0)
            {
                return Ok(d);
            }
            if cfg!(feature = "metal")
                && let Ok(d) = Device::new_metal(0)
            {
                return Ok(d);
            }
            Ok(Device::Cpu)
        }
        _ => Err(bad("expected cpu, cuda, cuda:N, metal or auto".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("auto").is_ok());
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("expected"), "{e}");
        assert!(
            parse_device("cuda:x")
                .unwrap_err()
                .to_string()
                .contains("'x'")
        );
        if !cfg!(feature = "cuda") {
            assert!(
                parse_device("cuda:0")
                    .unwrap_err()
                    .to_string()
                    .contains("--features cuda")
            );
        }
    }
}
