//! Words that spell enum variants in the configuration file and on the command line: the
//! macro that gives such an enum `as_str`, `Display` and a case-insensitive `FromStr`, and
//! the error of a word that is none of them.
//!
//! A leaf module, so that both `config` and the subsystems whose settings it holds
//! (`health`) can spell their words without importing each other.

/// A value given as text that is not one of the accepted words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseValueError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl ParseValueError {
    /// `value` is not a valid `what`; `expected` lists the accepted words.
    pub(crate) fn new(what: &'static str, value: &str, expected: &'static str) -> Self {
        ParseValueError {
            what,
            value: value.to_owned(),
            expected,
        }
    }
}

/// Implements `as_str`, `Display` and case-insensitive `FromStr` for an enum of
/// configuration words, so each variant's spelling (and its accepted aliases) is written once.
macro_rules! config_words {
    ($ty:ident, $what:literal, $expected:literal, { $($variant:ident => $word:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl $ty {
            /// The configuration spelling.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word,)+
                }
            }
        }

        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = $crate::spelling::ParseValueError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_lowercase().as_str() {
                    $($word $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err($crate::spelling::ParseValueError::new($what, s, $expected)),
                }
            }
        }
    };
}

pub(crate) use config_words;
