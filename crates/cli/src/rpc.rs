//! JSON-RPC 2.0 on a Unix socket, one object per line: the wire of the daemon
//! (`backchannel daemon`), and of the commands that reach it.
//!
//! [`Host`] listens: the socket is made with mode 0600 (bound under a temporary
//! name, restricted, then renamed into place), and a connection from another
//! user is refused even so. Each connection's requests become [`Call`]s for the
//! one task that owns the profile; notifications go to the connections that
//! called `subscribe`. A malformed line gets an error and the connection goes on;
//! nothing a peer sends can stop the host.
//!
//! [`call`] is the other end, for a command that finds the profile held by a
//! daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::Failure;

/// The file in the profile directory that names the socket of the process that
/// holds the profile (absent when none serves one).
pub(crate) const DAEMON_FILE: &str = "daemon.json";
/// The socket's default name, in the profile directory.
pub(crate) const DEFAULT_SOCKET: &str = "daemon.sock";
/// The longest request line, in bytes (a text message is at most about 64 KiB).
pub(crate) const MAX_LINE: usize = 1 << 20;

/// The error codes, stable: programs may match on them.
pub(crate) mod code {
    /// The line is not JSON.
    pub(crate) const PARSE_ERROR: i64 = -32700;
    /// JSON, but not a JSON-RPC 2.0 request (or longer than [`super::MAX_LINE`]).
    pub(crate) const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub(crate) const METHOD_NOT_FOUND: i64 = -32601;
    /// A parameter is missing or of the wrong type.
    pub(crate) const INVALID_PARAMS: i64 = -32602;
    /// The request was understood, and failed: the message says why, `data.hint`
    /// what to do (a relay unreachable, a member unknown, not the administrator).
    pub(crate) const FAILED: i64 = -32000;
    /// A security alert: something was withheld, replayed, forged or altered (the
    /// command line's exit code 3).
    pub(crate) const ALERT: i64 = -32003;
    /// No channel of that name.
    pub(crate) const NO_CHANNEL: i64 = -32004;
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: &str) -> Self {
        self.hint = Some(hint.to_owned());
        self
    }

    pub(crate) fn params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }

    fn to_json(&self) -> Value {
        match &self.hint {
            Some(hint) => {
                json!({"code": self.code, "message": self.message, "data": {"hint": hint}})
            }
            None => json!({"code": self.code, "message": self.message}),
        }
    }
}

impl From<Failure> for RpcError {
    fn from(f: Failure) -> Self {
        Self {
            code: if f.code == 3 {
                code::ALERT
            } else {
                code::FAILED
            },
            message: f.message,
            hint: f.hint,
        }
    }
}

/// A request for the task that owns the profile.
pub(crate) struct Call {
    pub(crate) method: String,
    pub(crate) params: Map<String, Value>,
    reply: Option<oneshot::Sender<Result<Value, RpcError>>>,
}

impl Call {
    /// Answers it (a notification, without an id, gets no answer).
    pub(crate) fn answer(self, result: Result<Value, RpcError>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(result);
        }
    }
}

/// One response line.
fn response(id: &Value, result: Result<Value, RpcError>) -> String {
    match result {
        Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
    .to_string()
}

/// A notification line.
pub(crate) fn notification(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

/// A request as read: its id (None for a notification), method and params.
pub(crate) type Request = (Option<Value>, String, Map<String, Value>);

/// Reads a request line. An error comes with the request's id when it had a
/// readable one (else null).
pub(crate) fn parse(line: &[u8]) -> Result<Request, (Value, RpcError)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            RpcError::new(code::PARSE_ERROR, format!("not JSON: {e}")),
        )
    })?;
    let id = match &value {
        Value::Object(o) => o
            .get("id")
            .filter(|id| id.is_string() || id.is_number())
            .cloned()
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    parse_request(value).map_err(|e| (id, e))
}

fn parse_request(value: Value) -> Result<Request, RpcError> {
    let Value::Object(mut request) = value else {
        return Err(RpcError::new(
            code::INVALID_REQUEST,
            "a request is one JSON object (batches are not taken)",
        ));
    };
    if request.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(RpcError::new(
            code::INVALID_REQUEST,
            "\"jsonrpc\" must be \"2.0\"",
        ));
    }
    let id = request.remove("id");
    if let Some(id) = &id
        && !(id.is_string() || id.is_number() || id.is_null())
    {
        return Err(RpcError::new(
            code::INVALID_REQUEST,
            "\"id\" must be a string, a number or null",
        ));
    }
    let Some(Value::String(method)) = request.remove("method") else {
        return Err(RpcError::new(
            code::INVALID_REQUEST,
            "\"method\" must be a string",
        ));
    };
    let params = match request.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params,
        Some(_) => return Err(RpcError::params("params are by name: a JSON object")),
    };
    Ok((id, method, params))
}

