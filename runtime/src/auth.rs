//! Bearer tokens with scopes: `read` < `deploy` < `admin`.
//!
//! Tokens come from a file (one `SCOPE TOKEN` per line, `#` comments) or the environment
//! (`SLIPWAY_TOKENS="admin:…,deploy:…"`). They are compared in constant time and never
//! logged. When none are configured, `slipway serve` creates an admin token in the data
//! directory (mode 0600) so the CLI on the same machine works out of the box.

use std::path::Path;

/// What a token may do. Each scope includes the ones before it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    Read,
    Deploy,
    Admin,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "deploy" => Some(Scope::Deploy),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<(Scope, Vec<u8>)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.tokens.len())
    }
}

/// The smallest token we accept: shorter ones are guessable.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn add(&mut self, scope: Scope, token: &str) -> Result<(), String> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "a {} token is shorter than {MIN_TOKEN_LEN} characters; use a long random one",
                scope.as_str()
            ));
        }
        self.tokens.push((scope, token.as_bytes().to_vec()));
        Ok(())
    }

    /// Parses `SCOPE TOKEN` lines.
    pub fn parse_file(text: &str, path: &Path) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{}:{}", path.display(), index + 1);
            let mut parts = line.split_whitespace();
            let (Some(scope), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("{at}: expected `SCOPE TOKEN` (scope is read, deploy or admin)"));
            };
            let scope = Scope::parse(scope)
                .ok_or_else(|| format!("{at}: unknown scope {scope:?}; use read, deploy or admin"))?;
            tokens.add(scope, token).map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(tokens)
    }

    /// Parses `SCOPE:TOKEN,SCOPE:TOKEN`.
    pub fn parse_env(text: &str) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (scope, token) = item
                .split_once(':')
                .ok_or("SLIPWAY_TOKENS: expected SCOPE:TOKEN items separated by commas")?;
            let scope = Scope::parse(scope)
                .ok_or_else(|| format!("SLIPWAY_TOKENS: unknown scope {scope:?}; use read, deploy or admin"))?;
            tokens.add(scope, token).map_err(|e| format!("SLIPWAY_TOKENS: {e}"))?;
        }
        Ok(tokens)
    }

    /// The scope of `presented`, if it is one of ours. Every configured token is compared,
    /// each in constant time, so timing says nothing about which (or whether one) matched.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let presented = presented.as_bytes();
        let mut found = None;
        for (scope, token) in &self.tokens {
            if constant_time_eq(token, presented) {
                found = Some(found.map_or(*scope, |f: Scope| f.max(*scope)));
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Walk the whole stored token whatever the presented one is, and fold every difference
    // (including a length mismatch) into one byte.
    let mut diff = u8::from(a.len() != b.len());
    for (i, byte) in a.iter().enumerate() {
        diff |= byte ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// A new random token: 32 hex characters from the OS's randomness.
pub fn generate_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_and_tokens_must_match_exactly() {
        let tokens = Tokens::parse_env("read:rrrrrrrrrrrrrrrr, admin:aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(tokens.scope_of("rrrrrrrrrrrrrrrr"), Some(Scope::Read));
        assert_eq!(tokens.scope_of("aaaaaaaaaaaaaaaaaaaa"), Some(Scope::Admin));
        assert_eq!(tokens.scope_of("aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(tokens.scope_of("aaaaaaaaaaaaaaaaaaaab"), None);
        assert_eq!(tokens.scope_of(""), None);
        assert!(Scope::Admin > Scope::Deploy && Scope::Deploy > Scope::Read);
    }

    #[test]
    fn bad_token_files_say_where() {
        let path = Path::new("tokens");
        assert!(Tokens::parse_file("# comment\nadmin 0123456789abcdef\n", path).is_ok());
        assert_eq!(
            Tokens::parse_file("root 0123456789abcdef\n", path).unwrap_err(),
            "tokens:1: unknown scope \"root\"; use read, deploy or admin"
        );
        assert!(
            Tokens::parse_file("admin short\n", path)
                .unwrap_err()
                .contains("shorter than 16")
        );
    }
}
