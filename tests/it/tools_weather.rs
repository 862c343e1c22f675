//! The weather tool against an in-process OpenWeatherMap double.

use std::time::Duration;

use portia::tools::WeatherTool;
use portia::{Config, Tool, ToolError, ToolOutput, ToolRunContext, WorkflowId};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "owm-test-key";

/// The tool's config against `base_url`, with room for a loaded machine: only the
/// timeout test asks for a short timeout.
fn config(base_url: &str) -> Config {
    config_timing_out(base_url, Duration::from_secs(10))
}

fn config_timing_out(base_url: &str, timeout: Duration) -> Config {
    Config::builder()
        .openweathermap_api_key(KEY)
        .openweathermap_base_url(base_url)
        .request_timeout(timeout)
        .build()
        .unwrap()
}

async fn weather(config: Config, city: &str) -> Result<Value, ToolError> {
    let ctx = ToolRunContext::new(WorkflowId::new());
    match WeatherTool::from_config(&config).run(&ctx, json!({ "city": city })).await? {
        ToolOutput::Value(value) => Ok(value.into_value()),
        other => panic!("expected a value, got {other:?}"),
    }
}

fn paris() -> Value {
    json!({
        "coord": {"lon": 2.35, "lat": 48.85},
        "weather": [{"id": 800, "main": "Clear", "description": "clear sky", "icon": "01d"}],
        "base": "stations",
        "main": {"temp": 21.3, "feels_like": 20.1, "temp_min": 19.0, "temp_max": 23.0, "pressure": 1016, "humidity": 48},
        "visibility": 10000,
        "wind": {"speed": 3.6, "deg": 250},
        "name": "Paris",
        "cod": 200
    })
}

async fn status_reply(status: u16, body: Value) -> ToolError {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(status).set_body_json(body)).mount(&server).await;
    weather(config(&server.uri()), "Paris").await.unwrap_err()
}

#[tokio::test]
async fn weather_gets_metric_readings_and_returns_a_summary_with_the_numbers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/data/2.5/weather"))
        .and(query_param("q", "Paris"))
        .and(query_param("appid", KEY))
        .and(query_param("units", "metric"))
        .respond_with(ResponseTemplate::new(200).set_body_json(paris()))
        .expect(1)
        .mount(&server)
        .await;

    let value = weather(config(&server.uri()), " Paris ").await.unwrap();

    assert_eq!(
        value,
        json!({
            "summary": "The current weather in Paris is clear sky with a temperature of 21.3°C.",
            "city": "Paris",
            "description": "clear sky",
            "temperature_c": 21.3,
            "feels_like_c": 20.1,
            "humidity_pct": 48,
            "wind_speed_ms": 3.6
        })
    );
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests[0].url.query_pairs().count(), 3, "{}", requests[0].url);
}

#[tokio::test]
async fn readings_the_api_leaves_out_are_null() {
    let server = MockServer::start().await;
    let reply = json!({"weather": [{"description": "fog"}], "main": {"temp": 4}, "name": ""});
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200).set_body_json(reply)).mount(&server).await;
    let value = weather(config(&server.uri()), "Lyon").await.unwrap();
    assert_eq!(
        value,
        json!({
            "summary": "The current weather in Lyon is fog with a temperature of 4°C.",
            "city": "Lyon",
            "description": "fog",
            "temperature_c": 4,
            "feels_like_c": null,
            "humidity_pct": null,
            "wind_speed_ms": null
        })
    );
}

#[tokio::test]
async fn unknown_city_is_a_soft_error_with_the_api_message() {
    let err = status_reply(404, json!({"cod": "404", "message": "city not found"})).await;
    let ToolError::Soft(message) = &err else { panic!("expected soft, got {err:?}") };
    assert!(message.contains("city not found") && message.contains("\"Paris\""), "{message}");
}

#[tokio::test]
async fn missing_key_is_a_hard_error_naming_the_variable() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
    let config = Config::builder().openweathermap_base_url(server.uri()).build().unwrap();
    let err = weather(config, "Paris").await.unwrap_err();
    assert!(matches!(&err, ToolError::Hard(m) if m.contains("OPENWEATHERMAP_API_KEY")), "{err:?}");
}

