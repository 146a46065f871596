//! The REST surface: routes, request parsing, responses. Status codes follow
//! Microsoft's Service Bus REST reference: 201 sent or locked, 204 nothing
//! to receive, 200 completed/unlocked/renewed, 400 bad request, 401
//! authorization failure, 403 too large, 404 no such message under that
//! lock, 410 no such entity.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::verify;
use super::store::{Incoming, Message, Missing, Target, resolve, target};
use super::{Right, Shared};

/// Longest long poll a peek-lock may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Default long poll when `timeout` is not given (the service's is 60 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Time-driven changes (lock expiry, scheduled messages) are noticed at least this often.
const RECHECK: Duration = Duration::from_millis(50);
const BATCH: &str = "application/vnd.microsoft.servicebus.json";
const DEFAULT_CONTENT_TYPE: &str = "application/atom+xml;type=entry;charset=utf-8";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(move |method, uri, headers, body| {
        let shared = shared.clone();
        async move { handle(&shared, method, uri, headers, body).await }
    })
}

/// What a request asks for, from its method and path.
enum Operation<'a> {
    Send,
    PeekLock,
    ReceiveAndDelete,
    Complete(&'a str, &'a str),
    Unlock(&'a str, &'a str),
    Renew(&'a str, &'a str),
}

fn fail(status: StatusCode, detail: impl Into<String>) -> Response {
    (status, detail.into()).into_response()
}

fn missing(m: Missing, path: &str) -> Response {
    match m {
        Missing::Gone => fail(StatusCode::GONE, format!("entity `{path}` does not exist")),
        Missing::Invalid => fail(
            StatusCode::BAD_REQUEST,
            format!("`{path}` does not support this operation"),
        ),
    }
}

async fn handle(
    shared: &Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_matches('/');
    let resource = format!("{}.servicebus.windows.net/{path}", shared.namespace);
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let policy = match verify(authorization, &resource, |name| {
        shared.policy(name).map(|p| p.key)
    }) {
        Ok(name) => shared.policy(&name),
        Err(why) => return fail(StatusCode::UNAUTHORIZED, format!("401 Unauthorized: {why}")),
    };
    let Some((entity, rest)) = split(path) else {
        return fail(StatusCode::BAD_REQUEST, format!("no operation in `{path}`"));
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let operation = match (&method, segments.as_slice()) {
        (&Method::POST, []) => Operation::Send,
        (&Method::POST, ["head"]) => Operation::PeekLock,
        (&Method::DELETE, ["head"]) => Operation::ReceiveAndDelete,
        (&Method::DELETE, [id, lock]) => Operation::Complete(id, lock),
        (&Method::PUT, [id, lock]) => Operation::Unlock(id, lock),
        (&Method::POST, [id, lock]) => Operation::Renew(id, lock),
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("{method} {path} is not an operation"),
            );
        }
    };
    let right = match operation {
        Operation::Send => Right::Send,
        _ => Right::Listen,
    };
    if !policy.is_some_and(|p| p.allows(right)) {
        return fail(
            StatusCode::UNAUTHORIZED,
            format!(
                "401 Unauthorized: '{right:?}' claim(s) are required to perform this operation"
            ),
        );
    }
    if !matches!(operation, Operation::Send) && requires_session(shared, entity) {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "`{entity}` requires sessions: the REST API cannot receive or settle its messages"
            ),
        );
    }
    match operation {
        Operation::Send if shared.busy() => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServerBusy: the request was throttled; retry after 2 seconds",
        ),
        Operation::Send => send(shared, entity, &headers, body),
        Operation::PeekLock | Operation::ReceiveAndDelete => {
            let delete = matches!(operation, Operation::ReceiveAndDelete);
            receive(shared, entity, timeout(&uri), delete).await
        }
        Operation::Complete(id, lock)
        | Operation::Unlock(id, lock)
        | Operation::Renew(id, lock) => {
            let mut entities = shared.entities_for(entity);
            let (queue, dead) = match resolve(&mut entities, entity) {
                Ok(found) => found,
                Err(m) => return missing(m, entity),
            };
            let now = Utc::now();
            let done = match operation {
                Operation::Complete(..) => queue.complete(dead, id, lock, now),
                Operation::Unlock(..) => queue.unlock(dead, id, lock, now),
                _ => queue.renew(dead, id, lock, now).is_some(),
            };
            drop(entities);
            if !done {
                return fail(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no message `{id}` locked with `{lock}` (lock lost or message settled)"
                    ),
                );
            }
            shared.changed.notify_waiters();
            StatusCode::OK.into_response()
        }
    }
}

