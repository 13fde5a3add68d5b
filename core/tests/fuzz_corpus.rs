//! Replays every file of every fuzz corpus (`fuzz/corpus/<target>/`) through its target body in
//! `api_guard_core::fuzz_targets`: `make test` runs each fuzz target over its corpus on the stable
//! toolchain, without libFuzzer. A file that makes a target panic (a crash, or a broken
//! property) fails the test, which names the file; all failures are listed, not only the first.
//!
//! `FUZZ_CORPUS_ROOT=dir` replays `dir/<target>/` instead (e.g. `fuzz/seeds` or
//! `fuzz/artifacts`).
//!
//! `fuzz/regressions/<target>/<finding>-*` are the inputs of findings in the library: each must
//! fail its target (with every check on) exactly while its finding is listed in
//! `fuzz_targets::OPEN_FINDINGS`, and pass for good once it is fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use api_guard_core::fuzz_targets::{self, Open, OPEN_FINDINGS};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 8] = [
    ("config_load", fuzz_targets::config_load),
    ("jwt_verify", fuzz_targets::jwt_verify),
    ("route_match", fuzz_targets::route_match),
    ("path_differential", fuzz_targets::path_differential),
    ("api_key_header", fuzz_targets::api_key_header),
    ("webhook_signature", fuzz_targets::webhook_signature),
    ("body_schema", fuzz_targets::body_schema),
    ("header_pairs", fuzz_targets::header_pairs),
];

fn corpus_root() -> (PathBuf, bool) {
    match std::env::var_os("FUZZ_CORPUS_ROOT") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"),
            false,
        ),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` over every file of `dir`; returns the number of files and the failures.
fn replay(target: Target, dir: &Path) -> (usize, Vec<String>) {
    let files = files(dir);
    let mut failures = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if let Err(e) = panic::catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", file.display()));
        }
    }
    (files.len(), failures)
}

#[test]
fn every_corpus_file_passes_its_target() {
    let (root, custom) = corpus_root();
    // The default hook prints every caught panic; the failures are listed once at the end.
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for (name, target) in TARGETS {
        let dir = root.join(name);
        if custom && !dir.is_dir() {
            continue;
        }
        let (count, mut failed) = replay(target, &dir);
        if !custom {
            assert!(count > 0, "fuzz/corpus/{name} is empty");
        }
        counts.push(format!("{name}: {count}"));
        failures.append(&mut failed);
    }
    panic::set_hook(hook);
    println!("replayed {}", counts.join(", "));
    assert!(
        failures.is_empty(),
        "{} corpus file(s) fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every target has a corpus and a libFuzzer entry point that calls it.
#[test]
fn every_target_has_a_corpus_and_an_entry_point() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, _) in TARGETS {
        let entry = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            entry.contains(&format!("api_guard_core::fuzz_targets::{name}(data)")),
            "fuzz/fuzz_targets/{name}.rs does not call its library body"
        );
        assert!(
            fuzz.join("corpus").join(name).is_dir(),
            "no corpus for {name}"
        );
    }
}

/// The open findings are exactly those whose regression inputs still fail.
#[test]
fn open_findings_list_is_exact() {
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for (name, target) in TARGETS {
        let dir = regressions.join(name);
        if !dir.is_dir() {
            continue;
        }
        for file in files(&dir) {
            let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
            let Some(finding) = Open::ALL
                .into_iter()
                .find(|f| file_name.starts_with(&format!("{}-", f.name())))
            else {
                problems.push(format!("{}: names no finding", file.display()));
                continue;
            };
            seen.push(finding);
            let data = std::fs::read(&file).unwrap();
            let fails = fuzz_targets::strict(|| {
                panic::catch_unwind(AssertUnwindSafe(|| target(&data))).is_err()
            });
            let open = OPEN_FINDINGS.contains(&finding);
            if open && !fails {
                problems.push(format!(
                    "{}: passes: {} looks fixed; remove it from OPEN_FINDINGS",
                    file.display(),
                    finding.name()
                ));
            }
            if !open && fails {
                problems.push(format!(
                    "{}: fails, but {} is not an open finding (regression?)",
                    file.display(),
                    finding.name()
                ));
            }
        }
    }
    panic::set_hook(hook);
    for finding in OPEN_FINDINGS {
        if !seen.contains(finding) {
            problems.push(format!(
                "open finding {} has no regression input",
                finding.name()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
