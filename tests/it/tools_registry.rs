//! The ready-made registries of built-in tools.

use portia::tool::ToolRegistry;
use portia::tools::{default_tool_registry, example_tool_registry, open_source_tool_registry};
use portia::{Config, InMemoryToolRegistry};

fn ids(registry: &InMemoryToolRegistry) -> Vec<String> {
    registry.get_tools().iter().map(|t| t.spec().id).collect()
}

#[test]
fn example_registry_holds_calculator_weather_and_search() {
    assert_eq!(ids(&example_tool_registry(&Config::default())), ["calculator_tool", "weather_tool", "search_tool"]);
}

#[test]
fn open_source_registry_holds_all_six_tools() {
    assert_eq!(
        ids(&open_source_tool_registry(&Config::default())),
        ["calculator_tool", "weather_tool", "search_tool", "llm_tool", "file_reader_tool", "file_writer_tool"]
    );
}

#[test]
fn default_registry_adds_search_and_weather_only_with_their_keys() {
    let base = ["calculator_tool", "llm_tool", "file_writer_tool", "file_reader_tool"];
    assert_eq!(ids(&default_tool_registry(&Config::default())), base);

    let tavily = Config::builder().tavily_api_key("tvly-x").build().unwrap();
    assert_eq!(ids(&default_tool_registry(&tavily)), [&base[..], &["search_tool"]].concat());

    let weather = Config::builder().openweathermap_api_key("owm-x").build().unwrap();
    assert_eq!(ids(&default_tool_registry(&weather)), [&base[..], &["weather_tool"]].concat());

    let both = Config::builder().tavily_api_key("tvly-x").openweathermap_api_key("owm-x").build().unwrap();
    assert_eq!(ids(&default_tool_registry(&both)), [&base[..], &["search_tool", "weather_tool"]].concat());

    let blank = Config::builder().tavily_api_key(" ").openweathermap_api_key("").build().unwrap();
    assert_eq!(ids(&default_tool_registry(&blank)), base, "a blank key is no key");
}

#[test]
fn every_tool_has_a_short_description_and_a_described_object_schema() {
    for tool in open_source_tool_registry(&Config::default()).get_tools() {
        let spec = tool.spec();
        let id = &spec.id;
        assert!(!spec.name.is_empty(), "{id}");
        let definition = spec.definition();
        assert!(definition.description.len() <= 250, "{id}: keep descriptions short: {}", definition.description);
        assert!(!spec.output_description.is_empty(), "{id}");
        let schema = &definition.parameters;
        assert_eq!(schema["type"], "object", "{id}");
        for (name, property) in schema["properties"].as_object().unwrap() {
            assert!(property["description"].as_str().is_some_and(|d| !d.is_empty()), "{id}.{name} has no description");
        }
        assert!(!spec.summarize, "{id}");
    }
}

#[test]
fn tools_are_found_by_id_and_by_display_name() {
    let registry = open_source_tool_registry(&Config::default());
    assert_eq!(registry.get_tool("search_tool").unwrap().spec().name, "Search Tool");
    assert_eq!(registry.get_tool("File Reader Tool").unwrap().spec().id, "file_reader_tool");
    assert!(registry.get_tool("portia:tavily::search").is_err());
}
