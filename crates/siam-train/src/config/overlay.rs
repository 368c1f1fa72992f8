//! How a config is put together from its sources: a preset, a TOML file that holds only what
//! differs from it, and `key=value` overrides with dotted keys (`loss.margin=0.5`).
//!
//! The rules, in order: the preset is the base (`default` when a file is given without one
//! is *not* assumed: a file alone must be complete, as a run folder's `config.toml` is); the
//! file's tables merge into the base key by key; the overrides apply one after another. A
//! table whose `kind` changes (a `[loss]` that becomes `cosface`, a `model.encoder` that
//! becomes `convnet`) starts afresh from the new kind with its defaults, since the old kind's
//! keys do not belong to it. Every error names the file or override and the key.

use std::path::Path;

use toml::{Table, Value};

use super::TrainConfig;
use crate::error::{Result, TrainError};

/// Where a config comes from. With neither `preset` nor `file`, the `default` preset.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigSource<'a> {
    /// A built-in preset (see [`super::PRESETS`]).
    pub preset: Option<&'a str>,
    /// A TOML file: the whole config, or with `preset`, what differs from it.
    pub file: Option<&'a Path>,
    /// `key=value` overrides, applied in order (value in TOML syntax; a bare word is a string).
    pub sets: &'a [String],
}

/// The config from its sources, validated, and a name for its run folder (the file's stem,
/// else the preset's name).
pub fn resolve(src: &ConfigSource<'_>) -> Result<(TrainConfig, String)> {
    let name = match (src.file, src.preset) {
        (Some(f), _) => f
            .file_stem()
            .map_or("run".into(), |s| s.to_string_lossy().into_owned()),
        (None, Some(p)) => p.to_string(),
        (None, None) => "default".to_string(),
    };
    let mut table = match (src.preset, src.file) {
        (preset, None) => to_table(&TrainConfig::preset(preset.unwrap_or("default"))?),
        (None, Some(file)) => {
            // A file on its own is a complete config: parse it as one, for the errors' lines.
            let cfg = TrainConfig::from_file(file).map_err(|e| match e {
                TrainError::Config(m) if m.contains("missing field") => TrainError::Config(format!(
                    "{m}\n(a file that holds only what differs from a preset needs the preset too: --preset NAME --config {})",
                    file.display()
                )),
                other => other,
            })?;
            to_table(&cfg)
        }
        (Some(preset), Some(file)) => {
            let mut base = to_table(&TrainConfig::preset(preset)?);
            let text = std::fs::read_to_string(file)
                .map_err(|e| TrainError::Config(format!("{}: {e}", file.display())))?;
            let overlay: Table = toml::from_str(&text)
                .map_err(|e| TrainError::Config(format!("{}: {e}", file.display())))?;
            merge(&mut base, overlay);
            parse(&base).map_err(|m| {
                TrainError::Config(format!("{} over preset {preset}: {m}", file.display()))
            })?;
            base
        }
    };
    // Each override is checked as it applies, so an error names it; a missing field is only
    // an error if no later override fills it (`self-supervised.projection-dim=64` may come
    // before `self-supervised.weight=0.5` in a table the base config lacks).
    let mut missing: Option<String> = None;
    for s in src.sets {
        apply_set(&mut table, s)?;
        match parse(&table) {
            Ok(_) => missing = None,
            Err(m) if m.contains("missing field") => {
                missing.get_or_insert(format!("--set {s}: {m}"));
            }
            Err(m) => return Err(TrainError::Config(format!("--set {s}: {m}"))),
        }
    }
    if let Some(m) = missing {
        return Err(TrainError::Config(m));
    }
    let cfg = parse(&table).map_err(TrainError::Config)?;
    cfg.validate()?;
    Ok((cfg, name))
}

/// Applies one `key=value` override to a config's table (see the module's rules).
pub fn apply_set(table: &mut Table, set: &str) -> Result<()> {
    let bad = |why: String| Err(TrainError::Config(format!("--set {set}: {why}")));
    let Some((key, raw)) = set.split_once('=') else {
        return bad("expected key=value, for example loss.margin=0.5".into());
    };
    let key = key.trim();
    let path: Vec<&str> = key.split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return bad(format!("'{key}' is not a dotted key"));
    }
    let value = parse_value(raw.trim());
    let (last, parents) = path.split_last().expect("split yields at least one part");
    let mut here = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = here
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        match entry {
            Value::Table(t) => here = t,
            _ => return bad(format!("{} is a value, not a table", path[..=i].join("."))),
        }
    }
    if *last == "kind" && here.get("kind").is_some_and(|k| *k != value) {
        here.clear();
    }
    here.insert(last.to_string(), value);
    Ok(())
}

