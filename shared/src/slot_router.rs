//! A Redis Cluster command connection that sends each command to the master owning its key's
//! slot: one multiplexed connection per master, as one Redis has one.
//!
//! The redis crate's own cluster connection passes every command through one task, copies
//! each, and cannot pipeline commands of different slots to the master they share: a deploy to
//! 100,000 nodes took twice as long as on one Redis (BENCHMARKS.md, "Redis Cluster"). Here
//! [`SlotRouter::fan_out`] sends one pipeline per master, all masters at once.
//!
//! Redirections are followed: `MOVED` re-reads the slot map and retries at the named master;
//! `ASK` sends `ASKING` and the command together to the named node; `TRYAGAIN`,
//! `CLUSTERDOWN`, `MASTERDOWN`, `READONLY` and lost connections re-read the map and retry after
//! a short pause. A command is tried at most [`ATTEMPTS`] times; callers bound the whole call
//! with their timeout. A pipeline keeps to one slot (every key of one node shares its hash
//! tag), so it is routed, and retried, as a whole.

use crate::slots::{slot, Addr, SlotMap};
use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::OnceCell;

/// Tries of one command before its last error is returned.
const ATTEMPTS: u32 = 5;
/// Pause before the second try after a retryable failure; doubles with each further try.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Routes commands to a cluster's masters by slot; cheap to clone.
#[derive(Clone)]
pub struct SlotRouter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Credentials and TLS settings every node is reached with (the first seed's).
    seed: redis::ConnectionInfo,
    seeds: Arc<[redis::Client]>,
    timeout: Duration,
    map: RwLock<SlotMap>,
    /// A connection per master, made on first use; removed when it is lost.
    links: Mutex<HashMap<Addr, Arc<OnceCell<MultiplexedConnection>>>>,
    /// One slot-map read at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// Slot-map reads so far: callers that waited for another's read take its result.
    reads: AtomicU64,
}

/// Where a command goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The master of this slot.
    Slot(u16),
    /// Any master (commands without a key).
    Any,
    /// Every master (script loads, flushes).
    AllMasters,
}

/// What a reply asks the router to do next.
enum Next {
    Done,
    MovedTo(Addr),
    AskAt(Addr),
    Retry,
}

impl SlotRouter {
    /// Reads the slot map from the first seed to answer; no master connection is made yet.
    pub async fn connect(seeds: Arc<[redis::Client]>, timeout: Duration) -> RedisResult<Self> {
        let seed = seeds
            .first()
            .ok_or_else(|| RedisError::from((ErrorKind::ClientError, "a cluster needs seeds")))?
            .get_connection_info()
            .clone();
        let router = Self {
            inner: Arc::new(Inner {
                seed,
                seeds,
                timeout,
                map: RwLock::default(),
                links: Mutex::default(),
                refreshing: tokio::sync::Mutex::new(()),
                reads: AtomicU64::new(0),
            }),
        };
        router.refresh().await?;
        Ok(router)
    }

    /// The slot map in use.
    pub fn slot_map(&self) -> SlotMap {
        self.inner.map.read().unwrap().clone()
    }

    /// Re-reads the slot map (from a master, else from a seed); true when it changed. Links to
    /// nodes that no longer serve a slot are closed. Calls made while a read is under way share
    /// it, so a burst of redirections costs one read.
    pub async fn refresh(&self) -> RedisResult<bool> {
        let before = self.inner.reads.load(Ordering::Acquire);
        let _one = self.inner.refreshing.lock().await;
        if self.inner.reads.load(Ordering::Acquire) != before {
            return Ok(false);
        }
        let read = self.read_map().await;
        self.inner.reads.fetch_add(1, Ordering::Release);
        let now = read?;
        let mut map = self.inner.map.write().unwrap();
        if *map == now {
            return Ok(false);
        }
        let masters: std::collections::HashSet<&Addr> = now.masters().collect();
        self.inner
            .links
            .lock()
            .unwrap()
            .retain(|addr, _| masters.contains(addr));
        *map = now;
        Ok(true)
    }