#[tokio::test]
async fn rejected_key_is_a_hard_error_that_does_not_show_the_key() {
    let body = json!({"cod": 401, "message": format!("Invalid API key {KEY}. Please see the FAQ.")});
    let err = status_reply(401, body).await;
    let ToolError::Hard(message) = &err else { panic!("expected hard, got {err:?}") };
    assert!(message.contains("OPENWEATHERMAP_API_KEY") && message.contains("Invalid API key"), "{message}");
    assert!(!message.contains(KEY), "{message}");
}

/// Answers 401 quoting the query string it got, as a proxy or an API may.
struct EchoQuery;

impl wiremock::Respond for EchoQuery {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let message = format!("Invalid API key in {}", request.url.query().unwrap_or_default());
        ResponseTemplate::new(401).set_body_json(json!({"cod": 401, "message": message}))
    }
}

#[tokio::test]
async fn a_key_echoed_percent_encoded_is_redacted_too() {
    let key = "owm/LEAKCANARY+x=";
    let server = MockServer::start().await;
    Mock::given(method("GET")).respond_with(EchoQuery).mount(&server).await;
    let config = Config::builder().openweathermap_api_key(key).openweathermap_base_url(server.uri()).build().unwrap();
    let err = weather(config, "Paris").await.unwrap_err();
    let ToolError::Hard(message) = &err else { panic!("expected hard, got {err:?}") };
    assert!(message.contains("appid=[redacted]"), "the service echoed the query: {message}");
    assert!(!message.contains("LEAKCANARY"), "{message}");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_transient_and_bad_city_arguments_soft() {
    for status in [400, 429, 500, 503] {
        let err = status_reply(status, json!({"cod": status, "message": "fake fault"})).await;
        let message = match &err {
            ToolError::Soft(message) if status == 400 => message,
            ToolError::Transient { message, hint } if status != 400 => {
                assert_eq!(hint.not_performed, status == 429, "{status}: {hint:?}");
                message
            }
            other => panic!("{status}: unexpected {other:?}"),
        };
        assert!(message.contains("fake fault"), "{status}: {message}");
    }
}

#[tokio::test]
async fn timeout_is_a_transient_error_of_unknown_outcome() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(paris()).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let err = weather(config_timing_out(&server.uri(), Duration::from_millis(40)), "Paris").await.unwrap_err();
    let ToolError::Transient { message, hint } = &err else { panic!("expected transient, got {err:?}") };
    assert!(message.contains("did not answer within 40ms") && !hint.not_performed, "{err:?}");
}

#[tokio::test]
async fn connection_error_is_transient_and_keeps_the_key_out_of_the_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let err = weather(config(&format!("http://{address}")), "Paris").await.unwrap_err();
    let ToolError::Transient { message, hint } = &err else { panic!("expected transient, got {err:?}") };
    assert!(hint.not_performed, "{hint:?}");
    assert!(message.starts_with("could not connect to OpenWeatherMap"), "{message}");
    assert!(!message.contains(KEY) && !message.contains("appid"), "the URL carries the key: {message}");
}

#[tokio::test]
async fn reply_without_readings_is_a_soft_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"weather": [{"description": "fog"}]})))
        .mount(&server)
        .await;
    let err = weather(config(&server.uri()), "Paris").await.unwrap_err();
    assert!(matches!(&err, ToolError::Soft(m) if m.contains("no temperature")), "{err:?}");
}

#[tokio::test]
async fn empty_city_is_a_soft_error_and_offline_mode_refuses_the_real_api() {
    let err = weather(config("http://127.0.0.1:9"), " ").await.unwrap_err();
    assert!(matches!(&err, ToolError::Soft(m) if m.contains("city is empty")), "{err:?}");
    portia::config::set_offline(true);
    let config = Config::builder().openweathermap_api_key(KEY).build().unwrap();
    let err = weather(config, "Paris").await.unwrap_err();
    let ToolError::Hard(message) = &err else { panic!("expected hard, got {err:?}") };
    assert!(message.contains("PORTIA_OFFLINE") && !message.contains(KEY), "{message}");
}

#[test]
fn weather_describes_its_argument() {
    let spec = WeatherTool::new(KEY).spec();
    assert_eq!((spec.id.as_str(), spec.name.as_str()), ("weather_tool", "Weather Tool"));
    assert_eq!(spec.args_schema["required"], json!(["city"]));
    assert!(spec.args_schema["properties"]["city"]["description"].as_str().unwrap().contains("Paris,FR"));
}
