//! The evaluation protocol: what is attacked, how hard, on which images.
//!
//! Every key is documented in docs/EVALUATION.md ("Protocol keys"). Optional keys
//! have defaults; `preset = "standard"` fills in the AutoAttack-style suite.

use serde::{Deserialize, Serialize};

use super::EvalError;

/// Every attack the engine knows, in the order a cascade runs them (cheap,
/// strong attacks first; Square last, on the survivors of every gradient attack).
pub const ATTACKS: [&str; 11] = [
    "transfer",
    "apgd-ce",
    "apgd-t",
    "fab-t",
    "apgd-dlr",
    "full",
    "apgd-bpda",
    "bpda",
    "surrogate",
    "square",
    "square-twin",
];

/// Every defence the engine knows.
pub const DEFENCES: [&str; 4] = ["none", "denoise", "ere", "pursamere"];

/// The protocol file (TOML).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// A named suite that fills in `attacks` (and `losses`) when they are not
    /// given: "standard" = transfer, APGD-CE, APGD-T (DLR, `apgd_targets` targets)
    /// and FAB-T (`apgd_targets` targets) through the exact unrolled gradient,
    /// APGD-CE through BPDA, the surrogate attack where it applies, and Square.
    #[serde(default)]
    pub preset: Option<String>,
    /// Test images evaluated (from `start`); `--count` on the command line wins.
    #[serde(default)]
    pub images: Option<usize>,
    /// First image; `--start` on the command line wins.
    #[serde(default)]
    pub start: usize,
    /// PGD and APGD steps per restart.
    #[serde(default = "hundred")]
    pub steps: usize,
    /// PGD and APGD restarts.
    #[serde(default = "one")]
    pub restarts: usize,
    /// Square attack queries per image (only read when "square" or "square-twin"
    /// runs).
    #[serde(default)]
    pub square_queries: Option<usize>,
    /// What "square" queries: "core" (the deployed int8 system) or "reference" (the
    /// float pipeline the gradient attacks use; faster). The verdict is always the
    /// core's. ("square-twin" always queries the float twin.)
    #[serde(default = "core_target")]
    pub square_target: String,
    /// Square attack: initial fraction of the image a square covers.
    #[serde(default = "p_init")]
    pub square_p_init: f32,
    /// L∞ budgets.
    #[serde(default)]
    pub linf_eps: Vec<f32>,
    /// L2 budgets.
    #[serde(default)]
    pub l2_eps: Vec<f32>,
    /// Attacks (see [`ATTACKS`]); run as a cascade in the order of [`ATTACKS`]:
    /// each attack only sees the examples every earlier one failed to break.
    #[serde(default)]
    pub attacks: Vec<String>,
    /// Set when the `standard` preset filled in `attacks`: the suite then follows
    /// the model ([`Protocol::for_model`]). Not a key of the file.
    #[serde(skip)]
    attacks_from_preset: bool,
    /// Defences: any of "none", "denoise", "ere" (ρ = 0), "pursamere" (ρ = `rho`).
    pub defences: Vec<String>,
    /// PGD losses ("transfer", "full", "bpda"): "ce", "margin", "dlr".
    #[serde(default = "ce")]
    pub losses: Vec<String>,
    /// ρ of the "pursamere" defence (the model's own ρ when it is > 0).
    #[serde(default = "rho")]
    pub rho: f32,
    /// APGD-T and FAB-T: number of target classes (the runner-up first).
    #[serde(default = "nine")]
    pub apgd_targets: usize,
    /// Re-attack the survivors of each norm's largest ε (of every ε with
    /// `check_every_eps`) with every gradient attack, `restart_check_restarts` new
    /// random starts each; a row whose worst case drops by more than 1 point is
    /// flagged "not converged". On by default.
    #[serde(default = "yes")]
    pub restart_check: bool,
    /// Run the convergence checks on the survivors of every ε, not only of each
    /// norm's largest (the default, which leaves the smaller budgets of a
    /// multi-budget protocol to the main suite alone). Which budgets are checked
    /// changes no record, so it is left out of the settings' fingerprint: turning it
    /// on in a finished run's protocol and running it again adds the smaller budgets'
    /// checks to that run.
    #[serde(default)]
    pub check_every_eps: bool,
    /// Random restarts of the restart check.
    #[serde(default = "two")]
    pub restart_check_restarts: usize,
    /// Also re-attack the survivors with twice the steps (step-doubling check).
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
    /// The seed that drew the "validation" split: unset means
    /// [`crate::data::HOLDOUT_SEED`], the hold-out of every `pursamere train` run
    /// since it was fixed. Runs from before drew it with their `--seed`: name that
    /// seed here to tune on what such a classifier held out. (Left out of the
    /// settings' fingerprint when unset, so older results still resume.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_seed: Option<u64>,
    /// Images attacked together (one batch through the float reference).
    #[serde(default = "batch")]
    pub batch: usize,
    /// η of the gradient-step purifier the "surrogate" attack differentiates.
    #[serde(default = "surrogate_eta")]
    pub surrogate_eta: f32,
}

