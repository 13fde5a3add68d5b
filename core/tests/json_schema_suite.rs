//! The official JSON Schema Test Suite (draft 2020-12) run through `BodySchema`.
//!
//! The case files in `tests/data/json-schema-suite/` are copied unchanged from the suite as
//! vendored in the PyPI sdist `jsonschema-4.26.0.tar.gz` (directory `json/tests/draft2020-12/`),
//! with the suite's LICENSE beside them. See the README there.
//!
//! Every group whose schema uses only the keywords `BodySchema` supports is run; the rest are
//! skipped and counted. A supported group must compile, and every one of its cases must give the
//! suite's verdict, except for the deviations listed below with their reasons (the list is
//! checked to be exact, so a fixed deviation or a new one fails the test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::body::schema::BodySchema;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const SUPPORTED: &[&str] = &[
    "$schema",
    "$comment",
    "title",
    "description",
    "examples",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "minLength",
    "maxLength",
    "pattern",
    "enum",
    "minimum",
    "maximum",
    "items",
    "minItems",
    "maxItems",
    "format",
];

/// Groups whose schema uses only supported keywords but that `BodySchema` refuses at config
/// time, on purpose: (file, group description).
const REFUSED_AT_CONFIG: &[(&str, &str)] = &[
    // regex-lite has no Unicode property classes; the pattern is refused, never misread.
    (
        "optional/ecmascript-regex.json",
        "patterns always use unicode semantics with pattern",
    ),
    (
        "optional/ecmascript-regex.json",
        "pattern with non-ASCII digits",
    ),
    // regex-lite has no `\cX` control escapes.
    (
        "optional/ecmascript-regex.json",
        "ECMA 262 regex escapes control codes with \\c and upper letter",
    ),
    (
        "optional/ecmascript-regex.json",
        "ECMA 262 regex escapes control codes with \\c and lower letter",
    ),
];

/// Cases that give the opposite verdict, on purpose: (file, group, case description).
const DEVIATIONS: &[(&str, &str, &str)] = &[
    // 2020-12 makes `format` an annotation by default; `body_schema` asserts `format: email`
    // (the spec lists it as a check), so this invalid address is refused.
    (
        "format.json",
        "email format",
        "invalid email string is only an annotation by default",
    ),
];

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/json-schema-suite")
}

fn case_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            case_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// Whether `schema` uses only keywords (and formats) that `BodySchema` implements. Property
/// names under `properties` are names, not keywords.
fn uses_only_supported(schema: &Value) -> bool {
    match schema {
        Value::Bool(_) => true,
        Value::Object(keywords) => keywords.iter().all(|(keyword, value)| {
            SUPPORTED.contains(&keyword.as_str())
                && match keyword.as_str() {
                    "properties" => value
                        .as_object()
                        .is_some_and(|p| p.values().all(uses_only_supported)),
                    "items" | "additionalProperties" => uses_only_supported(value),
                    "format" => value == "email",
                    _ => true,
                }
        }),
        _ => false,
    }
}

#[test]
fn official_suite_cases_for_supported_keywords() {
    let root = suite_dir();
    let mut files = Vec::new();
    case_files(&root, &mut files);
    assert!(files.len() >= 19, "suite files missing: {files:?}");

    let mut cases_run = 0usize;
    let mut cases_skipped = 0usize;
    let mut groups_run = 0usize;
    let mut groups_skipped = 0usize;
    let mut cases_refused = 0usize;
    let mut failures = Vec::new();
    let mut refused_seen = BTreeSet::new();
    let mut deviations_seen = BTreeSet::new();

    for file in &files {
        let name = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let groups: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for group in groups.as_array().unwrap() {
            let description = group["description"].as_str().unwrap();
            let schema = &group["schema"];
            let tests = group["tests"].as_array().unwrap();
            if !uses_only_supported(schema) {
                groups_skipped += 1;
                cases_skipped += tests.len();
                continue;
            }
            let compiled = match BodySchema::compile(schema, "body_schema") {
                Ok(compiled) => compiled,
                Err(errors) => {
                    if REFUSED_AT_CONFIG.contains(&(name.as_str(), description)) {
                        refused_seen.insert((name.clone(), description.to_string()));
                    } else {
                        failures.push(format!("{name} / {description}: refused: {errors:?}"));
                    }
                    cases_refused += tests.len();
                    continue;
                }
            };
            groups_run += 1;
            for case in tests {
                let case_description = case["description"].as_str().unwrap();
                let expected_valid = case["valid"].as_bool().unwrap();
                let result = compiled.validate_value(&case["data"]);
                cases_run += 1;
                if result.is_ok() != expected_valid {
                    let key = (name.as_str(), description, case_description);
                    if DEVIATIONS.contains(&key) {
                        deviations_seen.insert(format!("{key:?}"));
                    } else {
                        failures.push(format!(
                            "{name} / {description} / {case_description}: expected valid={expected_valid}, got {result:?}"
                        ));
                    }
                }
            }
        }
    }

    println!(
        "JSON Schema Test Suite: {cases_run} cases run in {groups_run} groups ({} known \
         deviations); {cases_skipped} cases in {groups_skipped} groups skipped for unsupported \
         keywords; {cases_refused} cases in {} groups whose schema is refused at config",
        deviations_seen.len(),
        refused_seen.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        refused_seen.len(),
        REFUSED_AT_CONFIG.len(),
        "stale REFUSED_AT_CONFIG entries: seen {refused_seen:?}"
    );
    assert_eq!(
        deviations_seen.len(),
        DEVIATIONS.len(),
        "stale DEVIATIONS entries: seen {deviations_seen:?}"
    );
    assert!(cases_run >= 300, "only {cases_run} cases ran");
}
