//! Small helpers most strategies need: parameters, absolute-or-percent counts, traffic splits.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::{Error, RolloutContext, RouteWeight};

/// Parses the strategy's parameters (the spec's JSON) into `T`.
///
/// Derive `Deserialize` with `#[serde(deny_unknown_fields, rename_all = "kebab-case")]` so
/// that a misspelt parameter fails the rollout with a message naming it, before anything
/// changes.
pub fn params<T: DeserializeOwned>(ctx: &RolloutContext) -> Result<T, Error> {
    parse_params(&ctx.params)
}

/// Parses parameters given as JSON (`params` in the context, or `validate`'s argument).
pub fn parse_params<T: DeserializeOwned>(raw: &str) -> Result<T, Error> {
    let raw = if raw.trim().is_empty() { "{}" } else { raw };
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::Invalid(format!("strategy parameters: {inner}"))
        } else {
            Error::Invalid(format!("strategy parameter `{path}`: {inner}"))
        }
    })
}

/// A count given either absolutely (`2`) or as a percentage of the replicas (`"25%"`),
/// like `max-surge` and `max-unavailable` in Kubernetes and OpenShift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    Count(u32),
    Percent(u32),
}

impl IntOrPercent {
    /// Resolves against `total` replicas, rounding a percentage up (surge) or down
    /// (unavailable), as the Kubernetes controllers do.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(total) * u64::from(p);
                let value = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
                u32::try_from(value).unwrap_or(u32::MAX)
            }
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(n) => Ok(IntOrPercent::Count(n)),
            Raw::Text(text) => parse_int_or_percent(&text).map_err(serde::de::Error::custom),
        }
    }
}

fn parse_int_or_percent(text: &str) -> Result<IntOrPercent, String> {
    let text = text.trim();
    let bad = || format!("expected a count like 2 or a percentage like \"25%\", found {text:?}");
    match text.strip_suffix('%') {
        Some(number) => {
            let p: u32 = number.trim().parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(format!("percentage {p}% is above 100%"));
            }
            Ok(IntOrPercent::Percent(p))
        }
        None => text.parse().map(IntOrPercent::Count).map_err(|_| bad()),
    }
}

/// Splits the route's 256 weight units across revisions in proportion to `shares`
/// (for example ready instances), giving every revision with a non-zero share at least 1.
/// Revisions with share 0 are left out, which takes them out of load balancing.
pub fn split_weights(shares: &[(u32, u32)]) -> Vec<RouteWeight> {
    let total: u64 = shares.iter().map(|&(_, share)| u64::from(share)).sum();
    if total == 0 {
        return Vec::new();
    }
    shares
        .iter()
        .filter(|&&(_, share)| share > 0)
        .map(|&(revision, share)| {
            let weight = (u64::from(share) * 256 / total).max(1);
            RouteWeight {
                revision,
                weight: weight as u32,
            }
        })
        .collect()
}

/// Log lines for the rollout's event log.
pub mod log {
    use crate::{LogLevel, logging};

    pub fn debug(message: &str) {
        logging::log(LogLevel::Debug, message);
    }
    pub fn info(message: &str) {
        logging::log(LogLevel::Info, message);
    }
    pub fn warn(message: &str) {
        logging::log(LogLevel::Warn, message);
    }
    pub fn error(message: &str) {
        logging::log(LogLevel::Error, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(IntOrPercent::Percent(25).resolve(10, true), 3);
        assert_eq!(IntOrPercent::Percent(25).resolve(10, false), 2);
        assert_eq!(IntOrPercent::Count(4).resolve(10, true), 4);
    }

    #[test]
    fn parses_counts_and_percentages() {
        assert_eq!(parse_int_or_percent("25%"), Ok(IntOrPercent::Percent(25)));
        assert_eq!(parse_int_or_percent("3"), Ok(IntOrPercent::Count(3)));
        assert!(parse_int_or_percent("150%").unwrap_err().contains("above 100%"));
        assert!(parse_int_or_percent("lots").unwrap_err().contains("expected a count"));
    }

    #[test]
    fn weights_follow_shares() {
        let w = split_weights(&[(1, 3), (2, 1)]);
        assert_eq!(
            w,
            vec![
                RouteWeight {
                    revision: 1,
                    weight: 192
                },
                RouteWeight {
                    revision: 2,
                    weight: 64
                }
            ]
        );
        let w = split_weights(&[(1, 1000), (2, 1)]);
        assert_eq!(w[1].weight, 1);
        assert!(split_weights(&[(1, 0)]).is_empty());
    }
}
