//! Fakes for a hook's outside world in simulation: what `hook-env.exec` and
//! `outbound-http.send` answer when `slipway simulate` or `slipway test` runs a real hook
//! module. Grants are still enforced (a call the hook is not granted is `denied`, as in a
//! real rollout); a granted call is answered by the first fake that matches it, and takes
//! its time on the simulated clock.

use std::time::Duration;

use serde::Deserialize;

/// The answers one simulated rollout's hooks get.
#[derive(Clone, Debug, Default)]
pub struct Fakes {
    pub exec: Vec<FakeExec>,
    pub http: Vec<FakeHttp>,
    /// Answer a call no fake matches with success (exit 0, or 200 with an empty body), and
    /// let a hook reach any host: what `slipway simulate --hook` does. Otherwise such a
    /// call is an error naming the fake to add.
    pub answer_unmatched: bool,
}

/// An answer to `exec` calls whose arguments start with `args`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FakeExec {
    /// The call's first arguments; `"*"` matches any one argument.
    pub args: Vec<String>,
    /// The exit code (default 0).
    #[serde(default)]
    pub exit: i32,
    /// What the command printed.
    #[serde(default)]
    pub output: String,
    /// How long the command runs (simulated time); longer than the call's timeout, it is
    /// killed at the timeout.
    #[serde(default, with = "crate::spec::duration")]
    pub takes: Duration,
}

/// An answer to requests for `url` (a trailing `*` matches any rest).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FakeHttp {
    pub url: String,
    /// Only requests with this method (default: any).
    pub method: Option<String>,
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    /// How long the answer takes (simulated time); longer than the request's timeout, the
    /// request times out.
    #[serde(default, with = "crate::spec::duration")]
    pub takes: Duration,
    /// The request fails with this error instead of an answer (e.g. "connection refused").
    pub error: Option<String>,
}

fn ok() -> u16 {
    200
}

impl Fakes {
    /// The fake answering `exec` of `args`.
    pub fn exec_for(&self, args: &[String]) -> Option<&FakeExec> {
        self.exec.iter().find(|fake| {
            fake.args.len() <= args.len() && fake.args.iter().zip(args).all(|(want, got)| want == "*" || want == got)
        })
    }

    /// The fake answering `method url`.
    pub fn http_for(&self, method: &str, url: &str) -> Option<&FakeHttp> {
        self.http.iter().find(|fake| {
            let url_matches = match fake.url.strip_suffix('*') {
                Some(prefix) => url.starts_with(prefix),
                None => fake.url == url,
            };
            url_matches && fake.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
        })
    }

    /// Checks what the host cannot: every fake's pattern can match something.
    pub fn check(&self) -> Result<(), String> {
        for (index, fake) in self.exec.iter().enumerate() {
            if fake.args.is_empty() {
                return Err(format!(
                    "exec fake {}: args is empty; give the program and any leading arguments it answers, e.g. args = [\"./migrate\"]",
                    index + 1
                ));
            }
        }
        for (index, fake) in self.http.iter().enumerate() {
            if !fake.url.starts_with("http://") {
                return Err(format!(
                    "http fake {}: url {:?} is not an http:// URL (hooks send only http://); e.g. url = \"http://hooks.example.com/*\"",
                    index + 1,
                    fake.url
                ));
            }
            if !(100..=599).contains(&fake.status) {
                return Err(format!(
                    "http fake {}: status {} is not an HTTP status (100–599)",
                    index + 1,
                    fake.status
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(args: &[&str]) -> FakeExec {
        FakeExec {
            args: args.iter().map(|s| s.to_string()).collect(),
            exit: 0,
            output: String::new(),
            takes: Duration::ZERO,
        }
    }

    fn http(url: &str, method: Option<&str>) -> FakeHttp {
        FakeHttp {
            url: url.into(),
            method: method.map(Into::into),
            status: 200,
            body: String::new(),
            takes: Duration::ZERO,
            error: None,
        }
    }

    #[test]
    fn the_first_matching_fake_answers() {
        let fakes = Fakes {
            exec: vec![exec(&["./migrate", "--down"]), exec(&["./migrate"]), exec(&["*", "-c"])],
            http: vec![
                http("http://hooks.example.com/deploys", Some("POST")),
                http("http://hooks.example.com/*", None),
            ],
            answer_unmatched: false,
        };
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            fakes.exec_for(&args(&["./migrate", "--up"])).unwrap().args,
            ["./migrate"]
        );
        assert_eq!(
            fakes.exec_for(&args(&["./migrate", "--down", "1"])).unwrap().args,
            ["./migrate", "--down"]
        );
        assert_eq!(fakes.exec_for(&args(&["sh", "-c", "true"])).unwrap().args, ["*", "-c"]);
        assert!(fakes.exec_for(&args(&["./seed"])).is_none());
        assert!(fakes.exec_for(&args(&["sh"])).is_none());

        let post = fakes.http_for("post", "http://hooks.example.com/deploys").unwrap();
        assert_eq!(post.method.as_deref(), Some("POST"));
        let get = fakes.http_for("GET", "http://hooks.example.com/deploys").unwrap();
        assert_eq!(get.url, "http://hooks.example.com/*");
        assert!(fakes.http_for("GET", "http://other.example.com/").is_none());
    }

    #[test]
    fn fakes_that_cannot_match_are_refused() {
        let empty = Fakes {
            exec: vec![exec(&[])],
            ..Fakes::default()
        };
        assert!(empty.check().unwrap_err().contains("args is empty"));
        let https = Fakes {
            http: vec![http("https://x.example.com/", None)],
            ..Fakes::default()
        };
        assert!(https.check().unwrap_err().contains("not an http:// URL"));
    }
}