/// Whether `entity` is a session-enabled queue.
fn requires_session(shared: &Shared, entity: &str) -> bool {
    let mut entities = shared.entities_for(entity);
    matches!(target(&mut entities, entity), Ok(Target::Receiver(q, false)) if q.options.requires_session)
}

/// `<entity path>/messages/<rest>` → (entity path, rest).
fn split(path: &str) -> Option<(&str, &str)> {
    if let Some(entity) = path.strip_suffix("/messages") {
        return Some((entity, ""));
    }
    let at = path.rfind("/messages/")?;
    Some((&path[..at], &path[at + "/messages/".len()..]))
}

fn timeout(uri: &Uri) -> Duration {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("timeout="))
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
        .min(MAX_TIMEOUT)
}

/// One message of a batch (Send Message Batch's JSON).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchItem {
    body: String,
    #[serde(default)]
    broker_properties: Map<String, Value>,
    #[serde(default)]
    user_properties: Map<String, Value>,
}

/// Headers that are HTTP's or the protocol's, not custom properties.
fn standard_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "content-type"
            | "content-length"
            | "host"
            | "brokerproperties"
            | "user-agent"
            | "accept"
            | "accept-encoding"
            | "connection"
            | "expect"
            | "transfer-encoding"
            | "date"
            | "te"
    ) || name.starts_with("x-ms-")
}

fn send(shared: &Shared, entity: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let request_size = body.len();
    let messages = if content_type
        .as_deref()
        .is_some_and(|ct| ct.starts_with(BATCH))
    {
        let items: Vec<BatchItem> = match serde_json::from_slice(&body) {
            Ok(items) => items,
            Err(e) => return fail(StatusCode::BAD_REQUEST, format!("unreadable batch: {e}")),
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            // The service ignores a batch message's ContentType.
            let mut broker = item.broker_properties;
            broker.remove("ContentType");
            match incoming(Bytes::from(item.body), None, broker, item.user_properties) {
                Ok(m) => out.push(m),
                Err(e) => return fail(StatusCode::BAD_REQUEST, e),
            }
        }
        out
    } else {
        let broker = match headers.get("brokerproperties") {
            Some(v) => match v
                .to_str()
                .ok()
                .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
            {
                Some(map) => map,
                None => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "BrokerProperties is not a JSON object",
                    );
                }
            },
            None => Map::new(),
        };
        let mut user = Map::new();
        for (name, value) in headers {
            if standard_header(name.as_str()) {
                continue;
            }
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            // A quoted value is a string; anything else is kept as its text.
            let value = serde_json::from_str::<Value>(&text)
                .ok()
                .filter(Value::is_string)
                .unwrap_or(Value::String(text));
            user.insert(name.as_str().to_owned(), value);
        }
        match incoming(body, content_type, broker, user) {
            Ok(m) => vec![m],
            Err(e) => return fail(StatusCode::BAD_REQUEST, e),
        }
    };
    let now = Utc::now();
    let mut entities = shared.entities_for(entity);
    let target = match target(&mut entities, entity) {
        Ok(Target::Receiver(_, true)) | Err(Missing::Invalid) => {
            return missing(Missing::Invalid, entity);
        }
        Err(m) => return missing(m, entity),
        Ok(t) => t,
    };
    let limit = match &target {
        Target::Receiver(q, _) => q.options.max_message_bytes,
        Target::Topic(t) => t.options.max_message_bytes,
    };
    let (partitioned, dedup) = match &target {
        Target::Receiver(q, _) => (q.options.partitioned, q.options.duplicate_detection),
        Target::Topic(t) => (t.options.partitioned, t.options.duplicate_detection),
    };
    if partitioned
        && let Some(first) = messages.first()
        && messages
            .iter()
            .any(|m| m.partition(dedup.is_some()) != first.partition(dedup.is_some()))
    {
        shared
            .partition_refusals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return fail(
            StatusCode::BAD_REQUEST,
            "a batch to a partitioned entity must hold messages of one partition key \
             (PartitionKey, SessionId, or MessageId where duplicate detection is on)",
        );
    }
    if let Target::Receiver(q, _) = &target
        && q.options.requires_session
        && messages
            .iter()
            .any(|m| m.properties.get("SessionId").is_none())
    {
        return fail(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "`{entity}` requires sessions: a message without a SessionId cannot be sent to it"
            ),
        );
    }
    if let Some(big) = messages.iter().find(|m| m.size() > limit) {
        return fail(
            StatusCode::FORBIDDEN,
            format!(
                "message of {} bytes exceeds the limit of {limit}",
                big.size()
            ),
        );
    }
    if request_size > limit {
        return fail(
            StatusCode::FORBIDDEN,
            format!("request of {request_size} bytes exceeds the limit of {limit}"),
        );
    }
    match target {
        Target::Receiver(q, _) => {
            let incoming: usize = messages.iter().map(Incoming::size).sum();
            if let Some(max) = q.options.max_size_bytes
                && q.main.bytes() + incoming > max
            {
                return fail(
                    StatusCode::FORBIDDEN,
                    format!(
                        "QuotaExceeded: the maximum entity size of {max} bytes has been reached or exceeded"
                    ),
                );
            }
            for m in &messages {
                q.enqueue(m, true, now);
            }
        }
        Target::Topic(t) => {
            for m in &messages {
                t.publish(m, now);
            }
        }
    }
    drop(entities);
    shared.changed.notify_waiters();
    StatusCode::CREATED.into_response()
}

