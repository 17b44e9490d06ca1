//! `backchannel daemon`: one process keeps the profile open and its relays
//! connected, and answers programs over JSON-RPC 2.0 (see `docs/daemon.md`).
//! `read --follow` serves the same calls while it runs, so that other commands
//! on the profile go through it ([`forward`]) instead of waiting for the lock.
//!
//! Every method is a thin layer over the client, as the commands are: the same
//! functions choose relays, read and mark messages and alerts, and word notices.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use backchannel_client::{Arrival, Client, InviteError};
use backchannel_core::ChannelId;
use backchannel_proto::code::InviteCode;
use backchannel_proto::link::InviteLink;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use crate::cli::{ChannelCommand, Command, Global};
use crate::error::Failure;
use crate::output;
use crate::profile::{home, open_client, own_name, save_dir};
use crate::rpc::{self, Call, Host, RpcError, code, flag, required, text_param};
use crate::session::{
    catch_up, chosen_relay, history_end, invitation_relay, joiner_mailbox_relay, messages_after,
    parse_duration, relay_addr, retire_erased, save_attachments, take_unread,
};

/// Most messages one `read` answers with (`more` says to ask again): an answer
/// stays a few MiB at most.
const READ_PAGE: usize = 200;

/// Most invitations waiting for their joiner at once.
const MAX_INVITATIONS: usize = 8;

/// How long a send waits for the relay before answering that it is queued.
const SEND_WAIT: Duration = Duration::from_secs(5);

/// What the owner of the profile keeps for its callers: where each channel's
/// notifications stand, the alerts already told, invitations waiting.
pub(crate) struct Service {
    host: Host,
    home: PathBuf,
    /// Looks whether the profile is still on disk (`panic` erases it under us).
    watch: tokio::time::Interval,
    /// It was erased: stop at once, sending nothing.
    pub(crate) erased: bool,
    seen: HashMap<ChannelId, u64>,
    told: HashSet<u64>,
    invitations: JoinSet<(String, Result<Arrival, InviteError>)>,
}

/// Something for the owner to do.
pub(crate) enum Work {
    Call(Call),
    Arrived(String, Result<Arrival, InviteError>),
}

impl Service {
    /// Listens at `socket` (default: `daemon.sock` in the profile directory).
    /// Notifications start from what the profile holds now.
    pub(crate) async fn start(
        g: &Global,
        client: &Client,
        socket: Option<PathBuf>,
    ) -> Result<Self, Failure> {
        let home = home(g)?;
        let socket = socket.unwrap_or_else(|| home.join(rpc::DEFAULT_SOCKET));
        let host = Host::start(&home, &socket).await?;
        let mut service = Self {
            host,
            home,
            watch: tokio::time::interval(Duration::from_millis(500)),
            erased: false,
            seen: HashMap::new(),
            told: HashSet::new(),
            invitations: JoinSet::new(),
        };
        for c in client.engine().channels() {
            let (last, _) = history_end(client, &c.name, 0)?;
            service.seen.insert(c.id, last);
            for a in client.store().unshown_alerts(&c.id)? {
                service.told.insert(a.id);
            }
        }
        Ok(service)
    }

    /// Stops listening. After an erasure, removes the profile's directory if
    /// our socket was all that was left in it.
    pub(crate) fn close(self) {
        let Self {
            host, home, erased, ..
        } = self;
        drop(host);
        if erased {
            let _ = std::fs::remove_dir(&home);
        }
    }

    pub(crate) fn socket(&self) -> &std::path::Path {
        self.host.socket()
    }

    /// The next thing to do (cancel-safe). None when the profile was erased (or
    /// the listener is gone): time to stop.
    pub(crate) async fn next(&mut self) -> Option<Work> {
        loop {
            tokio::select! {
                _ = self.watch.tick() => {
                    if !backchannel_store::Store::exists(&self.home) {
                        eprintln!("The profile was erased; stopping.");
                        self.erased = true;
                        return None;
                    }
                }
                call = self.host.next() => return call.map(Work::Call),
                Some(done) = self.invitations.join_next(), if !self.invitations.is_empty() => {
                    return Some(match done {
                        Ok((channel, arrival)) => Work::Arrived(channel, arrival),
                        Err(_) => Work::Arrived(String::new(), Err(InviteError::Expired)),
                    });
                }
            }
        }
    }

