//! Publishing with publisher confirms: a publish succeeds only when the broker has taken
//! responsibility for the message (persisted to a queue).

use lapin::options::ConfirmSelectOptions;
use lapin::types::generation::gen_field_table;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::BrokerError;
use super::outbox::{Confirmed, publish_mandatory};

/// How long a publish may wait for the broker's confirm.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A channel in confirm mode; cheap to clone, publishes may run concurrently.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    frame_max: usize,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel, frame_max: connection.configuration().frame_max() as usize })
    }

    /// The largest frame the connection carries: a message's properties (its headers
    /// among them) must fit in one, or the broker closes the whole connection.
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// Publishes `body` and waits for the broker's confirm, at most [`CONFIRM_TIMEOUT`]. A
    /// message that no queue takes (`mandatory`, returned) or that the broker refuses is an
    /// error.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8], properties: BasicProperties) -> Result<(), BrokerError> {
        let confirming = async { publish_mandatory(&self.channel, exchange, routing_key, body, properties).await?.await };
        let answer = tokio::time::timeout(CONFIRM_TIMEOUT, confirming)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout { secs: CONFIRM_TIMEOUT.as_secs() })?;
        match Confirmed::of(answer) {
            Confirmed::Taken => Ok(()),
            Confirmed::Unroutable | Confirmed::Refused => Err(BrokerError::Nacked),
            Confirmed::Lost(error) => Err(error.into()),
        }
    }
}

/// Room for everything in a content header frame but the headers: frame and property
/// overhead and the other properties (short strings of at most 255 bytes each).
const PROPERTIES_ROOM: usize = 4096;

/// The encoded size of a header table, as it travels in a frame.
fn encoded_len(table: &FieldTable) -> usize {
    cookie_factory::gen_simple(gen_field_table(table), Vec::new()).map_or(usize::MAX, |bytes| bytes.len())
}

/// The encoded size of one header (name, type and value).
fn encoded_size(name: &ShortString, value: &AMQPValue) -> usize {
    let mut single = FieldTable::default();
    single.insert(name.clone(), value.clone());
    encoded_len(&single).saturating_sub(4) // without the table's length
}

/// `headers` cut down to fit in a frame of `frame_max` bytes with the other properties:
/// the largest headers not of this project (`x-els-*`) are dropped first, and
/// `x-els-headers-cut` says how many were and which. A copy that does not fit would make
/// the broker close the connection (FRAME_ERROR) and the message would come back for ever.
pub fn fit_headers(headers: FieldTable, frame_max: usize) -> FieldTable {
    let budget = frame_max.saturating_sub(PROPERTIES_ROOM);
    let mut total = encoded_len(&headers);
    if total <= budget {
        return headers;
    }
    let sizes: Vec<(ShortString, usize)> = headers.inner().iter().map(|(k, v)| (k.clone(), encoded_size(k, v))).collect();
    let mut droppable: Vec<&(ShortString, usize)> = sizes.iter().filter(|(k, _)| !k.as_str().starts_with("x-els-")).collect();
    droppable.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    let mut cut = Vec::new();
    for (name, size) in droppable {
        if total <= budget {
            break;
        }
        total = total.saturating_sub(*size);
        cut.push(name.as_str().to_owned());
    }
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if !cut.iter().any(|c| c == name.as_str()) {
            kept.insert(name.clone(), value.clone());
        }
    }
    let mut names = cut.join(", ");
    if names.len() > 500 {
        names = format!("{}…", names.chars().take(500).collect::<String>());
    }
    let note = format!("{} header(s) removed to fit a frame of {frame_max} bytes: {names}", cut.len());
    kept.insert(ShortString::from(HEADERS_CUT), AMQPValue::LongString(LongString::from(note)));
    kept
}

/// The header that says which headers [`fit_headers`] removed.
pub const HEADERS_CUT: &str = "x-els-headers-cut";

/// The properties of a copy of a message (a dead letter, a parked or a replayed message):
/// the original's, with `headers`, but without `expiration` (a copy must not expire with
/// the original's time to live; a parked copy gets its own) and without `user_id` (the
/// broker accepts only the publishing connection's own user there, and refuses the copy
/// with a channel error otherwise).
pub fn copy_properties(original: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut copy = BasicProperties::default().with_headers(headers);
    if let Some(value) = original.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.delivery_mode() {
        copy = copy.with_delivery_mode(*value);
    }
    if let Some(value) = original.priority() {
        copy = copy.with_priority(*value);
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.reply_to() {
        copy = copy.with_reply_to(value.clone());
    }
    if let Some(value) = original.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    if let Some(value) = original.cluster_id() {
        copy = copy.with_cluster_id(value.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_every_property_but_expiration_and_user_id() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("c".into())
            .with_reply_to("r".into())
            .with_message_id("m".into())
            .with_timestamp(7)
            .with_type("t".into())
            .with_app_id("a".into())
            .with_cluster_id("k".into())
            .with_expiration("20000".into())
            .with_user_id("someone-else".into());
        let copy = copy_properties(&original, FieldTable::default());
        let expected = original.clone().with_headers(FieldTable::default());
        assert!(copy.expiration().is_none() && copy.user_id().is_none());
        assert_eq!(format!("{copy:?}"), format!("{:?}", copy_properties(&expected, FieldTable::default())));
        assert_eq!(copy.message_id(), expected.message_id());
        assert_eq!(copy.cluster_id(), expected.cluster_id());
        assert_eq!(copy.kind(), expected.kind());
        assert_eq!(*copy.priority(), Some(3));
        assert_eq!(*copy.timestamp(), Some(7));
    }

    #[test]
    fn headers_too_large_for_a_frame_lose_the_largest_foreign_ones() {
        let mut headers = FieldTable::default();
        headers.insert("x-big".into(), AMQPValue::LongString(LongString::from("b".repeat(123_000))));
        headers.insert("x-medium".into(), AMQPValue::LongString(LongString::from("m".repeat(5_000))));
        headers.insert("traceparent".into(), AMQPValue::LongString(LongString::from("00-t-01")));
        headers.insert("x-els-error".into(), AMQPValue::LongString(LongString::from("e".repeat(1000))));
        let fitted = fit_headers(headers.clone(), 131_072);
        let names: Vec<&str> = fitted.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["traceparent", "x-els-error", "x-els-headers-cut", "x-medium"]);
        assert!(matches!(&fitted.inner()[HEADERS_CUT], AMQPValue::LongString(s) if s.to_string().starts_with("1 header(s) removed")));
        assert_eq!(fit_headers(headers.clone(), 1_000_000).inner().len(), 4, "what fits is kept as it is");
        let fitted = fit_headers(headers, 8_192);
        assert!(!fitted.inner().contains_key("x-medium") && fitted.inner().contains_key("x-els-error"));
    }
}
