//! `docs/openapi.json` is the document the code generates; `OUTPOST_WRITE_OPENAPI=1 cargo
//! test -p outpost-server --test it openapi` rewrites it after a change of the API.

#[test]
fn the_checked_in_openapi_document_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let doc = outpost_server::api::openapi();
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("OUTPOST_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == text,
        "{} is stale: run OUTPOST_WRITE_OPENAPI=1 cargo test -p outpost-server --test it openapi",
        path.display()
    );

    // What it says holds: OpenAPI 3.1, every path's parameters named in the path, every
    // body schema a reference that resolves.
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 25, "{}", paths.len());
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["in"] == "path" {
                    let name = p["name"].as_str().unwrap();
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: {name}"
                    );
                }
            }
            if let Some(r) =
                op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
            {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(schemas.contains_key(name), "{method} {path}: {r}");
            }
        }
    }
    let group = &schemas["NewGroup"];
    assert_eq!(
        group["additionalProperties"], false,
        "unknown fields are refused: {group}"
    );
    let devices = &paths["/api/v1/devices"]["get"]["parameters"];
    assert!(
        devices
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "online"),
        "{devices}"
    );
}
