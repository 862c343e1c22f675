//! Macros shared by every layer of the crate.

/// Declares a config enum that parses case-insensitively from its documented names
/// (`-` and `_` are interchangeable) and serializes as the first name.
///
/// Used by the setting enums of every layer (`StorageKind`, `LlmProvider`,
/// `LogLevel`); every path it expands to is absolute, so it works in any module.
macro_rules! config_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => [$main:literal $(, $alias:literal)*]),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The documented name of this value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $main),+ }
            }

            fn names() -> ::std::string::String {
                [$($main),+].join(", ")
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::string::String;

            fn from_str(text: &str) -> ::std::result::Result<Self, ::std::string::String> {
                let wanted = text.trim().to_ascii_lowercase().replace('_', "-");
                $(if wanted == $main.replace('_', "-") $(|| wanted == $alias)* {
                    return Ok(Self::$variant);
                })+
                Err(format!("unknown value {text:?}; valid values are: {}", Self::names()))
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> ::std::result::Result<Self, D::Error> {
                let text = <::std::string::String as ::serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

pub(crate) use config_enum;
