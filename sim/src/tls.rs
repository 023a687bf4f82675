//! HTTPS, as Bedrock serves it: TLS whose ALPN offers HTTP/2 and HTTP/1.1, so a client that
//! negotiates HTTP/2 (the AWS SDKs do) carries many streams over one connection. The certificate
//! comes from a certificate authority of the simulator's own, made at start-up (`rcgen`) for
//! `localhost` and `127.0.0.1`; a client trusts the authority's PEM ([`LocalTls::ca_pem`]). The
//! protocol each connection chose is counted in the stats (`tls_connections`).

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::SimStats;

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not make the simulator's certificates")]
    Certificate(#[from] rcgen::Error),
    #[error("rustls refused the simulator's certificate")]
    Rustls(#[from] rustls::Error),
}

/// The simulator's certificate authority and the server certificate it issued.
pub struct LocalTls {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for LocalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTls").finish_non_exhaustive()
    }
}

impl LocalTls {
    /// A fresh authority and a certificate for `localhost` and `127.0.0.1`, valid for a year.
    pub fn generate() -> Result<LocalTls, TlsError> {
        let mut authority = CertificateParams::new(Vec::<String>::new())?;
        authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        authority
            .distinguished_name
            .push(DnType::CommonName, "fm-sim local certificate authority");
        let authority_key = KeyPair::generate()?;
        let ca_pem = authority.self_signed(&authority_key)?.pem();
        let issuer = Issuer::new(authority, authority_key);

        let mut server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        server.distinguished_name.push(DnType::CommonName, "fm-sim");
        let server_key = KeyPair::generate()?;
        let certificate = server.signed_by(&server_key, &issuer)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(certificate.der().to_vec())], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(LocalTls {
            ca_pem,
            server: Arc::new(config),
        })
    }

    /// The authority's certificate, PEM: what a client adds to its trusted roots.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// Serves `app` over TLS on `listener`: HTTP/2 or HTTP/1.1, as each client's ALPN chose.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    tls: &LocalTls,
    stats: Arc<SimStats>,
) {
    let acceptor = TlsAcceptor::from(tls.server.clone());
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(err) => {
                // Out of file descriptors and the like: wait a moment instead of spinning.
                tracing::warn!(%err, "could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "could not set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let stats = stats.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::debug!(%err, "TLS handshake failed");
                    return;
                }
            };
            let protocol = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => "h2",
                Some(b"http/1.1") => "http/1.1",
                _ => "none",
            };
            stats.record_tls_connection(protocol);
            let mut http = auto::Builder::new(TokioExecutor::new());
            // Bedrock's own limit is not published; hyper's default of 200 makes a client open
            // a connection per 200 concurrent streams, as a busy real endpoint would.
            http.http2().max_concurrent_streams(200);
            if let Err(err) = http
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
}
