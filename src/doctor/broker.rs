//! The broker: each node of `amqp.addresses` (or `amqp.url`'s host) on its own, then, on
//! the first node that let doctor in, what the whole vhost holds. Nothing is created,
//! consumed or changed: queues and exchanges are looked up with passive declares, their
//! types and arguments compared with a declare of exactly what the worker declares (a
//! no-op when they match, refused when they differ), and publishing is tried with an
//! empty message that no queue takes.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Confirmation, Connection, ErrorKind, ExchangeKind};

use super::Check;
use super::amqp_probe::{self, ServerInfo};
use crate::broker::address::Address;
use crate::broker::topology::{self, DELIVERY_LIMIT, Topology};
use crate::broker::{BrokerError, connect, log, token_store};
use crate::config::{AmqpSettings, Config};

/// How long the publishing probe waits for its confirm: a broker under a memory or disk
/// alarm holds it.
const PUBLISH_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker's checks, and the connection later checks (the fleet token) use.
pub struct BrokerChecks {
    /// What was found.
    pub checks: Vec<Check>,
    /// A connection to the first node that let doctor in.
    pub connection: Option<Connection>,
}

/// Checks every node, then the vhost on the first node that answered.
pub async fn check(config: &Config) -> BrokerChecks {
    let Some(amqp) = &config.amqp else {
        let check = Check::warn(
            "broker",
            "configured",
            "no [amqp] section: only `send` (tokens in platform.token_file) and `validate` can run",
            "add [amqp] with the broker's url for the worker, publish, dlq and report",
        );
        return BrokerChecks { checks: vec![check], connection: None };
    };
    let nodes = match connect::nodes(amqp) {
        Ok(nodes) => nodes,
        Err(error) => {
            return BrokerChecks { checks: vec![Check::fail("broker", "url", error.to_string(), "fix amqp.url")], connection: None };
        }
    };
    let mut checks = Vec::new();
    let mut first: Option<(Connection, ServerInfo, AMQPUri)> = None;
    for (address, uri) in nodes {
        let (found, connected) = check_node(amqp, &address, uri.clone()).await;
        checks.extend(found);
        match (connected, &first) {
            (Some((connection, info)), None) => first = Some((connection, info, uri)),
            (Some((connection, _)), Some(_)) => {
                crate::broker::close(&connection, "doctor done").await;
            }
            (None, _) => {}
        }
    }
    let Some((connection, info, uri)) = first else { return BrokerChecks { checks, connection: None } };
    checks.extend(check_vhost(config, amqp, &connection, &info, &uri.vhost).await);
    BrokerChecks { checks, connection: Some(connection) }
}

/// One node: reachable, TLS, its version, and whether it lets the URL's user in.
async fn check_node(amqp: &AmqpSettings, address: &Address, uri: AMQPUri) -> (Vec<Check>, Option<(Connection, ServerInfo)>) {
    let subject = format!("broker {address}");
    let timeout = Duration::from_secs(amqp.connect_timeout_secs.max(1));
    let started = Instant::now();
    if let Err(error) = reach(&uri, timeout).await {
        let fix = "is RabbitMQ running on that host and port (5672, 5671 for TLS), and is no firewall in between? Check amqp.url / amqp.addresses";
        return (vec![Check::fail(&subject, "reachable", format!("cannot open a TCP connection: {error}"), fix)], None);
    }
    let mut checks = vec![Check::ok(&subject, "reachable", format!("TCP connection in {} ms", started.elapsed().as_millis()))];
    let tls = match connect::tls_config(amqp) {
        Ok(tls) => tls,
        Err(error) => {
            checks.push(Check::fail(&subject, "tls", error.to_string(), "fix amqp.ca_file"));
            return (checks, None);
        }
    };
    let info = match amqp_probe::server_info(uri.clone(), tls, timeout).await {
        Ok(info) => info,
        Err(error) => {
            checks.push(probe_failure(&subject, &uri, &error));
            return (checks, None);
        }
    };
    if uri.scheme == AMQPScheme::AMQPS {
        let roots = if amqp.ca_file.is_some() { "amqp.ca_file" } else { "the system's roots" };
        checks.push(Check::ok(&subject, "tls", format!("the certificate names {} and is trusted by {roots}", uri.authority.host)));
    }
    checks.push(version(&subject, &info));
    match connect::connect_node(amqp, uri.clone(), "els-bridge doctor").await {
        Ok(connection) => {
            let detail = format!("as user {:?} on vhost {:?}", uri.authority.userinfo.username, uri.vhost);
            checks.push(Check::ok(&subject, "authenticated", detail));
            (checks, Some((connection, info)))
        }
        Err(error) => {
            checks.push(refused(&subject, &uri, &error));
            (checks, None)
        }
    }
}

