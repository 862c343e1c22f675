//! AWS access for Bedrock: the credentials and region the standard variables and
//! shared profile files give, and Signature Version 4 signing of each request.
//!
//! Credentials come, as the AWS CLI and SDKs take them, from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, else from the profile
//! `AWS_PROFILE` (default `default`) of the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`) or the config file
//! (`AWS_CONFIG_FILE`, default `~/.aws/config`). The region comes from `AWS_REGION`,
//! else `AWS_DEFAULT_REGION`, else the profile. Only static keys are read: a profile
//! that gets its keys by single sign-on, an assumed role or a `credential_process` is
//! refused with the command that exports keys for it.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use reqwest::header::{HeaderName, HeaderValue};

use crate::secret::Secret;

/// The variables that give Bedrock its credentials, for errors that ask for them.
pub(crate) const CREDENTIAL_VARS: &str =
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE naming a profile in ~/.aws/credentials)";

/// What to set when Bedrock has no region.
pub(crate) const MISSING_REGION: &str =
    "Bedrock needs a region: set AWS_REGION (or AWS_DEFAULT_REGION, or region in the AWS profile), such as us-east-1";

/// The service name Bedrock's runtime endpoints are signed for.
const SIGNING_SERVICE: &str = "bedrock";

/// AWS credentials: an access key, its secret and, for temporary credentials, a
/// session token. `Debug` shows none of them.
///
/// ```
/// use portia::llm::AwsCredentials;
///
/// let credentials = AwsCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG").session_token("FwoGZXIvYXdzEXAMPLE");
/// assert!(!format!("{credentials:?}").contains("AKIDEXAMPLE"));
/// ```
#[derive(Clone, PartialEq)]
pub struct AwsCredentials {
    access_key_id: Secret,
    secret_access_key: Secret,
    session_token: Option<Secret>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token.as_ref().map(|_| "**********"))
            .finish()
    }
}

impl AwsCredentials {
    /// Long-term credentials: an access key id and its secret access key.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: Secret::new(access_key_id),
            secret_access_key: Secret::new(secret_access_key),
            session_token: None,
        }
    }

    /// Temporary credentials: adds the session token that goes with them.
    #[must_use]
    pub fn session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Secret::new(token));
        self
    }

    /// The access key id, the secret access key and the session token.
    pub(crate) fn into_parts(self) -> (Secret, Secret, Option<Secret>) {
        (self.access_key_id, self.secret_access_key, self.session_token)
    }

    /// The headers that sign a `POST` of `body` to `url` for `region` at `time`:
    /// `x-amz-date`, `authorization` and, for temporary credentials,
    /// `x-amz-security-token` (the secret ones marked sensitive). The host and
    /// `content-type: application/json` are signed too, so they must be sent as given.
    pub(crate) fn sign(
        &self,
        region: &str,
        url: &str,
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
        let credentials = aws_credential_types::Credentials::new(
            self.access_key_id.expose(),
            self.secret_access_key.expose(),
            self.session_token.as_ref().map(|t| t.expose().to_owned()),
            None,
            "portia",
        );
        let identity = credentials.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SIGNING_SERVICE)
            .time(time)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into();
        let headers = [("content-type", "application/json")];
        let request = SignableRequest::new("POST", url, headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| format!("cannot sign the request to {url}: {e}"))?;
        let (instructions, _) =
            sign(request, &params).map_err(|e| format!("cannot sign the request: {e}"))?.into_parts();
        instructions
            .headers()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
                let mut value = HeaderValue::from_str(value)
                    .map_err(|_| format!("the AWS credentials give a {name} header HTTP cannot carry"))?;
                value.set_sensitive(name != "x-amz-date");
                Ok((name, value))
            })
            .collect()
    }
}

/// The Bedrock runtime endpoint of `region`.
pub(crate) fn bedrock_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// What the shared profile files say about one profile.
#[derive(Debug, Default)]
pub(crate) struct Profile {
    /// The profile's static keys, if it has them.
    pub(crate) credentials: Option<AwsCredentials>,
    /// The profile's region, if it names one.
    pub(crate) region: Option<String>,
}

