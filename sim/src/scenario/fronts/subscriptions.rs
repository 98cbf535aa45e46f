//! `registryChanges` subscriptions over WebSocket (`graphql-transport-ws`) on simulated TCP.
//!
//! A watcher host, never a fault target, subscribes on the control listener of one or two
//! gateways (drawn per seed) to every registry change, and subscribes again when a stream ends
//! or stays silent for [`IDLE_MS`]. Beside it the run drains each gateway incarnation's own
//! change feed (`Node::watch`: every change it applies, in order). The check: what a
//! subscriber received is a contiguous run of that feed, from its first change on: nothing
//! skipped in between, nothing the gateway never applied, and no change applied more than
//! [`GRACE_MS`] before the stream ended that never arrived — unless the stream ended with a
//! `subscription_lagged` error, the one way the protocol allows to fall behind.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard_core::event::Event;
use tokio::sync::broadcast::{Receiver, error::TryRecvError};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::WATCH_DRAWS;
use crate::{CONTROL_PORT, credential};

/// A stream silent this long is given up and subscribed again (the sample instances renew
/// every 2 s, so a live stream is never this quiet for long).
pub const IDLE_MS: u64 = 5_000;
/// How long after a change is applied it may still be on its way when a stream ends.
pub const GRACE_MS: u64 = 100;
/// Subscriptions per gateway in one run, at most.
const SESSIONS_MAX: usize = 64;
/// Changes kept per run, at most (a run applies a few thousand per gateway).
const SEEN_MAX: usize = 200_000;

const QUERY: &str = "subscription { registryChanges { kind instance { service instanceId stamp { physicalMs logical nodeId } } } }";

/// A change, as the check compares them: the key and the stamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub instance_id: String,
    pub stamp: (u64, u32, String),
}

impl Change {
    fn of(event: &Event) -> Self {
        Self {
            service: event.key.service.clone(),
            instance_id: event.key.instance_id.clone(),
            stamp: (
                event.stamp.physical_ms,
                event.stamp.logical,
                event.stamp.node_id.clone(),
            ),
        }
    }

    fn describe(&self) -> String {
        let (p, l, n) = &self.stamp;
        format!("{}/{} {p}.{l}@{n}", self.service, self.instance_id)
    }
}

/// How a subscription ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// `subscription_lagged`: the subscriber fell behind and was told so.
    Lagged,
    /// Closed, failed, silent for [`IDLE_MS`], or still open when the run ended.
    Other(String),
}

/// One subscription, as the watcher saw it.
#[derive(Debug, Clone)]
pub struct Session {
    pub gateway: String,
    pub opened_ms: u64,
    pub seen: Vec<Change>,
    pub end: Option<(u64, End)>,
}

/// What the watcher saw, shared with the step loop.
#[derive(Debug, Default)]
pub struct Watched {
    pub sessions: Vec<Session>,
    pub seen_total: usize,
}

pub type SharedWatched = Rc<RefCell<Watched>>;

/// The gateways a run watches: one or two, drawn from the seed.
pub fn watched_gateways(seed: u64, gateways: &[String]) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ WATCH_DRAWS);
    let mut chosen: Vec<String> = Vec::new();
    for _ in 0..rng.random_range(1..=2usize) {
        let gw = &gateways[rng.random_range(0..gateways.len())];
        if !chosen.contains(gw) {
            chosen.push(gw.clone());
        }
    }
    chosen
}

fn elapsed_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// The watcher host's body: one subscriber per gateway, until `stop`.
pub async fn watcher(
    gateways: Vec<String>,
    watched: SharedWatched,
    stop: Rc<Cell<bool>>,
) -> Result<(), Box<dyn std::error::Error>> {
    let subscribers = gateways
        .into_iter()
        .map(|gw| subscriber(gw, watched.clone(), stop.clone()));
    futures_util::future::join_all(subscribers).await;
    Ok(())
}

