//! The settings tables of `docs/reference.md` say what the binaries take: every
//! setting any command reads (its environment variable, from the command-line
//! definitions `--help` prints) is in a table, every table row names one, and where
//! a setting has a default, its row states that default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::CommandFactory;

/// Every (variable, default) of `command` and its subcommands.
fn settings(command: &clap::Command, out: &mut BTreeMap<String, Option<String>>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>();
            let default = (!default.is_empty()).then(|| default.join(","));
            out.insert(env.to_string_lossy().into_owned(), default);
        }
    }
    for sub in command.get_subcommands() {
        settings(sub, out);
    }
}

/// Every (variable, default) a binary's `--help` prints (the dev broker's command
/// line is its binary's own).
fn from_help(name: &str, out: &mut BTreeMap<String, Option<String>>) {
    let help = std::process::Command::new(viewpipe_tests::bin(name))
        .arg("--help")
        .output()
        .expect("--help");
    let text = String::from_utf8_lossy(&help.stdout);
    for option in text.split("\n\n") {
        let Some(env) = option
            .split("[env: ")
            .nth(1)
            .and_then(|e| e.split(['=', ']']).next())
        else {
            continue;
        };
        let default = option
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .map(str::to_owned);
        out.insert(env.to_owned(), default);
    }
}

/// The rows of the tables under `## Settings`: variable → its default cell (a row
/// may name several variables: `` `A`, `B` ``; the column is the one headed
/// "default"; a variable in several tables keeps its first row).
fn documented(reference: &str) -> BTreeMap<String, String> {
    let start = reference.find("\n## Settings").expect("a Settings section");
    let section = &reference[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut rows = BTreeMap::new();
    let mut default_column = 1;
    for line in section[..end].lines() {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        if line.starts_with("| variable |") {
            default_column = cells.iter().position(|c| *c == "default").unwrap_or(1);
            continue;
        }
        if !line.starts_with("| `") || cells.len() <= default_column {
            continue;
        }
        let settings = cells[0]
            .split(", ")
            .map(|n| n.trim_matches('`'))
            .filter(|n| {
                n.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            });
        for name in settings {
            rows.entry(name.to_owned())
                .or_insert_with(|| cells[default_column].to_owned());
        }
    }
    rows
}

#[test]
fn the_reference_lists_every_setting_with_its_default() {
    let mut read = BTreeMap::new();
    settings(&ingest::settings::Cli::command(), &mut read);
    settings(&aggregator::settings::Cli::command(), &mut read);
    from_help("viewpipe-devbroker", &mut read);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
    let reference = std::fs::read_to_string(&path).expect("docs/reference.md");
    let rows = documented(&reference);
    let missing: Vec<&String> = read.keys().filter(|k| !rows.contains_key(*k)).collect();
    let unknown: BTreeSet<&String> = rows.keys().filter(|k| !read.contains_key(*k)).collect();
    let wrong: Vec<String> = read
        .iter()
        .filter_map(|(name, default)| {
            let default = default.as_ref()?;
            let cell = rows.get(name)?;
            let stated = match default.as_str() {
                "" => cell == "empty",
                default => cell.contains(&format!("`{default}`")),
            };
            (!stated).then(|| format!("{name}: default `{default}`, documented {cell:?}"))
        })
        .collect();
    println!(
        "{} settings read by the binaries, {} rows in docs/reference.md",
        read.len(),
        rows.len()
    );
    assert!(
        missing.is_empty(),
        "settings not in docs/reference.md: {missing:?}"
    );
    assert!(unknown.is_empty(), "rows no binary reads: {unknown:?}");
    assert!(wrong.is_empty(), "defaults that differ: {wrong:#?}");
}
