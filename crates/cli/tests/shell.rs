//! What a command-line tool is expected to have: `--version` naming the commit,
//! shell completions that the shells accept, manual pages for every command.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod support;

use std::process::Command;

fn output(args: &[&str]) -> (bool, String) {
    let out = Command::new(support::bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_version_names_the_commit_it_was_built_from() {
    let (ok, version) = output(&["--version"]);
    assert!(ok);
    let commit = env!("BACKCHANNEL_COMMIT");
    assert_eq!(
        version.trim(),
        format!(
            "backchannel {} (commit {commit})",
            env!("CARGO_PKG_VERSION")
        )
    );
    // Built in a checkout: the commit is HEAD's (the tests run at the commit the
    // binary was built from).
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Ok(head) = head
        && head.status.success()
    {
        assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), commit);
    }
}

#[test]
fn completions_are_scripts_each_shell_accepts() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script) = output(&["completions", shell]);
        assert!(ok, "{shell}");
        for word in ["backchannel", "daemon", "verify", "follow"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // bash parses its script without running it.
    let (_, script) = output(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backchannel.bash");
    std::fs::write(&file, script).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&file).status().unwrap();
    assert!(checked.success());
    let (ok, _) = output(&["completions", "no-such-shell"]);
    assert!(!ok);
}

#[test]
fn every_command_has_a_manual_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let done = Command::new(support::bin())
        .args(["man", "--out-dir"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(done.success());
    for page in [
        "backchannel.1",
        "backchannel-send.1",
        "backchannel-daemon.1",
        "backchannel-relay-serve.1",
        "backchannel-channel-create.1",
    ] {
        let text =
            std::fs::read_to_string(out.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
        assert!(text.contains(".SH NAME"), "{page}");
    }
    let main = std::fs::read_to_string(out.join("backchannel.1")).unwrap();
    assert!(main.contains(env!("BACKCHANNEL_COMMIT")));
}