    async fn read_map(&self) -> RedisResult<SlotMap> {
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let known: Vec<Addr> = self.slot_map().masters().cloned().collect();
        let mut last = None;
        for addr in known {
            match self.link(&addr).await {
                Ok(mut conn) => match slots.query_async::<Vec<Value>>(&mut conn).await {
                    Ok(reply) => return SlotMap::parse(&reply),
                    Err(e) => last = Some(self.failed(&addr, e)),
                },
                Err(e) => last = Some(e),
            }
        }
        let config = self.config();
        let tries = self.inner.seeds.iter().map(|client| {
            let (slots, config) = (&slots, &config);
            Box::pin(async move {
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                slots.query_async::<Vec<Value>>(&mut conn).await
            })
        });
        let first = futures_util::future::select_ok(tries).await;
        match first {
            Ok((reply, _)) => SlotMap::parse(&reply),
            Err(e) => Err(last.unwrap_or(e)),
        }
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(self.inner.timeout)
            .set_response_timeout(self.inner.timeout)
    }

    /// The connection to the node at `addr`, made if needed.
    async fn link(&self, addr: &Addr) -> RedisResult<MultiplexedConnection> {
        let cell = self
            .inner
            .links
            .lock()
            .unwrap()
            .entry(addr.clone())
            .or_default()
            .clone();
        let conn = cell
            .get_or_try_init(|| async {
                let (host, port) = addr
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| {
                        RedisError::from((ErrorKind::ClientError, "bad node address"))
                    })?;
                let info = crate::redis_conn::at_address(&self.inner.seed, host, port);
                redis::Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&self.config())
                    .await
            })
            .await?;
        Ok(conn.clone())
    }

    /// Forgets the link to `addr` when `e` shows it is lost (not merely slow); returns `e`.
    fn failed(&self, addr: &Addr, e: RedisError) -> RedisError {
        if lost(&e) {
            self.inner.links.lock().unwrap().remove(addr);
        }
        e
    }

    fn owner(&self, route: Route) -> Option<Addr> {
        let map = self.inner.map.read().unwrap();
        match route {
            Route::Slot(slot) => map.owner(slot),
            Route::Any | Route::AllMasters => map.masters().next().cloned(),
        }
    }

    /// Sends one command where it belongs, following redirections.
    pub async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let route = route(cmd.args_iter());
        if route == Route::AllMasters {
            return self.on_every_master(cmd).await;
        }
        let mut replies = self.exchange(route, Request::Cmd(cmd)).await?;
        replies.pop().unwrap_or(Value::Nil).extract_error()
    }

    /// Sends a pipeline (of one slot) to that slot's master, following redirections; the
    /// replies from `offset` on, `count` of them, errors left in place (as a connection's
    /// `req_packed_commands`).
    pub async fn pipeline(
        &self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let route = pipe
            .cmd_iter()
            .map(|cmd| route(cmd.args_iter()))
            .find(|r| matches!(r, Route::Slot(_)))
            .unwrap_or(Route::Any);
        self.exchange(route, Request::Pipeline(pipe, offset, count))
            .await
    }

    /// Runs commands of any slots: one pipeline per master, every master at once; commands a
    /// master redirected are sent again one by one. How many failed, and the last error.
    pub async fn fan_out(&self, cmds: Vec<Cmd>) -> (usize, Option<RedisError>) {
        let mut by_master: HashMap<Option<Addr>, Vec<Cmd>> = HashMap::new();
        for cmd in cmds {
            let owner = self.owner(route(cmd.args_iter()));
            by_master.entry(owner).or_default().push(cmd);
        }
        let sends = by_master.into_iter().map(|(addr, cmds)| async move {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let replies = match addr {
                Some(addr) => match self.link(&addr).await {
                    Ok(mut conn) => conn
                        .req_packed_commands(&pipe, 0, pipe.len())
                        .await
                        .map_err(|e| self.failed(&addr, e)),
                    Err(e) => Err(e),
                },
                None => Err(RedisError::from((
                    ErrorKind::ClusterDown,
                    "slot not served",
                ))),
            };
            let mut again: Vec<&Cmd> = Vec::new();
            let mut failed = (0, None);
            match replies {
                Ok(replies) => {
                    for (cmd, reply) in pipe.cmd_iter().zip(replies) {
                        match reply.extract_error() {
                            Ok(_) => {}
                            Err(e) if matches!(next(&e), Next::Done) => {
                                failed = (failed.0 + 1, Some(e));
                            }
                            Err(_) => again.push(cmd),
                        }
                    }
                }
                // No answer in time: whether the master ran them is unknown, and sending them
                // again could deliver a push twice. As on one Redis, they count as failed
                // (agents' polls cover them).
                Err(e) if e.is_timeout() => failed = (pipe.len(), Some(e)),
                // A master that is gone (a failover) or a slot nobody serves: sent again one
                // by one, each after the map is read anew.
                Err(_) => again.extend(pipe.cmd_iter()),
            }
            if !again.is_empty() {
                let _ = self.refresh().await;
                for result in join_all(again.into_iter().map(|cmd| self.command(cmd))).await {
                    if let Err(e) = result {
                        failed = (failed.0 + 1, Some(e));
                    }
                }
            }
            failed
        });
        join_all(sends)
            .await
            .into_iter()
            .fold((0, None), |(n, last), (failed, e)| (n + failed, e.or(last)))
    }

    async fn on_every_master(&self, cmd: &Cmd) -> RedisResult<Value> {
        let masters: Vec<Addr> = self.slot_map().masters().cloned().collect();
        let sends = masters.iter().map(|addr| async move {
            let mut conn = self.link(addr).await?;
            conn.req_packed_command(cmd)
                .await
                .and_then(Value::extract_error)
                .map_err(|e| self.failed(addr, e))
        });
        let mut replies = join_all(sends).await.into_iter();
        let first = replies
            .next()
            .unwrap_or_else(|| Err(RedisError::from((ErrorKind::ClusterDown, "no master"))))?;
        replies.find(Result::is_err).unwrap_or(Ok(first))
    }

    /// Sends `request` to the master of `route` and follows redirections; the raw replies.
    async fn exchange(&self, route: Route, request: Request<'_>) -> RedisResult<Vec<Value>> {
        let mut to: Option<Addr> = None;
        let mut asking = false;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(RETRY_PAUSE * 2u32.pow(attempt - 2)).await;
            }
            let Some(addr) = to.take().or_else(|| self.owner(route)) else {
                last = Some(RedisError::from((
                    ErrorKind::ClusterDown,
                    "slot not served",
                )));
                let _ = self.refresh().await;
                continue;
            };
            let replies = match self.link(&addr).await {
                Ok(mut conn) => request.send(&mut conn, asking).await,
                Err(e) => Err(e),
            };
            asking = false;
            let e = match replies {
                Ok(replies) => match replies.iter().find_map(redirection) {
                    None => return Ok(replies),
                    Some(e) => e,
                },
                Err(e) => self.failed(&addr, e),
            };
            match next(&e) {
                Next::Done => return Err(e),
                Next::MovedTo(at) => {
                    to = Some(at);
                    let _ = self.refresh().await;
                }
                Next::AskAt(at) => {
                    to = Some(at);
                    asking = true;
                }
                Next::Retry => {
                    let _ = self.refresh().await;
                }
            }
            last = Some(e);
        }
        Err(last.expect("at least one attempt"))
    }
}