    /// Does it. Returns what a person should hear of it (someone joined, or an
    /// invitation failed).
    pub(crate) async fn handle(
        &mut self,
        g: &Global,
        client: &mut Client,
        work: Work,
    ) -> Option<String> {
        match work {
            Work::Call(call) => {
                let result = self.answer(g, client, &call.method, &call.params).await;
                call.answer(result);
                // What the call changed (a send, a join) is told to subscribers.
                self.tell(client);
                None
            }
            Work::Arrived(channel, arrival) => {
                let result = match arrival {
                    Ok(arrival) => client.admit_arrived(&channel, arrival).await,
                    Err(e) => Err(e),
                };
                let said = match result {
                    Ok(member) => {
                        let _ = client.flush(SEND_WAIT).await;
                        self.host
                            .notify("joined", json!({"channel": channel, "member": member}));
                        format!("{member} joined '{channel}' with the code")
                    }
                    Err(e) => {
                        self.host.notify(
                            "invite_failed",
                            json!({"channel": channel, "reason": e.to_string()}),
                        );
                        format!("the invitation to '{channel}' failed: {e}")
                    }
                };
                self.tell(client);
                Some(said)
            }
        }
    }

    /// After the client handled relay events: tells subscribers what arrived (new
    /// messages, alerts, notices, erasures) and prints it as every command does.
    /// Returns the channels erased.
    pub(crate) fn after_step(&mut self, g: &Global, client: &mut Client) -> Vec<String> {
        let mut gone = Vec::new();
        for change in self.absorb(client) {
            match change.machine {
                None => eprintln!("{}", output::for_terminal(&change.human, "  ")),
                Some(machine) => crate::session::print(g, change.human, machine),
            }
            gone.extend(change.erased);
        }
        gone
    }

    /// The same without printing: the changes, for a caller that shows them itself.
    pub(crate) fn absorb(&mut self, client: &mut Client) -> Vec<crate::session::Change> {
        let events = client.drain_events();
        let changes = crate::session::describe_changes(client, &events);
        for change in &changes {
            match &change.erased {
                Some(name) => self.host.notify("erased", json!({"channel": name})),
                None if change.machine.is_none() => {
                    self.host.notify("notice", json!({"text": change.human}));
                }
                None => {}
            }
        }
        self.tell(client);
        changes
    }

    /// Notifies new messages and alerts of every channel.
    fn tell(&mut self, client: &Client) {
        for c in client.engine().channels() {
            let mut after = self.seen.get(&c.id).copied().unwrap_or(0);
            while let Ok((views, last)) = messages_after(client, &c.name, after, 500) {
                if last == after {
                    break;
                }
                after = last;
                for view in views {
                    self.host
                        .notify("message", serde_json::to_value(&view).unwrap_or_default());
                }
            }
            self.seen.insert(c.id, after);
            let Ok(alerts) = client.store().unshown_alerts(&c.id) else {
                continue;
            };
            for a in alerts {
                if self.told.insert(a.id) {
                    let line = output::alert(&c.name, &a, true);
                    self.host
                        .notify("alert", serde_json::from_str(&line).unwrap_or_default());
                }
            }
        }
    }

