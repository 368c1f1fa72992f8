//! Pair lists: every accepted spelling, LFW's two header shapes, and every rejection named
//! with the file and the line.

use std::path::Path;

use siam_data::PairListSampler;
use siam_data::pair_list::{
    read_pair_list, read_pair_list_with_root, read_pairs_to_compare, split_by_image,
};

/// A folder with images a.png … e.png (contents do not matter to the parser).
fn folder() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for n in ["a", "b", "c", "d", "e"] {
        std::fs::write(d.path().join(format!("{n}.png")), b"x").unwrap();
    }
    d
}

fn write(d: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err(d: &Path, text: &str) -> String {
    let p = write(d, "bad.csv", text);
    let e = read_pair_list(&p).unwrap_err().to_string();
    assert!(e.contains("bad.csv"), "{e}");
    e
}

#[test]
fn csv_and_tsv_with_every_spelling_of_same() {
    let d = folder();
    let p = write(
        d.path(),
        "pairs.csv",
        "# my pairs\nA,B,Same\na.png,b.png,1\nc.png,d.png,0\na.png,c.png,TRUE\nb.png,d.png,false\n\n\
         a.png,e.png,same\nb.png,e.png,Different\n\"c.png\",\"e.png\",yes\nd.png,e.png,no\n",
    );
    let l = read_pair_list(&p).unwrap();
    assert_eq!(l.format, "csv");
    assert_eq!(l.folds, 0);
    let same: Vec<bool> = l.verdicts().unwrap();
    assert_eq!(same, [true, false, true, false, true, false, true, false]);
    assert_eq!(l.pairs[0].a, d.path().join("a.png"));
    assert_eq!(l.pairs[0].line, 3);
    assert_eq!(l.pairs[6].a, d.path().join("c.png"), "quoted fields");
    // Each image once, however many pairs it is in.
    let (images, idx) = l.images();
    assert_eq!(images.len(), 5);
    assert_eq!(idx[0], (0, 1));
    assert_eq!(idx[2], (0, 2));

    // TSV, columns in another order, absolute paths, a fold column from 1.
    let abs = d.path().join("d.png");
    let p = write(
        d.path(),
        "pairs.tsv",
        &format!(
            "same\tfold\ta\tb\n1\t1\ta.png\tb.png\n0\t2\tc.png\t{}\n",
            abs.display()
        ),
    );
    let l = read_pair_list(&p).unwrap();
    assert_eq!(l.format, "tsv");
    assert_eq!(l.folds, 2);
    assert_eq!(l.pairs[1].b, abs);
    assert_eq!(
        l.pairs.iter().map(|p| p.fold).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
}

#[test]
fn every_rejection_names_the_file_and_the_line() {
    let d = folder();
    let d = d.path();
    let e = err(d, "a,b,same\na.png,b.png,maybe\n");
    assert!(e.contains("line 2") && e.contains("same = `maybe`"), "{e}");
    let e = err(d, "a,b,same\na.png,b.png,1\na,b,same\nc.png,d.png,0\n");
    assert!(
        e.contains("line 3") && e.contains("header is repeated"),
        "{e}"
    );
    assert!(err(d, "").contains("empty"));
    assert!(err(d, "# only a comment\n\n").contains("empty"));
    assert!(err(d, "a,b,same\n").contains("no pairs"));
    let e = err(d, "a,b,same\na.png,a.png,1\n");
    assert!(
        e.contains("line 2") && e.contains("a.png with itself"),
        "{e}"
    );
    let e = err(d, "a,b,same,fold\na.png,b.png,1,0\nc.png,d.png,0,2\n");
    assert!(e.contains("gaps") && e.contains("fold 1"), "{e}");
    let e = err(d, "a,b,same,fold\na.png,b.png,1,3\n");
    assert!(e.contains("folds start at 3"), "{e}");
    let e = err(d, "a,b,same,fold\na.png,b.png,1,x\n");
    assert!(e.contains("fold = `x`"), "{e}");
    let e = err(d, "left,right,label\na.png,b.png,1\n");
    assert!(e.contains("line 1") && e.contains("a, b and same"), "{e}");
    let e = err(d, "a,b,same\na.png,b.png\n");
    assert!(e.contains("2 fields, the header has 3"), "{e}");
    let e = err(d, "a,b,same\n\"a.png,b.png,1\n");
    assert!(e.contains("unterminated"), "{e}");
    // Every missing image, with its line, not only the first.
    let e = err(d, "a,b,same\na.png,x.png,1\ny.png,b.png,0\nx.png,c.png,1\n");
    assert!(e.contains("2 listed image(s) not found"), "{e}");
    assert!(
        e.contains("x.png (line 2)") && e.contains("y.png (line 3)"),
        "{e}"
    );
}

/// LFW's layout: root/name/name_0001.jpg.
fn lfw() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, n) in [("Ann", 3), ("Bob", 2), ("Cy", 1), ("Dee", 2)] {
        std::fs::create_dir_all(d.path().join("lfw").join(name)).unwrap();
        for i in 1..=n {
            std::fs::write(d.path().join(format!("lfw/{name}/{name}_{i:04}.jpg")), b"x").unwrap();
        }
    }
    d
}

