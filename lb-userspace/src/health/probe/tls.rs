//! The TLS half of an `https` probe, with rustls (the `ring` provider): the handshake,
//! the real's certificate checked against the system's roots or a `ca_file` unless the
//! probe is `insecure`, and what TLS errors mean for the probe.
//!
//! Every probe is a full handshake (no session resumption), so a certificate that
//! expires or is replaced by a bad one fails the very next probe.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex, OnceLock},
};

use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        Resumption,
    },
    crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

use super::{io_failure, Failure};
use crate::config::{tls_name, HealthCheck, Verify};

/// Opens a TLS session over `tcp` to the real at `target` as `check` says.
/// Returns: the session, or why the handshake failed.
pub async fn handshake(
    tcp: TcpStream,
    target: SocketAddr,
    check: &HealthCheck,
) -> Result<TlsStream<TcpStream>, Failure> {
    if check.verify == Verify::Insecure {
        warn_insecure(target);
    }
    let connector = TlsConnector::from(client_config(&check.verify)?);
    connector
        .connect(server_name(target, check), tcp)
        .await
        .map_err(|e| handshake_failure(&e))
}

/// Returns: what a failed handshake means for the probe: rustls's own error, a close
/// by the real, or the socket's error.
fn handshake_failure(e: &std::io::Error) -> Failure {
    tls_failure(e).unwrap_or_else(|| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            Failure::Tls("the real closed the connection during the handshake".into())
        }
        _ => io_failure(e),
    })
}

/// Returns: the TLS failure an I/O error of a TLS session carries (rustls's own error
/// under it), if it does.
pub fn tls_failure(e: &std::io::Error) -> Option<Failure> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(Failure::Tls(tls.to_string()))
}

/// The name the handshake sends as SNI and checks the certificate against: `host`
/// (without a port) when set, else the real's address, which is not sent (SNI carries
/// DNS names only) and must be among the certificate's IP addresses.
/// Returns: the name.
fn server_name(target: SocketAddr, check: &HealthCheck) -> ServerName<'static> {
    // `host` was checked when the configuration was loaded.
    check
        .host
        .as_deref()
        .and_then(|h| tls_name(h).ok())
        .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()))
}

/// Logs, once per real and port for the daemon's life, that its certificate is not
/// verified: a standing reminder in the log, not one line per probe.
fn warn_insecure(target: SocketAddr) {
    static WARNED: LazyLock<Mutex<HashSet<SocketAddr>>> = LazyLock::new(Mutex::default);
    let first = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(target);
    if first {
        tracing::warn!(
            real = %target.ip(),
            port = target.port(),
            "https probe does not verify the real's certificate (insecure: true)"
        );
    }
}

/// Returns: the rustls client settings of a probe verifying as `verify` says; TLS 1.2
/// and 1.3, no client certificate, no resumption.
fn client_config(verify: &Verify) -> Result<Arc<ClientConfig>, Failure> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure::Tls(e.to_string()))?;
    let mut config = match verify {
        Verify::SystemRoots => builder.with_root_certificates(system_roots()?),
        Verify::CaFile(ca) => {
            let mut roots = RootCertStore::empty();
            // Each was checked to be a usable trust anchor when the file was read.
            roots.add_parsable_certificates(ca.certs.iter().cloned());
            builder.with_root_certificates(roots)
        }
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    }
    .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Returns: the system's trusted roots (Debian: `/etc/ssl/certs`), read at the first
/// probe that needs them and kept for the daemon's life.
fn system_roots() -> Result<Arc<RootCertStore>, Failure> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("reading the system's root certificates: {e}");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::info!(
            added,
            ignored,
            "https probes trust the system's root certificates"
        );
        Arc::new(roots)
    });
    if roots.is_empty() {
        return Err(Failure::Tls(
            "no trusted root certificate on this system (install ca-certificates, or set ca_file)"
                .into(),
        ));
    }
    Ok(roots.clone())
}

