//! The data-quality rules: `label-noise`, `duplicates`, `degenerate-images` from the data
//! measurement ([`super::super::data`]).

use super::*;

/// The data-quality findings: `label-noise` when 10 % or more of the images are confident
/// suspects (both the embedding and the pixels put them among another class),
/// `duplicates` for duplicates with conflicting labels or across the run's splits (a warning)
/// or within a class only (info), `degenerate-images` for any blank, saturated or
/// out-of-range image.
pub fn data_findings(m: &Measurements) -> Vec<Finding> {
    let Some(q) = &m.data_quality else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let n = q.images.max(1) as f64;
    let share = q.confident_suspects as f64 / n;
    if share >= 0.10 && q.confident_suspects >= 3 {
        let top: Vec<String> = q
            .suspect_list
            .iter()
            .take(5)
            .map(|s| format!("{} ({} among {})", s.name, s.class, s.neighbours_class))
            .collect();
        out.push(
            finding(
                Kind::LabelNoise,
                Severity::Warning,
                format!(
                    "{} of {} images ({:.1} %) sit among images of another class in the embedding and in pixel space: suspected wrong labels, first {}",
                    q.confident_suspects,
                    q.images,
                    100.0 * share,
                    top.join(", ")
                ),
            )
            .with("confident-suspects", q.confident_suspects as f64)
            .with("confident-suspect-share", share)
            .with("suspects", q.suspects as f64)
            .with("precision-at-1", m.retrieval.precision_at_1)
            .explain(
                "At least 80 % of an image's nearest neighbours in the model's embedding (ten, fewer for small \
                 classes) and 70 % of its nearest neighbours in pixel space carry another label. Some such images \
                 are the classes' natural overlap (7 % of the fixtures' clean test images with the shipped model); \
                 many are usually mislabelled images, which teach the \
                 model to pull different things together and make its distances inconsistent. The list (JSON \
                 measurements.data_quality, the report) gives each with its neighbours' class and how far pixel \
                 space agrees.",
                "Look at the top suspects (the report shows them); fix or drop the wrong labels and retrain. Where \
                 labels are noisy by nature, a loss with class proxies (cosface) or a larger batch is less hurt by \
                 them than pair losses.",
            ),
        );
    }
    let bad_dups = q.duplicates_conflicting + q.duplicates_across_splits;
    if bad_dups > 0 || q.duplicates_same_class > 0 {
        let first: Vec<String> = q
            .duplicate_list
            .iter()
            .take(3)
            .map(|x| format!("{} = {} ({}, {})", x.a, x.b, x.kind, x.how))
            .collect();
        out.push(
            finding(
                Kind::Duplicates,
                if bad_dups > 0 {
                    Severity::Warning
                } else {
                    Severity::Info
                },
                format!(
                    "{} duplicate pairs with conflicting labels, {} images also in another split of the run, {} within a class: {}",
                    q.duplicates_conflicting,
                    q.duplicates_across_splits,
                    q.duplicates_same_class,
                    first.join("; ")
                ),
            )
            .with("conflicting-labels", q.duplicates_conflicting as f64)
            .with("across-splits", q.duplicates_across_splits as f64)
            .with("same-class", q.duplicates_same_class as f64)
            .explain(
                "The same picture under two labels tells the model that one image is two things; the same picture \
                 in training and test makes the test figures measure memory, not generalisation (leakage); \
                 duplicates within a class only weigh those images more.",
                "Remove one of each conflicting pair (or fix its label); remove test images that are in the \
                 training or validation split and re-measure; deduplicate before splitting.",
            ),
        );
    }
    if q.degenerate > 0 {
        let mut by: Vec<(String, usize)> = Vec::new();
        for x in &q.degenerate_list {
            match by.iter_mut().find(|(k, _)| *k == x.kind) {
                Some(e) => e.1 += 1,
                None => by.push((x.kind.clone(), 1)),
            }
        }
        let kinds: Vec<String> = by.iter().map(|(k, c)| format!("{k} {c}")).collect();
        let first: Vec<&str> = q
            .degenerate_list
            .iter()
            .take(5)
            .map(|x| x.name.as_str())
            .collect();
        out.push(
            finding(
                Kind::DegenerateImages,
                Severity::Warning,
                format!(
                    "{} images carry little or nothing to compare ({}): {}",
                    q.degenerate,
                    kinds.join(", "),
                    first.join(", ")
                ),
            )
            .with("degenerate", q.degenerate as f64)
            .with("degenerate-share", q.degenerate as f64 / n)
            .explain(
                "A blank image has no content, a saturated one has lost it, and one far outside the training \
                 images' brightness is compared on a scale the model never saw: their distances to anything are \
                 noise, and in training they teach nothing.",
                "Drop or re-capture them (check the pipeline that made them: a failed decode, a wrong exposure, \
                 a scaling bug), or normalise them like the training images.",
            ),
        );
    }
    out
}
