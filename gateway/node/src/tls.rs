//! TLS on the listeners (rustls, with ring): a certificate chain and its key from PEM files,
//! re-read when they change; on a listener that names a client CA, client certificates
//! verified against it and named by their subject alternative names.
//!
//! A listener with `tls.cert_file` set speaks only TLS (HTTP/2 and HTTP/1.1 by ALPN); one
//! without speaks only cleartext. Client certificates are asked for but not required: a
//! caller may present a bearer credential instead (see [`crate::auth`]).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsConfig, UpstreamTlsConfig};

/// Certificates one chain file or CA file may hold.
pub const CERTIFICATES_MAX: usize = 64;
/// Subject alternative names kept of one client certificate.
pub const SANS_MAX: usize = 32;
/// Longest certificate, key or CA file read, in bytes.
pub const FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Why a listener's TLS files were not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// A verified client certificate, as the requests of its connection see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Its DNS and URI subject alternative names (`dns:` or `uri:` left off), at most
    /// [`SANS_MAX`].
    pub sans: Vec<String>,
    /// The SHA-256 of its DER, the first 16 bytes in hex: logged as the credential's id.
    pub fingerprint: String,
}

/// The TLS side of one listener: the server configuration in force, and the files it came
/// from, so a change to them can be put in force without a restart.
pub struct ServerTls {
    files: TlsConfig,
    config: RwLock<Arc<ServerConfig>>,
    /// The files' bytes when the configuration in force was built.
    loaded: Mutex<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_file", &self.files.cert_file)
            .field("client_ca_file", &self.files.client_ca_file)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The listener's TLS from its `[*.tls]` section, the files read now; `None` when the
    /// section names no certificate (a cleartext listener).
    pub fn load(files: &TlsConfig) -> Result<Option<Arc<Self>>, TlsError> {
        if files.cert_file.as_os_str().is_empty() {
            return Ok(None);
        }
        let bytes = read_all(files)?;
        let config = server_config(files, &bytes)?;
        Ok(Some(Arc::new(Self {
            files: files.clone(),
            config: RwLock::new(Arc::new(config)),
            loaded: Mutex::new(bytes.concat()),
        })))
    }

    /// An acceptor with the configuration in force.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.config
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// Reads the files again; if they changed and make a valid configuration, puts it in force
    /// for the connections accepted from now on. `Ok(true)`: a new configuration is in force;
    /// `Ok(false)`: nothing changed; `Err`: the files changed but are refused, and the
    /// configuration in force stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = read_all(&self.files)?;
        let joined = bytes.concat();
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if *loaded == joined {
            return Ok(false);
        }
        // Remembered before it is checked: a bad file is reported once, not at every look.
        *loaded = joined;
        let config = server_config(&self.files, &bytes)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        Ok(true)
    }

    /// How often the files are checked for changes.
    pub fn reload_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.files.reload_interval_ms)
    }
}

/// The bytes of the certificate, key and client CA files, in that order (an empty client CA
/// when none is configured).
fn read_all(files: &TlsConfig) -> Result<[Vec<u8>; 3], TlsError> {
    let ca = if files.client_ca_file.as_os_str().is_empty() {
        Vec::new()
    } else {
        read_bounded(&files.client_ca_file)?
    };
    Ok([
        read_bounded(&files.cert_file)?,
        read_bounded(&files.key_file)?,
        ca,
    ])
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| TlsError(format!("cannot open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > FILE_BYTES_MAX {
        return Err(TlsError(format!(
            "{} is larger than {FILE_BYTES_MAX} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The CA certificates of a PEM file, as trust roots.
fn root_store(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(path, pem)? {
        roots.add(ca).map_err(|e| {
            TlsError(format!(
                "{}: a CA certificate is not usable: {e}",
                path.display()
            ))
        })?;
    }
    Ok(roots)
}

/// The certificates of a PEM file: at least one, at most [`CERTIFICATES_MAX`].
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .take(CERTIFICATES_MAX + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{} holds no `CERTIFICATE` block",
            path.display()
        )));
    }
    if certs.len() > CERTIFICATES_MAX {
        return Err(TlsError(format!(
            "{} holds more than {CERTIFICATES_MAX} certificates",
            path.display()
        )));
    }
    Ok(certs)
}

fn server_config(files: &TlsConfig, bytes: &[Vec<u8>; 3]) -> Result<ServerConfig, TlsError> {
    let [cert_pem, key_pem, ca_pem] = bytes;
    let chain = certificates(&files.cert_file, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        TlsError(format!(
            "{}: no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            files.key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?;
    let builder = if ca_pem.is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = root_store(&files.client_ca_file, ca_pem)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            // A caller may authenticate with a bearer credential instead.
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError(format!("client certificate verifier: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError(format!(
            "{} and {} do not make a certificate and its key: {e}",
            files.cert_file.display(),
            files.key_file.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The verified client certificate of a connection, if the client presented one.
pub fn peer_certificate(connection: &rustls::ServerConnection) -> Option<PeerCertificate> {
    let leaf = connection.peer_certificates()?.first()?;
    let fingerprint = Sha256::digest(leaf.as_ref())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut sans = Vec::new();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref())
        && let Ok(Some(names)) = cert.subject_alternative_name()
    {
        for name in &names.value.general_names {
            let text = match name {
                x509_parser::extensions::GeneralName::DNSName(s)
                | x509_parser::extensions::GeneralName::URI(s) => *s,
                _ => continue,
            };
            if sans.len() < SANS_MAX {
                sans.push(text.to_owned());
            }
        }
    }
    Some(PeerCertificate { sans, fingerprint })
}

/// The TLS instances are called with (`upstream.tls`): `None` without a CA file. The CA
/// bundle must hold at least one certificate, and a client certificate its key. The
/// instance's certificate is checked against the CA and the address's host; ALPN offers h2
/// only.
pub fn upstream_client(
    config: &UpstreamTlsConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
    if config.ca_file.as_os_str().is_empty() {
        return Ok(None);
    }
    let roots = root_store(&config.ca_file, &read_bounded(&config.ca_file)?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?
        .with_root_certificates(roots);
    let mut tls = if config.cert_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let (cert, key) = (
            read_bounded(&config.cert_file)?,
            read_bounded(&config.key_file)?,
        );
        let chain = certificates(&config.cert_file, &cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            TlsError(format!(
                "{}: no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
                config.key_file.display()
            ))
        })?;
        builder.with_client_auth_cert(chain, key).map_err(|e| {
            TlsError(format!(
                "{} and {} do not make a certificate and its key: {e}",
                config.cert_file.display(),
                config.key_file.display()
            ))
        })?
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(tls)))
}
