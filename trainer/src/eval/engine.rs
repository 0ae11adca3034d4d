//! The evaluation loop: image blocks × defences × threats as jobs on worker threads,
//! attacks as a cascade.

use std::collections::BTreeMap;
use std::time::Instant;

use pursamere_core::{Layer, Model, PurifierConfig, StepRule};
use serde_json::{json, Value};

use super::protocol::Protocol;
use super::report::{self, Report};
use super::results::{sha256_hex, CheckRecord, Record, ResultsDir};
use super::{deployed, workers};
use super::{EvalError, EvalOptions, Observer};
use crate::attack::{
    apgd, fab_t, gather_rows, pgd, square, ApgdConfig, AttackLoss, AttackNorm, ClassifierOracle,
    DenoisedOracle, FabConfig, GradientOracle, PgdConfig, PurifiedOracle, PurifierGradient,
    SquareConfig, StepSchedule,
};
use crate::data::Dataset;
use crate::model::FloatModel;

/// Version of the engine's attack definitions: part of the settings, so results of
/// an engine that attacks differently are never mixed with this one's.
/// 4: FAB-T (`fab-t`), in the standard preset after APGD-T.
pub const ENGINE_VERSION: u32 = 4;

/// The core's verdict (predicted labels) for one defence.
#[derive(Clone, Copy)]
enum Judge<'m> {
    Purify(&'m Model<'m>, PurifierConfig),
    Denoise(&'m Model<'m>),
    Classify(&'m Model<'m>),
}

impl Judge<'_> {
    /// The deployed system's logits (what Square queries).
    fn logits(&self, x: &[f32]) -> Result<Vec<f32>, EvalError> {
        Ok(match self {
            Judge::Purify(m, c) => deployed::logits(m, Some(c), false, x)?,
            Judge::Denoise(m) => deployed::logits(m, None, true, x)?,
            Judge::Classify(m) => deployed::logits(m, None, false, x)?,
        })
    }

    fn predict(&self, x: &[f32]) -> Result<Vec<usize>, EvalError> {
        Ok(match self {
            Judge::Purify(m, c) => deployed::purify_classify(m, c, x, &|| {})?.1,
            Judge::Denoise(m) => deployed::denoise_classify(m, x)?,
            Judge::Classify(m) => deployed::classify(m, x)?,
        })
    }
}

type Oracle = Box<dyn GradientOracle + Sync>;

/// One defence with its verdict and its white-box oracles.
struct Defence<'m> {
    name: String,
    purifier: Option<PurifierConfig>,
    judge: Judge<'m>,
    /// Exact gradient of the whole defended system (the classifier for "none").
    full: Oracle,
    /// BPDA (identity backward through the purifier).
    bpda: Oracle,
    /// A smooth stand-in for a sign-step purifier.
    surrogate: Option<Oracle>,
    /// The whole defended system with the classifier's input quantisations
    /// removed (its float twin), for "square-twin".
    twin: Option<Oracle>,
}

fn purifier_for(name: &str, base: &PurifierConfig, p: &Protocol) -> Option<PurifierConfig> {
    match name {
        "ere" => Some(PurifierConfig { rho: 0.0, ..*base }),
        "pursamere" => Some(PurifierConfig {
            rho: if base.rho > 0.0 { base.rho } else { p.rho },
            ..*base
        }),
        _ => None,
    }
}

/// The oracle of the whole defended system `name` (purifier `cfg`) on `fm`, with
/// the purifier's exact gradient (`Full`) or the identity for it (`Bpda`).
fn system_oracle(
    fm: &FloatModel,
    name: &str,
    cfg: Option<PurifierConfig>,
    d: usize,
    grad: PurifierGradient,
) -> Oracle {
    match cfg {
        Some(c) => Box::new(PurifiedOracle::new(
            &fm.denoiser,
            &fm.classifier,
            d,
            c,
            grad,
        )),
        None if name == "denoise" => {
            Box::new(DenoisedOracle::new(&fm.denoiser, &fm.classifier, d, grad))
        }
        None => Box::new(ClassifierOracle::new(&fm.classifier, d)),
    }
}

