//! `backchannel`: the command a person runs.
//!
//! Profiles, channels, invitations, messages, relays, the end-to-end demo and the
//! benchmarks. Exit codes: 0 success; 1 an error, explained in one line with what
//! to do; 2 a usage error; 3 a security alert (tampering detected).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bench;
mod bench_channel;
mod commands;
mod demo;
mod ending;
mod invite;
mod links;
mod output;
mod profile;
mod relay_cmd;
mod session;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A secure channel between people who trust neither the network, nor the relays,
/// nor each other's facilities.
#[derive(Parser, Debug)]
#[command(name = "backchannel", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// The profile directory (default: $BACKCHANNEL_HOME, or the platform's data
    /// directory).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Machine-readable output: JSON (one object per line where there are several).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// Send a message.
    Send {
        /// The channel.
        #[arg(value_parser = typed_name)]
        name: String,
        /// The text. Without it the message is read from standard input, to its end
        /// (so it never sits in the process list or the shell history).
        text: Option<String>,
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
    /// Run or inspect a relay.
    #[command(subcommand)]
    Relay(relay_cmd::RelayCommand),
    /// The whole story end to end, on two embedded relays.
    Demo,
    /// Load generators and measurements.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand, Debug)]
enum ChannelCommand {
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
fn typed_name(typed: &str) -> Result<String, String> {
    Ok(backchannel_proto::member::normalize_name(typed))
}

/// An error for the person: what happened, and what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
    pub(crate) code: u8,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            code: 1,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The exit code for a detected attack.
    pub(crate) fn alert(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            code: 3,
        }
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if failure.code != 3 || !failure.message.is_empty() {
                eprintln!("error: {}", failure.message);
            }
            if let Some(hint) = failure.hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let g = cli.global;
    match cli.command {
        Command::Init { name, relay } => commands::init(&g, name, relay).await,
        Command::Channel(ChannelCommand::Create {
            name,
            relay,
            suite,
            expires_in,
            disappear,
        }) => {
            let ending = commands::Ending {
                expires_in: expires_in.as_deref(),
                disappear: disappear.as_deref(),
            };
            commands::channel_create(&g, &name, relay.as_deref(), &suite, ending).await
        }
        Command::Channel(ChannelCommand::Disappear { name, duration }) => {
            ending::disappear(&g, &name, &duration).await
        }
        Command::Channel(ChannelCommand::List) => commands::channel_list(&g).await,
        Command::Channel(ChannelCommand::Show { name }) => commands::channel_show(&g, &name).await,
        Command::Channel(ChannelCommand::Add {
            name,
            key_package,
            welcome_out,
        }) => commands::channel_add(&g, &name, &key_package, &welcome_out).await,
        Command::KeyPackage {
            relay,
            out,
            name,
            suite,
        } => commands::key_package(&g, relay.as_deref(), &out, name, &suite).await,
        Command::Invite {
            name,
            relay,
            link: true,
            no_approval,
            expires_in,
            ..
        } => links::invite_link(&g, &name, relay.as_deref(), no_approval, &expires_in).await,
        Command::Invite {
            name, relay, wait, ..
        } => invite::invite(&g, &name, relay.as_deref(), wait).await,
        Command::Introduce {
            channel,
            member,
            channel2,
            member2,
            wait,
        } => links::introduce(&g, [&channel, &member, &channel2, &member2], wait).await,
        Command::Introductions => links::introductions(&g).await,
        Command::Accept { id } => links::answer_introduction(&g, &id, true).await,
        Command::Decline { id } => links::answer_introduction(&g, &id, false).await,
        Command::Requests { name } => links::requests(&g, name.as_deref()).await,
        Command::Admit { name, id } => links::admit(&g, &name, id).await,
        Command::Refuse { name, id } => links::refuse(&g, &name, id).await,
        Command::Join {
            code,
            welcome,
            relay,
            name,
            wait,
        } => commands::join(&g, code, welcome, relay, name, wait).await,
        Command::Send { name, text } => commands::send(&g, &name, text).await,
        Command::Read { name, follow, all } => commands::read(&g, &name, follow, all).await,
        Command::Remove { name, member } => commands::remove(&g, &name, &member).await,
        Command::Leave { name } => commands::leave(&g, &name).await,
        Command::Update { name } => commands::update(&g, &name).await,
        Command::Status { name, wait } => commands::status(&g, &name, wait).await,
        Command::Verify {
            name,
            member,
            confirm,
        } => trust::verify(&g, &name, member.as_deref(), confirm).await,
        Command::Burn { name, wait } => ending::burn(&g, &name, wait).await,
        Command::Panic { yes } => ending::panic(&g, yes).await,
        Command::Duress { clear } => ending::duress(&g, clear).await,
        Command::Relay(cmd) => relay_cmd::run(&g, cmd).await,
        Command::Demo => demo::run(&g).await,
        Command::Bench(cmd) => bench::run(&g, cmd).await,
    }
}
