//! Concurrent reads of rows by key, coalesced into one query each round.
//!
//! A reconnect burst brings hundreds of handshakes at once, and a busy api hundreds of config
//! polls, each reading one row by its token's lookup id. Read one by one, every row costs a
//! pooled round trip and a Postgres executor start, which is most of what such a request
//! costs. Here the requests waiting when a reader starts a round go out as one query over the
//! array of their keys, so the cost per row falls as a burst grows, while a lone request goes
//! out at once, with no added wait. Rounds run in spawned tasks, so a caller that gives up
//! cannot strand the others in its round.

use prometheus_client::metrics::histogram::Histogram;
use sqlx::postgres::PgRow;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Reads of one query each at most; bounds the statement's array and a round's latency.
const MAX_BATCH: usize = 256;
/// Rounds in flight at once; each holds one pooled connection.
const MAX_READERS: usize = 4;
/// Upper bounds of the keys-per-round histogram, up to [`MAX_BATCH`].
const ROUND_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A row read by a text key, which it carries.
pub trait Keyed {
    /// The key the row was read under.
    fn key(&self) -> &str;
}

/// A row that [`BatchedReads`] can read.
pub trait BatchRow:
    for<'r> sqlx::FromRow<'r, PgRow> + Keyed + Clone + Send + Unpin + 'static
{
}
impl<R: for<'r> sqlx::FromRow<'r, PgRow> + Keyed + Clone + Send + Unpin + 'static> BatchRow for R {}

type Reply<R> = Result<Option<R>, Arc<sqlx::Error>>;

/// Coalesces concurrent reads of `R` by key; cheap to clone.
pub struct BatchedReads<R> {
    pool: PgPool,
    shared: Arc<Shared<R>>,
}

impl<R> Clone for BatchedReads<R> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            shared: self.shared.clone(),
        }
    }
}

struct Shared<R> {
    /// Selects the rows whose key is in the text array `$1`.
    statement: &'static str,
    queue: Mutex<Queue<R>>,
    rounds: AtomicU64,
    /// Keys asked for in each round.
    round_sizes: Histogram,
}

struct Queue<R> {
    waiting: Vec<(String, oneshot::Sender<Reply<R>>)>,
    readers: usize,
}

impl<R: BatchRow> BatchedReads<R> {
    /// Reads through `pool` with `statement`, which selects the rows whose key is in the text
    /// array `$1`.
    pub fn new(pool: PgPool, statement: &'static str) -> Self {
        Self {
            pool,
            shared: Arc::new(Shared {
                statement,
                queue: Mutex::new(Queue {
                    waiting: Vec::new(),
                    readers: 0,
                }),
                rounds: AtomicU64::new(0),
                round_sizes: Histogram::new(ROUND_SIZE_BUCKETS),
            }),
        }
    }

    /// Queries run so far.
    pub fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// Keys asked for per round, for a service's metrics (a handle on the same histogram).
    pub fn round_sizes(&self) -> Histogram {
        self.shared.round_sizes.clone()
    }

    /// The row stored under `key`, if any.
    pub async fn read(&self, key: &str) -> Result<Option<R>, sqlx::Error> {
        let (tx, rx) = oneshot::channel();
        let start_reader = {
            let mut queue = self.shared.queue.lock().unwrap();
            queue.waiting.push((key.to_owned(), tx));
            let start = queue.readers < MAX_READERS;
            if start {
                queue.readers += 1;
            }
            start
        };
        if start_reader {
            tokio::spawn(self.clone().serve());
        }
        match rx.await {
            Ok(Ok(row)) => Ok(row),
            // Every reader of a failed round gets the error: the last to look takes it whole,
            // the others a copy of its kind.
            Ok(Err(shared)) => Err(Arc::try_unwrap(shared).unwrap_or_else(|e| copy_of(&e))),
            Err(_) => Err(sqlx::Error::WorkerCrashed),
        }
    }

    /// Runs rounds until nobody is waiting.
    async fn serve(self) {
        loop {
            let round = {
                let mut queue = self.shared.queue.lock().unwrap();
                if queue.waiting.is_empty() {
                    // Under the lock: a request queued after this sees the free reader slot.
                    queue.readers -= 1;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect::<Vec<_>>()
            };
            self.answer(round).await;
        }
    }

    async fn answer(&self, round: Vec<(String, oneshot::Sender<Reply<R>>)>) {
        self.shared.rounds.fetch_add(1, Ordering::Relaxed);
        self.shared.round_sizes.observe(round.len() as f64);
        let keys: Vec<&str> = round.iter().map(|(key, _)| key.as_str()).collect();
        // A runtime statement, not checked at compile time: the caller chooses it (and the row
        // type). The gateway's batched-read tests and the api's config poll tests cover it.
        let rows = sqlx::query_as::<_, R>(self.shared.statement)
            .bind(&keys)
            .fetch_all(&self.pool)
            .await;
        // One key may be asked for twice in a round: each asker gets the row.
        let mut askers: HashMap<String, Vec<oneshot::Sender<Reply<R>>>> = HashMap::new();
        for (key, reply) in round {
            askers.entry(key).or_default().push(reply);
        }
        match rows {
            Ok(rows) => {
                for row in rows {
                    let Some(mut replies) = askers.remove(row.key()) else {
                        continue;
                    };
                    let last = replies.pop();
                    for reply in replies {
                        let _ = reply.send(Ok(Some(row.clone())));
                    }
                    if let Some(reply) = last {
                        let _ = reply.send(Ok(Some(row)));
                    }
                }
                // Keys without a row.
                for reply in askers.into_values().flatten() {
                    let _ = reply.send(Ok(None));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for reply in askers.into_values().flatten() {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The same kind of error (sqlx errors cannot be cloned): an outage stays an outage (see
/// [`crate::db::is_unavailable`]), anything else keeps its message.
fn copy_of(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        e if crate::db::is_unavailable(e) => sqlx::Error::Io(std::io::Error::other(e.to_string())),
        other => sqlx::Error::InvalidArgument(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_the_kind_of_error() {
        use crate::db::is_unavailable;
        assert!(matches!(
            copy_of(&sqlx::Error::PoolTimedOut),
            sqlx::Error::PoolTimedOut
        ));
        for outage in [
            sqlx::Error::Io(std::io::Error::other("refused")),
            sqlx::Error::Protocol("unexpected response".into()),
        ] {
            let copy = copy_of(&outage);
            assert!(is_unavailable(&copy), "{copy}");
            assert_eq!(
                copy.to_string(),
                format!("error communicating with database: {outage}")
            );
        }
        let bug = sqlx::Error::ColumnNotFound("x".into());
        let copy = copy_of(&bug);
        assert!(!is_unavailable(&copy));
        assert_eq!(copy.to_string(), bug.to_string());
    }
}