/// The defences of the protocol; `twin`, the model's float twin, when an attack
/// queries it.
fn build_defences<'m>(
    model: &'m Model<'m>,
    fm: &FloatModel,
    twin: Option<&FloatModel>,
    p: &Protocol,
    base: &PurifierConfig,
) -> Result<Vec<Defence<'m>>, EvalError> {
    let d = model.input_len();
    let mut out = Vec::new();
    for name in &p.defences {
        let cfg = purifier_for(name, base, p);
        let judge = match (name.as_str(), cfg) {
            (_, Some(c)) => Judge::Purify(model, c),
            ("denoise", None) => Judge::Denoise(model),
            _ => Judge::Classify(model),
        };
        let bpda = system_oracle(fm, name, cfg, d, PurifierGradient::Bpda);
        let full = system_oracle(fm, name, cfg, d, PurifierGradient::Full);
        let twin = twin.map(|t| system_oracle(t, name, cfg, d, PurifierGradient::Full));
        let surrogate: Option<Oracle> = match cfg {
            Some(c) if c.step == StepRule::Sign => Some(Box::new(PurifiedOracle::new(
                &fm.denoiser,
                &fm.classifier,
                d,
                PurifierConfig {
                    step: StepRule::Gradient,
                    eta: p.surrogate_eta,
                    ..c
                },
                PurifierGradient::Full,
            ))),
            _ => None,
        };
        out.push(Defence {
            name: name.clone(),
            purifier: cfg,
            judge,
            full,
            bpda,
            surrogate,
            twin,
        });
    }
    Ok(out)
}

fn purifier_json(c: &PurifierConfig) -> Value {
    json!({
        "sigma": c.sigma, "noise_samples": c.noise_samples, "iters": c.iters, "eta": c.eta,
        "rho": c.rho, "radius": c.radius, "norm": format!("{:?}", c.norm),
        "step": format!("{:?}", c.step), "seed": c.seed,
    })
}

/// Whether the classifier has int8-activation layers (a model converted by
/// `pursamere int8`), whose input rounding Square cannot see through.
pub(crate) fn has_int8_classifier(model: &Model<'_>) -> bool {
    model
        .spec()
        .classifier
        .layers
        .iter()
        .any(|l| matches!(l, Layer::Int8Dense(_) | Layer::Int8Conv2d(_)))
}

/// The settings a result depends on (everything but the image range, the batch
/// size — bound by `data.json` instead, [`ResultsDir::bind_data`] — and the output
/// directory).
fn settings(model_bytes: &[u8], p: &Protocol, opts: &EvalOptions) -> Value {
    let mut proto = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut proto {
        // `check_every_eps` too: it changes no record (checks are keyed by their ε).
        for k in ["images", "start", "batch", "check_every_eps"] {
            m.remove(k);
        }
    }
    let defences: BTreeMap<&str, Value> = p
        .defences
        .iter()
        .map(|n| {
            (
                n.as_str(),
                purifier_for(n, &opts.purifier, p).map_or(Value::Null, |c| purifier_json(&c)),
            )
        })
        .collect();
    json!({
        "engine_version": ENGINE_VERSION,
        "model_sha256": sha256_hex(model_bytes),
        "data": {"name": opts.data_name, "split": p.split},
        "defences": defences,
        "protocol": proto,
    })
}

/// Shared, read-only state of one run.
struct Ctx<'a> {
    p: &'a Protocol,
    d: usize,
    classes: usize,
    shape: (usize, usize, usize),
    undefended: &'a ClassifierOracle,
    schedule: StepSchedule,
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    fn pgd_cfg(
        &self,
        norm: AttackNorm,
        eps: f32,
        loss: AttackLoss,
        steps: usize,
        restarts: usize,
        seed: u64,
        early_stop: bool,
    ) -> PgdConfig {
        let peak = match self.schedule {
            StepSchedule::Constant => 2.5,
            StepSchedule::Cosine => 5.0,
        } / steps as f32;
        PgdConfig {
            norm,
            eps,
            steps,
            step_size: eps * self.p.step_size.unwrap_or(peak),
            schedule: self.schedule,
            loss,
            random_start: true,
            restarts,
            seed,
            early_stop,
        }
    }

    fn losses(&self) -> Vec<AttackLoss> {
        self.p
            .losses
            .iter()
            .map(|l| match l.as_str() {
                "margin" => AttackLoss::Margin,
                "dlr" => AttackLoss::Dlr,
                _ => AttackLoss::CrossEntropy,
            })
            .collect()
    }
}

