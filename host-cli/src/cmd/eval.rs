//! `pursamere eval`: the white-box robustness evaluation.
//!
//! Threat model (DESIGN.md): the attacker knows both networks, every setting and every
//! noise vector. Gradient attacks run on the float host reference with the model's
//! *dequantised* weights (it agrees with the core on every label in `verify`); the
//! verdict for every adversarial example comes from the deployed system itself, the
//! int8 core. The Square attack queries the core only.
//!
//! Per example and threat (norm, ε) the record holds, for every attack, whether the
//! core still classifies correctly; the worst case is "correct under every attack".
//! Records are appended to `results.jsonl` as they finish, so a killed run resumes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use dfdx::prelude::{Cpu, TensorFromVec};
use pursamere_core::{PurifierConfig, StepRule};
use pursamere_trainer::attack::{
    pgd, square_linf, AttackLoss, AttackNorm, ClassifierOracle, GradientOracle, OracleOutput,
    PgdConfig, PurifiedOracle, PurifierGradient, StepSchedule,
};
use pursamere_trainer::data::{load_mnist_dir, Dataset, Split};
use pursamere_trainer::model::{DeviceNet, FloatModel, FloatNet};
use serde::{Deserialize, Serialize};

use super::images::{model_bytes, parse_model};
use super::{core_classify, core_purify_classify, fast_scratch_len, parallel_ranges, write_file};

/// The protocol file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Test images evaluated (from `start`).
    pub images: usize,
    /// First test image.
    #[serde(default)]
    pub start: usize,
    /// PGD steps per restart.
    pub steps: usize,
    /// PGD restarts.
    #[serde(default = "one")]
    pub restarts: usize,
    /// Square attack queries per image.
    pub square_queries: usize,
    /// L∞ budgets.
    #[serde(default)]
    pub linf_eps: Vec<f32>,
    /// L2 budgets.
    #[serde(default)]
    pub l2_eps: Vec<f32>,
    /// Attacks: any of "transfer", "bpda", "full", "square", "surrogate" (sign-step
    /// purifiers only: the exact gradient through the same purifier with gradient
    /// steps of η = `surrogate_eta`, a smooth stand-in for a piecewise-constant map).
    pub attacks: Vec<String>,
    /// Defences: any of "none", "denoise", "ere" (ρ = 0), "pursamere" (ρ = `rho`).
    pub defences: Vec<String>,
    /// PGD losses: "ce" and/or "margin".
    #[serde(default = "ce")]
    pub losses: Vec<String>,
    /// ρ of the "pursamere" defence (the model's own ρ when it is > 0).
    #[serde(default = "rho")]
    pub rho: f32,
    /// Re-attack the examples that survived, at the largest ε of each norm, with the
    /// full-gradient attack and twice the steps; flag "not converged" when the worst
    /// case drops by more than 1 point.
    #[serde(default)]
    pub convergence_check: bool,
    /// PGD step-size schedule: "constant" or "cosine".
    #[serde(default = "constant")]
    pub step_schedule: String,
    /// Peak PGD step as a multiple of ε; default 2.5 / steps (constant) or
    /// 5 / steps (cosine: the same total path length).
    #[serde(default)]
    pub step_size: Option<f32>,
    /// Images: "test" (the TEST set) or "validation" (the TRAIN hold-out of
    /// `pursamere train`: 5,000 images, seed 0), for tuning purifier settings.
    #[serde(default = "test_split")]
    pub split: String,
    /// Images attacked together (one batch through the float reference).
    #[serde(default = "batch")]
    pub batch: usize,
    /// η of the gradient-step purifier the "surrogate" attack differentiates.
    #[serde(default = "surrogate_eta")]
    pub surrogate_eta: f32,
}

fn one() -> usize {
    1
}
fn ce() -> Vec<String> {
    vec!["ce".into()]
}
fn rho() -> f32 {
    0.05
}
fn constant() -> String {
    "constant".into()
}
fn test_split() -> String {
    "test".into()
}
fn batch() -> usize {
    32
}
fn surrogate_eta() -> f32 {
    0.5
}

/// BPDA for one-shot denoising: the classifier's gradient at `D(x)`.
struct DenoiseBpda {
    dev: Cpu,
    denoiser: DeviceNet<f32, Cpu>,
    classifier: ClassifierOracle,
    d: usize,
}

