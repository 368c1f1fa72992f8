//! Pair lists: every accepted spelling, LFW's two header shapes, and every rejection named
//! with the file and the line.

use std::path::Path;

use siam_data::pair_list::{read_pair_list, read_pair_list_with_root};

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
    let same: Vec<bool> = l.pairs.iter().map(|p| p.same).collect();
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
    assert!(l.pairs[0].same && !l.pairs[1].same);
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
    assert_eq!(l.pairs.iter().filter(|p| p.same).count(), 2);

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
