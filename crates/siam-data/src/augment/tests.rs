//! The augmentations: determinism per sample, each transform against its definition.

use super::*;
use crate::rng::rng_for;

const S: ImageShape = ImageShape {
    channels: 2,
    height: 5,
    width: 4,
};

fn img() -> Vec<f32> {
    (0..S.numel()).map(|i| (i as f32 * 0.37).sin()).collect()
}

#[test]
fn two_flips_are_identity() {
    let mut a = img();
    hflip(&mut a, S);
    assert_ne!(a, img());
    hflip(&mut a, S);
    assert_eq!(a, img());
}

#[test]
fn zero_rotation_and_unit_scale_are_identity() {
    let src = img();
    let mut dst = vec![0.0; src.len()];
    rotate(&src, &mut dst, S, 0.0);
    for (a, b) in src.iter().zip(&dst) {
        assert!((a - b).abs() < 1e-6);
    }
    crop_with_padding(&src, &mut dst, S, 2, 2, 2);
    assert_eq!(src, dst);
}

#[test]
fn crop_shifts_content() {
    let src = img();
    let mut dst = vec![9.0; src.len()];
    crop_with_padding(&src, &mut dst, S, 1, 0, 0);
    // Offset (0, 0) in the padded image moves content down-right by one pixel.
    assert_eq!(dst[0], 0.0);
    assert_eq!(dst[S.width + 1], src[0]);
}

#[test]
fn identity_config_changes_nothing() {
    let mut a = img();
    let mut scratch = vec![0.0; a.len()];
    AugmentConfig::none().apply(&mut a, &mut scratch, S, &mut rng_for(1, &[2]));
    assert_eq!(a, img());
}

#[test]
fn a_full_window_resized_crop_is_identity() {
    let src = img();
    let mut dst = vec![0.0; src.len()];
    resized_crop(&src, &mut dst, S, (0, 0, S.height, S.width));
    for (a, b) in src.iter().zip(&dst) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

#[test]
fn resized_crop_matches_pytorch_bilinear() {
    // torchvision's resized_crop on tensors is F.interpolate(bilinear, align_corners=False):
    //   x = torch.arange(36.).reshape(1, 1, 6, 6)
    //   F.interpolate(x[:, :, 1:4, 2:6], size=[6, 6], mode='bilinear',
    //                 align_corners=False).flatten().tolist()
    let want: [f32; 36] = [
        8.0, 8.5, 9.166667, 9.833334, 10.5, 11.0, 9.5, 10.0, 10.666667, 11.333333, 12.0, 12.5,
        12.5, 13.0, 13.666667, 14.333333, 15.0, 15.5, 15.5, 16.0, 16.666668, 17.333334, 18.0, 18.5,
        18.5, 19.0, 19.666668, 20.333332, 21.0, 21.5, 20.0, 20.5, 21.166668, 21.833334, 22.5, 23.0,
    ];
    let sh = ImageShape {
        channels: 1,
        height: 6,
        width: 6,
    };
    let src: Vec<f32> = (0..36).map(|i| i as f32).collect();
    let mut dst = vec![0.0; 36];
    resized_crop(&src, &mut dst, sh, (1, 2, 3, 4));
    for (i, (a, b)) in dst.iter().zip(&want).enumerate() {
        assert!((a - b).abs() < 1e-5, "pixel {i}: {a} vs {b}");
    }
}

#[test]
fn windows_stay_inside_the_image_and_cover_the_asked_area() {
    let mut rng = rng_for(3, &[1]);
    let mut areas = vec![];
    for _ in 0..2000 {
        let (t, l, h, w) = window(&mut rng, 28, 28, (0.35, 1.0), (0.75, 4.0 / 3.0));
        assert!(h >= 1 && w >= 1 && t + h <= 28 && l + w <= 28);
        areas.push((h * w) as f64 / 784.0);
    }
    let mean = areas.iter().sum::<f64>() / areas.len() as f64;
    // Uniform in [0.35, 1] has mean 0.675; clamping at the borders pulls it a little down.
    assert!((0.6..0.7).contains(&mean), "mean area share {mean}");
}

#[test]
fn noise_has_the_asked_spread_and_erasing_zeroes_a_window() {
    let sh = ImageShape {
        channels: 1,
        height: 64,
        width: 64,
    };
    let mut a = vec![0.5f32; sh.numel()];
    add_noise(&mut a, 0.1, &mut rng_for(5, &[1]));
    let n = a.len() as f64;
    let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = a
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    assert!((var.sqrt() - 0.1).abs() < 0.01, "std {}", var.sqrt());
    let mut b = vec![1.0f32; sh.numel()];
    erase(&mut b, sh, (3, 5, 10, 7));
    assert_eq!(b.iter().filter(|&&v| v == 0.0).count(), 70);
    assert_eq!(b[3 * 64 + 5], 0.0);
    assert_eq!(b[3 * 64 + 12], 1.0);
}

#[test]
fn strong_views_are_deterministic_per_sample_and_differ_between_samples() {
    let sh = ImageShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    let base: Vec<f32> = (0..sh.numel())
        .map(|i| (i as f32 * 0.1).sin().abs())
        .collect();
    let aug = AugmentConfig::none().strong_view();
    aug.validate().unwrap();
    let view = |slot: u64| {
        let mut a = base.clone();
        let mut scratch = vec![0.0; a.len()];
        aug.apply(&mut a, &mut scratch, sh, &mut rng_for(9, &[2, 0, slot]));
        a
    };
    assert_eq!(view(4), view(4));
    assert_ne!(view(4), view(5));
    assert_ne!(view(4), base);
}

#[test]
fn new_transforms_leave_older_configs_unchanged() {
    // The new transforms draw after the older ones: a config without them gives the same
    // image whether or not they exist (checked against a crop-only run drawn by hand).
    let c = AugmentConfig {
        crop_padding: 2,
        ..AugmentConfig::none()
    };
    let mut a = img();
    let mut scratch = vec![0.0; a.len()];
    c.apply(&mut a, &mut scratch, S, &mut rng_for(1, &[7]));
    let mut rng = rng_for(1, &[7]);
    let _flip = rng.random::<f32>();
    let _angle = rng.random_range(-1.0f32..=1.0);
    let _scale = rng.random::<f32>();
    let _tx = rng.random_range(-1.0f32..=1.0);
    let _ty = rng.random_range(-1.0f32..=1.0);
    let dy = rng.random_range(0..=4usize);
    let dx = rng.random_range(0..=4usize);
    let mut b = vec![0.0; a.len()];
    crop_with_padding(&img(), &mut b, S, 2, dy, dx);
    assert_eq!(a, b);
}

#[test]
fn validate_names_the_key() {
    for (c, key) in [
        (
            AugmentConfig {
                resized_crop_min: 0.0,
                ..AugmentConfig::none()
            },
            "resized-crop-min",
        ),
        (
            AugmentConfig {
                noise_std: -1.0,
                ..AugmentConfig::none()
            },
            "noise-std",
        ),
        (
            AugmentConfig {
                erase_probability: 2.0,
                ..AugmentConfig::none()
            },
            "erase-probability",
        ),
    ] {
        assert!(c.validate().unwrap_err().to_string().contains(key), "{key}");
    }
    let c = AugmentConfig {
        rotate_degrees: 400.0,
        ..AugmentConfig::none()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("rotate-degrees")
    );
    let n = Normalize {
        mean: vec![0.5; 2],
        std: vec![0.0],
    };
    assert!(n.validate(2).unwrap_err().to_string().contains("std"));
    assert!(n.validate(3).is_err());
}
