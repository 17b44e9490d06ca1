//! `backchannel daemon` end to end: a real daemon process on a real relay,
//! spoken to over its Unix socket as a program would, with the command line
//! working beside it on the same profile.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{PASSPHRASE, Person, Relay, free_port, parse_messages, set_up_channel};

/// A daemon process, stopped (with SIGTERM) when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(person: &Person, socket: &Path) -> Self {
        let mut child = Command::new(support::bin())
            .arg("--home")
            .arg(&person.home)
            .args(["--json", "daemon", "--socket"])
            .arg(socket)
            .env("BACKCHANNEL_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let said: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
        assert_eq!(
            said["socket"].as_str().map(PathBuf::from),
            Some(socket.to_owned())
        );
        Daemon { child }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection to the daemon.
struct Conn {
    write: UnixStream,
    read: BufReader<UnixStream>,
    next_id: u64,
    /// Notifications read while waiting for answers.
    notes: Vec<Value>,
}

impl Conn {
    fn open(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Conn {
            write: stream.try_clone().unwrap(),
            read: BufReader::new(stream),
            next_id: 1,
            notes: Vec::new(),
        }
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        assert!(
            self.read.read_line(&mut line).unwrap() > 0,
            "connection closed"
        );
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).unwrap();
    }

    /// Sends a request; returns the whole response object.
    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_raw(format!("{request}\n").as_bytes());
        loop {
            let v = self.line();
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
            assert!(
                v.get("method").is_some(),
                "neither answer nor notification: {v}"
            );
            self.notes.push(v);
        }
    }

    fn result(&mut self, method: &str, params: Value) -> Value {
        let v = self.request(method, params);
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    fn error_code(&mut self, method: &str, params: Value) -> i64 {
        let v = self.request(method, params);
        v["error"]["code"].as_i64().unwrap_or_else(|| panic!("{v}"))
    }

    /// Waits for a notification `method` whose params satisfy `pred`.
    fn notified(&mut self, method: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(60);
        if let Some(i) = self
            .notes
            .iter()
            .position(|n| n["method"] == method && pred(&n["params"]))
        {
            return self.notes.remove(i)["params"].clone();
        }
        while Instant::now() < end {
            let v = self.line();
            if v["method"] == method && pred(&v["params"]) {
                return v["params"].clone();
            }
            self.notes.push(v);
        }
        panic!("no {method} notification; saw {:?}", self.notes);
    }
}

