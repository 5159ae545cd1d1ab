//! TLS for the HTTP endpoint (rustls, ring provider): the `tls_server_config` part of the web
//! configuration, and serving one accepted connection over TLS or plain TCP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

use crate::outputs::webconfig::TlsDoc;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{message}")]
    Invalid { message: String },
    #[error("cannot read {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no PEM {kind} found ({detail})")]
    Pem {
        what: String,
        kind: &'static str,
        detail: String,
    },
    #[error("rejected by rustls")]
    Rustls(#[source] rustls::Error),
    #[error("client CA certificates rejected")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

type Failed = (&'static str, TlsError);

fn invalid(field: &'static str, message: impl Into<String>) -> Failed {
    (
        field,
        TlsError::Invalid {
            message: message.into(),
        },
    )
}

/// PEM text given inline (`inline`) or in a file (`file`, relative to the config's folder).
fn pem_source(
    inline: Option<&String>,
    file: Option<&String>,
    fields: (&'static str, &'static str),
    dir: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<Option<(String, Vec<u8>)>, Failed> {
    let (inline_key, file_key) = fields;
    match (
        inline.filter(|s| !s.is_empty()),
        file.filter(|s| !s.is_empty()),
    ) {
        (Some(_), Some(_)) => Err(invalid(
            file_key,
            format!("give `{inline_key}` or `{file_key}`, not both"),
        )),
        (Some(text), None) => Ok(Some((inline_key.to_owned(), text.as_bytes().to_vec()))),
        (None, Some(f)) => {
            let p = dir.join(f);
            let bytes = std::fs::read(&p).map_err(|source| {
                (
                    file_key,
                    TlsError::Read {
                        file: p.clone(),
                        source,
                    },
                )
            })?;
            files.push(p.clone());
            Ok(Some((p.display().to_string(), bytes)))
        }
        (None, None) => Ok(None),
    }
}

fn certs(
    field: &'static str,
    what: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, Failed> {
    let pem_err = |detail: String| {
        (
            field,
            TlsError::Pem {
                what: what.to_owned(),
                kind: "certificate",
                detail,
            },
        )
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("empty".into()));
    }
    Ok(certs)
}

fn version(field: &'static str, v: Option<&String>, default: u8) -> Result<u8, Failed> {
    match v.map(String::as_str) {
        None | Some("") => Ok(default),
        Some("TLS10") => Ok(10),
        Some("TLS11") => Ok(11),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(o) => Err(invalid(
            field,
            format!("unknown TLS version {o:?} (use TLS12 or TLS13)"),
        )),
    }
}

/// `min_version..=max_version`, of what rustls offers.
fn versions(t: &TlsDoc) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Failed> {
    let lo = version("min_version", t.min_version.as_ref(), 12)?;
    let hi = version("max_version", t.max_version.as_ref(), 13)?;
    if hi < 12 {
        return Err(invalid(
            "max_version",
            "TLS 1.0 and 1.1 are not offered (rustls has TLS12 and TLS13 only)",
        ));
    }
    if lo > hi {
        return Err(invalid("min_version", "above max_version"));
    }
    // A minimum of TLS10/TLS11 is kept as TLS12: stricter than asked, never looser.
    Ok(
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (lo.max(12)..=hi).contains(v))
            .map(|(_, p)| p)
            .collect(),
    )
}

/// The `client_auth_type` policy, with the client CA where it verifies against one.
fn client_verifier(
    t: &TlsDoc,
    ca: Option<(String, Vec<u8>)>,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, Failed> {
    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let roots = |ca: Option<(String, Vec<u8>)>| -> Result<Arc<RootCertStore>, Failed> {
        let Some((what, pem)) = ca else {
            return Err(invalid(
                "client_ca_file",
                format!("missing: client_auth_type {auth} verifies against it"),
            ));
        };
        let mut store = RootCertStore::empty();
        for c in certs("client_ca_file", &what, &pem)? {
            store
                .add(c)
                .map_err(|e| ("client_ca_file", TlsError::Rustls(e)))?;
        }
        Ok(Arc::new(store))
    };
    Ok(match auth {
        "" | "NoClientCert" => {
            if ca.is_some() {
                return Err(invalid(
                    "client_ca_file",
                    "a client CA is configured without a client_auth_type policy (use \
                     RequireAndVerifyClientCert)",
                ));
            }
            None
        }
        "RequestClientCert" => Some(Arc::new(AnyCert {
            mandatory: false,
            provider: Arc::clone(provider),
        })),
        "RequireAnyClientCert" | "RequireClientCert" => Some(Arc::new(AnyCert {
            mandatory: true,
            provider: Arc::clone(provider),
        })),
        "VerifyClientCertIfGiven" => Some(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, Arc::clone(provider))
                .allow_unauthenticated()
                .build()
                .map_err(|e| ("client_ca_file", TlsError::Verifier(e)))?,
        ),
        "RequireAndVerifyClientCert" => Some(
            WebPkiClientVerifier::builder_with_provider(roots(ca)?, Arc::clone(provider))
                .build()
                .map_err(|e| ("client_ca_file", TlsError::Verifier(e)))?,
        ),
        other => {
            return Err(invalid(
                "client_auth_type",
                format!(
                    "unknown {other:?} (use NoClientCert, RequestClientCert, \
                     RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
                ),
            ));
        }
    })
}

/// The rustls server configuration `t` asks for; `None` when it names no certificate
/// (plain HTTP). Files read are added to `files`, to be watched for changes.
pub(crate) fn server_config(
    t: &TlsDoc,
    dir: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<Option<TlsAcceptor>, Failed> {
    for (field, given) in [
        ("client_allowed_sans", t.client_allowed_sans.is_some()),
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
    ] {
        if given {
            return Err(invalid(
                field,
                "not supported by ctx (rustls offers only its own safe defaults); remove it",
            ));
        }
    }
    let cert = pem_source(
        t.cert.as_ref(),
        t.cert_file.as_ref(),
        ("cert", "cert_file"),
        dir,
        files,
    )?;
    let key = pem_source(
        t.key.as_ref(),
        t.key_file.as_ref(),
        ("key", "key_file"),
        dir,
        files,
    )?;
    let ca = pem_source(
        t.client_ca.as_ref(),
        t.client_ca_file.as_ref(),
        ("client_ca", "client_ca_file"),
        dir,
        files,
    )?;
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => return Err(invalid("key_file", "missing: cert_file needs key_file")),
        (None, Some(_)) => return Err(invalid("cert_file", "missing: key_file needs cert_file")),
        (None, None) => {
            // Client-auth settings without a certificate would be silently plain HTTP.
            if t.client_auth_type.is_some() || ca.is_some() || t.min_version.is_some() {
                return Err(invalid(
                    "cert_file",
                    "missing: TLS settings are given but no certificate",
                ));
            }
            return Ok(None);
        }
    };
    let chain = certs("cert_file", &cert.0, &cert.1)?;
    let key = PrivateKeyDer::from_pem_slice(&key.1).map_err(|e| {
        (
            "key_file",
            TlsError::Pem {
                what: key.0.clone(),
                kind: "private key",
                detail: e.to_string(),
            },
        )
    })?;

    let versions = versions(t)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(t, ca, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| ("min_version", TlsError::Rustls(e)))?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| ("key_file", TlsError::Rustls(e)))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
}

/// The toolkit's `RequestClientCert` and `RequireAnyClientCert`: a certificate is asked for (or
/// required) but not checked against a CA; the client still proves it holds its key.
#[derive(Debug)]
struct AnyCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Serves one accepted connection, over TLS when `tls` is set. The handshake must finish
/// within `handshake_timeout` (the header-read timeout): a client that opens a socket and
/// never says hello holds a connection slot no longer than one that never sends a request.
pub async fn serve_connection<S, B>(
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
    builder: hyper::server::conn::http1::Builder,
    svc: S,
    handshake_timeout: Duration,
) where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::TokioIo;
    // Timeouts, resets and failed handshakes end here; they are the client's business.
    match tls {
        None => {
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        }
        Some(acceptor) => {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}
