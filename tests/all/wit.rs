//! The host API's compatibility promise: a released WIT version never changes.
//!
//! Every released version is kept, byte for byte, in `sdk/wit/released/`, with its digest in
//! `SHA256SUMS`. If the package in `sdk/wit/deploy.wit` still carries a released version
//! number, it must be identical to the frozen copy: changes go into a new minor version.

use sha2::{Digest, Sha256};

use crate::support::workspace;

#[test]
fn released_wit_versions_are_frozen() {
    let released = workspace().join("sdk/wit/released");
    let sums = std::fs::read_to_string(released.join("SHA256SUMS")).unwrap();
    let mut versions = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (digest, file) = line.split_once("  ").expect("sha256sum format");
        let bytes = std::fs::read(released.join(file)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            digest,
            "{file} changed: a released WIT version never changes; put the change in a new minor version"
        );
        versions.push((file.to_string(), bytes));
    }
    assert!(!versions.is_empty());

    let current = std::fs::read(workspace().join("sdk/wit/deploy.wit")).unwrap();
    let text = String::from_utf8_lossy(&current);
    let package = text.lines().find(|l| l.starts_with("package ")).unwrap();
    let version = package.trim_end_matches(';').rsplit('@').next().unwrap();
    let frozen = format!("slipway-deploy@{version}.wit");
    if let Some((_, bytes)) = versions.iter().find(|(file, _)| *file == frozen) {
        assert!(
            *bytes == current,
            "sdk/wit/deploy.wit differs from the released {frozen}; bump the package to a new minor version instead"
        );
    }
}

#[tokio::test]
async fn a_module_built_against_an_older_released_api_still_runs() {
    let old = crate::support::load_guest("fixture-api-0-1-0").await;
    let run = crate::support::Sim::new(3).run(&old).await;
    assert_eq!(
        run.report.outcome,
        slipway::events::RolloutOutcome::Succeeded,
        "{}",
        run.trace()
    );
    assert!(
        run.report.summary.contains("built against 0.1.0"),
        "{}",
        run.report.summary
    );
}
