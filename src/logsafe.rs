//! Text from clients and tokens in log lines: a user id is whatever a
//! backend signed, and one with a newline would start a forged line in the
//! text log. [`Escaped`] writes control characters as escapes (`\n`,
//! `\u{1b}`), and everything else as it is.

use std::fmt;

/// Displays `0` with its control characters escaped.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(Escaped("42").to_string(), "42");
        assert_eq!(
            Escaped("a\nb\r\u{1b}[31m").to_string(),
            "a\\nb\\r\\u{1b}[31m"
        );
        assert_eq!(Escaped("ünï").to_string(), "ünï");
    }
}
