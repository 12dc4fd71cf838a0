//! Certificates made at test time with rcgen: a CA, servers with DNS SANs, clients with URI
//! (SPIFFE-style) SANs, expired ones, and a second CA nobody trusts.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

pub const GATEWAY_SAN: &str = "spiffe://cluster.local/ns/cpis/sa/gateway";

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and key written as PEM files.
#[derive(Clone)]
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: Vec<SanType>,
        server: bool,
        valid: (OffsetDateTime, OffsetDateTime),
    ) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = sans;
        params.not_before = valid.0;
        params.not_after = valid.1;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pem = Pem {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&pem.cert, cert.pem()).unwrap();
        std::fs::write(&pem.key, key.serialize_pem()).unwrap();
        pem
    }

    fn now_valid() -> (OffsetDateTime, OffsetDateTime) {
        let now = OffsetDateTime::now_utc();
        (now - Duration::hours(1), now + Duration::days(1))
    }

    /// A server certificate for `localhost` and 127.0.0.1, also usable as a client.
    pub fn server(&self, dir: &Path, name: &str) -> Pem {
        let sans = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::URI(
                format!("spiffe://cluster.local/ns/cpis/sa/{name}")
                    .try_into()
                    .unwrap(),
            ),
        ];
        self.issue(dir, name, sans, true, Self::now_valid())
    }

    /// The gateway's internal identity (client) and, with `server`, its serving certificate.
    pub fn gateway(&self, dir: &Path) -> Pem {
        let sans = vec![
            SanType::URI(GATEWAY_SAN.try_into().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ];
        self.issue(dir, "gateway", sans, true, Self::now_valid())
    }

    /// A client certificate with one URI SAN (a council system, say).
    pub fn client(&self, dir: &Path, name: &str, uri: &str) -> Pem {
        self.issue(
            dir,
            name,
            vec![SanType::URI(uri.try_into().unwrap())],
            false,
            Self::now_valid(),
        )
    }

    /// Like [`Ca::client`], but its validity ended yesterday.
    pub fn expired_client(&self, dir: &Path, name: &str, uri: &str) -> Pem {
        let now = OffsetDateTime::now_utc();
        self.issue(
            dir,
            name,
            vec![SanType::URI(uri.try_into().unwrap())],
            false,
            (now - Duration::days(10), now - Duration::days(1)),
        )
    }
}
