//! The user docs against the binary: every command has a section in docs/CLI.md, every
//! option a section's synopsis names is in the command's `--help`, every option the
//! binary has is in its section; the README says how to install and test; and every
//! example of README.md and docs/*.md runs as written (below: the console sessions and
//! the C templates; python/tests/test_docs.py runs the Python snippets,
//! capi/tests/c_abi.rs the C programs).

mod common;
#[path = "common/docblocks.rs"]
mod docblocks;

use std::collections::BTreeMap;

use common::{stdout, Env};

const CLI_MD: &str = include_str!("../../docs/CLI.md");
const README: &str = include_str!("../../README.md");
const CI: &str = include_str!("../../.ci/run");
const TEST_SH: &str = include_str!("../../scripts/test.sh");
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
    // The top-level options (ccache's -s, -z, -M, -C) have their section too.
    for opt in long_options(&top) {
        if ["--help", "--version", "--dir"].contains(&opt.as_str()) {
            continue;
        }
        assert!(
            CLI_MD.contains(&format!("`{opt}")) && MIGRATION.contains(&opt),
            "`xcache {opt}` is in neither docs/CLI.md nor docs/MIGRATION.md"
        );
    }
}

#[test]
fn the_readme_says_how_to_install_and_test() {
    assert!(README.contains("cargo install --locked --path cli"));
    assert!(
        !README.contains("cargo install --path"),
        "every install line says --locked"
    );
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
    // The venv the tests need, made by one documented command, which CI runs too.
    assert!(
        first_block.contains("scripts/test.sh --setup"),
        "{first_block}"
    );
    assert!(
        CI.lines().any(|l| l.trim() == "scripts/test.sh --setup"),
        ".ci/run makes the venv as the README says"
    );
    for package in [
        "maturin",
        "numpy",
        "pytest",
        "pytensor",
        "numba",
        "triton",
        "nvidia-cuda-nvcc",
        "nvidia-cuda-nvrtc",
        "./python",
    ] {
        assert!(
            TEST_SH.contains(package),
            "scripts/test.sh --setup installs {package}"
        );
    }
    assert!(
        README.contains("site-packages/nvidia/cu13/bin"),
        "the README says where the nvcc wheel's bin is"
    );
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

// ---------------------------------------------------------------------------------
// Every console example of README.md and docs/*.md, run against the binary.
//
// Each ```console block runs in a fresh directory, with `xcache` (this build) first on
// PATH, HOME and a work directory of its own, and the block's `doctest` comment
// (cli/tests/common/docblocks.rs: skip, needs, cwd, env, let, setup) applied; its
// setup may call the helpers of cli/tests/common/doc_fixtures.sh. Each `$ ` line is
// run by bash, stdout and stderr together, and what it prints is compared with the
// lines under it (snapbox), after both sides are normalised:
//
// - this machine is mapped onto the docs' reference machine (paths: the work directory
//   is /tmp/xd, HOME is /home/me; the platform string Linux-6.18-x86_64-glibc2.36;
//   the C and C++ compilers, Debian's gcc 12; the host build-7);
// - what differs from run to run is a placeholder on both sides: keys and hashes
//   ([HEX], 8 hex digits or more, or a shorter run followed by `…`), sizes ([SIZE]),
//   times and rates ([TIME]), pids ([PID]), Unix times, a CPU's name; runs of spaces
//   are one (table columns move with the widths of what they hold);
// - `…` in the doc matches anything within a line (snapbox's `[..]`), and a line of
//   its own any number of lines (`...`).
//
// A block that cannot run here is reported as skipped, with its reason, in
// target/tmp/doc-examples-*.txt, which scripts/test.sh lists with its other skips.
// With XCACHE_DOCTEST_RAW=1, what each command printed (in the doc's paths) is written
// to target/tmp/doc-raw/, ready to paste into a doc whose output changed.

mod doc_examples {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::common::run_bounded;
    use super::docblocks::{self, Block};

    /// The machine the docs' examples show.
    const REF_PLATFORM: &str = "Linux-6.18-x86_64-glibc2.36";
    const REF_KERNEL: &str = "6.18";
    const REF_LIBC: &str = "glibc2.36";
    const REF_HOST: &str = "build-7";
    const REF_CC: (&str, &str) = (
        "/usr/bin/x86_64-linux-gnu-gcc-12",
        "cc (Debian 12.2.0-14+deb12u1) 12.2.0",
    );
    const REF_CXX: (&str, &str) = (
        "/usr/bin/x86_64-linux-gnu-g++-12",
        "c++ (Debian 12.2.0-14+deb12u1) 12.2.0",
    );
    /// The docs' names for the work directory and HOME.
    const WORK: &str = "/tmp/xd";
    const HOME: &str = "/home/me";

    const FIXTURES: &str = include_str!("common/doc_fixtures.sh");

    /// What this machine is, as the mapping onto the reference machine needs it.
    struct Machine {
        /// (this machine's text, the reference's), applied to actual output in order.
        replace: Vec<(String, String)>,
        /// `xcache doctor --json`'s checks: name → (status, detail).
        checks: BTreeMap<String, (String, String)>,
    }

    fn xcache() -> &'static str {
        env!("CARGO_BIN_EXE_xcache")
    }

    fn machine() -> &'static Machine {
        static M: OnceLock<Machine> = OnceLock::new();
        M.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = Command::new(xcache())
                .args(["doctor", "--json"])
                .env("XCACHE_DIR", dir.path().join("cache"))
                .env_remove("XCACHE_FLAGS")
                .env_remove("XCACHE_CONFIG")
                .env_remove("XCACHE_RUNTIME")
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let checks: BTreeMap<String, (String, String)> = v["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap().to_string(),
                        (
                            c["status"].as_str().unwrap().to_string(),
                            c["detail"].as_str().unwrap().to_string(),
                        ),
                    )
                })
                .collect();
            let mut replace = Vec::new();
            // "Linux-6.18-x86_64-glibc2.36-xc3 (os Linux, kernel 6.18, arch x86_64, libc
            // glibc2.36, ...)"
            let platform = &checks["platform"].1;
            let name = platform.split_whitespace().next().unwrap();
            let here = name.rsplit_once("-xc").map_or(name, |(p, _)| p);
            let field = |f: &str| {
                platform
                    .split(&format!("{f} "))
                    .nth(1)
                    .and_then(|r| r.split([',', ')']).next())
                    .unwrap_or("")
                    .to_string()
            };
            replace.push((here.to_string(), REF_PLATFORM.to_string()));
            replace.push((
                format!("kernel {}", field("kernel")),
                format!("kernel {REF_KERNEL}"),
            ));
            replace.push((
                format!("libc {}", field("libc")),
                format!("libc {REF_LIBC}"),
            ));
            for (check, (path, version)) in [("C compiler", REF_CC), ("C++ compiler", REF_CXX)] {
                if let Some((p, rest)) = checks[check].1.split_once(": ") {
                    let v = rest.split("; ").next().unwrap_or("");
                    replace.push((p.to_string(), path.to_string()));
                    replace.push((v.to_string(), version.to_string()));
                }
            }
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string();
            if !host.is_empty() {
                replace.push((format!(" on {host} "), format!(" on {REF_HOST} ")));
                replace.push((format!(" on {host}\n"), format!(" on {REF_HOST}\n")));
                replace.push((format!(" on {host},"), format!(" on {REF_HOST},")));
                replace.push((format!("host={host}"), format!("host={REF_HOST}")));
            }
            replace.retain(|(a, b)| !a.is_empty() && a != b);
            Machine { replace, checks }
        })
    }

    /// Whether this machine has what a block `needs`; else why not.
    fn lacks(need: &str) -> Option<String> {
        let m = machine();
        let ok = |check: &str| m.checks.get(check).is_some_and(|(s, _)| s == "ok");
        match need {
            "gpu" => (!(ok("GPU") && ok("NVRTC")))
                .then(|| "needs an NVIDIA GPU and NVRTC (this machine has none)".into()),
            "nvcc" => (!ok("nvcc")).then(|| "needs nvcc (this machine has none)".into()),
            "nvrtc" => (!ok("NVRTC")).then(|| "needs NVRTC (this machine has none)".into()),
            "redis-server" | "zstd" | "flock" => (!Command::new("sh")
                .args(["-c", &format!("command -v {need}")])
                .output()
                .is_ok_and(|o| o.status.success()))
            .then(|| format!("needs the {need} command (apt-get install {need})")),
            "python" => {
                let py = python();
                (!Command::new(&py)
                    .args(["-c", "import xcache, numpy"])
                    .output()
                    .is_ok_and(|o| o.status.success()))
                .then(|| {
                    format!("needs a Python with the xcache package and numpy ({py}: set XCACHE_PYTHON)")
                })
            }
            other => Some(format!("needs {other:?}, which the doc tests do not know")),
        }
    }

    /// The interpreter the `python` of the examples is: $XCACHE_PYTHON, else python3.
    fn python() -> String {
        std::env::var("XCACHE_PYTHON").unwrap_or_else(|_| "python3".into())
    }

    /// One `$ ` command of a block and the output the doc shows under it.
    #[derive(Debug)]
    struct Step {
        command: String,
        expected: String,
        line: usize,
    }

    fn steps(block: &Block) -> Result<Vec<Step>, String> {
        let mut out: Vec<Step> = Vec::new();
        let mut lines = block.body.lines().enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            if let Some(cmd) = line.strip_prefix("$ ") {
                let mut command = cmd.to_string();
                while command.ends_with('\\') {
                    let (_, next) = lines
                        .next()
                        .ok_or_else(|| format!("line {}: a continued command ends", i + 1))?;
                    command.push('\n');
                    command.push_str(next);
                }
                out.push(Step {
                    command,
                    expected: String::new(),
                    line: block.line + 1 + i,
                });
            } else if let Some(step) = out.last_mut() {
                step.expected.push_str(line);
                step.expected.push('\n');
            } else if !(line.trim().is_empty() || line.starts_with('#')) {
                return Err(format!(
                    "{}:{}: output before any `$ ` command",
                    block.file,
                    block.line + 1 + i
                ));
            }
        }
        for s in &mut out {
            let t = s.expected.trim_end().to_string();
            s.expected = if t.is_empty() { t } else { t + "\n" };
        }
        if out.is_empty() {
            return Err(format!(
                "{}: a console block with no `$ ` command",
                block.place()
            ));
        }
        Ok(out)
    }

    /// The doc's paths made this run's.
    fn real_paths(text: &str, work: &Path, home: &Path) -> String {
        text.replace(WORK, work.to_str().unwrap())
            .replace(HOME, home.to_str().unwrap())
    }

    const MARK: &str = "@@xcache-doctest-step@@";

    /// Runs a console block; `Err` says what differed.
    pub fn run_console(block: &Block) -> Result<(), String> {
        let steps = steps(block)?;
        let unordered = block.directives.unordered;
        let tmp = tempfile::Builder::new()
            .prefix("xcache-doctest-")
            .tempdir()
            .unwrap();
        let work = tmp.path().join("xd");
        let home = tmp.path().join("home/me");
        let scratch = tmp.path().join("scratch");
        for d in [&work, &home, &scratch] {
            std::fs::create_dir_all(d).unwrap();
        }
        let (d, defaults) = (&block.directives, &block.defaults);
        let real = |t: &str| real_paths(t, &work, &home);
        let mut script = String::from("set -o pipefail\n");
        script.push_str(FIXTURES);
        script.push('\n');
        script.push_str(&format!(
            "cd '{}'\n",
            real(d.cwd.as_deref().or(defaults.cwd.as_deref()).unwrap_or(WORK))
        ));
        script.push_str("exec 3>&1 >\"$DOCTEST_SCRATCH/setup.log\" 2>&1\nset -e\n");
        for setup in [&defaults.setup, &d.setup] {
            script.push_str(&real(setup));
            script.push('\n');
        }
        let mut commands: Vec<String> = steps.iter().map(|s| real(&s.command)).collect();
        for (i, (text, shell)) in d.lets.iter().enumerate() {
            script.push_str(&format!("DOCTEST_LET_{i}={}\n", real(shell)));
            for c in &mut commands {
                *c = c.replace(text, &format!("${{DOCTEST_LET_{i}}}"));
            }
        }
        script.push_str("set +e\nexec 1>&3 2>&1 3>&-\n");
        for (i, c) in commands.iter().enumerate() {
            script.push_str(&format!("echo '{MARK} {i}'\n{c}\n"));
        }
        script.push_str(&format!("echo '{MARK} end'\n"));
        let pids = scratch.join("pids");
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > \"$DOCTEST_SCRATCH/group\"\ntrap 'kill $(cat \"$DOCTEST_PIDS\" 2>/dev/null) 2>/dev/null' EXIT\n{script}"
            ))
            .env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/bin:/usr/bin:/bin",
                    Path::new(xcache()).parent().unwrap().display()
                ),
            )
            .env("HOME", &home)
            .env("TMPDIR", &scratch)
            .env("LC_ALL", "C.UTF-8")
            .env("DOCTEST_PIDS", &pids)
            .env("DOCTEST_SCRATCH", &scratch)
            .env("XCACHE_PYTHON", python())
            .stdin(std::process::Stdio::null());
        // A group of its own: whatever the example leaves running (a holder of a
        // lock, a server) is killed with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        for (k, v) in defaults.env.iter().chain(&d.env) {
            cmd.env(k, real(v));
        }
        let run = run_bounded(cmd, &scratch, Duration::from_secs(300));
        // The group's id is the shell's pid, which the script wrote first.
        if let Some(group) = std::fs::read_to_string(scratch.join("group"))
            .ok()
            .and_then(|g| g.trim().parse::<i32>().ok())
        {
            // SAFETY: signalling the process group this test started for the example.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let setup_log = std::fs::read_to_string(scratch.join("setup.log")).unwrap_or_default();
        if run.timed_out {
            return Err(format!("{}: ran past 300 s\n{}", block.place(), run.stdout));
        }
        let mut outputs: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        for line in run.stdout.split_inclusive('\n') {
            if let Some(rest) = line.strip_prefix(MARK) {
                if let Some(c) = current.take() {
                    outputs.push(c);
                }
                if rest.trim() != "end" {
                    current = Some(String::new());
                }
            } else if let Some(c) = current.as_mut() {
                c.push_str(line);
            }
        }
        if outputs.len() != steps.len() {
            return Err(format!(
                "{}: the setup or a command stopped the example (exit {:?}).\nsetup:\n{setup_log}\noutput:\n{}{}",
                block.place(),
                run.code,
                run.stdout,
                run.stderr
            ));
        }
        let mut failures = Vec::new();
        for (step, actual) in steps.iter().zip(&outputs) {
            let raw = virtual_paths(actual, tmp.path());
            if std::env::var_os("XCACHE_DOCTEST_RAW").is_some() {
                // What the command printed, in the doc's paths: what to paste into the
                // doc when an output changed (then shorten it with `…` where it varies).
                let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("doc-raw");
                std::fs::create_dir_all(&dir).unwrap();
                let name = format!("{}-{}.txt", block.file.replace('/', "_"), step.line);
                std::fs::write(dir.join(name), format!("$ {}\n{raw}", step.command)).unwrap();
            }
            let actual = normalize(&raw, true);
            let expected = normalize(&step.expected, false);
            let mut expected = expected
                .lines()
                .map(|l| {
                    if l.trim() == "…" {
                        "...".to_string()
                    } else {
                        l.replace('…', "[..]")
                    }
                })
                .map(|l| l + "\n")
                .collect::<String>();
            let mut actual = actual;
            if unordered {
                // Rows in key order: keys differ from machine to machine, and so does
                // their order. Compared as sets of lines.
                let sorted = |t: &str| {
                    let mut l: Vec<&str> = t.lines().collect();
                    l.sort_unstable();
                    l.iter().map(|l| format!("{l}\n")).collect::<String>()
                };
                actual = sorted(&actual);
                expected = sorted(&expected);
            }
            let name = format!("{}:{} `{}`", block.file, step.line, step.command);
            if let Err(e) = snapbox::Assert::new().normalize_paths(false).try_eq(
                Some(&name),
                snapbox::Data::text(actual),
                snapbox::Data::text(expected),
            ) {
                failures.push(format!("{e}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    }

    /// This run's paths written as the doc's.
    fn virtual_paths(text: &str, tmp: &Path) -> String {
        let t = tmp.to_str().unwrap();
        text.replace(&format!("{t}/xd"), WORK)
            .replace(&format!("{t}/home/me"), HOME)
            .replace(&format!("{t}/scratch"), "/tmp")
    }

    fn regex(pattern: &str) -> regex::Regex {
        regex::Regex::new(pattern).unwrap()
    }

    /// Both sides: the reference machine, placeholders, single spaces.
    fn normalize(text: &str, actual: bool) -> String {
        static RULES: OnceLock<Vec<(regex::Regex, &'static str)>> = OnceLock::new();
        let rules = RULES.get_or_init(|| {
            vec![
                (regex(r"\bsize=\d+,mtime=[0-9.]+"), "size=[N],mtime=[T]"),
                // JSON times: "compile_ms":41, "elapsed_ms":66.742558.
                (regex(r#""(\w+_(ms|s))":[0-9.]+"#), "\"$1\":[TIME]"),
                // A hex run followed by `…` (a shortened key), or of 8 or more with a digit.
                (regex(r"\b[0-9a-f]{4,}…"), "[HEX]…"),
                (regex(r"\b[0-9a-f]*[0-9][0-9a-f]*\b"), "\u{0}"),
                // The fan directory a key is under.
                (
                    regex(r"/(entries|locks|manifests)/[0-9a-f]{2}/"),
                    "/$1/[FAN]/",
                ),
                (regex(r"\b\d+(\.\d+)? (B|KiB|MiB|GiB|TiB)\b"), "[SIZE]"),
                (
                    regex(r"\b\d+(\.\d+)? / \d+(\.\d+)? (B|KiB|MiB|GiB|TiB)\b"),
                    "[SIZE] / [SIZE]",
                ),
                (regex(r"\(\d+(\.\d+)?%\)"), "([PCT])"),
                (regex(r"\b\d+ bytes\b"), "[N] bytes"),
                (regex(r"\b\d+(\.\d+)? ?(ms|µs)\b"), "[TIME]"),
                (regex(r"\b\d+(\.\d+)? (s|seconds)\b"), "[TIME]"),
                // Durations as tables show them: `1.2s`, `2m05s`.
                (regex(r"\b\d+m\d\ds\b"), "[TIME]"),
                (regex(r"\b\d+\.\ds\b"), "[TIME]"),
                (regex(r"\b\d+(\.\d+)? G elements/s"), "[RATE] G elements/s"),
                (regex(r"\b\d+(\.\d+)?×"), "[RATIO]×"),
                (regex(r"\bpid[ =]\d+"), "pid [PID]"),
                (regex(r"cpu: [^,\n]+,"), "cpu: [CPU],"),
            ]
        });
        let mut t = text.to_string();
        if actual {
            for (from, to) in &machine().replace {
                t = t.replace(from.as_str(), to);
            }
        }
        for (re, to) in rules {
            if *to == "\u{0}" {
                // Hex runs of 8 or more digits, with at least one digit.
                t = re
                    .replace_all(&t, |c: &regex::Captures| {
                        let m = &c[0];
                        if m.len() >= 8 && m.bytes().any(|b| b.is_ascii_digit()) {
                            "[HEX]".to_string()
                        } else {
                            m.to_string()
                        }
                    })
                    .into_owned();
            } else {
                t = re.replace_all(&t, *to).into_owned();
            }
        }
        let spaces = regex(r" {2,}");
        let lines: Vec<String> = t
            .lines()
            .map(|l| spaces.replace_all(l.trim_end(), " ").into_owned())
            .collect();
        let end = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        lines[..end].iter().map(|l| format!("{l}\n")).collect()
    }

    /// The C blocks that are templates: rendered and compiled by xcache from a
    /// `template_path` holding them, and the symbol they declare loaded.
    pub fn run_template(block: &Block, name: &str, symbol: &str) -> Result<(), String> {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("templates").join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &block.body).unwrap();
        let stem = name.trim_end_matches(".c").trim_start_matches("c/");
        let out = Command::new(xcache())
            .args(["compile", "-t", stem, "--symbol", symbol, "--json"])
            .env("XCACHE_DIR", tmp.path().join("cache"))
            .env(
                "XCACHE_FLAGS",
                format!("template_path={}", tmp.path().join("templates").display()),
            )
            .env_remove("XCACHE_CONFIG")
            .env_remove("XCACHE_RUNTIME")
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: the template does not compile: {}{}",
                block.place(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Where this test reports what it ran and skipped: target/tmp/doc-examples-NAME.txt.
    pub fn report(name: &str, lines: &[String]) {
        let path =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("doc-examples-{name}.txt"));
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    /// Runs every console block of `files`: Ok(what ran and was skipped) or the failures.
    pub fn console_examples(name: &str, files: &[&str]) {
        let mut lines = Vec::new();
        let mut failures = Vec::new();
        for file in files {
            for b in docblocks::blocks(file)
                .into_iter()
                .filter(|b| b.lang == "console")
            {
                let why = b.directives.skip.clone().or_else(|| {
                    b.directives
                        .needs
                        .iter()
                        .chain(&b.defaults.needs)
                        .find_map(|n| lacks(n))
                });
                if let Some(why) = why {
                    lines.push(format!("skipped: {} (console): {why}", b.place()));
                    continue;
                }
                match run_console(&b) {
                    Ok(()) => lines.push(format!("ran: {} (console)", b.place())),
                    Err(e) => failures.push(e),
                }
            }
        }
        report(name, &lines);
        assert!(
            failures.is_empty(),
            "{} console example(s) do not run as written:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

/// The docs whose console blocks each test below runs: together, every doc.
const CONSOLE_DOCS: &[&[&str]] = &[
    &["README.md"],
    &["docs/CLI.md"],
    &[
        "docs/REMOTE.md",
        "docs/TEMPLATES.md",
        "docs/MIGRATION.md",
        "docs/CONFIG.md",
    ],
    &["docs/PYTHON.md"],
];

#[test]
fn readme_console_examples_run_as_written() {
    doc_examples::console_examples("readme", CONSOLE_DOCS[0]);
}

#[test]
fn cli_md_console_examples_run_as_written() {
    doc_examples::console_examples("cli-md", CONSOLE_DOCS[1]);
}

#[test]
fn other_docs_console_examples_run_as_written() {
    doc_examples::console_examples("other-docs", CONSOLE_DOCS[2]);
}

/// `python -m xcache …`: the package must be installed in $XCACHE_PYTHON, as
/// scripts/test.sh does before running this.
#[test]
#[ignore = "needs the Python package installed (XCACHE_PYTHON): scripts/test.sh runs it after installing it"]
fn python_md_console_examples_run_as_written() {
    doc_examples::console_examples("python-md", CONSOLE_DOCS[3]);
}

#[test]
fn every_doc_example_has_a_test_that_runs_it() {
    let covered: Vec<&str> = CONSOLE_DOCS
        .iter()
        .flat_map(|f| f.iter().copied())
        .collect();
    let mut templates = 0;
    for b in docblocks::all_blocks() {
        match b.lang.as_str() {
            "console" => assert!(
                covered.contains(&b.file.as_str()),
                "{}: no test runs the console blocks of {}",
                b.place(),
                b.file
            ),
            "c" => {
                let kind = b.directives.kind.clone().unwrap_or_default();
                assert!(
                    kind == "program"
                        || kind.starts_with("template ")
                        || b.directives.skip.is_some(),
                    "{}: a C block says what it is (`as: program` or `as: template NAME`)",
                    b.place()
                );
                if let Some(rest) = kind.strip_prefix("template ") {
                    let (name, symbol) = rest.split_once(' ').expect("as: template NAME SYMBOL");
                    doc_examples::run_template(&b, name, symbol).unwrap();
                    templates += 1;
                }
            }
            // python/tests/test_docs.py runs these; capi/tests/c_abi.rs the C programs.
            _ => {}
        }
    }
    assert!(templates >= 1, "the C template of docs/TEMPLATES.md");
}

#[test]
fn comments_steer_the_block_below_them() {
    let md = "text\n<!-- doctest: skip: needs a GPU -->\n```console\n$ xcache demo\n```\n\n\
              <!-- doctest\nneeds: redis-server\nlet 72a7 = $(echo 72a7)\nsetup:\ntouch a\ntouch b\n-->\n\n```console\n$ ls\na\n```\n";
    let b = docblocks::parse_blocks("x.md", md).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].directives.skip.as_deref(), Some("needs a GPU"));
    assert_eq!((b[1].line, b[1].lang.as_str()), (15, "console"));
    assert_eq!(b[1].directives.needs, ["redis-server"]);
    assert_eq!(
        b[1].directives.lets,
        [("72a7".into(), "$(echo 72a7)".into())]
    );
    assert_eq!(b[1].directives.setup, "touch a\ntouch b");
    assert!(
        docblocks::parse_blocks("x.md", "<!-- doctest: skip: x -->\nprose\n```c\n```\n").is_err()
    );
}
