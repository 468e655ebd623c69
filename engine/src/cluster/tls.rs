//! TLS between the processes of a cluster. The scheduler and the executors' Flight services
//! present a certificate (`--tls-cert`, `--tls-key`); every process that connects to them
//! verifies it against the cluster's CA (`--tls-ca`, `quiver.cluster.tls_ca_file`).
//!
//! Ballista 55 writes `http://` addresses for the scheduler (and `https://` for Flight fetches
//! only when `ballista.client.use_tls` is set); the endpoint hook (see [`super::auth`]) turns a
//! plain address into an `https://` one with the CA's trust, so every connection is encrypted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::EndpointOverrideFn;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use super::auth::AuthToken;
use crate::error::{QuiverError, Result};

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| QuiverError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn bad(param: &str, reason: String) -> QuiverError {
    QuiverError::InvalidParam {
        param: param.to_string(),
        reason,
    }
}

/// What a connecting process trusts: the cluster's CA certificate (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    ca_pem: Arc<[u8]>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls(CA certificate)")
    }
}

impl ClientTls {
    /// The CA certificate in `path` (PEM).
    pub fn from_ca_file(path: &Path) -> Result<Self> {
        let pem = read(path)?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad(
                "TLS CA file",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        Ok(ClientTls {
            ca_pem: Arc::from(pem),
        })
    }

    /// `endpoint` made to connect with TLS, verifying the server against the CA.
    pub fn secure(
        &self,
        endpoint: Endpoint,
    ) -> std::result::Result<Endpoint, tonic::transport::Error> {
        let uri = endpoint.uri().clone();
        let endpoint = if uri.scheme_str() == Some("https") {
            endpoint
        } else {
            let authority = uri.authority().map_or("", |a| a.as_str());
            Endpoint::from_shared(format!("https://{authority}"))?
                .connect_timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .tcp_keepalive(Some(Duration::from_secs(3600)))
                .http2_keep_alive_interval(Duration::from_secs(300))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        };
        endpoint.tls_config(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.ca_pem.as_ref())),
        )
    }
}

/// What a serving process presents: its certificate chain and private key (PEM).
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls(certificate, key hidden)")
    }
}

impl ServerTls {
    /// The certificate and key files (PEM); the key must be readable by its owner only.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key)
                .map_err(|source| QuiverError::Io {
                    path: key.to_path_buf(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(bad(
                    "--tls-key",
                    format!(
                        "{} can be read by other users (mode {:o}); chmod 600 it",
                        key.display(),
                        mode & 0o777
                    ),
                ));
            }
        }
        Ok(ServerTls {
            cert_pem: Arc::from(read(cert)?),
            key_pem: Arc::from(read(key)?),
        })
    }

    /// tonic's server configuration for this identity.
    pub fn config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(
            self.cert_pem.as_ref(),
            self.key_pem.as_ref(),
        ))
    }
}

/// The endpoint hook of a process's gRPC clients: TLS with the cluster's CA and the auth token,
/// whichever are set (none when neither is).
pub fn endpoint_override(
    token: Option<&AuthToken>,
    tls: Option<&ClientTls>,
) -> Option<EndpointOverrideFn> {
    if token.is_none() && tls.is_none() {
        return None;
    }
    let (token, tls) = (token.cloned(), tls.cloned());
    Some(Arc::new(move |endpoint: Endpoint| {
        let endpoint = match &tls {
            Some(t) => t.secure(endpoint)?,
            None => endpoint,
        };
        match &token {
            Some(t) => (t.endpoint_override())(endpoint),
            None => Ok(endpoint),
        }
    }))
}

/// The files [`generate`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// The servers' certificate (signed by the CA).
    pub cert: PathBuf,
    /// The servers' private key (mode 600).
    pub key: PathBuf,
}

/// A fresh CA and a server certificate it signs for `hosts` (names or IP addresses), written to
/// `dir` as `tls-ca.pem`, `tls-cert.pem` and `tls-key.pem`: what a local cluster needs.
pub fn generate(dir: &Path, hosts: &[&str]) -> Result<TlsFiles> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let err = |e: rcgen::Error| QuiverError::internal(format!("cannot make TLS certificates: {e}"));
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Quiver cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut params =
        CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Quiver cluster");
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let files = TlsFiles {
        ca: dir.join("tls-ca.pem"),
        cert: dir.join("tls-cert.pem"),
        key: dir.join("tls-key.pem"),
    };
    let write = |path: &Path, text: &str, private: bool| -> Result<()> {
        use std::io::Write;
        let io = |source| QuiverError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(path).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    };
    write(&files.ca, &ca_cert.pem(), false)?;
    write(&files.cert, &cert.pem(), false)?;
    write(&files.key, &key.serialize_pem(), true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_and_plain_addresses_become_https() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path(), &["localhost", "127.0.0.1"]).unwrap();
        let client = ClientTls::from_ca_file(&files.ca).unwrap();
        ServerTls::from_files(&files.cert, &files.key).unwrap();
        let secured = client
            .secure(Endpoint::from_static("http://127.0.0.1:50050"))
            .unwrap();
        assert_eq!(secured.uri().to_string(), "https://127.0.0.1:50050/");
        // A certificate file is not a CA file by accident.
        std::fs::write(dir.path().join("x.pem"), "nothing").unwrap();
        assert!(ClientTls::from_ca_file(&dir.path().join("x.pem")).is_err());
        // A readable key is refused.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = ServerTls::from_files(&files.cert, &files.key).unwrap_err();
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
    }
}
