//! Concurrent reads of node credentials, coalesced into one query each round.
//!
//! A reconnect burst brings hundreds of handshakes at once, each reading one row by lookup id.
//! Read one by one, every row costs a pooled round trip and a Postgres executor start, which
//! is most of what an authenticated upgrade costs. Here the requests waiting when a reader
//! starts a round go out as one `= ANY($1)` query, so the cost per row falls as a burst
//! grows, while a lone request goes out at once, with no added wait. Rounds run in spawned
//! tasks, so a caller that gives up cannot strand the others in its round.

use crate::node_auth::{NodeCredentials, CREDENTIALS_ANY};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Reads of one query each at most; bounds the statement's array and a round's latency.
const MAX_BATCH: usize = 256;
/// Rounds in flight at once; each holds one pooled connection.
const MAX_READERS: usize = 4;

type Reply = Result<Option<NodeCredentials>, Arc<sqlx::Error>>;

/// Coalesces concurrent credential reads; cheap to clone.
#[derive(Clone)]
pub struct CredentialReads {
    pool: PgPool,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    rounds: AtomicU64,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<(String, oneshot::Sender<Reply>)>,
    readers: usize,
}

impl CredentialReads {
    /// Reads through `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            shared: Arc::default(),
        }
    }

    /// Queries run so far.
    pub fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// The credentials stored under `lookup`, if any.
    pub async fn read(&self, lookup: &str) -> Result<Option<NodeCredentials>, sqlx::Error> {
        let (tx, rx) = oneshot::channel();
        let start_reader = {
            let mut queue = self.shared.queue.lock().unwrap();
            queue.waiting.push((lookup.to_owned(), tx));
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
            // the others its message.
            Ok(Err(shared)) => Err(Arc::try_unwrap(shared).unwrap_or_else(|shared| {
                sqlx::Error::Io(std::io::Error::other(shared.to_string()))
            })),
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

    async fn answer(&self, round: Vec<(String, oneshot::Sender<Reply>)>) {
        self.shared.rounds.fetch_add(1, Ordering::Relaxed);
        let lookups: Vec<&str> = round.iter().map(|(lookup, _)| lookup.as_str()).collect();
        let rows = sqlx::query_as::<_, NodeCredentials>(CREDENTIALS_ANY)
            .bind(&lookups)
            .fetch_all(&self.pool)
            .await;
        match rows {
            Ok(rows) => {
                let by_lookup: HashMap<String, NodeCredentials> = rows
                    .into_iter()
                    .map(|row| (row.token_lookup.clone(), row))
                    .collect();
                for (lookup, reply) in round {
                    // Cloned: one node may be asked for twice in a round.
                    let _ = reply.send(Ok(by_lookup.get(&lookup).cloned()));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in round {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
