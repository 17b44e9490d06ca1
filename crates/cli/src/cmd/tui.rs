//! `backchannel tui`: the terminal chat.
//!
//! Channels on the left (unread count, `!` for an alert, `~` while something is
//! awaited), the conversation on the right with alerts in place, the composer at
//! the bottom. It holds the profile like the daemon and serves its socket, so
//! other commands on the profile go through it; every action is one of the
//! daemon's methods (`daemon::Service::answer`), and what it shows goes through
//! the same sanitising as the command line's output.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use backchannel_client::attachment::{AttachmentError, download};
use tokio::task::JoinSet;

use backchannel_client::Client;
use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures_util::StreamExt as _;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph};
use serde_json::{Map, Value, json};

use super::daemon::Service;
use crate::cli::Global;
use crate::error::Failure;
use crate::output::{self, for_terminal};
use crate::profile::{open_client, save_dir};
use crate::session::{
    catch_up, history_end, messages_after, plan_fetches, read_cursor, record_fetch,
};

/// Messages of a channel shown at most (the newest).
const SHOWN: usize = 2000;

/// One line of a conversation.
enum Entry {
    Message(Box<output::MessageView>),
    Alert(String),
}

/// A channel in the list.
struct Row {
    name: String,
    unread: usize,
    alerts: usize,
    waiting: bool,
}

/// A window over the conversation.
/// Each names the channel it was opened for: what it does applies there, whatever
/// is selected by then.
enum Popup {
    Help,
    Verify {
        channel: String,
        members: Vec<(String, String, bool)>,
        at: usize,
    },
    Lines(String, Vec<String>),
    Burn {
        channel: String,
    },
}

/// A file being fetched in the background: its channel, its message, the result.
type Fetched = (
    String,
    Box<output::MessageView>,
    Result<PathBuf, AttachmentError>,
);

struct App {
    rows: Vec<Row>,
    selected: usize,
    /// The channel the conversation shows (None: none yet).
    showing: Option<String>,
    entries: Vec<Entry>,
    /// The last history position shown of that channel.
    shown_to: u64,
    /// What is typed, per channel: switching never sends one channel's text to
    /// another.
    composers: HashMap<String, String>,
    popup: Option<Popup>,
    /// Lines scrolled back from the newest.
    scroll: usize,
    status: String,
    /// Notices (join requests, introductions, erasures), newest last.
    notes: Vec<String>,
    /// Alerts shown this session, per channel: they stay in view when switching.
    alerts: HashMap<String, Vec<String>>,
    downloads: JoinSet<Fetched>,
    fetching: HashSet<u64>,
    quit: bool,
}

impl App {
    fn channel(&self) -> Option<&str> {
        self.rows.get(self.selected).map(|r| r.name.as_str())
    }

    fn composer(&mut self) -> &mut String {
        let name = self.channel().unwrap_or_default().to_owned();
        self.composers.entry(name).or_default()
    }

    fn note(&mut self, text: String) {
        self.status.clone_from(&text);
        self.notes.push(text);
        if self.notes.len() > 200 {
            self.notes.remove(0);
        }
    }
}

