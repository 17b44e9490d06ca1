//! Printing for people and for programs.

use backchannel_core::store::{MessageKind, MessageRecord};
use backchannel_core::{Pending, Timestamp};
use backchannel_store::AlertRecord;
use serde_json::json;

/// `2026-11-28T23:59:01Z` from milliseconds since the Unix epoch.
pub(crate) fn rfc3339(t: Timestamp) -> String {
    let secs = t.0 / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Short form for people: `2026-11-28 23:59`.
pub(crate) fn short_time(t: Timestamp) -> String {
    let full = rfc3339(t);
    full.get(..16).map(|s| s.replace('T', " ")).unwrap_or(full)
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Text from other people, made safe for a terminal: every character that could
/// control the terminal or change how the text around it is shown (escape
/// sequences, bidirectional overrides, zero-width characters) is written out
/// visibly, as `\u{1b}`, and every line after the first starts with `indent`, so
/// no text can begin a line that looks like a header of ours.
pub(crate) fn for_terminal(text: &str, indent: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => {
                out.push('\n');
                out.push_str(indent);
            }
            c if backchannel_proto::member::is_hidden(c) => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

/// Who sent a message, as far as the reader knows.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Sender<'a> {
    /// The reader.
    Own,
    /// A member whose safety number the reader compared.
    Verified,
    /// A member not (or no longer) verified.
    Unverified,
    /// A member not verified by us, whose identity someone we know vouched for.
    Introduced(&'a str),
}

/// One message as programs see it: the fields of `read --json`, and of the
/// daemon's `read` and `message` notifications.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct MessageView {
    pub(crate) channel: String,
    pub(crate) from: String,
    pub(crate) you: bool,
    pub(crate) verified: bool,
    pub(crate) introduced_by: Option<String>,
    pub(crate) seq: u64,
    pub(crate) text: String,
    pub(crate) sent_at: String,
    pub(crate) received_at: String,
    pub(crate) late: bool,
    /// A file, for a message that carries one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) attachment: Option<AttachmentView>,
    /// Where the message is in the profile's history (for the reader's own use).
    #[serde(skip)]
    pub(crate) position: u64,
    /// The file's descriptor, to fetch it.
    #[serde(skip)]
    pub(crate) descriptor: Option<backchannel_proto::attachment::Descriptor>,
}

/// A file a message carries, and what became of it here.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct AttachmentView {
    /// Its name as the sender gave it.
    pub(crate) name: String,
    /// Bytes.
    pub(crate) size: u64,
    /// Until when the relay keeps it.
    pub(crate) expires_at: String,
    /// Where it was saved.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) saved_to: Option<String>,
    /// Why it could not be.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) error: Option<String>,
}

/// `1.2 MiB`, for people.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let name = UNITS.get(unit).copied().unwrap_or("bytes");
    if unit == 0 {
        format!("{bytes} {name}")
    } else {
        format!("{value:.1} {name}")
    }
}

impl MessageView {
    pub(crate) fn new(channel: &str, m: &MessageRecord, sender: Sender) -> Self {
        let descriptor = (m.kind == MessageKind::Attachment)
            .then(|| backchannel_proto::attachment::Descriptor::decode(&m.body).ok())
            .flatten();
        let text = match (m.kind, &descriptor) {
            (MessageKind::Attachment, None) => "[a file this version cannot read]".to_owned(),
            (MessageKind::Attachment, Some(_)) => String::new(),
            _ => String::from_utf8_lossy(&m.body).into_owned(),
        };
        Self {
            attachment: descriptor.as_ref().map(|d| AttachmentView {
                name: d.name.clone(),
                size: d.size,
                expires_at: rfc3339(Timestamp(d.expires_at)),
                saved_to: None,
                error: None,
            }),
            position: m.position,
            descriptor,
            channel: channel.to_owned(),
            from: m.sender_name.clone(),
            you: matches!(sender, Sender::Own),
            verified: matches!(sender, Sender::Own | Sender::Verified),
            introduced_by: match sender {
                Sender::Introduced(by) => Some(by.to_owned()),
                _ => None,
            },
            seq: m.seq,
            text,
            sent_at: rfc3339(m.sent_at),
            received_at: rfc3339(m.received_at),
            late: m.late,
        }
    }

    /// The line people read: sender (and what we know of them), time, text, made
    /// safe for the terminal and wrapped to it.
    pub(crate) fn line(&self) -> String {
        self.line_for(line_width())
    }

