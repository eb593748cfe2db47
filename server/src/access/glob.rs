//! Channel patterns: `*` matches any run of characters (`:` included), everything else matches
//! itself. Matching is linear in the pattern and the name times the number of stars, with no
//! backtracking blow-up; patterns from tokens are capped in length and stars besides.

use std::fmt;

/// A compiled channel pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The pattern's literal pieces between stars: `a*b*` is `["a", "b", ""]`.
    pieces: Vec<String>,
    text: String,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// Empty pattern.
    #[error("a channel pattern must not be empty")]
    Empty,
    /// Longer than allowed.
    #[error("the channel pattern is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More stars than allowed.
    #[error("the channel pattern has {stars} `*`; at most {max} are allowed")]
    TooManyStars {
        /// How many it has.
        stars: usize,
        /// The limit.
        max: usize,
    },
}

/// Longest pattern accepted.
pub const MAX_PATTERN_LEN: usize = 512;
/// Most stars in one pattern.
pub const MAX_STARS: usize = 8;

impl Glob {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// Empty, longer than [`MAX_PATTERN_LEN`] bytes, or more than [`MAX_STARS`] stars.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(GlobError::TooLong { len: pattern.len(), max: MAX_PATTERN_LEN });
        }
        let stars = pattern.matches('*').count();
        if stars > MAX_STARS {
            return Err(GlobError::TooManyStars { stars, max: MAX_STARS });
        }
        Ok(Glob { pieces: pattern.split('*').map(str::to_owned).collect(), text: pattern.to_owned() })
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("split yields at least one piece");
        let Some(mut tail) = name.strip_prefix(first.as_str()) else { return false };
        let Some((last, middle)) = rest.split_last() else { return tail.is_empty() };
        // Each middle piece takes its leftmost occurrence: the earliest match leaves the most
        // room for what follows, so no other choice can succeed where this one fails.
        for piece in middle {
            match tail.find(piece.as_str()) {
                Some(at) => tail = &tail[at + piece.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).unwrap().matches(name)
    }

    #[test]
    fn stars_match_any_run() {
        assert!(matches("chat", "chat"));
        assert!(!matches("chat", "chat2"));
        assert!(matches("*", "anything:at:all"));
        assert!(matches("*", ""));
        assert!(matches("chat:*", "chat:"));
        assert!(matches("chat:*", "chat:room:1"));
        assert!(!matches("chat:*", "chat"));
        assert!(matches("user:*:inbox", "user:ann:inbox"));
        assert!(!matches("user:*:inbox", "user:ann:outbox"));
        assert!(matches("*a*b*", "xxaxxbxx"));
        assert!(!matches("*a*b", "ba"));
        assert!(matches("a*a", "aa"));
        assert!(!matches("a*a", "a"), "the end piece may not reuse the start");
        assert!(matches("**", "x"));
    }

    #[test]
    fn refuses_expensive_patterns() {
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
        assert!(matches!(Glob::new(&"a".repeat(MAX_PATTERN_LEN + 1)), Err(GlobError::TooLong { .. })));
        assert!(matches!(Glob::new(&"*".repeat(MAX_STARS + 1)), Err(GlobError::TooManyStars { .. })));
        // At the caps, matching a long hostile name stays quick (no backtracking).
        let glob = Glob::new(&"*a".repeat(MAX_STARS)).unwrap();
        assert!(!glob.matches(&"a".repeat(7)));
        assert!(glob.matches(&"ba".repeat(100)));
    }
}
