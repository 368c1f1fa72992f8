//! Splits: stratified train/validation, and class-disjoint splits that hold out whole classes
//! to evaluate on classes never seen in training.

use rand::seq::SliceRandom;

use crate::error::{DataError, Result};
use crate::image_set::ImageSet;
use crate::rng::{rng_for, stream};

/// Splits `set` into (train, validation) with `val_fraction` of every class in validation
/// (rounded, at least one image of each class with two or more images). Seeded.
pub fn stratified(set: &ImageSet, val_fraction: f64, seed: u64) -> Result<(ImageSet, ImageSet)> {
    if !(0.0..1.0).contains(&val_fraction) || val_fraction.is_nan() {
        return Err(DataError::Invalid(format!(
            "validation fraction {val_fraction} must be in [0, 1)"
        )));
    }
    let mut rng = rng_for(seed, &[stream::SPLIT, 0]);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for mut idx in set.indices_by_class() {
        idx.shuffle(&mut rng);
        let mut k = (idx.len() as f64 * val_fraction).round() as usize;
        if val_fraction > 0.0 && k == 0 && idx.len() >= 2 {
            k = 1;
        }
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Ok((set.subset(&train)?, set.subset(&val)?))
}

/// Which classes a class-disjoint split holds out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Holdout {
    /// This many classes, drawn with the seed.
    Count(usize),
    /// These class labels.
    Classes(Vec<u32>),
}

/// Splits `set` into (seen, unseen) by class: the held-out classes go wholly to `unseen`.
/// Both sides must keep at least two classes.
pub fn class_disjoint(
    set: &ImageSet,
    holdout: &Holdout,
    seed: u64,
) -> Result<(ImageSet, ImageSet)> {
    let present: Vec<u32> = set
        .class_counts()
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(c, _)| c as u32)
        .collect();
    let held: Vec<u32> = match holdout {
        Holdout::Count(k) => {
            let mut c = present.clone();
            c.shuffle(&mut rng_for(seed, &[stream::SPLIT, 1]));
            c.truncate(*k);
            c
        }
        Holdout::Classes(c) => {
            if let Some(bad) = c.iter().find(|c| !present.contains(c)) {
                return Err(DataError::Invalid(format!(
                    "held-out class {bad} has no image in this set"
                )));
            }
            c.clone()
        }
    };
    let unseen_classes = held.len();
    let seen_classes = present.len() - present.iter().filter(|c| held.contains(c)).count();
    if unseen_classes < 2 || seen_classes < 2 {
        return Err(DataError::Invalid(format!(
            "a class-disjoint split of {} classes holding out {unseen_classes} leaves {seen_classes} seen and {unseen_classes} unseen; both need at least 2",
            present.len()
        )));
    }
    let (mut seen, mut unseen) = (Vec::new(), Vec::new());
    for i in 0..set.len() {
        if held.contains(&set.label(i)) {
            unseen.push(i);
        } else {
            seen.push(i);
        }
    }
    Ok((set.subset(&seen)?, set.subset(&unseen)?))
}

/// The classes of a three-way class split: trained on, validated on (model selection and
/// calibration), tested on (the final figures only). Disjoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClassRoles {
    /// Labels trained on.
    pub train: Vec<u32>,
    /// Labels validated on.
    pub validation: Vec<u32>,
    /// Labels tested on.
    pub test: Vec<u32>,
}

/// Draws a three-way class split of the classes present in `set`: `test` classes first, then
/// `validation` classes from the rest, the remainder for training. Explicit lists must be
/// disjoint and present; every role keeps at least two classes.
pub fn class_roles(
    set: &ImageSet,
    validation: &Holdout,
    test: &Holdout,
    seed: u64,
) -> Result<ClassRoles> {
    let present: Vec<u32> = set
        .class_counts()
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(c, _)| c as u32)
        .collect();
    let draw = |h: &Holdout, from: &[u32], stream_id: u64, role: &str| -> Result<Vec<u32>> {
        let mut held = match h {
            Holdout::Count(k) => {
                let mut c = from.to_vec();
                c.shuffle(&mut rng_for(seed, &[stream::SPLIT, stream_id]));
                c.truncate(*k);
                c
            }
            Holdout::Classes(c) => {
                if let Some(bad) = c.iter().find(|c| !from.contains(c)) {
                    let why = if present.contains(bad) {
                        "is also a test class"
                    } else {
                        "has no image in this set"
                    };
                    return Err(DataError::Invalid(format!("{role} class {bad} {why}")));
                }
                c.clone()
            }
        };
        held.sort_unstable();
        held.dedup();
        Ok(held)
    };
    let test = draw(test, &present, 1, "test")?;
    let rest: Vec<u32> = present
        .iter()
        .copied()
        .filter(|c| !test.contains(c))
        .collect();
    let validation = draw(validation, &rest, 2, "validation")?;
    let train: Vec<u32> = rest
        .iter()
        .copied()
        .filter(|c| !validation.contains(c))
        .collect();
    for (role, c) in [
        ("training", &train),
        ("validation", &validation),
        ("test", &test),
    ] {
        if c.len() < 2 {
            return Err(DataError::Invalid(format!(
                "a three-way class split of {} classes leaves {} for training, {} for validation and {} for testing; each needs at least 2 ({role} has {})",
                present.len(),
                train.len(),
                validation.len(),
                test.len(),
                c.len()
            )));
        }
    }
    Ok(ClassRoles {
        train,
        validation,
        test,
    })
}