async fn reach(uri: &AMQPUri, timeout: Duration) -> std::io::Result<()> {
    let connecting = tokio::net::TcpStream::connect((uri.authority.host.as_str(), uri.authority.port));
    match tokio::time::timeout(timeout, connecting).await {
        Ok(connected) => connected.map(drop),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {} s", timeout.as_secs()))),
    }
}

/// The node accepted TCP but did not introduce itself as an AMQP broker.
fn probe_failure(subject: &str, uri: &AMQPUri, error: &std::io::Error) -> Check {
    if uri.scheme == AMQPScheme::AMQPS {
        let fix = "the broker's certificate must name this host and be signed by amqp.ca_file (or a system root); \
                   is this the TLS port (5671)?";
        return Check::fail(subject, "tls", format!("TLS or AMQP handshake failed: {error}"), fix);
    }
    let fix = "is this an AMQP port of a running broker (not the management port 15672, not a TLS port with amqp://)?";
    Check::fail(subject, "protocol", format!("no AMQP 0-9-1 answer: {error}"), fix)
}

/// The product and version, and whether it is supported.
fn version(subject: &str, info: &ServerInfo) -> Check {
    let named =
        format!("{} {}{}", info.product, info.version, info.cluster_name.as_ref().map(|c| format!(", cluster {c}")).unwrap_or_default());
    let check = match info.major_minor() {
        _ if info.product != "RabbitMQ" => {
            Check::warn(subject, "version", format!("{named}: not RabbitMQ"), "els-bridge is tested with RabbitMQ 3.10 to 4.3 only")
        }
        Some(version) if version < (3, 10) => {
            Check::fail(subject, "version", format!("{named}: older than 3.10"), "upgrade RabbitMQ: 3.10 to 4.3 are supported")
        }
        Some(version) if version > (4, 3) => Check::warn(
            subject,
            "version",
            format!("{named}: newer than the releases tested"),
            "tested with 3.10 to 4.3; read its release notes",
        ),
        Some(_) => Check::ok(subject, "version", named),
        None => Check::warn(subject, "version", format!("{named}: version not readable"), "els-bridge supports RabbitMQ 3.10 to 4.3"),
    };
    check.with("product", info.product.clone()).with("version", info.version.clone())
}

/// Why the node did not let the URL's user in (the password is never shown).
fn refused(subject: &str, uri: &AMQPUri, error: &BrokerError) -> Check {
    let text = error.to_string();
    let user = &uri.authority.userinfo.username;
    let fix = if text.contains("ACCESS_REFUSED") {
        format!(
            "the broker refused user {user:?} or its password: check the user and password of amqp.url (ELS_BRIDGE__AMQP__URL) and `rabbitmqctl list_users`"
        )
    } else if text.contains("NOT_ALLOWED") || text.contains("vhost") {
        format!(
            "vhost {:?} does not exist or user {user:?} has no permissions on it: `rabbitmqctl list_permissions -p {}`",
            uri.vhost, uri.vhost
        )
    } else {
        "check amqp.url's user, password and vhost".to_owned()
    };
    Check::fail(subject, "authenticated", format!("the AMQP connection was not opened: {text}"), fix)
}

