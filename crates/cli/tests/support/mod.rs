//! Helpers for end-to-end tests of the real binary against real relay processes.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSPHRASE: &str = "correct horse battery staple";

pub fn bin() -> &'static str {
    // `.ci/run` points the large tests at the release build.
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BACKCHANNEL_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_backchannel").to_owned())
    })
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A relay process.
pub struct Relay {
    pub child: Child,
    pub address: String,
    pub port: u16,
    pub data: PathBuf,
    pub stderr: Option<std::thread::JoinHandle<String>>,
    pub metrics: Option<u16>,
}

impl Relay {
    /// Starts a relay on `port` with data in `data`, waiting for its address line.
    pub fn start(data: &Path, port: u16) -> Self {
        Self::start_with(data, port, &[], &[])
    }

    pub fn start_with(data: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args([
            "relay",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
        ])
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let address = lines.next().expect("relay printed nothing").unwrap();
        assert!(address.starts_with("bcr://"), "first line: {address}");
        // Keep draining stdout so the relay never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        let stderr = child.stderr.take().unwrap();
        let stderr = Some(std::thread::spawn(move || {
            let mut out = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out.push_str(&line);
                out.push('\n');
            }
            out
        }));
        Relay {
            child,
            address,
            port,
            data: data.to_owned(),
            stderr,
            metrics: None,
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits; returns the exit status and everything logged.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().unwrap();
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (status, log)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a command did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `backchannel --home HOME args...` with the passphrase in the environment.
pub fn run(home: &Path, args: &[&str]) -> Run {
    run_env(home, args, &[("BACKCHANNEL_PASSPHRASE", PASSPHRASE)])
}

pub fn run_env(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("--home")
        .arg(home)
        .args(args)
        .env_remove("BACKCHANNEL_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.stdin(Stdio::null()).output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `backchannel --home HOME args...` with `input` on standard input.
pub fn run_input(home: &Path, args: &[&str], input: &[u8]) -> Run {
    use std::io::Write as _;
    let mut child = Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env("BACKCHANNEL_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A person: a profile directory.
pub struct Person {
    pub home: PathBuf,
}

impl Person {
    pub fn new(root: &Path, name: &str) -> Self {
        let home = root.join(name);
        run(&home, &["init", "--name", name]).ok();
        Person { home }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(&self.home, args)
    }

    /// New messages as (from, text), via `read --json`.
    pub fn read(&self, channel: &str) -> Vec<(String, String)> {
        let out = self.run(&["--json", "read", channel]).ok();
        parse_messages(&out.stdout)
    }
}

/// Messages from others in `read --json` output, as (from, text).
pub fn parse_messages(stdout: &str) -> Vec<(String, String)> {
    parse(stdout, false)
}

/// All messages, our own included.
pub fn parse_all(stdout: &str) -> Vec<(String, String)> {
    parse(stdout, true)
}

fn parse(stdout: &str, own: bool) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| v.get("text").is_some() && (own || v["you"] == false))
        .map(|v| {
            (
                v["from"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Alice creates `channel` on `relay`; each of `others` (with their relay) joins
/// through key-package and welcome files.
pub fn set_up_channel(
    root: &Path,
    channel: &str,
    admin: &Person,
    admin_relay: &str,
    others: &[(&Person, &str)],
) {
    admin
        .run(&["channel", "create", channel, "--relay", admin_relay])
        .ok();
    for (i, (person, relay)) in others.iter().enumerate() {
        let kp = root.join(format!("kp{i}"));
        let welcome = root.join(format!("welcome{i}"));
        person
            .run(&[
                "key-package",
                "--relay",
                relay,
                "--out",
                kp.to_str().unwrap(),
            ])
            .ok();
        admin
            .run(&[
                "channel",
                "add",
                channel,
                "--key-package",
                kp.to_str().unwrap(),
                "--welcome-out",
                welcome.to_str().unwrap(),
            ])
            .ok();
        person
            .run(&["join", "--welcome", welcome.to_str().unwrap()])
            .ok();
    }
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// `read --follow` in the background; its stdout lines arrive on the receiver.
pub fn follow(person: &Person, channel: &str) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(bin())
        .arg("--home")
        .arg(&person.home)
        .args(["--json", "read", channel, "--follow"])
        .env("BACKCHANNEL_PASSPHRASE", PASSPHRASE)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Waits for a line containing `needle`; returns everything seen.
pub fn wait_for(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        let hit = line.contains(needle);
        seen.push(line);
        if hit {
            return seen;
        }
    }
    panic!("never saw {needle:?}; saw {seen:?}");
}

/// The relay's operator stores its newest record a second time (a replay), with
/// the mailbox's count and numbering kept consistent, as a careful operator would.
pub fn replay_newest(relay_data: &Path) {
    let db = rusqlite::Connection::open(relay_data.join("relay.db")).unwrap();
    db.execute_batch(
        "INSERT INTO messages (mailbox, expires_at, digest, blob, seq)
             SELECT mailbox, expires_at, randomblob(16), blob,
                 (SELECT last_seq + 1 FROM mailboxes WHERE key = m.mailbox)
             FROM messages m WHERE id = (SELECT max(id) FROM messages);
         UPDATE mailboxes SET count = count + 1, last_seq = last_seq + 1
             WHERE key = (SELECT mailbox FROM messages WHERE id = (SELECT max(id) FROM messages));",
    )
    .unwrap();
}