impl GradientOracle for DenoiseBpda {
    fn input_len(&self) -> usize {
        self.d
    }
    fn evaluate(&self, x: &[f32], labels: &[usize], loss: AttackLoss) -> OracleOutput {
        let b = x.len() / self.d.max(1);
        let dx = self
            .denoiser
            .forward(self.dev.tensor_from_vec(x.to_vec(), (b, self.d)))
            .as_vec();
        self.classifier.evaluate(&dx, labels, loss)
    }
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Protocol file (TOML); see docs/EVALUATION.md.
    #[arg(long)]
    pub protocol: PathBuf,
    /// Data set directory (MNIST layout); the TEST split is used.
    #[arg(long)]
    pub data: PathBuf,
    /// Model file (.psm); default: the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output directory: results.jsonl (per example, appended), report.json, report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Overrides of the model's purifier settings (the defended system evaluated).
    #[command(flatten)]
    pub purifier: super::export::PurifierArgs,
}

/// One evaluated (example, defence, threat).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    index: usize,
    defence: String,
    norm: String,
    eps: f32,
    clean_correct: bool,
    /// Attack name → still correct after it.
    correct: BTreeMap<String, bool>,
    /// Mean gradient norm of the full attack's first step (masking indicator).
    grad_norm: Option<f32>,
    seconds: BTreeMap<String, f64>,
}

/// Result of the step-doubling check at one threat.
#[derive(Debug, Clone, Serialize)]
struct Convergence {
    defence: String,
    norm: String,
    eps: f32,
    worst: f64,
    worst_double_steps: f64,
}

/// Wilson 95 % interval for k successes out of n.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (z, nf) = (1.959_963_984_540_054, n as f64);
    let p = k as f64 / nf;
    let den = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / den;
    let h = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / den;
    ((c - h).max(0.0), (c + h).min(1.0))
}

fn denoise_then_classify(fm: &FloatModel) -> Option<FloatNet> {
    if fm.denoiser.residual {
        return None;
    }
    let mut layers = fm.denoiser.layers.clone();
    layers.extend(fm.classifier.layers.iter().cloned());
    Some(FloatNet {
        residual: false,
        layers,
    })
}

/// The core's verdict (predicted labels) for one defence.
enum Judge<'m> {
    Purify(&'m pursamere_core::Model<'m>, PurifierConfig),
    Denoise(&'m pursamere_core::Model<'m>),
    Classify(&'m pursamere_core::Model<'m>),
}

impl Judge<'_> {
    fn predict(&self, x: &[f32]) -> Result<Vec<usize>> {
        match self {
            Judge::Purify(m, c) => Ok(core_purify_classify(m, c, x)?.1),
            Judge::Denoise(m) => {
                let d = m.input_len();
                let mut out = vec![0.0; x.len()];
                let mut scratch = vec![0.0; m.denoise_scratch_len()];
                for (xi, oi) in x.chunks(d.max(1)).zip(out.chunks_mut(d.max(1))) {
                    m.denoise(xi, oi, &mut scratch)?;
                }
                // The denoiser may leave [0, 1]; the classifier takes any finite input.
                core_classify(m, &out)
            }
            Judge::Classify(m) => core_classify(m, x),
        }
    }

    /// Logits of the whole defended pipeline for one image (the Square attack's query).
    fn logits(&self, img: &[f32], scratch: &mut [f32], buf: &mut [f32]) -> Vec<f32> {
        let m = match self {
            Judge::Purify(m, _) | Judge::Denoise(m) | Judge::Classify(m) => m,
        };
        let mut logits = vec![0.0; m.num_classes()];
        let xin: &[f32] = match self {
            Judge::Purify(m, c) => {
                let _ = m.purify(img, c, buf, scratch);
                buf
            }
            Judge::Denoise(m) => {
                let _ = m.denoise(img, buf, scratch);
                buf
            }
            Judge::Classify(_) => img,
        };
        let _ = m.classify(xin, &mut logits, scratch);
        logits
    }

    fn scratch_len(&self) -> usize {
        match self {
            Judge::Purify(m, c) => fast_scratch_len(m, c),
            Judge::Denoise(m) | Judge::Classify(m) => {
                m.denoise_scratch_len().max(m.classify_scratch_len())
            }
        }
    }
}

