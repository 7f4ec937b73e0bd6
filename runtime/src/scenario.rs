//! `slipway test`: scenario files for strategy authors. A scenario is a simulated rollout
//! (replicas, parameters, faults, seed) and what must hold over its whole timeline: how it
//! ends, how few instances may be ready and how many may run at any moment, how long it
//! may take, where the weights end. A failed assertion names the timeline line where it
//! broke, the same line `slipway simulate` prints with the same inputs.
//!
//! ```toml
//! strategy = "builtin:rolling"          # or a .wasm path, relative to this file
//!
//! [[scenario]]
//! name = "one at a time, never below four ready"
//! replicas = 4
//! params = { max-surge = 1, max-unavailable = 0 }
//! faults = { crash = 0.2, start-delay = "5s" }
//! expect = { outcome = "succeeded", min-ready = 4, max-surge = 1, within = "2m", weights = { 2 = 256 } }
//! ```
//!
//! Hooks are the app spec's `[hooks.POINT]` tables, with `module` a `.wasm` path: the real
//! modules run. What their `exec` and outbound HTTP calls answer is up to each scenario's
//! fakes (a call no fake answers fails, naming the fake to add):
//!
//! ```toml
//! [hooks.pre]
//! module = "target/wasm32-wasip2/release/migrate.wasm"
//! params = { command = ["./migrate", "--up"] }
//! grants = ["exec"]
//!
//! [[scenario]]
//! name = "a failed migration rolls nothing out"
//! exec = [{ args = ["./migrate"], exit = 1, output = "relation exists", takes = "3s" }]
//! http = [{ url = "http://hooks.example.com/*", status = 200 }]
//! expect = { outcome = "rolled-back", hooks = { pre = "failed" } }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;

use crate::bindings::HookPoint;
use crate::events::{Event, EventKind, HookOutcome, RevisionSnapshot, RolloutOutcome};
use crate::rollout::RolloutReport;
use crate::sim::{SimConfig, SimRollout};

/// A scenario file: the strategy its scenarios run, and the scenarios.
#[derive(Debug)]
pub struct ScenarioFile {
    pub path: PathBuf,
    /// `builtin:NAME`, or a component path (made absolute against the file's directory).
    pub strategy: Option<String>,
    /// Real hook modules every scenario runs (module paths made absolute, like `strategy`).
    pub hooks: crate::spec::Hooks,
    pub scenarios: Vec<Scenario>,
}

/// One simulated rollout and its assertions.
#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub rollout: SimRollout,
    pub expect: Expect,
}

/// What must hold; every field set is checked.
#[derive(Debug, Default)]
pub struct Expect {
    pub outcome: Option<RolloutOutcome>,
    /// Ready instances (all revisions together) never fewer, at any line.
    pub min_ready: Option<u32>,
    /// Instances (all revisions together) never more than `replicas` plus this.
    pub max_surge: Option<u32>,
    /// Finished within this much simulated time.
    pub within: Option<Duration>,
    /// Each revision's weight at the end (a revision not named: 0).
    pub weights: Option<BTreeMap<u32, u32>>,
    /// Text the failure (or the summary) contains.
    pub failure_contains: Option<String>,
    /// How each named hook point ended (the last time it ran).
    pub hooks: BTreeMap<&'static str, HookEnd>,
}

/// How a hook point ended, as a scenario expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookEnd {
    Succeeded,
    Failed,
    FailureIgnored,
    NotConfigured,
    /// The rollout never reached that point.
    NotRun,
}

