//! The guides in `docs/` run as written: every `cargo tinyres` command of their `sh`
//! blocks runs, in order, in a fresh directory that sees the repository's `tests/`
//! (the committed models) and `../shared` (the data sets, where they are), as it would
//! from a fresh clone's root. A command writing `never.trm` is one the guide shows
//! failing: it must fail and write nothing. Commands that need a debug probe (`flash`
//! without `--dry-run`) are not run; templates the reader fills in are `text` blocks.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `cargo tinyres` commands of a guide's `sh` blocks, before the heading `stop_at`:
/// lines joined across `\`, comments removed, `&&` chains split, as words.
fn guide_commands(guide: &str, stop_at: Option<&str>) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(repository().join("docs").join(guide)).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut line = String::new();
    for raw in text.lines() {
        if stop_at.is_some_and(|heading| raw == heading) {
            break;
        }
        if raw.starts_with("```") {
            in_sh = raw == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = raw.split(" #").next().unwrap_or_default().trim_end();
        match code.strip_suffix('\\') {
            Some(start) => line.push_str(start),
            None => {
                line.push_str(code);
                for command in line.split("&&") {
                    let words: Vec<String> = command.split_whitespace().map(String::from).collect();
                    if words.starts_with(&["cargo".into(), "tinyres".into()]) {
                        commands.push(words[2..].to_vec());
                    }
                }
                line.clear();
            }
        }
    }
    assert!(!commands.is_empty(), "{guide}: no commands");
    commands
}

/// Runs a guide's commands in a fresh directory; returns how many ran.
fn run_guide(guide: &str, stop_at: Option<&str>) -> usize {
    let root = std::env::temp_dir().join(format!(
        "tinyres-guide-{}-{}",
        guide.trim_end_matches(".md"),
        std::process::id()
    ));
    let work = root.join("clone");
    std::fs::create_dir_all(&work).unwrap();
    let shared = repository().join("../shared");
    std::os::unix::fs::symlink(repository().join("tests"), work.join("tests")).unwrap();
    if shared.is_dir() {
        std::os::unix::fs::symlink(&shared, root.join("shared")).unwrap();
    }
    let mut ran = 0;
    for args in guide_commands(guide, stop_at) {
        let shown = format!("cargo tinyres {}", args.join(" "));
        if args[0] == "flash" && !args.iter().any(|a| a == "--dry-run") {
            continue;
        }
        if args.iter().any(|a| a.contains("../shared")) && !shared.is_dir() {
            eprintln!("NOT CHECKED ({} is not there): {shown}", shared.display());
            continue;
        }
        eprintln!("{guide}: {shown}");
        let output = Command::new(env!("CARGO_BIN_EXE_tinyres"))
            .args(&args)
            .current_dir(&work)
            .output()
            .expect("runs");
        let log = format!(
            "{guide}: {shown}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if args.iter().any(|a| a == "never.trm") {
            assert!(!output.status.success(), "should fail: {log}");
            assert!(!work.join("never.trm").exists(), "{log}");
        } else {
            assert!(output.status.success(), "{log}");
        }
        ran += 1;
    }
    std::fs::remove_dir_all(&root).unwrap();
    ran
}

#[test]
fn getting_started_runs_as_written() {
    assert!(run_guide("getting-started.md", Some("## With real data")) >= 12);
}

#[test]
fn import_a_model_runs_as_written() {
    assert!(run_guide("import-a-model.md", None) >= 10);
}

#[test]
fn on_device_learning_runs_as_written() {
    assert!(run_guide("on-device-learning.md", Some("## 3. What to expect")) >= 4);
}