/// What the vhost holds, checked on one connection.
async fn check_vhost(config: &Config, amqp: &AmqpSettings, connection: &Connection, info: &ServerInfo, vhost: &str) -> Vec<Check> {
    let topology = Topology::new(amqp, &config.retry);
    let mut checks = vec![publishing(connection, &amqp.name_prefix).await, exchange(connection, &topology.exchange).await];
    let work = limited_queue(connection, &topology.queue, info, vhost).await;
    checks.extend(work.checks);
    if let Some(counts) = work.counts {
        checks.push(consumers(&topology.queue, counts));
    }
    let dead = limited_queue(connection, &topology.dead_letter_queue, info, vhost).await;
    checks.extend(dead.checks);
    if let Some(counts) = dead.counts {
        checks.push(dead_letters(&topology.dead_letter_queue, counts));
    }
    checks.push(delay_queues(connection, &topology).await);
    let ledger_age = format!("{}D", config.ledger.retention_days);
    checks.push(stream(connection, &token_store::stream_name(&amqp.name_prefix), token_store::MAX_AGE).await);
    checks.push(stream(connection, &crate::ledger::stream_name(&amqp.name_prefix), &ledger_age).await);
    checks
}

/// Publishing works (no memory or disk alarm blocks it): an empty message to the default
/// exchange that no queue takes, confirmed by the broker.
async fn publishing(connection: &Connection, prefix: &str) -> Check {
    let routing_key = format!("{prefix}.doctor.probe-no-such-queue");
    let probe = async {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let confirm = channel
            .basic_publish("".into(), routing_key.as_str().into(), BasicPublishOptions::default(), b"", BasicProperties::default())
            .await?;
        let confirmed = confirm.await;
        let _ = channel.close(200, "probed".into()).await;
        confirmed
    };
    let fix_alarm = "a memory or disk alarm is in effect: `rabbitmqctl status` (alarms), free memory or disk on the broker's host";
    match tokio::time::timeout(PUBLISH_PROBE_TIMEOUT, probe).await {
        Ok(Ok(Confirmation::Ack(_))) if !connection.status().blocked() => {
            Check::ok("broker", "publishing", "a probe message was confirmed: no memory or disk alarm blocks publishers")
        }
        Ok(Ok(_)) => Check::fail("broker", "publishing", "the broker refused a probe message (negative confirm)", fix_alarm),
        Ok(Err(error)) => {
            Check::fail("broker", "publishing", format!("publishing failed: {error}"), "check the user's write permission on the vhost")
        }
        Err(_) => Check::fail(
            "broker",
            "publishing",
            format!("a probe message was not confirmed within {} s: the broker blocks publishers", PUBLISH_PROBE_TIMEOUT.as_secs()),
            fix_alarm,
        ),
    }
}

/// Whether a lapin error is the broker's 404 (no such queue or exchange).
fn not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(e) if e.get_id() == AMQPSoftError::NOTFOUND.get_id())
}

/// The broker's text of a refusal (no secret in it).
fn broker_text(error: &lapin::Error) -> String {
    match error.kind() {
        ErrorKind::ProtocolError(e) => e.get_message().to_string(),
        _ => error.to_string(),
    }
}

const START_A_WORKER: &str = "start a worker once: it declares the topology at start-up (README: Broker topology)";

async fn exchange(connection: &Connection, name: &str) -> Check {
    let check = format!("exchange {name}");
    let declare = async |passive: bool| {
        let channel = connection.create_channel().await?;
        let options = ExchangeDeclareOptions { passive, durable: true, ..Default::default() };
        channel.exchange_declare(name.into(), ExchangeKind::Topic, options, FieldTable::default()).await?;
        let _ = channel.close(200, "checked".into()).await;
        Ok::<(), lapin::Error>(())
    };
    match declare(true).await {
        Err(error) if not_found(&error) => return Check::fail("broker", &check, "missing", START_A_WORKER),
        Err(error) => return Check::fail("broker", &check, broker_text(&error), "check the user's permissions on the vhost"),
        Ok(()) => {}
    }
    match declare(false).await {
        Ok(()) => Check::ok("broker", &check, "topic, durable"),
        Err(error) => Check::fail(
            "broker",
            &check,
            broker_text(&error),
            "the exchange must be a durable topic exchange: delete it and start a worker",
        ),
    }
}

