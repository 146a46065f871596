//! What publishers and consumers of one namespace share: the HTTP
//! transport (with the endpoint override), the SAS signing key, the
//! library's per-entity clients, raw REST requests, and what an entity can do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use azure_core::{HttpClient, Request, Response, Url};
use azure_messaging_servicebus::service_bus::QueueClient;
use causeway_core::{Capabilities, Ordering};

use crate::config::{KeyProperty, ServiceBusConfig};
use crate::error::Error;

/// Content type of a Send Message Batch request.
pub(crate) const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// Sends the library's requests through one pooled reqwest client, to the
/// endpoint override where one is set. The library builds every URL as
/// `https://<namespace>.servicebus.windows.net/...` and signs that; only
/// where the bytes go changes, so signatures stay valid.
#[derive(Debug)]
struct Transport {
    client: reqwest::Client,
    endpoint: Option<Url>,
}

#[async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let Some(endpoint) = &self.endpoint else {
            return self.client.execute_request(request).await;
        };
        let mut request = request.clone();
        let url = request.url_mut();
        let redirected = url.set_scheme(endpoint.scheme()).is_ok()
            && url.set_host(endpoint.host_str()).is_ok()
            && url.set_port(endpoint.port_or_known_default()).is_ok();
        if !redirected {
            return Err(azure_core::Error::message(
                azure_core::error::ErrorKind::Other,
                format!("cannot send to endpoint {endpoint}"),
            ));
        }
        self.client.execute_request(&request).await
    }
}

/// The connection state of a namespace, shared by its publishers and consumers.
pub(crate) struct Shared {
    pub config: ServiceBusConfig,
    pub namespace: String,
    pub policy: String,
    key: String,
    http: Arc<dyn HttpClient>,
    senders: Mutex<HashMap<String, QueueClient>>,
}

impl Shared {
    pub(crate) fn new(
        config: ServiceBusConfig,
        namespace: String,
        policy: String,
        key: String,
        client: reqwest::Client,
        endpoint: Option<Url>,
    ) -> Self {
        Shared {
            config,
            namespace,
            policy,
            key,
            http: Arc::new(Transport { client, endpoint }),
            senders: Mutex::default(),
        }
    }
}

/// A lock token no message has.
const NO_LOCK: &str = "00000000-0000-0000-0000-000000000000";

impl Shared {
    /// The library's client for sending to (or receiving from) queue or
    /// topic `entity`; both send to `<entity>/messages`.
    pub fn sender(&self, entity: &str) -> Result<QueueClient, Error> {
        let mut senders = self
            .senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = senders.get(entity) {
            return Ok(client.clone());
        }
        let client = QueueClient::new(
            self.http.clone(),
            self.namespace.clone(),
            entity.to_owned(),
            self.policy.clone(),
            self.key.clone(),
        )
        .map_err(|e| Error::azure("client", e))?;
        // Destinations rendered from events are unbounded in number; the
        // cache is not (a client is cheap to make again).
        if senders.len() >= causeway_core::template::CACHE_LIMIT {
            senders.clear();
        }
        senders.insert(entity.to_owned(), client.clone());
        Ok(client)
    }

    /// Completes a lock no message has: needs the Listen right only.
    pub(crate) async fn probe_listen(&self, entity: &str) -> Result<(), Error> {
        let (status, body) = self
            .call(
                "ping",
                azure_core::Method::Delete,
                &format!("{entity}/messages/0/{NO_LOCK}"),
                None,
            )
            .await?;
        match status {
            // No such lock: authorized, and the entity exists.
            200 | 400 | 404 => Ok(()),
            405 => Err(Error::config(format!(
                "`{entity}` requires sessions (or cannot be received from): the Service Bus REST API cannot receive from session-enabled entities; receive from an entity without sessions"
            ))),
            _ => Err(Error::http("ping", status, &body)),
        }
    }

    /// Sends an empty batch: needs the Send right only, stores nothing.
    pub(crate) async fn probe_send(&self, entity: &str) -> Result<(), Error> {
        let (status, body) = self
            .call(
                "ping",
                azure_core::Method::Post,
                &format!("{entity}/messages"),
                Some("[]"),
            )
            .await?;
        match status {
            // Taken, or refused as an empty batch: authorized, and there.
            200 | 201 | 400 => Ok(()),
            _ => Err(Error::http("ping", status, &body)),
        }
    }