    /// Answers one call (the terminal chat calls the same methods).
    pub(crate) async fn answer(
        &mut self,
        g: &Global,
        client: &mut Client,
        method: &str,
        params: &Map<String, Value>,
    ) -> Result<Value, RpcError> {
        match method {
            "channels" => channels(client),
            "send" => send(client, params).await,
            "read" => read(g, client, params).await,
            "members" => members(client, params),
            "verify" => verify(client, params),
            "invite" => self.invite(client, params).await,
            "join" => join(g, client, params).await,
            "burn" => burn(client, params).await,
            other => Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!("no method '{other}'"),
            )
            .with_hint("the methods: channels, send, read, subscribe, members, verify, invite, join, burn")),
        }
    }

    /// `invite {channel}`: answers with the code at once; the joiner is admitted
    /// when they come, while other calls go on (`joined` or `invite_failed` is
    /// notified).
    async fn invite(
        &mut self,
        client: &mut Client,
        params: &Map<String, Value>,
    ) -> Result<Value, RpcError> {
        let name = channel_param(client, params)?;
        let summary = client.engine().channel(&name).map_err(failed)?;
        if !summary.admin {
            return Err(RpcError::new(
                code::FAILED,
                format!("only the administrator of '{name}' can invite to it"),
            ));
        }
        let relay = match text_param(params, "relay")? {
            Some(r) => relay_addr(r)?,
            None => invitation_relay(&summary, None)?,
        };
        if self.invitations.len() >= MAX_INVITATIONS {
            return Err(RpcError::new(
                code::FAILED,
                format!("{MAX_INVITATIONS} invitations are open already"),
            )
            .with_hint("wait until one is used or expires"));
        }
        let invitation = client.open_invitation(&relay).await.map_err(failed)?;
        let code = invitation.code.to_string();
        let expires_in = invitation.expires_in;
        self.invitations
            .spawn(async move { (name, invitation.arrival(expires_in).await) });
        Ok(json!({
            "code": code,
            "relay": relay.to_string(),
            "expires_in_secs": expires_in.as_secs(),
        }))
    }
}

fn failed(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(code::FAILED, e.to_string())
}

/// The `channel` parameter, naming a channel of the profile.
fn channel_param(client: &Client, params: &Map<String, Value>) -> Result<String, RpcError> {
    let name = backchannel_proto::member::normalize_name(required(params, "channel")?);
    if client.engine().channel(name.as_str()).is_err() {
        return Err(RpcError::new(
            code::NO_CHANNEL,
            format!("there is no channel '{name}'"),
        ));
    }
    Ok(name)
}

fn channels(client: &Client) -> Result<Value, RpcError> {
    let mut list = Vec::new();
    for c in client.engine().channels() {
        let cursor = crate::session::read_cursor(client, &c.id)?;
        let (_, unread) = history_end(client, &c.name, cursor)?;
        let alerts = client.store().unshown_alerts(&c.id).map_err(failed)?.len();
        let waiting = client
            .engine()
            .pending(c.name.as_str())
            .map(|p| !p.is_empty())
            .unwrap_or(false);
        list.push(json!({
            "name": c.name,
            "status": super::channel::status_word(c.status),
            "members": c.members.len(),
            "admin": c.admin,
            "suite": c.suite.name(),
            "unread": unread,
            "alerts": alerts,
            "waiting": waiting,
        }));
    }
    Ok(Value::Array(list))
}

async fn send(client: &mut Client, params: &Map<String, Value>) -> Result<Value, RpcError> {
    let name = channel_param(client, params)?;
    if let Some(file) = text_param(params, "file")? {
        let expires_in = match text_param(params, "expires_in")? {
            Some(d) => match parse_duration(d)? {
                0 => {
                    return Err(RpcError::params(
                        "\"expires_in\" must be a positive duration",
                    ));
                }
                secs => Duration::from_secs(secs),
            },
            None => backchannel_client::attachment::DEFAULT_EXPIRY,
        };
        let path = std::path::Path::new(file);
        if !path.is_absolute() {
            return Err(RpcError::params("\"file\" must be an absolute path"));
        }
        let quiet: backchannel_client::attachment::Progress = std::sync::Arc::new(|_| {});
        let descriptor = client
            .send_attachment(&name, path, expires_in, quiet)
            .await
            .map_err(failed)?;
        let queued = client.flush(SEND_WAIT).await.is_err();
        return Ok(json!({
            "channel": name,
            "sent": true,
            "queued": queued,
            "file": descriptor.name,
            "size": descriptor.size,
            "expires_at": output::rfc3339(backchannel_core::Timestamp(descriptor.expires_at)),
        }));
    }
    let text = required(params, "text")?;
    if text.trim().is_empty() {
        return Err(RpcError::params("the text is empty; nothing was sent"));
    }
    client.send_text(&name, text).map_err(failed)?;
    let queued = client.flush(SEND_WAIT).await.is_err();
    Ok(json!({"channel": name, "sent": true, "queued": queued}))
}

