//! The README's walkthrough runs as written without exposing secrets.

/// `$W` holds the CA's private key: no step may serve it over HTTP (the Web Console tunnel
/// serves whatever its target serves to anyone who reaches the gateway's port).
#[test]
fn the_walkthrough_serves_no_directory_with_keys() {
    let readme = include_str!("../README.md");
    let servers: Vec<&str> = readme
        .lines()
        .filter(|l| l.contains("http.server"))
        .collect();
    assert!(!servers.is_empty(), "the Web Console step is in the README");
    for line in servers {
        let dir = line
            .split_whitespace()
            .skip_while(|w| *w != "--directory")
            .nth(1)
            .unwrap_or_else(|| panic!("no --directory (it would serve the current one): {line}"));
        assert!(
            dir != "$W" && dir != "$W/" && !dir.is_empty() && dir != ".",
            "serves the walkthrough directory with its keys: {line}"
        );
    }
}
