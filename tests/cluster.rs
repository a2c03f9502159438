//! The three-node RabbitMQ cluster of issue 15 and the helpers of `common::cluster` that
//! drive it: the work queue `els.events` (a quorum queue) elects a new leader and keeps its
//! messages when the node that leads it is killed with SIGKILL (and a stream led by that
//! node gets a new leader too), and the node rejoins when it is started again.
//!
//! These tests kill nodes of the cluster that `scripts/rabbitmq.sh start --cluster` starts,
//! so they are ignored by a plain `cargo test`: `scripts/test.sh` starts the cluster and runs
//! `cargo test --test cluster -- --ignored` with the environment that `Cluster::from_env`
//! reads. They take `common::broker::exclusive()` (one node failure at a time).

mod common;

use std::time::Duration;

use common::broker::exclusive;
use common::cluster::Cluster;
use common::records::{event, row};
use common::worker::{Amqp, test_retry};
use els_bridge::spec::Infno;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

/// How long a quorum queue may take to elect a new leader among the survivors (a few
/// seconds are usual; Ra's election timeout is about a second).
const ELECTION: Duration = Duration::from_secs(30);

/// The stream of the test.
const STREAM: &str = "cluster-test.stream";

/// Declares the durable stream `name` through `url`.
async fn declare_stream(url: &str, name: &str) {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.expect("connect to the cluster");
    let channel = connection.create_channel().await.expect("channel");
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), options, arguments).await.expect("declare a stream");
    let _ = connection.close(200, "declared".into()).await;
}

#[tokio::test]
#[ignore = "needs the three-node cluster: scripts/test.sh runs it with --ignored"]
#[allow(clippy::await_holding_lock, reason = "one runtime per test; the lock only serialises tests")]
async fn the_work_queue_survives_the_loss_of_its_leader_and_the_node_rejoins() {
    let _exclusive = exclusive();
    let cluster = Cluster::from_env();
    cluster.wait_until_all_running(Duration::from_secs(60));
    let vhost = cluster.vhost("cluster-leader-loss");

    // Declared and published through node 2: the queue's first leader is the node the client
    // is connected to, and the cluster's rabbitmqctl (vhost clean-up) drives node 1.
    let amqp = Amqp::connect(&cluster.url(2, &vhost)).await;
    amqp.declare(&test_retry()).await;
    let sent = event(Infno::Els7002, "H0001", Some(1), row(Infno::Els7002, "leader-loss-1", "2"));
    amqp.publish(std::slice::from_ref(&sent)).await;
    amqp.close().await;
    // A stream beside it, as els.tokens and els.ledger are: its leader is found the same way.
    declare_stream(&cluster.url(2, &vhost), STREAM).await;

    let leader = cluster.wait_for_leader(vhost.name(), "els.events", ELECTION, |_| true);
    let stream_leader = cluster.wait_for_leader(vhost.name(), STREAM, ELECTION, |_| true);
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(vhost.name(), "els.events", ELECTION, |n| n != leader);
    if stream_leader == leader {
        cluster.wait_for_leader(vhost.name(), STREAM, ELECTION, |n| n != leader);
    }

    let reader = Amqp::connect(&cluster.url(new_leader, &vhost)).await;
    let bodies: Vec<_> = reader.take_all("els.events").await.into_iter().map(|message| message.body).collect();
    reader.close().await;
    assert_eq!(bodies, [sent], "the message confirmed before node {leader} was killed, read through node {new_leader}");

    cluster.start(leader);
    cluster.wait_until_all_running(Duration::from_secs(60));
    let after = cluster.wait_for_leader(vhost.name(), "els.events", ELECTION, |_| true);
    eprintln!(
        "els.events: led by node {leader}, then node {new_leader} after the kill; node {leader} rejoined, leader now node {after} \
         (the stream was led by node {stream_leader})"
    );
}
