//! `backchannel tui`: the terminal chat.
//!
//! Channels on the left (unread count, `!` for an alert, `~` while something is
//! awaited), the conversation on the right with alerts in place, the composer at
//! the bottom. It holds the profile like the daemon and serves its socket, so
//! other commands on the profile go through it; every action is one of the
//! daemon's methods (`daemon::Service::answer`), and what it shows goes through
//! the same sanitising as the command line's output.

use std::io::IsTerminal as _;
use std::time::Duration;

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
use crate::session::{catch_up, history_end, messages_after, read_cursor, save_attachments};

/// Messages of a channel shown at most (the newest).
const SHOWN: usize = 2000;

/// One line of a conversation.
enum Entry {
    Message(Box<output::MessageView>),
    Alert(String),
    Note(String),
}

/// A channel in the list.
struct Row {
    name: String,
    unread: usize,
    alerts: usize,
    waiting: bool,
}

/// A window over the conversation.
enum Popup {
    Help,
    Verify {
        members: Vec<(String, String, bool)>,
        at: usize,
    },
    Lines(String, Vec<String>),
    Burn,
}

struct App {
    rows: Vec<Row>,
    selected: usize,
    entries: Vec<Entry>,
    /// The last history position shown of the selected channel.
    shown_to: u64,
    composer: String,
    popup: Option<Popup>,
    /// Lines scrolled back from the newest.
    scroll: usize,
    status: String,
    quit: bool,
}

impl App {
    fn channel(&self) -> Option<&str> {
        self.rows.get(self.selected).map(|r| r.name.as_str())
    }
}

/// The calls the chat makes go through the service quietly: no progress bars or
/// notices on a terminal that the chat draws on.
fn quiet(g: &Global) -> Global {
    Global {
        json: true,
        ..g.clone()
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
    let q = quiet(g);
    let mut app = App {
        rows: Vec::new(),
        selected: 0,
        entries: Vec::new(),
        shown_to: 0,
        composer: String::new(),
        popup: None,
        scroll: 0,
        status: "? for help".into(),
        quit: false,
    };
    refresh_rows(&client, &mut app);
    load_channel(&q, &client, &mut app).await;
    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::new(format!("cannot take over the terminal: {e}")))?;
    let mut keys = EventStream::new();
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
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
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break Ok(()),
            },
            stepped = client.step(Duration::from_millis(200)) => {
                if let Ok(true) = stepped {
                    for change in service.absorb(&mut client) {
                        app.entries.push(Entry::Note(change.human));
                    }
                    refresh_rows(&client, &mut app);
                    more(&q, &client, &mut app).await;
                }
            }
            work = service.next() => match work {
                Some(work) => {
                    if let Some(said) = service.handle(&q, &mut client, work).await {
                        app.entries.push(Entry::Note(said));
                    }
                    refresh_rows(&client, &mut app);
                    more(&q, &client, &mut app).await;
                }
                None => break Ok(()),
            },
            _ = redraw.tick() => {}
        }
    };
    let _ = ratatui::try_restore();
    let erased = service.erased;
    service.close();
    if !erased {
        let _ = client.flush(Duration::from_secs(5)).await;
    }
    result
}

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
}

/// Shows the selected channel from its start (the newest [`SHOWN`] messages).
async fn load_channel(g: &Global, client: &Client, app: &mut App) {
    app.entries.clear();
    app.shown_to = 0;
    app.scroll = 0;
    let Some(name) = app.channel().map(str::to_owned) else {
        return;
    };
    let (_, count) = history_end(client, &name, 0).unwrap_or((0, 0));
    // Skip what is beyond the newest SHOWN.
    let mut skip = count.saturating_sub(SHOWN);
    while skip > 0 {
        let Ok((views, last)) = messages_after(client, &name, app.shown_to, skip.min(500)) else {
            break;
        };
        if views.is_empty() {
            break;
        }
        skip -= views.len();
        app.shown_to = last;
    }
    more(g, client, app).await;
}