/// Reads the profile `AWS_PROFILE` names (else `default`) from the shared files,
/// finding them through `vars` (the process environment, or `.env`, or a test's).
/// No file and no such profile is an empty profile, unless `AWS_PROFILE` asked for it.
///
/// # Errors
/// What is wrong, naming the variable or file to fix: an unreadable file, a named
/// profile found nowhere, a profile whose keys come from a source this crate does not run.
pub(crate) fn read_profile(vars: &dyn Fn(&str) -> Option<String>) -> Result<Profile, (String, String)> {
    let named = vars("AWS_PROFILE").filter(|p| !p.trim().is_empty());
    let name = named.clone().unwrap_or_else(|| "default".to_owned());
    let home = vars("HOME").or_else(|| vars("USERPROFILE")).map(PathBuf::from);
    let file =
        |var: &str, default: &str| vars(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(default)));
    let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let config_file = file("AWS_CONFIG_FILE", ".aws/config");
    let from_credentials = section(credentials_file.as_ref(), &name)?;
    // The config file writes `[profile name]`, except for the default profile.
    let config_section = if name == "default" { name.clone() } else { format!("profile {name}") };
    let from_config = section(config_file.as_ref(), &config_section)?;
    if named.is_some() && from_credentials.is_none() && from_config.is_none() {
        let files: Vec<String> =
            [&credentials_file, &config_file].into_iter().flatten().map(|p| p.display().to_string()).collect();
        return Err((
            "AWS_PROFILE".to_owned(),
            format!(
                "there is no profile {name:?} in {}; name one that is there, or unset AWS_PROFILE",
                files.join(" or ")
            ),
        ));
    }
    let get = |key: &str| {
        let found = |s: &Option<HashMap<String, String>>| s.as_ref().and_then(|s| s.get(key)).cloned();
        found(&from_credentials).or_else(|| found(&from_config)).filter(|v| !v.is_empty())
    };
    let credentials = match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => {
            let credentials = AwsCredentials::new(id, secret);
            Some(match get("aws_session_token") {
                Some(token) => credentials.session_token(token),
                None => credentials,
            })
        }
        _ => match ["sso_session", "sso_start_url", "role_arn", "credential_process", "web_identity_token_file"]
            .into_iter()
            .find(|key| get(key).is_some())
        {
            Some(source) => {
                return Err((
                    "AWS_PROFILE".to_owned(),
                    format!(
                        "the profile {name:?} gets its credentials through {source}, which portia does not run: \
                         export them first (`eval \"$(aws configure export-credentials --profile {name} --format env)\"`) \
                         or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    ),
                ));
            }
            None => None,
        },
    };
    Ok(Profile { credentials, region: get("region") })
}

/// The keys of `[name]` in the ini file at `path`, or `None` when there is no file
/// or no such section.
fn section(path: Option<&PathBuf>, name: &str) -> Result<Option<HashMap<String, String>>, (String, String)> {
    let Some(path) = path else { return Ok(None) };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err((path.display().to_string(), format!("cannot read the AWS profile file: {e}"))),
    };
    Ok(ini_section(&text, name))
}

/// The keys of section `name` in ini `text`, as the AWS files write them: `[name]`
/// headers, `key = value` lines, `#` and `;` comments. Indented lines continue a
/// nested setting (`s3 =` then `  max_concurrent_requests = 10`) and are skipped.
fn ini_section(text: &str, name: &str) -> Option<HashMap<String, String>> {
    let mut current: Option<String> = None;
    let mut found: Option<HashMap<String, String>> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(['#', ';']) || line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let header = header.split_whitespace().collect::<Vec<_>>().join(" ");
            if header == name {
                found.get_or_insert_with(HashMap::new);
            }
            current = Some(header);
            continue;
        }
        if current.as_deref() != Some(name) {
            continue;
        }
        if let (Some(keys), Some((key, value))) = (found.as_mut(), trimmed.split_once('=')) {
            keys.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_sections_are_read_with_comments_and_nested_settings_skipped() {
        let text = "# top\n[default]\naws_access_key_id = AKID1\n; note\naws_secret_access_key=SECRET1\n\
                    s3 =\n  max_concurrent_requests = 10\n[profile  dev]\nregion = eu-west-1\n";
        let default = ini_section(text, "default").unwrap();
        assert_eq!(default.get("aws_access_key_id").map(String::as_str), Some("AKID1"));
        assert_eq!(default.get("aws_secret_access_key").map(String::as_str), Some("SECRET1"));
        assert_eq!(default.get("max_concurrent_requests"), None);
        assert_eq!(ini_section(text, "profile dev").unwrap().get("region").map(String::as_str), Some("eu-west-1"));
        assert_eq!(ini_section(text, "other"), None);
    }

    /// The signature of a fixed request, worked out apart from aws-sigv4 (by the
    /// SigV4 steps written out in Python's hmac and hashlib), so the signer is
    /// checked against the algorithm and not against itself.
    #[test]
    fn a_request_is_signed_as_sigv4_says() {
        let credentials = AwsCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let url =
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
        let headers = credentials.sign("us-east-1", url, br#"{"messages":[]}"#, time).unwrap();
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap().to_owned());
        assert_eq!(get("x-amz-date").as_deref(), Some("20231114T221320Z"));
        assert_eq!(get("authorization").as_deref(), Some(EXPECTED_AUTHORIZATION));
        assert!(headers.iter().find(|(n, _)| n == "authorization").unwrap().1.is_sensitive());
        assert_eq!(get("x-amz-security-token"), None);
    }

    const EXPECTED_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date, Signature=110233ac5b0806bf6d43938fbeb63d309557aa129fadbe83cb12b82dda6a3dfc";
}