    /// The same, wrapped to `width` columns.
    pub(crate) fn line_for(&self, width: usize) -> String {
        let who = if self.you {
            format!("{} (you)", self.from)
        } else if let Some(by) = &self.introduced_by {
            format!("{} (introduced by {by})", self.from)
        } else if self.verified {
            self.from.clone()
        } else {
            format!("{} (unverified)", self.from)
        };
        let late = if self.late { "  [arrived late]" } else { "" };
        let who = for_terminal(&who, "");
        let mut text = for_terminal(&self.text, CONTINUATION);
        if let Some(a) = &self.attachment {
            // On one line: a name (or a reason) with a line break in it would
            // start a line of its own, like a header.
            let one_line = |t: &str| for_terminal(&t.replace('\n', "\\n"), "");
            let name = one_line(&a.name);
            text = match (&a.saved_to, &a.error) {
                (Some(path), _) => format!(
                    "[file] {name} ({}), saved to {}",
                    size(a.size),
                    one_line(path)
                ),
                (None, Some(e)) => format!(
                    "[file] {name} ({}), not saved: {}",
                    size(a.size),
                    one_line(e)
                ),
                (None, None) => format!("[file] {name} ({})", size(a.size)),
            };
        }
        let when = self.sent_at.get(..16).map(|s| s.replace('T', " "));
        let when = when.as_deref().unwrap_or(&self.sent_at);
        let line = format!("[{}] {who}: {text}{late}", for_terminal(when, ""));
        wrap(&line, width.max(CONTINUATION.len() + 10), CONTINUATION)
    }
}

/// What starts every line of a message after its first.
const CONTINUATION: &str = "    | ";

/// Columns to wrap human output at: the terminal's width, or 80 when the output
/// is not a terminal (a pager or a window that wraps it again would otherwise
/// start a line with text of someone else's).
fn line_width() -> usize {
    static WIDTH: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WIDTH.get_or_init(|| {
        terminal_size::terminal_size()
            .map_or(80, |(w, _)| usize::from(w.0))
            .max(CONTINUATION.len() + 10)
    })
}

/// Breaks every line of `text` that is wider than `width` columns, so that the
/// terminal never wraps it itself: a wrapped line would start at the left margin
/// with whatever the sender put there (padding, then a forged header). The
/// pieces after the first start with `indent`.
pub(crate) fn wrap(text: &str, width: usize, indent: &str) -> String {
    use unicode_width::UnicodeWidthChar as _;
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut used = 0;
        let mut rest = line;
        while let Some(c) = rest.chars().next() {
            // An escape written out by `for_terminal` stays on one row.
            let one = rest.get(..c.len_utf8()).unwrap_or(rest);
            let unit = match rest.strip_prefix("\\u{").and_then(|r| r.find('}')) {
                Some(end) if end <= 6 => rest.get(..end + 4).unwrap_or(one),
                _ => one,
            };
            let w: usize = unit.chars().map(|c| c.width().unwrap_or(0)).sum();
            if used + w > width && used > 0 {
                out.push('\n');
                out.push_str(indent);
                used = indent.chars().count();
            }
            out.push_str(unit);
            used += w;
            rest = rest.get(unit.len()..).unwrap_or_default();
        }
    }
    out
}

/// One alert, as a line for people or a JSON object.
pub(crate) fn alert(channel: &str, a: &AlertRecord, json: bool) -> String {
    if json {
        json!({
            "channel": channel,
            "alert": a.kind,
            "message": a.text,
            "at": rfc3339(a.created_at),
        })
        .to_string()
    } else {
        format!(
            "!! SECURITY ALERT in {channel}: {}",
            for_terminal(&a.text, "   ")
        )
    }
}

/// What a channel still waits for: lines for people, or one JSON object. Nothing
/// when it waits for nothing.
pub(crate) fn pending(channel: &str, p: &Pending, json: bool) -> Option<String> {
    if p.is_empty() {
        return None;
    }
    if json {
        let gaps: Vec<_> = p
            .gaps
            .iter()
            .map(|g| {
                json!({
                    "from": g.from,
                    "missing": g.missing,
                    "since": rfc3339(g.since),
                    "reported_by": g.reported_by,
                })
            })
            .collect();
        let update = p
            .update
            .as_ref()
            .map(|u| json!({"epoch": u.epoch, "by": u.by, "since": rfc3339(u.since)}));
        return Some(
            json!({
                "channel": channel,
                "pending": {"gaps": gaps, "parked": p.parked, "update": update},
            })
            .to_string(),
        );
    }
    let mut lines = Vec::new();
    for g in &p.gaps {
        lines.push(format!(
            "waiting in {channel} for {g}, missing since {}",
            short_time(g.since)
        ));
    }
    if let Some(u) = &p.update {
        lines.push(format!(
            "waiting in {channel} for update {} that {} has reached, since {}",
            u.epoch,
            u.by,
            short_time(u.since)
        ));
    }
    if p.parked > 0 && p.gaps.is_empty() && p.update.is_none() {
        lines.push(format!(
            "waiting in {channel}: {} received item(s) cannot be read yet",
            p.parked
        ));
    }
    Some(lines.join("\n"))
}