fn norm_name(norm: AttackNorm) -> &'static str {
    match norm {
        AttackNorm::Linf => "linf",
        AttackNorm::L2 => "l2",
    }
}

/// Rows `idx` of a row-major batch.
fn rows(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&k| x[k * d..(k + 1) * d].iter().copied())
        .collect()
}

pub fn run(a: EvalArgs) -> Result<i32> {
    let wall = Instant::now();
    let text = std::fs::read_to_string(&a.protocol)
        .with_context(|| format!("cannot read {}", a.protocol.display()))?;
    let p: Protocol = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid protocol", a.protocol.display()))?;
    for at in &p.attacks {
        if !["transfer", "bpda", "full", "square", "surrogate"].contains(&at.as_str()) {
            bail!("unknown attack `{at}` (transfer, bpda, full, square, surrogate)");
        }
    }
    for d in &p.defences {
        if !["none", "denoise", "ere", "pursamere"].contains(&d.as_str()) {
            bail!("unknown defence `{d}` (none, denoise, ere, pursamere)");
        }
    }
    let losses: Vec<AttackLoss> = p
        .losses
        .iter()
        .map(|l| match l.as_str() {
            "ce" => Ok(AttackLoss::CrossEntropy),
            "margin" => Ok(AttackLoss::Margin),
            o => bail!("unknown loss `{o}` (ce, margin)"),
        })
        .collect::<Result<_>>()?;
    let schedule = match p.step_schedule.as_str() {
        "constant" => StepSchedule::Constant,
        "cosine" => StepSchedule::Cosine,
        o => bail!("unknown step_schedule `{o}` (constant, cosine)"),
    };
    if p.images == 0 || p.steps == 0 || (p.linf_eps.is_empty() && p.l2_eps.is_empty()) {
        bail!("the protocol needs images > 0, steps > 0 and at least one budget");
    }
    if p.batch == 0 || losses.is_empty() {
        bail!("the protocol needs batch > 0 and at least one loss");
    }
    if let Some(e) = p
        .linf_eps
        .iter()
        .chain(&p.l2_eps)
        .find(|e| !e.is_finite() || **e < 0.0)
    {
        bail!("budget {e} is not a finite ε ≥ 0");
    }
    let bytes = model_bytes(&a.model)?;
    let model = parse_model(&bytes, &a.model)?;
    let fm = FloatModel::from_spec(model.spec());
    let d = model.input_len();
    let data = match p.split.as_str() {
        "test" => load_mnist_dir(&a.data, Split::Test)?,
        "validation" => {
            load_mnist_dir(&a.data, Split::Train)?
                .split_validation(5000, 0)?
                .1
        }
        o => bail!("unknown split `{o}` (test, validation)"),
    };
    if p.start + p.images > data.len() {
        bail!(
            "images {}..{} are outside the {} {} images",
            p.start,
            p.start + p.images,
            data.len(),
            p.split
        );
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let results = a.out.join("results.jsonl");
    let mut done: Vec<Record> = std::fs::read_to_string(&results)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !done.is_empty() {
        eprintln!(
            "resuming: {} records already in {}",
            done.len(),
            results.display()
        );
    }
    let mut sink = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results)
        .with_context(|| format!("cannot open {}", results.display()))?;

    let base = a.purifier.apply(model.purifier_config())?;
    if base.rho > 0.0 && p.defences.iter().any(|d| d == "ere") {
        eprintln!(
            "note: the `ere` defence is the purifier with ρ = 0 whatever --rho or the model \
             says; ρ = {} applies to the `pursamere` defence",
            base.rho
        );
    }
    let purifier_for = |defence: &str| -> Option<PurifierConfig> {
        match defence {
            "ere" => Some(PurifierConfig { rho: 0.0, ..base }),
            "pursamere" => Some(PurifierConfig {
                rho: if base.rho > 0.0 { base.rho } else { p.rho },
                ..base
            }),
            _ => None,
        }
    };
    let threats: Vec<(AttackNorm, f32)> = p
        .linf_eps
        .iter()
        .map(|&e| (AttackNorm::Linf, e))
        .chain(p.l2_eps.iter().map(|&e| (AttackNorm::L2, e)))
        .collect();
    let pgd_cfg = |norm, eps: f32, loss, steps: usize, seed, early_stop| PgdConfig {
        norm,
        eps,
        steps,
        step_size: eps
            * p.step_size.unwrap_or(
                match schedule {
                    StepSchedule::Constant => 2.5,
                    StepSchedule::Cosine => 5.0,
                } / steps as f32,
            ),
        schedule,
        loss,
        random_start: true,
        restarts: p.restarts,
        seed,
        early_stop,
    };
    let total = p.images * p.defences.len() * threats.len();
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(st) = indicatif::ProgressStyle::with_template(
        "eval [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})",
    ) {
        bar.set_style(st.progress_chars("=> "));
    }
    let in_range = |r: &Record| (p.start..p.start + p.images).contains(&r.index);
    bar.inc(done.iter().filter(|r| in_range(r)).count() as u64);
    bar.reset_eta();
    let undefended = ClassifierOracle::new(&fm.classifier, d);
    let dev = Cpu::default();
    let side = usize::from(model.spec().meta.input_shape.height);

    type Oracle = Box<dyn GradientOracle>;
    #[allow(clippy::type_complexity)]
    let mut defences: Vec<(
        &String,
        Option<PurifierConfig>,
        Judge,
        Oracle,
        Oracle,
        Option<Oracle>,
    )> = Vec::new();
    for defence in &p.defences {
        let cfg = purifier_for(defence);
        let judge = match (defence.as_str(), cfg) {
            (_, Some(c)) => Judge::Purify(&model, c),
            ("denoise", None) => Judge::Denoise(&model),
            _ => Judge::Classify(&model),
        };
        // The white-box oracles of this defence.
        let (bpda, full): (Oracle, Oracle) = match cfg {
            Some(c) => (
                Box::new(PurifiedOracle::new(
                    &fm.denoiser,
                    &fm.classifier,
                    d,
                    c,
                    PurifierGradient::Bpda,
                )),
                Box::new(PurifiedOracle::new(
                    &fm.denoiser,
                    &fm.classifier,
                    d,
                    c,
                    PurifierGradient::Full,
                )),
            ),
            None if defence == "denoise" => {
                let Some(dnc) = denoise_then_classify(&fm) else {
                    bail!("the `denoise` ablation needs a non-residual denoiser");
                };
                (
                    Box::new(DenoiseBpda {
                        dev: dev.clone(),
                        denoiser: DeviceNet::from_float(&fm.denoiser, &dev),
                        classifier: ClassifierOracle::new(&fm.classifier, d),
                        d,
                    }),
                    Box::new(ClassifierOracle::new(&dnc, d)),
                )
            }
            None => (
                Box::new(ClassifierOracle::new(&fm.classifier, d)),
                Box::new(ClassifierOracle::new(&fm.classifier, d)),
            ),
        };
        // A smooth stand-in for a sign-step purifier (None otherwise: not applicable).
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
        defences.push((defence, cfg, judge, bpda, full, surrogate));
    }
    // Records a resumed run already has: (image, defence, norm, ε bits). The loop
    // below visits each key once, so records it adds need no entry.
    let finished: std::collections::HashSet<(usize, String, String, u32)> = done
        .iter()
        .map(|r| (r.index, r.defence.clone(), r.norm.clone(), r.eps.to_bits()))
        .collect();
    // Image blocks outermost: a stopped run has every threat of its first images.
    let indices: Vec<usize> = (p.start..p.start + p.images).collect();
    for block in indices.chunks(p.batch) {
        for (defence, cfg, judge, bpda, full, surrogate) in &defences {
            let (defence, cfg): (&String, _) = (defence, *cfg);
            for &(norm, eps) in &threats {
                let nn = norm_name(norm);
                let pending: Vec<usize> = block
                    .iter()
                    .copied()
                    .filter(|&i| {
                        !finished.contains(&(i, defence.clone(), nn.to_string(), eps.to_bits()))
                    })
                    .collect();
                for chunk in pending.chunks(p.batch) {
                    let n = chunk.len();
                    let (x, y) = images(&data, chunk);
                    let seed = chunk.first().copied().unwrap_or(0) as u64;
                    let clean = judge.predict(&x)?;
                    let clean_correct: Vec<bool> =
                        clean.iter().zip(&y).map(|(a, b)| a == b).collect();
                    let attacked: Vec<usize> = (0..n).filter(|&k| clean_correct[k]).collect();
                    let mut correct: Vec<BTreeMap<String, bool>> = vec![BTreeMap::new(); n];
                    let mut seconds: Vec<BTreeMap<String, f64>> = vec![BTreeMap::new(); n];
                    let mut grad_norm: Vec<Option<f32>> = vec![None; n];
                    if cfg.is_some()
                        && p.attacks.iter().any(|at| at == "full")
                        && !attacked.is_empty()
                    {
                        let out = full.evaluate(
                            &rows(&x, d, &attacked),
                            &rows_usize(&y, &attacked),
                            // The margin does not saturate on confident examples the way
                            // cross-entropy does, so its gradient norm says more.
                            AttackLoss::Margin,
                        );
                        for (j, &k) in attacked.iter().enumerate() {
                            let g = &out.grad[j * d..(j + 1) * d];
                            grad_norm[k] = Some(g.iter().map(|v| v * v).sum::<f32>().sqrt());
                        }
                    }
                    for attack in &p.attacks {
                        if (attack == "square" && norm != AttackNorm::Linf)
                            || (attack == "surrogate" && surrogate.is_none())
                        {
                            continue;
                        }
                        let t = Instant::now();
                        // Still-correct examples of the chunk (positions in `chunk`).
                        let mut alive = attacked.clone();
                        if attack == "square" {
                            let fooled = parallel_ranges(alive.len(), |range| {
                                let mut scratch = vec![0.0; judge.scratch_len()];
                                let mut buf = vec![0.0; d];
                                Ok(range
                                    .map(|j| {
                                        let k = alive[j];
                                        square_linf(
                                            |img| judge.logits(img, &mut scratch, &mut buf),
                                            &x[k * d..(k + 1) * d],
                                            y[k],
                                            side,
                                            d / side.max(1),
                                            eps,
                                            p.square_queries,
                                            chunk[k] as u64,
                                        )
                                        .fooled
                                    })
                                    .collect())
                            })?;
                            alive = alive
                                .iter()
                                .zip(&fooled)
                                .filter(|(_, &f)| !f)
                                .map(|(&k, _)| k)
                                .collect();
                        } else {
                            let (oracle, early_stop): (&dyn GradientOracle, bool) =
                                match attack.as_str() {
                                    "transfer" => (&undefended, false),
                                    "bpda" => (bpda.as_ref(), true),
                                    "surrogate" => match surrogate {
                                        Some(o) => (o.as_ref(), true),
                                        None => (full.as_ref(), true),
                                    },
                                    _ => (full.as_ref(), true),
                                };
                            for &loss in &losses {
                                if alive.is_empty() {
                                    break;
                                }
                                let pc = pgd_cfg(norm, eps, loss, p.steps, seed, early_stop);
                                let adv =
                                    pgd(oracle, &rows(&x, d, &alive), &rows_usize(&y, &alive), &pc);
                                alive = still_correct(&alive, &judge.predict(&adv)?, &y);
                            }
                        }
                        let per_image = t.elapsed().as_secs_f64() / n as f64;
                        for k in 0..n {
                            correct[k].insert(attack.clone(), alive.contains(&k));
                            seconds[k].insert(attack.clone(), per_image);
                        }
                    }
                    for k in 0..n {
                        let rec = Record {
                            index: chunk[k],
                            defence: defence.clone(),
                            norm: nn.into(),
                            eps,
                            clean_correct: clean_correct[k],
                            correct: std::mem::take(&mut correct[k]),
                            grad_norm: grad_norm[k],
                            seconds: std::mem::take(&mut seconds[k]),
                        };
                        writeln!(sink, "{}", serde_json::to_string(&rec)?)?;
                        done.push(rec);
                    }
                    sink.flush()?;
                    bar.inc(n as u64);
                    let same: Vec<&Record> = done
                        .iter()
                        .filter(|r| &r.defence == defence && r.norm == nn && r.eps == eps)
                        .collect();
                    let robust = same.iter().filter(|r| robust(r)).count();
                    bar.set_message(format!(
                        "{defence} {nn} {eps}: robust {robust}/{} ({:.1} %)",
                        same.len(),
                        100.0 * robust as f64 / same.len().max(1) as f64
                    ));
                }
            }
        }
    }
    bar.finish_and_clear();
    // Records of other images (an earlier run with another range) stay in the file
    // but not in this report.
    done.retain(in_range);

    let mut convergence = Vec::new();
    if p.convergence_check && p.attacks.iter().any(|a| a == "full") {
        for defence in &p.defences {
            let Some(c) = purifier_for(defence) else {
                continue;
            };
            let oracle =
                PurifiedOracle::new(&fm.denoiser, &fm.classifier, d, c, PurifierGradient::Full);
            for norm in [AttackNorm::Linf, AttackNorm::L2] {
                let nn = norm_name(norm);
                let Some(eps) = threats
                    .iter()
                    .filter(|t| t.0 == norm)
                    .map(|t| t.1)
                    .reduce(f32::max)
                else {
                    continue;
                };
                let recs: Vec<&Record> = done
                    .iter()
                    .filter(|r| &r.defence == defence && r.norm == nn && r.eps == eps)
                    .collect();
                let survivors: Vec<usize> =
                    recs.iter().filter(|r| robust(r)).map(|r| r.index).collect();
                let t = Instant::now();
                let mut broken = 0;
                for chunk in survivors.chunks(p.batch) {
                    let (x, y) = images(&data, chunk);
                    let seed = chunk.first().copied().unwrap_or(0) as u64 + 1;
                    let mut alive: Vec<usize> = (0..chunk.len()).collect();
                    for &loss in &losses {
                        let pc = pgd_cfg(norm, eps, loss, 2 * p.steps, seed, true);
                        let adv = pgd(&oracle, &rows(&x, d, &alive), &rows_usize(&y, &alive), &pc);
                        let pred = core_purify_classify(&model, &c, &adv)?.1;
                        alive = still_correct(&alive, &pred, &y);
                    }
                    broken += chunk.len() - alive.len();
                }
                let n = recs.len().max(1) as f64;
                eprintln!(
                    "step doubling {defence} {nn} {eps}: {} of {} survivors broken with {} steps ({:.0} s)",
                    broken,
                    survivors.len(),
                    2 * p.steps,
                    t.elapsed().as_secs_f64()
                );
                convergence.push(Convergence {
                    defence: defence.clone(),
                    norm: nn.into(),
                    eps,
                    worst: survivors.len() as f64 / n,
                    worst_double_steps: (survivors.len() - broken) as f64 / n,
                });
            }
        }
    }
    report(
        &a,
        &p,
        &done,
        &threats,
        &convergence,
        wall.elapsed().as_secs_f64(),
    )
}

