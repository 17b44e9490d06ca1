//! Deterministic simulation of Backchannel engines.
//!
//! A [`Sim`] holds N engines, each on its own real encrypted store (SQLCipher in a
//! temporary directory), a fake clock, and an in-memory mailbox network that can
//! delay, reorder, drop, duplicate and withhold blobs, all driven by one seeded
//! random generator: the same seed replays the same run. The network stands in for
//! relays only here, to test the engine above it; end-to-end tests use real relays.
//!
//! Driving works like quinn's test pair: [`Sim::run`] repeatedly takes the earliest
//! thing that happens — a blob due for delivery or an engine timer — advances the
//! clock to it, and feeds it to its engine, collecting what the engine outputs.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;

use backchannel_core::mls::Suite;
use backchannel_core::store::EngineStore as _;
use backchannel_core::{
    Alert, ChannelId, ChannelOptions, Engine, EngineConfig, Event, Output, Timestamp, Transmit,
};
use backchannel_proto::addr::{Fingerprint, MailboxAddr, MailboxId, RelayAddr};
use backchannel_store::Store;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Passphrase of every simulated profile.
pub const PASSPHRASE: &[u8] = b"simulated passphrase";

/// What the network does to a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it (after the usual delay).
    Deliver,
    /// Never deliver it.
    Drop,
    /// Deliver it twice.
    Duplicate,
}

/// Random misbehaviour of the network.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Shortest delivery delay.
    pub min_delay_ms: u64,
    /// Longest delivery delay; blobs sent close together arrive in any order.
    pub max_delay_ms: u64,
    /// Probability of dropping a blob.
    pub drop: f64,
    /// Probability of delivering a blob twice.
    pub duplicate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            min_delay_ms: 1,
            max_delay_ms: 1,
            drop: 0.0,
            duplicate: 0.0,
        }
    }
}

/// A blob on its way.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// When it will arrive.
    pub deliver_at: Timestamp,
    /// Tie-breaker, in order of sending.
    pub order: u64,
    /// Which node sent it.
    pub from: usize,
    /// The transmit as the engine produced it.
    pub transmit: Transmit,
}

/// A rule deciding each blob's fate; gets the sending node and the transmit.
pub type Filter = Box<dyn FnMut(usize, &Transmit) -> Verdict>;

/// One simulated person.
pub struct Node {
    /// A label for test messages.
    pub label: String,
    /// The engine.
    pub engine: Engine<Store>,
    /// Every event the engine emitted, in order.
    pub events: Vec<Event>,
    dir: tempfile::TempDir,
}

impl Node {
    /// Every alert received so far.
    pub fn alerts(&self) -> Vec<Alert> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Alert { alert, .. } => Some(alert.clone()),
                _ => None,
            })
            .collect()
    }

    /// The profile directory.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The simulation.
pub struct Sim {
    /// The fake clock.
    pub now: Timestamp,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// Random faults applied to every blob.
    pub faults: Faults,
    /// An optional rule applied before the random faults.
    pub filter: Option<Filter>,
    /// Every blob ever delivered, with its destination (for replay attacks).
    pub delivered: Vec<(usize, ChannelId, Vec<u8>)>,
    in_flight: Vec<InFlight>,
    mailboxes: HashMap<MailboxId, (usize, Option<ChannelId>)>,
    rng: ChaCha20Rng,
    order: u64,
    relay: RelayAddr,
}