/// A value in TOML syntax (`0.5`, `true`, `[32, 64]`, `{ count = 2 }`, `"text"`), or, when it
/// is not one, the text itself as a string (`data.source=fixtures`).
fn parse_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Merges `overlay` into `base`: tables key by key, any other value replaced; a table whose
/// `kind` changes is replaced as a whole.
pub fn merge(base: &mut Table, overlay: Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => {
                let kind_changes =
                    matches!((b.get("kind"), o.get("kind")), (Some(x), Some(y)) if x != y);
                if kind_changes {
                    *b = o;
                } else {
                    merge(b, o);
                }
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn to_table(cfg: &TrainConfig) -> Table {
    Table::try_from(cfg).expect("a TrainConfig always serialises to a TOML table")
}

/// The config a table describes; an error names the key (`loss.margn: unknown field ...`).
fn parse(table: &Table) -> std::result::Result<TrainConfig, String> {
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    toml::from_str::<TrainConfig>(&text).map_err(|e| {
        let msg = e.message().trim();
        let mut key = e.span().map(|s| key_at(&text, s.start));
        // Inside a tagged table (`[loss]`) the span is the table's: add the field's name.
        if let (Some(k), Some(field)) = (&mut key, unknown_field(msg))
            && !k.ends_with(field)
        {
            *k = if k.is_empty() {
                field.to_string()
            } else {
                format!("{k}.{field}")
            };
        }
        match key {
            Some(k) if !k.is_empty() => format!("{k}: {}", e.message().trim()),
            _ => e.message().trim().to_string(),
        }
    })
}

/// `X` of an "unknown field `X`, ..." message.
fn unknown_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The dotted key at byte `at` of TOML text as `toml::to_string` writes it: the last
/// `[table]` header before it, and the key on its line.
fn key_at(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let header = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            (l.starts_with('[') && l.ends_with(']'))
                .then(|| l.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_default();
    let line = line.trim();
    if line.starts_with('[') {
        return line.trim_matches(|c| c == '[' || c == ']').to_string();
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    match (header.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (false, true) => header,
        (false, false) => format!("{header}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn resolve_sets(preset: &str, s: &[&str]) -> Result<TrainConfig> {
        let s = sets(s);
        resolve(&ConfigSource {
            preset: Some(preset),
            file: None,
            sets: &s,
        })
        .map(|(c, _)| c)
    }

    #[test]
    fn every_preset_round_trips_through_its_table() {
        for p in super::super::PRESETS {
            let c = TrainConfig::preset(p).unwrap();
            assert_eq!(parse(&to_table(&c)).unwrap(), c, "{p}");
        }
    }

    #[test]
    fn sets_reach_nested_keys_and_parse_values() {
        let c = resolve_sets(
            "fast",
            &[
                "loss.margin=0.5",
                "epochs=3",
                "data.source=fixtures/images",
                "augment.hflip=false",
                "data.class-split={ validation = { count = 2 }, test = { count = 3 } }",
            ],
        )
        .unwrap();
        assert_eq!(c.loss.margin(), Some(0.5));
        assert_eq!(c.epochs, 3);
        assert_eq!(c.data.source, "fixtures/images");
        assert!(!c.augment.hflip);
        assert!(c.data.class_split.is_some());
        // Everything else is the preset's.
        let d = TrainConfig::preset("fast").unwrap();
        assert_eq!(c.optimizer, d.optimizer);
        assert_eq!(c.model, d.model);
    }

    #[test]
    fn a_changed_kind_starts_from_the_new_kinds_defaults() {
        let c = resolve_sets("fast", &["loss.kind=cosface", "loss.scale=20"]).unwrap();
        assert_eq!(
            c.loss,
            super::super::LossConfig::Cosface {
                margin: 0.35,
                scale: 20.0
            }
        );
        // The same kind keeps its other keys.
        let c = resolve_sets("fast", &["loss.kind=contrastive", "loss.margin=0.7"]).unwrap();
        assert_eq!(c.loss.margin(), Some(0.7));
        // The default's contrastive term only adds to a batch loss: turning its loss into a
        // pair loss is refused, and the error says where a contrastive recipe starts.
        let e = resolve_sets(
            "default",
            &["loss={ kind = \"contrastive\", margin = 1.0 }"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("contrastive-term") && e.contains("--preset fast"),
            "{e}"
        );
        // The kind alone is enough: the margins have defaults, so the error is that one, not
        // a missing field.
        let e = resolve_sets("default", &["loss.kind=contrastive"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("contrastive-term") && !e.contains("missing"),
            "{e}"
        );
        let c = resolve_sets("fast", &["loss.kind=cosface", "loss.kind=contrastive"]).unwrap();
        assert_eq!(c.loss.margin(), Some(1.0));
        let c = resolve_sets("fast", &["loss.kind=triplet"]).unwrap();
        assert_eq!(c.loss.margin(), Some(0.2));
    }

    #[test]
    fn bad_overrides_name_the_override_and_the_key() {
        let err = |s: &str| resolve_sets("default", &[s]).unwrap_err().to_string();
        let e = err("loss.margn=0.5");
        assert!(
            e.contains("--set loss.margn=0.5") && e.contains("loss.margn"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");
        let e = err("epochs=many");
        assert!(
            e.contains("--set epochs=many") && e.contains("epochs"),
            "{e}"
        );
        let e = err("loss.margin");
        assert!(e.contains("expected key=value"), "{e}");
        let e = err("epochs.x=1");
        assert!(e.contains("epochs is a value"), "{e}");
        let e = err("loss..margin=1");
        assert!(e.contains("not a dotted key"), "{e}");
        // Values that parse but cannot work get validate()'s key-naming errors.
        let e = err("loss.margin=-1");
        assert!(e.contains("loss.margin"), "{e}");
    }

    #[test]
    fn a_new_tables_keys_may_come_in_any_order() {
        let a = resolve_sets(
            "default",
            &[
                "self-supervised.weight=0.5",
                "self-supervised.projection-dim=64",
            ],
        )
        .unwrap();
        let b = resolve_sets(
            "default",
            &[
                "self-supervised.projection-dim=64",
                "self-supervised.weight=0.5",
            ],
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.self_supervised.as_ref().unwrap().projection_dim, 64);
        // A field that no later override fills is still an error, naming the override.
        let e = resolve_sets(
            "default",
            &["self-supervised.projection-dim=64", "epochs=3"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--set self-supervised.projection-dim=64")
                && e.contains("missing field `weight`"),
            "{e}"
        );
    }

    #[test]
    fn a_file_overrides_a_preset_key_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("short.toml");
        std::fs::write(&f, "epochs = 2\n[loss]\nkind = \"cosface\"\nmargin = 0.2\n[model.encoder]\nembedding-dim = 64\n").unwrap();
        let (c, name) = resolve(&ConfigSource {
            preset: Some("convnet"),
            file: Some(&f),
            sets: &sets(&["epochs=4"]),
        })
        .unwrap();
        assert_eq!(name, "short");
        assert_eq!(c.epochs, 4);
        assert_eq!(
            c.loss,
            super::super::LossConfig::Cosface {
                margin: 0.2,
                scale: 64.0
            }
        );
        let conv = TrainConfig::preset("convnet").unwrap();
        match (&c.model.encoder, &conv.model.encoder) {
            (
                siam_model::EncoderConfig::Convnet {
                    embedding_dim,
                    channels,
                    ..
                },
                siam_model::EncoderConfig::Convnet { channels: c2, .. },
            ) => {
                assert_eq!(*embedding_dim, 64);
                assert_eq!(channels, c2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.augment, conv.augment);

        // The same partial file alone is not a config, and the error says what to do.
        let e = resolve(&ConfigSource {
            preset: None,
            file: Some(&f),
            sets: &[],
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("missing field") && e.contains("--preset NAME"),
            "{e}"
        );

        // An unknown key in the file names the file and the key.
        std::fs::write(&f, "[loss]\nmargn = 0.2\n").unwrap();
        let e = resolve(&ConfigSource {
            preset: Some("default"),
            file: Some(&f),
            sets: &[],
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("short.toml") && e.contains("loss.margn"), "{e}");
    }
}
