//! Image files in: preprocessing exactly as training does it, what it had to change, and
//! the input check against the training data.

use super::*;

impl SiameseModel {
    /// What [`preprocess`](Self::preprocess) does to `img` beyond scaling and normalising,
    /// when the image does not match the model's input spec: a resize, colour dropped to
    /// gray, gray copied to three channels, an alpha channel discarded. Empty for an image
    /// the model takes as it is. The text says what was done, so that a surprising distance
    /// can be traced to its input.
    #[cfg(feature = "image")]
    pub fn input_adjustments(&self, img: &image::DynamicImage) -> Vec<InputAdjustment> {
        use image::ColorType as C;
        let s = &self.meta.config.input;
        let mut out = Vec::new();
        let (w, h) = (img.width() as usize, img.height() as usize);
        if (h, w) != (s.height, s.width) {
            out.push(InputAdjustment {
                kind: "resized",
                detail: format!(
                    "resized from {w}×{h} to the model's {}×{}{}",
                    s.width,
                    s.height,
                    if w * s.height != h * s.width {
                        " (aspect ratio not kept)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let ct = img.color();
        if ct.has_alpha() {
            out.push(InputAdjustment {
                kind: "alpha-dropped",
                detail: "its alpha channel was discarded".into(),
            });
        }
        let colour = matches!(
            ct,
            C::Rgb8 | C::Rgba8 | C::Rgb16 | C::Rgba16 | C::Rgb32F | C::Rgba32F
        );
        if s.channels == 1 && colour {
            // Only a loss when the image has colour: an RGB file of gray pixels is gray.
            let rgb = img.to_rgb8();
            let tinted = rgb.pixels().any(|p| p[0] != p[1] || p[1] != p[2]);
            if tinted {
                out.push(InputAdjustment {
                    kind: "converted-to-gray",
                    detail:
                        "a colour image, converted to gray for a gray model (its colour is lost)"
                            .into(),
                });
            }
        } else if s.channels == 3 && !colour {
            out.push(InputAdjustment {
                kind: "gray-to-rgb",
                detail: "a gray image, copied to three channels for a colour model".into(),
            });
        }
        out
    }

    /// Converts a decoded image into a (1, C, H, W) tensor exactly as in training: resize to
    /// the input size (triangle filter), gray or RGB, scale to [0, 1], normalise.
    /// [`input_adjustments`](Self::input_adjustments) says what of this an image needed.
    #[cfg(feature = "image")]
    pub fn preprocess(&self, img: &image::DynamicImage) -> Result<Tensor> {
        let s = &self.meta.config.input;
        let img = if (img.height() as usize, img.width() as usize) != (s.height, s.width) {
            img.resize_exact(
                s.width as u32,
                s.height as u32,
                image::imageops::FilterType::Triangle,
            )
        } else {
            img.clone()
        };
        let plane = s.height * s.width;
        let mut v = vec![0f32; s.channels * plane];
        match s.channels {
            1 => {
                for (o, p) in v.iter_mut().zip(img.to_luma8().into_raw()) {
                    *o = f32::from(p) / 255.0;
                }
            }
            3 => {
                for (i, px) in img.to_rgb8().into_raw().chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        v[c * plane + i] = f32::from(px[c]) / 255.0;
                    }
                }
            }
            c => {
                return Err(ModelError::Config(format!(
                    "cannot preprocess images for {c} channels"
                )));
            }
        }
        for c in 0..s.channels {
            let m = s.mean[if s.mean.len() == 1 { 0 } else { c }];
            let sd = s.std[if s.std.len() == 1 { 0 } else { c }];
            for x in &mut v[c * plane..(c + 1) * plane] {
                *x = (*x - m) / sd;
            }
        }
        Ok(Tensor::from_vec(
            v,
            (1, s.channels, s.height, s.width),
            &self.device,
        )?)
    }

    /// Decodes and preprocesses an image file into a (1, C, H, W) tensor.
    #[cfg(feature = "image")]
    pub fn load_image(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        self.preprocess(&open_image(path.as_ref())?)
    }

    /// Embeds a decoded image: (1, D).
    #[cfg(feature = "image")]
    pub fn embed_image(&self, img: &image::DynamicImage) -> Result<Tensor> {
        self.embed(&self.preprocess(img)?)
    }

    /// Embeds an image file: (1, D).
    #[cfg(feature = "image")]
    pub fn embed_path(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        self.embed(&self.load_image(path)?)
    }

    /// Compares two image files.
    #[cfg(feature = "image")]
    pub fn compare_paths(&self, a: impl AsRef<Path>, b: impl AsRef<Path>) -> Result<Comparison> {
        self.compare(&self.load_image(a)?, &self.load_image(b)?)
    }

    /// Compares two image files, with what preprocessing did to each
    /// ([`input_adjustments`](Self::input_adjustments)) and how each is unlike the training
    /// data ([`input_warnings`](Self::input_warnings)).
    #[cfg(feature = "image")]
    pub fn compare_paths_noted(
        &self,
        a: impl AsRef<Path>,
        b: impl AsRef<Path>,
    ) -> Result<(Comparison, [InputNotes; 2])> {
        let (ia, ib) = (open_image(a.as_ref())?, open_image(b.as_ref())?);
        let (xa, xb) = (self.preprocess(&ia)?, self.preprocess(&ib)?);
        let c = self.compare(&xa, &xb)?;
        let mut warnings = self
            .input_warnings(&Tensor::cat(&[xa, xb], 0)?)?
            .into_iter();
        let mut notes = |img: &image::DynamicImage| InputNotes {
            adjustments: self.input_adjustments(img),
            warnings: warnings.next().unwrap_or_default(),
        };
        Ok((c, [notes(&ia), notes(&ib)]))
    }

    /// How each preprocessed input of an (N, C, H, W) batch is unlike the images the model
    /// was trained on, by the [input profile](crate::ood) stored at training time: one list
    /// per input, empty when it looks familiar or when the model has no profile.
    pub fn input_warnings(&self, x: &Tensor) -> Result<Vec<Vec<InputWarning>>> {
        Ok(self.embed_checked(x)?.1)
    }

    /// Embeds like [`embed`](Self::embed) and runs the input check on the same pass: the
    /// embeddings and, per input, its [`input_warnings`](Self::input_warnings).
    pub fn embed_checked(&self, x: &Tensor) -> Result<(Tensor, Vec<Vec<InputWarning>>)> {
        let Some(p) = &self.meta.input_profile else {
            return Ok((self.embed(x)?, vec![Vec::new(); x.dim(0)?]));
        };
        let (e, norms) = self.embed_with_norms(x)?;
        let stats = crate::ood::image_stats(x, &self.meta.config.input, &norms)?;
        let near = p.nearest(&e, self.distance_kind())?;
        let w = stats.iter().zip(near).map(|(s, d)| p.check(s, d)).collect();
        Ok((e, w))
    }
}

/// What [`SiameseModel::compare_paths_noted`] says about one input.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct InputNotes {
    /// What preprocessing did to it.
    pub adjustments: Vec<InputAdjustment>,
    /// How it is unlike the training data.
    pub warnings: Vec<InputWarning>,
}

/// Decodes an image file; the error names it.
#[cfg(feature = "image")]
fn open_image(path: &Path) -> Result<image::DynamicImage> {
    image::open(path).map_err(|e| ModelError::Image {
        path: path.into(),
        msg: format!("cannot decode image: {e}"),
    })
}