pub(crate) async fn run(g: &Global) -> Result<(), Failure> {
    if !std::io::stdout().is_terminal() {
        return Err(Failure::new("the terminal chat needs a terminal")
            .hint("run it in a terminal; programs use `backchannel daemon`"));
    }
    let mut client = open_client(g).await?;
    catch_up(g, &mut client).await;
    let mut service = Service::start(g, &client, None).await?;
    let _ = HOME.set(g.home.clone());
    let q = quiet_global();
    let mut app = App {
        rows: Vec::new(),
        selected: 0,
        showing: None,
        entries: Vec::new(),
        shown_to: 0,
        composers: HashMap::new(),
        popup: None,
        scroll: 0,
        status: "? for help".into(),
        notes: Vec::new(),
        alerts: HashMap::new(),
        downloads: JoinSet::new(),
        fetching: HashSet::new(),
        quit: false,
    };
    // The screen first: nothing is marked read before it can be shown.
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            let _ = ratatui::try_restore();
            return Err(Failure::new(format!("cannot take over the terminal: {e}")));
        }
    };
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste);
    refresh_rows(&client, &mut app);
    let mut keys = EventStream::new();
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| Failure::new(format!("cannot watch for signals: {e}")))?;
    let result = loop {
        if let Err(e) = terminal.draw(|f| draw(f, &app)) {
            break Err(Failure::new(format!("cannot draw: {e}")));
        }
        if app.quit {
            break Ok(());
        }
        tokio::select! {
            key = keys.next() => match key {
                Some(Ok(TermEvent::Key(key))) if key.kind == KeyEventKind::Press => {
                    on_key(&q, &mut client, &mut service, &mut app, key).await;
                }
                // Pasted text is text: its line breaks and tabs send or switch
                // nothing, and no key in it answers a question.
                Some(Ok(TermEvent::Paste(text))) if app.popup.is_none() => {
                    let composer = app.composer();
                    let room = 60_000usize.saturating_sub(composer.len());
                    composer.extend(text.chars().take(room));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break Ok(()),
            },
            stepped = client.step(Duration::from_millis(200)) => {
                if let Ok(true) = stepped {
                    let mut erased = false;
                    for change in service.absorb(&mut client) {
                        erased |= change.erased.is_some();
                        app.note(change.human);
                    }
                    if erased {
                        // The receipt goes, and our mailboxes for it at the relays.
                        let _ = client.flush(Duration::from_secs(5)).await;
                        let _ = client.retire_closed().await;
                    }
                    refresh_rows(&client, &mut app);
                    more(&q, &client, &mut app);
                }
            }
            work = service.next() => match work {
                Some(work) => {
                    if let Some(said) = service.handle(&q, &mut client, work).await {
                        app.note(said);
                    }
                    refresh_rows(&client, &mut app);
                    more(&q, &client, &mut app);
                }
                None => break Ok(()),
            },
            Some(done) = app.downloads.join_next(), if !app.downloads.is_empty() => {
                if let Ok((channel, mut view, fetched)) = done {
                    app.fetching.remove(&view.position);
                    let _ = record_fetch(&client, &channel, &mut view, fetched);
                    let position = view.position;
                    for entry in &mut app.entries {
                        if let Entry::Message(shown) = entry
                            && shown.position == position
                        {
                            shown.attachment.clone_from(&view.attachment);
                        }
                    }
                    // A file that failed a check is an alert in its channel.
                    refresh_rows(&client, &mut app);
                    more(&q, &client, &mut app);
                }
            }
            _ = terminate.recv() => break Ok(()),
            _ = redraw.tick() => {}
        }
    };
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
    let _ = ratatui::try_restore();
    app.downloads.abort_all();
    let erased = service.erased;
    service.close();
    if !erased {
        let _ = client.flush(Duration::from_secs(5)).await;
    }
    result
}

/// Lists the channels again; if the one shown is gone (burned, expired), shows
/// another from its start.
fn refresh_rows(client: &Client, app: &mut App) {
    let current = app.channel().map(str::to_owned);
    app.rows = client
        .engine()
        .channels()
        .into_iter()
        .map(|c| {
            let unread = read_cursor(client, &c.id)
                .and_then(|cursor| history_end(client, &c.name, cursor))
                .map(|(_, n)| n)
                .unwrap_or(0);
            Row {
                alerts: client
                    .store()
                    .unshown_alerts(&c.id)
                    .map(|a| a.len())
                    .unwrap_or(0),
                waiting: client
                    .engine()
                    .pending(c.name.as_str())
                    .is_ok_and(|p| !p.is_empty()),
                unread,
                name: c.name,
            }
        })
        .collect();
    if let Some(name) = current
        && let Some(i) = app.rows.iter().position(|r| r.name == name)
    {
        app.selected = i;
    }
    app.selected = app.selected.min(app.rows.len().saturating_sub(1));
    if app.channel() != app.showing.as_deref() {
        load_channel(&quiet_global(), client, app);
    }
}

/// The options of the chat's own calls (only `--home` matters to them).
fn quiet_global() -> Global {
    Global {
        home: HOME.get().cloned().flatten(),
        json: true,
    }
}

