//! One line for an error and its causes: `outer: inner: …`, each cause said once.
//!
//! Libraries that put their source into their own message as well as returning it as the
//! source (sqlx, SeaORM, reqwest at times) would otherwise have it printed twice.

use std::error::Error;

/// `e` and its sources on one line, skipping a cause whose text the line already ends with.
pub fn causes(e: &dyn Error) -> String {
    let mut text = String::new();
    push(&mut text, &e.to_string());
    let mut source = e.source();
    while let Some(cause) = source {
        push(&mut text, &cause.to_string());
        source = cause.source();
    }
    text
}

fn push(text: &mut String, part: &str) {
    if part.is_empty() || text.ends_with(part) {
        return;
    }
    if !text.is_empty() {
        text.push_str(": ");
    }
    text.push_str(part);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("Connection Error: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to the database")]
    struct Outer(#[source] Repeats);

    #[test]
    fn each_cause_is_said_once() {
        let e = Outer(Repeats(std::io::Error::other("cannot be parsed")));
        assert_eq!(
            causes(&e),
            "cannot connect to the database: Connection Error: cannot be parsed"
        );
        let plain = Outer(Repeats(std::io::Error::other("refused")));
        assert_eq!(causes(&plain.0), "Connection Error: refused");
    }
}