#[test]
fn lfw_pairs_in_both_header_shapes() {
    let d = lfw();
    let root = d.path().join("lfw");
    // pairs.txt: 2 folds of 1 same + 1 different each.
    let p = write(
        d.path(),
        "pairs.txt",
        "2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nBob\t1\t2\nCy\t1\tDee\t2\n",
    );
    let l = read_pair_list_with_root(&p, &root).unwrap();
    assert_eq!(l.format, "lfw");
    assert_eq!(l.folds, 2);
    assert_eq!(l.pairs[0].a, root.join("Ann/Ann_0001.jpg"));
    assert_eq!(l.pairs[0].b, root.join("Ann/Ann_0002.jpg"));
    assert!(l.pairs[0].same == Some(true) && l.pairs[1].same == Some(false));
    assert_eq!(l.pairs[1].b, root.join("Bob/Bob_0001.jpg"));
    assert_eq!(
        l.pairs.iter().map(|p| p.fold).collect::<Vec<_>>(),
        [Some(0), Some(0), Some(1), Some(1)]
    );
    // pairsDevTrain.txt: one number, same pairs then different.
    let p = write(
        d.path(),
        "dev.txt",
        "2\nAnn\t1\t3\nDee\t1\t2\nAnn 2 Cy 1\nBob 2 Dee 1\n",
    );
    let l = read_pair_list_with_root(&p, &root).unwrap();
    assert_eq!((l.folds, l.len()), (0, 4));
    assert_eq!(l.pairs.iter().filter(|p| p.same == Some(true)).count(), 2);

    let bad = |text: &str| {
        let p = write(d.path(), "bad.txt", text);
        let e = read_pair_list_with_root(&p, &root).unwrap_err().to_string();
        assert!(e.contains("bad.txt"), "{e}");
        e
    };
    assert!(
        bad("1\t1\nAnn\t1\t2\n").contains(
            "promises 1 fold(s) of 1 same and 1 different pairs (2 lines), the list has 1"
        )
    );
    assert!(
        bad("1\t1\nAnn\t1\tBob\t1\nAnn\t1\t2\n")
            .contains("line 2: a different pair where fold 1 expects its same pairs")
    );
    assert!(bad("1\nAnn\t1\nAnn 1 Bob 1\n").contains("line 2: 2 fields"));
    assert!(bad("1\nAnn\t1\tx\nAnn 1 Bob 1\n").contains("`x` is not an image number"));
    assert!(bad("1\nAnn\t1\t1\nAnn 1 Bob 1\n").contains("with itself"));
    let e = bad("1\nAnn\t1\t9\nAnn 1 Bob 1\n");
    assert!(
        e.contains("1 listed image(s) not found") && e.contains("Ann_0009.jpg (line 2)"),
        "{e}"
    );
}

