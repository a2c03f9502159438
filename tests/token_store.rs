//! The fleet-wide token store and msgid slots on the real broker (each test in a vhost of
//! its own, see `tests/common/broker.rs`), and the refresh rule of `Tokens` racing across
//! three "replicas" against the platform simulator.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::broker::{QueueCounts, TestVhost, unique_vhost};
use common::simulator::TestSimulator;
use els_bridge::broker::{self as bridge, AmqpTokenStore, claim_msgid_slot, token_store};
use els_bridge::config::AmqpSettings;
use els_bridge::platform::token::{RefreshLock, StoreError};
use els_bridge::platform::{MsgIds, PlatformClient, Token, TokenStore, Tokens};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const PREFIX: &str = "els";
const CODE: &str = "H32128200338";
const OTHER: &str = "H32010600021";

async fn connect(url: &str) -> Connection {
    let settings = AmqpSettings { url: SecretString::from(url.to_owned()), ..Default::default() };
    bridge::connect(&settings, "els-bridge token store test").await.expect("connect to the test broker")
}

async fn start(connection: &Connection) -> Arc<AmqpTokenStore> {
    token_store::start(connection, PREFIX).await.expect("start the token store")
}

fn token(value: &str, minutes: i64) -> Token {
    // Whole seconds, as the platform's expireTime has them.
    let now = Utc::now().timestamp();
    Token { value: value.to_owned(), expires_at: chrono::DateTime::from_timestamp(now + minutes * 60, 0).unwrap() }
}

/// Polls `probe` every 20 ms until it is true; panics naming `what` after `timeout`.
async fn wait_until<F: Future<Output = bool>>(what: &str, timeout: Duration, mut probe: impl FnMut() -> F) {
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `task` is still running after `wait`.
async fn assert_pending<T>(task: &mut JoinHandle<T>, wait: Duration, what: &str) {
    if tokio::time::timeout(wait, task).await.is_ok() {
        panic!("{what} completed while it should wait");
    }
}

type Lock = Result<Box<dyn RefreshLock>, StoreError>;

fn spawn_lock(store: &Arc<AmqpTokenStore>, institution: &'static str) -> JoinHandle<Lock> {
    let store = Arc::clone(store);
    tokio::spawn(async move { store.lock_refresh(institution).await })
}

async fn locked(task: JoinHandle<Lock>, within: Duration, what: &str) -> Box<dyn RefreshLock> {
    match tokio::time::timeout(within, task).await {
        Ok(joined) => joined.expect("the lock task").unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: not acquired within {within:?}"),
    }
}

/// A TCP proxy in front of the broker whose connections can be cut at once, so that a
/// replica's connection dies without an AMQP close (as when its process is killed).
struct Proxy {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let registry = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                registry.lock().unwrap().push(pipe);
            }
        });
        Proxy { addr, tasks, accept }
    }

    /// `url` (of the broker) going through this proxy.
    fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let credentials = authority.rsplit_once('@').map(|(c, _)| format!("{c}@")).unwrap_or_default();
        format!("{scheme}://{credentials}{}{path}", self.addr)
    }

    /// Closes every proxied socket: the broker and the client see the TCP connection end.
    fn cut(&self) {
        self.accept.abort();
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

fn broker_host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5672") }
}