/// Messages ready and consumers of a queue, from a passive declare.
#[derive(Debug, Clone, Copy)]
pub(super) struct Counts {
    messages: u32,
    consumers: u32,
}

/// Looks a queue up; `None` when it does not exist.
pub(super) async fn passive(connection: &Connection, name: &str) -> Result<Option<Counts>, lapin::Error> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions { passive: true, ..Default::default() };
    match channel.queue_declare(name.into(), options, FieldTable::default()).await {
        Ok(queue) => {
            let _ = channel.close(200, "checked".into()).await;
            Ok(Some(Counts { messages: queue.message_count(), consumers: queue.consumer_count() }))
        }
        Err(error) if not_found(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Declares an existing queue with `arguments`: a no-op when they are its own, refused
/// (PRECONDITION_FAILED) when they differ.
async fn equivalent(connection: &Connection, name: &str, arguments: FieldTable) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.into(), options, arguments).await?;
    let _ = channel.close(200, "checked".into()).await;
    Ok(())
}

/// The checks of the work or dead-letter queue, and its counts when it exists.
struct QueueChecks {
    checks: Vec<Check>,
    counts: Option<Counts>,
}

/// The work or dead-letter queue: a quorum queue, with the delivery limit where it was
/// declared with one.
async fn limited_queue(connection: &Connection, name: &str, info: &ServerInfo, vhost: &str) -> QueueChecks {
    let check = format!("queue {name}");
    let counts = match passive(connection, name).await {
        Ok(Some(counts)) => counts,
        Ok(None) => return QueueChecks { checks: vec![Check::fail("broker", &check, "missing", START_A_WORKER)], counts: None },
        Err(error) => {
            let check = Check::fail("broker", &check, broker_text(&error), "check the user's permissions on the vhost");
            return QueueChecks { checks: vec![check], counts: None };
        }
    };
    let checks = match equivalent(connection, name, topology::quorum_arguments(topology::delivery_limit_arguments())).await {
        Ok(()) => vec![Check::ok("broker", &check, format!("quorum queue, x-delivery-limit {DELIVERY_LIMIT}"))],
        Err(error) if topology::lacks_delivery_limit(&error) => {
            match equivalent(connection, name, topology::quorum_arguments(FieldTable::default())).await {
                Ok(()) => vec![Check::ok("broker", &check, "quorum queue"), without_delivery_limit(name, info, vhost)],
                Err(error) => vec![mismatch(&check, &error)],
            }
        }
        Err(error) => vec![mismatch(&check, &error)],
    };
    QueueChecks { checks, counts: Some(counts) }
}

fn mismatch(check: &str, error: &lapin::Error) -> Check {
    let fix = "the queue was declared otherwise than the worker declares it; its arguments cannot change: move its messages \
               (shovel) to a new queue of that name, or ask the broker's administrator (README: Broker topology)";
    Check::fail("broker", check, broker_text(error), fix)
}

/// A queue declared by an earlier release without `x-delivery-limit` (README: RabbitMQ
/// versions): on 4.0 and later it drops a message handed back more than 20 times unless a
/// policy says otherwise, which AMQP cannot show.
fn without_delivery_limit(name: &str, info: &ServerInfo, vhost: &str) -> Check {
    let pattern = name.replace('.', "\\.");
    let set_policy = format!(
        "rabbitmqctl set_policy -p {vhost} --apply-to queues --priority 1 els-delivery-limit '^{pattern}$' \
         '{{\"delivery-limit\":{DELIVERY_LIMIT}}}' (fold it into an existing policy; README: RabbitMQ versions)"
    );
    let check = format!("delivery limit {name}");
    let found = match info.major() {
        Some(major) if major >= 4 => Check::warn(
            "broker",
            &check,
            format!(
                "declared without x-delivery-limit by an earlier release: RabbitMQ {} drops a message handed back more than 20 times \
                 unless a policy sets delivery-limit (doctor cannot see policies over AMQP)",
                info.version
            ),
            format!(
                "unless `rabbitmqctl list_queues -p {vhost} name policy effective_policy_definition` shows a delivery-limit for it, \
                 set one: {set_policy}"
            ),
        ),
        _ => Check::ok(
            "broker",
            &check,
            format!(
                "declared without x-delivery-limit by an earlier release; RabbitMQ {} has no default limit, but 4.0 and later drop \
                 a message after 20 deliveries: before upgrading, {set_policy}",
                info.version
            ),
        ),
    };
    found.with("x_delivery_limit", false)
}

