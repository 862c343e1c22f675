//! Where the Postgres store connects: the settings, the parsed URL and its TLS.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{Config, StorageKind};
use crate::secret::Secret;
use crate::{Error, Result};

/// The setting a bad URL is reported against.
pub(super) const URL_SETTING: &str = "PORTIA_DATABASE_URL";
/// How long a new connection may take when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the Postgres database of a [`PostgresStorage`](super::PostgresStorage).
///
/// `Debug` never shows the URL, which may hold a password.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresSettings {
    /// `postgres://user:password@host:5432/database?sslmode=require` (`PORTIA_DATABASE_URL`),
    /// or libpq's `key=value` form.
    pub url: Secret,
    /// The schema holding portia's tables, created if missing (`PORTIA_DATABASE_SCHEMA`).
    pub schema: String,
    /// The most connections one store opens at once (`PORTIA_DATABASE_POOL_SIZE`);
    /// the store's listener for wake-ups takes one more.
    pub pool_size: usize,
}

impl PostgresSettings {
    /// The default schema, `portia`.
    pub const DEFAULT_SCHEMA: &'static str = "portia";
    /// The default pool size.
    pub const DEFAULT_POOL_SIZE: usize = 16;

    /// Settings for the database at `url`, in the default schema and pool size.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: Secret::new(url), schema: Self::DEFAULT_SCHEMA.to_owned(), pool_size: Self::DEFAULT_POOL_SIZE }
    }

    /// The same settings with the tables in `schema`.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The same settings with at most `pool_size` connections.
    #[must_use]
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// The settings `config` gives (`PORTIA_DATABASE_URL`, `PORTIA_DATABASE_SCHEMA`,
    /// `PORTIA_DATABASE_POOL_SIZE`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `PORTIA_DATABASE_URL` when it is not set.
    pub fn from_config(config: &Config) -> Result<Self> {
        let url = config.database_url.clone().ok_or_else(missing_url)?;
        Ok(Self { url, schema: config.database_schema.clone(), pool_size: config.database_pool_size })
    }

    /// Checks the schema name and the pool size.
    pub(super) fn validate(&self) -> Result<()> {
        validate_schema(&self.schema)?;
        validate_pool_size(self.pool_size)
    }
}

fn missing_url() -> Error {
    Error::invalid_config(
        URL_SETTING,
        format!(
            "PORTIA_STORAGE={} needs a database: set PORTIA_DATABASE_URL=postgres://user:password@host:5432/database",
            StorageKind::Postgres
        ),
    )
}

/// A schema name goes into SQL as an identifier, so only plain names are taken.
fn validate_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let plain = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
        && !schema.starts_with("pg_");
    if plain {
        Ok(())
    } else {
        Err(Error::invalid_config(
            "PORTIA_DATABASE_SCHEMA",
            format!(
                "{schema:?} is not a schema name portia takes: use 1 to 63 lowercase letters, digits and \
                 underscores, starting with a letter or underscore and not with pg_ (default portia)"
            ),
        ))
    }
}

fn validate_pool_size(pool_size: usize) -> Result<()> {
    if pool_size == 0 {
        return Err(Error::invalid_config(
            "PORTIA_DATABASE_POOL_SIZE",
            "must be at least 1: set PORTIA_DATABASE_POOL_SIZE to 1 or more (default 16)",
        ));
    }
    Ok(())
}

/// A parsed URL, ready to connect.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: MakeRustlsConnect,
    /// `database "d" on host:port`, for messages: never the user's password.
    pub(super) describe: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Target {
    /// Parses `url`, reading `sslmode` and `sslrootcert` as libpq does.
    pub(super) fn parse(url: &Secret) -> Result<Self> {
        let (rest, sslmode) = take_param(url.expose().trim(), "sslmode");
        let (rest, root_cert) = take_param(&rest, "sslrootcert");
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            Error::invalid_config(
                URL_SETTING,
                format!("cannot be read ({e}); write it as postgres://user:password@host:5432/database"),
            )
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::invalid_config(URL_SETTING, "names no host: write postgres://user@host:5432/database"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("portia");
        }
        let tls = tls_for(&mut config, sslmode.as_deref(), root_cert.as_deref())?;
        let describe = describe(&config);
        Ok(Self { config, tls: MakeRustlsConnect::new(tls), describe })
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "?".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("?");
    format!("database {database:?} on {host}:{port}")
}

/// Removes parameter `name` from a `postgres://` URL's query or a `key=value` string,
/// returning what is left and the value. tokio-postgres knows neither `verify-*` nor
/// `sslrootcert`, so portia reads them itself.
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (head, params, separator) = match url.split_once('?') {
        Some((head, query)) if is_url => (format!("{head}?"), query, '&'),
        None if is_url => return (url.to_owned(), None),
        _ => (String::new(), url, ' '),
    };
    let mut value = None;
    let kept: Vec<&str> = params
        .split(separator)
        .filter(|param| match param.split_once('=') {
            Some((key, v)) if key.trim() == name => {
                value = Some(v.trim().to_owned());
                false
            }
            _ => !param.is_empty(),
        })
        .collect();
    let joined = kept.join(&separator.to_string());
    let rest = if joined.is_empty() && is_url { head.trim_end_matches('?').to_owned() } else { head + &joined };
    (rest, value)
}

