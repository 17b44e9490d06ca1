//! One module per command group; each imports only the leaf helpers
//! (`session`, `profile`, `output`, `error`, `cli`) and, for a command that hands
//! over to another, that command's module.

mod bench;
mod bench_channel;
mod channel;
mod daemon;
mod demo;
mod ending;
mod init;
mod intro;
mod invite;
mod links;
mod manual;
mod message;
mod relay;
mod trust;
mod tui;

use crate::cli::{ChannelCommand, Command, Global};
use crate::error::Failure;

/// Runs one command.
pub(crate) async fn run(g: Global, command: Command) -> Result<(), Failure> {
    // A daemon holding the profile answers what it serves.
    if let Some(result) = daemon::forward(&g, &command).await {
        return result;
    }
    match command {
        Command::Init { name, relay } => init::init(&g, name, relay).await,
        Command::Channel(ChannelCommand::Create {
            name,
            relay,
            suite,
            expires_in,
            disappear,
        }) => {
            let ending = channel::Ending {
                expires_in: expires_in.as_deref(),
                disappear: disappear.as_deref(),
            };
            channel::channel_create(&g, &name, relay.as_deref(), &suite, ending).await
        }
        Command::Channel(ChannelCommand::Disappear { name, duration }) => {
            ending::disappear(&g, &name, &duration).await
        }
        Command::Channel(ChannelCommand::List) => channel::channel_list(&g).await,
        Command::Channel(ChannelCommand::Show { name }) => channel::channel_show(&g, &name).await,
        Command::Channel(ChannelCommand::Add {
            name,
            key_package,
            welcome_out,
        }) => channel::channel_add(&g, &name, &key_package, &welcome_out).await,
        Command::KeyPackage {
            relay,
            out,
            name,
            suite,
        } => channel::key_package(&g, relay.as_deref(), &out, name, &suite).await,
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
        } => intro::introduce(&g, [&channel, &member, &channel2, &member2], wait).await,
        Command::Introductions => intro::introductions(&g).await,
        Command::Accept { id } => intro::answer_introduction(&g, &id, true).await,
        Command::Decline { id } => intro::answer_introduction(&g, &id, false).await,
        Command::Requests { name } => links::requests(&g, name.as_deref()).await,
        Command::Admit { name, id } => links::admit(&g, &name, id).await,
        Command::Refuse { name, id } => links::refuse(&g, &name, id).await,
        Command::Join {
            code,
            welcome,
            relay,
            name,
            wait,
        } => channel::join(&g, code, welcome, relay, name, wait).await,
        Command::Send {
            name,
            file: Some(path),
            expires_in,
            ..
        } => message::send_file(&g, &name, &path, &expires_in).await,
        Command::Send { name, text, .. } => message::send(&g, &name, text).await,
        Command::Read {
            name,
            follow,
            all,
            save_dir,
        } => message::read(&g, &name, follow, all, save_dir).await,
        Command::Remove { name, member } => channel::remove(&g, &name, &member).await,
        Command::Leave { name } => channel::leave(&g, &name).await,
        Command::Update { name } => channel::update(&g, &name).await,
        Command::Status { name, wait } => channel::status(&g, &name, wait).await,
        Command::Verify {
            name,
            member,
            confirm,
        } => trust::verify(&g, &name, member.as_deref(), confirm).await,
        Command::Burn { name, wait } => ending::burn(&g, &name, wait).await,
        Command::Panic { yes } => ending::panic(&g, yes).await,
        Command::Duress { clear } => ending::duress(&g, clear).await,
        Command::Relay(cmd) => relay::run(&g, cmd).await,
        Command::Demo => demo::run(&g).await,
        Command::Bench(cmd) => bench::run(&g, cmd).await,
        Command::Daemon { socket } => daemon::run(&g, socket).await,
        Command::Tui => tui::run(&g).await,
        Command::Completions { shell } => manual::completions(shell),
        Command::Man { out_dir } => manual::man(&out_dir),
    }
}