/// The verifier of `insecure: true`: any certificate, for any name, from any issuer.
/// The handshake's signatures are still checked, so the real does hold the key of the
/// certificate it shows.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    use rustls::{pki_types::PrivateKeyDer, ServerConfig};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
        sync::mpsc,
    };
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::{
        config::{CaFile, CheckType},
        health::probe,
    };

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A CA of the test's own, and a certificate it signed for `real.test` and
    /// 127.0.0.1 with its key.
    struct Pki {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
        key: Vec<u8>,
    }

    /// Returns: a CA named `name`, with its key pair, as an issuer.
    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn pki() -> Pki {
        let ca = ca("xdpvs test CA");
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["real.test".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Pki {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            key: key.serialize_der(),
        }
    }

    /// An HTTPS server on loopback answering every request with `status`.
    /// Returns: its port, and the SNI of each handshake that completed (`None`: none
    /// sent).
    async fn https_server(
        pki: &Pki,
        status: u16,
    ) -> (u16, mpsc::UnboundedReceiver<Option<String>>) {
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.leaf.clone()],
                PrivateKeyDer::Pkcs8(pki.key.clone().into()),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                let Ok(mut tls) = acceptor.accept(c).await else {
                    continue;
                };
                let _ = tx.send(tls.get_ref().1.server_name().map(str::to_string));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        (port, rx)
    }

    fn check(port: u16, host: Option<&str>, verify: Verify) -> HealthCheck {
        HealthCheck {
            kind: CheckType::Https,
            port,
            path: "/health".into(),
            host: host.map(str::to_string),
            expect_status: vec![(200, 299)],
            interval: Duration::from_secs(5),
            // Generous: the crypto is unoptimised in test builds.
            timeout: Duration::from_secs(5),
            rise: 1,
            fall: 1,
            verify,
            dns: crate::config::DnsQuestion::default(),
        }
    }

    fn ca_file(cert: &CertificateDer<'static>) -> Verify {
        Verify::CaFile(CaFile {
            path: "/test/ca.pem".into(),
            certs: vec![cert.clone()].into(),
        })
    }

    fn tls_message(r: Result<Duration, Failure>) -> String {
        match r {
            Err(Failure::Tls(m)) => m,
            other => panic!("not a TLS failure: {other:?}"),
        }
    }

    #[tokio::test]
    async fn verified_against_the_ca_file_with_host_as_sni() {
        let pki = pki();
        let (port, mut sni) = https_server(&pki, 200).await;
        let c = check(port, Some("real.test"), ca_file(&pki.ca));
        assert!(probe(LO, &c).await.is_ok());
        assert_eq!(sni.recv().await.unwrap().as_deref(), Some("real.test"));
        // A port in `host` is not part of the name.
        let c = check(port, Some("real.test:8443"), ca_file(&pki.ca));
        assert!(probe(LO, &c).await.is_ok());
        assert_eq!(sni.recv().await.unwrap().as_deref(), Some("real.test"));
        // Without host, the real's address is the name: checked, not sent.
        let c = check(port, None, ca_file(&pki.ca));
        assert!(probe(LO, &c).await.is_ok());
        assert_eq!(sni.recv().await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_unknown_issuer_or_another_name_fails() {
        let pki = pki();
        let (port, _) = https_server(&pki, 200).await;
        let c = check(port, Some("real.test"), Verify::SystemRoots);
        let m = tls_message(probe(LO, &c).await);
        assert!(
            m == "invalid peer certificate: UnknownIssuer" || m.starts_with("no trusted root"),
            "{m}"
        );
        let other_ca = ca("another CA");
        let c = check(port, Some("real.test"), ca_file(other_ca.der()));
        let f = probe(LO, &c).await.unwrap_err();
        assert_eq!(
            f.to_string(),
            "tls: invalid peer certificate: UnknownIssuer"
        );
        let c = check(port, Some("other.test"), ca_file(&pki.ca));
        let m = tls_message(probe(LO, &c).await);
        assert!(
            m.starts_with(
                "invalid peer certificate: certificate not valid for name \"other.test\""
            ),
            "{m}"
        );
    }

    #[tokio::test]
    async fn insecure_takes_any_certificate() {
        let pki = pki();
        let (port, mut sni) = https_server(&pki, 200).await;
        let c = check(port, Some("other.test"), Verify::Insecure);
        assert!(probe(LO, &c).await.is_ok());
        assert!(probe(LO, &c).await.is_ok(), "and again (warned once)");
        assert_eq!(sni.recv().await.unwrap().as_deref(), Some("other.test"));
    }

    #[tokio::test]
    async fn the_status_is_checked_over_tls() {
        let pki = pki();
        let (port, _) = https_server(&pki, 503).await;
        let c = check(port, Some("real.test"), ca_file(&pki.ca));
        assert_eq!(probe(LO, &c).await, Err(Failure::Status(503)));
    }

    #[tokio::test]
    async fn plain_http_on_the_port_is_a_tls_failure() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let c = check(port, Some("real.test"), Verify::Insecure);
        let m = tls_message(probe(LO, &c).await);
        assert!(m.contains("corrupt message"), "{m}");
    }

    #[tokio::test]
    async fn a_close_during_the_handshake_is_a_tls_failure() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
            }
        });
        let c = check(port, None, Verify::Insecure);
        assert_eq!(
            probe(LO, &c).await.unwrap_err().to_string(),
            "tls: the real closed the connection during the handshake"
        );
    }
}