async fn read(g: &Global, client: &Client, params: &Map<String, Value>) -> Result<Value, RpcError> {
    let name = channel_param(client, params)?;
    let given = text_param(params, "save_dir")?.map(std::path::Path::new);
    if given.is_some_and(|d| !d.is_absolute()) {
        return Err(RpcError::params("\"save_dir\" must be an absolute path"));
    }
    let dir = save_dir(g, given)?;
    let mut messages = take_unread(client, &name, flag(params, "all")?, READ_PAGE)?;
    save_attachments(g, client, &name, &mut messages, &dir).await?;
    let more = messages.len() == READ_PAGE;
    let id = client.engine().channel_id(name.as_str()).map_err(failed)?;
    let store = client.store();
    let alerts = store.unshown_alerts(&id).map_err(failed)?;
    let ids: Vec<u64> = alerts.iter().map(|a| a.id).collect();
    store.mark_alerts_shown(&ids).map_err(failed)?;
    let alerts: Vec<Value> = alerts
        .iter()
        .filter_map(|a| serde_json::from_str(&output::alert(&name, a, true)).ok())
        .collect();
    let pending = client.engine().pending(name.as_str()).map_err(failed)?;
    let waiting: Vec<String> = output::pending(&name, &pending, false)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    let pending = output::pending(&name, &pending, true)
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("pending").cloned());
    Ok(json!({
        "channel": name,
        "messages": messages,
        "more": more,
        "alerts": alerts,
        "waiting": waiting,
        "pending": pending,
    }))
}

fn members(client: &Client, params: &Map<String, Value>) -> Result<Value, RpcError> {
    let name = channel_param(client, params)?;
    let summary = client.engine().channel(name.as_str()).map_err(failed)?;
    let list: Vec<Value> = summary
        .members
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "you": m.is_self,
                "admin": m.admin,
                "verified": m.is_self || summary.verified.contains(&m.member),
                "introduced_by": client.introduced_by(&summary.id, &m.member),
                "relay": m.mailbox.relay.to_string(),
            })
        })
        .collect();
    Ok(json!({"channel": name, "members": list}))
}

fn verify(client: &mut Client, params: &Map<String, Value>) -> Result<Value, RpcError> {
    let name = channel_param(client, params)?;
    let member = backchannel_proto::member::normalize_name(required(params, "member")?);
    let number = client
        .engine()
        .safety_number(name.as_str(), &member)
        .map_err(failed)?;
    if flag(params, "confirm")? {
        // The number the person compared, when given, must still be the number:
        // a key that changed since is not what they checked.
        if let Some(compared) = text_param(params, "safety_number")?
            && compared != number
        {
            return Err(RpcError::new(
                code::FAILED,
                format!("{member}'s safety number changed since it was shown; nothing was marked"),
            )
            .with_hint("compare the new number, then confirm again"));
        }
        client.confirm_verified(&name, &member).map_err(failed)?;
    }
    let summary = client.engine().channel(name.as_str()).map_err(failed)?;
    let verified = summary
        .members
        .iter()
        .any(|m| m.name == member && summary.verified.contains(&m.member));
    Ok(json!({
        "channel": name,
        "member": member,
        "safety_number": number,
        "verified": verified,
    }))
}

