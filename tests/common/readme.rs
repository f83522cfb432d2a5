//! The README's marked blocks (`<!-- recipe: NAME -->`), which tests run as
//! printed: tests/readme.rs for the recipes, tests/browser.rs for the
//! snippets that need a browser.

/// README.md, as the tests were built with it.
pub const README_TEXT: &str = include_str!("../../README.md");

/// The body of the block of README.md marked `<!-- recipe: NAME -->` (the
/// line right before its fence); panics unless there is exactly one.
pub fn readme_recipe(name: &str) -> String {
    let marker = format!("<!-- recipe: {name} -->");
    let lines: Vec<&str> = README_TEXT.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == marker)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "README.md must mark exactly one block with the line `{marker}` right before its \
         ``` fence, found {}: tests/readme.rs runs that block as printed",
        at.len()
    );
    let fence = lines.get(at[0] + 1).copied().unwrap_or("");
    assert!(
        fence.starts_with("```"),
        "README.md line {}: `{marker}` must be followed directly by a ``` fence, found {fence:?}",
        at[0] + 2
    );
    let body: Vec<&str> = lines[at[0] + 2..]
        .iter()
        .take_while(|l| l.trim_end() != "```")
        .copied()
        .collect();
    assert!(
        at[0] + 2 + body.len() < lines.len(),
        "README.md: the block marked `{marker}` has no closing ``` fence"
    );
    assert!(
        !body.is_empty(),
        "README.md: the block marked `{marker}` is empty"
    );
    let mut text = body.join("\n");
    text.push('\n');
    text
}

/// The host the README's client snippets connect to; a test points it at
/// its own gateway, the only change it makes to a snippet.
pub const EXAMPLE_HOST: &str = "ws.example.com";

/// `snippet` with its one `https://` or `wss://` [`EXAMPLE_HOST`] replaced
/// by `http://` or `ws://` `host` (no TLS on loopback).
pub fn pointed_at(snippet: &str, host: &str) -> String {
    assert_eq!(
        snippet.matches(EXAMPLE_HOST).count(),
        1,
        "the snippet should name {EXAMPLE_HOST} once: {snippet}"
    );
    snippet
        .replace(
            &format!("https://{EXAMPLE_HOST}"),
            &format!("http://{host}"),
        )
        .replace(&format!("wss://{EXAMPLE_HOST}"), &format!("ws://{host}"))
}