/// Appends what came to the selected channel since it was last shown, saving
/// files and showing new alerts in place; moves the read cursor.
async fn more(g: &Global, client: &Client, app: &mut App) {
    let Some(name) = app.channel().map(str::to_owned) else {
        return;
    };
    while let Ok((mut views, last)) = messages_after(client, &name, app.shown_to, 500) {
        if last == app.shown_to {
            break;
        }
        app.shown_to = last;
        if let Ok(dir) = save_dir(g, None) {
            let _ = save_attachments(g, client, &name, &mut views, &dir).await;
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
            app.entries
                .extend(alerts.into_iter().map(|a| Entry::Alert(a.text)));
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
        KeyCode::Tab | KeyCode::Down if !ctrl => switch(g, client, app, 1).await,
        KeyCode::BackTab | KeyCode::Up => switch(g, client, app, -1).await,
        KeyCode::Char('n') if ctrl => switch(g, client, app, 1).await,
        KeyCode::Char('p') if ctrl => switch(g, client, app, -1).await,
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
            for m in listed
                .ok()
                .and_then(|v| field(&v, "members").as_array().cloned())
                .unwrap_or_default()
            {
                if field(&m, "you") == true {
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
                members.push((who, number, field(&m, "verified") == true));
            }
            app.popup = Some(Popup::Verify { members, at: 0 });
        }
        KeyCode::Char('o') if ctrl => {
            let Some(name) = channel else { return };
            app.popup = Some(
                match call(
                    g,
                    client,
                    service,
                    "invite",
                    params(&[("channel", json!(name))]),
                )
                .await
                {
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
                },
            );
        }
        KeyCode::Char('t') if ctrl => {
            let Some(name) = channel else { return };
            app.popup = Some(Popup::Lines(
                format!("Status of {name}"),
                status_lines(client, &name),
            ));
        }
        KeyCode::Char('b') if ctrl && channel.is_some() => app.popup = Some(Popup::Burn),
        KeyCode::Char('?') if app.composer.is_empty() => app.popup = Some(Popup::Help),
        KeyCode::Enter => {
            let text = std::mem::take(&mut app.composer);
            let Some(name) = channel else { return };
            if text.trim().is_empty() {
                return;
            }
            match call(
                g,
                client,
                service,
                "send",
                params(&[("channel", json!(name)), ("text", json!(text))]),
            )
            .await
            {
                Ok(v) if field(&v, "queued") == true => {
                    app.status = "queued: the relay did not answer yet".into()
                }
                Ok(_) => app.status = "sent".into(),
                Err(e) => {
                    app.status = e;
                    app.composer = text;
                }
            }
            more(g, client, app).await;
        }
        KeyCode::Backspace => {
            app.composer.pop();
        }
        KeyCode::Char(c) if !ctrl && app.composer.len() < 60_000 => app.composer.push(c),
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
    let channel = app.channel().map(str::to_owned).unwrap_or_default();
    match (popup, key.code) {
        (Popup::Verify { members, at }, KeyCode::Down) => {
            let at = (at + 1).min(members.len().saturating_sub(1));
            app.popup = Some(Popup::Verify { members, at });
        }
        (Popup::Verify { members, at }, KeyCode::Up) => {
            app.popup = Some(Popup::Verify {
                members,
                at: at.saturating_sub(1),
            });
        }
        (Popup::Verify { mut members, at }, KeyCode::Char('y')) => {
            if let Some((who, _, verified)) = members.get_mut(at) {
                let p = params(&[
                    ("channel", json!(channel)),
                    ("member", json!(who)),
                    ("confirm", json!(true)),
                ]);
                match call(g, client, service, "verify", p).await {
                    Ok(_) => {
                        *verified = true;
                        app.status = format!("{who} is verified");
                    }
                    Err(e) => app.status = e,
                }
            }
            app.popup = Some(Popup::Verify { members, at });
            load_channel(g, client, app).await;
        }
        (Popup::Burn, KeyCode::Char('y')) => {
            match call(
                g,
                client,
                service,
                "burn",
                params(&[("channel", json!(channel))]),
            )
            .await
            {
                Ok(_) => {
                    app.status =
                        format!("burning '{channel}': it is erased once every member confirms")
                }
                Err(e) => app.status = e,
            }
        }
        (Popup::Burn, _) => app.status = "not burned".into(),
        (popup @ Popup::Verify { .. }, KeyCode::Char(_)) => app.popup = Some(popup),
        _ => {}
    }
}

async fn switch(g: &Global, client: &Client, app: &mut App, by: isize) {
    if app.rows.is_empty() {
        return;
    }
    let n = app.rows.len() as isize;
    app.selected = (app.selected as isize + by).rem_euclid(n) as usize;
    load_channel(g, client, app).await;
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
            Entry::Note(text) => {
                let text = format!("-- {}", for_terminal(text, "   "));
                for l in output::wrap(&text, width.max(20), "   ").lines() {
                    lines.push(Line::styled(l.to_owned(), Style::new().fg(Color::DarkGray)));
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
    let typed = for_terminal(&app.composer, " ");
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
                "Ctrl-Q      quit",
                "",
                "In the list: (n) unread, ! a security alert, ~ something awaited.",
                "Names in yellow are not verified. Esc closes this.",
            ]
            .map(str::to_owned)
            .to_vec(),
        ),
        Popup::Verify { members, at } => {
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
            title.clone(),
            lines.iter().map(|l| for_terminal(l, " ")).collect(),
        ),
        Popup::Burn => (
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
    let width = lines
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(20)
        .clamp(30, usize::from(area.width.saturating_sub(4)));
    let height = (lines.len() + 2).min(usize::from(area.height.saturating_sub(2)));
    let rect = Rect {
        x: area.width.saturating_sub(width as u16 + 2) / 2,
        y: area.height.saturating_sub(height as u16) / 2,
        width: (width as u16 + 2).min(area.width),
        height: height as u16,
    };
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(lines.join("\n")).block(Block::new().borders(Borders::ALL).title(title)),
        rect,
    );
}
