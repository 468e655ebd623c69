//! The cluster's shared secret: every gRPC and Arrow Flight call between clients, the
//! scheduler and executors carries it, and the scheduler and executors refuse calls without it.
//!
//! Ballista 55 lets a process customise the endpoints of the gRPC clients it creates
//! (`override_create_grpc_client_endpoint`: the client → scheduler, executor → scheduler and
//! every Flight fetch of shuffle data and results), but not the headers of their calls, so the
//! token travels in the one header an endpoint sets on every request: the user agent
//! (`quiver-auth/<token>`, followed by tonic's own). Servers check it with a tonic interceptor.
//! Without TLS anyone who can read the traffic can read the token (as everything else).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ballista_core::extension::EndpointOverrideFn;

use crate::error::{QuiverError, Result};

/// The variable a client or worker process reads the token from when no file is given.
pub const AUTH_TOKEN_ENV: &str = "QUIVER_AUTH_TOKEN";

/// The user-agent item that carries the token.
const USER_AGENT_PREFIX: &str = "quiver-auth/";

/// Shortest token accepted.
const MIN_LEN: usize = 16;

/// A cluster's shared secret. Its `Debug` form hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(Arc<str>);

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(hidden)")
    }
}

impl AuthToken {
    /// A token from its text: at least 16 visible ASCII characters, no spaces (it travels in
    /// a header).
    pub fn new(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = |reason: &str| QuiverError::InvalidParam {
            param: "auth token".to_string(),
            reason: reason.to_string(),
        };
        if text.len() < MIN_LEN {
            return Err(bad(&format!(
                "is {} characters; use at least {MIN_LEN} (quiver cluster up generates one)",
                text.len()
            )));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "may hold visible ASCII characters only (no spaces or control characters)",
            ));
        }
        Ok(AuthToken(Arc::from(text)))
    }

    /// A fresh random token (256 bits from the operating system's generator, as hex).
    pub fn generate() -> Self {
        let text = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        AuthToken(Arc::from(text.as_str()))
    }

    /// Reads a token file (its first line). On Unix the file must not be readable by group or
    /// others, as ssh requires of private keys.
    pub fn from_file(path: &Path) -> Result<Self> {
        let io = |source| QuiverError::Io {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(QuiverError::InvalidParam {
                    param: "auth token file".to_string(),
                    reason: format!(
                        "{} can be read by other users (mode {:o}); chmod 600 it",
                        path.display(),
                        mode & 0o777
                    ),
                });
            }
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        AuthToken::new(text.lines().next().unwrap_or("")).map_err(|e| QuiverError::InvalidParam {
            param: "auth token file".to_string(),
            reason: format!("{}: {e}", path.display()),
        })
    }

    /// Writes the token to a new file only its owner can read.
    pub fn write_file(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let io = |source| QuiverError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        writeln!(file, "{}", self.0).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// The token of a process: from `file` when given, else from `QUIVER_AUTH_TOKEN`; none
    /// when neither is set.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<Self>> {
        if let Some(path) = file {
            return AuthToken::from_file(path).map(Some);
        }
        match std::env::var(AUTH_TOKEN_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                AuthToken::new(&text)
                    .map(Some)
                    .map_err(|e| QuiverError::InvalidParam {
                        param: AUTH_TOKEN_ENV.to_string(),
                        reason: e.to_string(),
                    })
            }
            _ => Ok(None),
        }
    }

    /// The token's text.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// What makes every gRPC client this process creates carry the token.
    pub fn endpoint_override(&self) -> EndpointOverrideFn {
        let agent = format!("{USER_AGENT_PREFIX}{}", self.0);
        Arc::new(move |endpoint| Ok(endpoint.user_agent(agent.clone())?))
    }

    /// Whether a request's user-agent header carries this token.
    pub fn admits(&self, user_agent: Option<&[u8]>) -> bool {
        let Some(agent) = user_agent else {
            return false;
        };
        agent
            .split(|b| *b == b' ')
            .filter_map(|item| item.strip_prefix(USER_AGENT_PREFIX.as_bytes()))
            .any(|given| same(given, self.0.as_bytes()))
    }

    /// Why a request was refused, for its caller.
    pub fn refusal(user_agent: Option<&[u8]>) -> String {
        let carried = user_agent.is_some_and(|a| {
            a.split(|b| *b == b' ')
                .any(|item| item.starts_with(USER_AGENT_PREFIX.as_bytes()))
        });
        if carried {
            "this Quiver cluster refused the auth token: it is not the cluster's \
             (check --auth-token-file or QUIVER_AUTH_TOKEN)"
                .to_string()
        } else {
            "this Quiver cluster requires an auth token: give the cluster's token with \
             --auth-token-file, QUIVER_AUTH_TOKEN or quiver.cluster.auth_token_file"
                .to_string()
        }
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_hidden() {
        let t = AuthToken::new("0123456789abcdef").unwrap();
        assert_eq!(format!("{t:?}"), "AuthToken(hidden)");
        assert!(AuthToken::new("short").is_err());
        assert!(AuthToken::new("0123456789 abcdef").is_err());
        let g = AuthToken::generate();
        assert_eq!(g.secret().len(), 64);
        assert_ne!(g, AuthToken::generate());
        assert!(t.admits(Some(b"quiver-auth/0123456789abcdef tonic/0.14.9")));
        assert!(!t.admits(Some(b"quiver-auth/0123456789abcdeg tonic/0.14.9")));
        assert!(!t.admits(Some(b"quiver-auth/0123456789abcdef0 tonic/0.14.9")));
        assert!(!t.admits(Some(b"tonic/0.14.9")));
        assert!(!t.admits(None));
        assert!(AuthToken::refusal(Some(b"quiver-auth/x tonic")).contains("refused"));
        assert!(AuthToken::refusal(None).contains("requires an auth token"));
    }

    #[cfg(unix)]
    #[test]
    fn token_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let t = AuthToken::generate();
        t.write_file(&path).unwrap();
        assert_eq!(AuthToken::from_file(&path).unwrap(), t);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = AuthToken::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
