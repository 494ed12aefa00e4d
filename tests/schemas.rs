//! `schemas/*.json` must match the Rust types. To refresh them after a change
//! of the types: `LBAAS_UPDATE_SCHEMAS=1 cargo test --test schemas`.

use std::path::Path;

#[test]
fn schemas_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let update = std::env::var_os("LBAAS_UPDATE_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    for (name, schema) in lbaas::model::schemas::all() {
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        let path = dir.join(name);
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drifted.push(name);
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted from the types: {drifted:?}; run `LBAAS_UPDATE_SCHEMAS=1 cargo test --test schemas`"
    );
}

#[test]
fn schemas_dir_has_no_stale_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let known: Vec<&str> = lbaas::model::schemas::all()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            known.contains(&name.as_str()),
            "schemas/{name} is not generated from any type"
        );
    }
}