#[test]
fn programs_talk_through_the_daemon_while_the_command_line_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    bob.run(&["send", "ops", "before the daemon"]).ok();

    let socket = tmp.path().join("alice.sock");
    let mut daemon = Daemon::start(&alice, &socket);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the socket is for its owner only");
    }
    let mut conn = Conn::open(&socket);

    // What the profile holds.
    let channels = conn.result("channels", json!({}));
    assert_eq!(channels[0]["name"], "ops", "{channels}");
    assert_eq!(channels[0]["members"], 2);
    assert_eq!(channels[0]["unread"], 1, "{channels}");
    let read = conn.result("read", json!({"channel": "ops"}));
    assert_eq!(read["messages"][0]["text"], "before the daemon", "{read}");
    assert_eq!(read["messages"][0]["from"], "bob");
    assert_eq!(conn.result("channels", json!({}))[0]["unread"], 0);
    let members = conn.result("members", json!({"channel": "ops"}));
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    let number = conn.result("verify", json!({"channel": "ops", "member": "bob"}));
    let bob_sees = bob.run(&["--json", "verify", "ops", "alice"]).ok();
    let bob_sees: Value = serde_json::from_str(bob_sees.stdout.trim()).unwrap();
    assert_eq!(number["safety_number"], bob_sees["safety_number"]);
    assert_eq!(number["verified"], false);
    let confirmed = conn.result(
        "verify",
        json!({"channel": "ops", "member": "bob", "confirm": true}),
    );
    assert_eq!(confirmed["verified"], true);

    // Messages both ways, and notifications as they arrive.
    assert_eq!(conn.result("subscribe", json!({}))["subscribed"], true);
    let sent = conn.result("send", json!({"channel": "ops", "text": "from a program"}));
    assert_eq!(sent["sent"], true, "{sent}");
    assert_eq!(sent["queued"], false, "{sent}");
    assert!(
        bob.read("ops")
            .contains(&("alice".into(), "from a program".into()))
    );
    bob.run(&["send", "ops", "to the program"]).ok();
    let message = conn.notified("message", |p| p["text"] == "to the program");
    assert_eq!(message["from"], "bob");
    assert_eq!(message["channel"], "ops");
    assert_eq!(message["verified"], true);

    // Bad requests get errors with stable codes; the connection goes on.
    conn.send_raw(b"this is not json\n");
    assert_eq!(conn.line()["error"]["code"], -32700);
    conn.send_raw(b"{\"jsonrpc\":\"1.0\",\"id\":5,\"method\":\"channels\"}\n");
    assert_eq!(conn.line()["error"]["code"], -32600);
    let mut long = vec![b'x'; 3 << 20];
    long.push(b'\n');
    conn.send_raw(&long);
    assert_eq!(conn.line()["error"]["code"], -32600);
    assert_eq!(conn.error_code("no-such-method", json!({})), -32601);
    assert_eq!(conn.error_code("send", json!({"channel": "ops"})), -32602);
    assert_eq!(
        conn.error_code("send", json!({"channel": 7, "text": "x"})),
        -32602
    );
    assert_eq!(
        conn.error_code("send", json!({"channel": "nope", "text": "x"})),
        -32004
    );
    assert_eq!(
        conn.error_code("verify", json!({"channel": "ops", "member": "mallory"})),
        -32000
    );
    // A connection that hangs up mid-line harms no one.
    let mut rude = UnixStream::connect(&socket).unwrap();
    rude.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth")
        .unwrap();
    drop(rude);
    assert!(conn.result("channels", json!({})).is_array());

    // The command line on the same profile goes through the daemon.
    alice.run(&["send", "ops", "from the command line"]).ok();
    assert!(
        bob.read("ops")
            .contains(&("alice".into(), "from the command line".into()))
    );
    bob.run(&["send", "ops", "read by the command line"]).ok();
    conn.notified("message", |p| p["text"] == "read by the command line");
    let out = alice.run(&["--json", "read", "ops"]).ok();
    assert!(
        parse_messages(&out.stdout).contains(&("bob".into(), "read by the command line".into())),
        "{out:?}"
    );
    // Someone rewrites the advertisement to name their own socket: the command
    // line checks who answers there and sends them nothing.
    let advert = alice.home.join("daemon.json");
    let genuine = std::fs::read_to_string(&advert).unwrap();
    let trap = tmp.path().join("trap.sock");
    let listener = std::os::unix::net::UnixListener::bind(&trap).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut forged: Value = serde_json::from_str(&genuine).unwrap();
    forged["socket"] = json!(trap);
    std::fs::write(&advert, forged.to_string()).unwrap();
    let out = alice.run(&["send", "ops", "for the trap"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("nothing was sent"), "{out:?}");
    if let Ok((mut stolen, _)) = listener.accept() {
        stolen.set_nonblocking(false).unwrap();
        stolen
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stolen, &mut got);
        assert!(got.is_empty(), "the trap received {got:?}");
    }
    std::fs::write(&advert, genuine).unwrap();

    // The Python example of docs/daemon.md, as written there.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/daemon.md"))
        .unwrap();
    let example = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/daemon.md has a Python example");
    assert!(example.lines().count() <= 10, "{example}");
    let mut python = Command::new("python3")
        .args(["-c", example])
        .env("BACKCHANNEL_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut printed = BufReader::new(python.stdout.take().unwrap());
    let mut first = String::new();
    printed.read_line(&mut first).unwrap();
    assert!(first.contains("'sent': True"), "{first}");
    assert!(
        bob.read("ops")
            .contains(&("alice".into(), "hello from Python".into()))
    );
    bob.run(&["send", "ops", "hello Python"]).ok();
    let mut line = String::new();
    while !line.contains("hello Python") {
        line.clear();
        assert!(
            printed.read_line(&mut line).unwrap() > 0,
            "the example stopped"
        );
    }
    let _ = python.kill();
    let _ = python.wait();

    // A file, by its path.
    let brief = tmp.path().join("brief.txt");
    std::fs::write(&brief, "for the program's eyes only\n".repeat(100)).unwrap();
    assert_eq!(
        conn.error_code("send", json!({"channel": "ops", "file": "brief.txt"})),
        -32602,
        "a relative path is refused"
    );
    let sent = conn.result("send", json!({"channel": "ops", "file": brief}));
    assert_eq!(sent["file"], "brief.txt", "{sent}");
    let out = bob.run(&["--json", "read", "ops"]).ok();
    let saved = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|l| l["attachment"]["saved_to"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert_eq!(
        std::fs::read(saved).unwrap(),
        std::fs::read(&brief).unwrap()
    );

    // A command the daemon does not serve waits for the profile, and says so.
    let mut waiting = Command::new(support::bin())
        .arg("--home")
        .arg(&alice.home)
        .args(["channel", "show", "ops"])
        .env("BACKCHANNEL_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "it must wait, not open the profile"
    );

    // An invitation by code: the code at once, the joiner admitted meanwhile.
    let carol = Person::new(tmp.path(), "carol");
    let invitation = conn.result("invite", json!({"channel": "ops"}));
    let code = invitation["code"].as_str().unwrap().to_owned();
    assert!(
        conn.result("channels", json!({})).is_array(),
        "other calls go on"
    );
    carol.run(&["join", &code, "--relay", &relay.address]).ok();
    let joined = conn.notified("joined", |p| p["channel"] == "ops");
    assert_eq!(joined["member"], "carol");
    assert_eq!(
        conn.result("members", json!({"channel": "ops"}))["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Stopped, it leaves no socket behind, and the waiting command runs.
    assert!(daemon.stop().success());
    assert!(!socket.exists());
    assert!(!alice.home.join("daemon.json").exists());
    let shown = waiting.wait_with_output().unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let stderr = String::from_utf8_lossy(&shown.stderr);
    assert!(
        stderr.contains("open in another backchannel process"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&shown.stdout).contains("carol"));
}

#[test]
fn a_send_beside_read_follow_goes_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &relay.address,
        &[(&bob, &relay.address)],
    );
    let (mut follower, lines) = support::follow(&alice, "ops");
    assert!(support::eventually(Duration::from_secs(30), || {
        alice.home.join("daemon.json").exists()
    }));
    // Alice's second terminal.
    alice.run(&["send", "ops", "typed beside the reader"]).ok();
    support::wait_for(&lines, "typed beside the reader");
    assert!(
        bob.read("ops")
            .contains(&("alice".into(), "typed beside the reader".into()))
    );
    let _ = follower.kill();
    let _ = follower.wait();
    // Killed, it left its socket: the next command opens the profile itself.
    alice.run(&["send", "ops", "after the reader"]).ok();
    assert!(
        bob.read("ops")
            .contains(&("alice".into(), "after the reader".into()))
    );
}

#[test]
fn panic_erases_the_profile_and_stops_its_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&tmp.path().join("relay"), free_port());
    let alice = Person::new(tmp.path(), "alice");
    alice
        .run(&["channel", "create", "ops", "--relay", &relay.address])
        .ok();
    // A socket in a directory others can write to is refused.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let refused = alice.run(&[
        "daemon",
        "--socket",
        shared.join("d.sock").to_str().unwrap(),
    ]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("only you can write to"),
        "{refused:?}"
    );
    // The default socket, in the profile directory.
    let socket = alice.home.join("daemon.sock");
    let mut daemon = Daemon::start(&alice, &socket);
    // No passphrase, no waiting for the daemon's lock.
    let out = support::run_env(&alice.home, &["panic", "--yes"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        support::eventually(Duration::from_secs(10), || {
            daemon.child.try_wait().unwrap().is_some()
        }),
        "the daemon of an erased profile must stop"
    );
    assert!(!socket.exists());
    assert!(!alice.home.exists(), "nothing of the profile is left");
}
