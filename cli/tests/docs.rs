//! The user docs against the binary: every command has a section in docs/CLI.md, every
//! option a section's synopsis names is in the command's `--help`, every option the
//! binary has is in its section; the README says how to install and test.

mod common;

use std::collections::BTreeMap;

use common::{stdout, Env};

const CLI_MD: &str = include_str!("../../docs/CLI.md");
const README: &str = include_str!("../../README.md");
const CI: &str = include_str!("../../.ci/run");
const MIGRATION: &str = include_str!("../../docs/MIGRATION.md");

/// CLI.md's sections by verb (`""` for bare `xcache`): synopsis line, then body.
fn sections() -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for part in CLI_MD.split("\n## `xcache").skip(1) {
        let (heading, body) = part.split_once('\n').unwrap();
        let synopsis = heading.trim_end_matches('`').to_string();
        let verb = synopsis.split_whitespace().next().unwrap_or("").to_string();
        out.insert(
            verb,
            (synopsis, body.split("\n## ").next().unwrap().to_string()),
        );
    }
    out
}

/// The names listed under "Commands:" in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.split("\nCommands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| *n != "help")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Long options (`--name`) in a text.
fn long_options(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_command_has_a_section_and_their_options_agree() {
    let env = Env::new();
    let sections = sections();
    let top = stdout(&env.run(&["--help"]));
    let verbs = subcommands(&top);
    assert!(
        verbs.len() >= 17 && verbs.contains(&"unlock".to_string()),
        "{verbs:?}"
    );
    let mut checked = 0;
    for verb in verbs {
        let (synopsis, body) = sections
            .get(&verb)
            .unwrap_or_else(|| panic!("docs/CLI.md has no section for `xcache {verb}`"));
        // The verb's help, and its subcommands' (basecompiledir purge, config set).
        let mut help = stdout(&env.run(&[&verb, "--help"]));
        for sub in subcommands(&help.clone()) {
            help.push_str(&stdout(&env.run(&[&verb, &sub, "--help"])));
        }
        for opt in long_options(synopsis) {
            assert!(
                help.contains(&opt),
                "docs/CLI.md shows `{opt}` for `xcache {verb}`, which its --help lacks:\n{help}"
            );
        }
        for opt in long_options(&help) {
            if ["--help", "--version", "--dir"].contains(&opt.as_str()) {
                continue;
            }
            assert!(
                synopsis.contains(&opt) || body.contains(&opt),
                "`xcache {verb}` has `{opt}`, which its section of docs/CLI.md does not mention"
            );
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} options checked");
}

#[test]
fn the_readme_says_how_to_install_and_test() {
    assert!(README.contains("cargo install --path cli"));
    let first_block = README.split("```").nth(1).unwrap();
    assert!(
        !first_block.contains(" -q "),
        "the first build must show its progress: {first_block}"
    );
    assert!(first_block.contains("scripts/test.sh"), "{first_block}");
    assert!(
        CI.lines().any(|l| l.trim() == "scripts/test.sh"),
        ".ci/run runs the README's test command"
    );
    // The Python package: how to install it, and CI installs what its tests need.
    assert!(
        first_block.contains("pip install ./python"),
        "{first_block}"
    );
    for package in [
        "maturin", "numpy", "pytest", "pytensor", "triton", "./python",
    ] {
        assert!(
            CI.lines()
                .any(|l| l.contains("pip\" install") && l.contains(package)),
            ".ci/run installs {package}"
        );
    }
    for verb in [
        "clear",
        "purge",
        "cleanup",
        "unlock",
        "list",
        "basecompiledir",
        "-M",
    ] {
        assert!(MIGRATION.contains(verb), "docs/MIGRATION.md lacks {verb}");
    }
}
