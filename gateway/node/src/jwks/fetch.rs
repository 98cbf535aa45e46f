//! Reading one JWKS document: from a file, or by `GET` over HTTP or HTTPS through the
//! connector seam. Every read is bounded in bytes; the caller bounds it in time.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::seams::Connector;

/// Most CA certificates read from a `jwks_ca_file` (a system bundle holds some 150).
const CA_CERTIFICATES_MAX: usize = 1_024;
/// Largest `jwks_ca_file` read.
const CA_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Addresses of the provider's host tried per fetch.
const ADDRESSES_TRIED_MAX: usize = 4;

/// Why a fetch failed, as the metric's outcome label says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Could not connect, resolve, or speak TLS or HTTP with it; or the file cannot be read.
    Unreachable(String),
    /// The whole fetch took longer than `fetch_timeout_ms`.
    Timeout,
    /// It answered, but not 200.
    Status(u16),
    /// The document is too large, or not a usable JWKS.
    Invalid(String),
}

impl FetchError {
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Timeout => "timeout",
            FetchError::Status(_) => "http_status",
            FetchError::Invalid(_) => "invalid",
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Unreachable(e) => write!(f, "unreachable: {e}"),
            FetchError::Timeout => f.write_str("timed out"),
            FetchError::Status(s) => write!(f, "answered HTTP {s}"),
            FetchError::Invalid(e) => write!(f, "invalid document: {e}"),
        }
    }
}

/// Where a provider's keys come from.
pub enum Source {
    File(PathBuf),
    Url {
        uri: Uri,
        /// For `https://`: the TLS client, trusting `jwks_ca_file`.
        tls: Option<tokio_rustls::TlsConnector>,
        connector: Arc<dyn Connector>,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Url { uri, .. } => write!(f, "url {uri}"),
        }
    }
}

/// A fetched document and how long the provider says it stays fresh.
#[derive(Debug)]
pub struct Document {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

impl Source {
    /// The source a provider's config names; an `https://` URL's CA file is read now.
    pub fn new(
        file: &Path,
        url: &str,
        ca_file: &Path,
        connector: Arc<dyn Connector>,
    ) -> Result<Self, String> {
        if url.is_empty() {
            return Ok(Source::File(file.to_owned()));
        }
        let uri: Uri = url.parse().map_err(|e| format!("jwks_url: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => Some(tls_connector(ca_file)?),
            Some("http") => None,
            _ => return Err("jwks_url must be http:// or https://".to_owned()),
        };
        if uri.host().is_none() {
            return Err("jwks_url has no host".to_owned());
        }
        Ok(Source::Url {
            uri,
            tls,
            connector,
        })
    }

    /// Reads the document, at most `bytes_max` bytes of it.
    pub async fn fetch(&self, bytes_max: usize) -> Result<Document, FetchError> {
        match self {
            Source::File(path) => {
                let path = path.clone();
                let read = tokio::task::spawn_blocking(move || read_bounded(&path, bytes_max))
                    .await
                    .map_err(|e| FetchError::Unreachable(e.to_string()))?;
                Ok(Document {
                    body: read?,
                    max_age: None,
                })
            }
            Source::Url {
                uri,
                tls,
                connector,
            } => get(uri, tls.as_ref(), connector.as_ref(), bytes_max).await,
        }
    }
}

fn read_bounded(path: &Path, bytes_max: usize) -> Result<Bytes, FetchError> {
    let file = std::fs::File::open(path)
        .map_err(|e| FetchError::Unreachable(format!("{}: {e}", path.display())))?;
    let mut body = Vec::new();
    file.take(bytes_max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| FetchError::Unreachable(format!("{}: {e}", path.display())))?;
    if body.len() > bytes_max {
        return Err(FetchError::Invalid(format!(
            "{} is larger than {bytes_max} bytes",
            path.display()
        )));
    }
    Ok(Bytes::from(body))
}

fn tls_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    let mut pem = Vec::new();
    std::fs::File::open(ca_file)
        .and_then(|f| f.take(CA_FILE_BYTES_MAX).read_to_end(&mut pem))
        .map_err(|e| format!("jwks_ca_file {}: {e}", ca_file.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).take(CA_CERTIFICATES_MAX) {
        let cert = cert.map_err(|e| format!("jwks_ca_file {}: {e}", ca_file.display()))?;
        // A bundle may hold a certificate rustls cannot use; the others still count.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "jwks_ca_file {} holds no usable CA certificate",
            ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn get(
    uri: &Uri,
    tls: Option<&tokio_rustls::TlsConnector>,
    connector: &dyn Connector,
    bytes_max: usize,
) -> Result<Document, FetchError> {
    let unreachable = |e: &dyn std::fmt::Display| FetchError::Unreachable(e.to_string());
    let host = uri.host().unwrap_or_default();
    let host_bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let addresses = connector
        .resolve(host_bare, port)
        .await
        .map_err(|e| unreachable(&e))?;
    let mut last = FetchError::Unreachable(format!("{host} resolves to no address"));
    for addr in addresses.into_iter().take(ADDRESSES_TRIED_MAX) {
        let io = match connector.connect(&addr.to_string()).await {
            Ok(io) => io,
            Err(e) => {
                last = unreachable(&e);
                continue;
            }
        };
        return match tls {
            None => exchange(TokioIo::new(io), uri, bytes_max).await,
            Some(tls) => {
                let name =
                    ServerName::try_from(host_bare.to_owned()).map_err(|e| unreachable(&e))?;
                let stream = tls.connect(name, io).await.map_err(|e| unreachable(&e))?;
                exchange(TokioIo::new(stream), uri, bytes_max).await
            }
        };
    }
    Err(last)
}

/// One `GET` on a fresh HTTP/1.1 connection.
async fn exchange<I>(io: I, uri: &Uri, bytes_max: usize) -> Result<Document, FetchError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let unreachable = |e: &dyn std::fmt::Display| FetchError::Unreachable(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| unreachable(&e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/jwk-set+json, application/json")
        .header(header::USER_AGENT, "switchyard")
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let max_age = response
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let body = Limited::new(response.into_body(), bytes_max)
            .collect()
            .await
            .map_err(|e| FetchError::Invalid(format!("body: {e}")))?
            .to_bytes();
        Ok(Document { body, max_age })
    }
    .await;
    driver.abort();
    result
}

/// The `max-age` of a `Cache-Control` value, unless `no-store` or `no-cache` forbid keeping it.
pub fn max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            age = seconds
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