/// The profile directory given on the command line, for [`quiet_global`].
static HOME: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Shows the selected channel: the newest [`SHOWN`] messages, but never past
/// the first unread (nothing is marked read that was not on the screen).
fn load_channel(g: &Global, client: &Client, app: &mut App) {
    app.entries.clear();
    app.shown_to = 0;
    app.scroll = 0;
    app.showing = app.channel().map(str::to_owned);
    let Some(name) = app.showing.clone() else {
        return;
    };
    let Ok(id) = client.engine().channel_id(name.as_str()) else {
        return;
    };
    let (_, total) = history_end(client, &name, 0).unwrap_or((0, 0));
    let unread = read_cursor(client, &id)
        .and_then(|c| history_end(client, &name, c))
        .map_or(total, |(_, n)| n);
    let mut skip = total.saturating_sub(SHOWN).min(total - unread.min(total));
    while skip > 0 {
        let Ok((views, last)) = messages_after(client, &name, app.shown_to, skip.min(500)) else {
            break;
        };
        if views.is_empty() {
            break;
        }
        skip = skip.saturating_sub(views.len());
        app.shown_to = last;
    }
    for text in app.alerts.get(&name).cloned().unwrap_or_default() {
        app.entries.push(Entry::Alert(text));
    }
    more(g, client, app);
}

/// Appends what came to the shown channel since it was last shown (files are
/// fetched in the background), and new alerts in place; moves the read cursor
/// over what is now on the screen.
fn more(g: &Global, client: &Client, app: &mut App) {
    let Some(name) = app.showing.clone() else {
        return;
    };
    let Ok(dir) = save_dir(g, None) else {
        return;
    };
    while let Ok((mut views, last)) = messages_after(client, &name, app.shown_to, 500) {
        if last == app.shown_to {
            break;
        }
        app.shown_to = last;
        for i in plan_fetches(client, &name, &mut views, false).unwrap_or_default() {
            let Some(view) = views.get(i) else { continue };
            let Some(descriptor) = view.descriptor.clone() else {
                continue;
            };
            if !app.fetching.insert(view.position) {
                continue;
            }
            let (channel, view, dir) = (name.clone(), Box::new(view.clone()), dir.clone());
            app.downloads.spawn(async move {
                let quiet: backchannel_client::attachment::Progress = std::sync::Arc::new(|_| {});
                let fetched = download(&descriptor, &dir, quiet).await;
                (channel, view, fetched)
            });
        }
        app.entries
            .extend(views.into_iter().map(|v| Entry::Message(Box::new(v))));
    }
    if let Ok(id) = client.engine().channel_id(name.as_str()) {
        if read_cursor(client, &id).is_ok_and(|c| c < app.shown_to) {
            let _ =
                client
                    .store()
                    .set_channel_setting(&id, "read-cursor", &app.shown_to.to_string());
        }
        if let Ok(alerts) = client.store().unshown_alerts(&id) {
            let ids: Vec<u64> = alerts.iter().map(|a| a.id).collect();
            for a in alerts {
                app.alerts
                    .entry(name.clone())
                    .or_default()
                    .push(a.text.clone());
                app.entries.push(Entry::Alert(a.text));
            }
            let _ = client.store().mark_alerts_shown(&ids);
        }
    }
    if let Some(row) = app.rows.get_mut(app.selected) {
        row.unread = 0;
        row.alerts = 0;
    }
}

