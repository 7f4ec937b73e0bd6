//! Resolving a spec's `secret-env` references when a process starts.
//!
//! **Invariant:** a secret's value lives only in the environment of the process it was
//! resolved for. It is never stored, logged, put in an event or sent by the API; errors name
//! the variable and where it should come from, never what it holds.

use std::collections::BTreeMap;

use crate::spec::SecretSource;

/// Reads every secret; `Err` names the first one that could not be read and why.
pub fn resolve(secrets: &BTreeMap<String, SecretSource>) -> Result<Vec<(String, String)>, String> {
    secrets
        .iter()
        .map(|(name, source)| Ok((name.clone(), read(name, source)?)))
        .collect()
}

/// Checks that every secret can be read now, without keeping any: a deploy whose secrets are
/// missing is refused before anything starts.
pub fn check(secrets: &BTreeMap<String, SecretSource>) -> Result<(), String> {
    resolve(secrets).map(drop)
}

fn read(name: &str, source: &SecretSource) -> Result<String, String> {
    match source {
        SecretSource::File(path) => {
            let mut text = std::fs::read_to_string(path).map_err(|error| {
                format!(
                    "secret-env {name}: cannot read {}: {error}; create the file (readable by the runner) or change the reference",
                    path.display()
                )
            })?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok(text)
        }
        SecretSource::Env(variable) => std::env::var(variable).map_err(|_| {
            format!("secret-env {name}: the runner's environment has no variable {variable}; set it where `slipway serve` starts")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_lose_one_trailing_newline_and_errors_hold_no_value() {
        let dir = std::env::temp_dir().join(format!("slipway-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("db");
        std::fs::write(&file, "postgres://u:hunter2@db/app\n").unwrap();
        let secrets = BTreeMap::from([("DATABASE_URL".to_string(), SecretSource::File(file.clone()))]);
        assert_eq!(
            resolve(&secrets).unwrap(),
            vec![("DATABASE_URL".to_string(), "postgres://u:hunter2@db/app".to_string())]
        );
        let missing = BTreeMap::from([(
            "TOKEN".to_string(),
            SecretSource::Env("SLIPWAY_TEST_NO_SUCH_VAR".into()),
        )]);
        let error = check(&missing).unwrap_err();
        assert!(
            error.contains("TOKEN") && error.contains("SLIPWAY_TEST_NO_SUCH_VAR"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