/// A string parameter.
pub(crate) fn text_param<'a>(
    params: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::params(format!("\"{name}\" must be a string"))),
    }
}

/// A string parameter that must be there.
pub(crate) fn required<'a>(
    params: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, RpcError> {
    text_param(params, name)?.ok_or_else(|| RpcError::params(format!("\"{name}\" is missing")))
}

/// A boolean parameter (false when absent).
pub(crate) fn flag(params: &Map<String, Value>, name: &str) -> Result<bool, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(RpcError::params(format!(
            "\"{name}\" must be true or false"
        ))),
    }
}

/// The listening end: the socket, its advertisement in the profile directory,
/// the calls and the notifications.
pub(crate) struct Host {
    socket: PathBuf,
    advert: PathBuf,
    calls: mpsc::Receiver<Call>,
    events: broadcast::Sender<std::sync::Arc<str>>,
    accept: tokio::task::JoinHandle<()>,
}

/// Calls waiting for the owner, at most; past that a connection waits to send.
const QUEUED_CALLS: usize = 64;
/// Notifications a slow subscriber may lag by before it is told it missed some.
const QUEUED_EVENTS: usize = 1024;

impl Host {
    /// Listens at `socket` and says so in the profile directory `home`. A socket
    /// left by a process that is gone is replaced; one that answers is not.
    pub(crate) async fn start(home: &Path, socket: &Path) -> Result<Self, Failure> {
        let owner = own_uid().map_err(|e| Failure::new(format!("cannot tell who we are: {e}")))?;
        let listener = bind_private(socket, owner).await?;
        let socket = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
        let advert = home.join(DAEMON_FILE);
        let text = json!({"socket": socket, "pid": std::process::id()}).to_string();
        write_private(&advert, text.as_bytes())
            .map_err(|e| Failure::new(format!("cannot write {}: {e}", advert.display())))?;
        let (calls_tx, calls) = mpsc::channel(QUEUED_CALLS);
        let (events, _) = broadcast::channel(QUEUED_EVENTS);
        let accept = tokio::spawn(accept_loop(listener, owner, calls_tx, events.clone()));
        Ok(Self {
            socket,
            advert,
            calls,
            events,
            accept,
        })
    }

    /// Where it listens.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The next call (cancel-safe). None only if the listener is gone.
    pub(crate) async fn next(&mut self) -> Option<Call> {
        self.calls.recv().await
    }

    /// Whether any connection subscribed.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Sends a notification to every subscribed connection.
    pub(crate) fn notify(&self, method: &str, params: Value) {
        if self.has_subscribers() {
            let _ = self.events.send(notification(method, params).into());
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.advert);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// Binds a socket that only its owner may connect to: under a temporary name in
/// the same directory, restricted to 0600, then renamed into place, so that it
/// is never reachable at its name with wider permissions.
async fn bind_private(socket: &Path, owner: u32) -> Result<UnixListener, Failure> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
    let shown = socket.display();
    // Only in a directory no one else can write to: nobody can then swap the path,
    // take the temporary name first, or reach the socket before it is restricted.
    let parent = match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = std::fs::metadata(&parent)
        .is_ok_and(|m| m.is_dir() && m.uid() == owner && m.mode() & 0o022 == 0);
    if !private {
        return Err(Failure::new(format!(
            "{} is not a directory only you can write to",
            parent.display()
        ))
        .hint("put the socket in such a directory, like $XDG_RUNTIME_DIR or the profile's (the default)"));
    }
    if let Ok(meta) = std::fs::symlink_metadata(socket) {
        if !meta.file_type().is_socket() {
            return Err(Failure::new(format!("{shown} exists and is not a socket"))
                .hint("choose another --socket path"));
        }
        if UnixStream::connect(socket).await.is_ok() {
            return Err(Failure::new(format!("another process listens on {shown}"))
                .hint("stop it, or choose another --socket path"));
        }
        // Left by a process that is gone.
        std::fs::remove_file(socket)
            .map_err(|e| Failure::new(format!("cannot remove the stale {shown}: {e}")))?;
    }
    let name = socket
        .file_name()
        .ok_or_else(|| Failure::new(format!("{shown} is not a file name")))?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = socket.with_file_name(temporary);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary).map_err(|e| {
        Failure::new(format!("cannot listen on {shown}: {e}")).hint(
            "a socket path must be short (at most about 100 bytes) in a directory you can write",
        )
    })?;
    let restricted = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temporary, socket));
    if let Err(e) = restricted {
        let _ = std::fs::remove_file(&temporary);
        return Err(Failure::new(format!("cannot listen on {shown}: {e}")));
    }
    Ok(listener)
}