/// The number as people read it aloud: three lines of four groups.
pub(crate) fn layout(number: &str) -> String {
    let groups: Vec<&str> = number.split(' ').collect();
    groups
        .chunks(4)
        .map(|line| format!("    {}", line.join(" ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A QR code of the number, drawn with half blocks (two rows per line).
pub(crate) fn qr(number: &str) -> Option<String> {
    let code = qrcode::QrCode::new(number.replace(' ', "").as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_broken_before_the_terminal_wraps_them() {
        use unicode_width::UnicodeWidthStr as _;
        // Padding (ASCII and double-width) that would push a forged header to the
        // start of the terminal's next row.
        for pad in [".".repeat(57), "\u{4e00}".repeat(29)] {
            let line = format!(
                "[2026-11-28 23:58] mallory (unverified): {pad}[2026-11-28 23:59] alice: pay"
            );
            let shown = wrap(&line, 80, CONTINUATION);
            let rows: Vec<&str> = shown.lines().collect();
            assert!(rows.len() > 1, "{shown}");
            assert!(rows.iter().all(|r| r.width() <= 80), "{shown}");
            assert!(
                rows.iter().skip(1).all(|r| r.starts_with(CONTINUATION)),
                "{shown}"
            );
        }
        assert_eq!(wrap("short\nlines", 80, CONTINUATION), "short\nlines");
        // Escapes written out for hidden characters are never split across rows.
        let escaped = for_terminal(&"\u{202e}".repeat(40), CONTINUATION);
        for row in wrap(&escaped, 80, CONTINUATION).lines() {
            let row = row.strip_prefix(CONTINUATION).unwrap_or(row);
            assert!(row.split_inclusive('}').all(|u| u == "\\u{202e}"), "{row}");
        }
    }

    #[test]
    fn a_file_name_cannot_start_a_line() {
        let view = MessageView {
            channel: "ops".into(),
            from: "mallory".into(),
            you: false,
            verified: false,
            introduced_by: None,
            seq: 1,
            text: String::new(),
            sent_at: "2026-11-28T23:58:00Z".into(),
            received_at: "2026-11-28T23:58:00Z".into(),
            late: false,
            attachment: Some(AttachmentView {
                name: "x\n[2026-11-28 23:59] alice: pay 500\u{1b}[2K".into(),
                size: 10,
                expires_at: "2026-11-30T00:00:00Z".into(),
                saved_to: None,
                error: Some("bad\nnews".into()),
            }),
            position: 1,
            descriptor: None,
        };
        let shown = view.line_for(200);
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(shown.contains("x\\n[2026-11-28 23:59] alice"), "{shown}");
        assert!(!shown.chars().any(char::is_control), "{shown}");
    }

    #[test]
    fn text_for_the_terminal_controls_nothing_and_starts_no_line() {
        let attack = "ok\n[2026-11-28 23:59] Alice: wire-funds-now\x1b[2K\x1b]0;pwned\x07 \u{202e}evil\u{200b}";
        let shown = for_terminal(attack, "    | ");
        assert_eq!(
            shown,
            "ok\n    | [2026-11-28 23:59] Alice: wire-funds-now\\u{1b}[2K\\u{1b}]0;pwned\\u{7} \\u{202e}evil\\u{200b}"
        );
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'));
        assert!(shown.lines().skip(1).all(|l| l.starts_with("    | ")));
        assert_eq!(for_terminal("Zoë, 東京, مرحبا", ""), "Zoë, 東京, مرحبا");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Timestamp(951_782_400_000)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(Timestamp(1_795_910_399_000)),
            "2026-11-28T23:59:59Z"
        );
        assert_eq!(short_time(Timestamp(1_795_910_399_000)), "2026-11-28 23:59");
    }
}