/// A command or a pipeline, as sent to one node.
#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a Cmd),
    /// The pipeline, and the replies wanted (offset, count).
    Pipeline(&'a Pipeline, usize, usize),
}

impl Request<'_> {
    /// Sends it (after `ASKING` when asked to) and returns every reply, errors in place.
    async fn send(self, conn: &mut MultiplexedConnection, asking: bool) -> RedisResult<Vec<Value>> {
        if !asking {
            return match self {
                Request::Cmd(cmd) => Ok(vec![conn.req_packed_command(cmd).await?]),
                Request::Pipeline(pipe, offset, count) => {
                    conn.req_packed_commands(pipe, offset, count).await
                }
            };
        }
        // `ASKING` lets only the next command in: each command gets its own.
        let (cmds, offset, count): (Vec<&Cmd>, usize, usize) = match self {
            Request::Cmd(cmd) => (vec![cmd], 0, 1),
            Request::Pipeline(inner, offset, count) => (inner.cmd_iter().collect(), offset, count),
        };
        let mut pipe = redis::pipe();
        for cmd in &cmds {
            pipe.cmd("ASKING");
            pipe.add_command((*cmd).clone());
        }
        let replies = conn.req_packed_commands(&pipe, 0, pipe.len()).await?;
        Ok(replies
            .into_iter()
            .skip(1)
            .step_by(2)
            .skip(offset)
            .take(count)
            .collect())
    }
}