impl HookEnd {
    const NAMES: [(&str, HookEnd); 5] = [
        ("succeeded", HookEnd::Succeeded),
        ("failed", HookEnd::Failed),
        ("failure-ignored", HookEnd::FailureIgnored),
        ("not-configured", HookEnd::NotConfigured),
        ("not-run", HookEnd::NotRun),
    ];

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, end)| *end == self)
            .map_or("?", |(name, _)| name)
    }

    /// What happened, for a report.
    fn said(self) -> &'static str {
        match self {
            HookEnd::Succeeded => "it succeeded",
            HookEnd::Failed => "it failed",
            HookEnd::FailureIgnored => "it failed and its failure was ignored",
            HookEnd::NotConfigured => "no hook is configured there",
            HookEnd::NotRun => "the rollout never reached it",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileToml {
    strategy: Option<String>,
    #[serde(default)]
    hooks: crate::spec::Hooks,
    #[serde(default)]
    scenario: Vec<ScenarioToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ScenarioToml {
    name: String,
    #[serde(default = "three")]
    replicas: u32,
    #[serde(default)]
    params: toml::Table,
    #[serde(default = "one")]
    seed: u64,
    deadline: Option<String>,
    #[serde(default = "yes")]
    rollback: bool,
    soak: Option<String>,
    #[serde(default)]
    faults: FaultsToml,
    /// Answers to the hooks' `exec` calls, the first that matches.
    #[serde(default)]
    exec: Vec<crate::fakes::FakeExec>,
    /// Answers to the hooks' outbound HTTP requests, the first that matches.
    #[serde(default)]
    http: Vec<crate::fakes::FakeHttp>,
    expect: Option<ExpectToml>,
}

fn three() -> u32 {
    3
}
fn one() -> u64 {
    1
}
fn yes() -> bool {
    true
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FaultsToml {
    #[serde(default)]
    never_ready: f64,
    #[serde(default)]
    crash: f64,
    #[serde(default)]
    fail_http: f64,
    start_delay: Option<String>,
    restart_backoff: Option<String>,
    #[serde(default)]
    fail_hooks: Vec<String>,
    #[serde(default)]
    traffic: f64,
    #[serde(default)]
    errors: BTreeMap<String, f64>,
    #[serde(default)]
    latency: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ExpectToml {
    outcome: Option<String>,
    min_ready: Option<u32>,
    max_surge: Option<u32>,
    within: Option<String>,
    weights: Option<BTreeMap<String, u32>>,
    failure_contains: Option<String>,
    #[serde(default)]
    hooks: BTreeMap<String, String>,
}

/// Reads a scenario file; a mistake in it is an error naming the scenario and the key.
pub fn read(path: &Path) -> anyhow::Result<ScenarioFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text, path)
}

/// Parses scenario-file `text` read from `path`.
pub fn parse(text: &str, path: &Path) -> anyhow::Result<ScenarioFile> {
    let file: FileToml = toml::from_str(text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if file.scenario.is_empty() {
        bail!(
            "{}: no [[scenario]] tables; add at least one (see `slipway test --help`)",
            path.display()
        );
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |s: String| {
        if s.starts_with("builtin:") || Path::new(&s).is_absolute() {
            s
        } else {
            base.join(s).display().to_string()
        }
    };
    let strategy = file.strategy.map(resolve);
    let mut hooks = file.hooks;
    for point in ["pre", "mid", "post", "rollback"] {
        let Some(Some(hook)) = hooks.at_mut(point) else {
            continue;
        };
        if hook.module.starts_with("builtin:") || !hook.module.ends_with(".wasm") {
            bail!(
                "{}: hooks.{point}.module: {:?} is not a path to a .wasm component; a scenario runs the hook's build, e.g. module = \"target/wasm32-wasip2/release/my_hook.wasm\"",
                path.display(),
                hook.module
            );
        }
        for grant in &hook.grants {
            crate::spec::grant(grant)
                .map_err(|e| anyhow!("{}: hooks.{point}.grants: {}; {}", path.display(), e.message, e.hint))?;
        }
        hook.module = resolve(std::mem::take(&mut hook.module));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut scenarios = Vec::new();
    for (index, raw) in file.scenario.into_iter().enumerate() {
        let label = format!("{}: scenario {} ({:?})", path.display(), index + 1, raw.name);
        if !names.insert(raw.name.clone()) {
            bail!("{label}: another scenario has this name; give each its own");
        }
        scenarios.push(scenario(raw).map_err(|e| anyhow!("{label}: {e}"))?);
    }
    Ok(ScenarioFile {
        path: path.to_path_buf(),
        strategy,
        hooks,
        scenarios,
    })
}

fn scenario(raw: ScenarioToml) -> anyhow::Result<Scenario> {
    if raw.replicas == 0 {
        bail!("replicas must be at least 1");
    }
    let duration = |key: &str, text: &str| crate::spec::duration::parse(text).map_err(|e| anyhow!("{key}: {e}"));
    let faults = raw.faults;
    for (key, value) in [
        ("faults.never-ready", faults.never_ready),
        ("faults.crash", faults.crash),
        ("faults.fail-http", faults.fail_http),
    ] {
        if !(0.0..=1.0).contains(&value) {
            bail!("{key} is a fraction of the new instances, from 0 to 1; got {value}");
        }
    }
    if !(faults.traffic >= 0.0 && faults.traffic.is_finite()) {
        bail!(
            "faults.traffic is requests per second, 0 or more; got {}",
            faults.traffic
        );
    }
    let mut cluster = SimConfig {
        seed: raw.seed,
        fail_readiness: faults.never_ready,
        crash: faults.crash,
        fail_http: faults.fail_http,
        traffic_rps: faults.traffic,
        ..SimConfig::default()
    };
    if let Some(text) = &faults.start_delay {
        cluster.start_delay_ms = duration("faults.start-delay", text)?.as_millis() as u64;
    }
    if let Some(text) = &faults.restart_backoff {
        cluster.restart_backoff_ms = duration("faults.restart-backoff", text)?.as_millis() as u64;
    }
    for (revision, share) in &faults.errors {
        let revision = revision_key("faults.errors", revision)?;
        if !(0.0..=1.0).contains(share) {
            bail!("faults.errors.{revision} is a share of answers from 0 to 1; got {share}");
        }
        cluster.error_rates.insert(revision, *share);
    }
    for (revision, latency) in &faults.latency {
        let revision = revision_key("faults.latency", revision)?;
        let latency = duration(&format!("faults.latency.{revision}"), latency)?;
        cluster.latencies.insert(revision, latency);
    }
    let failing_hooks = faults
        .fail_hooks
        .iter()
        .map(|name| match name.as_str() {
            "pre" => Ok(HookPoint::Pre),
            "mid" => Ok(HookPoint::Mid),
            "post" => Ok(HookPoint::Post),
            other => Err(anyhow!(
                "faults.fail-hooks: {other:?} is not a hook; use \"pre\", \"mid\" or \"post\""
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fakes = crate::fakes::Fakes {
        exec: raw.exec,
        http: raw.http,
        answer_unmatched: false,
    };
    fakes.check().map_err(|e| anyhow!("{e}"))?;
    let rollout = SimRollout {
        replicas: raw.replicas,
        params: serde_json::to_string(&raw.params).context("params")?,
        cluster,
        failing_hooks,
        fakes,
        deadline: match &raw.deadline {
            Some(text) => duration("deadline", text)?,
            None => Duration::from_secs(600),
        },
        rollback: raw.rollback,
        soak: match &raw.soak {
            Some(text) => duration("soak", text)?,
            None => Duration::from_secs(10),
        },
    };
    let Some(expect) = raw.expect else {
        bail!("no expect table: say what must hold, e.g. expect = {{ outcome = \"succeeded\", min-ready = 3 }}");
    };
    let expect = Expect {
        outcome: match expect.outcome.as_deref() {
            None => None,
            Some("succeeded") => Some(RolloutOutcome::Succeeded),
            Some("rolled-back") => Some(RolloutOutcome::RolledBack),
            Some("failed") => Some(RolloutOutcome::Failed),
            Some(other) => {
                bail!("expect.outcome: {other:?} is not an outcome; use \"succeeded\", \"rolled-back\" or \"failed\"")
            }
        },
        min_ready: expect.min_ready,
        max_surge: expect.max_surge,
        within: expect
            .within
            .as_deref()
            .map(|t| duration("expect.within", t))
            .transpose()?,
        weights: match expect.weights {
            None => None,
            Some(weights) => {
                let mut parsed = BTreeMap::new();
                for (revision, weight) in weights {
                    let revision = revision_key("expect.weights", &revision)?;
                    if weight > 256 {
                        bail!("expect.weights.{revision}: weights run from 0 to 256; got {weight}");
                    }
                    parsed.insert(revision, weight);
                }
                Some(parsed)
            }
        },
        failure_contains: expect.failure_contains,
        hooks: expect
            .hooks
            .iter()
            .map(|(point, end)| {
                let point = ["pre", "mid", "post", "rollback"]
                    .into_iter()
                    .find(|p| p == point)
                    .ok_or_else(|| anyhow!("expect.hooks: {point:?} is not a hook point; use pre, mid, post or rollback"))?;
                let end = HookEnd::NAMES
                    .iter()
                    .find(|(name, _)| name == end)
                    .map(|(_, end)| *end)
                    .ok_or_else(|| {
                        anyhow!("expect.hooks.{point}: {end:?} is not how a hook ends; use succeeded, failed, failure-ignored, not-configured or not-run")
                    })?;
                Ok((point, end))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    if expect.outcome.is_none()
        && expect.min_ready.is_none()
        && expect.max_surge.is_none()
        && expect.within.is_none()
        && expect.weights.is_none()
        && expect.failure_contains.is_none()
        && expect.hooks.is_empty()
    {
        bail!("expect asserts nothing; set outcome, min-ready, max-surge, within, weights, failure-contains or hooks");
    }
    Ok(Scenario {
        name: raw.name,
        rollout,
        expect,
    })
}

/// A revision named as a key: 1 (the active one) or 2 (the new one).
fn revision_key(key: &str, text: &str) -> anyhow::Result<u32> {
    match text {
        "1" => Ok(1),
        "2" => Ok(2),
        _ => bail!("{key}: {text:?} is not a revision; the simulation rolls from revision 1 to revision 2"),
    }
}

/// A broken assertion: what, and the timeline line (from 1) where it broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Broken {
    pub message: String,
    pub line: Option<usize>,
}

/// Checks `expect` against a simulated rollout of `replicas`: every assertion that broke.
pub fn check(
    expect: &Expect,
    replicas: u32,
    report: &RolloutReport,
    last: &BTreeMap<u32, RevisionSnapshot>,
) -> Vec<Broken> {
    let mut broken = Vec::new();
    let events = &report.events;
    let finished = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::RolloutFinished { .. }))
        .map(|i| i + 1)
        .or(Some(events.len()).filter(|&n| n > 0));
    if let Some(outcome) = expect.outcome
        && report.outcome != outcome
    {
        broken.push(Broken {
            message: format!(
                "outcome = {:?}: it {} ({})",
                outcome_name(outcome),
                outcome_name(report.outcome),
                report.summary
            ),
            line: finished,
        });
    }
    let states = || {
        events
            .iter()
            .enumerate()
            .filter_map(|(i, e): (usize, &Event)| e.state.as_ref().map(|s| (i + 1, s)))
    };
    if let Some(min) = expect.min_ready
        && let Some((line, ready)) = states()
            .map(|(line, state)| (line, state.values().map(|r| r.ready).sum::<u32>()))
            .find(|&(_, ready)| ready < min)
    {
        broken.push(Broken {
            message: format!("min-ready = {min}: ready instances fell to {ready}"),
            line: Some(line),
        });
    }
    if let Some(surge) = expect.max_surge
        && let Some((line, running)) = states()
            .map(|(line, state)| (line, state.values().map(|r| r.current).sum::<u32>()))
            .find(|&(_, running)| running > replicas + surge)
    {
        broken.push(Broken {
            message: format!(
                "max-surge = {surge}: {running} instances ran, more than replicas + max-surge = {}",
                replicas + surge
            ),
            line: Some(line),
        });
    }
    if let Some(within) = expect.within {
        let took = finished.map(|line| Duration::from_millis(events[line - 1].at_ms));
        if took.is_none_or(|took| took > within) {
            broken.push(Broken {
                message: format!(
                    "within = {}: it finished after {}",
                    crate::spec::duration::format(within),
                    took.map_or("never".into(), |t| format!("{:.3}s", t.as_secs_f64()))
                ),
                line: finished,
            });
        }
    }
    if let Some(expected) = &expect.weights {
        let ended: BTreeMap<u32, u32> = last.iter().map(|(r, s)| (*r, s.weight)).collect();
        let differs = expected
            .keys()
            .chain(ended.keys())
            .any(|r| expected.get(r).copied().unwrap_or(0) != ended.get(r).copied().unwrap_or(0));
        if differs {
            broken.push(Broken {
                message: format!(
                    "weights = {}: they ended at {}",
                    weights_text(expected),
                    weights_text(&ended)
                ),
                line: Some(events.len()).filter(|&n| n > 0),
            });
        }
    }
    if let Some(text) = &expect.failure_contains {
        let failure = report.failure.as_ref().map(|f| f.to_string()).unwrap_or_default();
        if !failure.contains(text.as_str()) && !report.summary.contains(text.as_str()) {
            broken.push(Broken {
                message: format!(
                    "failure-contains = {text:?}: the failure was {:?} ({})",
                    failure, report.summary
                ),
                line: finished,
            });
        }
    }
    for (point, expected) in &expect.hooks {
        let last_run = events.iter().enumerate().rev().find_map(|(i, e)| match &e.kind {
            EventKind::Hook { point: p, outcome, .. } if p == point => Some((i + 1, outcome)),
            _ => None,
        });
        let (line, ended) = match last_run {
            None => (None, HookEnd::NotRun),
            Some((line, outcome)) => (
                Some(line),
                match outcome {
                    HookOutcome::Succeeded => HookEnd::Succeeded,
                    HookOutcome::Failed => HookEnd::Failed,
                    HookOutcome::FailureIgnored => HookEnd::FailureIgnored,
                    HookOutcome::NotConfigured => HookEnd::NotConfigured,
                },
            ),
        };
        if ended != *expected {
            broken.push(Broken {
                message: format!("hooks.{point} = {:?}: {}", expected.name(), ended.said()),
                line: line.or(finished),
            });
        }
    }
    broken
}

fn outcome_name(outcome: RolloutOutcome) -> &'static str {
    match outcome {
        RolloutOutcome::Succeeded => "succeeded",
        RolloutOutcome::RolledBack => "rolled-back",
        RolloutOutcome::Failed => "failed",
    }
}

fn weights_text(weights: &BTreeMap<u32, u32>) -> String {
    let parts: Vec<String> = weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(r, w)| format!("{r} = {w}"))
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// A scenario's result, for the report and JUnit.
#[derive(Debug)]
pub struct Ran {
    pub file: String,
    pub name: String,
    pub broken: Vec<Broken>,
    /// The timeline as `slipway simulate` prints it, a line each.
    pub timeline: Vec<String>,
    pub seconds: f64,
}

impl Ran {
    /// What broke, each with the timeline around its line.
    pub fn explain(&self) -> String {
        let mut text = String::new();
        for broken in &self.broken {
            match broken.line {
                Some(line) => {
                    let _ = writeln!(text, "{} (timeline line {line}):", broken.message);
                    let from = line.saturating_sub(3).max(1);
                    for n in from..=line.min(self.timeline.len()) {
                        let mark = if n == line { ">" } else { " " };
                        let _ = writeln!(text, "  {mark} {n:>4} {}", self.timeline[n - 1]);
                    }
                }
                None => {
                    let _ = writeln!(text, "{}", broken.message);
                }
            }
        }
        text
    }
}

/// The results as JUnit XML: a test suite per scenario file, a test case per scenario.
pub fn junit(results: &[Ran]) -> String {
    let mut files: Vec<&str> = Vec::new();
    for ran in results {
        if !files.contains(&ran.file.as_str()) {
            files.push(&ran.file);
        }
    }
    let failures = results.iter().filter(|r| !r.broken.is_empty()).count();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"slipway test\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for file in files {
        let cases: Vec<&Ran> = results.iter().filter(|r| r.file == file).collect();
        let failed = cases.iter().filter(|r| !r.broken.is_empty()).count();
        let time: f64 = cases.iter().map(|r| r.seconds).sum();
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" time=\"{time:.3}\">",
            escape(file),
            cases.len()
        );
        for ran in cases {
            let _ = write!(
                xml,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                escape(file),
                escape(&ran.name),
                ran.seconds
            );
            if ran.broken.is_empty() {
                xml.push_str("/>\n");
            } else {
                let _ = writeln!(
                    xml,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(&ran.broken[0].message),
                    escape(&ran.explain())
                );
            }
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// Text safe inside an XML attribute or element (and free of characters XML 1.0 forbids).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> anyhow::Result<ScenarioFile> {
        parse(text, Path::new("/work/scenarios.toml"))
    }

    #[test]
    fn a_scenario_file_reads_with_its_faults_and_assertions() {
        let file = parsed(
            r#"
strategy = "target/strategy.wasm"
[[scenario]]
name = "surge one"
replicas = 4
params = { max-surge = 1 }
faults = { crash = 0.2, start-delay = "5s", fail-hooks = ["mid"], errors = { 2 = 0.05 } }
expect = { outcome = "succeeded", min-ready = 4, max-surge = 1, within = "2m", weights = { 2 = 256 } }
"#,
        )
        .unwrap();
        assert_eq!(file.strategy.as_deref(), Some("/work/target/strategy.wasm"));
        let scenario = &file.scenarios[0];
        assert_eq!(scenario.rollout.replicas, 4);
        assert_eq!(scenario.rollout.params, r#"{"max-surge":1}"#);
        assert_eq!(scenario.rollout.cluster.start_delay_ms, 5000);
        assert_eq!(scenario.rollout.cluster.error_rates[&2], 0.05);
        assert_eq!(scenario.rollout.failing_hooks, vec![HookPoint::Mid]);
        assert_eq!(scenario.expect.within, Some(Duration::from_secs(120)));
        assert_eq!(scenario.expect.weights.as_ref().unwrap()[&2], 256);
    }

    #[test]
    fn mistakes_in_a_scenario_file_are_named() {
        let refused = |text: &str, says: &str| {
            let error = parsed(text).unwrap_err().to_string();
            assert!(error.contains(says), "{error:?} does not say {says:?}");
        };
        let with = |body: &str| format!("strategy = \"builtin:rolling\"\n[[scenario]]\nname = \"x\"\n{body}\n");
        refused("strategy = \"builtin:rolling\"\n", "no [[scenario]] tables");
        refused(&with(""), "no expect table");
        refused(&with("expect = {}"), "expect asserts nothing");
        refused(&with("expect = { outcome = \"won\" }"), "\"won\" is not an outcome");
        refused(&with("expect = { min-redy = 2 }"), "unknown field `min-redy`");
        refused(
            &with("faults = { crash = 2 }\nexpect = { min-ready = 1 }"),
            "faults.crash is a fraction",
        );
        refused(
            &with("faults = { errors = { 3 = 0.1 } }\nexpect = { min-ready = 1 }"),
            "\"3\" is not a revision",
        );
        refused(
            &with("faults = { fail-hooks = [\"later\"] }\nexpect = { min-ready = 1 }"),
            "\"later\" is not a hook",
        );
        refused(
            &with("within = \"soon\"\nexpect = { min-ready = 1 }"),
            "unknown field `within`",
        );
        refused(&with("expect = { within = \"soon\" }"), "expect.within");
        refused(
            &format!(
                "{}[[scenario]]\nname = \"x\"\nexpect = {{ min-ready = 1 }}\n",
                with("expect = { min-ready = 1 }")
            ),
            "another scenario has this name",
        );
    }

    #[test]
    fn junit_escapes_and_counts() {
        let results = vec![
            Ran {
                file: "a.toml".into(),
                name: "fine".into(),
                broken: vec![],
                timeline: vec![],
                seconds: 0.01,
            },
            Ran {
                file: "a.toml".into(),
                name: "<bad> & \"worse\"".into(),
                broken: vec![Broken {
                    message: "min-ready = 2: ready instances fell to 1".into(),
                    line: Some(2),
                }],
                timeline: vec!["0.000s one".into(), "1.000s two".into()],
                seconds: 0.02,
            },
        ];
        let xml = junit(&results);
        assert!(
            xml.contains("<testsuites name=\"slipway test\" tests=\"2\" failures=\"1\">"),
            "{xml}"
        );
        assert!(xml.contains("name=\"&lt;bad&gt; &amp; &quot;worse&quot;\""), "{xml}");
        assert!(
            xml.contains("(timeline line 2):\n       1 0.000s one\n  &gt;    2 1.000s two"),
            "{xml}"
        );
    }
}
