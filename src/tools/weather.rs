//! `weather_tool`: the current weather in a city, from OpenWeatherMap.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::json_number;
use super::web::{self, Api};
use crate::config::Config;
use crate::secret::Secret;
use crate::tool::{ToolError, ToolOutput, ToolRunContext, ToolSpec, TypedTool};

const SERVICE: &str = "OpenWeatherMap";
const KEY_VAR: &str = "OPENWEATHERMAP_API_KEY";
const DEFAULT_BASE_URL: &str = "https://api.openweathermap.org";

/// Gets the current weather in a city from OpenWeatherMap, in metric units.
///
/// The key, base URL and timeout are the tool's own, given when it is made:
/// [`WeatherTool::new`] with a key, or [`WeatherTool::from_config`].
#[derive(Debug, Clone)]
pub struct WeatherTool {
    api: Api,
}

/// The arguments of [`WeatherTool`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct WeatherArgs {
    /// The city, optionally with a country code, such as "Paris" or "Paris,FR".
    pub city: String,
}

/// The parts of OpenWeatherMap's reply the tool uses.
#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    weather: Vec<Condition>,
    main: Option<Readings>,
    #[serde(default)]
    wind: Option<Wind>,
}

#[derive(Debug, Deserialize)]
struct Condition {
    description: String,
}

#[derive(Debug, Deserialize)]
struct Readings {
    temp: f64,
    #[serde(default)]
    feels_like: Option<f64>,
    #[serde(default)]
    humidity: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct Wind {
    #[serde(default)]
    speed: Option<f64>,
}

impl WeatherTool {
    /// A weather tool with this OpenWeatherMap key.
    pub fn new(api_key: impl Into<String>) -> Self {
        let mut api = Self::api();
        api.set_key(Some(Secret::new(api_key)));
        Self { api }
    }

    /// The weather tool `config` describes: its OpenWeatherMap key and base URL, and
    /// its request timeout. Without a key every call fails, naming `OPENWEATHERMAP_API_KEY`.
    pub fn from_config(config: &Config) -> Self {
        let key = config.openweathermap_api_key.clone();
        Self { api: Self::api().configured(key, config.openweathermap_base_url.as_ref(), config) }
    }

    fn api() -> Api {
        Api::new(SERVICE, KEY_VAR, DEFAULT_BASE_URL)
    }

    /// Asks `url` instead of OpenWeatherMap's own service (a proxy, a test server).
    #[must_use]
    pub fn base_url(mut self, url: impl AsRef<str>) -> Self {
        self.api.set_base_url(url.as_ref());
        self
    }

    /// Gives each request `timeout` to answer.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.api.set_timeout(timeout);
        self
    }
}

#[async_trait::async_trait]
impl TypedTool for WeatherTool {
    type Args = WeatherArgs;

    fn spec(&self) -> ToolSpec {
        ToolSpec::new("weather_tool", "Weather Tool", "Gets the current weather in a city.")
            .output_description(
                "JSON {summary, city, description, temperature_c, feels_like_c, humidity_pct, wind_speed_ms}.",
            )
            .read_only()
    }

    async fn call(&self, _ctx: &ToolRunContext, args: WeatherArgs) -> Result<ToolOutput, ToolError> {
        let city = args.city.trim();
        if city.is_empty() {
            return Err(ToolError::soft("city is empty; give a city name such as \"Paris\" or \"Paris,FR\""));
        }
        let key = self.api.key()?;
        // The key travels in the query, so only the URL without it is checked or shown.
        let url = self.api.url("/data/2.5/weather")?;
        let request =
            self.api.request(reqwest::Method::GET, &url).query(&[("q", city), ("appid", key), ("units", "metric")]);
        let answer = self.api.exchange(request).await?;
        let (status, text) = (answer.status, &answer.text);
        if status.as_u16() == 404 {
            let message = web::api_message(text, key);
            return Err(ToolError::soft(format!(
                "{SERVICE} does not know the city {city:?} ({message}); check the spelling or add a country code, such as \"Paris,FR\""
            )));
        }
        if !status.is_success() {
            // 400 means the city argument was unusable, which the agent can fix.
            let message = web::api_message(text, key);
            return Err(web::status_error(&self.api, &answer, &message, &[400]));
        }
        output(city, text).map(ToolOutput::value)
    }
}

fn output(asked: &str, text: &str) -> Result<Value, ToolError> {
    let reply: Reply = serde_json::from_str(text).map_err(|e| web::garbled(SERVICE, &e))?;
    let Some(readings) = reply.main else {
        return Err(ToolError::soft(format!("{SERVICE}'s reply for {asked:?} has no temperature; try again")));
    };
    let Some(condition) = reply.weather.first() else {
        return Err(ToolError::soft(format!("{SERVICE}'s reply for {asked:?} has no weather description; try again")));
    };
    let city = reply.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| asked.to_owned());
    let description = &condition.description;
    let temperature = readings.temp;
    let optional = |x: Option<f64>| x.map_or(Value::Null, json_number);
    Ok(json!({
        "summary": format!("The current weather in {city} is {description} with a temperature of {temperature}°C."),
        "city": city,
        "description": description,
        "temperature_c": json_number(temperature),
        "feels_like_c": optional(readings.feels_like),
        "humidity_pct": optional(readings.humidity),
        "wind_speed_ms": optional(reply.wind.and_then(|w| w.speed)),
    }))
}