impl Sim {
    /// A simulation whose every random choice comes from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let relay = RelayAddr::new(Fingerprint(rng.r#gen()), "relay.sim", 7443).unwrap();
        Self {
            now: Timestamp(1_700_000_000_000),
            nodes: Vec::new(),
            faults: Faults::default(),
            filter: None,
            delivered: Vec::new(),
            in_flight: Vec::new(),
            mailboxes: HashMap::new(),
            rng,
            order: 0,
            relay,
        }
    }

    /// Adds a person with a fresh profile; returns its index.
    pub fn add_node(&mut self, label: &str) -> usize {
        self.add_node_with(label, EngineConfig::default())
    }

    /// Adds a person whose engine has `config`.
    pub fn add_node_with(&mut self, label: &str, config: EngineConfig) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path(), PASSPHRASE).unwrap();
        let engine = Engine::load(store, config).unwrap();
        self.nodes.push(Node {
            label: label.to_owned(),
            engine,
            events: Vec::new(),
            dir,
        });
        self.nodes.len() - 1
    }

    /// Closes and reopens a node's profile from disk (a restart).
    pub fn restart(&mut self, node: usize) {
        let dir = self.nodes[node].dir.path().to_owned();
        let store = Store::open(&dir, PASSPHRASE).unwrap();
        // The old engine (and its connection) is dropped by the assignment.
        self.nodes[node].engine = Engine::load(store, EngineConfig::default()).unwrap();
    }

    /// Copies a node's profile as it is on disk now (what a thief imaging the device
    /// would get). Load it with [`Sim::load_copy`].
    pub fn copy_profile(&mut self, node: usize) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        self.nodes[node].engine.store().checkpoint().unwrap();
        for entry in std::fs::read_dir(self.nodes[node].dir.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
        copy
    }

    /// An engine over a copied profile, outside the simulation.
    pub fn load_copy(copy: &tempfile::TempDir) -> Engine<Store> {
        let store = Store::open(copy.path(), PASSPHRASE).unwrap();
        Engine::load(store, EngineConfig::default()).unwrap()
    }

    /// A new mailbox for `node` (not yet bound to a channel).
    pub fn new_mailbox(&mut self, node: usize) -> MailboxAddr {
        let send_id = MailboxId(self.rng.r#gen());
        self.mailboxes.insert(send_id, (node, None));
        MailboxAddr {
            relay: self.relay.clone(),
            send_id,
        }
    }

    fn bind(&mut self, mailbox: &MailboxAddr, channel: ChannelId) {
        if let Some(entry) = self.mailboxes.get_mut(&mailbox.send_id) {
            entry.1 = Some(channel);
        }
    }

    /// `node` creates a channel (X-Wing) under `name`.
    pub fn create_channel(&mut self, node: usize, name: &str) -> ChannelId {
        self.create_channel_with(node, name, Suite::XWing)
    }

    /// `node` creates a channel with given options (a suite converts into them).
    pub fn create_channel_with(
        &mut self,
        node: usize,
        name: &str,
        options: impl Into<ChannelOptions>,
    ) -> ChannelId {
        let mailbox = self.new_mailbox(node);
        let label = self.nodes[node].label.clone();
        let now = self.now;
        let id = self.nodes[node]
            .engine
            .create_channel(now, name, &label, options.into(), mailbox.clone())
            .unwrap();
        self.bind(&mailbox, id);
        self.collect(node);
        id
    }

    /// `admin` adds `joiner` to `channel`; the welcome goes directly (out of band).
    pub fn add(&mut self, admin: usize, channel: &str, joiner: usize) -> ChannelId {
        let suite = self.nodes[admin].engine.channel(channel).unwrap().suite;
        let mailbox = self.new_mailbox(joiner);
        let now = self.now;
        let label = self.nodes[joiner].label.clone();
        let kp = self.nodes[joiner]
            .engine
            .key_package(now, &label, suite, mailbox.clone())
            .unwrap();
        let welcome = self.nodes[admin]
            .engine
            .add_member(now, channel, &kp)
            .unwrap();
        self.collect(admin);
        let id = self.nodes[joiner]
            .engine
            .join(now, Some(channel), &welcome)
            .unwrap();
        self.bind(&mailbox, id);
        self.collect(joiner);
        id
    }

    /// `node` says yes to introduction `id` (waiting for its answer), with a new
    /// mailbox; returns the channel it made if it hosts.
    pub fn accept_introduction(
        &mut self,
        node: usize,
        id: &backchannel_core::introduction::IntroId,
    ) -> Option<ChannelId> {
        let mailbox = self.new_mailbox(node);
        let now = self.now;
        let made = self.nodes[node]
            .engine
            .accept_introduction(now, id, mailbox.clone())
            .unwrap();
        if let Some(channel) = made {
            self.bind(&mailbox, channel);
        }
        self.collect(node);
        made
    }

    /// `node` sends `text` in `channel`.
    pub fn send(&mut self, node: usize, channel: &str, text: &str) {
        let now = self.now;
        self.nodes[node]
            .engine
            .send_text(now, channel, text)
            .unwrap();
        self.collect(node);
    }

    /// Moves a node's outputs into the network and its event log.
    pub fn collect(&mut self, node: usize) {
        while let Some(output) = self.nodes[node].engine.poll_output() {
            match output {
                Output::Transmit(transmit) => {
                    // The simulated network takes it at once: out of the outbox.
                    self.nodes[node]
                        .engine
                        .store()
                        .remove_transmit(transmit.id)
                        .unwrap();
                    self.enqueue(node, transmit);
                }
                Output::Event(event) => {
                    if let Event::Joined { channel, .. } = &event {
                        // As the client does: our mailbox in it is now its.
                        let own = self.nodes[node]
                            .engine
                            .channel(*channel)
                            .ok()
                            .and_then(|c| c.members.into_iter().find(|m| m.is_self));
                        if let Some(me) = own {
                            self.bind(&me.mailbox, *channel);
                        }
                    }
                    if let Event::Erased { channel, .. } = &event {
                        // The client deletes the channel's mailboxes at the relay.
                        self.mailboxes
                            .retain(|_, (owner, c)| !(*owner == node && *c == Some(*channel)));
                    }
                    self.nodes[node].events.push(event);
                }
                _ => {}
            }
        }
    }

    fn enqueue(&mut self, from: usize, transmit: Transmit) {
        let verdict = match self.filter.as_mut() {
            Some(filter) => filter(from, &transmit),
            None => Verdict::Deliver,
        };
        let copies = match verdict {
            Verdict::Drop => 0,
            Verdict::Duplicate => 2,
            Verdict::Deliver if self.rng.gen_bool(self.faults.drop) => 0,
            Verdict::Deliver if self.rng.gen_bool(self.faults.duplicate) => 2,
            Verdict::Deliver => 1,
        };
        for _ in 0..copies {
            let delay = self.rng.gen_range(
                self.faults.min_delay_ms..=self.faults.max_delay_ms.max(self.faults.min_delay_ms),
            );
            self.order += 1;
            self.in_flight.push(InFlight {
                deliver_at: self.now.plus_ms(delay),
                order: self.order,
                from,
                transmit: transmit.clone(),
            });
        }
    }

    /// Puts a blob on the network as if a relay delivered it (replays, injections).
    pub fn inject(&mut self, to: usize, channel: ChannelId, blob: Vec<u8>) {
        let now = self.now;
        match self.nodes[to].engine.handle_incoming(now, &channel, &blob) {
            // Erased meanwhile: like a deleted mailbox, it takes nothing in.
            Ok(()) | Err(backchannel_core::CommandError::UnknownChannel(_)) => {}
            Err(e) => panic!("node {to} failed: {e}"),
        }
        self.collect(to);
    }

    /// Blobs in flight, for inspection or tampering.
    pub fn in_flight(&mut self) -> &mut Vec<InFlight> {
        &mut self.in_flight
    }

    /// Processes the earliest event. Returns false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let next_delivery = self
            .in_flight
            .iter()
            .enumerate()
            .min_by_key(|(_, f)| (f.deliver_at, f.order))
            .map(|(i, f)| (i, f.deliver_at));
        let next_timer = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.engine.poll_timeout().map(|d| (i, d.at)))
            .min_by_key(|&(_, t)| t);
        match (next_delivery, next_timer) {
            (Some((i, at)), timer) if timer.is_none_or(|(_, t)| at <= t) => {
                let flight = self.in_flight.swap_remove(i);
                self.now = self.now.max(at);
                self.deliver(flight.transmit);
                true
            }
            (_, Some((node, t))) => {
                self.now = self.now.max(t);
                let now = self.now;
                self.nodes[node].engine.handle_timeout(now).unwrap();
                self.collect(node);
                true
            }
            _ => false,
        }
    }

    fn deliver(&mut self, transmit: Transmit) {
        let Some(&(node, channel)) = self.mailboxes.get(&transmit.to.send_id) else {
            return;
        };
        let Some(channel) = channel else { return };
        let now = self.now;
        self.delivered.push((node, channel, transmit.blob.clone()));
        self.nodes[node]
            .engine
            .handle_incoming(now, &channel, &transmit.blob)
            .unwrap();
        self.collect(node);
    }

    /// Delivers everything in flight, following every consequence, but fires no
    /// timer later than `horizon_ms` from now.
    pub fn run_for(&mut self, horizon_ms: u64) {
        let end = self.now.plus_ms(horizon_ms);
        loop {
            let next_delivery = self.in_flight.iter().map(|f| f.deliver_at).min();
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|n| n.engine.poll_timeout().map(|d| d.at))
                .min();
            let next = match (next_delivery, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// Delivers everything in flight and lets every timer fire.
    pub fn run(&mut self) {
        while self.step() {}
    }

    /// Text messages in `node`'s history of `channel`, as (sender name, seq, text),
    /// sorted by sender and sequence number.
    pub fn history(&self, node: usize, channel: &str) -> Vec<(String, u64, String)> {
        let mut out: Vec<_> = self.nodes[node]
            .engine
            .history(channel, 0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|m| m.kind == backchannel_core::store::MessageKind::Text)
            .map(|m| (m.sender_name, m.seq, String::from_utf8(m.body).unwrap()))
            .collect();
        out.sort();
        out
    }
}

/// An insider's tools: direct access to a member's own MLS state, to build messages
/// the engine itself would never send (the attacks a malicious member can mount).
pub mod insider {
    use backchannel_core::ChannelId;
    use backchannel_core::derive::{CHANNEL_EXPORTER_LABEL, envelope_key};
    use backchannel_core::mls::Backend;
    use backchannel_core::seal;
    use backchannel_proto::envelope::{ContentKind, Fragment};
    use backchannel_store::Store;
    use openmls::prelude::*;
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_traits::OpenMlsProvider;
    use rand::RngCore;

    /// A second handle on a member's profile, with its group and signing key.
    pub struct Insider {
        /// The provider over the member's store.
        pub backend: Backend<Store>,
        /// The member's group, as stored.
        pub group: MlsGroup,
        /// The member's signing key in the channel.
        pub signer: SignatureKeyPair,
    }

    impl Insider {
        /// Opens `node`'s state of `channel` through a second connection.
        pub fn open(sim: &super::Sim, node: usize, channel: ChannelId) -> Self {
            Self::open_path(sim.nodes[node].dir(), channel)
        }

        /// Opens the state of `channel` in the profile at `dir` (a copy, say).
        pub fn open_path(dir: &std::path::Path, channel: ChannelId) -> Self {
            let store = Store::open(dir, super::PASSPHRASE).unwrap();
            let backend = Backend::new(store).unwrap();
            let group = MlsGroup::load(backend.storage(), &GroupId::from_slice(&channel.0))
                .unwrap()
                .unwrap();
            let leaf = group.own_leaf_node().unwrap();
            let signer = SignatureKeyPair::read(
                backend.storage(),
                leaf.signature_key().as_slice(),
                SignatureScheme::ED25519,
            )
            .unwrap();
            Self {
                backend,
                group,
                signer,
            }
        }

        /// The envelope key of the group's current epoch.
        pub fn envelope_key(&self) -> [u8; 32] {
            let secret = self
                .group
                .export_secret(self.backend.crypto(), CHANNEL_EXPORTER_LABEL, &[], 32)
                .unwrap();
            *envelope_key(&secret.try_into().unwrap()).unwrap()
        }

        /// Seals arbitrary content into blobs under `key`.
        pub fn seal(kind: ContentKind, content: &[u8], key: &[u8; 32]) -> Vec<Vec<u8>> {
            let mut id = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut id);
            Fragment::split(kind, id, content)
                .unwrap()
                .iter()
                .map(|f| {
                    let mut nonce = [0u8; 24];
                    rand::thread_rng().fill_bytes(&mut nonce);
                    seal::seal(key, nonce, &f.encode()).unwrap()
                })
                .collect()
        }

        /// An application message carrying exactly `payload` (padded by the caller).
        pub fn message(&mut self, payload: &[u8]) -> Vec<u8> {
            use tls_codec::Serialize as _;
            self.group
                .create_message(&self.backend, &self.signer, payload)
                .unwrap()
                .tls_serialize_detached()
                .unwrap()
        }
    }
}