async fn join(
    g: &Global,
    client: &mut Client,
    params: &Map<String, Value>,
) -> Result<Value, RpcError> {
    let local = text_param(params, "name")?.map(backchannel_proto::member::normalize_name);
    let me = own_name(client)?;
    if let Some(text) = text_param(params, "link")? {
        let link: InviteLink = text
            .parse()
            .map_err(|e| RpcError::params(format!("that invite link cannot be read: {e}")))?;
        let mailbox_relay = joiner_mailbox_relay(client, &link.relay)?;
        let request = client
            .request_to_join(&link, &me, local.as_deref(), &mailbox_relay)
            .await
            .map_err(failed)?;
        let _ = client.flush(SEND_WAIT).await;
        // The answer comes as a notice when the inviter decides.
        return Ok(json!({"requested": true, "safety_number": request.safety_number}));
    }
    let code: InviteCode = required(params, "code")?
        .parse()
        .map_err(|e| RpcError::params(format!("that code cannot be read: {e}")))?;
    let relay = chosen_relay(client, text_param(params, "relay")?)?;
    let mailbox_relay = joiner_mailbox_relay(client, &relay)?;
    let (id, inviter) = client
        .join_with_code(&relay, &mailbox_relay, &code, &me, local.as_deref())
        .await
        .map_err(failed)?;
    let summary = crate::session::channel_by_id(client, id)?;
    catch_up(g, client).await;
    Ok(json!({
        "channel": summary.name,
        "invited_by": inviter,
        "members": summary.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
    }))
}

async fn burn(client: &mut Client, params: &Map<String, Value>) -> Result<Value, RpcError> {
    let name = channel_param(client, params)?;
    client.burn(&name).map_err(failed)?;
    let queued = client.flush(SEND_WAIT).await.is_err();
    // Receipts come as the members' devices erase it; the channel's erasure here
    // is notified (`erased`) once every member confirmed.
    Ok(json!({"channel": name, "burning": true, "queued": queued}))
}

/// `backchannel daemon`.
pub(crate) async fn run(g: &Global, socket: Option<PathBuf>) -> Result<(), Failure> {
    let mut client = open_client(g).await?;
    catch_up(g, &mut client).await;
    let mut service = Service::start(g, &client, socket).await?;
    // The socket first, alone on its line, for scripts that start the daemon.
    crate::session::print(
        g,
        format!("Listening on {}", service.socket().display()),
        json!({"socket": service.socket()}),
    );
    // Made once, so that a signal that comes while a call runs is not lost.
    use tokio::signal::unix::{SignalKind, signal};
    let watch =
        |kind| signal(kind).map_err(|e| Failure::new(format!("cannot watch for signals: {e}")));
    let (mut terminate, mut interrupt, mut hangup) = (
        watch(SignalKind::terminate())?,
        watch(SignalKind::interrupt())?,
        watch(SignalKind::hangup())?,
    );
    loop {
        tokio::select! {
            stepped = client.step(Duration::from_millis(500)) => {
                match stepped {
                    Ok(true) => {
                        if !service.after_step(g, &mut client).is_empty() {
                            let _ = client.flush(SEND_WAIT).await;
                            retire_erased(&mut client).await;
                        }
                    }
                    Ok(false) => {}
                    // The store failed: say so and keep serving (the message comes
                    // again, unacknowledged).
                    Err(e) => eprintln!("warning: {e}"),
                }
            }
            work = service.next() => match work {
                Some(work) => {
                    if let Some(said) = service.handle(g, &mut client, work).await {
                        eprintln!("{}", output::for_terminal(&said, "  "));
                    }
                }
                None => break,
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => break,
        }
    }
    // What is queued goes out if the relays take it now; else next time.
    if !service.erased && backchannel_store::Store::exists(&home(g)?) {
        let _ = client.flush(SEND_WAIT).await;
    }
    service.close();
    Ok(())
}

/// Runs a command through the daemon (or `read --follow`) that holds the
/// profile, if one does and the command is one it serves. None: run it here
/// (waiting for the profile if it is held).
pub(crate) async fn forward(g: &Global, command: &Command) -> Option<Result<(), Failure>> {
    let home = home(g).ok()?;
    if !crate::lock::busy(&home) {
        return None;
    }
    let socket = rpc::advertised(&home, crate::lock::holder(&home)?)?;
    Some(match command {
        Command::Send {
            name,
            text,
            file: None,
            ..
        } => forward_send(g, &socket, name, text.clone()).await,
        Command::Send {
            name,
            file: Some(path),
            expires_in,
            ..
        } => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            forward_file(g, &socket, name, &path, expires_in).await
        }
        Command::Read {
            name,
            follow: false,
            all,
            save_dir,
        } => forward_read(g, &socket, name, *all, save_dir.as_deref()).await,
        Command::Channel(ChannelCommand::List) if g.json => {
            match rpc::call(&socket, "channels", json!({})).await {
                Ok(Value::Array(list)) => {
                    for c in list {
                        println!("{c}");
                    }
                    Ok(())
                }
                Ok(_) => Err(Failure::new("the daemon answered something unexpected")),
                Err(e) => Err(e),
            }
        }
        _ => return None,
    })
}