/// The first reply that asks for another try elsewhere or later, as an error.
fn redirection(reply: &Value) -> Option<RedisError> {
    let Value::ServerError(e) = reply else {
        return None;
    };
    let e = RedisError::from(e.clone());
    (!matches!(next(&e), Next::Done)).then_some(e)
}

/// What to do after `e`.
fn next(e: &RedisError) -> Next {
    match e.kind() {
        ErrorKind::Moved | ErrorKind::Ask => match e.redirect_node() {
            Some((addr, _)) if e.kind() == ErrorKind::Moved => Next::MovedTo(Addr::from(addr)),
            Some((addr, _)) => Next::AskAt(Addr::from(addr)),
            None => Next::Retry,
        },
        ErrorKind::TryAgain
        | ErrorKind::ClusterDown
        | ErrorKind::MasterDown
        | ErrorKind::ReadOnly => Next::Retry,
        _ if lost(e) => Next::Retry,
        _ => Next::Done,
    }
}

/// Whether `e` means the connection is gone (not merely slow to answer).
fn lost(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_connection_refusal() || (e.is_io_error() && !e.is_timeout())
}

/// Where a command goes, from its arguments (the name first).
fn route<'a>(args: impl Iterator<Item = redis::Arg<&'a [u8]>>) -> Route {
    let mut args = args.filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        redis::Arg::Cursor => None,
    });
    let Some(name) = args.next() else {
        return Route::Any;
    };
    match name.to_ascii_uppercase().as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let _script = args.next();
            let keys = args
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u32>().ok());
            match (keys, args.next()) {
                (Some(1..), Some(key)) => Route::Slot(slot(key)),
                _ => Route::Any,
            }
        }
        b"SCRIPT" | b"FUNCTION" | b"FLUSHDB" | b"FLUSHALL" => Route::AllMasters,
        b"CLUSTER" | b"INFO" | b"PING" | b"PUBSUB" | b"CLIENT" | b"CONFIG" | b"DBSIZE"
        | b"TIME" | b"HELLO" | b"COMMAND" | b"MEMORY" | b"LATENCY" | b"SLOWLOG" => Route::Any,
        _ => args.next().map_or(Route::Any, |key| Route::Slot(slot(key))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(cmd: &Cmd) -> Route {
        route(cmd.args_iter())
    }

    #[test]
    fn commands_go_to_their_keys_slot() {
        let key = "flotilla:presence:{7}";
        let want = Route::Slot(slot(b"7"));
        assert_eq!(of(redis::cmd("HGET").arg(key).arg("conn")), want);
        assert_eq!(of(redis::cmd("SPUBLISH").arg("node:{7}").arg("x")), want);
        assert_eq!(
            of(redis::cmd("evalsha").arg("ab").arg(1).arg(key).arg("a")),
            want
        );
        assert_eq!(
            of(redis::cmd("EVALSHA").arg("ab").arg(0).arg("a")),
            Route::Any
        );
        assert_eq!(
            of(redis::cmd("SCRIPT").arg("LOAD").arg("return 1")),
            Route::AllMasters
        );
        assert_eq!(of(redis::cmd("CLUSTER").arg("SLOTS")), Route::Any);
        assert_eq!(of(&redis::cmd("PING")), Route::Any);
    }
}
