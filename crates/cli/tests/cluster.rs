//! A relay of two nodes (two `relay serve` processes) on one PostgreSQL database,
//! with one address naming both hosts: a conversation goes on while node 1 is
//! killed with SIGKILL and started again, and what the database holds is
//! ciphertext only.
//!
//! The server comes from `BACKCHANNEL_TEST_POSTGRES` (`.ci/run` starts one and
//! sets it); without it these tests say so and skip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use backchannel_relay::storage::postgres::{scratch_database, test_server};
use support::{Person, Relay, follow, free_port, parse_messages, set_up_channel};

/// Two nodes on `url` sharing `data`, each printing the address of both; over
/// TLS to the database when the test server has a certificate authority.
fn start_node(data: &std::path::Path, port: u16, ports: (u16, u16), url: &str) -> Relay {
    let hosts = [
        format!("127.0.0.1:{}", ports.0),
        format!("127.0.0.1:{}", ports.1),
    ];
    let mut args = vec![
        "--postgres".to_owned(),
        url.to_owned(),
        "--public-host".to_owned(),
        hosts[0].clone(),
        "--public-host".to_owned(),
        hosts[1].clone(),
    ];
    if let Some(ca) = std::env::var_os("BACKCHANNEL_TEST_POSTGRES_CA") {
        args.push("--postgres-ca".to_owned());
        args.push(ca.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Relay::start_with(data, port, &args, &[])
}

/// Texts of messages from others in `read --json` lines.
fn texts(lines: &[String]) -> Vec<String> {
    parse_messages(&lines.join("\n"))
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

#[test]
fn a_conversation_over_two_nodes_survives_sigkill_of_one_exactly_once_and_in_order() {
    let Some(server) = test_server() else { return };
    let url = scratch_database(&server).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let ports = (free_port(), free_port());
    let mut one = start_node(&data, ports.0, ports, &url);
    let two = start_node(&data, ports.1, ports, &url);
    assert_eq!(one.address, two.address, "one relay, one address");
    let address = one.address.clone();
    let fingerprint = address
        .trim_start_matches("bcr://")
        .split('@')
        .next()
        .unwrap();
    assert_eq!(
        address,
        format!(
            "bcr://{fingerprint}@127.0.0.1:{},127.0.0.1:{}",
            ports.0, ports.1
        )
    );
    // Bob reaches the relay through node 2 first: the same relay, its hosts in
    // the other order.
    let bob_address = format!(
        "bcr://{fingerprint}@127.0.0.1:{},127.0.0.1:{}",
        ports.1, ports.0
    );

    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    let carol = Person::new(tmp.path(), "carol");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &address,
        &[(&bob, &bob_address), (&carol, &address)],
    );
    let (mut follower, lines) = follow(&bob, "ops");
    let sent: Vec<String> = (0..12)
        .map(|i| format!("line {i:02} of the plan"))
        .collect();
    for (i, text) in sent.iter().enumerate() {
        if i == 4 {
            // Node 1 dies without a chance to flush anything.
            one.kill();
        }
        if i == 8 {
            one = start_node(&data, ports.0, ports, &url);
        }
        alice.run(&["send", "ops", text]).ok();
    }
    let seen = collect(&lines, sent.len());
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(texts(&seen), sent, "every message once, in order: {seen:?}");

    // Carol has not read: her messages wait in the database, as ciphertext.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let blobs: Vec<Vec<u8>> = db
        .query("SELECT blob FROM messages", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(blobs.len() >= sent.len(), "carol's messages are held");
    for text in &sent {
        for blob in &blobs {
            assert!(
                !blob.windows(text.len()).any(|w| w == text.as_bytes()),
                "plaintext in the database"
            );
        }
    }
    let carol_read = carol.read("ops");
    assert_eq!(
        carol_read
            .iter()
            .map(|(_, t)| t.clone())
            .collect::<Vec<_>>(),
        sent
    );
    drop(two);
}

#[test]
#[ignore = "restarts the PostgreSQL server: .ci/run runs it alone, with BACKCHANNEL_TEST_POSTGRES_RESTART"]
fn a_database_restart_stops_acknowledgements_and_loses_or_repeats_nothing() {
    let Some(server) = test_server() else { return };
    let restart = std::env::var("BACKCHANNEL_TEST_POSTGRES_RESTART")
        .expect("BACKCHANNEL_TEST_POSTGRES_RESTART: a command taking down or up for {}");
    let url = scratch_database(&server).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let ports = (free_port(), free_port());
    let one = start_node(&data, ports.0, ports, &url);
    let _two = start_node(&data, ports.1, ports, &url);
    // Bob reaches the relay through node 2 first.
    let bob_address = one.address.replacen(
        &format!("127.0.0.1:{},127.0.0.1:{}", ports.0, ports.1),
        &format!("127.0.0.1:{},127.0.0.1:{}", ports.1, ports.0),
        1,
    );
    assert_ne!(bob_address, one.address);
    let alice = Person::new(tmp.path(), "alice");
    let bob = Person::new(tmp.path(), "bob");
    set_up_channel(
        tmp.path(),
        "ops",
        &alice,
        &one.address,
        &[(&bob, &bob_address)],
    );
    // Bob follows on node 2 through the restart.
    let (mut follower, lines) = follow(&bob, "ops");
    alice.run(&["send", "ops", "before"]).ok();
    let control = |action: &str| {
        let status = std::process::Command::new("sh")
            .args(["-c", &restart.replace("{}", action)])
            .status()
            .unwrap();
        assert!(status.success(), "{restart} {action}");
    };
    // The server goes down: a send is not acknowledged while it is away ...
    control("down");
    let mut during = std::process::Command::new(support::bin())
        .arg("--home")
        .arg(&alice.home)
        .args(["send", "ops", "during"])
        .env("BACKCHANNEL_PASSPHRASE", support::PASSPHRASE)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let waiting = during.try_wait().unwrap().is_none();
    // ... and is once the server is back.
    control("up");
    assert!(waiting, "the send finished while the database was down");
    let status = during.wait().unwrap();
    assert!(
        status.success(),
        "the send failed after the database came back"
    );
    alice.run(&["send", "ops", "after"]).ok();
    let seen = collect(&lines, 3);
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(texts(&seen), ["before", "during", "after"], "{seen:?}");
}

/// Lines from a follower until `count` messages from others came, then two
/// seconds more (a duplicate would come then); at most a minute.
fn collect(lines: &std::sync::mpsc::Receiver<String>, count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while texts(&seen).len() < count && std::time::Instant::now() < end {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
    }
    seen
}

#[test]
fn relay_address_lists_every_public_host_given() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let relay = Relay::start(&data, free_port());
    let fingerprint = relay
        .address
        .trim_start_matches("bcr://")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    drop(relay);
    let home = tmp.path().join("anyone");
    let out = support::run(
        &home,
        &[
            "relay",
            "address",
            "--data",
            data.to_str().unwrap(),
            "--public-host",
            "relay1.example",
            "--public-host",
            "relay2.example:8443",
            "--public-host",
            "[2001:db8::1]:9443",
        ],
    )
    .ok();
    let printed = out.stdout.trim();
    assert_eq!(
        printed,
        format!("bcr://{fingerprint}@relay1.example:7443,relay2.example:8443,[2001:db8::1]:9443")
    );
    // And it is an address every command accepts.
    support::run(&home, &["init", "--name", "dana", "--relay", printed]).ok();
    let bad = support::run(
        &home,
        &[
            "relay",
            "address",
            "--data",
            data.to_str().unwrap(),
            "--public-host",
            "relay1.example:notaport",
        ],
    );
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("HOST:PORT"), "{}", bad.stderr);
}
