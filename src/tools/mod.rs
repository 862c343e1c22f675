//! The built-in tools.
//!
//! | id | tool | needs |
//! |---|---|---|
//! | `calculator_tool` | [`CalculatorTool`]: arithmetic in words or symbols | - |
//! | `search_tool` | [`SearchTool`]: web search through Tavily | `TAVILY_API_KEY` |
//! | `weather_tool` | [`WeatherTool`]: current weather through OpenWeatherMap | `OPENWEATHERMAP_API_KEY` |
//! | `file_reader_tool` | [`FileReaderTool`]: reads text, JSON, CSV and spreadsheets | `files_root` |
//! | `file_writer_tool` | [`FileWriterTool`]: writes text files | `files_root` |
//!
//! Tools read API keys, base URLs and the files root from the
//! [`ToolRunContext`](crate::tool::ToolRunContext)'s config when they run, so a
//! tool can be built before the config is known.

mod calculator;
mod files;
mod root;
mod search;
mod weather;
mod web;

use serde_json::Value;

pub use calculator::{CalculatorArgs, CalculatorTool};
pub use files::{FileReaderArgs, FileReaderTool, FileWriterArgs, FileWriterTool};
pub use search::{SearchArgs, SearchTool};
pub use weather::{WeatherArgs, WeatherTool};

/// A number as JSON, integral values without a fraction (`11`, not `11.0`) as long
/// as they are exact; NaN and infinities, which JSON cannot hold, become null.
fn json_number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: beyond it not every integer is representable.
    if x.fract() == 0.0 && x.abs() < EXACT {
        // `as` is exact here: the value is integral and within i64's range.
        #[allow(clippy::cast_possible_truncation)]
        return Value::from(x as i64);
    }
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_drop_exact_fractions_only() {
        assert_eq!(json_number(11.0), Value::from(11));
        assert_eq!(json_number(-0.0), Value::from(0));
        assert_eq!(json_number(2.5), Value::from(2.5));
        assert_eq!(json_number(1e300), Value::from(1e300));
        assert_eq!(json_number(f64::NAN), Value::Null);
    }
}
