//! Judging a revision by its live traffic, as the router saw it: the analysis the canary and
//! blue-green built-ins run, for any strategy to reuse.
//!
//! An [`Analysis`] is written in a strategy's parameters:
//!
//! ```json
//! { "window-seconds": 30, "min-requests": 100, "max-error-rate": "+1%", "max-p99": "250ms" }
//! ```
//!
//! `max-error-rate` is either absolute (`"1%"`: at most 1% of the revision's requests fail) or,
//! with a `+`, relative to the stable revision measured over the same window (`"+1%"`: at most
//! one percentage point above it). `max-p99` is a latency (`"250ms"`, `"1.5s"`) or, with a
//! `+`, how much slower than the stable revision's p99 it may be (`"+50%"`). A request fails
//! when it was answered with a 5xx or not answered at all.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::{Error, TimedOut, TrafficStats, Window, clock, log, traffic};

/// How a revision's traffic is judged.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Analysis {
    /// The window measured: the last this many seconds (at most 300).
    pub window_seconds: u32,
    /// Fewer requests than this in the window say nothing yet: the analysis waits for more.
    pub min_requests: u64,
    /// The most of the revision's requests that may fail.
    pub max_error_rate: RateLimit,
    /// The slowest the revision's p99 latency may be; none by default.
    pub max_p99: Option<LatencyLimit>,
    /// How long to wait for `min-requests` before the analysis fails.
    pub timeout_seconds: u32,
}

/// The default limit on errors: 1% of requests.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
/// The default number of requests needed before a window is judged.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            window_seconds: 30,
            min_requests: DEFAULT_MIN_REQUESTS,
            max_error_rate: RateLimit::Absolute(DEFAULT_MAX_ERROR_RATE),
            max_p99: None,
            timeout_seconds: 300,
        }
    }
}

/// A limit on the share of failed requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateLimit {
    /// At most this fraction (0.01 for `"1%"`).
    Absolute(f64),
    /// At most this many fraction points above the stable revision (`"+1%"`).
    AboveStable(f64),
}

/// A limit on the p99 latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LatencyLimit {
    /// At most this many microseconds (`"250ms"`).
    Absolute(u64),
    /// At most this fraction slower than the stable revision (`"+50%"` is 0.5).
    AboveStable(f64),
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (relative, number) = match text.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let fraction = percent(number)
            .filter(|f| (0.0..=1.0).contains(f))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an error rate; write a percentage from 0% to 100%, such as \"1%\", or \"+1%\" for one point above the stable revision"
                ))
            })?;
        Ok(if relative {
            RateLimit::AboveStable(fraction)
        } else {
            RateLimit::Absolute(fraction)
        })
    }
}

impl<'de> Deserialize<'de> for LatencyLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let limit = match text.strip_prefix('+') {
            Some(rest) => percent(rest).map(LatencyLimit::AboveStable),
            None => micros(&text).map(LatencyLimit::Absolute),
        };
        limit.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a latency limit; write a duration such as \"250ms\" or \"1.5s\", or \"+50%\" for at most half again the stable revision's p99"
            ))
        })
    }
}

/// `"1.5%"` as 0.015.
fn percent(text: &str) -> Option<f64> {
    let value: f64 = text.strip_suffix('%')?.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value / 100.0)
}

/// `"250ms"`, `"1.5s"` or `"800us"` in microseconds.
fn micros(text: &str) -> Option<u64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else {
        (text.strip_suffix('s')?, 1_000_000.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value > 0.0).then(|| (value * scale).round() as u64)
}

/// What the analysis compares the revision with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Baseline {
    /// Nothing: relative limits compare with zero errors and are skipped for latency.
    None,
    /// This revision, measured over the same window (a canary's stable revision).
    SameWindow(u32),
    /// These figures, measured before (the revision blue-green switched away from).
    Measured(TrafficStats),
}