/// Positions of `alive` whose core prediction on `adv` (one row per entry of
/// `alive`) is still the label.
fn survivors(
    judge: &Judge,
    adv: &[f32],
    alive: &[usize],
    y: &[usize],
) -> Result<Vec<usize>, EvalError> {
    let pred = judge.predict(adv)?;
    Ok(alive
        .iter()
        .zip(&pred)
        .filter(|(&k, &pl)| pl == y[k])
        .map(|(&k, _)| k)
        .collect())
}

/// Runs one attack on the examples `alive` (positions in `x`, `y`) and returns
/// those the deployed system still classifies correctly. `fresh_starts`: every
/// restart starts at a random point (the restart check), also for FAB-T, whose
/// first run otherwise starts at the clean input.
#[allow(clippy::too_many_arguments)]
fn attack(
    ctx: &Ctx,
    name: &str,
    def: &Defence,
    norm: AttackNorm,
    eps: f32,
    x: &[f32],
    y: &[usize],
    alive: &[usize],
    steps: usize,
    restarts: usize,
    seed: u64,
    fresh_starts: bool,
) -> Result<Vec<usize>, EvalError> {
    let d = ctx.d;
    let mut alive = alive.to_vec();
    let labels = |a: &[usize]| a.iter().map(|&k| y[k]).collect::<Vec<usize>>();
    let run_pgd = |oracle: &dyn GradientOracle,
                   early_stop: bool,
                   mut alive: Vec<usize>|
     -> Result<Vec<usize>, EvalError> {
        for loss in ctx.losses() {
            if alive.is_empty() {
                break;
            }
            let pc = ctx.pgd_cfg(norm, eps, loss, steps, restarts, seed, early_stop);
            let adv = pgd(oracle, &gather_rows(x, d, &alive), &labels(&alive), &pc);
            alive = survivors(&def.judge, &adv, &alive, y)?;
        }
        Ok(alive)
    };
    let run_apgd = |oracle: &dyn GradientOracle,
                    loss: AttackLoss,
                    rank: usize,
                    alive: Vec<usize>|
     -> Result<Vec<usize>, EvalError> {
        if alive.is_empty() {
            return Ok(alive);
        }
        let cfg = ApgdConfig {
            norm,
            eps,
            steps,
            loss,
            restarts,
            seed: seed.wrapping_add(rank as u64 * 7_919),
            target_rank: rank,
        };
        let r = apgd(oracle, &gather_rows(x, d, &alive), &labels(&alive), &cfg);
        survivors(&def.judge, &r.adv, &alive, y)
    };
    // One target rank per call, judged by the core in between like APGD-T, so an
    // example whose FAB point the core does not accept meets the next target.
    let run_fab = |rank: usize, alive: Vec<usize>| -> Result<Vec<usize>, EvalError> {
        if alive.is_empty() {
            return Ok(alive);
        }
        let cfg = FabConfig {
            steps,
            restarts,
            targets: 1,
            target_rank: rank,
            seed: seed.wrapping_add(rank as u64 * 7_919),
            random_first_start: fresh_starts,
            ..FabConfig::new(norm, eps)
        };
        let r = fab_t(
            def.full.as_ref(),
            &gather_rows(x, d, &alive),
            &labels(&alive),
            &cfg,
        );
        // Only the fooled points go to the core: the others are the clean inputs,
        // which it already classifies correctly (every example alive is).
        let fooled: Vec<usize> = (0..alive.len()).filter(|&j| r.fooled[j]).collect();
        if fooled.is_empty() {
            return Ok(alive);
        }
        let kept = survivors(
            &def.judge,
            &gather_rows(&r.adv, d, &fooled),
            &fooled.iter().map(|&j| alive[j]).collect::<Vec<_>>(),
            y,
        )?;
        Ok((0..alive.len())
            .filter(|&j| !r.fooled[j] || kept.contains(&alive[j]))
            .map(|j| alive[j])
            .collect())
    };
    // The target classes of APGD-T and FAB-T, by rank (2 = the runner-up).
    let target_ranks = 2..(2 + ctx.p.apgd_targets).min(ctx.classes + 1);
    match name {
        "transfer" => alive = run_pgd(ctx.undefended, false, alive)?,
        "full" => alive = run_pgd(def.full.as_ref(), true, alive)?,
        "bpda" => alive = run_pgd(def.bpda.as_ref(), true, alive)?,
        "surrogate" => {
            if let Some(s) = &def.surrogate {
                alive = run_pgd(s.as_ref(), true, alive)?;
            }
        }
        "apgd-ce" => alive = run_apgd(def.full.as_ref(), AttackLoss::CrossEntropy, 2, alive)?,
        "apgd-dlr" => alive = run_apgd(def.full.as_ref(), AttackLoss::Dlr, 2, alive)?,
        "apgd-bpda" => alive = run_apgd(def.bpda.as_ref(), AttackLoss::CrossEntropy, 2, alive)?,
        "apgd-t" => {
            for rank in target_ranks {
                alive = run_apgd(def.full.as_ref(), AttackLoss::DlrTargeted, rank, alive)?;
            }
        }
        "fab-t" => {
            for rank in target_ranks {
                alive = run_fab(rank, alive)?;
            }
        }
        "square" => {
            // Queries go to the deployed system itself (the int8 core, batched over
            // threads) or, with `square_target = "reference"`, to the float
            // reference of the whole defended system; the verdict is the core's.
            let failed = std::cell::RefCell::new(None);
            let query = |b: &[f32]| -> Vec<f32> {
                if ctx.p.square_target == "reference" {
                    return def.full.logits(b);
                }
                def.judge.logits(b).unwrap_or_else(|e| {
                    failed.borrow_mut().get_or_insert(e);
                    vec![f32::NAN; b.len() / d.max(1) * ctx.classes]
                })
            };
            let adv = run_square(ctx, norm, eps, seed, x, y, &alive, query);
            if let Some(e) = failed.into_inner() {
                return Err(e);
            }
            if let Some(adv) = adv {
                alive = survivors(&def.judge, &adv, &alive, y)?;
            }
        }
        // Square against the float twin (the input quantisations removed), judged by
        // the deployed system: rounding hides most of Square's small random changes
        // from an int8 model, so its search stalls there but not on the twin.
        "square-twin" => {
            let Some(twin) = &def.twin else {
                return Err(EvalError::Protocol(
                    "square-twin runs without the model's float twin".into(),
                ));
            };
            if let Some(adv) = run_square(ctx, norm, eps, seed, x, y, &alive, |b| twin.logits(b)) {
                alive = survivors(&def.judge, &adv, &alive, y)?;
            }
        }
        o => return Err(EvalError::Protocol(format!("unknown attack `{o}`"))),
    }
    Ok(alive)
}

