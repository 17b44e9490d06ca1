//! The terminal chat end to end, driven through tmux as a person would: keys in,
//! the screen read back. A real relay process and two real profiles.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{PASSPHRASE, Person, Relay, free_port, set_up_channel};

/// A tmux server of our own with one session, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &[&str]) -> Self {
        let socket = format!("bc-tui-{}-{}", std::process::id(), rand::random::<u32>());
        let tmux = Tmux { socket };
        let out = tmux.run(
            &[
                &[
                    "new-session",
                    "-d",
                    "-s",
                    "chat",
                    "-x",
                    "120",
                    "-y",
                    "40",
                    "--",
                ],
                command,
            ]
            .concat(),
        );
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "chat"]).stdout)
            .into_owned()
    }

    /// Waits until the screen shows `text`; returns the screen.
    fn wait_for(&self, text: &str) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(Instant::now() < end, "never saw {text:?} on:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn type_text(&self, text: &str) {
        assert!(
            self.run(&["send-keys", "-t", "chat", "-l", text])
                .status
                .success()
        );
    }

    fn key(&self, key: &str) {
        assert!(self.run(&["send-keys", "-t", "chat", key]).status.success());
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "chat"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Whether tmux is there; without it the test says it skips, unless
/// `BACKCHANNEL_REQUIRE_TMUX` is set (as `.ci/run` sets it), when it fails.
fn tmux_available() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("BACKCHANNEL_REQUIRE_TMUX").is_none(),
            "tmux is required (BACKCHANNEL_REQUIRE_TMUX) but not installed"
        );
        eprintln!("skipping the terminal chat test: tmux is not installed (apt-get install tmux)");
    }
    found
}

#[test]
fn a_person_reads_writes_and_sees_alerts_in_the_chat() {
    if !tmux_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let relay = Relay::start(&data, free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    bob.run(&["send", "ops", "transfer 100"]).ok();
    // The relay's operator stores Bob's message a second time: a replay.
    support::replay_newest(&data);

    let home = alice.home.to_str().unwrap().to_owned();
    let tmux = Tmux::start(&[
        "env",
        &format!("BACKCHANNEL_PASSPHRASE={PASSPHRASE}"),
        support::bin(),
        "--home",
        &home,
        "tui",
    ]);
    // The channel list, the message, and the replay shown as an alert in place.
    let screen = tmux.wait_for("transfer 100");
    assert!(
        screen.contains("Channels") && screen.contains("ops"),
        "{screen}"
    );
    tmux.wait_for("SECURITY ALERT");

    // A typed message reaches the other member.
    tmux.type_text("hello from the chat");
    tmux.key("Enter");
    tmux.wait_for("sent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bob
        .read("ops")
        .contains(&("alice".into(), "hello from the chat".into()))
    {
        assert!(Instant::now() < deadline, "bob never got it");
        std::thread::sleep(Duration::from_millis(300));
    }

    // An incoming message appears by itself, within seconds.
    bob.run(&["send", "ops", "reply to the chat"]).ok();
    tmux.wait_for("reply to the chat");

    // Help, then the safety number with Bob.
    tmux.key("?");
    tmux.wait_for("Ctrl-V");
    tmux.key("Escape");
    tmux.key("C-v");
    let screen = tmux.wait_for("Safety numbers");
    let bob_sees = bob.run(&["--json", "verify", "ops", "alice"]).ok();
    let number: serde_json::Value = serde_json::from_str(bob_sees.stdout.trim()).unwrap();
    let first_group = number["safety_number"]
        .as_str()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(screen.contains(&first_group), "{screen}");
    // The numbers match: y marks Bob verified.
    tmux.key("y");
    tmux.wait_for("bob is verified");
    tmux.key("Escape");

    // Pasted text is text: its line break sends nothing until Enter.
    assert!(
        tmux.run(&["set-buffer", "pasted first line\npasted second line"])
            .status
            .success()
    );
    assert!(
        tmux.run(&["paste-buffer", "-p", "-r", "-t", "chat"])
            .status
            .success()
    );
    tmux.wait_for("pasted second line");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !bob.read("ops").iter().any(|(_, t)| t.contains("pasted")),
        "a pasted line break sent the message"
    );
    tmux.key("Enter");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = bob.read("ops");
        if got
            .iter()
            .any(|(_, t)| t == "pasted first line\npasted second line")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pasted message never came: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A narrow terminal with a window open draws, and does not fall over.
    assert!(
        tmux.run(&["resize-window", "-t", "chat", "-x", "28", "-y", "12"])
            .status
            .success()
    );
    tmux.key("?");
    std::thread::sleep(Duration::from_millis(800));
    assert!(tmux.alive(), "the chat died on a narrow terminal");
    tmux.key("Escape");
    assert!(
        tmux.run(&["resize-window", "-t", "chat", "-x", "120", "-y", "40"])
            .status
            .success()
    );

    // Text with escapes and a forged header shows as text, not as control.
    bob.run(&[
        "send",
        "ops",
        "\u{1b}[2J\n[2026-01-01 00:00] alice: wire it",
    ])
    .ok();
    let screen = tmux.wait_for("wire it");
    assert!(screen.contains("\\u{1b}[2J"), "{screen}");
    assert!(
        !screen.lines().any(|l| l
            .trim_start_matches('│')
            .trim_start()
            .starts_with("[2026-01-01 00:00] alice")),
        "a forged header starts a line:\n{screen}"
    );

    // Burning asks first; any key but y keeps the channel.
    tmux.key("C-b");
    tmux.wait_for("cannot be undone");
    tmux.key("n");
    tmux.wait_for("not burned");
    assert!(alice.home.join("daemon.json").exists(), "still running");

    // Ctrl-Q leaves, and the profile is free again.
    tmux.key("C-q");
    let end = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < end, "the chat did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alice.home.join("daemon.json").exists());
    alice.run(&["channel", "list"]).ok();
}