fn hundred() -> usize {
    100
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn nine() -> usize {
    9
}
fn yes() -> bool {
    true
}
fn core_target() -> String {
    "core".into()
}
fn p_init() -> f32 {
    0.8
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

/// Square queries when the protocol does not say (AutoAttack's standard value).
pub const DEFAULT_SQUARE_QUERIES: usize = 5000;

impl Protocol {
    /// The suite for the model it evaluates: when the `standard` preset chose the
    /// attacks and the classifier has int8 layers, `square-twin` (Square against
    /// the float twin) joins after `square` — the input rounding of int8 layers
    /// stalls Square's random search on the model itself, so the preset alone would
    /// overstate such a model's robustness (docs/EVALUATION.md). A protocol that
    /// lists its attacks keeps them (the engine warns when they lack it).
    pub fn for_model(mut self, model: &pursamere_core::Model<'_>) -> Self {
        let twin = "square-twin";
        if self.attacks_from_preset
            && super::engine::has_int8_classifier(model)
            && !self.attacks.iter().any(|a| a == twin)
        {
            let at = self
                .attacks
                .iter()
                .position(|a| a == "square")
                .map_or(self.attacks.len(), |i| i + 1);
            self.attacks.insert(at, twin.to_owned());
        }
        self
    }

    /// Parses a TOML protocol.
    pub fn from_toml(text: &str) -> Result<Self, EvalError> {
        toml::from_str(text).map_err(|e| EvalError::Protocol(e.to_string()))
    }

    /// The protocol with its preset expanded, command-line overrides applied and
    /// every value checked; attacks sorted into cascade order.
    pub fn resolved(
        mut self,
        images: Option<usize>,
        start: Option<usize>,
    ) -> Result<Self, EvalError> {
        let bad = |m: String| Err(EvalError::Protocol(m));
        match self.preset.as_deref() {
            None => {}
            Some("standard") if self.attacks.is_empty() => {
                self.attacks = [
                    "transfer",
                    "apgd-ce",
                    "apgd-t",
                    "fab-t",
                    "apgd-bpda",
                    "surrogate",
                    "square",
                ]
                .map(String::from)
                .to_vec();
                self.attacks_from_preset = true;
            }
            Some("standard") => {}
            Some(o) => return bad(format!("unknown preset `{o}` (standard)")),
        }
        if let Some(n) = images {
            self.images = Some(n);
        }
        if let Some(s) = start {
            self.start = s;
        }
        if self.start.checked_add(self.images.unwrap_or(0)).is_none() {
            return bad(format!(
                "`start` {} + `images` {} (or --start/--count) is past the last possible image",
                self.start,
                self.images.unwrap_or(0)
            ));
        }
        match self.images {
            None => {
                return bad("no image count: set `images` in the protocol or pass --count".into())
            }
            Some(0) => return bad("`images` (--count) must be at least 1".into()),
            Some(_) => {}
        }
        if self.attacks.is_empty() {
            return bad(
                "`attacks` is empty: name at least one attack (or set preset = \"standard\")"
                    .into(),
            );
        }
        if self.defences.is_empty() {
            return bad(
                "`defences` is empty: name at least one of none, denoise, ere, pursamere".into(),
            );
        }
        for at in &self.attacks {
            if !ATTACKS.contains(&at.as_str()) {
                return bad(format!("unknown attack `{at}` ({})", ATTACKS.join(", ")));
            }
        }
        for d in &self.defences {
            if !DEFENCES.contains(&d.as_str()) {
                return bad(format!("unknown defence `{d}` ({})", DEFENCES.join(", ")));
            }
        }
        for list in [&self.attacks, &self.defences] {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = list.iter().find(|a| !seen.insert(a.as_str())) {
                return bad(format!("`{dup}` is listed twice"));
            }
        }
        for l in &self.losses {
            if !["ce", "margin", "dlr"].contains(&l.as_str()) {
                return bad(format!("unknown loss `{l}` (ce, margin, dlr)"));
            }
        }
        if self.losses.is_empty() {
            return bad("`losses` is empty".into());
        }
        if !["constant", "cosine"].contains(&self.step_schedule.as_str()) {
            return bad(format!(
                "unknown step_schedule `{}` (constant, cosine)",
                self.step_schedule
            ));
        }
        if !["test", "validation"].contains(&self.split.as_str()) {
            return bad(format!("unknown split `{}` (test, validation)", self.split));
        }
        if self.validation_seed.is_some() && self.split != "validation" {
            return bad(format!(
                "`validation_seed` applies to split = \"validation\" only (this protocol has split = \"{}\")",
                self.split
            ));
        }
        if self.steps == 0 || self.restarts == 0 || self.batch == 0 {
            return bad("`steps`, `restarts` and `batch` must be at least 1".into());
        }
        if self.linf_eps.is_empty() && self.l2_eps.is_empty() {
            return bad("no budget: give `linf_eps` and/or `l2_eps`".into());
        }
        for (key, list) in [("linf_eps", &self.linf_eps), ("l2_eps", &self.l2_eps)] {
            if let Some(e) = list.iter().find(|e| !e.is_finite() || **e < 0.0) {
                return bad(format!("`{key}`: budget {e} is not a finite ε ≥ 0"));
            }
        }
        if self
            .attacks
            .iter()
            .any(|a| a == "square" || a == "square-twin")
        {
            let q = self.square_queries.unwrap_or(DEFAULT_SQUARE_QUERIES);
            if q == 0 {
                return bad("`square_queries` must be at least 1".into());
            }
            self.square_queries = Some(q);
            if !["core", "reference"].contains(&self.square_target.as_str()) {
                return bad(format!(
                    "unknown square_target `{}` (core, reference)",
                    self.square_target
                ));
            }
            if !(self.square_p_init > 0.0 && self.square_p_init <= 1.0) {
                return bad(format!(
                    "`square_p_init` {} is not in (0, 1]",
                    self.square_p_init
                ));
            }
        } else {
            self.square_queries = None;
        }
        if self.attacks.iter().any(|a| a == "apgd-t" || a == "fab-t") && self.apgd_targets == 0 {
            return bad(
                "`apgd_targets` (the target classes of apgd-t and fab-t) must be at least 1".into(),
            );
        }
        if !(self.rho.is_finite() && self.rho >= 0.0) {
            return bad(format!("`rho` {} is not a finite value ≥ 0", self.rho));
        }
        if let Some(s) = self.step_size {
            if !(s.is_finite() && s > 0.0) {
                return bad(format!("`step_size` {s} is not a finite value > 0"));
            }
        }
        self.attacks
            .sort_by_key(|a| ATTACKS.iter().position(|b| b == a).unwrap_or(usize::MAX));
        Ok(self)
    }

    /// The images evaluated (after [`Protocol::resolved`]).
    pub fn range(&self) -> std::ops::Range<usize> {
        // Saturating: `resolved` refuses a sum that overflows; one made by hand
        // past it reads as out of range, not as an empty range.
        self.start..self.start.saturating_add(self.images.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::Protocol;

    fn resolved(text: &str) -> Result<Protocol, crate::eval::EvalError> {
        Protocol::from_toml(text)?.resolved(None, None)
    }

    #[test]
    fn a_start_that_overflows_is_refused() {
        let base = "preset = \"standard\"\nlinf_eps = [0.3]\ndefences = [\"none\"]\nimages = 2\n";
        let err = Protocol::from_toml(base)
            .unwrap()
            .resolved(None, Some(usize::MAX))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--start"), "{err}");
        let ok = Protocol::from_toml(base)
            .unwrap()
            .resolved(None, Some(7))
            .unwrap();
        assert_eq!(ok.range(), 7..9);
    }

    #[test]
    fn validation_seed_is_for_the_validation_split_only_and_left_out_when_unset() {
        let base = "preset = \"standard\"\nlinf_eps = [0.3]\ndefences = [\"none\"]\nimages = 10\n";
        let unset = resolved(&format!("{base}split = \"validation\"\n")).unwrap();
        assert_eq!(unset.validation_seed, None);
        // Unset, the key is not in the settings, so the fingerprints of results
        // written before it existed are unchanged and those runs still resume.
        let json = serde_json::to_value(&unset).unwrap();
        assert!(json.get("validation_seed").is_none(), "{json}");

        let seven = resolved(&format!(
            "{base}split = \"validation\"\nvalidation_seed = 7\n"
        ))
        .unwrap();
        assert_eq!(seven.validation_seed, Some(7));
        assert_eq!(serde_json::to_value(&seven).unwrap()["validation_seed"], 7);

        let e = resolved(&format!("{base}validation_seed = 7\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("validation_seed") && e.contains("\"test\""),
            "{e}"
        );
    }

    #[test]
    fn the_standard_preset_runs_fab_t_after_apgd_t_and_unknown_attacks_are_refused() {
        let base = "linf_eps = [0.3]\ndefences = [\"none\"]\nimages = 10\n";
        let p = resolved(&format!("preset = \"standard\"\n{base}")).unwrap();
        assert_eq!(
            p.attacks,
            [
                "transfer",
                "apgd-ce",
                "apgd-t",
                "fab-t",
                "apgd-bpda",
                "surrogate",
                "square"
            ]
        );
        // AutoAttack's order (APGD-CE, APGD-T, FAB-T, Square) whatever the order given.
        let p = resolved(&format!(
            "attacks = [\"square\", \"fab-t\", \"apgd-t\", \"apgd-ce\"]\n{base}"
        ))
        .unwrap();
        assert_eq!(p.attacks, ["apgd-ce", "apgd-t", "fab-t", "square"]);
        // Square against the float twin runs after Square, with Square's settings.
        let p = resolved(&format!(
            "attacks = [\"square-twin\", \"square\", \"apgd-ce\"]\nsquare_queries = 50\n{base}"
        ))
        .unwrap();
        assert_eq!(p.attacks, ["apgd-ce", "square", "square-twin"]);
        assert_eq!(p.square_queries, Some(50));
        let p = resolved(&format!("attacks = [\"square-twin\"]\n{base}")).unwrap();
        assert_eq!(p.square_queries, Some(super::DEFAULT_SQUARE_QUERIES));
        let e = resolved(&format!("attacks = [\"fab\"]\n{base}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown attack `fab`") && e.contains("fab-t"),
            "{e}"
        );
        // FAB-T takes its target count from `apgd_targets`, which must be ≥ 1.
        let e = resolved(&format!("attacks = [\"fab-t\"]\napgd_targets = 0\n{base}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("apgd_targets"), "{e}");
        assert!(resolved(&format!(
            "attacks = [\"apgd-ce\"]\napgd_targets = 0\n{base}"
        ))
        .is_ok());
    }
}
