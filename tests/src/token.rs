//! A token server for distribution's `auth: token:` mode: checks HTTP Basic
//! credentials and issues RS256 JWTs signed by a key made with the `openssl`
//! CLI, its certificate in the registry's `rootcertbundle` and in each
//! token's `x5c` header.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::header;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use crate::server::{BackgroundServer, Body, Handler, full, text_response};
use crate::util::query_pairs;

/// The `service` the registry is configured with and tokens are issued for.
pub(crate) const SERVICE: &str = "ocifs-test-registry";
/// The `issuer` the registry is configured to trust.
pub(crate) const ISSUER: &str = "ocifs-test-token-server";

/// One request the token server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET`, …
    pub method: String,
    /// The path and query, e.g. `/token?scope=repository%3Arepo%3Apull&service=…`.
    pub path_and_query: String,
    /// Whether the request carried an `Authorization` header.
    pub authorization: bool,
    /// The status answered: 200 with a token, 401 for missing or wrong
    /// credentials.
    pub status: u16,
}

#[derive(Debug)]
struct TokenState {
    user: String,
    password: String,
    key: PathBuf,
    cert_der_base64: String,
    requests: Mutex<Vec<TokenRequest>>,
    issued: AtomicU64,
}

/// A running token server; dropping it stops it.
#[derive(Debug)]
pub(crate) struct TokenServer {
    state: Arc<TokenState>,
    server: BackgroundServer,
    cert_pem: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running openssl {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl TokenServer {
    /// Makes a key and certificate in `dir` and starts serving tokens for
    /// `user`/`password`.
    pub(crate) fn start(dir: &Path, user: &str, password: &str) -> Result<Self, String> {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token-key.pem",
                "-out",
                "token-cert.pem",
                "-days",
                "7",
                "-subj",
                "/CN=ocifs-test-token-server",
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token-cert.pem",
                "-outform",
                "DER",
                "-out",
                "token-cert.der",
            ],
        )?;
        let der = std::fs::read(dir.join("token-cert.der"))
            .map_err(|e| format!("reading token-cert.der: {e}"))?;
        let state = Arc::new(TokenState {
            user: user.to_owned(),
            password: password.to_owned(),
            key: dir.join("token-key.pem"),
            cert_der_base64: STANDARD.encode(der),
            requests: Mutex::new(Vec::new()),
            issued: AtomicU64::new(0),
        });
        let listener = BackgroundServer::bind()
            .map_err(|e| format!("binding the token server's port: {e}"))?;
        let server = BackgroundServer::start("ocifs-test-token", listener, Arc::clone(&state))
            .map_err(|e| format!("starting the token server: {e}"))?;
        Ok(Self {
            state,
            server,
            cert_pem: dir.join("token-cert.pem"),
        })
    }

    /// The realm URL to configure in the registry.
    pub(crate) fn realm(&self) -> String {
        format!("http://{}/token", self.server.addr())
    }

    /// The certificate that signs tokens, for `rootcertbundle`.
    pub(crate) fn cert_pem(&self) -> &Path {
        &self.cert_pem
    }

    /// Every request answered so far.
    pub(crate) fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl TokenState {
    fn credentials_ok(&self, authorization: Option<&str>) -> bool {
        let Some(encoded) = authorization.and_then(|a| a.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = STANDARD.decode(encoded.trim()) else {
            return false;
        };
        decoded == format!("{}:{}", self.user, self.password).as_bytes()
    }

    /// The token for the scopes asked for: every repository scope is granted
    /// pull and push, whatever was asked (oras-py asks once and reuses the
    /// token for pushes).
    async fn token(&self, scopes: &[String]) -> Result<String, String> {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, _actions) = rest.rsplit_once(':')?;
                Some(json!({"type": kind, "name": name, "actions": ["pull", "push"]}))
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let n = self.issued.fetch_add(1, Ordering::SeqCst);
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_base64]});
        let claims = json!({
            "iss": ISSUER,
            "sub": self.user,
            "aud": SERVICE,
            "exp": now + 3600,
            "nbf": now.saturating_sub(60),
            "iat": now,
            "jti": format!("ocifs-test-{now}-{n}"),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(signing_input.as_bytes()).await?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256), by the openssl CLI.
    async fn sign(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let mut child = tokio::process::Command::new("openssl")
            .arg("dgst")
            .arg("-sha256")
            .arg("-sign")
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running openssl dgst: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input)
                .await
                .map_err(|e| format!("writing to openssl dgst: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("waiting for openssl dgst: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl dgst failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out.stdout)
    }

    async fn answer(&self, request: &Request<Incoming>) -> Response<Body> {
        if request.method() != http::Method::GET {
            return text_response(StatusCode::NOT_FOUND, "only GET /token is served");
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !self.credentials_ok(authorization) {
            let mut response =
                text_response(StatusCode::UNAUTHORIZED, "wrong or missing credentials");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"ocifs-test-token-server\""),
            );
            return response;
        }
        let scopes: Vec<String> = query_pairs(request.uri().query().unwrap_or(""))
            .into_iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v)
            .collect();
        match self.token(&scopes).await {
            Ok(token) => {
                let body = json!({"token": token, "access_token": token, "expires_in": 3600});
                let mut response = Response::new(full(body.to_string()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                response
            }
            Err(e) => text_response(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
}

impl Handler for TokenState {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let response = self.answer(&request).await;
        let record = TokenRequest {
            method: request.method().as_str().to_owned(),
            path_and_query: request
                .uri()
                .path_and_query()
                .map_or_else(String::new, ToString::to_string),
            authorization: request.headers().contains_key(header::AUTHORIZATION),
            status: response.status().as_u16(),
        };
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
        response
    }
}