/// A message from its parts; broker properties are validated.
/// Service Bus quotas (learn.microsoft.com, "Service Bus quotas"): message,
/// session and partition ids of at most 128 characters; any one property
/// at most 32 KB, all properties (system ones included) at most 64 KB. One
/// message over them fails its whole request, as the service answers.
const MAX_ID_CHARS: usize = 128;
const MAX_PROPERTY_BYTES: usize = 32 * 1024;
const MAX_PROPERTIES_BYTES: usize = 64 * 1024;

fn check_limits(
    message_id: Option<&str>,
    broker: &Map<String, Value>,
    user: &Map<String, Value>,
) -> Result<(), String> {
    let ids = [("MessageId", message_id)].into_iter().chain(
        ["SessionId", "PartitionKey"]
            .into_iter()
            .map(|n| (n, broker.get(n).and_then(Value::as_str))),
    );
    for (name, id) in ids {
        if let Some(id) = id
            && id.chars().count() > MAX_ID_CHARS
        {
            return Err(format!("{name} is longer than {MAX_ID_CHARS} characters"));
        }
    }
    let size = |name: &str, value: &Value| {
        name.len()
            + match value {
                Value::String(s) => s.len(),
                other => other.to_string().len(),
            }
    };
    let mut total = message_id.map_or(0, |id| "MessageId".len() + id.len());
    for (name, value) in broker.iter().chain(user) {
        let one = size(name, value);
        if one > MAX_PROPERTY_BYTES {
            return Err(format!(
                "property `{name}` is {one} bytes; a property may be {MAX_PROPERTY_BYTES}"
            ));
        }
        total += one;
    }
    if total > MAX_PROPERTIES_BYTES {
        return Err(format!(
            "the properties are {total} bytes; all of them may be {MAX_PROPERTIES_BYTES}"
        ));
    }
    Ok(())
}