fn consumers(queue: &str, counts: Counts) -> Check {
    let detail = format!("{} consumer(s), {} message(s) ready", counts.consumers, counts.messages);
    let check = Check::ok("broker", &format!("consumers {queue}"), detail.clone());
    let check = if counts.consumers == 0 {
        Check::warn(
            "broker",
            &format!("consumers {queue}"),
            format!("{detail}: no worker consumes it"),
            "start the workers (els-bridge worker)",
        )
    } else {
        check
    };
    check.with("consumers", counts.consumers).with("messages", counts.messages)
}

fn dead_letters(queue: &str, counts: Counts) -> Check {
    let check = format!("dead letters {queue}");
    let found = match counts.messages {
        0 => Check::ok("broker", &check, "none waiting"),
        n => Check::warn(
            "broker",
            &check,
            format!("{n} dead letter(s) waiting for a person"),
            "see why with `els-bridge dlq stats` and `dlq peek`; fix the cause, then `els-bridge dlq replay` (README: Operations runbook)",
        ),
    };
    found.with("messages", counts.messages)
}

/// Every delay queue present, with the worker's arguments.
async fn delay_queues(connection: &Connection, topology: &Topology) -> Check {
    let queues = topology.delay_queues();
    let (mut missing, mut different, mut waiting) = (Vec::new(), Vec::new(), 0u64);
    for (name, arguments) in &queues {
        match passive(connection, name).await {
            Ok(Some(counts)) => {
                waiting += u64::from(counts.messages);
                if let Err(error) = equivalent(connection, name, topology::quorum_arguments(arguments.clone())).await {
                    different.push(format!("{name}: {}", broker_text(&error)));
                }
            }
            Ok(None) => missing.push(name.clone()),
            Err(error) => different.push(format!("{name}: {}", broker_text(&error))),
        }
    }
    let check = "delay queues";
    let found = if !different.is_empty() {
        Check::fail(
            "broker",
            check,
            different.join("; "),
            "a delay queue differs from what the worker declares (retry settings changed?): delete the empty ones named and start a worker",
        )
    } else if !missing.is_empty() {
        Check::fail("broker", check, format!("missing: {}", missing.join(", ")), START_A_WORKER)
    } else {
        Check::ok("broker", check, format!("{} quorum queues, {waiting} message(s) waiting for a retry", queues.len()))
    };
    found.with("messages", waiting)
}

/// A stream of the fleet (tokens, ledger), with the retention asked for.
async fn stream(connection: &Connection, name: &str, max_age: &str) -> Check {
    let check = format!("stream {name}");
    match passive(connection, name).await {
        Ok(Some(_)) => {}
        Ok(None) => return Check::fail("broker", &check, "missing", START_A_WORKER),
        Err(error) => return Check::fail("broker", &check, broker_text(&error), "check the user's permissions on the vhost"),
    }
    match equivalent(connection, name, log::stream_arguments(max_age)).await {
        Ok(()) => Check::ok("broker", &check, format!("stream, x-max-age {max_age}")),
        Err(error) if broker_text(&error).contains("x-max-age") => Check::warn(
            "broker",
            &check,
            format!("declared with another retention than {max_age}: {}", broker_text(&error)),
            "a stream's arguments cannot change: set a policy with max-age (README: RabbitMQ versions, retention of the streams)",
        ),
        Err(error) => Check::fail("broker", &check, broker_text(&error), "this must be a stream: delete it and start a worker"),
    }
}
