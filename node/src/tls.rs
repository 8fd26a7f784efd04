//! TLS of every listener and of node-to-node channels (rustls, ring), and
//! the dev certificate authority behind `raftstream-node certs`.
//!
//! Trust model: the cluster CA signs one certificate per node. The peer
//! listener accepts only connections that present such a certificate, and a
//! node dials its peers presenting its own and checking theirs. Clients see
//! the public listeners, which present `client_tls.cert` and, when
//! `client_tls.client_ca` is set, ask clients for a certificate too.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;
use tonic::transport::ServerTlsConfig;

use crate::config::ClientTls;
use crate::config::PeerTls;

/// The name `raftstream-node certs` puts in every node certificate besides
/// the hosts it is given: peers may check it when they reach a node through
/// an address its certificate does not name (`peer_tls.server_name`).
pub const NODE_CERT_NAME: &str = "raftstream-node";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("TLS settings: {0}")]
    Config(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists already; certs never overwrites keys")]
    Exists(PathBuf),
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM file, checking it holds at least one certificate.
fn read_certs(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(pem)
}

/// Reads a PEM private key, checking it parses.
fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        path: path.to_path_buf(),
        reason: format!("no private key: {e}"),
    })?;
    Ok(pem)
}

fn identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(read_certs(cert)?, read_key(key)?))
}

/// The peer listener's TLS: this node's certificate, and a client
/// certificate signed by the cluster CA required of every connection.
pub fn peer_server(tls: &PeerTls) -> Result<ServerTlsConfig, TlsError> {
    Ok(ServerTlsConfig::new()
        .identity(identity(&tls.cert, &tls.key)?)
        .client_ca_root(Certificate::from_pem(read_certs(&tls.ca)?))
        .client_auth_optional(false))
}

/// The TLS of channels to peers: present this node's certificate, accept
/// only a peer whose certificate the cluster CA signed.
pub fn peer_client(tls: &PeerTls) -> Result<ClientTlsConfig, TlsError> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_certs(&tls.ca)?))
        .identity(identity(&tls.cert, &tls.key)?);
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// The public gRPC listener's TLS.
pub fn public_grpc(tls: &ClientTls) -> Result<ServerTlsConfig, TlsError> {
    let mut config = ServerTlsConfig::new().identity(identity(&tls.cert, &tls.key)?);
    if let Some(ca) = &tls.client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read_certs(ca)?))
            .client_auth_optional(false);
    }
    Ok(config)
}

/// The HTTP gateway's TLS (HTTP/1.1 and HTTP/2 by ALPN).
pub fn public_http(tls: &ClientTls) -> Result<rustls::ServerConfig, TlsError> {
    let chain = der_certs(&tls.cert)?;
    let key_pem = read_key(&tls.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
        path: tls.key.clone(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in der_certs(ca)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            path: tls.cert.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn der_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_certs(path)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// What `raftstream-node certs` wrote.
#[derive(Debug)]
pub struct DevCerts {
    pub ca: PathBuf,
    /// Node id → (certificate, key).
    pub nodes: Vec<(u64, PathBuf, PathBuf)>,
    /// A client certificate and key signed by the same CA, for listeners
    /// that ask clients for one.
    pub client: (PathBuf, PathBuf),
}

/// Writes a new CA (`ca.pem`, `ca.key`), a certificate per node
/// (`node-<id>.pem`, `node-<id>.key`, valid for server and client use,
/// naming `hosts` and [`NODE_CERT_NAME`]) and one client certificate
/// (`client.pem`, `client.key`) into `dir`. Refuses to overwrite a file:
/// replacing a CA by mistake would cut a running cluster apart.
pub fn write_dev_certs(
    dir: &Path,
    node_ids: &[u64],
    hosts: &[String],
) -> Result<DevCerts, TlsError> {
    use rcgen::BasicConstraints;
    use rcgen::CertificateParams;
    use rcgen::CertifiedIssuer;
    use rcgen::DnType;
    use rcgen::ExtendedKeyUsagePurpose;
    use rcgen::IsCa;
    use rcgen::KeyPair;
    use rcgen::KeyUsagePurpose;

    let path = |name: String| dir.join(name);
    let mut files = vec![path("ca.pem".into()), path("ca.key".into())];
    for id in node_ids {
        files.push(path(format!("node-{id}.pem")));
        files.push(path(format!("node-{id}.key")));
    }
    files.push(path("client.pem".into()));
    files.push(path("client.key".into()));
    if let Some(existing) = files.iter().find(|f| f.exists()) {
        return Err(TlsError::Exists(existing.clone()));
    }
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Raftstream cluster CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(&files[0], ca.pem().as_bytes())?;
    write(&files[1], ca_key_pem.as_bytes())?;

    let leaf = |common_name: String, names: Vec<String>| -> Result<(String, String), TlsError> {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut nodes = Vec::new();
    for id in node_ids {
        let mut names = hosts.to_vec();
        names.push(NODE_CERT_NAME.to_string());
        let (cert, key) = leaf(format!("raftstream node {id}"), names)?;
        let cert_path = path(format!("node-{id}.pem"));
        let key_path = path(format!("node-{id}.key"));
        write(&cert_path, cert.as_bytes())?;
        write(&key_path, key.as_bytes())?;
        nodes.push((*id, cert_path, key_path));
    }
    let (cert, key) = leaf("raftstream client".into(), vec!["raftstream-client".into()])?;
    let client = (path("client.pem".into()), path("client.key".into()));
    write(&client.0, cert.as_bytes())?;
    write(&client.1, key.as_bytes())?;
    Ok(DevCerts {
        ca: files[0].clone(),
        nodes,
        client,
    })
}

/// Writes a file readable by its owner only when it is a key.
fn write(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    let failed = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(path, contents).map_err(failed)?;
    #[cfg(unix)]
    if path.extension().is_some_and(|e| e == "key") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_load_as_peer_and_public_tls_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let certs = write_dev_certs(dir.path(), &[1, 2], &hosts).unwrap();
        assert_eq!(certs.nodes.len(), 2);
        let (_, cert, key) = &certs.nodes[0];
        let peer = PeerTls {
            ca: certs.ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            server_name: None,
        };
        peer_server(&peer).unwrap();
        peer_client(&peer).unwrap();
        let public = ClientTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(certs.ca.clone()),
        };
        public_grpc(&public).unwrap();
        let http = public_http(&public).unwrap();
        assert!(http.alpn_protocols.contains(&b"h2".to_vec()));

        let again = write_dev_certs(dir.path(), &[3], &hosts).unwrap_err();
        assert!(matches!(again, TlsError::Exists(_)), "{again}");
    }

    #[test]
    fn a_key_file_in_place_of_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let certs = write_dev_certs(dir.path(), &[1], &["localhost".into()]).unwrap();
        let (_, _, key) = &certs.nodes[0];
        let peer = PeerTls {
            ca: key.clone(),
            cert: key.clone(),
            key: key.clone(),
            server_name: None,
        };
        let refused = peer_server(&peer).unwrap_err();
        assert!(matches!(refused, TlsError::NoPem { .. }), "{refused}");
        let missing = PeerTls {
            ca: dir.path().join("nope.pem"),
            ..peer
        };
        assert!(matches!(
            peer_client(&missing).unwrap_err(),
            TlsError::Read { .. }
        ));
    }
}