async fn proxied(vhost: &TestVhost) -> (Proxy, Connection) {
    let proxy = Proxy::start(broker_host_port(vhost.url())).await;
    let connection = connect(&proxy.url(vhost.url())).await;
    (proxy, connection)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_replaced_by_one_replica_is_seen_by_the_other_at_once() {
    let vhost = unique_vhost("token-store-replace");
    let (c1, c2) = (connect(vhost.url()).await, connect(vhost.url()).await);
    let (s1, s2) = (start(&c1).await, start(&c2).await);
    assert_eq!(s2.current(CODE).await.unwrap(), None);

    let first = token("first-secret", 30);
    s1.replace(CODE, &first).await.unwrap();
    // Read your writes: replace returns once the store's own view has it.
    assert_eq!(s1.current(CODE).await.unwrap(), Some(first.clone()));
    wait_until("the other replica has the first token", Duration::from_secs(5), || async {
        s2.current(CODE).await.unwrap() == Some(first.clone())
    })
    .await;

    let second = token("second-secret", 30);
    s2.replace(CODE, &second).await.unwrap();
    assert_eq!(s2.current(CODE).await.unwrap(), Some(second.clone()));
    wait_until("the first replica switches to the second token", Duration::from_secs(5), || async {
        s1.current(CODE).await.unwrap() == Some(second.clone())
    })
    .await;
    assert_eq!(s1.current(OTHER).await.unwrap(), None, "institutions are separate");
    assert!(!format!("{s1:?}").contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_later_uses_the_existing_token_at_once() {
    let vhost = unique_vhost("token-store-restart");
    let (old, newer, other) = (token("old", 30), token("newer", 31), token("other", 20));
    {
        let connection = connect(vhost.url()).await;
        let store = start(&connection).await;
        store.replace(CODE, &old).await.unwrap();
        store.replace(OTHER, &other).await.unwrap();
        store.replace(CODE, &newer).await.unwrap();
        store.replace("H00000000001", &token("expired", -1)).await.unwrap();
        drop(store);
        // The store's channels may still be closing; the connection goes either way.
        let _ = connection.close(200, "OK".into()).await;
    }
    // Every replica is gone; a new one starts and knows the tokens as soon as start returns.
    let connection = connect(vhost.url()).await;
    let store = start(&connection).await;
    assert_eq!(store.current(CODE).await.unwrap(), Some(newer));
    assert_eq!(store.current(OTHER).await.unwrap(), Some(other));
    assert_eq!(store.current("H00000000001").await.unwrap(), None, "an expired token is not handed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discard_removes_the_token_for_every_replica_but_only_while_it_is_current() {
    let vhost = unique_vhost("token-store-discard");
    let (c1, c2) = (connect(vhost.url()).await, connect(vhost.url()).await);
    let (s1, s2) = (start(&c1).await, start(&c2).await);
    let (first, second) = (token("first", 30), token("second", 30));

    s1.replace(CODE, &first).await.unwrap();
    // A token that was never current: nothing happens.
    s2.discard(CODE, &token("never-current", 30)).await.unwrap();
    assert_eq!(s2.current(CODE).await.unwrap(), Some(first.clone()));

    // s2 discards the first token after s1 replaced it: the log order decides, so the
    // second token stays, even if s2 had not seen it yet when it called discard.
    s1.replace(CODE, &second).await.unwrap();
    s2.discard(CODE, &first).await.unwrap();
    assert_eq!(s2.current(CODE).await.unwrap(), Some(second.clone()));
    // The lock syncs: s1 has applied everything published so far.
    drop(s1.lock_refresh(CODE).await.unwrap());
    assert_eq!(s1.current(CODE).await.unwrap(), Some(second.clone()));

    // Discarding the current token removes it for both.
    s1.discard(CODE, &second).await.unwrap();
    assert_eq!(s1.current(CODE).await.unwrap(), None);
    wait_until("the other replica forgets the discarded token", Duration::from_secs(5), || async {
        s2.current(CODE).await.unwrap().is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_lock_is_exclusive_between_connections_and_within_one() {
    let vhost = unique_vhost("token-store-lock");
    let (c1, c2) = (connect(vhost.url()).await, connect(vhost.url()).await);
    let (s1, s2) = (start(&c1).await, start(&c2).await);

    let held = s1.lock_refresh(CODE).await.unwrap();
    // A waiter that gives up (its future dropped) leaves without taking the lock with it.
    let gave_up = tokio::time::timeout(Duration::from_millis(200), s2.lock_refresh(CODE)).await;
    assert!(gave_up.is_err(), "the lock is held");
    let mut other_replica = spawn_lock(&s2, CODE);
    let mut same_replica = spawn_lock(&s1, CODE);
    assert_pending(&mut other_replica, Duration::from_millis(500), "the other replica's lock").await;
    assert_pending(&mut same_replica, Duration::from_millis(50), "a second lock in the same replica").await;
    // Another institution's lock is independent.
    drop(locked(spawn_lock(&s2, OTHER), Duration::from_secs(5), "the other institution's lock").await);

    let released = Instant::now();
    drop(held);
    // One of the two waiters gets it promptly, the other waits for that one.
    let (next, mut last) = tokio::select! {
        lock = &mut other_replica => (lock.unwrap().unwrap(), same_replica),
        lock = &mut same_replica => (lock.unwrap().unwrap(), other_replica),
    };
    assert!(released.elapsed() < Duration::from_secs(2), "hand-over took {:?}", released.elapsed());
    assert_pending(&mut last, Duration::from_millis(300), "the last waiter").await;
    drop(next);
    drop(locked(last, Duration::from_secs(5), "the last waiter").await);

    // Many holders on both replicas: never two inside at once.
    let inside = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for store in [&s1, &s2, &s1, &s2, &s1, &s2] {
        let (store, inside) = (Arc::clone(store), Arc::clone(&inside));
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let lock = store.lock_refresh(CODE).await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(lock);
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(15), task).await.expect("30 lock hand-overs in time").unwrap();
    }
    // The surplus probes were acknowledged: only the baton is left, back in the queue.
    let queue = token_store::lock_queue_name(PREFIX, CODE);
    let vhost_name = vhost.name().to_owned();
    tokio::task::spawn_blocking(move || {
        common::broker::wait_for_counts(&vhost_name, &queue, QueueCounts::new(1, 0), Duration::from_secs(10))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_holding_the_lock_does_not_block_the_fleet() {
    let vhost = unique_vhost("token-store-crash");
    let (proxy, doomed_connection) = proxied(&vhost).await;
    let doomed = start(&doomed_connection).await;
    let survivor_connection = connect(vhost.url()).await;
    let survivor = start(&survivor_connection).await;

    let held = doomed.lock_refresh(CODE).await.unwrap();
    let mut waiting = spawn_lock(&survivor, CODE);
    assert_pending(&mut waiting, Duration::from_millis(500), "the survivor's lock").await;

    proxy.cut();
    drop(locked(waiting, Duration::from_secs(10), "the lock of a dead holder").await);

    // The dead replica's store says so rather than answering from a stale view or hanging.
    wait_until("the dead replica's store reports the lost connection", Duration::from_secs(10), || async {
        doomed.current(CODE).await.is_err()
    })
    .await;
    assert!(doomed.check().is_err());
    survivor.check().expect("the other replica's store is unaffected");
    let error = tokio::time::timeout(Duration::from_secs(5), doomed.lock_refresh(OTHER))
        .await
        .expect("lock_refresh on a dead store returns")
        .err()
        .expect("lock_refresh on a dead store fails");
    assert!(error.to_string().contains("els.tokens"), "{error}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgid_slots_are_distinct_and_freed_with_their_connection() {
    let vhost = unique_vhost("msgid-slots");
    let slot_queue_gone = |slot: u16| {
        let queue = format!("{PREFIX}.msgid.slot.{slot}");
        let name = vhost.name().to_owned();
        move || {
            let (queue, name) = (queue.clone(), name.clone());
            async move { !common::broker::list_queue_counts(&name).contains_key(&queue) }
        }
    };
    let (c1, c2, c3) = (connect(vhost.url()).await, connect(vhost.url()).await, connect(vhost.url()).await);
    let mut slots = Vec::new();
    for connection in [&c1, &c2, &c3, &c1] {
        slots.push(claim_msgid_slot(connection, PREFIX).await.unwrap());
    }
    assert_eq!(slots, [0, 1, 2, 3], "each claim, also a second one on the same connection, gets its own slot");

    // A connection closed normally frees its slot.
    c2.close(200, "OK".into()).await.unwrap();
    wait_until("slot 1 is freed", Duration::from_secs(10), slot_queue_gone(1)).await;
    let c4 = connect(vhost.url()).await;
    assert_eq!(claim_msgid_slot(&c4, PREFIX).await.unwrap(), 1);

    // So does a connection that dies.
    let (proxy, doomed) = proxied(&vhost).await;
    assert_eq!(claim_msgid_slot(&doomed, PREFIX).await.unwrap(), 4);
    proxy.cut();
    wait_until("slot 4 is freed", Duration::from_secs(10), slot_queue_gone(4)).await;

    // The rest, 4 to 19, and then none is left.
    let c5 = connect(vhost.url()).await;
    for expected in 4..20 {
        assert_eq!(claim_msgid_slot(&c5, PREFIX).await.unwrap(), expected);
    }
    let error = claim_msgid_slot(&c5, PREFIX).await.expect_err("all 20 slots are taken");
    assert!(error.to_string().contains("all 20 msgid slots"), "{error}");
    assert!(error.to_string().contains("RESOURCE-LOCKED"), "{error}");
    // The connection is still usable after the refusal.
    c5.create_channel().await.expect("the connection survives the search");
}

/// Tokens live this long at the simulator of the refresh tests ...
const VALIDITY_SECS: u64 = 8;
/// ... and the replicas refresh them this long before expiry.
const LEAD: Duration = Duration::from_secs(4);

/// A simulator for one institution issuing tokens of [`VALIDITY_SECS`], refusing a new one
/// (9) while the current one has more than 5 s left.
fn short_token_simulator() -> TestSimulator {
    TestSimulator::builder().institutions(1).arg("--token-validity-secs", VALIDITY_SECS).arg("--token-refresh-window-secs", 5).start()
}

/// A replica: its own connection, msgid slot, platform client and store.
async fn replica(vhost: &TestVhost, simulator: &TestSimulator) -> (Connection, Tokens) {
    let connection = connect(vhost.url()).await;
    let slot = claim_msgid_slot(&connection, PREFIX).await.unwrap();
    let client = PlatformClient::new(&simulator.config().platform, Arc::new(MsgIds::new(slot))).unwrap();
    let tokens = Tokens::new(start(&connection).await, client, LEAD);
    (connection, tokens)
}

/// Three replicas, each with its own connection, store, msgid slot and platform client,
/// ask for the token concurrently: the simulator issues exactly one, and in the refresh
/// window exactly one more; a replica started later uses the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_token_issued_once_and_refreshed_once() {
    let vhost = unique_vhost("token-store-e2e");
    let simulator = short_token_simulator();
    let institution = simulator.config().institutions[0].clone();

    let mut connections = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (connection, replica) = replica(&vhost, &simulator).await;
        connections.push(connection);
        tokens.push(replica);
    }

    let race = async |tokens: &[Tokens]| -> Vec<Token> {
        let mut calls = Vec::new();
        for tokens in tokens.iter().cycle().take(60) {
            let (tokens, institution) = (tokens.clone(), institution.clone());
            calls.push(tokio::spawn(async move { tokens.get(&institution).await }));
        }
        let mut got = Vec::new();
        for call in calls {
            got.push(call.await.unwrap().unwrap_or_else(|e| panic!("get failed: {e}")));
        }
        got
    };

    let first = race(&tokens).await;
    assert!(first.iter().all(|t| t == &first[0]), "every replica got the same token");
    let view = simulator.tokens().await;
    assert_eq!(view.institutions[0].issued, 1, "exactly one ELS7001 token issued");
    assert_eq!(view.institutions[0].current_token.as_deref(), Some(first[0].value.as_str()));

    // Into the refresh window: still exactly one new token for everybody.
    wait_until("the token is inside the refresh window", Duration::from_secs(VALIDITY_SECS), || async {
        first[0].remaining(Utc::now()) < LEAD
    })
    .await;
    let second = race(&tokens).await;
    assert!(second.iter().all(|t| t == &second[0]), "every replica switched to the same new token");
    assert_ne!(second[0], first[0]);
    let view = simulator.tokens().await;
    assert_eq!(view.institutions[0].issued, 2, "exactly one refresh");
    assert_eq!(view.institutions[0].current_token.as_deref(), Some(second[0].value.as_str()));
    let counters = simulator.counters().await;
    assert_eq!(counters.by_return_code.get(&9), None, "no replica was refused a token: {counters:?}");

    // A replica started now uses the current token without asking the platform.
    let (_late_connection, late) = replica(&vhost, &simulator).await;
    assert_eq!(late.get(&institution).await.unwrap(), second[0]);
    assert_eq!(simulator.tokens().await.institutions[0].issued, 2);
}

/// A fleet upgraded in place: the broker still holds the refresh-lock queue of the release
/// before (a non-durable classic queue `<prefix>.token.<code>.lock`, held by an old replica
/// in the middle of a refresh). The new stores take their own lock and tokens keep flowing:
/// one token issued, one refresh, no refusal. Needs a broker that still permits transient
/// non-exclusive queues, where such a queue can exist: scripts/test.sh runs it on 3.10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_fleet_keeps_tokens_flowing_beside_the_old_lock_queues() {
    let vhost = unique_vhost("token-store-upgrade");
    let simulator = short_token_simulator();
    let institution = simulator.config().institutions[0].clone();
    let old_queue = format!("{PREFIX}.token.{}.lock", institution.fixmedins_code);

    // The old replica: its lock queue exactly as the release before declared it, and the
    // baton in its hands.
    let old_connection = connect(vhost.url()).await;
    let old = old_connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    arguments.insert("x-expires".into(), AMQPValue::LongLongInt(3_600_000));
    old.queue_declare(old_queue.as_str().into(), QueueDeclareOptions::default(), arguments).await.unwrap_or_else(|e| {
        panic!("cannot declare the old lock queue ({e}): this test needs a broker that permits transient non-exclusive queues")
    });
    let mut holder = old
        .basic_consume(old_queue.as_str().into(), "old-replica".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .unwrap();
    let probe = BasicProperties::default().with_delivery_mode(1);
    old.basic_publish("".into(), old_queue.as_str().into(), BasicPublishOptions::default(), b"", probe).await.unwrap();
    let _baton = tokio::time::timeout(Duration::from_secs(10), holder.next()).await.expect("the old replica's baton").unwrap();

    // Two upgraded replicas.
    let replicas = [replica(&vhost, &simulator).await, replica(&vhost, &simulator).await];
    let first = replicas[0].1.get(&institution).await.expect("a token on the upgraded fleet");
    assert_eq!(replicas[1].1.get(&institution).await.unwrap(), first);
    wait_until("the token is inside the refresh window", Duration::from_secs(VALIDITY_SECS), || async {
        first.remaining(Utc::now()) < LEAD
    })
    .await;
    let second = replicas[1].1.get(&institution).await.expect("a refreshed token on the upgraded fleet");
    assert_ne!(second, first);
    assert_eq!(replicas[0].1.get(&institution).await.unwrap(), second);
    let view = simulator.tokens().await;
    assert_eq!(view.institutions[0].issued, 2, "one token and one refresh");
    assert_eq!(simulator.counters().await.by_return_code.get(&9), None, "no replica was refused a token");

    // The old queue was left alone: its baton still held, nothing else in it.
    let counts = vhost.queue_counts(&old_queue).expect("the old lock queue is still there");
    assert_eq!(counts, QueueCounts::new(0, 1));
    let new_queue = token_store::lock_queue_name(PREFIX, &institution.fixmedins_code);
    assert!(vhost.queue_counts(&new_queue).is_some(), "the new lock queue {new_queue} was used");
}
