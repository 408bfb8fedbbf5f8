//! Credentials for a registry, and where they are found: the places
//! docker-compatible clients keep them:
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` (with `auths`,
//! `credsStore` and `credHelpers`), then podman's `auth.json`
//! (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`).

use std::fmt;
use std::path::PathBuf;

use docker_credential::{CredentialRetrievalError, DockerCredential};

use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;

/// Credentials for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic, also used to obtain bearer tokens.
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
    /// A registry bearer token used as is.
    Token(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// The key docker clients file Docker Hub credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Looks up credentials for `registry` (`host[:port]`). `Ok(None)` when no
/// config names it; an error when a config or helper is broken.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    let server = if registry == DOCKER_HUB {
        DOCKER_HUB_KEY
    } else {
        registry
    };
    warn_if_readable_by_others();
    for (which, found) in [
        ("docker config", docker_credential::get_credential(server)),
        (
            "podman auth.json",
            docker_credential::get_podman_credential(server),
        ),
    ] {
        match found {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                tracing::debug!(registry, source = which, %username, "using stored credentials");
                return Ok(Some(Credentials::Basic { username, password }));
            }
            Ok(DockerCredential::IdentityToken(_)) => {
                tracing::warn!(
                    registry,
                    "the {which} holds an identity token for {registry}, which ocifs cannot use; pass --username/--password"
                );
            }
            Err(
                CredentialRetrievalError::NoCredentialConfigured
                | CredentialRetrievalError::ConfigNotFound
                | CredentialRetrievalError::ConfigReadError,
            ) => {}
            // Deliberately not the helper's output, which may echo secrets.
            Err(CredentialRetrievalError::HelperFailure { helper, .. }) => {
                return Err(Error::Credentials {
                    detail: format!(
                        "credential helper docker-credential-{helper} failed for {registry}"
                    ),
                });
            }
            Err(e) => {
                return Err(Error::Credentials {
                    detail: format!("{which} entry for {registry}: {e}"),
                });
            }
        }
    }
    Ok(None)
}

/// The credential files that exist, for the permission check.
fn credential_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let docker_dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    if let Some(d) = docker_dir {
        files.push(d.join("config.json"));
    }
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(PathBuf::from(d).join("containers/auth.json"));
    }
    files.retain(|f| f.is_file());
    files
}

fn warn_if_readable_by_others() {
    #[cfg(unix)]
    for file in credential_files() {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.permissions().mode() & 0o044 != 0
        {
            tracing::warn!(
                "{} holds registry credentials and is readable by other users (mode {:o}); chmod 600 it",
                file.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    let _ = credential_files();
}