/// Square on the examples `alive` with the protocol's settings, its queries
/// answered by `query`: the adversarial rows (one per entry of `alive`), or `None`
/// when none is alive.
#[allow(clippy::too_many_arguments)]
fn run_square(
    ctx: &Ctx,
    norm: AttackNorm,
    eps: f32,
    seed: u64,
    x: &[f32],
    y: &[usize],
    alive: &[usize],
    query: impl Fn(&[f32]) -> Vec<f32>,
) -> Option<Vec<f32>> {
    if alive.is_empty() {
        return None;
    }
    let (c, h, w) = ctx.shape;
    let cfg = SquareConfig {
        norm,
        eps,
        queries: ctx
            .p
            .square_queries
            .unwrap_or(super::protocol::DEFAULT_SQUARE_QUERIES),
        p_init: ctx.p.square_p_init,
        seed,
        channels: c,
        height: h,
        width: w,
    };
    let labels: Vec<usize> = alive.iter().map(|&k| y[k]).collect();
    Some(square(query, &gather_rows(x, ctx.d, alive), &labels, &cfg).adv)
}

/// Pixels (row-major) and labels of the images `idx`.
fn images(data: &Dataset, idx: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let x = idx
        .iter()
        .flat_map(|&i| data.image_f32(i).unwrap_or_default())
        .collect();
    let y = idx.iter().map(|&i| usize::from(data.labels[i])).collect();
    (x, y)
}

