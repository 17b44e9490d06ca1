//! The command line as clap parses it: every command, argument and option.

use std::net::SocketAddr;
use std::path::PathBuf;

use backchannel_core::mls::Suite;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// A secure channel between people who trust neither the network, nor the relays,
/// nor each other's facilities.
#[derive(Parser, Debug)]
#[command(name = "backchannel", version = VERSION)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--version`: the release and the commit it was built from.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BACKCHANNEL_COMMIT"),
    ")"
);

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// The profile directory (default: $BACKCHANNEL_HOME, or the platform's data
    /// directory).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Machine-readable output: JSON (one object per line where there are several).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create your profile (asks for a passphrase, or reads $BACKCHANNEL_PASSPHRASE).
    Init {
        /// The name others see by default.
        #[arg(long)]
        #[arg(value_parser = typed_name)]
        name: Option<String>,
        /// Your usual relay: where `join CODE` looks when not given --relay.
        #[arg(long, value_name = "ADDR")]
        relay: Option<String>,
    },
    /// Create, list and inspect channels, and add members.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Make a key package, to be added to a channel by its administrator (the offline
    /// invitation).
    KeyPackage {
        /// The relay that will hold your mailbox for that channel (default: the one
        /// given to `init --relay`).
        #[arg(long, value_name = "ADDR")]
        relay: Option<String>,
        /// Where to write the key package.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The name to go by in that channel (default: your profile name).
        #[arg(long)]
        #[arg(value_parser = typed_name)]
        name: Option<String>,
        /// The channel's ciphersuite: xwing (default) or classic.
        #[arg(long, default_value = "xwing")]
        suite: String,
    },
    /// Invite someone with a one-time code said aloud: prints the code (first line)
    /// and waits for them to join. With --link, prints an invite link and its QR code
    /// instead, for someone who joins later.
    Invite {
        /// The channel (you administer it).
        #[arg(value_parser = typed_name)]
        name: String,
        /// The relay for the rendezvous or the link's mailbox (default: your
        /// mailbox's relay in the channel).
        #[arg(long, value_name = "ADDR")]
        relay: Option<String>,
        /// Seconds to wait for the joiner (the code lives at most as long as the relay
        /// allows, 10 minutes by default).
        #[arg(long, default_value_t = 600)]
        wait: u64,
        /// Make an invite link (and QR code) instead of a code.
        #[arg(long)]
        link: bool,
        /// With --link: admit whoever uses the link without asking you first.
        #[arg(long, requires = "link")]
        no_approval: bool,
        /// With --link: how long it takes requests, like 30m, 12h or 7d.
        #[arg(long, requires = "link", default_value = "7d", value_name = "DURATION")]
        expires_in: String,
    },
    /// Introduce two people you each share a channel with: once both accept, MEMBER
    /// of CHANNEL makes a channel with MEMBER2 of CHANNEL2, each vouched for by you.
    Introduce {
        /// Your channel with the first person.
        #[arg(value_parser = typed_name)]
        channel: String,
        /// The first person (they make the new channel).
        #[arg(value_parser = typed_name)]
        member: String,
        /// Your channel with the second person.
        #[arg(value_parser = typed_name)]
        channel2: String,
        /// The second person (they join it).
        #[arg(value_parser = typed_name)]
        member2: String,
        /// Seconds to wait for both to answer (your client passes the answers on
        /// whenever it runs).
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Introductions waiting for your answer.
    Introductions,
    /// Say yes to an introduction (by the id `introductions` shows).
    Accept {
        /// The introduction.
        id: String,
    },
    /// Say no to an introduction; the introducer is told.
    Decline {
        /// The introduction.
        id: String,
    },
    /// Requests to join through your invite links, with their safety numbers.
    Requests {
        /// Only this channel's.
        #[arg(value_parser = typed_name)]
        name: Option<String>,
    },
    /// Admit someone who asked to join through an invite link (after comparing
    /// safety numbers).
    Admit {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// The request's number (from `backchannel requests`).
        id: u64,
    },
    /// Refuse a request to join; the person is told.
    Refuse {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// The request's number (from `backchannel requests`).
        id: u64,
    },
    /// Join a channel.
    Join {
        /// A one-time code from `backchannel invite`, like 17-ocean-violin, or an
        /// invite link (BCJ1...) from `backchannel invite --link`.
        code: Option<String>,
        /// A welcome file from `backchannel channel add`.
        #[arg(long, value_name = "FILE")]
        welcome: Option<PathBuf>,
        /// The relay of the invitation (used with codes; default: your usual relay).
        /// Your mailbox for the channel goes on your usual relay if you have one
        /// (`init --relay`), else on this one.
        #[arg(long, value_name = "ADDR")]
        relay: Option<String>,
        /// Your local name for the channel (default: the name its creator gave it).
        #[arg(long)]
        #[arg(value_parser = typed_name)]
        name: Option<String>,
        /// With a link: seconds to wait for the inviter's answer.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Send a message, or a file (--file).
    Send {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// The text. Without it the message is read from standard input, to its end
        /// (so it never sits in the process list or the shell history).
        #[arg(conflicts_with = "file")]
        text: Option<String>,
        /// Send this file (up to 100 MiB): stored once, encrypted, on your relay;
        /// members fetch it from there.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// With --file: how long the relay keeps it, like 12h or 7d.
        #[arg(
            long,
            requires = "file",
            default_value = "48h",
            value_name = "DURATION"
        )]
        expires_in: String,
    },
    /// Show new messages (and any security alert).
    Read {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// Keep running and show messages as they arrive.
        #[arg(long)]
        follow: bool,
        /// Show the whole history, not only what is new.
        #[arg(long)]
        all: bool,
        /// Where files sent in the channel are saved (default: downloads/ in the
        /// profile directory).
        #[arg(long, value_name = "DIR")]
        save_dir: Option<PathBuf>,
    },
    /// Remove a member from a channel you administer.
    Remove {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// The member's name.
        #[arg(value_parser = typed_name)]
        member: String,
    },
    /// Leave a channel.
    Leave {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
    },
    /// Compare your view of a channel with the other members' (forks, withheld or
    /// altered messages).
    Status {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// Seconds to wait for the members' answers.
        #[arg(long, default_value_t = 5)]
        wait: u64,
    },
    /// Show the safety number you share with a member (or each member): compare it
    /// with theirs to know nobody is in between.
    Verify {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// The member (default: every other member).
        #[arg(value_parser = typed_name)]
        member: Option<String>,
        /// The numbers matched: mark the member verified.
        #[arg(long)]
        confirm: bool,
    },
    /// Replace your keys in a channel (heals the channel after a compromise).
    Update {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
    },
    /// Burn a channel: every member's device erases it (messages, keys, mailboxes)
    /// and confirms; you see who has.
    Burn {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// Seconds to wait for the members' confirmations.
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
    /// Erase this profile at once and for good: every channel, message and key. No
    /// passphrase needed.
    Panic {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Set a duress passphrase: entered instead of yours, it erases the profile and
    /// answers "wrong passphrase" (asks for it, or reads
    /// $BACKCHANNEL_DURESS_PASSPHRASE).
    Duress {
        /// Remove the duress passphrase instead.
        #[arg(long)]
        clear: bool,
    },
    /// Keep the profile open and its relays connected, and answer programs:
    /// JSON-RPC 2.0 on a Unix socket, one object per line (see docs/daemon.md).
    /// Other backchannel commands on this profile go through it meanwhile.
    Daemon {
        /// The socket to listen on (made with mode 0600; default: daemon.sock in
        /// the profile directory).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// The terminal chat: channels, conversations as they arrive, the composer;
    /// verify, invite, status and burn on keys (? for help).
    Tui,
    /// Run or inspect a relay.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// The whole story end to end, on two embedded relays.
    Demo,
    /// Load generators and measurements.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print the shell completion script (for example
    /// `backchannel completions bash > ~/.local/share/bash-completion/completions/backchannel`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (one per command) into a directory.
    Man {
        /// Where to write them (made if missing).
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ChannelCommand {
    /// Create a channel; you administer it.
    Create {
        /// Your local name for it (also its title for those who join).
        #[arg(value_parser = typed_name)]
        name: String,
        /// The relay that will hold your mailbox for this channel (default: the one
        /// given to `init --relay`).
        #[arg(long, value_name = "ADDR")]
        relay: Option<String>,
        /// xwing (post-quantum, default) or classic.
        #[arg(long, default_value = "xwing")]
        suite: String,
        /// The channel ends after this long (30m, 12h, 7d, ...): every member's
        /// device then erases it.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// Messages disappear this long after they arrive (30s, 10m, 1d, ...).
        #[arg(long, value_name = "DURATION")]
        disappear: Option<String>,
    },
    /// Set how long messages live in a channel you administer, for every member
    /// (30s, 10m, 1d, ..., or off).
    Disappear {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// How long, or `off`.
        duration: String,
    },
    /// List your channels.
    List,
    /// Show a channel and its members.
    Show {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
    },
    /// Add the owner of a key package; writes the welcome to hand to them.
    Add {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// Their key package.
        #[arg(long, value_name = "FILE")]
        key_package: PathBuf,
        /// Where to write the welcome.
        #[arg(long, value_name = "FILE")]
        welcome_out: PathBuf,
    },
}

/// A name as typed, in the form names are kept in: Unicode normal form C,
/// surrounding spaces removed (see `backchannel_proto::member::normalize_name`).
pub(crate) fn typed_name(typed: &str) -> Result<String, String> {
    Ok(backchannel_proto::member::normalize_name(typed))
}

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Load a relay and measure throughput and latency.
    Relay(RelayArgs),
    /// Measure the disk: fsync rate and raw SQLite batched inserts.
    Disk {
        /// A directory on the disk to measure (a relay's data directory's disk).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// Build a channel of N members on real relays and measure adds and messages.
    Channel(ChannelArgs),
    /// Measure the round trip of a call to a running daemon (`channels`, on one
    /// connection).
    Daemon {
        /// The daemon's socket.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Calls to make.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
    },
    /// Measure a relay's memory per idle connection.
    Idle {
        /// The relay.
        #[arg(long, value_name = "ADDR")]
        relay: String,
        /// The relay's process id (read from /proc).
        #[arg(long)]
        pid: u32,
        /// Idle connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
    },
}

#[derive(Args, Debug)]
pub(crate) struct RelayArgs {
    /// The relay to load.
    #[arg(long, value_name = "ADDR")]
    pub(crate) relay: String,
    /// Sender connections (each with its own mailbox and reader).
    #[arg(long, default_value_t = 8)]
    pub(crate) connections: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) messages: usize,
    /// Bytes per message; messages longer than one blob take several.
    #[arg(long, default_value_t = 1000)]
    pub(crate) payload_size: usize,
    /// Unacknowledged sends per connection.
    #[arg(long, default_value_t = 64)]
    pub(crate) in_flight: usize,
    /// Offered load in messages per second over all connections (0: as fast as the
    /// relay acknowledges). Latency is meaningful below the relay's capacity.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Also measure raw SQLite batched inserts in this directory (put it on the
    /// relay's disk) and report the ratio.
    #[arg(long, value_name = "DIR")]
    pub(crate) baseline_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ChannelArgs {
    /// Members of the channel, its creator included.
    #[arg(long, default_value_t = 10)]
    pub(crate) members: usize,
    /// The ciphersuite.
    #[arg(long, value_enum, default_value_t = SuiteArg::Xwing)]
    pub(crate) suite: SuiteArg,
    /// Messages the administrator sends after the last add.
    #[arg(long, default_value_t = 5)]
    pub(crate) messages: usize,
    /// Relays to use, members taking turns (default: one embedded relay).
    #[arg(long = "relay", value_name = "ADDR")]
    pub(crate) relays: Vec<String>,
    /// Medians are taken over this many of the last adds and messages; those adds
    /// are one member each.
    #[arg(long, default_value_t = 5)]
    pub(crate) last: usize,
    /// Members added per commit before the last adds (building a channel of
    /// hundreds one member at a time costs every member one rewrite of the whole
    /// tree per add: cubic in all).
    #[arg(long, default_value_t = 10)]
    pub(crate) batch: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum SuiteArg {
    /// X-Wing (ML-KEM-768 + X25519), post-quantum.
    Xwing,
    /// X25519, classical.
    Classic,
}

impl From<SuiteArg> for Suite {
    fn from(s: SuiteArg) -> Self {
        match s {
            SuiteArg::Xwing => Suite::XWing,
            SuiteArg::Classic => Suite::Classic,
        }
    }
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(crate) enum RelayCommand {
    /// Run a relay. Prints its address (bcr://...) as the first line on stdout.
    Serve(ServeArgs),
    /// Print the address of the relay whose data is in DIR.
    Address {
        /// The relay's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The host clients use, as HOST or HOST:PORT (default port 7443). Give it
        /// once per node of a relay of several nodes: the address lists them all.
        #[arg(long, value_name = "HOST[:PORT]", value_delimiter = ',')]
        public_host: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Where to accept clients.
    #[arg(
        long,
        value_name = "ADDR",
        env = "BACKCHANNEL_RELAY_LISTEN",
        default_value = "0.0.0.0:7443"
    )]
    pub(crate) listen: SocketAddr,
    /// Where the certificate and the database live.
    #[arg(long, value_name = "DIR", env = "BACKCHANNEL_RELAY_DATA")]
    pub(crate) data: PathBuf,
    /// Store in PostgreSQL instead of SQLite (many relay nodes on one database).
    #[arg(long, value_name = "URL", env = "BACKCHANNEL_RELAY_POSTGRES")]
    pub(crate) postgres: Option<String>,
    /// The certificate authorities (PEM) of the PostgreSQL server: given, the
    /// connections to the database use TLS and check its certificate and name.
    #[arg(long, value_name = "FILE", env = "BACKCHANNEL_RELAY_POSTGRES_CA")]
    pub(crate) postgres_ca: Option<PathBuf>,
    /// A TOML configuration file (default: DIR/relay.toml if it exists).
    #[arg(long, value_name = "FILE", env = "BACKCHANNEL_RELAY_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The host clients use, for the printed address, as HOST or HOST:PORT (the
    /// port defaults to the one listened on). Give it once per node of a relay
    /// of several nodes: the address lists them all, in order.
    #[arg(
        long,
        value_name = "HOST[:PORT]",
        env = "BACKCHANNEL_RELAY_PUBLIC_HOST",
        value_delimiter = ','
    )]
    pub(crate) public_host: Vec<String>,
    /// Serve /metrics and /health (plain HTTP) here.
    #[arg(long, value_name = "ADDR", env = "BACKCHANNEL_RELAY_METRICS")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Days before an unacknowledged message is deleted.
    #[arg(long, env = "BACKCHANNEL_RELAY_TTL_DAYS")]
    pub(crate) ttl_days: Option<u64>,
    /// Most messages per mailbox.
    #[arg(long, env = "BACKCHANNEL_RELAY_QUOTA_MESSAGES")]
    pub(crate) quota_messages: Option<u64>,
    /// Most bytes per mailbox.
    #[arg(long, env = "BACKCHANNEL_RELAY_QUOTA_BYTES")]
    pub(crate) quota_bytes: Option<u64>,
    /// Most connections in all.
    #[arg(long, env = "BACKCHANNEL_RELAY_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Most connections from one address.
    #[arg(long, env = "BACKCHANNEL_RELAY_MAX_CONNECTIONS_PER_IP")]
    pub(crate) max_connections_per_ip: Option<usize>,
    /// Cap on the database size in bytes; past it the relay refuses new messages
    /// (default: half of the file system, at most what it holds plus 90% of the
    /// free space; 0: no cap).
    #[arg(long, env = "BACKCHANNEL_RELAY_MAX_DB_BYTES")]
    pub(crate) max_db_bytes: Option<u64>,
}