impl Analysis {
    /// Checks the values beyond their types.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=300).contains(&self.window_seconds) {
            return Err(format!(
                "analysis window-seconds {} is out of range; the router keeps 1 to 300 seconds",
                self.window_seconds
            ));
        }
        if self.min_requests == 0 {
            return Err("analysis min-requests must be at least 1: an empty window proves nothing".into());
        }
        if self.timeout_seconds == 0 {
            return Err("analysis timeout-seconds must be at least 1".into());
        }
        Ok(())
    }

    /// Judges `revision`'s traffic over the last `window-seconds`, counting only from
    /// `since_ms` (a time `clock.now` returned, such as when its weight was set). With fewer
    /// than `min-requests` it waits, a second at a time, up to `timeout-seconds`. Returns the
    /// line that says why it passed; the error says why it did not.
    pub fn run(&self, revision: u32, since_ms: u64, baseline: Baseline) -> Result<String, Error> {
        let window_ms = u64::from(self.window_seconds) * 1000;
        let started = clock::now();
        loop {
            let now = clock::now();
            let window = Window::Since(since_ms.max(now.saturating_sub(window_ms)));
            let stats = traffic::stats(revision, window)?;
            if stats.requests >= self.min_requests {
                let stable = match baseline {
                    Baseline::None => None,
                    Baseline::SameWindow(stable) => Some(traffic::stats(stable, window)?),
                    Baseline::Measured(stats) => Some(stats),
                };
                let verdict = self.judge(&stats, stable.as_ref());
                match &verdict {
                    Ok(line) => log::info(line),
                    Err(line) => log::warn(line),
                }
                return verdict.map_err(Error::VerificationFailed);
            }
            if now.saturating_sub(started) >= u64::from(self.timeout_seconds) * 1000 {
                return Err(Error::Timeout(TimedOut {
                    message: format!(
                        "revision {revision}: only {} requests in the last {} s, fewer than the {} the analysis needs; waited {} s for more",
                        stats.requests,
                        stats.window_ms / 1000,
                        self.min_requests,
                        self.timeout_seconds
                    ),
                    counts: None,
                }));
            }
            clock::sleep(1000)?;
        }
    }

    /// The verdict on `stats`, given the stable revision's figures: a line for people either
    /// way, such as `revision 2: 412 requests, 0.5% errors, p99 12 ms — passed (at most 1%
    /// errors)`.
    pub fn judge(&self, stats: &TrafficStats, stable: Option<&TrafficStats>) -> Result<String, String> {
        let rate = error_rate(stats);
        let stable_rate = stable.map_or(0.0, error_rate);
        let mut limits = Vec::new();
        let mut broken = Vec::new();
        let (max_rate, rate_words) = match self.max_error_rate {
            RateLimit::Absolute(max) => (max, format!("at most {} errors", pct(max))),
            RateLimit::AboveStable(points) => {
                let shown = pct(points);
                let shown = shown.trim_end_matches('%');
                let unit = if shown == "1" { "point" } else { "points" };
                (
                    stable_rate + points,
                    format!("at most {shown} {unit} above the stable {} errors", pct(stable_rate)),
                )
            }
        };
        // A rate exactly at the limit passes; a hair above it (beyond float noise) does not.
        if rate > max_rate + 1e-9 {
            broken.push(rate_words.clone());
        }
        limits.push(rate_words);
        let p99 = stats.p99_us;
        match (self.max_p99, p99) {
            (Some(LatencyLimit::Absolute(max)), Some(p99)) => {
                let words = format!("p99 at most {}", latency(max));
                if p99 > max {
                    broken.push(words.clone());
                }
                limits.push(words);
            }
            (Some(LatencyLimit::AboveStable(more)), Some(p99)) => {
                if let Some(stable_p99) = stable.and_then(|s| s.p99_us) {
                    let max = (stable_p99 as f64 * (1.0 + more)).round() as u64;
                    let words = format!("p99 at most {} above the stable {}", pct(more), latency(stable_p99));
                    if p99 > max {
                        broken.push(words.clone());
                    }
                    limits.push(words);
                }
            }
            _ => {}
        }
        let seen = describe(stats);
        if broken.is_empty() {
            Ok(format!("{seen} — passed ({})", limits.join(", ")))
        } else {
            Err(format!("{seen} — failed: over the limit of {}", broken.join(" and ")))
        }
    }
}

/// The share of `stats`' requests that failed: 5xx answers and requests never answered.
pub fn error_rate(stats: &TrafficStats) -> f64 {
    if stats.requests == 0 {
        return 0.0;
    }
    (stats.server_errors + stats.connection_errors) as f64 / stats.requests as f64
}

/// `revision 2: 412 requests, 0.5% errors (2 5xx), p99 12 ms`.
pub fn describe(stats: &TrafficStats) -> String {
    let mut text = format!(
        "revision {}: {} requests in {} s, {} errors",
        stats.revision,
        stats.requests,
        stats.window_ms / 1000,
        pct(error_rate(stats))
    );
    if stats.server_errors + stats.connection_errors > 0 {
        let _ = write!(
            text,
            " ({} 5xx, {} unanswered)",
            stats.server_errors, stats.connection_errors
        );
    }
    if let Some(p99) = stats.p99_us {
        let _ = write!(text, ", p99 {}", latency(p99));
    }
    text
}