/// Most connections at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// How long an answer may wait for a peer that does not read before the
/// connection is dropped.
const WRITE_LIMIT: Duration = Duration::from_secs(30);

async fn accept_loop(
    listener: UnixListener,
    owner: u32,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<std::sync::Arc<str>>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, for instance: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // The socket's mode keeps other users out; the peer's credentials too,
        // should the directory's permissions have let them at it.
        if !stream.peer_cred().is_ok_and(|c| c.uid() == owner) {
            continue;
        }
        let (calls, events) = (calls.clone(), events.clone());
        tokio::spawn(async move {
            connection(stream, calls, events).await;
            drop(slot);
        });
    }
}

/// Serves one connection: answers in the order the requests came, and, once it
/// subscribed, the notifications between them.
async fn connection(
    stream: UnixStream,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<std::sync::Arc<str>>,
) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let (lines_tx, mut lines) = mpsc::channel::<String>(QUEUED_CALLS);
    let writer = tokio::spawn(async move {
        while let Some(mut line) = lines.recv().await {
            line.push('\n');
            let written = tokio::time::timeout(WRITE_LIMIT, write.write_all(line.as_bytes())).await;
            if !matches!(written, Ok(Ok(()))) {
                break;
            }
        }
    });
    let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = u64::try_from(MAX_LINE + 1).unwrap_or(u64::MAX);
        match (&mut read).take(limit).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
            let e = RpcError::new(
                code::INVALID_REQUEST,
                format!("a request line is longer than {MAX_LINE} bytes"),
            );
            if lines_tx.send(response(&Value::Null, Err(e))).await.is_err()
                || !skip_line(&mut read).await
            {
                break;
            }
            continue;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (id, method, params) = match parse(line) {
            Ok(request) => request,
            Err((id, e)) => {
                if lines_tx.send(response(&id, Err(e))).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let answer = if method == "subscribe" {
            // Handled here: the answer goes first, then the connection receives
            // notifications.
            // Nothing is missed in between: the receiver keeps what comes from
            // now on.
            let receiver = subscription.is_none().then(|| events.subscribe());
            if let Some(id) = &id {
                let done = response(id, Ok(json!({"subscribed": true})));
                if lines_tx.send(done).await.is_err() {
                    break;
                }
            }
            if let Some(receiver) = receiver {
                subscription = Some(tokio::spawn(forward_events(receiver, lines_tx.clone())));
            }
            continue;
        } else {
            let (reply, answer) = oneshot::channel();
            let call = Call {
                method,
                params,
                reply: id.is_some().then_some(reply),
            };
            if calls.send(call).await.is_err() {
                break;
            }
            match id {
                Some(_) => answer
                    .await
                    .unwrap_or_else(|_| Err(RpcError::new(code::FAILED, "the daemon is stopping"))),
                None => continue,
            }
        };
        if let Some(id) = id
            && lines_tx.send(response(&id, answer)).await.is_err()
        {
            break;
        }
    }
    if let Some(s) = subscription {
        s.abort();
    }
    drop(lines_tx);
    let _ = writer.await;
}

/// Reads to the end of an over-long line; false at the end of the stream.
async fn skip_line(read: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> bool {
    loop {
        let available = match read.fill_buf().await {
            Ok([]) | Err(_) => return false,
            Ok(b) => b,
        };
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                read.consume(i + 1);
                return true;
            }
            None => {
                let n = available.len();
                read.consume(n);
            }
        }
    }
}

async fn forward_events(
    mut events: broadcast::Receiver<std::sync::Arc<str>>,
    lines: mpsc::Sender<String>,
) {
    loop {
        let line = match events.recv().await {
            Ok(line) => line.to_string(),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                notification("lagged", json!({"missed": n}))
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if lines.send(line).await.is_err() {
            return;
        }
    }
}

/// The socket of the process holding the profile at `home`, if it serves one:
/// the process the advertisement names must be the one the lock names.
pub(crate) fn advertised(home: &Path, holder: u32) -> Option<Daemon> {
    let text = std::fs::read_to_string(home.join(DAEMON_FILE)).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    let pid = u32::try_from(value.get("pid")?.as_u64()?).ok()?;
    if pid != holder {
        return None;
    }
    let socket = value.get("socket")?.as_str().map(PathBuf::from)?;
    Some(Daemon { socket, pid })
}

/// A daemon to call: where it listens, and the process that must answer there.
pub(crate) struct Daemon {
    pub(crate) socket: PathBuf,
    pub(crate) pid: u32,
}

/// Whether `dir` is a directory of ours that no one else can write to (so no one
/// can swap, add or take names in it).
pub(crate) fn is_private_dir(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(uid) = own_uid() else {
        return false;
    };
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
}

/// This process's effective user id (the owner of its /proc entry).
pub(crate) fn own_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self")?.uid())
}