/// Looking for what an erasure should have removed.
pub mod forensics {
    use std::path::Path;

    /// The ways an identifier or key is written down somewhere: raw bytes, hex,
    /// base32 (as in relay addresses), and a JSON array of numbers (serde's default
    /// for byte vectors, as OpenMLS's storage keys use).
    pub fn encodings(bytes: &[u8]) -> Vec<Vec<u8>> {
        let decimal = format!(
            "[{}]",
            bytes
                .iter()
                .map(u8::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        vec![
            bytes.to_vec(),
            hex_lower(bytes).into_bytes(),
            backchannel_proto::addr::base32_encode(bytes).into_bytes(),
            decimal.into_bytes(),
        ]
    }

    fn hex_lower(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Which `needles` (named) occur in `haystack`.
    pub fn find<'a>(haystack: &[u8], needles: &'a [(String, Vec<u8>)]) -> Vec<&'a str> {
        needles
            .iter()
            .filter(|(_, n)| !n.is_empty() && haystack.windows(n.len()).any(|w| w == n))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Every file under `dir`, with where each needle occurs in it: `(file, needle)`.
    pub fn search_dir(dir: &Path, needles: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
        let mut hits = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    for name in find(&bytes, needles) {
                        hits.push((path.display().to_string(), name.to_owned()));
                    }
                }
            }
        }
        hits
    }

    /// What must not survive the erasure of a channel: its identifier, every
    /// member's mailbox and signature key, and the given texts.
    pub fn channel_needles(
        summary: &backchannel_core::ChannelSummary,
        texts: &[&str],
    ) -> Vec<(String, Vec<u8>)> {
        let mut out = needles("channel id", &summary.id.0);
        for m in &summary.members {
            out.extend(needles(
                &format!("{}'s mailbox", m.name),
                &m.mailbox.send_id.0,
            ));
            out.extend(needles(
                &format!("{}'s signature key", m.name),
                &m.signature_key,
            ));
        }
        for t in texts {
            out.push((format!("text {t:?}"), t.as_bytes().to_vec()));
        }
        out
    }

    /// Named needles for every encoding of `bytes`.
    pub fn needles(name: &str, bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        encodings(bytes)
            .into_iter()
            .enumerate()
            .map(|(i, e)| (format!("{name} (encoding {i})"), e))
            .collect()
    }
}
