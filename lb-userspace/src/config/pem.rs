//! `ca_file`: the PEM certificates of an internal CA, read and checked when the
//! configuration is loaded, so that a bad file is a configuration error with its place
//! rather than a probe failure on every real.

use std::{path::Path, sync::Arc};

use rustls_pki_types::{pem::PemObject as _, CertificateDer};

/// Reads the `CERTIFICATE` blocks of the PEM file `path` (other blocks, such as keys,
/// are skipped), each of which must be an X.509 certificate usable as a trust anchor.
/// Returns: the certificates in file order, or what is wrong with the file.
pub fn read_ca_file(path: &Path) -> Result<Arc<[CertificateDer<'static>]>, String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("`{shown}` must be an absolute path"));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|blocks| blocks.collect::<Result<Vec<_>, _>>())
        .map_err(|e| match e {
            rustls_pki_types::pem::Error::Io(e) => format!("cannot read `{shown}`: {e}"),
            e => format!("`{shown}` is not a valid PEM file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(format!(
            "`{shown}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        let mut store = rustls::RootCertStore::empty();
        store.add(cert.clone()).map_err(|e| {
            format!(
                "`{shown}`: certificate {} is not a CA certificate rustls can use: {e}",
                i + 1
            )
        })?;
    }
    Ok(certs.into())
}
