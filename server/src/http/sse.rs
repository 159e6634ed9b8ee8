//! `GET /v1/buckets/{bucket}/watch`: a watch as Server-Sent Events.
//!
//! Every entry is an SSE message whose `id:` is its revision and whose `data:` is the
//! entry as JSON. `event: ready` marks the end of the initial data (its id: the revision
//! the live entries come after, which a reconnection resumes from); `event: lost` (data
//! `{"first_retained": n}`) ends the stream when what the watch needed was compacted away.
//! A browser's `EventSource` reconnects by itself after a disconnect and sends the last
//! id it saw as `Last-Event-ID`: the watch then resumes `FROM` that revision + 1, so
//! nothing is missed and nothing comes twice. `event: lost` carries the id `lost`: the
//! reconnection after it is answered 204 No Content, which ends an `EventSource`'s
//! reconnecting.
//!
//! The watch is the engine's cursor into the log, pulled only when hyper asks the body for
//! more, which it does only while the client's socket takes it: a slow client is fed at
//! its own pace and costs the server its cursor, not a queue of events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use logkv::{Entry, Error, Watch, WatchEvent, WatchOptions};
use tokio::sync::{watch, Notify};
use tracing::warn;

use super::json::{ApiError, EntryJson};
use super::routes::Params;
use super::{ConnInfo, Gateway};
use crate::pump::{Pump, Subscriber};
use crate::shared::Shared;

/// The request header a reconnecting `EventSource` sends.
const LAST_EVENT_ID: &str = "last-event-id";
/// The id of `event: lost`: an `EventSource` reconnecting after it sends it back, and is
/// answered 204, which stops its reconnecting (a stream that ended with `lost` cannot be
/// resumed; the client starts a new watch). Without it, it reconnected every few seconds
/// to be told `lost` again.
const LOST_ID: &str = "lost";

