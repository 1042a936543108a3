//! A whole federation in one directory: dev PKI, keys and a config file,
//! plus mTLS clients for its partners. The demo, the end-to-end tests and the
//! benchmark all build on this, so they exercise exactly what `serve` runs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use crossflow_identity::{KeyRing, generate_dev};
use crossflow_settings::Settings;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A federation laid out in a directory.
#[derive(Debug)]
pub struct Testbed {
    pub dir: PathBuf,
    pub federation: String,
    // Held so a temporary directory lives as long as the testbed.
    _tmp: Option<tempfile::TempDir>,
}

/// Why a testbed could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Identity(#[from] crossflow_identity::IdentityError),
    #[error("{0}")]
    Config(#[from] crossflow_settings::ConfigErrors),
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The `[gateway]` section every testbed config starts with; paths are
/// relative to the config file.
pub fn gateway_section(federation: &str, listen: &str) -> String {
    format!(
        r#"[gateway]
federation = "{federation}"
listen = "{listen}"
data_dir = "data"
key_dir = "keys"
timezone = "Asia/Shanghai"

[gateway.tls]
ca = "pki/ca.crt"
cert = "pki/gateway.crt"
key = "pki/gateway.key"
"#
    )
}

// === impl Testbed ===

impl Testbed {
    /// Lays out a federation in `dir` (a new temporary directory if `None`):
    /// `pki/` for the partners and operators, `keys/`, and `crossflow.toml`
    /// made of the gateway section followed by `body` (partners, agreements).
    pub fn create(
        dir: Option<&Path>,
        federation: &str,
        listen: &str,
        partners: &[&str],
        operators: &[&str],
        body: &str,
    ) -> Result<Testbed, TestbedError> {
        let (dir, tmp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("crossflow-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        generate_dev(
            &dir.join("pki"),
            federation,
            &owned(partners),
            &owned(operators),
        )?;
        KeyRing::generate(&dir.join("keys"))?;
        let text = format!("{}\n{body}", gateway_section(federation, listen));
        std::fs::write(dir.join("crossflow.toml"), text)?;
        Ok(Testbed {
            dir,
            federation: federation.to_owned(),
            _tmp: tmp,
        })
    }

    /// The federation already laid out in `dir` (by [`Testbed::create`]),
    /// for a second process or replica serving the same one.
    pub fn at(dir: &Path, federation: &str) -> Testbed {
        Testbed {
            dir: dir.to_path_buf(),
            federation: federation.to_owned(),
            _tmp: None,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("crossflow.toml")
    }

    pub fn settings(&self) -> Result<Settings, TestbedError> {
        Ok(Settings::load(&self.config_path())?)
    }

    /// The PEM files a client named `name` (a partner id, or
    /// `operator-<name>`) connects with.
    pub fn client_pki(&self, name: &str) -> ClientPki {
        let pki = self.dir.join("pki");
        ClientPki {
            ca: pki.join("ca.crt"),
            cert: pki.join(format!("{name}.crt")),
            key: pki.join(format!("{name}.key")),
        }
    }

    /// An mTLS channel to `addr` with the certificate `pki/<name>.crt`
    /// (a partner id, or `operator-<name>`).
    pub async fn channel(&self, addr: SocketAddr, name: &str) -> Result<Channel, TestbedError> {
        let p = self.client_pki(name);
        connect(addr, &p.ca, &p.cert, &p.key).await
    }
}

/// Where a testbed client's certificate, key and trusted CA are.
#[derive(Debug, Clone)]
pub struct ClientPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The name the testbed's server certificate is issued for, which clients
/// verify.
pub const SERVER_NAME: &str = "localhost";

/// Connects to a gateway over mTLS with the given PEM files.
pub async fn connect(
    addr: SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Channel, TestbedError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .identity(Identity::from_pem(
            std::fs::read(cert)?,
            std::fs::read(key)?,
        ))
        .domain_name(SERVER_NAME);
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(channel)
}
