//! `backchannel demo` tells the whole story, exits 0 and leaves nothing behind.

#![allow(clippy::unwrap_used, clippy::panic)]

mod support;

use std::process::Command;

#[test]
fn the_demo_tells_the_whole_story_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(support::bin())
        .arg("demo")
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for part in [
        // Joining by a code said aloud, and the safety numbers both sides compare.
        "dana is in",
        "the same: nobody is in between",
        // Talking, and a removal.
        "carol read 0 new message(s)",
        // A relay operator who drops and alters records, and what Bob sees.
        "the operator deletes",
        "scrambles",
        "SECURITY ALERT",
        "never arrived",
        "these alerts are expected",
        // A burn and its receipts.
        "receipts from: bob, dana",
        "alice's device erased it too",
    ] {
        assert!(
            stdout.contains(part),
            "the demo does not show {part:?}:\n{stdout}"
        );
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the demo left files behind"
    );
}