/// The entries of `alive` (positions in the chunk) whose prediction `pred` (one per
/// entry of `alive`) is still the label in `y`.
fn still_correct(alive: &[usize], pred: &[usize], y: &[usize]) -> Vec<usize> {
    alive
        .iter()
        .zip(pred)
        .filter(|(&k, &pl)| pl == y[k])
        .map(|(&k, _)| k)
        .collect()
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

/// Correct on the clean input and after every attack.
fn robust(r: &Record) -> bool {
    r.clean_correct && r.correct.values().all(|&c| c)
}

fn rows_usize(y: &[usize], idx: &[usize]) -> Vec<usize> {
    idx.iter().map(|&k| y[k]).collect()
}

fn report(
    a: &EvalArgs,
    p: &Protocol,
    done: &[Record],
    threats: &[(AttackNorm, f32)],
    convergence: &[Convergence],
    wall_seconds: f64,
) -> Result<i32> {
    let mut md = String::new();
    md += &format!(
        "| defence | norm | ε | n | clean | {} | worst case (95 % Wilson) |\n|---|---|---|---|---|{}---|\n",
        p.attacks.join(" | "),
        "---|".repeat(p.attacks.len())
    );
    let mut rows = Vec::new();
    let mut flags = Vec::new();
    for defence in &p.defences {
        // Worst case at the previous ε of the same norm (the budgets are checked
        // in increasing order whatever order the protocol lists them in).
        let mut prev_worst: BTreeMap<&str, f64> = BTreeMap::new();
        let mut sorted = threats.to_vec();
        sorted.sort_by(|a, b| {
            (a.0 as u8, a.1)
                .partial_cmp(&(b.0 as u8, b.1))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        for &(norm, eps) in &sorted {
            let nn = norm_name(norm);
            let recs: Vec<&Record> = done
                .iter()
                .filter(|r| &r.defence == defence && r.norm == nn && r.eps == eps)
                .collect();
            let n = recs.len();
            if n == 0 {
                continue;
            }
            let clean = recs.iter().filter(|r| r.clean_correct).count();
            let mut per = BTreeMap::new();
            for at in &p.attacks {
                // Not applicable here (Square under L2, surrogate for gradient steps).
                if recs
                    .iter()
                    .all(|r| !r.clean_correct || !r.correct.contains_key(at))
                {
                    continue;
                }
                let k = recs
                    .iter()
                    .filter(|r| r.correct.get(at).copied().unwrap_or(r.clean_correct))
                    .count();
                per.insert(at.clone(), k as f64 / n as f64);
            }
            let worst = recs.iter().filter(|r| robust(r)).count();
            let (lo, hi) = wilson(worst, n);
            let wf = worst as f64 / n as f64;
            let gnorm: Vec<f32> = recs.iter().filter_map(|r| r.grad_norm).collect();
            let mean_g =
                (!gnorm.is_empty()).then(|| gnorm.iter().sum::<f32>() / gnorm.len() as f32);
            md += &format!(
                "| {defence} | {nn} | {eps} | {n} | {:.1} % | {} | **{:.1} %** [{:.1}, {:.1}] |\n",
                100.0 * clean as f64 / n as f64,
                p.attacks
                    .iter()
                    .map(|at| per
                        .get(at)
                        .map_or("–".to_string(), |v| format!("{:.1} %", 100.0 * v)))
                    .collect::<Vec<_>>()
                    .join(" | "),
                100.0 * wf,
                100.0 * lo,
                100.0 * hi
            );
            // Sanity checks.
            if let Some(&pw) = prev_worst.get(nn) {
                if wf > pw + 1e-9 {
                    flags.push(format!(
                        "FLAG {defence} {nn}: robust accuracy rises with ε ({:.1} % at {eps})",
                        100.0 * wf
                    ));
                }
            }
            prev_worst.insert(nn, wf);
            if let (Some(&full), Some(&tr)) = (per.get("full"), per.get("transfer")) {
                if full > tr + 1e-9 {
                    flags.push(format!("FLAG {defence} {nn} {eps}: white-box (full) accuracy {:.1} % above transfer {:.1} % — suspect the attack", 100.0 * full, 100.0 * tr));
                }
            }
            if let (Some(&full), Some(&sq)) = (per.get("full"), per.get("square")) {
                if full > sq + 1e-9 {
                    flags.push(format!("FLAG {defence} {nn} {eps}: full-gradient accuracy {:.1} % above Square {:.1} % — gradient masking?", 100.0 * full, 100.0 * sq));
                }
            }
            if let Some(g) = mean_g {
                if g < 1e-6 {
                    flags.push(format!("FLAG {defence} {nn} {eps}: mean gradient norm through the purifier {g:e} — masking"));
                }
            }
            rows.push(serde_json::json!({"defence": defence, "norm": nn, "eps": eps, "n": n,
                "clean": clean as f64 / n as f64, "per_attack": per, "worst_case": wf, "wilson95": [lo, hi],
                "mean_full_gradient_norm": mean_g,
                "seconds_per_image": p.attacks.iter().map(|at| (at.clone(), recs.iter().filter_map(|r| r.seconds.get(at)).sum::<f64>() / n as f64)).collect::<BTreeMap<_,_>>()}));
        }
        if defence == "none" {
            for nn in ["linf", "l2"] {
                if let Some(last) = rows
                    .iter()
                    .rev()
                    .find(|r| r["defence"] == "none" && r["norm"] == nn)
                {
                    let w = last["worst_case"].as_f64().unwrap_or(1.0);
                    if w > 0.01 {
                        flags.push(format!("FLAG undefended classifier keeps {:.1} % at the largest {nn} ε (should be ≤ 1 %)", 100.0 * w));
                    }
                }
            }
        }
    }
    for c in convergence {
        let drop = c.worst - c.worst_double_steps;
        md += &format!(
            "\nStep doubling ({} {} {}): worst case {:.1} % with {} steps, {:.1} % with {}.\n",
            c.defence,
            c.norm,
            c.eps,
            100.0 * c.worst,
            p.steps,
            100.0 * c.worst_double_steps,
            2 * p.steps
        );
        if drop > 0.01 {
            flags.push(format!(
                "FLAG {} {} {}: not converged — doubling the PGD steps lowers the worst case by {:.1} points",
                c.defence, c.norm, c.eps, 100.0 * drop
            ));
        }
    }
    // Seconds per image for each attack (mean over the records of each threat).
    md += &format!(
        "\nSeconds per image (mean over each row's images, clean-misclassified ones included):\n\n| defence | norm | ε | {} |\n|---|---|---|{}\n",
        p.attacks.join(" | "),
        "---|".repeat(p.attacks.len())
    );
    for r in &rows {
        md += &format!(
            "| {} | {} | {} | {} |\n",
            r["defence"].as_str().unwrap_or(""),
            r["norm"].as_str().unwrap_or(""),
            r["eps"].as_f64().unwrap_or(0.0) as f32,
            p.attacks
                .iter()
                .map(|at| match r["seconds_per_image"][at].as_f64() {
                    Some(s) if s > 0.0 => format!("{s:.3}"),
                    _ => "–".into(),
                })
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let compute: f64 = done.iter().map(|r| r.seconds.values().sum::<f64>()).sum();
    md += &format!(
        "\nAttack compute in the records: {:.0} s; this invocation's wall time: {:.0} s.\n",
        compute, wall_seconds
    );
    md += "\nSanity checks (undefended ≤ 1 % at the largest ε; accuracy not rising with ε; \
           white-box (full) ≤ transfer and Square; step doubling changes the worst case \
           by ≤ 1 point; gradient norm through the purifier not vanishing):\n";
    if flags.is_empty() {
        md += "- all passed\n";
    }
    for f in &flags {
        md += &format!("- {f}\n");
    }
    for r in &rows {
        if let Some(g) = r["mean_full_gradient_norm"].as_f64() {
            md += &format!(
                "- mean norm of the margin loss's exact gradient through the purifier at the clean input, {} {} {}: {g:.3}\n",
                r["defence"].as_str().unwrap_or(""),
                r["norm"].as_str().unwrap_or(""),
                r["eps"].as_f64().unwrap_or(0.0) as f32,
            );
        }
    }
    let mut panels = Vec::new();
    for norm in [AttackNorm::Linf, AttackNorm::L2] {
        let nn = norm_name(norm);
        let curves: Vec<super::plot::Curve> = p
            .defences
            .iter()
            .filter_map(|defence| {
                let mine: Vec<&serde_json::Value> = rows
                    .iter()
                    .filter(|r| r["defence"] == defence.as_str() && r["norm"] == nn)
                    .collect();
                let first = mine.first()?;
                let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
                let n = first["n"].as_u64().unwrap_or(0) as usize;
                let clean = f(&first["clean"]);
                let (lo, hi) = wilson((clean * n as f64).round() as usize, n);
                let mut points = vec![(0.0, clean, lo, hi)];
                points.extend(mine.iter().map(|r| {
                    (
                        f(&r["eps"]) as f32,
                        f(&r["worst_case"]),
                        f(&r["wilson95"][0]),
                        f(&r["wilson95"][1]),
                    )
                }));
                Some(super::plot::Curve {
                    defence: defence.clone(),
                    points,
                })
            })
            .collect();
        if !curves.is_empty() {
            let title = match norm {
                AttackNorm::Linf => "L∞ threat",
                AttackNorm::L2 => "L2 threat",
            };
            panels.push((title.to_string(), curves));
        }
    }
    super::plot::accuracy_vs_eps(&a.out.join("report.png"), &panels)?;
    write_file(&a.out.join("report.md"), md.as_bytes())?;
    write_file(
        &a.out.join("report.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"protocol": p, "rows": rows, "convergence": convergence, "flags": flags, "wall_seconds": wall_seconds}),
        )?
        .as_bytes(),
    )?;
    println!("{md}");
    println!(
        "wrote {}/report.md, report.json, report.png, results.jsonl",
        a.out.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::wilson;

    #[test]
    fn wilson_interval_matches_published_values() {
        // 8 of 10: the textbook Wilson 95 % interval is [0.490, 0.943].
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.4902).abs() < 1e-3 && (hi - 0.9433).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 10);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 1e-3, "{hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
