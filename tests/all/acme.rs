//! Certificates over ACME, for real: Let's Encrypt's test CA Pebble (Debian's `pebble`) and
//! its DNS server (`pebble-challtestsrv`, every name on 127.0.0.1) run on loopback; the
//! runner registers an account, answers HTTP-01 on the app's plain listener, gets a
//! certificate that `curl` verifies against Pebble's root, and renews it before expiry. A
//! name the CA cannot reach fails, and the app's status says why.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lifecycle::{listen, text};
use crate::runner::{HelloSpec, Server, free_port, unique_dir, write_spec};
use crate::support::exclusive;

/// Pebble and its DNS server, killed (and reaped) on drop.
pub struct Pebble {
    children: Vec<Child>,
    dir: PathBuf,
    /// The directory URL.
    pub directory: String,
    /// The CA that signs Pebble's own HTTPS (trust it to reach the directory).
    pub api_ca: PathBuf,
    management: u16,
    dns_management: u16,
}

impl Pebble {
    /// Pebble validating HTTP-01 on `http_port` of each name, issuing certificates valid
    /// for `validity`.
    pub fn start(http_port: u16, validity: Duration) -> Pebble {
        let dir = unique_dir("pebble");
        let issued = Command::new("sh")
            .arg(crate::support::workspace().join("tests/tls/issue.sh"))
            .arg(&dir)
            .arg("localhost")
            .output()
            .expect("run tests/tls/issue.sh");
        assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
        let (api, management, dns, dns_management) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{api}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": dir.join("localhost.pem"),
                "privateKey": dir.join("localhost.key"),
                "httpPort": http_port,
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity.as_secs(),
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv (apt-get install pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random validation delays, no refused nonces, every order validated anew.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble (apt-get install pebble)");
        let pebble = Pebble {
            children: vec![dns_server, pebble],
            api_ca: dir.join("ca.pem"),
            directory: format!("https://localhost:{api}/dir"),
            dir,
            management,
            dns_management,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while pebble.get(&pebble.directory).is_none() {
            assert!(Instant::now() < deadline, "pebble did not start: {}", pebble.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        pebble
    }

    /// The environment that points a runner at this Pebble.
    pub fn runner_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SLIPWAY_ACME_DIRECTORY", self.directory.clone()),
            ("SLIPWAY_ACME_CA", self.api_ca.display().to_string()),
            ("SLIPWAY_ACME_EMAIL", "ops@example.test".into()),
        ]
    }

    /// Pebble's root, which signs the certificates it issues (new at every start).
    pub fn root(&self) -> PathBuf {
        let file = self.dir.join("issuer-root.pem");
        if !file.exists() {
            let root = self
                .get(&format!("https://localhost:{}/roots/0", self.management))
                .expect("pebble's root");
            std::fs::write(&file, root).unwrap();
        }
        file
    }

    /// Answers DNS A queries for `host` with `address` instead of 127.0.0.1.
    pub fn resolve(&self, host: &str, address: &str) {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-d"])
            .arg(serde_json::json!({"host": host, "addresses": [address]}).to_string())
            .arg(format!("http://127.0.0.1:{}/add-a", self.dns_management))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn get(&self, url: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
            .arg(&self.api_ca)
            .arg(url)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// hello as `name`, answering for `host` on `plain` and over HTTPS on `https` with a
/// certificate from ACME.
pub fn acme_spec(name: &str, host: &str, version: &str, plain: SocketAddr, https: SocketAddr) -> String {
    let toml = HelloSpec {
        listen: plain,
        version,
        strategy: "builtin:blue-green",
        ..HelloSpec::default()
    }
    .toml()
    .replace("name = \"hello\"", &format!("name = \"{name}\""));
    format!("{toml}\n[router]\nhosts = [\"{host}\"]\n\n[router.tls]\nlisten = \"{https}\"\nacme = true\n")
}

/// `curl` over HTTPS to `host` at `https`, trusting only `root`: the body, or curl's error.
pub fn https_get(root: &Path, host: &str, https: SocketAddr, path: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(root)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", https.port()))
        .arg(format!("https://{host}:{}{path}", https.port()))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// What plain HTTP at `plain` answers a GET of `path` for `host`: "STATUS LOCATION".
pub fn plain_redirect(plain: SocketAddr, host: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{plain}{path}"))
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the app's certificate is in `state` (`valid`, `failed`): its status.
pub fn wait_certificate(server: &Server, app: &str, state: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let status = server.get_json(&format!("/v1/apps/{app}"));
        let certificate = &status["certificate"];
        if certificate["state"] == state {
            return certificate.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{app}'s certificate is not {state} after {within:?}: {certificate}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until HTTPS for `host` is served with a certificate `root` verifies (the router
/// looks at the certificate files every second).
pub fn wait_served(root: &Path, host: &str, https: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(error) = https_get(root, host, https, "/healthz") {
        assert!(Instant::now() < deadline, "{host} is not served over HTTPS: {error}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The serial number of the certificate served for `host` (as openssl prints it).
pub fn served_serial(root: &Path, host: &str, https: SocketAddr) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{} -servername {host} -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
            https.port(),
            root.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_certificate_comes_from_pebble_over_http_01_and_is_renewed_before_it_expires() {
    let _serial = exclusive();
    let (plain, https) = (listen(), listen());
    // Certificates valid for 30 s: renewed when 10 s are left.
    let pebble = Pebble::start(plain.port(), Duration::from_secs(30));
    // The app names its host and no address: it is served on the runner's front door.
    let mut env = pebble.runner_env();
    env.push(("SLIPWAY_FRONT_HTTP", plain.to_string()));
    env.push(("SLIPWAY_FRONT_HTTPS", https.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(&unique_dir("acme-data"), free_port(), &env);
    let spec = acme_spec("shop", "shop.test", "v1", plain, https)
        .replace(&format!("listen = \"{plain}\"\n"), "")
        .replace(&format!("listen = \"{https}\"\n"), "");
    assert!(!spec.contains("listen"), "{spec}");
    let out = server.cli(&["deploy", write_spec(&spec).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let first = wait_certificate(&server, "shop", "valid", Duration::from_secs(60));
    assert_eq!(first["hosts"], serde_json::json!(["shop.test"]));
    let (not_after, renew_at) = (
        first["not_after"].as_u64().unwrap(),
        first["renew_at"].as_u64().unwrap(),
    );
    // A third of the lifetime (Pebble's last valid second is the 30th's start).
    assert!((9..=10).contains(&(not_after - renew_at)), "{first}");
    // A browser that trusts Pebble's root reaches the app.
    let root = pebble.root();
    wait_served(&root, "shop.test", https);
    assert_eq!(
        https_get(&root, "shop.test", https, "/").as_deref(),
        Ok("hello from v1\n")
    );
    let serial = served_serial(&root, "shop.test", https);
    assert!(serial.starts_with("serial="), "{serial}");
    // The key is the runner's alone.
    let key = server.data.join("acme/certs/shop/key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let out = server.cli(&["status", "shop"]);
    assert!(
        text(&out).contains("certificate for shop.test: valid until"),
        "{}",
        text(&out)
    );

    // Renewed once 20 s of its 30 are gone, and the new one is served.
    let deadline = Instant::now() + Duration::from_secs(40);
    let renewed = loop {
        let status = server.get_json("/v1/apps/shop")["certificate"].clone();
        if status["not_after"].as_u64().is_some_and(|n| n > not_after) && status["state"] == "valid" {
            break status;
        }
        assert!(Instant::now() < deadline, "not renewed: {status}\n{}", pebble.log());
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(renewed["renew_at"].as_u64().unwrap() > renew_at);
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_serial(&root, "shop.test", https) == serial {
        assert!(Instant::now() < deadline, "the router still serves the old certificate");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        https_get(&root, "shop.test", https, "/").as_deref(),
        Ok("hello from v1\n")
    );
    let events = server.get_json("/v1/apps/shop/revisions")["events"].to_string();
    assert!(
        events.contains("certificate for shop.test obtained from https://localhost:")
            && events.contains("certificate for shop.test renewed from"),
        "{events}"
    );
}

#[test]
fn a_name_the_ca_cannot_reach_is_a_failure_the_app_and_status_show_while_plain_http_serves() {
    let _serial = exclusive();
    let (plain, https) = (listen(), listen());
    let pebble = Pebble::start(plain.port(), Duration::from_secs(3600));
    // The CA looks for broken.test on an address where nothing listens.
    pebble.resolve("broken.test", "127.0.0.2");
    let env = pebble.runner_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(&unique_dir("acme-data"), free_port(), &env);
    let out = server.cli(&[
        "deploy",
        write_spec(&acme_spec("broken", "broken.test", "v1", plain, https))
            .to_str()
            .unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let failed = wait_certificate(&server, "broken", "failed", Duration::from_secs(60));
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("could not validate broken.test") && error.contains("127.0.0.2"),
        "{failed}"
    );
    assert!(failed["next_try"].as_u64().is_some(), "{failed}");
    assert!(failed.get("not_after").is_none(), "{failed}");
    let status = text(&server.cli(&["status", "broken"]));
    assert!(
        status.contains("! certificate for broken.test: FAILED: ")
            && status.contains("no certificate is served for these names yet"),
        "{status}"
    );
    let events = server.get_json("/v1/apps/broken/revisions")["events"].to_string();
    assert!(
        events.contains("could not obtain the certificate for broken.test") && events.contains("trying again in 60 s"),
        "{events}"
    );
    // The app answers plain HTTP all the while; HTTPS for the name is refused, not faked.
    let out = Command::new("curl")
        .args(["-sS", "-H", "Host: broken.test"])
        .arg(format!("http://{plain}/"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from v1\n");
    assert!(https_get(&pebble.root(), "broken.test", https, "/").is_err());
}

#[test]
fn haproxy_answers_the_challenges_serves_the_certificate_from_pebble_and_redirects_the_rest() {
    let _serial = exclusive();
    let (plain, https) = (listen(), listen());
    let pebble = Pebble::start(plain.port(), Duration::from_secs(3600));
    let env = pebble.runner_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with(&unique_dir("acme-data"), free_port(), &env);
    // Every plain request is redirected to HTTPS, but the CA's challenges are answered.
    let spec = acme_spec("shop", "shop.test", "v1", plain, https)
        .replace("[router]\n", "[router]\nkind = \"haproxy\"\nredirect-https = true\n");
    let out = server.cli(&["deploy", write_spec(&spec).to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    wait_certificate(&server, "shop", "valid", Duration::from_secs(60));
    let root = pebble.root();
    wait_served(&root, "shop.test", https);
    assert_eq!(
        https_get(&root, "shop.test", https, "/").as_deref(),
        Ok("hello from v1\n")
    );
    let seen = https_get(&root, "shop.test", https, "/headers").unwrap();
    assert!(
        seen.contains("x-forwarded-proto: https\n")
            && seen.contains(&format!(
                "forwarded: for=127.0.0.1;host=\"shop.test:{}\";proto=https\n",
                https.port()
            )),
        "{seen}"
    );
    assert_eq!(
        plain_redirect(plain, "shop.test", "/cart"),
        format!("308 https://shop.test:{}/cart", https.port())
    );
    // A token no order waits for is a 404 from the data plane, not a redirect.
    assert_eq!(
        plain_redirect(plain, "shop.test", "/.well-known/acme-challenge/nothing-here"),
        "404 "
    );
    let events = server.get_json("/v1/apps/shop/revisions")["events"].to_string();
    assert!(events.contains("certificate for shop.test obtained from"), "{events}");
}