#[test]
fn pairs_to_compare_need_no_verdict_and_scoring_them_is_refused() {
    let d = folder();
    let p = write(d.path(), "todo.csv", "a,b\na.png,b.png\nc.png,a.png\n");
    // The strict reader wants the verdicts.
    let e = read_pair_list(&p).unwrap_err().to_string();
    assert!(e.contains("todo.csv") && e.contains("a, b and same"), "{e}");
    let l = read_pairs_to_compare(&p, None).unwrap();
    assert_eq!(l.len(), 2);
    assert!(!l.is_labelled());
    assert!(l.pairs.iter().all(|p| p.same.is_none()));
    let e = l.verdicts().unwrap_err().to_string();
    assert!(
        e.contains("todo.csv") && e.contains("no `same` column"),
        "{e}"
    );
    // With a same column it reads as the strict reader does; without a and b it is refused.
    let p2 = write(d.path(), "ok.csv", "a,b,same\na.png,b.png,1\n");
    assert_eq!(
        read_pairs_to_compare(&p2, None).unwrap(),
        read_pair_list(&p2).unwrap()
    );
    let p3 = write(d.path(), "bad.csv", "left,right\na.png,b.png\n");
    let e = read_pairs_to_compare(&p3, None).unwrap_err().to_string();
    assert!(
        e.contains("bad.csv") && e.contains("line 1") && e.contains("a and b"),
        "{e}"
    );
    // Another root.
    let sub = d.path().join("lists");
    std::fs::create_dir(&sub).unwrap();
    let p4 = write(&sub, "todo.csv", "a,b\na.png,b.png\n");
    assert!(read_pairs_to_compare(&p4, None).is_err());
    assert_eq!(
        read_pairs_to_compare(&p4, Some(d.path())).unwrap().pairs[0].a,
        d.path().join("a.png")
    );
}

/// A list of `people` identities with `per` images each: every same pair within a person,
/// and each image against the next person's images as different pairs.
fn identities(people: usize, per: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let mut text = String::from("a,b,same\n");
    for p in 0..people {
        for i in 0..per {
            std::fs::write(d.path().join(format!("p{p}_{i}.png")), b"x").unwrap();
        }
    }
    for p in 0..people {
        for i in 0..per {
            for j in i + 1..per {
                text += &format!("p{p}_{i}.png,p{p}_{j}.png,1\n");
            }
            text += &format!("p{p}_{i}.png,p{}_{i}.png,0\n", (p + 1) % people);
        }
    }
    let path = d.path().join("pairs.csv");
    std::fs::write(&path, text).unwrap();
    (d, path)
}

#[test]
fn same_components_are_the_identities() {
    let (_d, path) = identities(5, 3);
    let l = read_pair_list(&path).unwrap();
    let (images, _) = l.images();
    let c = l.same_components();
    assert_eq!(c.len(), images.len());
    for (i, a) in images.iter().enumerate() {
        for (j, b) in images.iter().enumerate() {
            let person = |p: &std::path::Path| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .split('_')
                    .next()
                    .unwrap()
                    .to_string()
            };
            assert_eq!(c[i] == c[j], person(a) == person(b), "{a:?} {b:?}");
        }
    }
    assert_eq!(*c.iter().max().unwrap(), 4);
}