/// How long a command waits for the daemon's answer (a send waits for the relay);
/// a call that moves a file waits as long as a download may take.
const CALL_LIMIT: Duration = Duration::from_secs(60);
const FILE_CALL_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Calls `method` on the daemon and returns its result. Whoever listens on the
/// socket must be that daemon: our user, the process the lock names.
pub(crate) async fn call(daemon: &Daemon, method: &str, params: Value) -> Result<Value, Failure> {
    let socket = &daemon.socket;
    let unreachable = |e: std::io::Error| {
        Failure::new(format!(
            "cannot reach the daemon at {}: {e}",
            socket.display()
        ))
    };
    let exchange = async {
        let stream = UnixStream::connect(socket).await.map_err(unreachable)?;
        let peer = stream.peer_cred().map_err(unreachable)?;
        if Some(peer.uid()) != own_uid().ok() || peer.pid() != i32::try_from(daemon.pid).ok() {
            return Err(Failure::new(format!(
                "{} is not the socket of the process that has the profile; nothing was sent",
                socket.display()
            )));
        }
        let (read, mut write) = stream.into_split();
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        write
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(unreachable)?;
        let mut read = BufReader::new(read);
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut read)
                .take(u64::try_from(MAX_LINE * 64).unwrap_or(u64::MAX))
                .read_line(&mut line)
                .await
                .map_err(unreachable)?;
            if n == 0 {
                return Err(Failure::new("the daemon closed the connection"));
            }
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                return Err(Failure::new(
                    "the daemon answered something that is not JSON",
                ));
            };
            if value.get("id") != Some(&json!(1)) {
                continue;
            }
            if let Some(result) = value.get("result") {
                return Ok(result.clone());
            }
            let error = value.get("error").cloned().unwrap_or(Value::Null);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the daemon failed")
                .to_owned();
            let code = error.get("code").and_then(Value::as_i64);
            let mut failure = if code == Some(code::ALERT) {
                Failure::alert(message)
            } else {
                Failure::new(message)
            };
            if let Some(hint) = error.pointer("/data/hint").and_then(Value::as_str) {
                failure = failure.hint(hint);
            }
            return Err(failure);
        }
    };
    let limit = if method == "read" || params.get("file").is_some() {
        FILE_CALL_LIMIT
    } else {
        CALL_LIMIT
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(Failure::new("the daemon did not answer in time")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_are_read_strictly_and_errors_name_the_fault() {
        let (id, method, params) =
            parse(br#"{"jsonrpc":"2.0","id":7,"method":"send","params":{"channel":"ops"}}"#)
                .unwrap();
        assert_eq!((id, method.as_str()), (Some(json!(7)), "send"));
        assert_eq!(required(&params, "channel").unwrap(), "ops");
        assert_eq!(
            required(&params, "text").unwrap_err().code,
            code::INVALID_PARAMS
        );
        let (id, _, params) = parse(br#"{"jsonrpc":"2.0","method":"channels"}"#).unwrap();
        assert!(id.is_none() && params.is_empty());
        for (line, expected) in [
            (&b"{not json"[..], code::PARSE_ERROR),
            (b"[1,2]", code::INVALID_REQUEST),
            (br#"{"id":1,"method":"x"}"#, code::INVALID_REQUEST),
            (
                br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
                code::INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":3}"#,
                code::INVALID_REQUEST,
            ),
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#,
                code::INVALID_PARAMS,
            ),
        ] {
            assert_eq!(parse(line).unwrap_err().1.code, expected, "{line:?}");
        }
        let params =
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"all":"yes","channel":5}}"#)
                .unwrap()
                .2;
        assert_eq!(flag(&params, "all").unwrap_err().code, code::INVALID_PARAMS);
        assert_eq!(
            required(&params, "channel").unwrap_err().code,
            code::INVALID_PARAMS
        );
    }

    #[test]
    fn failures_keep_their_hint_and_alerts_their_code() {
        let e = RpcError::from(Failure::new("no").hint("do this"));
        assert_eq!(e.code, code::FAILED);
        assert_eq!(
            e.to_json(),
            json!({"code": -32000, "message": "no", "data": {"hint": "do this"}})
        );
        assert_eq!(RpcError::from(Failure::alert("forged")).code, code::ALERT);
    }
}