/// `GET /v1/buckets/{bucket}/watch[?pattern=P][&history][&from=N][&metaonly][&nodeletes]
/// [&updatesonly]`
pub(crate) async fn watch(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(bucket): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let known = [
        "pattern",
        "history",
        "from",
        "metaonly",
        "nodeletes",
        "updatesonly",
    ];
    let mut params = Params::new(query, &known)?;
    let pattern = params.text("pattern").unwrap_or_else(|| ">".into());
    let mut opts = WatchOptions {
        include_history: params.flag("history"),
        meta_only: params.flag("metaonly"),
        ignore_deletes: params.flag("nodeletes"),
        updates_only: params.flag("updatesonly"),
        from_revision: params.uint("from")?,
        // A list larger than the whole budget would have the connection closed once made.
        max_initial_bytes: Some(gw.shared.client_memory.budget()),
    };
    if let Some(last) = headers.get(LAST_EVENT_ID) {
        if last.as_bytes() == LOST_ID.as_bytes() {
            return Ok(axum::http::StatusCode::NO_CONTENT.into_response());
        }
        // A reconnection: resume after the last event the client has.
        let last: u64 = last
            .to_str()
            .ok()
            .and_then(|v| crate::command::args::decimal(v.trim().as_bytes()))
            .ok_or_else(|| ApiError::bad_arg("Last-Event-ID is not a revision"))?;
        opts.from_revision = Some(last.saturating_add(1));
    }
    let with_value = !opts.meta_only;
    // On a cluster node: the generation of the store watched (a snapshot install replaces
    // it and ends the stream with `lost`), and the revisions below `from` that a node behind
    // the one the client resumes from still applies, which the client has seen.
    let generation = gw.shared.store_generation();
    let skip_below = if gw.shared.cluster.is_some() {
        opts.from_revision.unwrap_or(0)
    } else {
        0
    };
    // The client has seen everything before `from`: `ready`'s id is never below that, also
    // on a node that has applied less than the one the client resumes from.
    let seen = opts.from_revision.unwrap_or(0).saturating_sub(1);
    // A watch with nothing to list (live entries only) takes no listing permit.
    let lists = !opts.updates_only || opts.from_revision.is_some();
    let handle = gw.run(move |store| store.bucket(&bucket)).await?;
    // Subscribe before the watch takes its snapshot: a write in between still wakes us.
    // Held by a guard from here on: the watch fails, or the client hangs up while it is
    // set up (hyper then drops this handler at its next await), and it unsubscribes.
    let notify = Arc::new(Notify::new());
    let pump = gw
        .shared
        .pumps
        .subscribe(&handle, Arc::clone(&notify) as Arc<dyn Subscriber>);
    let subscription = Subscription { pump, notify };
    // The list of initial data is counted against the budget as soon as it is made; only
    // a few are made at once (the others wait here), so that many requests together
    // cannot hold lists that nothing counts yet. The permit goes with the listing to its
    // thread: a client that hangs up meanwhile frees it only once the list is dropped.
    let listing = if lists {
        let permit = Arc::clone(&gw.listings)
            .acquire_owned()
            .await
            .map_err(|e| ApiError::internal(format!("the watch could not start: {e}")))?;
        Some(permit)
    } else {
        None
    };
    let (watch, listing) = gw
        .run(move |_| handle.watch(&pattern, opts).map(|w| (w, listing)))
        .await?;
    conn.hold(watch.initial_bytes());
    drop(listing);
    gw.shared.stats.watchers.fetch_add(1, Ordering::Relaxed);
    let feed = Feed {
        watch,
        conn,
        counting: true,
        with_value,
        generation,
        skip_below,
        seen,
        subscription,
        stop: gw.stop.clone(),
        shared: Arc::clone(&gw.shared),
        ended: false,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A watch's subscription to its bucket's pump, ended when dropped.
struct Subscription {
    pump: Arc<Pump>,
    notify: Arc<Notify>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.pump.unsubscribe(&*self.notify);
    }
}

/// One SSE client's watch.
struct Feed {
    watch: Watch,
    /// The connection, whose budget the watch's initial data counts against until sent.
    conn: ConnInfo,
    /// Whether initial data is left to count.
    counting: bool,
    with_value: bool,
    /// The store generation the watch reads.
    generation: u64,
    /// Entries below this revision are skipped (see `watch`).
    skip_below: u64,
    /// The last revision the client has seen when it resumed (0 for none).
    seen: u64,
    subscription: Subscription,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    ended: bool,
}

impl Feed {
    /// The next event, waiting for a write when there is none; `None` ends the stream
    /// (after `lost`, or at shutdown).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.counting {
                let held = self.watch.initial_bytes();
                self.conn.hold(held);
                self.counting = held > 0;
            }
            if self.ended || *self.stop.borrow() {
                return None;
            }
            if self.shared.store_generation() != self.generation {
                self.ended = true;
                return Some(lost_event(0));
            }
            match self.watch.try_next() {
                Ok(Some(WatchEvent::Entry(e))) if e.revision < self.skip_below => {}
                Ok(Some(WatchEvent::Entry(e))) => return Some(entry_event(&e, self.with_value)),
                Ok(Some(WatchEvent::Ready)) => {
                    // With the id of the revision the live entries start after: a client
                    // that reconnects before any entry came (an `updatesonly` watch)
                    // resumes from there, not with a new watch that misses the gap.
                    let id = self.watch.start_revision().max(self.seen).to_string();
                    return Some(Event::default().event("ready").id(id).data("{}"));
                }
                Ok(Some(WatchEvent::Lost { first_retained })) => {
                    self.ended = true;
                    return Some(lost_event(first_retained));
                }
                Ok(None) => {
                    tokio::select! {
                        () = self.subscription.notify.notified() => {}
                        changed = self.stop.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                        }
                    }
                }
                Err(e) => {
                    // The bucket was dropped (or its log failed): the watch ends, as on RESP.
                    if !matches!(e, Error::Closed) {
                        warn!("watch failed: {e}");
                    }
                    self.ended = true;
                    return Some(lost_event(0));
                }
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if self.counting {
            // Never polled (a HEAD request's body is dropped unread): the list is gone.
            self.conn.hold(0);
        }
        self.shared.stats.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn entry_event(e: &Entry, with_value: bool) -> Event {
    let data = serde_json::to_string(&EntryJson::new(e, with_value))
        .unwrap_or_else(|err| format!("{{\"error\":\"ERR\",\"message\":\"{err}\"}}"));
    Event::default().id(e.revision.to_string()).data(data)
}

fn lost_event(first_retained: u64) -> Event {
    Event::default()
        .event("lost")
        .id(LOST_ID)
        .data(format!("{{\"first_retained\":{first_retained}}}"))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::task::Poll;
    use std::time::Duration;

    use super::*;

    /// A watch request whose client hangs up while the watch is set up (a long initial
    /// scan): hyper drops the handler at its await, and the subscription it made goes with
    /// it. Before, only a failed watch unsubscribed: the subscriber stayed in the bucket's
    /// pump for good, woken by every write. From a review of the gateway.
    #[test]
    fn a_watch_request_dropped_while_it_is_set_up_leaves_no_subscriber() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let store = logkv::Store::open(dir.path(), logkv::Options::default()).expect("open");
            let bucket = store.bucket(logkv::DEFAULT_BUCKET).expect("default");
            // Enough history that the initial scan takes a while.
            for chunk in 0..100 {
                let ops: Vec<logkv::WriteOp> = (0..2_000)
                    .map(|i| logkv::WriteOp::put(format!("k{chunk}.{i}"), "v"))
                    .collect();
                bucket.write(&ops).expect("write");
            }
            let (gw, _stop) = Gateway::for_tests(dir.path(), store);
            let shared = Arc::clone(&gw.shared);
            let client_memory = Arc::clone(&shared.client_memory);
            let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
            let (buffers, _slot) = client_memory.register(1, addr);
            let conn = ConnInfo::new(addr, addr, buffers);
            let query = HashMap::from([("history".to_string(), String::new())]);
            let mut request = Box::pin(watch(
                State(Arc::clone(&gw)),
                Extension(conn),
                HeaderMap::new(),
                Path(logkv::DEFAULT_BUCKET.to_string()),
                Query(query),
            ));
            // Until the handler has subscribed and waits for the watch's set-up.
            loop {
                let polled = futures_util::poll!(request.as_mut());
                assert!(
                    matches!(polled, Poll::Pending),
                    "the watch was set up before the request could be dropped"
                );
                if shared.pumps.subscribers(logkv::DEFAULT_BUCKET) == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            drop(request);
            assert_eq!(shared.pumps.subscribers(logkv::DEFAULT_BUCKET), 0);
        });
    }
}