/// A fraction as a percentage with at most two decimals: `0.005` is `0.5%`.
fn pct(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Microseconds for people: `850 µs`, `3.2 ms`, `12 ms`, `1.5 s`.
fn latency(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..10_000 => format!("{:.1} ms", us as f64 / 1000.0),
        10_000..10_000_000 => format!("{} ms", us / 1000),
        _ => format!("{:.1} s", us as f64 / 1_000_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(revision: u32, requests: u64, errors: u64, p99_us: u64) -> TrafficStats {
        TrafficStats {
            revision,
            window_ms: 30_000,
            requests,
            informational: 0,
            successful: requests - errors,
            redirected: 0,
            client_errors: 0,
            server_errors: errors,
            connection_errors: 0,
            p50_us: Some(p99_us / 3),
            p90_us: Some(p99_us / 2),
            p99_us: Some(p99_us),
        }
    }

    fn parse(json: &str) -> Result<Analysis, String> {
        crate::parse_params::<Analysis>(json).map_err(|e| crate::describe(&e))
    }

    #[test]
    fn reads_limits_as_people_write_them() {
        let a = parse(r#"{"max-error-rate": "+1%", "max-p99": "250ms", "window-seconds": 10}"#).unwrap();
        assert_eq!(a.max_error_rate, RateLimit::AboveStable(0.01));
        assert_eq!(a.max_p99, Some(LatencyLimit::Absolute(250_000)));
        assert_eq!((a.window_seconds, a.min_requests), (10, DEFAULT_MIN_REQUESTS));
        assert_eq!(
            parse(r#"{"max-p99": "+50%"}"#).unwrap().max_p99,
            Some(LatencyLimit::AboveStable(0.5))
        );
        assert_eq!(
            parse(r#"{"max-p99": "1.5s"}"#).unwrap().max_p99,
            Some(LatencyLimit::Absolute(1_500_000))
        );
        assert_eq!(parse("{}").unwrap(), Analysis::default());
        assert!(
            parse(r#"{"max-error-rate": "lots"}"#)
                .unwrap_err()
                .contains("is not an error rate")
        );
        assert!(
            parse(r#"{"max-error-rate": "150%"}"#)
                .unwrap_err()
                .contains("from 0% to 100%")
        );
        assert!(
            parse(r#"{"max-p99": "fast"}"#)
                .unwrap_err()
                .contains("is not a latency limit")
        );
        assert!(
            parse(r#"{"max-error": "1%"}"#)
                .unwrap_err()
                .contains("unknown field `max-error`")
        );
        let window = parse(r#"{"window-seconds": 600}"#).unwrap().check().unwrap_err();
        assert!(window.contains("1 to 300 seconds"), "{window}");
    }

    #[test]
    fn absolute_limits() {
        let a = Analysis {
            max_p99: Some(LatencyLimit::Absolute(50_000)),
            ..Analysis::default()
        };
        let good = a.judge(&stats(2, 412, 2, 12_000), None).unwrap();
        assert_eq!(
            good,
            "revision 2: 412 requests in 30 s, 0.49% errors (2 5xx, 0 unanswered), p99 12 ms — passed (at most 1% errors, p99 at most 50 ms)"
        );
        let bad = a.judge(&stats(2, 1000, 50, 12_000), None).unwrap_err();
        assert!(
            bad.contains("5% errors") && bad.ends_with("failed: over the limit of at most 1% errors"),
            "{bad}"
        );
        let slow = a.judge(&stats(2, 1000, 0, 80_000), None).unwrap_err();
        assert!(slow.ends_with("over the limit of p99 at most 50 ms"), "{slow}");
        // Exactly at the limit passes.
        assert!(a.judge(&stats(2, 100, 1, 1_000), None).is_ok());
    }

    #[test]
    fn limits_relative_to_the_stable_revision() {
        let a = Analysis {
            max_error_rate: RateLimit::AboveStable(0.01),
            max_p99: Some(LatencyLimit::AboveStable(0.5)),
            ..Analysis::default()
        };
        let stable = stats(1, 9000, 180, 20_000); // 2% errors, p99 20 ms
        let line = a.judge(&stats(2, 1000, 25, 25_000), Some(&stable)).unwrap();
        assert!(line.contains("at most 1 point above the stable 2% errors"), "{line}");
        let worse = a.judge(&stats(2, 1000, 40, 25_000), Some(&stable)).unwrap_err();
        assert!(worse.contains("4% errors"), "{worse}");
        let slower = a.judge(&stats(2, 1000, 0, 31_000), Some(&stable)).unwrap_err();
        assert!(slower.contains("p99 at most 50% above the stable 20 ms"), "{slower}");
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(pct(0.005), "0.5%");
        assert_eq!(pct(0.05), "5%");
        assert_eq!(pct(0.0), "0%");
        assert_eq!(latency(850), "850 µs");
        assert_eq!(latency(3_240), "3.2 ms");
        assert_eq!(latency(412_000), "412 ms");
        assert_eq!(latency(12_000_000), "12.0 s");
    }
}