async fn forward_send(
    g: &Global,
    socket: &rpc::Daemon,
    name: &str,
    text: Option<String>,
) -> Result<(), Failure> {
    let text = crate::session::message_text(text)?;
    let result = rpc::call(socket, "send", json!({"channel": name, "text": text})).await?;
    let queued = result
        .get("queued")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    crate::session::print(
        g,
        if queued {
            format!("Queued for '{name}': it goes out when the relay answers (through the daemon).")
        } else {
            format!("Sent to '{name}'.")
        },
        json!({"channel": name, "sent": true, "queued": queued}),
    );
    Ok(())
}

async fn forward_file(
    g: &Global,
    socket: &rpc::Daemon,
    name: &str,
    path: &std::path::Path,
    expires_in: &str,
) -> Result<(), Failure> {
    let params = json!({"channel": name, "file": path, "expires_in": expires_in});
    let result = rpc::call(socket, "send", params).await?;
    let file = result
        .get("file")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let size = result
        .get("size")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    crate::session::print(
        g,
        format!(
            "Sent {} ({}) to '{name}' (through the daemon).",
            output::for_terminal(file, ""),
            output::size(size)
        ),
        result.clone(),
    );
    Ok(())
}

async fn forward_read(
    g: &Global,
    socket: &rpc::Daemon,
    name: &str,
    all: bool,
    save_dir: Option<&std::path::Path>,
) -> Result<(), Failure> {
    // The daemon saves files where this command would have.
    let dir = std::path::absolute(crate::profile::save_dir(g, save_dir)?)
        .map_err(|e| Failure::new(format!("cannot use the save directory: {e}")))?;
    let mut result = rpc::call(
        socket,
        "read",
        json!({"channel": name, "all": all, "save_dir": dir}),
    )
    .await?;
    let mut alerts = Vec::new();
    loop {
        for m in result
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let Ok(view) = serde_json::from_value::<output::MessageView>(m) else {
                continue;
            };
            if g.json {
                println!("{}", serde_json::to_string(&view).unwrap_or_default());
            } else {
                println!("{}", view.line());
            }
        }
        alerts.extend(
            result
                .get("alerts")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
        if result.get("more") != Some(&Value::Bool(true)) {
            break;
        }
        result = rpc::call(socket, "read", json!({"channel": name, "save_dir": dir})).await?;
    }
    let list = |key: &str| {
        result
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for a in &alerts {
        if g.json {
            println!("{a}");
        } else {
            let text = a.get("message").and_then(Value::as_str).unwrap_or_default();
            eprintln!(
                "!! SECURITY ALERT in {name}: {}",
                output::for_terminal(text, "   ")
            );
        }
    }
    if g.json {
        if let Some(p) = result.get("pending").filter(|p| !p.is_null()) {
            println!("{}", json!({"channel": name, "pending": p}));
        }
    } else {
        for w in list("waiting") {
            if let Some(w) = w.as_str() {
                eprintln!("{w}");
            }
        }
    }
    if !alerts.is_empty() {
        return Err(Failure::alert(format!(
            "{} security alert(s) in '{name}' (shown above); do not trust what they concern",
            alerts.len()
        )));
    }
    Ok(())
}