/// The TLS set-up for `sslmode` as libpq means it: `disable`, `prefer` (the default)
/// and `require` encrypt without checking the certificate (unless `sslrootcert` is
/// given, when `require` checks it as `verify-ca` does); `verify-ca` checks the
/// chain and `verify-full` the host name too.
fn tls_for(
    config: &mut tokio_postgres::Config,
    sslmode: Option<&str>,
    root_cert: Option<&str>,
) -> Result<ClientConfig> {
    let (mode, verify) = match sslmode.unwrap_or("prefer") {
        "disable" => (SslMode::Disable, None),
        "prefer" => (SslMode::Prefer, None),
        "require" => (SslMode::Require, root_cert.map(|_| false)),
        "verify-ca" => (SslMode::Require, Some(false)),
        "verify-full" => (SslMode::Require, Some(true)),
        other => {
            return Err(Error::invalid_config(
                URL_SETTING,
                format!("sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"),
            ));
        }
    };
    config.ssl_mode(mode);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::storage_source(None, "cannot set up TLS", e))?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        None => Arc::new(AnyCertificate(provider)),
        Some(check_name) => {
            let roots = Arc::new(roots(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| Error::invalid_config(URL_SETTING, format!("sslrootcert gives no usable roots: {e}")))?;
            if check_name { webpki } else { Arc::new(AnyName(webpki)) }
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// The certificates `sslrootcert` names (a PEM file), else Mozilla's roots
/// (`sslrootcert=system` asks for those too).
fn roots(root_cert: Option<&str>) -> Result<RootCertStore> {
    let Some(path) = root_cert.filter(|p| *p != "system") else {
        return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    };
    let unreadable = |e: &dyn fmt::Display| {
        Error::invalid_config(URL_SETTING, format!("cannot read the certificates of sslrootcert={path}: {e}"))
    };
    let bytes = std::fs::read(path).map_err(|e| unreadable(&e))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        store.add(cert.map_err(|e| unreadable(&e))?).map_err(|e| unreadable(&e))?;
    }
    if store.is_empty() {
        return Err(unreadable(&"the file holds no PEM certificate"));
    }
    Ok(store)
}

/// Accepts any certificate, as libpq's `require` does without a root certificate:
/// the connection is encrypted, but the server is not authenticated.
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
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the host name, as libpq's `verify-ca` does.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_taken_from_urls_and_key_value_strings() {
        let (rest, mode) = take_param("postgres://u:p@h/db?sslmode=verify-full&application_name=x", "sslmode");
        assert_eq!((rest.as_str(), mode.as_deref()), ("postgres://u:p@h/db?application_name=x", Some("verify-full")));
        let (rest, mode) = take_param("postgres://u@h/db?sslmode=require", "sslmode");
        assert_eq!((rest.as_str(), mode.as_deref()), ("postgres://u@h/db", Some("require")));
        let (rest, mode) = take_param("postgres://u@h/db", "sslmode");
        assert_eq!((rest.as_str(), mode), ("postgres://u@h/db", None));
        let (rest, mode) = take_param("host=h dbname=d sslmode=verify-ca", "sslmode");
        assert_eq!((rest.as_str(), mode.as_deref()), ("host=h dbname=d", Some("verify-ca")));
    }

    #[test]
    fn bad_urls_name_the_setting_and_never_the_password() {
        for url in ["postgres://u:hunter2@h/db?sslmode=allow", "postgres://u:hunter2@h/db?nonsense=1", "nothing here"] {
            let err = Target::parse(&Secret::new(url)).unwrap_err();
            assert!(matches!(&err, Error::InvalidConfig { setting, .. } if setting == URL_SETTING), "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let target =
            Target::parse(&Secret::new("postgres://u:hunter2@db.example:6543/app?sslmode=verify-full")).unwrap();
        assert_eq!(target.describe, "database \"app\" on db.example:6543");
        assert!(!format!("{target:?}").contains("hunter2"));
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema("portia_2").is_ok());
        for bad in ["", "Portia", "a-b", "x\"; DROP", "pg_temp", "1abc"] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }
}