fn incoming(
    body: Bytes,
    content_type: Option<String>,
    mut broker: Map<String, Value>,
    user: Map<String, Value>,
) -> Result<Incoming, String> {
    let text = |broker: &mut Map<String, Value>, name: &str| -> Result<Option<String>, String> {
        match broker.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "BrokerProperties.{name} must be a string, not {other}"
            )),
        }
    };
    let message_id = text(&mut broker, "MessageId")?;
    let content_type = text(&mut broker, "ContentType")?.or(content_type);
    let time_to_live = match broker.remove("TimeToLive") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    format!("BrokerProperties.TimeToLive must be positive seconds, not {v}")
                })?,
        ),
    };
    let scheduled = match text(&mut broker, "ScheduledEnqueueTimeUtc")? {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc2822(&s)
                .map_err(|e| format!("ScheduledEnqueueTimeUtc `{s}`: {e}"))?
                .with_timezone(&Utc),
        ),
    };
    if let (Some(Value::String(a)), Some(Value::String(b))) =
        (broker.get("SessionId"), broker.get("PartitionKey"))
        && a != b
    {
        return Err("SessionId and PartitionKey must be the same when both are set".into());
    }
    check_limits(message_id.as_deref(), &broker, &user)?;
    // The rest are kept as sent; unknown ones are ignored, as the service does.
    let properties = broker
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "Label"
                    | "CorrelationId"
                    | "SessionId"
                    | "PartitionKey"
                    | "ReplyTo"
                    | "To"
                    | "ReplyToSessionId"
            )
        })
        .collect();
    Ok(Incoming {
        message_id,
        body,
        content_type,
        properties,
        time_to_live,
        scheduled,
        user,
    })
}

async fn receive(shared: &Shared, entity: &str, wait: Duration, delete: bool) -> Response {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a send between the look and the wait wakes us.
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let found = {
            let mut entities = shared.entities_for(entity);
            let (queue, dead) = match resolve(&mut entities, entity) {
                Ok(found) => found,
                Err(m) => return missing(m, entity),
            };
            let now = Utc::now();
            if delete {
                queue.receive_and_delete(dead, now)
            } else {
                queue.peek_lock(dead, now)
            }
        };
        if let Some(m) = found {
            return delivered(shared, entity, &m, delete);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return StatusCode::NO_CONTENT.into_response();
        }
        let _ = tokio::time::timeout((deadline - now).min(RECHECK), changed).await;
    }
}

/// HTTP dates as Service Bus writes them (RFC 1123).
fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn delivered(shared: &Shared, entity: &str, m: &Message, deleted: bool) -> Response {
    let mut broker = m.properties.clone();
    broker.insert("DeliveryCount".into(), m.delivery_count.into());
    broker.insert("EnqueuedSequenceNumber".into(), m.sequence.into());
    broker.insert("EnqueuedTimeUtc".into(), http_date(m.enqueued).into());
    broker.insert("MessageId".into(), m.message_id.clone().into());
    broker.insert("SequenceNumber".into(), m.sequence.into());
    broker.insert("State".into(), "Active".into());
    broker.insert("TimeToLive".into(), m.time_to_live.as_secs_f64().into());
    if let (false, Some(lock)) = (deleted, &m.lock) {
        broker.insert("LockToken".into(), lock.token.clone().into());
        broker.insert("LockedUntilUtc".into(), http_date(lock.until).into());
    }
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.insert(n, v);
        }
    };
    put("brokerproperties", &Value::Object(broker).to_string());
    put(
        "content-type",
        m.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE),
    );
    if let (false, Some(lock)) = (deleted, &m.lock) {
        put(
            "location",
            &format!(
                "https://{}.servicebus.windows.net/{entity}/messages/{}/{}",
                shared.namespace, m.sequence, lock.token
            ),
        );
    }
    // Custom properties: one header each, strings in quotes without any
    // escaping (the service's form, as far as documented: docs/headers.md).
    for (name, value) in &m.user {
        match value {
            Value::String(s) => put(name, &format!("\"{s}\"")),
            other => put(name, &other.to_string()),
        }
    }
    let status = if deleted {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, headers, m.body.clone()).into_response()
}