async fn subscriber(gateway: String, watched: SharedWatched, stop: Rc<Cell<bool>>) {
    for _ in 0..SESSIONS_MAX {
        if stop.get() {
            return;
        }
        let index = {
            let mut w = watched.borrow_mut();
            w.sessions.push(Session {
                gateway: gateway.clone(),
                opened_ms: elapsed_ms(),
                seen: Vec::new(),
                end: None,
            });
            w.sessions.len() - 1
        };
        let end = session(&gateway, index, &watched).await;
        watched.borrow_mut().sessions[index].end = Some((elapsed_ms(), end));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One subscription, from the upgrade to its end.
async fn session(gateway: &str, index: usize, watched: &SharedWatched) -> End {
    let fail = |what: &str, e: &dyn std::fmt::Display| End::Other(format!("{what}: {e}"));
    let stream = match turmoil::net::TcpStream::connect((gateway, CONTROL_PORT)).await {
        Ok(stream) => stream,
        Err(e) => return fail("connect", &e),
    };
    let mut request = match format!("ws://{gateway}:{CONTROL_PORT}/graphql").into_client_request() {
        Ok(request) => request,
        Err(e) => return fail("request", &e),
    };
    request.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("graphql-transport-ws"),
    );
    let upgrade = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(request, stream),
    );
    let mut socket = match upgrade.await {
        Ok(Ok((socket, _))) => socket,
        Ok(Err(e)) => return fail("upgrade", &e),
        Err(e) => return fail("upgrade", &e),
    };
    // The session belongs to the incarnation that accepted it: a connection begun while the
    // gateway was down completes only once it has restarted, so the time is taken here.
    watched.borrow_mut().sessions[index].opened_ms = elapsed_ms();
    let token = credential("sim-watcher", &["*"]);
    let init = serde_json::json!({
        "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") },
    });
    let subscribe = serde_json::json!({
        "id": "1", "type": "subscribe", "payload": { "query": QUERY },
    });
    for message in [init, subscribe] {
        if let Err(e) = socket.send(Message::text(message.to_string())).await {
            return fail("send", &e);
        }
    }
    loop {
        let next = tokio::time::timeout(Duration::from_millis(IDLE_MS), socket.next()).await;
        let text = match next {
            Err(_) => return End::Other(format!("silent for {IDLE_MS} ms")),
            Ok(None) => return End::Other("closed".to_owned()),
            Ok(Some(Err(e))) => return fail("read", &e),
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(frame)))) => return End::Other(format!("close {frame:?}")),
            Ok(Some(Ok(_))) => continue,
        };
        let json: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        match json["type"].as_str() {
            Some("next") => {
                let payload = &json["payload"];
                if let Some(error) = payload["errors"].as_array().and_then(|e| e.first()) {
                    return match error["extensions"]["code"].as_str() {
                        Some("subscription_lagged") => End::Lagged,
                        code => End::Other(format!("error {code:?}")),
                    };
                }
                let instance = &payload["data"]["registryChanges"]["instance"];
                let stamp = &instance["stamp"];
                let change = Change {
                    service: instance["service"].as_str().unwrap_or_default().to_owned(),
                    instance_id: instance["instanceId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    stamp: (
                        stamp["physicalMs"].as_u64().unwrap_or(0),
                        stamp["logical"].as_u64().unwrap_or(0) as u32,
                        stamp["nodeId"].as_str().unwrap_or_default().to_owned(),
                    ),
                };
                let mut w = watched.borrow_mut();
                if w.seen_total < SEEN_MAX {
                    w.seen_total += 1;
                    w.sessions[index].seen.push(change);
                } else {
                    return End::Other("the run's bound on kept changes".to_owned());
                }
            }
            Some("error") => return End::Other(format!("error {}", json["payload"])),
            Some("complete") => return End::Other("complete".to_owned()),
            _ => {}
        }
    }
}

/// One gateway incarnation's own change feed, drained after every step.
#[derive(Debug)]
pub struct Feed {
    pub gateway: String,
    pub started_ms: u64,
    receiver: Receiver<Event>,
    pub applied: Vec<(u64, Change)>,
    /// The feed fell behind: it cannot judge subscriptions to this incarnation.
    pub gap: bool,
}