    /// One signed request to `path` of the namespace: its status and body.
    async fn call(
        &self,
        operation: &'static str,
        method: azure_core::Method,
        path: &str,
        batch: Option<&str>,
    ) -> Result<(u16, String), Error> {
        let url = self.url(path)?;
        let call = self.request(operation, method, &url, batch);
        let reply = Error::bounded(operation, self.config.call_timeout, call).await?;
        Ok((reply.status, reply.text()))
    }

    /// The URL of `path` in the namespace.
    pub fn url(&self, path: &str) -> Result<Url, Error> {
        let url = format!("https://{}.servicebus.windows.net/{path}", self.namespace);
        Url::parse(&url).map_err(|e| Error::config(format!("entity path `{path}`: {e}")))
    }

    /// One signed request (a JSON batch as its body, or none), through the
    /// transport: what came back, read by causeway rather than the client
    /// library, which cannot parse every message the service returns (a
    /// body that is not UTF-8, 64-bit sequence numbers).
    pub async fn request(
        &self,
        operation: &'static str,
        method: azure_core::Method,
        url: &Url,
        batch: Option<&str>,
    ) -> Result<Reply, Error> {
        let mut request = Request::new(url.clone(), method);
        request.insert_header("authorization", sas_token(url, &self.policy, &self.key)?);
        match batch {
            Some(body) => {
                request.insert_header("content-type", BATCH_CONTENT_TYPE);
                request.set_body(body.to_owned());
            }
            None => request.insert_header("content-length", "0"),
        }
        let response = self
            .http
            .execute_request(&request)
            .await
            .map_err(|e| Error::azure(operation, e))?;
        let (status, headers, body) = response.deconstruct();
        let headers = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_str().to_owned()))
            .collect();
        let body = body
            .collect()
            .await
            .map_err(|e| Error::azure(operation, e))?;
        Ok(Reply {
            status: u16::from(status),
            headers,
            body,
        })
    }
}

/// A response, as it came.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

impl Reply {
    /// The header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A SAS token for `url`, valid for an hour, as the library signs: HMAC-SHA256
/// with the key's text over the encoded URI and the expiry.
fn sas_token(url: &Url, policy: &str, key: &str) -> Result<String, Error> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let sr: String = url::form_urlencoded::byte_serialize(url.as_str().as_bytes()).collect();
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let signature = azure_core::hmac::hmac_sha256(
        &format!("{sr}\n{expiry}"),
        &azure_core::auth::Secret::new(STANDARD.encode(key)),
    )
    .map_err(|e| Error::azure("sign", e))?;
    let sig: String = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect();
    Ok(format!(
        "SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={policy}"
    ))
}

/// What a Service Bus entity can do over REST:
/// - `nack(delay)` keeps the lock (renewing it) for the delay, then unlocks:
///   Service Bus has no delayed abandon, so the delay is the consumer's.
/// - A lock that runs out redelivers (ack timeout = the entity's lock duration).
/// - `reject` where a dead-letter entity is configured.
/// - Native dedup where the entities detect duplicates (declared in config).
/// - No ordering: without sessions (which REST cannot receive) competing
///   receivers and redeliveries reorder.
/// - Competing consumers on a queue or subscription share the work, and
///   what was not completed stays (durable resume).
pub(crate) fn capabilities(config: &ServiceBusConfig, dead_letter: bool) -> Capabilities {
    Capabilities {
        per_message_nack: true,
        delayed_redelivery: true,
        ack_timeout_redelivery: true,
        dead_letter,
        native_dedup: config.duplicate_detection,
        ordering: Ordering::None,
        // Where the key goes into a property, a key's messages go in one
        // lane of requests, and a lane stops at a failed request.
        ordered_publish: config.publish.key_property != KeyProperty::None,
        // Each call is its own HTTP requests, which may overtake each other.
        pipelined_order: false,
        consumer_groups: true,
        durable_resume: true,
        // Any payload fits once base64-encoded (4/3), with room for the properties.
        max_message_bytes: (config.max_message_bytes * 3 / 4).saturating_sub(2048),
        max_batch: 100,
    }
}
