//! Certificates from an ACME CA (RFC 8555: Let's Encrypt, or any other directory): for an
//! app whose `[router.tls]` says `acme = true`, the runner obtains one certificate naming
//! all of the app's hosts, proving each name over HTTP-01 on the app's plain listener, and
//! renews it once a third of its lifetime is left.
//!
//! The runner writes the certificate where the data plane's router reads it (and reads it
//! again when it changes); the router answers the CA's challenge requests from files the
//! runner writes beside it. So traffic goes on with the certificate in hand while the
//! runner is away, and a renewal never touches an open connection.
//!
//! Every issuance and every failure is an app event, and the app's status says what it has
//! now: the certificate's expiry and renewal time, or the CA's reason and the next try.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};

use crate::protocol::{CertificateState, CertificateStatus};
use crate::store::Store;

/// Let's Encrypt's production directory: where certificates come from unless the runner is
/// told otherwise.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where the CA asks for HTTP-01 challenge answers (RFC 8555 §8.3).
pub const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The certificate chain and key of `app`, as the runner writes them and the router reads
/// them.
pub fn cert_files(data_dir: &Path, app: &str) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("acme").join("certs").join(app);
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The directory of challenge answers: a file per token, holding its key authorization.
pub fn challenge_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme").join("challenges")
}

/// Whether `token` can name a challenge file: base64url, as RFC 8555 makes them.
pub fn valid_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// How the runner reaches its CA.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The directory URL.
    pub directory: String,
    /// An address the CA may write to about the account's certificates.
    pub contact: Option<String>,
    /// A PEM root certificate to trust for the directory's HTTPS instead of the system's
    /// (a private CA, or a test one such as Pebble).
    pub ca: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            directory: LETS_ENCRYPT.into(),
            contact: None,
            ca: None,
        }
    }
}

/// The runner's certificates: one task per app keeps the app's certificate current.
pub struct Certificates {
    config: AcmeConfig,
    data_dir: PathBuf,
    store: Store,
    /// The ACME account, registered on first use and kept in the data directory.
    account: tokio::sync::Mutex<Option<Account>>,
    apps: Mutex<HashMap<String, Managed>>,
}

struct Managed {
    hosts: Vec<String>,
    status: Arc<Mutex<CertificateStatus>>,
    task: tokio::task::AbortHandle,
}

/// What the runner knows of a certificate it obtained: kept beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Held {
    hosts: Vec<String>,
    directory: String,
    /// Unix seconds.
    not_before: u64,
    not_after: u64,
}

impl Held {
    /// When to renew: once a third of the lifetime is left (30 days of Let's Encrypt's 90).
    fn renew_at(&self) -> u64 {
        self.not_after - self.not_after.saturating_sub(self.not_before) / 3
    }
}

/// The longest one sleep lasts, so a wall clock that jumps is noticed.
const LONGEST_SLEEP: Duration = Duration::from_secs(3600);

/// How long after the `failures`-th failure in a row to try again: 1 minute, doubling to 6
/// hours (Let's Encrypt allows 5 failed validations per name and hour).
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(
        60u64
            .saturating_mul(1 << failures.saturating_sub(1).min(9))
            .min(6 * 3600),
    )
}

impl Certificates {
    pub fn new(config: AcmeConfig, data_dir: &Path, store: Store) -> Arc<Certificates> {
        Arc::new(Certificates {
            config,
            data_dir: data_dir.to_path_buf(),
            store,
            account: tokio::sync::Mutex::new(None),
            apps: Mutex::default(),
        })
    }

    /// Keeps `app`'s certificate for `hosts` current from now on; a no-op when it already
    /// does for the same hosts.
    pub fn manage(self: &Arc<Self>, app: &str, hosts: &[String]) {
        let mut hosts = hosts.to_vec();
        hosts.sort();
        hosts.dedup();
        let mut apps = self.apps.lock().unwrap();
        if apps.get(app).is_some_and(|m| m.hosts == hosts) {
            return;
        }
        let status = Arc::new(Mutex::new(CertificateStatus {
            hosts: hosts.clone(),
            directory: self.config.directory.clone(),
            state: CertificateState::Obtaining,
            not_after: None,
            renew_at: None,
            error: None,
            next_try: None,
        }));
        let task = tokio::spawn(self.clone().keep(app.to_string(), hosts.clone(), status.clone()));
        if let Some(old) = apps.insert(
            app.to_string(),
            Managed {
                hosts,
                status,
                task: task.abort_handle(),
            },
        ) {
            old.task.abort();
        }
    }

