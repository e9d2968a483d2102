//! Printing answers: objects, tables and explanations, or the JSON as it came.

use super::*;

/// What a command prints: the rows of a list under `key` as a table with `columns`, or an
/// object as `key: value` lines.
pub(crate) enum Show {
    Table(&'static str, &'static [&'static str]),
    Object,
    Text,
}

pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub(crate) fn print(value: &Value, show: Show, as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    match show {
        Show::Text => match value {
            Value::String(s) => print!("{s}"),
            Value::Null => {}
            v => println!("{v}"),
        },
        Show::Object => {
            if let Value::Object(m) = value {
                for (k, v) in m {
                    match v {
                        Value::Object(_) | Value::Array(_) if !v.to_string().is_empty() => {
                            println!("{k}: {v}")
                        }
                        _ => println!("{k}: {}", cell(v)),
                    }
                }
            }
        }
        Show::Table(key, columns) => {
            let rows: Vec<Vec<String>> = value[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
                        .collect()
                })
                .unwrap_or_default();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    rows.iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                let s: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", s.join("  ").trim_end());
            };
            line(columns.iter().map(|c| c.to_uppercase()).collect());
            for r in rows {
                line(r);
            }
        }
    }
}

/// `source` of an explanation in words: `policy "p" of group "g" (locked)`.
pub(crate) fn source_words(s: &Value) -> String {
    let q = |k: &str| s[k].as_str().unwrap_or("?").to_string();
    match s["kind"].as_str() {
        Some("policy") => format!(
            "policy {:?} of group {:?}{}",
            q("policy"),
            q("group"),
            if s["locked"] == true { " (locked)" } else { "" }
        ),
        Some("profile") => format!(
            "profile {:?} (priority {}) of policy {:?} of group {:?}",
            q("profile"),
            s["rank"],
            q("policy"),
            q("group")
        ),
        Some("default") => "schema default".into(),
        Some("local") => "local setting".into(),
        Some("merged") => "merged list".into(),
        _ => s.to_string(),
    }
}

/// Explanations as an administrator reads them: each value, its source, and every candidate.
pub(crate) fn print_explanations(v: &Value) {
    for e in v["settings"].as_array().into_iter().flatten() {
        println!(
            "{}/{} = {}{}",
            cell(&e["app"]),
            cell(&e["path"]),
            e["value"],
            if e["locked"] == true { " (locked)" } else { "" }
        );
        println!("  from: {}", source_words(&e["source"]));
        for c in e["candidates"].as_array().into_iter().flatten() {
            let why = match c["reason"].as_str() {
                None => String::new(),
                Some(r) => {
                    let by = ["by", "winner"]
                        .iter()
                        .find(|k| c[**k].is_object())
                        .map(|k| format!(" by {}", source_words(&c[*k])))
                        .unwrap_or_default();
                    format!(": {r}{by}")
                }
            };
            println!(
                "  [{}] {} = {}{why}",
                cell(&c["outcome"]),
                source_words(&c["source"]),
                c["value"]
            );
        }
    }
}