/// Runs the evaluation described by `p` (already [`Protocol::resolved`]) of the
/// model in `model_bytes` on `data`, writing results and reports into
/// `opts.out`. A run that stops resumes where it stopped when started again with
/// the same settings.
pub fn run(
    model_bytes: &[u8],
    data: &Dataset,
    p: &Protocol,
    opts: &EvalOptions,
    obs: &dyn Observer,
) -> Result<Report, EvalError> {
    let wall = Instant::now();
    let model = Model::parse(model_bytes)?;
    let p = &p.clone().for_model(&model);
    opts.purifier
        .validate()
        .map_err(|e| EvalError::Protocol(format!("purifier settings: {e}")))?;
    let range = p.range();
    if range.end > data.len() {
        return Err(EvalError::Protocol(format!(
            "images {}..{} (--start/--count, or the protocol's `start`/`images`) are outside the {} {} images",
            range.start,
            range.end,
            data.len(),
            p.split
        )));
    }
    let d = model.input_len();
    if data.channels * data.rows * data.cols != d {
        return Err(EvalError::Unsupported(format!(
            "the data's {}×{}×{} images do not match the model's input of {d} values",
            data.channels, data.rows, data.cols
        )));
    }
    let fm =
        FloatModel::from_spec(model.spec()).map_err(|e| EvalError::Unsupported(e.to_string()))?;
    let settings = settings(model_bytes, p, opts);
    let mut store = ResultsDir::open(&opts.out, &settings, opts.fresh)?;
    store.bind_data(&super::results::dataset_sha256(data), data.len(), p.batch)?;
    if !store.records.is_empty() {
        obs.note(&format!(
            "resuming: {} records of these settings (fingerprint {}) already in {}",
            store.records.len(),
            &store.fingerprint()[..12],
            opts.out.display()
        ));
    }
    if opts.purifier.rho > 0.0 && p.defences.iter().any(|d| d == "ere") {
        obs.note(&format!(
            "note: the `ere` defence is the purifier with ρ = 0 whatever --rho or the model \
             says; ρ = {} applies to the `pursamere` defence",
            opts.purifier.rho
        ));
    }
    let twin = p
        .attacks
        .iter()
        .any(|a| a == "square-twin")
        .then(|| fm.float_twin());
    let int8 = has_int8_classifier(&model);
    if int8 && twin.is_none() && p.attacks.iter().any(|a| a == "square") {
        obs.note(
            "warning: the classifier has int8 layers, whose input rounding stalls Square's \
             random search; add `square-twin` to `attacks` (docs/EVALUATION.md), or the \
             robust accuracy may be overstated",
        );
    }
    let defences = build_defences(&model, &fm, twin.as_ref(), p, &opts.purifier)?;
    let threats: Vec<(AttackNorm, f32)> = p
        .linf_eps
        .iter()
        .map(|&e| (AttackNorm::Linf, e))
        .chain(p.l2_eps.iter().map(|&e| (AttackNorm::L2, e)))
        .collect();
    let undefended = ClassifierOracle::new(&fm.classifier, d);
    let ctx = Ctx {
        p,
        d,
        classes: model.num_classes(),
        shape: (data.channels, data.rows, data.cols),
        undefended: &undefended,
        schedule: if p.step_schedule == "cosine" {
            StepSchedule::Cosine
        } else {
            StepSchedule::Constant
        },
    };
    let total = range.len() * defences.len() * threats.len();
    let in_range = |r: &Record| range.contains(&r.index);
    let mut done_count = store.records.iter().filter(|r| in_range(r)).count();
    // Where this run starts, so that a progress display times only this run's work
    // (a resumed run's records took no time now).
    obs.progress(done_count, total, "starting");
    let finished = store.finished();
    let indices: Vec<usize> = range.clone().collect();
    // The jobs of the main pass: (image block, defence, threat), image blocks
    // outermost, each with the block's images that have no record yet. A job's
    // seed is its first image's: its verdicts depend on its images only, never on
    // the thread that runs it or on when, so any number of threads gives the same
    // records.
    let mut jobs: Vec<(Vec<usize>, &Defence<'_>, AttackNorm, f32)> = Vec::new();
    for block in indices.chunks(p.batch) {
        for def in &defences {
            for &(norm, eps) in &threats {
                let chunk: Vec<usize> = block
                    .iter()
                    .copied()
                    .filter(|&i| {
                        !finished.contains(&(
                            i,
                            def.name.clone(),
                            norm.name().to_string(),
                            eps.to_bits(),
                        ))
                    })
                    .collect();
                if !chunk.is_empty() {
                    jobs.push((chunk, def, norm, eps));
                }
            }
        }
    }
    let fingerprint = store.fingerprint().to_string();
    let run_job = |chunk: &[usize],
                   def: &Defence<'_>,
                   norm: AttackNorm,
                   eps: f32|
     -> Result<Vec<Record>, EvalError> {
        let nn = norm.name();
        let n = chunk.len();
        let (x, y) = images(data, chunk);
        let seed = chunk[0] as u64;
        let clean = def.judge.predict(&x)?;
        let clean_correct: Vec<bool> = clean.iter().zip(&y).map(|(a, b)| a == b).collect();
        let mut alive: Vec<usize> = (0..n).filter(|&k| clean_correct[k]).collect();
        let mut grad_norm: Vec<Option<f32>> = vec![None; n];
        if def.purifier.is_some() && !alive.is_empty() {
            let out = def.full.evaluate(
                &gather_rows(&x, d, &alive),
                &alive.iter().map(|&k| y[k]).collect::<Vec<_>>(),
                // The margin does not saturate on confident examples the way
                // cross-entropy does, so its gradient norm says more.
                AttackLoss::Margin,
            );
            for (j, &k) in alive.iter().enumerate() {
                let g = &out.grad[j * d..(j + 1) * d];
                grad_norm[k] = Some(g.iter().map(|v| v * v).sum::<f32>().sqrt());
            }
        }
        let mut correct: Vec<BTreeMap<String, bool>> = vec![BTreeMap::new(); n];
        let mut seconds: Vec<BTreeMap<String, f64>> = vec![BTreeMap::new(); n];
        for name in &p.attacks {
            if (name == "surrogate" && def.surrogate.is_none()) || alive.is_empty() {
                continue;
            }
            let t = Instant::now();
            let before = alive.clone();
            alive = attack(
                &ctx, name, def, norm, eps, &x, &y, &before, p.steps, p.restarts, seed, false,
            )?;
            let per = t.elapsed().as_secs_f64() / n as f64;
            for &k in &before {
                correct[k].insert(name.clone(), alive.contains(&k));
            }
            // The attack's time spread over every image of the chunk, so the
            // records add up to the compute spent (and a row's mean is
            // seconds per image of the row).
            for sk in seconds.iter_mut() {
                sk.insert(name.clone(), per);
            }
        }
        let recs: Vec<Record> = (0..n)
            .map(|k| Record {
                fingerprint: fingerprint.clone(),
                index: chunk[k],
                defence: def.name.clone(),
                norm: nn.into(),
                eps,
                clean_correct: clean_correct[k],
                correct: std::mem::take(&mut correct[k]),
                grad_norm: grad_norm[k],
                seconds: std::mem::take(&mut seconds[k]),
            })
            .collect();
        Ok(recs)
    };
    let mut record_job = |recs: Vec<Record>| -> Result<(), EvalError> {
        let Some(first) = recs.first() else {
            return Ok(());
        };
        let (name, nn, eps) = (first.defence.clone(), first.norm.clone(), first.eps);
        done_count += recs.len();
        store.append(recs)?;
        let same: Vec<&Record> = store
            .records
            .iter()
            .filter(|r| in_range(r) && r.defence == name && r.norm == nn && r.eps == eps)
            .collect();
        let robust = same.iter().filter(|r| r.robust()).count();
        obs.progress(
            done_count,
            total,
            &format!(
                "{name} {nn} {eps}: robust {robust}/{} ({:.1} %)",
                same.len(),
                100.0 * robust as f64 / same.len().max(1) as f64
            ),
        );
        Ok(())
    };
    // Workers take the jobs in order; the records are appended as jobs finish (a
    // stopped run resumes from any set of finished jobs).
    workers::run_on_workers(
        opts.threads(),
        &jobs,
        |(chunk, def, norm, eps)| run_job(chunk, def, *norm, *eps),
        |_, recs| record_job(recs),
    )?;
    // Convergence checks on each norm's largest ε (every ε with `check_every_eps`):
    // new random starts (always when `restart_check`), twice the steps (with
    // `convergence_check`).
    let gradient_attacks: Vec<&String> = p
        .attacks
        .iter()
        .filter(|a| !["transfer", "square", "square-twin"].contains(&a.as_str()))
        .collect();
    let mut checks: Vec<(&str, usize, usize, u64)> = Vec::new();
    if p.restart_check && !gradient_attacks.is_empty() {
        checks.push((
            "restarts",
            p.steps,
            p.restart_check_restarts.max(1),
            1_000_003,
        ));
    }
    if p.convergence_check && !gradient_attacks.is_empty() {
        checks.push(("double-steps", 2 * p.steps, p.restarts, 2_000_003));
    }
    for &(check, steps, restarts, seed_offset) in &checks {
        for def in &defences {
            for norm in [AttackNorm::Linf, AttackNorm::L2] {
                let nn = norm.name();
                let of_norm = threats.iter().filter(|t| t.0 == norm).map(|t| t.1);
                let budgets: Vec<f32> = if p.check_every_eps {
                    of_norm.collect()
                } else {
                    of_norm.reduce(f32::max).into_iter().collect()
                };
                for eps in budgets {
                    let checked: std::collections::HashSet<usize> = store
                        .checks
                        .iter()
                        .filter(|c| {
                            c.check == check
                                && c.defence == def.name
                                && c.norm == nn
                                && c.eps == eps
                        })
                        .map(|c| c.index)
                        .collect();
                    let mut todo: Vec<usize> = store
                        .records
                        .iter()
                        .filter(|r| {
                            in_range(r)
                                && r.defence == def.name
                                && r.norm == nn
                                && r.eps == eps
                                && r.robust()
                                && !checked.contains(&r.index)
                        })
                        .map(|r| r.index)
                        .collect();
                    // In image order, not the order the main pass's jobs finished in
                    // (with worker threads, completion order): the chunks, and so their
                    // seeds, must not depend on timing.
                    todo.sort_unstable();
                    if todo.is_empty() {
                        continue;
                    }
                    let t = Instant::now();
                    let mut broken_total = 0;
                    // Chunks on every thread: a chunk's seed is its first image's, so the
                    // verdicts do not depend on which thread ran it or when (the records
                    // arrive in completion order; they are keyed by image).
                    let chunks: Vec<&[usize]> = todo.chunks(p.batch).collect();
                    let check_chunk = |chunk: &[usize]| -> Result<Vec<usize>, EvalError> {
                        let (x, y) = images(data, chunk);
                        let seed = chunk[0] as u64 + seed_offset;
                        let mut alive: Vec<usize> = (0..chunk.len()).collect();
                        for name in &gradient_attacks {
                            if (name.as_str() == "surrogate" && def.surrogate.is_none())
                                || alive.is_empty()
                            {
                                continue;
                            }
                            alive = attack(
                                &ctx,
                                name,
                                def,
                                norm,
                                eps,
                                &x,
                                &y,
                                &alive,
                                steps,
                                restarts,
                                seed,
                                check == "restarts",
                            )?;
                        }
                        Ok(alive)
                    };
                    workers::run_on_workers(
                        opts.threads(),
                        &chunks,
                        |chunk| check_chunk(chunk),
                        |chunk, alive| {
                            broken_total += chunk.len() - alive.len();
                            let recs = (0..chunk.len())
                                .map(|k| CheckRecord {
                                    fingerprint: store.fingerprint().to_string(),
                                    check: check.into(),
                                    index: chunk[k],
                                    defence: def.name.clone(),
                                    norm: nn.into(),
                                    eps,
                                    broken: !alive.contains(&k),
                                })
                                .collect();
                            store.append_checks(recs)
                        },
                    )?;
                    obs.note(&format!(
                    "{check} check {} {nn} {eps}: {broken_total} of {} survivors broken ({:.0} s)",
                    def.name,
                    todo.len(),
                    t.elapsed().as_secs_f64()
                ));
                }
            }
        }
    }
    let header = report::Header {
        model_sha256: sha256_hex(model_bytes),
        fingerprint: store.fingerprint().to_string(),
        commit: opts.commit.clone(),
        data: opts.data_name.clone(),
        settings,
    };
    report::write(
        &opts.out,
        p,
        &header,
        &store
            .records
            .iter()
            .filter(|r| in_range(r))
            .cloned()
            .collect::<Vec<_>>(),
        &store
            .checks
            .iter()
            .filter(|c| range.contains(&c.index))
            .cloned()
            .collect::<Vec<_>>(),
        &threats,
        wall.elapsed().as_secs_f64(),
    )
}