    /// Stops keeping `app`'s certificate; with `remove`, deletes it (the app is gone).
    pub fn forget(&self, app: &str, remove: bool) {
        if let Some(managed) = self.apps.lock().unwrap().remove(app) {
            managed.task.abort();
        }
        if remove {
            let (cert, _) = cert_files(&self.data_dir, app);
            if let Some(dir) = cert.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// What `app` has now, if its certificate comes from ACME.
    pub fn status(&self, app: &str) -> Option<CertificateStatus> {
        let apps = self.apps.lock().unwrap();
        apps.get(app).map(|m| m.status.lock().unwrap().clone())
    }

    /// The task behind [`Certificates::manage`]: obtains the certificate when there is none
    /// for these hosts, renews it when due, and after a failure tries again later.
    async fn keep(self: Arc<Self>, app: String, hosts: Vec<String>, status: Arc<Mutex<CertificateStatus>>) {
        let mut failures = 0u32;
        loop {
            let held = self
                .held(&app)
                .filter(|h| h.hosts == hosts && h.directory == self.config.directory);
            let now = now_seconds();
            if let Some(held) = &held {
                let mut status = status.lock().unwrap();
                status.not_after = Some(held.not_after);
                status.renew_at = Some(held.renew_at());
                if now < held.renew_at() {
                    status.state = CertificateState::Valid;
                    status.error = None;
                    status.next_try = None;
                }
            }
            if let Some(held) = &held
                && now < held.renew_at()
            {
                let wait = Duration::from_secs(held.renew_at() - now).min(LONGEST_SLEEP);
                tokio::time::sleep(wait).await;
                continue;
            }
            let renewing = held.is_some();
            match self.obtain(&app, &hosts).await {
                Ok(new) => {
                    failures = 0;
                    let message = format!(
                        "certificate for {} {} from {}: valid until {} UTC, renewed from {} UTC",
                        hosts.join(", "),
                        if renewing { "renewed" } else { "obtained" },
                        self.config.directory,
                        crate::civil::format_utc(new.not_after * 1000),
                        crate::civil::format_utc(new.renew_at() * 1000),
                    );
                    tracing::info!(%app, "{message}");
                    let _ = self.store.app_event(&app, "info", &message);
                    let mut status = status.lock().unwrap();
                    status.state = CertificateState::Valid;
                    status.error = None;
                    status.next_try = None;
                }
                Err(error) => {
                    failures += 1;
                    let wait = backoff(failures);
                    let error = format!("{error:#}");
                    let message = format!(
                        "could not {} the certificate for {} from {}: {error}; trying again in {} s{}",
                        if renewing { "renew" } else { "obtain" },
                        hosts.join(", "),
                        self.config.directory,
                        wait.as_secs(),
                        if renewing {
                            " (the current certificate is served until then)"
                        } else {
                            " (HTTPS clients asking for these names are refused until then)"
                        },
                    );
                    tracing::warn!(%app, "{message}");
                    let _ = self.store.app_event(&app, "warn", &message);
                    {
                        let mut status = status.lock().unwrap();
                        status.state = CertificateState::Failed;
                        status.error = Some(error);
                        status.next_try = Some(now_seconds() + wait.as_secs());
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// What is on disk for `app`, if its files are all there.
    fn held(&self, app: &str) -> Option<Held> {
        let (cert, key) = cert_files(&self.data_dir, app);
        if !cert.exists() || !key.exists() {
            return None;
        }
        let text = std::fs::read(cert.with_file_name("held.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// One order: challenges answered, the certificate fetched and written.
    async fn obtain(&self, app: &str, hosts: &[String]) -> anyhow::Result<Held> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("the CA refused the order")?;
        let challenges = challenge_dir(&self.data_dir);
        private_dirs(&challenges)?;
        let mut answered = Answered::default();
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.context("cannot read an authorization")?;
            let name = authorization.identifier().to_string();
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("the CA says the authorization for {name} is {other:?}"),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| anyhow!("the CA offers no HTTP-01 challenge for {name}"))?;
            if !valid_token(&challenge.token) {
                bail!("the CA's challenge token for {name} is not base64url");
            }
            let file = challenges.join(&challenge.token);
            std::fs::write(&file, challenge.key_authorization().as_str())
                .with_context(|| format!("cannot write the challenge answer {}", file.display()))?;
            answered.0.push(file);
            challenge
                .set_ready()
                .await
                .with_context(|| format!("the CA refused the challenge for {name}"))?;
        }
        let polling = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(90));
        let state = order.poll_ready(&polling).await.map_err(|e| explain(e, hosts))?;
        if state != OrderStatus::Ready {
            // Why: the challenge errors of the names that failed.
            let mut reasons = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(authorization)) = authorizations.next().await {
                let name = authorization.identifier().to_string();
                for challenge in &authorization.challenges {
                    if let Some(problem) = &challenge.error {
                        reasons.push(format!(
                            "{name}: {}",
                            problem.detail.as_deref().unwrap_or("validation failed")
                        ));
                    }
                }
            }
            if reasons.is_empty() {
                bail!("the CA did not validate the names (order {state:?})");
            }
            bail!(
                "the CA could not validate {} over HTTP-01 on port 80 of each name: {}",
                hosts.join(", "),
                reasons.join("; ")
            );
        }
        let key_pem = order.finalize().await.context("the CA refused to finalize the order")?;
        let chain_pem = order
            .poll_certificate(&polling)
            .await
            .context("the CA did not hand out the certificate")?;
        drop(answered);
        let (not_before, not_after) = leaf_validity(&chain_pem)?;
        let held = Held {
            hosts: hosts.to_vec(),
            directory: self.config.directory.clone(),
            not_before,
            not_after,
        };
        self.write(app, &held, &chain_pem, &key_pem)?;
        Ok(held)
    }

    /// Writes the key, the chain and what is known of them, each file replaced whole; the
    /// router reads the pair once both have changed and they match.
    fn write(&self, app: &str, held: &Held, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        let (cert, key) = cert_files(&self.data_dir, app);
        private_dirs(cert.parent().expect("the certificate is in a directory"))?;
        replace(&key, key_pem.as_bytes())?;
        replace(&cert, chain_pem.as_bytes())?;
        replace(&cert.with_file_name("held.json"), &serde_json::to_vec_pretty(held)?)?;
        Ok(())
    }

    /// The account, registered (or read back) on first use.
    async fn account(&self) -> anyhow::Result<Account> {
        let mut account = self.account.lock().await;
        if let Some(account) = &*account {
            return Ok(account.clone());
        }
        let file = self.data_dir.join("acme").join("account.json");
        let builder = || -> anyhow::Result<_> {
            Ok(match &self.config.ca {
                Some(ca) => Account::builder_with_root(ca)
                    .with_context(|| format!("cannot trust the CA certificate {}", ca.display()))?,
                None => Account::builder().context("cannot use the system's trusted certificates")?,
            })
        };
        #[derive(Serialize, Deserialize)]
        struct Saved {
            directory: String,
            credentials: AccountCredentials,
        }
        let saved = std::fs::read(&file)
            .ok()
            .and_then(|text| serde_json::from_slice::<Saved>(&text).ok())
            .filter(|saved| saved.directory == self.config.directory);
        let created = match saved {
            Some(saved) => builder()?
                .from_credentials(saved.credentials)
                .await
                .with_context(|| format!("cannot use the ACME account saved in {}", file.display()))?,
            None => {
                let contact: Vec<String> = self.config.contact.iter().map(|c| format!("mailto:{c}")).collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (created, credentials) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        None,
                    )
                    .await
                    .with_context(|| format!("cannot register an account with {}", self.config.directory))?;
                private_dirs(file.parent().expect("the account file is in a directory"))?;
                let saved = Saved {
                    directory: self.config.directory.clone(),
                    credentials,
                };
                replace(&file, &serde_json::to_vec(&saved)?)?;
                created
            }
        };
        *account = Some(created.clone());
        Ok(created)
    }
}

/// Challenge answer files, removed when the order is over however it ends.
#[derive(Default)]
struct Answered(Vec<PathBuf>);

impl Drop for Answered {
    fn drop(&mut self) {
        for file in &self.0 {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// A polling error in words about the names.
fn explain(error: instant_acme::Error, hosts: &[String]) -> anyhow::Error {
    match error {
        instant_acme::Error::Timeout(_) => anyhow!(
            "the CA did not validate {} within 90 s; is port 80 of each name this machine's plain listener?",
            hosts.join(", ")
        ),
        instant_acme::Error::Api(problem) => anyhow!(
            "the CA could not validate {} over HTTP-01 (it asks each name's port 80 for /.well-known/acme-challenge/…, which the app's plain listener answers): {}",
            hosts.join(", "),
            problem.detail.as_deref().unwrap_or("no reason given")
        ),
        other => anyhow!(other).context("the CA did not validate the names"),
    }
}

fn now_seconds() -> u64 {
    crate::store::now_ms() / 1000
}

/// Creates `dir` (and its parents) for the runner's user only.
fn private_dirs(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes `bytes` to `path` whole, for the runner's user only.
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::files::replace_private(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The validity (Unix seconds) of the first certificate in a PEM chain.
fn leaf_validity(chain_pem: &str) -> anyhow::Result<(u64, u64)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| anyhow!("the CA's answer holds no certificate"))?
        .context("the CA's certificate is not PEM")?;
    validity(&leaf).ok_or_else(|| anyhow!("cannot read the validity of the CA's certificate"))
}

/// `notBefore` and `notAfter` of a DER certificate (RFC 5280 §4.1), in Unix seconds.
fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (certificate, _) = element(der, 0x30)?;
    let (tbs, _) = element(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1; // version
    }
    rest = element(rest, 0x02)?.1; // serial number
    rest = element(rest, 0x30)?.1; // signature algorithm
    rest = element(rest, 0x30)?.1; // issuer
    let (validity, _) = element(rest, 0x30)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// The content of the DER element at the start of `input` if its tag is `tag`, and what
/// follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, input) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&length, mut input) = input.split_first()?;
    let length = if length < 0x80 {
        usize::from(length)
    } else {
        let count = usize::from(length & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, after) = input.split_at(count);
        input = after;
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    (input.len() >= length).then(|| input.split_at(length))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in Unix seconds.
fn time(input: &[u8]) -> Option<(u64, &[u8])> {
    let (text, rest, year) = match input.first()? {
        0x17 => {
            let (text, rest) = element(input, 0x17)?;
            let yy: i64 = std::str::from_utf8(text.get(..2)?).ok()?.parse().ok()?;
            (text.get(2..)?, rest, if yy >= 50 { 1900 + yy } else { 2000 + yy })
        }
        0x18 => {
            let (text, rest) = element(input, 0x18)?;
            let yyyy: i64 = std::str::from_utf8(text.get(..4)?).ok()?.parse().ok()?;
            (text.get(4..)?, rest, yyyy)
        }
        _ => return None,
    };
    // MMDDHHMMSSZ
    if text.len() != 11 || text[10] != b'Z' {
        return None;
    }
    let field = |i: usize| -> Option<u32> { std::str::from_utf8(&text[i..i + 2]).ok()?.parse().ok() };
    let seconds = crate::civil::unix_seconds(year, field(0)?, field(2)?, field(4)?, field(6)?, field(8)?)?;
    Some((seconds, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_validity_is_read_from_its_der() {
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "/dev/null",
                "-subj",
                "/CN=validity.test",
                "-days",
                "90",
            ])
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pem = String::from_utf8(out.stdout).unwrap();
        let (not_before, not_after) = leaf_validity(&pem).unwrap();
        let now = now_seconds();
        assert!(not_before.abs_diff(now) < 300, "{not_before} vs {now}");
        // openssl reads the clock once per bound, so "90 days" may be a second
        // longer; its own reading of the certificate is the exact answer.
        assert_eq!((not_before, not_after), openssl_dates(&pem));
        assert!((90 * 86_400..=90 * 86_400 + 1).contains(&(not_after - not_before)));
        let held = Held {
            hosts: vec![],
            directory: String::new(),
            not_before,
            not_after,
        };
        assert_eq!(held.renew_at(), not_before + 60 * 86_400);
        // GeneralizedTime, as certificates past 2049 carry.
        let generalized = [
            0x18, 15, b'2', b'0', b'5', b'0', b'0', b'1', b'0', b'1', b'0', b'0', b'0', b'0', b'0', b'0', b'Z',
        ];
        assert_eq!(
            time(&generalized).map(|t| t.0),
            crate::civil::unix_seconds(2050, 1, 1, 0, 0, 0)
        );
        assert_eq!(validity(b"\x30\x03\x02\x01\x01"), None);
    }

    /// The validity openssl itself reads from a certificate, as Unix seconds.
    fn openssl_dates(pem: &str) -> (u64, u64) {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-startdate", "-enddate", "-dateopt", "iso_8601"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run openssl x509");
        child.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        // notBefore=2026-12-01 10:08:05Z
        let date = |key: &str| -> u64 {
            let line = text.lines().find_map(|l| l.strip_prefix(key)).expect(key);
            let n: Vec<u32> = line
                .trim_end_matches('Z')
                .split(['-', ' ', ':'])
                .map(|f| f.parse().unwrap())
                .collect();
            crate::civil::unix_seconds(n[0].into(), n[1], n[2], n[3], n[4], n[5]).unwrap()
        };
        (date("notBefore="), date("notAfter="))
    }

    #[test]
    fn tokens_are_file_names_and_failures_back_off() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token("../../etc/passwd"));
        assert!(!valid_token(""));
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(30), Duration::from_secs(6 * 3600));
    }
}
