//! A plain REST client for tests that look at the emulator (or a namespace)
//! as raw HTTP, where a client library would stop: it reads any body and
//! any broker property, 64-bit sequence numbers included.

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value};

use super::{ROOT_POLICY, ServiceBusEmulator};

/// Requests to one emulator, signed with its root policy.
#[derive(Debug, Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// One received message, its lock kept (unless received and deleted).
#[derive(Debug)]
pub struct Peeked {
    /// 201 a message, 204 none, 4xx refused.
    pub status: u16,
    /// The body, as sent.
    pub body: Bytes,
    /// `BrokerProperties`, parsed.
    pub broker: Map<String, Value>,
    /// Every response header (custom properties among them).
    pub headers: HeaderMap,
}

impl Peeked {
    /// The header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `BrokerProperties.DeliveryCount`.
    pub fn delivery_count(&self) -> Option<u64> {
        self.broker.get("DeliveryCount").and_then(Value::as_u64)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Rest {
    /// A client for `emulator`.
    pub fn new(emulator: &ServiceBusEmulator) -> Rest {
        Rest {
            http: reqwest::Client::new(),
            base: emulator.url(),
            token: emulator.sas_token(ROOT_POLICY).unwrap_or_default(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, url)
            .header("authorization", &self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("service bus emulator unreachable: {e}"))
    }

    /// Send Message Batch (`json`: the batch's JSON array); the status.
    pub async fn send_batch(&self, entity: &str, json: &str) -> u16 {
        let content_type = [("content-type", "application/vnd.microsoft.servicebus.json")];
        let url = format!("{}/{entity}/messages", self.base);
        let r = self
            .call(reqwest::Method::POST, url, &content_type, json.into())
            .await;
        r.status().as_u16()
    }

    /// Send Message: one message, `body` as is, `headers` as given (custom
    /// properties, `BrokerProperties`, `Content-Type`); the status.
    pub async fn send(&self, entity: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> u16 {
        let url = format!("{}/{entity}/messages", self.base);
        let r = self.call(reqwest::Method::POST, url, headers, body).await;
        r.status().as_u16()
    }

    async fn receive(&self, method: reqwest::Method, entity: &str, wait_secs: u64) -> Peeked {
        let url = format!("{}/{entity}/messages/head?timeout={wait_secs}", self.base);
        let r = self.call(method, url, &[], Vec::new()).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let broker = headers
            .get("brokerproperties")
            .and_then(|v| v.to_str().ok())
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        let body = r.bytes().await.unwrap_or_default();
        Peeked {
            status,
            body,
            broker,
            headers,
        }
    }

    /// Peek-Lock, waiting up to `wait_secs`.
    pub async fn peek_lock(&self, entity: &str, wait_secs: u64) -> Peeked {
        self.receive(reqwest::Method::POST, entity, wait_secs).await
    }

    /// Receive and Delete, waiting up to `wait_secs`.
    pub async fn receive_and_delete(&self, entity: &str, wait_secs: u64) -> Peeked {
        self.receive(reqwest::Method::DELETE, entity, wait_secs)
            .await
    }

    async fn at_lock(&self, method: reqwest::Method, peeked: &Peeked) -> u16 {
        let Some(location) = peeked.header("location") else {
            return 0;
        };
        // The Location names the namespace's host: the emulator takes the path.
        let path = location
            .split_once(".servicebus.windows.net")
            .map_or(location, |(_, path)| path);
        let url = format!("{}{path}", self.base);
        self.call(method, url, &[], Vec::new())
            .await
            .status()
            .as_u16()
    }

    /// Completes a peeked message; the status (200, or 404 for a lost lock).
    pub async fn complete(&self, peeked: &Peeked) -> u16 {
        self.at_lock(reqwest::Method::DELETE, peeked).await
    }

    /// Unlocks a peeked message; the status.
    pub async fn unlock(&self, peeked: &Peeked) -> u16 {
        self.at_lock(reqwest::Method::PUT, peeked).await
    }

    /// Renews a peeked message's lock; the status.
    pub async fn renew(&self, peeked: &Peeked) -> u16 {
        self.at_lock(reqwest::Method::POST, peeked).await
    }
}