/// A field of a JSON answer (null when absent).
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn params(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

async fn call(
    g: &Global,
    client: &mut Client,
    service: &mut Service,
    method: &str,
    p: Map<String, Value>,
) -> Result<Value, String> {
    service
        .answer(g, client, method, &p)
        .await
        .map_err(|e| e.message)
}

async fn on_key(
    g: &Global,
    client: &mut Client,
    service: &mut Service,
    app: &mut App,
    key: KeyEvent,
) {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if let Some(popup) = app.popup.take() {
        on_popup_key(g, client, service, app, popup, key).await;
        return;
    }
    let channel = app.channel().map(str::to_owned);
    match key.code {
        KeyCode::Char('c' | 'q') if ctrl => app.quit = true,
        KeyCode::Tab | KeyCode::Down if !ctrl => switch(g, client, app, 1),
        KeyCode::BackTab | KeyCode::Up => switch(g, client, app, -1),
        KeyCode::Char('n') if ctrl => switch(g, client, app, 1),
        KeyCode::Char('p') if ctrl => switch(g, client, app, -1),
        KeyCode::PageUp => app.scroll = app.scroll.saturating_add(10),
        KeyCode::PageDown => app.scroll = app.scroll.saturating_sub(10),
        KeyCode::Char('v') if ctrl => {
            let Some(name) = channel else { return };
            let mut members = Vec::new();
            let listed = call(
                g,
                client,
                service,
                "members",
                params(&[("channel", json!(name))]),
            )
            .await;
            let listed = listed
                .ok()
                .and_then(|v| field(&v, "members").as_array().cloned())
                .unwrap_or_default();
            for m in listed {
                if field(&m, "you") == &Value::Bool(true) {
                    continue;
                }
                let who = field(&m, "name").as_str().unwrap_or_default().to_owned();
                let number = call(
                    g,
                    client,
                    service,
                    "verify",
                    params(&[("channel", json!(name)), ("member", json!(who))]),
                )
                .await
                .ok()
                .and_then(|v| field(&v, "safety_number").as_str().map(str::to_owned))
                .unwrap_or_default();
                members.push((who, number, field(&m, "verified") == &Value::Bool(true)));
            }
            app.popup = Some(Popup::Verify {
                channel: name,
                members,
                at: 0,
            });
        }
        KeyCode::Char('o') if ctrl => {
            let Some(name) = channel else { return };
            let answer = call(
                g,
                client,
                service,
                "invite",
                params(&[("channel", json!(name))]),
            )
            .await;
            app.popup = Some(match answer {
                Ok(v) => Popup::Lines(
                    "Invite with a code".into(),
                    vec![
                        format!(
                            "Say this code to the person joining: {}",
                            field(&v, "code").as_str().unwrap_or_default()
                        ),
                        String::new(),
                        "They run: backchannel join CODE --relay RELAY".into(),
                        format!(
                            "(the relay: {})",
                            field(&v, "relay").as_str().unwrap_or_default()
                        ),
                        "It works once, for ten minutes; you will see them join here.".into(),
                    ],
                ),
                Err(e) => Popup::Lines("Invite".into(), vec![e]),
            });
        }
        KeyCode::Char('t') if ctrl => {
            let Some(name) = channel else { return };
            app.popup = Some(Popup::Lines(
                format!("Status of {name}"),
                status_lines(client, &name),
            ));
        }
        KeyCode::Char('l') if ctrl => {
            let mut lines = app.notes.clone();
            if lines.is_empty() {
                lines.push("Nothing yet.".into());
            }
            app.popup = Some(Popup::Lines("Notices".into(), lines));
        }
        KeyCode::Char('b') if ctrl => {
            if let Some(name) = channel {
                app.popup = Some(Popup::Burn { channel: name });
            }
        }
        KeyCode::Char('?') if app.composer().is_empty() => app.popup = Some(Popup::Help),
        KeyCode::Enter => {
            let Some(name) = channel else { return };
            let text = std::mem::take(app.composer());
            if text.trim().is_empty() {
                return;
            }
            let sent = call(
                g,
                client,
                service,
                "send",
                params(&[("channel", json!(name)), ("text", json!(text))]),
            )
            .await;
            match sent {
                Ok(v) if field(&v, "queued") == &Value::Bool(true) => {
                    app.status = "queued: the relay did not answer yet".into();
                }
                Ok(_) => app.status = "sent".into(),
                Err(e) => {
                    // Kept, to send again.
                    app.status = e;
                    *app.composer() = text;
                }
            }
            more(g, client, app);
        }
        KeyCode::Backspace => {
            app.composer().pop();
        }
        KeyCode::Char(c) if !ctrl && app.composer().len() < 60_000 => app.composer().push(c),
        _ => {}
    }
}

async fn on_popup_key(
    g: &Global,
    client: &mut Client,
    service: &mut Service,
    app: &mut App,
    popup: Popup,
    key: KeyEvent,
) {
    match (popup, key.code) {
        (
            Popup::Verify {
                channel,
                members,
                at,
            },
            KeyCode::Down,
        ) => {
            let at = (at + 1).min(members.len().saturating_sub(1));
            app.popup = Some(Popup::Verify {
                channel,
                members,
                at,
            });
        }
        (
            Popup::Verify {
                channel,
                members,
                at,
            },
            KeyCode::Up,
        ) => {
            app.popup = Some(Popup::Verify {
                channel,
                members,
                at: at.saturating_sub(1),
            });
        }
        (
            Popup::Verify {
                channel,
                mut members,
                at,
            },
            KeyCode::Char('y'),
        ) => {
            if let Some((who, number, verified)) = members.get_mut(at) {
                // The number on the screen is the one confirmed: if the key
                // changed meanwhile, nothing is marked.
                let p = params(&[
                    ("channel", json!(channel)),
                    ("member", json!(who)),
                    ("confirm", json!(true)),
                    ("safety_number", json!(number)),
                ]);
                match call(g, client, service, "verify", p).await {
                    Ok(_) => {
                        *verified = true;
                        app.status = format!("{} is verified", for_terminal(who, ""));
                    }
                    Err(e) => app.status = e,
                }
            }
            app.popup = Some(Popup::Verify {
                channel,
                members,
                at,
            });
            load_channel(g, client, app);
        }
        (Popup::Burn { channel }, KeyCode::Char('y')) => {
            let burned = call(
                g,
                client,
                service,
                "burn",
                params(&[("channel", json!(channel))]),
            )
            .await;
            match burned {
                Ok(_) => {
                    app.status =
                        format!("burning '{channel}': it is erased once every member confirms");
                }
                Err(e) => app.status = e,
            }
        }
        (Popup::Burn { .. }, _) => app.status = "not burned".into(),
        (popup @ Popup::Verify { .. }, KeyCode::Char(_)) => app.popup = Some(popup),
        _ => {}
    }
}

fn switch(g: &Global, client: &Client, app: &mut App, by: isize) {
    if app.rows.is_empty() {
        return;
    }
    let n = app.rows.len() as isize;
    app.selected = (app.selected as isize + by).rem_euclid(n) as usize;
    load_channel(g, client, app);
}

fn status_lines(client: &Client, name: &str) -> Vec<String> {
    let Ok(c) = client.engine().channel(name) else {
        return vec!["the channel is gone".into()];
    };
    let mut lines = vec![
        format!(
            "{} members, epoch {}, {}",
            c.members.len(),
            c.epoch,
            c.suite.name()
        ),
        format!(
            "verified: {} of {}",
            c.verified.len(),
            c.members.len().saturating_sub(1)
        ),
    ];
    if c.admin {
        lines.push("you administer it".into());
    }
    match client.engine().pending(name) {
        Ok(p) => match output::pending(name, &p, false) {
            Some(text) => lines.extend(text.lines().map(str::to_owned)),
            None => lines.push("nothing is awaited: every message so far has come".into()),
        },
        Err(e) => lines.push(e.to_string()),
    }
    lines
}

fn draw(f: &mut Frame, app: &App) {
    let [main, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(f.area());
    let [left, right] =
        Layout::horizontal([Constraint::Length(26), Constraint::Min(20)]).areas(main);
    let [talk, composer] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(right);
    // Channels.
    let items: Vec<ListItem> = app
        .rows
        .iter()
        .map(|r| {
            let mut spans = vec![Span::raw(for_terminal(&r.name, ""))];
            if r.unread > 0 {
                spans.push(Span::styled(
                    format!(" ({})", r.unread),
                    Style::new().fg(Color::Cyan),
                ));
            }
            if r.alerts > 0 {
                spans.push(Span::styled(
                    " !",
                    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                ));
            }
            if r.waiting {
                spans.push(Span::styled(" ~", Style::new().fg(Color::Yellow)));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(app.selected));
    let list = List::new(items)
        .block(Block::new().borders(Borders::ALL).title("Channels"))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(list, left, &mut state);
    // The conversation, wrapped by us so that no line of anyone's text starts at
    // the left edge where our headers are.
    let width = usize::from(talk.width.saturating_sub(2));
    let mut lines: Vec<Line> = Vec::new();
    for entry in &app.entries {
        match entry {
            Entry::Message(view) => {
                let style = if view.you {
                    Style::new().fg(Color::Green)
                } else if view.verified {
                    Style::new()
                } else {
                    Style::new().fg(Color::Yellow)
                };
                for (i, l) in view.line_for(width).lines().enumerate() {
                    let style = if i == 0 { style } else { Style::new() };
                    lines.push(Line::styled(l.to_owned(), style));
                }
            }
            Entry::Alert(text) => {
                let text = format!("!! SECURITY ALERT: {}", for_terminal(text, "   "));
                for l in output::wrap(&text, width.max(20), "   ").lines() {
                    lines.push(Line::styled(
                        l.to_owned(),
                        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                    ));
                }
            }
        }
    }
    let height = usize::from(talk.height.saturating_sub(2));
    let bottom = lines.len().saturating_sub(app.scroll);
    let top = bottom.saturating_sub(height);
    let visible: Vec<Line> = lines
        .get(top..bottom)
        .map(<[Line]>::to_vec)
        .unwrap_or_default();
    let title = app
        .channel()
        .map(|n| for_terminal(n, ""))
        .unwrap_or_else(|| "no channel yet".into());
    f.render_widget(
        Paragraph::new(Text::from(visible)).block(Block::new().borders(Borders::ALL).title(title)),
        talk,
    );
    // The composer shows what is typed, made visible, on one line.
    let empty = String::new();
    let typed = app
        .channel()
        .and_then(|c| app.composers.get(c))
        .unwrap_or(&empty);
    // Line breaks of a pasted text show as a mark, on the one line there is.
    let typed = for_terminal(&typed.replace('\n', " ⏎ "), " ");
    let shown: String = typed
        .chars()
        .rev()
        .take(usize::from(composer.width.saturating_sub(3)))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    f.render_widget(
        Paragraph::new(format!("{shown}_")).block(
            Block::new()
                .borders(Borders::ALL)
                .title("Message (Enter sends, ? help)"),
        ),
        composer,
    );
    f.render_widget(Paragraph::new(for_terminal(&app.status, " ")), status);
    if let Some(popup) = &app.popup {
        draw_popup(f, popup);
    }
}

fn draw_popup(f: &mut Frame, popup: &Popup) {
    let (title, lines): (String, Vec<String>) = match popup {
        Popup::Help => (
            "Help".into(),
            [
                "Enter       send what you typed",
                "Tab, Down   next channel (Shift-Tab, Up: previous)",
                "PgUp, PgDn  scroll the conversation",
                "Ctrl-V      verify members: compare safety numbers",
                "Ctrl-O      invite someone with a code said aloud",
                "Ctrl-T      the channel's status: members, what is awaited",
                "Ctrl-B      burn the channel (asks first)",
                "Ctrl-L      notices: join requests, introductions, erasures",
                "Ctrl-Q      quit",
                "",
                "In the list: (n) unread, ! a security alert, ~ something awaited.",
                "Names in yellow are not verified. Esc closes this.",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        Popup::Verify { members, at, .. } => {
            let mut lines = vec![
                "Compare the number with theirs, on a call or in person.".to_owned(),
                "Up/Down choose; y: the numbers match, mark verified; Esc closes.".to_owned(),
                String::new(),
            ];
            if members.is_empty() {
                lines.push("You are alone in this channel.".into());
            }
            for (i, (who, number, verified)) in members.iter().enumerate() {
                let mark = if i == *at { ">" } else { " " };
                let done = if *verified { " (verified)" } else { "" };
                lines.push(format!("{mark} {}{done}", for_terminal(who, "")));
                if i == *at {
                    lines.extend(output::layout(number).lines().map(str::to_owned));
                    if let Some(code) = output::qr(number) {
                        lines.extend(code.lines().map(str::to_owned));
                    }
                }
            }
            ("Safety numbers".into(), lines)
        }
        Popup::Lines(title, lines) => (
            for_terminal(title, " "),
            lines.iter().map(|l| for_terminal(l, " ")).collect(),
        ),
        Popup::Burn { .. } => (
            "Burn".into(),
            vec![
                "Burn this channel? Every member's device erases it (messages, keys,".into(),
                "mailboxes) and confirms. This cannot be undone.".into(),
                String::new(),
                "y: burn it    any other key: keep it".into(),
            ],
        ),
    };
    let area = f.area();
    // Whatever the terminal's size (a narrow one included), within it.
    let widest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(20);
    let width = u16::try_from(widest.max(30) + 2)
        .unwrap_or(u16::MAX)
        .min(area.width);
    let height = u16::try_from(lines.len() + 2)
        .unwrap_or(u16::MAX)
        .min(area.height);
    let rect = Rect {
        x: (area.width - width) / 2,
        y: (area.height - height) / 2,
        width,
        height,
    };
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines.join("\n")).block(Block::new().borders(Borders::ALL).title(title)),
        rect,
    );
}
