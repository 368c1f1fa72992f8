//! Probing a model: geometry, consistency, verification, retrieval and the baselines.

use super::*;

fn to_vec2(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, |m, v| if v.is_nan() || v > m { v } else { m })
}

/// The geometry of `emb` (N, D) under `distance`, over at most its first 2,000 rows.
pub fn geometry(emb: &Tensor, distance: Distance) -> Result<Geometry> {
    let n = emb.dim(0)?.min(2000);
    let d = emb.dim(1)?;
    let e = emb.narrow(0, 0, n)?;
    let x = to_vec2(&e)?;
    let mean_norm = x
        .chunks_exact(d)
        .map(|r| r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n.max(1) as f64;
    let m = n.min(1000);
    let sub = e.narrow(0, 0, m)?;
    let pd = to_vec2(&distance.pairwise(&sub, &sub)?)?;
    let mean_pairwise_distance = if m > 1 {
        pd.iter().map(|v| f64::from(*v)).sum::<f64>() / (m * (m - 1)) as f64
    } else {
        0.0
    };
    let (cov, _) = crate::project::covariance(&x, n, d);
    let vars: Vec<f64> = (0..d).map(|i| cov[i * d + i]).collect();
    let max_var = vars.iter().copied().fold(0.0, f64::max);
    let (eig, _) = crate::project::sym_eigen(&cov, d);
    let total: f64 = eig.iter().map(|l| l.max(0.0)).sum();
    Ok(Geometry {
        points: n,
        dims: d,
        mean_norm,
        mean_pairwise_distance,
        mean_dim_variance: vars.iter().sum::<f64>() / d as f64,
        dead_dims: vars.iter().filter(|&&v| v <= 1e-10 * max_var).count(),
        effective_rank: crate::project::effective_rank(&eig),
        top_component_share: if total > 0.0 {
            eig[0].max(0.0) / total
        } else {
            1.0
        },
    })
}

/// Probes whether `model` answers consistently on `images` (at least 2): alone versus in a
/// batch, twice in a row, symmetric distances, and its BatchNorm statistics. The model is left
/// as it was found.
pub fn consistency(model: &SiameseModel, images: &Tensor) -> Result<Consistency> {
    let n = images.dim(0)?.min(64);
    if n < 2 {
        return Err(EvalError::Invalid(
            "consistency probes need at least 2 images".into(),
        ));
    }
    let x = images.narrow(0, 0, n)?;
    let batch = model.embed(&x)?;
    let again = model.embed(&x)?;
    let bv = to_vec2(&batch)?;
    let d = batch.dim(1)?;
    let norm = bv
        .chunks_exact(d)
        .map(|r| r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n as f64;
    let scale = norm.max(1e-12);
    let mut alone = 0f64;
    for i in 0..n.min(8) {
        let e = to_vec2(&model.embed(&x.narrow(0, i, 1)?)?)?;
        alone = alone.max(max_abs_diff(&e, &bv[i * d..(i + 1) * d]));
    }
    let repeat = max_abs_diff(&to_vec2(&again)?, &bv);
    let half = n / 2;
    let (a, b) = (batch.narrow(0, 0, half)?, batch.narrow(0, half, half)?);
    let dab = to_vec2(&model.distance(&a, &b)?)?;
    let dba = to_vec2(&model.distance(&b, &a)?)?;
    let mean_d = dab.iter().map(|v| f64::from(v.abs())).sum::<f64>() / half as f64;
    let asymmetry = max_abs_diff(&dab, &dba) / mean_d.max(1e-12);

    // BatchNorm: which layers still hold their initial statistics, and how far batch
    // statistics move the embedding (restoring the running statistics afterwards, since a
    // training-mode forward updates them).
    let stats: Vec<(String, Tensor)> = {
        let data = model.varmap().data().lock().expect("var map lock");
        data.iter()
            .filter(|(k, _)| k.ends_with(".running_mean") || k.ends_with(".running_var"))
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect::<candle_core::Result<Vec<_>>>()?
    };
    let mut layers = 0;
    let mut at_init = 0;
    for (k, t) in &stats {
        if let Some(prefix) = k.strip_suffix(".running_mean") {
            layers += 1;
            let mean = to_vec2(t)?;
            let var_key = format!("{prefix}.running_var");
            let var = match stats.iter().find(|(k2, _)| *k2 == var_key) {
                Some((_, v)) => to_vec2(v)?,
                None => continue,
            };
            if mean.iter().all(|&v| v == 0.0) && var.iter().all(|&v| v == 1.0) {
                at_init += 1;
            }
        }
    }
    let train_eval_shift = if layers > 0 {
        let t = model.forward_t(&x, true);
        {
            let data = model.varmap().data().lock().expect("var map lock");
            for (k, v) in &stats {
                if let Some(var) = data.get(k) {
                    var.set(v)?;
                }
            }
        }
        let tv = to_vec2(&t?)?;
        let shift = tv
            .chunks_exact(d)
            .zip(bv.chunks_exact(d))
            .map(|(p, q)| {
                p.iter()
                    .zip(q)
                    .map(|(u, v)| f64::from(u - v).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / n as f64;
        let g = geometry(&batch, model.distance_kind())?;
        Some(shift / g.mean_pairwise_distance.max(1e-12))
    } else {
        None
    };
    Ok(Consistency {
        alone_vs_batch: alone / scale,
        repeat: repeat / scale,
        asymmetry,
        batchnorm_layers: layers,
        batchnorm_at_init: at_init,
        train_eval_shift,
    })
}

fn quantile(v: &[f32], same: &[f32], want_same: bool, q: f64) -> f64 {
    let mut s: Vec<f64> = v
        .iter()
        .zip(same)
        .filter(|(_, s)| (**s == 1.0) == want_same)
        .map(|(d, _)| f64::from(*d))
        .collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (pos - lo as f64) * (s[hi] - s[lo])
}

/// Leave-one-out precision@1 within the rows of `emb` whose `is_seen` flag equals `want`;
/// `None` when they hold fewer than two classes.
fn subset_precision_at_1(
    emb: &Tensor,
    labels: &[u32],
    is_seen: &[bool],
    want: bool,
    distance: Distance,
) -> Result<Option<f64>> {
    let rows: Vec<u32> = (0..labels.len() as u32)
        .filter(|&i| is_seen[i as usize] == want)
        .collect();
    let sub_labels: Vec<u32> = rows.iter().map(|&i| labels[i as usize]).collect();
    let mut distinct = sub_labels.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 2 {
        return Ok(None);
    }
    let idx = Tensor::from_vec(rows.clone(), rows.len(), emb.device())?;
    let sub = emb.index_select(&idx, 0)?;
    Ok(Some(
        retrieval(&sub, &sub_labels, None, distance, 256)?.precision_at_1,
    ))
}

/// Measures everything [`findings`] needs. `context` says how the model was trained;
/// `history` and `generalization` come from its run folder when known.
pub fn measure(
    probe: &Probe<'_>,
    context: Context,
    history: Option<History>,
    generalization: Option<Generalization>,
) -> Result<(Measurements, Evidence)> {
    let model = probe.model;
    let n = probe.images.dim(0)?;
    if n != probe.labels.len() {
        return Err(EvalError::Invalid(format!(
            "{n} images for {} labels",
            probe.labels.len()
        )));
    }
    let emb = model.embed_chunked(probe.images, 512)?;
    let ev = to_vec2(&emb)?;
    let dims = emb.dim(1)?;
    let non_finite_embeddings = ev
        .chunks_exact(dims)
        .filter(|r| r.iter().any(|v| !v.is_finite()))
        .count();
    let (pa, pb, same) = probe.pairs;
    // Non-finite distances would stop every metric: they become the largest distance here and
    // the `non-finite` finding reports them.
    let finite = pair_distances(&emb, pa, pb, model.distance_kind())?;
    let stored_threshold = model.meta().threshold;
    let best_threshold = calibrate(&finite, same, Calibration::BalancedAccuracy)?;
    let best_balanced_accuracy = accuracy_at(&finite, same, best_threshold)?.1;
    let used = stored_threshold.unwrap_or(best_threshold);
    let verification = verification(&finite, same, Some(used))?;
    let (mut ta, mut tr, mut pos, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for (&d, &s) in finite.iter().zip(same) {
        if s == 1.0 {
            pos += 1;
            ta += usize::from(d <= used);
        } else {
            neg += 1;
            tr += usize::from(d > used);
        }
    }
    let margin = context.margin.unwrap_or(1.0);
    let stats = distance_stats(&finite, same, margin)?;
    let clean = if non_finite_embeddings > 0 {
        Tensor::from_vec(
            ev.iter()
                .map(|v| if v.is_finite() { *v } else { 0.0 })
                .collect::<Vec<_>>(),
            (n, dims),
            &Device::Cpu,
        )?
    } else {
        emb.to_device(&Device::Cpu)?
    };
    let retrieval_report = retrieval(&clean, probe.labels, None, model.distance_kind(), 256)?;
    let geometry = geometry(&clean, model.distance_kind())?;
    let consistency = consistency(model, probe.images)?;
    let mut baseline_embeddings = None;
    let (pixels, untrained, untrained_auc) = if probe.baselines {
        let flat = probe.images.flatten_from(1)?.to_device(&Device::Cpu)?;
        let px = retrieval(&flat, probe.labels, None, Distance::Euclidean, 256)?;
        let fresh = SiameseModel::new(model.config(), 0, model.device())?;
        let ue = fresh.embed_chunked(probe.images, 512)?;
        let un = retrieval(&ue, probe.labels, None, model.distance_kind(), 256)?;
        let ud = pair_distances(&ue, pa, pb, model.distance_kind())?;
        baseline_embeddings = Some((flat, ue.to_device(&Device::Cpu)?));
        (
            Some(px.precision_at_1),
            Some(un.precision_at_1),
            Some(roc(&ud, same)?.auc()),
        )
    } else {
        (None, None, None)
    };
    let classes = match probe.seen_labels {
        Some(seen) => {
            let is_seen: Vec<bool> = probe.labels.iter().map(|l| seen.contains(l)).collect();
            let p1 = |e: &Tensor, want: bool, d: Distance| -> Result<Option<f64>> {
                subset_precision_at_1(e, probe.labels, &is_seen, want, d)
            };
            let count = |want: bool| {
                let mut c: Vec<u32> = probe
                    .labels
                    .iter()
                    .zip(&is_seen)
                    .filter(|(_, s)| **s == want)
                    .map(|(l, _)| *l)
                    .collect();
                c.sort_unstable();
                c.dedup();
                c.len()
            };
            let dk = model.distance_kind();
            let (upx, uun, sun) = match &baseline_embeddings {
                Some((flat, ue)) => (
                    p1(flat, false, Distance::Euclidean)?,
                    p1(ue, false, dk)?,
                    p1(ue, true, dk)?,
                ),
                None => (None, None, None),
            };
            Some(ClassBreakdown {
                seen_classes: count(true),
                unseen_classes: count(false),
                seen_precision_at_1: p1(&clean, true, dk)?,
                seen_untrained_precision_at_1: sun,
                unseen_precision_at_1: p1(&clean, false, dk)?,
                unseen_untrained_precision_at_1: uun,
                unseen_pixels_precision_at_1: upx,
            })
        }
        None => None,
    };
    let roc = roc(&finite, same)?;
    let input_check = super::inputs::input_check(model, probe.images)?;
    // Dead units mean nothing in a model whose weights are not finite.
    let relu_activity = if probe.non_finite_weights.is_empty() {
        model.relu_activity(probe.images)?
    } else {
        Vec::new()
    };
    let m = Measurements {
        input_check,
        relu_activity,
        data_quality: None,
        context,
        verification,
        best_threshold,
        best_balanced_accuracy,
        stored_threshold,
        true_accept_rate: ta as f64 / pos.max(1) as f64,
        true_reject_rate: tr as f64 / neg.max(1) as f64,
        retrieval: retrieval_report,
        stats,
        different_median: quantile(&finite, same, false, 0.5),
        same_p95: quantile(&finite, same, true, 0.95),
        geometry,
        consistency,
        pixels_precision_at_1: pixels,
        untrained_precision_at_1: untrained,
        untrained_roc_auc: untrained_auc,
        non_finite_weights: probe.non_finite_weights.clone(),
        non_finite_embeddings,
        history,
        generalization,
        classes,
    };
    let evidence = Evidence {
        embeddings: ev,
        dims,
        labels: probe.labels.to_vec(),
        class_names: probe.class_names.to_vec(),
        distances: finite,
        same: same.to_vec(),
        roc,
    };
    Ok((m, evidence))
}

/// Distances of the pairs (`a[k]`, `b[k]`) of rows of `emb` under `kind`, with non-finite
/// values replaced by `f32::MAX`.
fn pair_distances(emb: &Tensor, a: &[usize], b: &[usize], kind: Distance) -> Result<Vec<f32>> {
    let index = |v: &[usize]| {
        Tensor::from_vec(
            v.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            v.len(),
            emb.device(),
        )
    };
    let (ea, eb) = (
        emb.index_select(&index(a)?, 0)?,
        emb.index_select(&index(b)?, 0)?,
    );
    Ok(to_vec2(&kind.rowwise(&ea, &eb)?)?
        .into_iter()
        .map(|d| if d.is_finite() { d } else { f32::MAX })
        .collect())
}