impl Feed {
    pub fn new(gateway: &str, started_ms: u64, receiver: Receiver<Event>) -> Self {
        Self {
            gateway: gateway.to_owned(),
            started_ms,
            receiver,
            applied: Vec::new(),
            gap: false,
        }
    }

    /// Takes what the incarnation applied since the last drain, stamped `now_ms`.
    pub fn drain(&mut self, now_ms: u64) {
        loop {
            match self.receiver.try_recv() {
                Ok(event) if self.applied.len() < SEEN_MAX => {
                    self.applied.push((now_ms, Change::of(&event)));
                }
                Ok(_) | Err(TryRecvError::Lagged(_)) => self.gap = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }
}

/// What the subscription check judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubscriptionCounts {
    pub sessions: usize,
    pub changes: usize,
    pub lagged: usize,
    /// Sessions not judged: their incarnation's own feed fell behind.
    pub unjudged: usize,
}

/// Every session's changes are a contiguous run of its incarnation's feed (see the module).
pub fn check(
    watched: &Watched,
    feeds: &[Feed],
    end_ms: u64,
    violations: &mut Vec<String>,
) -> SubscriptionCounts {
    let mut counts = SubscriptionCounts::default();
    for s in watched.sessions.iter().filter(|s| !s.seen.is_empty()) {
        counts.sessions += 1;
        counts.changes += s.seen.len();
        let Some(feed) = feeds
            .iter()
            .rfind(|f| f.gateway == s.gateway && f.started_ms <= s.opened_ms)
        else {
            continue;
        };
        if feed.gap {
            counts.unjudged += 1;
            continue;
        }
        // Where the session's run starts in the feed: at a change applied after the session
        // opened (the gateway subscribes only when the `subscribe` message arrives). One
        // incarnation may apply the same change twice (a duplicate record read after a delete
        // marker collected the first), so every such place is tried, the first from which
        // everything received follows contiguously winning.
        let starts: Vec<usize> = (feed.applied.iter().enumerate())
            .filter(|(_, (at, c))| *at >= s.opened_ms && *c == s.seen[0])
            .map(|(i, _)| i)
            .collect();
        let Some(&first) = starts.first() else {
            violations.push(format!(
                "a subscriber to {} (from {} ms) received {}, which that gateway never applied after the session opened",
                s.gateway,
                s.opened_ms,
                s.seen[0].describe()
            ));
            continue;
        };
        let contiguous = |start: usize| {
            feed.applied.len() - start >= s.seen.len()
                && (feed.applied[start..].iter())
                    .zip(&s.seen)
                    .all(|((_, want), got)| want == got)
        };
        let mut next = starts.into_iter().find(|&i| contiguous(i)).unwrap_or(first);
        let mut broken = false;
        for got in &s.seen {
            match feed.applied.get(next) {
                Some((_, want)) if want == got => next += 1,
                Some((at, want)) => {
                    violations.push(format!(
                        "a subscriber to {} (from {} ms) received {} where the gateway had applied {} (at {at} ms) first: a silent gap",
                        s.gateway, s.opened_ms, got.describe(), want.describe()
                    ));
                    broken = true;
                    break;
                }
                None => {
                    violations.push(format!(
                        "a subscriber to {} (from {} ms) received {} beyond what the gateway applied",
                        s.gateway,
                        s.opened_ms,
                        got.describe()
                    ));
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            continue;
        }
        let ended_ms = match &s.end {
            Some((_, End::Lagged)) => {
                counts.lagged += 1;
                continue;
            }
            Some((at, End::Other(_))) => *at,
            None => end_ms,
        };
        if let Some((at, missed)) = feed.applied[next..]
            .iter()
            .find(|(at, _)| at + GRACE_MS <= ended_ms)
        {
            violations.push(format!(
                "a subscriber to {} (from {} ms) never received {}, applied at {at} ms, though its stream stayed open until {ended_ms} ms without a lag error: a silent gap",
                s.gateway,
                s.opened_ms,
                missed.describe()
            ));
        }
    }
    counts
}