/// The images of `set` whose label is one of `classes`.
pub fn with_classes(set: &ImageSet, classes: &[u32]) -> Result<ImageSet> {
    let keep: Vec<usize> = (0..set.len())
        .filter(|&i| classes.contains(&set.label(i)))
        .collect();
    set.subset(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_set::ImageShape;

    fn set(per_class: &[usize]) -> ImageSet {
        let labels: Vec<u32> = per_class
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
            .collect();
        let shape = ImageShape {
            channels: 1,
            height: 1,
            width: 1,
        };
        let px = (0..labels.len()).map(|i| i as u8).collect();
        let names = (0..per_class.len()).map(|c| c.to_string()).collect();
        ImageSet::new(px, labels, shape, names).unwrap()
    }

    #[test]
    fn stratified_keeps_class_proportions_and_partitions() {
        let s = set(&[10, 20, 30]);
        let (tr, va) = stratified(&s, 0.2, 1).unwrap();
        assert_eq!(va.class_counts(), vec![2, 4, 6]);
        assert_eq!(tr.class_counts(), vec![8, 16, 24]);
        let mut all: Vec<u8> = (0..tr.len())
            .map(|i| tr.image(i)[0])
            .chain((0..va.len()).map(|i| va.image(i)[0]))
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..60).collect::<Vec<u8>>());
        let (tr2, _) = stratified(&s, 0.2, 1).unwrap();
        assert_eq!(tr.pixels(), tr2.pixels());
        let (tr3, _) = stratified(&s, 0.2, 2).unwrap();
        assert_ne!(tr.pixels(), tr3.pixels());
    }

    #[test]
    fn disjoint_holds_out_whole_classes() {
        let s = set(&[3, 3, 3, 3, 3]);
        let (seen, unseen) = class_disjoint(&s, &Holdout::Count(2), 4).unwrap();
        let su: std::collections::BTreeSet<u32> = seen.labels().into_iter().collect();
        let uu: std::collections::BTreeSet<u32> = unseen.labels().into_iter().collect();
        assert_eq!(su.len(), 3);
        assert_eq!(uu.len(), 2);
        assert!(su.is_disjoint(&uu));
        let e = class_disjoint(&s, &Holdout::Count(4), 4).unwrap_err();
        assert!(e.to_string().contains("1 seen"), "{e}");
        let (_, u) = class_disjoint(&s, &Holdout::Classes(vec![0, 4]), 0).unwrap();
        assert_eq!(u.class_counts(), vec![3, 0, 0, 0, 3]);
        assert!(class_disjoint(&s, &Holdout::Classes(vec![9]), 0).is_err());
    }

    /// A three-way split partitions the classes, whatever the seed and the counts: no test
    /// class is trained or validated on, no validation class is trained on.
    #[test]
    fn three_way_split_partitions_the_classes() {
        use proptest::prelude::*;
        proptest!(|(classes in 8usize..20, v in 2usize..4, t in 2usize..4, seed in any::<u64>())| {
            let s = set(&vec![2; classes]);
            let r = class_roles(&s, &Holdout::Count(v), &Holdout::Count(t), seed).unwrap();
            prop_assert_eq!(r.validation.len(), v);
            prop_assert_eq!(r.test.len(), t);
            prop_assert_eq!(r.train.len() + v + t, classes);
            let all: std::collections::BTreeSet<u32> =
                r.train.iter().chain(&r.validation).chain(&r.test).copied().collect();
            prop_assert_eq!(all.len(), classes, "the roles overlap");
            let tr = with_classes(&s, &r.train).unwrap();
            prop_assert!(tr.labels().iter().all(|l| !r.test.contains(l) && !r.validation.contains(l)));
        });
        let s = set(&[2; 6]);
        let e = class_roles(
            &s,
            &Holdout::Classes(vec![1, 2]),
            &Holdout::Classes(vec![2, 3]),
            0,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("validation class 2 is also a test class"),
            "{e}"
        );
        let e = class_roles(&s, &Holdout::Count(2), &Holdout::Count(3), 0).unwrap_err();
        assert!(e.to_string().contains("1 for training"), "{e}");
    }
}