#[test]
fn the_by_image_split_keeps_every_image_in_one_part() {
    let (_d, path) = identities(40, 4);
    let l = read_pair_list(&path).unwrap();
    let s = split_by_image(&l, 0.2, 0.1, 7).unwrap();
    // Every pair is in exactly one place.
    let mut all: Vec<usize> = [&s.train, &s.val, &s.test, &s.dropped]
        .iter()
        .flat_map(|v| v.iter().copied())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
    // No image in two parts.
    let images = |ps: &[usize]| {
        ps.iter()
            .flat_map(|&p| [l.pairs[p].a.clone(), l.pairs[p].b.clone()])
            .collect::<std::collections::HashSet<_>>()
    };
    let (tr, va, te) = (images(&s.train), images(&s.val), images(&s.test));
    assert!(tr.is_disjoint(&va) && tr.is_disjoint(&te) && va.is_disjoint(&te));
    // Shares near the fractions (the growth stops at the target), and few pairs lost.
    let n = l.len() as f64;
    assert!(
        (s.val.len() as f64 / n - 0.2).abs() < 0.05,
        "{}",
        s.val.len()
    );
    assert!(
        (s.test.len() as f64 / n - 0.1).abs() < 0.05,
        "{}",
        s.test.len()
    );
    assert!(
        (s.dropped.len() as f64) < 0.1 * n,
        "{} dropped",
        s.dropped.len()
    );
    // Seeded: the same seed gives the same split, another seed another one.
    assert_eq!(split_by_image(&l, 0.2, 0.1, 7).unwrap(), s);
    assert_ne!(split_by_image(&l, 0.2, 0.1, 8).unwrap(), s);
    // Drawing images at random would lose far more: with a fifth of the images in
    // validation, about 2·0.2·0.8 = 32 % of the pairs cross parts.
    let none = split_by_image(&l, 0.0, 0.0, 7).unwrap();
    assert_eq!(
        (none.train.len(), none.val.len(), none.dropped.len()),
        (l.len(), 0, 0)
    );
}

#[test]
fn the_by_image_split_names_what_it_cannot_do() {
    let (_d, path) = identities(3, 2);
    let l = read_pair_list(&path).unwrap();
    let e = split_by_image(&l, 0.05, 0.0, 1).unwrap_err().to_string();
    assert!(
        e.contains("pairs.csv") && e.contains("data.val-fraction = 0.05"),
        "{e}"
    );
    let e = split_by_image(&l, 0.6, 0.39, 1).unwrap_err().to_string();
    assert!(e.contains("pairs.csv"), "{e}");
    let e = split_by_image(&l, 1.0, 0.0, 1).unwrap_err().to_string();
    assert!(e.contains("data.val-fraction = 1"), "{e}");
}

#[test]
fn the_pair_list_sampler_visits_every_pair_once_an_epoch_and_resumes_anywhere() {
    let rows: Vec<(usize, usize, bool)> = (0..10).map(|i| (i, i + 10, i % 3 == 0)).collect();
    let s = PairListSampler::new(rows.clone(), 4, 42).unwrap();
    // Epoch 0: batches 0..3 cover the 10 pairs (the third wraps to the start).
    let mut seen = Vec::new();
    for b in 0..3 {
        let p = s.batch(0, b);
        assert_eq!(p.a.len(), 4);
        for ((&a, &b2), &same) in p.a.iter().zip(&p.b).zip(&p.same) {
            assert_eq!(b2, a + 10);
            assert_eq!(same, if a % 3 == 0 { 1.0 } else { 0.0 });
            seen.push(a);
        }
    }
    let mut first10 = seen[..10].to_vec();
    first10.sort_unstable();
    assert_eq!(first10, (0..10).collect::<Vec<_>>());
    assert_eq!(seen[10..], seen[..2]);
    // A pure function of (seed, epoch, batch): asking again, or from a fresh sampler after a
    // "resume", gives the same batch; another epoch another order.
    let again = PairListSampler::new(rows.clone(), 4, 42).unwrap();
    assert_eq!(s.batch(3, 1), again.batch(3, 1));
    assert_ne!(
        (0..3).map(|b| s.batch(0, b).a).collect::<Vec<_>>(),
        (0..3).map(|b| s.batch(1, b).a).collect::<Vec<_>>()
    );
    assert!(PairListSampler::new(Vec::new(), 4, 1).is_err());
    assert!(PairListSampler::new(rows, 0, 1).is_err());
}
