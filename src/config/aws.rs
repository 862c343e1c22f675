//! The AWS part of the configuration, for Bedrock: credentials and region from the
//! variables, else from the shared profile files (read only when Bedrock is used).

use super::Config;
use crate::llm::{AwsCredentials, LlmProvider, LlmSettings, read_aws_profile, split_provider};
use crate::{Error, Result};

impl Config {
    /// Fills what is missing of the region and the Bedrock endpoint from `vars`, and,
    /// when Bedrock is used, the credentials and region from the AWS profile files
    /// (found through `vars` too: `AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`,
    /// `AWS_CONFIG_FILE`, `HOME`). Keys in variables win over the profile's, as in
    /// the AWS CLI.
    pub(super) fn fill_aws(&mut self, vars: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        if self.aws_region.is_none() {
            self.aws_region = vars("AWS_REGION").or_else(|| vars("AWS_DEFAULT_REGION"));
        }
        if self.bedrock_endpoint.is_none() {
            self.bedrock_endpoint = vars("AWS_ENDPOINT_URL_BEDROCK_RUNTIME");
        }
        let has_keys = self.aws_access_key_id.is_some() && self.aws_secret_access_key.is_some();
        if !self.uses(LlmProvider::Bedrock) || (has_keys && self.aws_region.is_some()) {
            return Ok(());
        }
        let profile = read_aws_profile(vars).map_err(|(setting, message)| Error::invalid_config(setting, message))?;
        if let (false, Some(credentials)) = (has_keys, profile.credentials) {
            let (id, secret, token) = credentials.into_parts();
            (self.aws_access_key_id, self.aws_secret_access_key, self.aws_session_token) =
                (Some(id), Some(secret), token);
        }
        if self.aws_region.is_none() {
            self.aws_region = profile.region;
        }
        Ok(())
    }

    /// Whether any model this configuration names is `provider`'s.
    fn uses(&self, provider: LlmProvider) -> bool {
        let named = [&self.default_model, &self.planning_model, &self.execution_model, &self.summary_model];
        self.llm_provider == provider
            || named
                .into_iter()
                .flatten()
                .chain(&self.llm_fallback)
                .any(|name| split_provider(name).0 == Some(provider))
    }

    /// The AWS credentials Bedrock needs.
    ///
    /// # Errors
    /// [`Error::MissingApiKey`] naming the variables to set.
    pub(super) fn require_aws(&self) -> Result<()> {
        match (&self.aws_access_key_id, &self.aws_secret_access_key) {
            (Some(_), Some(_)) => Ok(()),
            _ => Err(Error::MissingApiKey {
                service: LlmProvider::Bedrock.to_string(),
                env_var: crate::llm::AWS_CREDENTIAL_VARS.to_owned(),
            }),
        }
    }

    /// `settings` with the AWS credentials and region, when they are set.
    pub(super) fn aws_settings(&self, mut settings: LlmSettings) -> LlmSettings {
        if let (Some(id), Some(secret)) = (&self.aws_access_key_id, &self.aws_secret_access_key) {
            let mut credentials = AwsCredentials::new(id.expose(), secret.expose());
            if let Some(token) = &self.aws_session_token {
                credentials = credentials.session_token(token.expose());
            }
            settings = settings.aws_credentials(credentials);
        }
        if let Some(region) = &self.aws_region {
            settings = settings.aws_region(region);
        }
        settings
    }
}
