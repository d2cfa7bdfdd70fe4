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
//! tag), so it goes to one master; of its commands only those redirected are sent again.
//!
//! A command whose connection died while it was in flight is sent again too (whether the
//! master ran it is unknown), so while a master fails a push can arrive twice; pushes are
//! hints that make an agent re-poll, so a second one costs a poll.

use crate::slots::{slot, Addr, SlotMap};
use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisResult, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Slot-map reads begun so far (see [`SlotRouter::refresh`]).
    reads: AtomicU64,
    /// Turns of commands without a key over the masters.
    turn: AtomicUsize,
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
                turn: AtomicUsize::new(0),
            }),
        };
        router.refresh().await?;
        Ok(router)
    }

    /// The slot map in use.
    pub fn slot_map(&self) -> SlotMap {
        self.inner.map.read().unwrap().clone()
    }

    /// Re-reads the slot map (see [`Self::read_map`]); true when it changed. Links to nodes
    /// that no longer serve a slot are closed. A call that waited while another read was under
    /// way takes that read's result only if the read began after the call did, so a burst of
    /// redirections costs one read and nobody gets a map older than their call.
    pub async fn refresh(&self) -> RedisResult<bool> {
        let before = self.inner.reads.load(Ordering::Acquire);
        let _one = self.inner.refreshing.lock().await;
        if self.inner.reads.load(Ordering::Acquire) > before {
            return Ok(false);
        }
        self.inner.reads.fetch_add(1, Ordering::AcqRel);
        let now = self.read_map().await?;
        let mut map = self.inner.map.write().unwrap();
        if *map == now {
            return Ok(false);
        }
        let masters: HashSet<&Addr> = now.masters().collect();
        self.inner
            .links
            .lock()
            .unwrap()
            .retain(|addr, _| masters.contains(addr));
        *map = now;
        Ok(true)
    }

    /// `CLUSTER SLOTS` from whichever known master answers first (asked all at once, over the
    /// links already open, so a master that is down does not hold the read up), else from
    /// whichever seed does (over new connections).
    async fn read_map(&self) -> RedisResult<SlotMap> {
        let mut slots = redis::cmd("CLUSTER");
        slots.arg("SLOTS");
        let slots = &slots;
        let half = self.inner.timeout / 2;
        let known = self.masters();
        let from_masters: Vec<_> = known
            .iter()
            .map(|addr| {
                Box::pin(async move {
                    let mut conn = self.link(addr).await?;
                    let reply = slots.query_async::<Vec<Value>>(&mut conn).await;
                    reply.map_err(|e| self.failed(addr, e))
                })
            })
            .collect();
        if !from_masters.is_empty() {
            let first = tokio::time::timeout(half, futures_util::future::select_ok(from_masters));
            if let Ok(Ok((reply, _))) = first.await {
                return SlotMap::parse(&reply);
            }
        }
        let config = self.config();
        let from_seeds = self.inner.seeds.iter().map(|client| {
            let config = &config;
            Box::pin(async move {
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                slots.query_async::<Vec<Value>>(&mut conn).await
            })
        });
        let first = tokio::time::timeout(half, futures_util::future::select_ok(from_seeds)).await;
        match first {
            Ok(Ok((reply, _))) => SlotMap::parse(&reply),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RedisError::from((
                ErrorKind::IoError,
                "no cluster node answered CLUSTER SLOTS in time",
            ))),
        }
    }

    /// Every master of the map, once each.
    fn masters(&self) -> Vec<Addr> {
        let map = self.inner.map.read().unwrap();
        let mut seen = HashSet::new();
        map.masters()
            .filter(|addr| seen.insert(*addr))
            .cloned()
            .collect()
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
                let info = crate::redis_conn::at_node(&self.inner.seed, addr)?;
                redis::Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&self.config())
                    .await
            })
            .await?;
        Ok(conn.clone())
    }

    /// Forgets the link to `addr` when `e` shows it is lost or unresponsive; returns `e`.
    fn failed(&self, addr: &Addr, e: RedisError) -> RedisError {
        if lost(&e) || e.is_timeout() {
            self.inner.links.lock().unwrap().remove(addr);
        }
        e
    }

    /// The master for `route`; commands without a key take turns over the masters.
    fn owner(&self, route: Route) -> Option<Addr> {
        match route {
            Route::Slot(slot) => self.inner.map.read().unwrap().owner(slot),
            Route::Any | Route::AllMasters => {
                let masters = self.masters();
                let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
                masters.get(turn % masters.len().max(1)).cloned()
            }
        }
    }

    /// Sends one command where it belongs, following redirections.
    pub async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let route = route(cmd.args_iter());
        if route == Route::AllMasters {
            return self.on_every_master(cmd).await;
        }
        let mut replies = self.exchange(route, &[cmd], None).await?;
        replies.pop().unwrap_or(Value::Nil).extract_error()
    }

    /// Sends a pipeline (of one slot) to that slot's master, following redirections; the
    /// replies from `offset` on, `count` of them, errors left in place (as a connection's
    /// `req_packed_commands`). Transactions are refused: nothing here needs one, and a
    /// redirection could not resend part of one.
    pub async fn pipeline(
        &self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        if pipe.is_transaction() {
            return Err(RedisError::from((
                ErrorKind::ClientError,
                "transactions are not supported on a Redis Cluster here",
            )));
        }
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        let route = cmds
            .iter()
            .map(|cmd| route(cmd.args_iter()))
            .find(|r| matches!(r, Route::Slot(_)))
            .unwrap_or(Route::Any);
        let replies = self.exchange(route, &cmds, Some(pipe)).await?;
        Ok(replies.into_iter().skip(offset).take(count).collect())
    }

    /// Runs commands of any slots: one pipeline per master, every master at once; commands a
    /// master redirected, or that never reached a master (one that is gone, a connection that
    /// failed), are sent again one by one. A pipeline that got no answer in time counts as
    /// failed: the master may have run it, and a push must not go out twice for a slow one.
    /// How many failed, and the last error; each step is bounded by the command timeout.
    pub async fn fan_out(&self, cmds: Vec<Cmd>) -> (usize, Option<RedisError>) {
        let mut by_master: HashMap<Option<Addr>, Vec<Cmd>> = HashMap::new();
        let map = self.slot_map();
        for cmd in cmds {
            let owner = match route(cmd.args_iter()) {
                Route::Slot(slot) => map.owner(slot),
                other => self.owner(other),
            };
            by_master.entry(owner).or_default().push(cmd);
        }
        let timeout = self.inner.timeout;
        let sends = by_master.into_iter().map(|(addr, cmds)| async move {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            let mut again: Vec<&Cmd> = Vec::new();
            let mut failed = (0, None);
            let conn = match &addr {
                Some(addr) => self.link(addr).await.map(|c| (addr, c)),
                None => Err(RedisError::from((
                    ErrorKind::ClusterDown,
                    "slot not served",
                ))),
            };
            match conn {
                Err(_) => again.extend(pipe.cmd_iter()),
                Ok((addr, mut conn)) => {
                    let replies = conn.req_packed_commands(&pipe, 0, pipe.len()).await;
                    match replies.map_err(|e| self.failed(addr, e)) {
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
                        Err(e) if e.is_timeout() => failed = (pipe.len(), Some(e)),
                        // The master is gone (a failover): the commands never reached it.
                        Err(_) => again.extend(pipe.cmd_iter()),
                    }
                }
            }
            if !again.is_empty() {
                let _ = tokio::time::timeout(timeout, self.refresh()).await;
                let sends = again
                    .into_iter()
                    .map(|cmd| tokio::time::timeout(timeout, self.command(cmd)));
                for result in join_all(sends).await {
                    match result {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => failed = (failed.0 + 1, Some(e)),
                        Err(_) => failed = (failed.0 + 1, Some(crate::redis_conn::timed_out())),
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

    /// Sends `cmd` to every master, and to every other node this router was sent to (an
    /// importing node during a migration, which `CLUSTER SLOTS` does not name yet): a script
    /// load must reach wherever the script will run. Succeeds if any node took it.
    async fn on_every_master(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut nodes: HashSet<Addr> = self.masters().into_iter().collect();
        nodes.extend(self.inner.links.lock().unwrap().keys().cloned());
        let sends = nodes.iter().map(|addr| async move {
            let mut conn = self.link(addr).await?;
            conn.req_packed_command(cmd)
                .await
                .and_then(Value::extract_error)
                .map_err(|e| self.failed(addr, e))
        });
        let replies = join_all(sends).await;
        let mut first_error = None;
        for reply in replies {
            match reply {
                Ok(value) => return Ok(value),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| RedisError::from((ErrorKind::ClusterDown, "no master"))))
    }

    /// Sends `cmds` to the master of `route` and follows redirections: only the commands
    /// redirected are sent again (others may have run already, as a key-less `PUBLISH` does
    /// on the node that refused its neighbours), each reply put back in its place.
    async fn exchange(
        &self,
        route: Route,
        cmds: &[&Cmd],
        whole: Option<&Pipeline>,
    ) -> RedisResult<Vec<Value>> {
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut pending: Vec<usize> = (0..cmds.len()).collect();
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
            let batch: Vec<&Cmd> = pending.iter().map(|&i| cmds[i]).collect();
            // The caller's pipeline as it is while nothing was redirected yet.
            let whole = whole.filter(|_| batch.len() == cmds.len());
            let sent = match self.link(&addr).await {
                Ok(mut conn) => send(&mut conn, &batch, whole, asking)
                    .await
                    .map_err(|e| self.failed(&addr, e)),
                Err(e) => Err(e),
            };
            asking = false;
            let e = match sent {
                Ok(values) => {
                    let mut redirected = Vec::new();
                    let mut first = None;
                    for (i, value) in pending.iter().zip(values) {
                        match redirection(&value) {
                            Some(e) => {
                                first.get_or_insert(e);
                                redirected.push(*i);
                            }
                            None => replies[*i] = Some(value),
                        }
                    }
                    pending = redirected;
                    match first {
                        None => {
                            return Ok(replies
                                .into_iter()
                                .map(|v| v.unwrap_or(Value::Nil))
                                .collect())
                        }
                        Some(e) => e,
                    }
                }
                Err(e) => e,
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

/// Sends commands to one node (each after `ASKING` when asked to: `ASKING` lets only the next
/// command in; `whole`, when given, is the same commands as one pipeline, sent as it is) and
/// returns one reply per command, errors in place.
async fn send(
    conn: &mut MultiplexedConnection,
    cmds: &[&Cmd],
    whole: Option<&Pipeline>,
    asking: bool,
) -> RedisResult<Vec<Value>> {
    match (cmds, whole, asking) {
        ([cmd], _, false) => return Ok(vec![conn.req_packed_command(cmd).await?]),
        (_, Some(pipe), false) => return conn.req_packed_commands(pipe, 0, pipe.len()).await,
        _ => {}
    }
    let mut pipe = redis::pipe();
    for cmd in cmds {
        if asking {
            pipe.cmd("ASKING");
        }
        pipe.add_command((*cmd).clone());
    }
    let replies = conn.req_packed_commands(&pipe, 0, pipe.len()).await?;
    let step = if asking { 2 } else { 1 };
    Ok(replies.into_iter().skip(step - 1).step_by(step).collect())
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
