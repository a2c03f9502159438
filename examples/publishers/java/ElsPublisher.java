// Publishes a hospital's drug stock movements to els-bridge, the way a HIS/SPD should.
//
//   javac -cp /usr/share/java/amqp-client.jar -d out ElsPublisher.java
//   java -cp out:/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-nop.jar \
//       ElsPublisher --url amqp://USER:PASSWORD@rabbitmq:5672/VHOST movements.csv
//
// The same rules as examples/publishers/python (see README.md there and here): each row
// of the warehouse system's movement table (DrugMovement: in a Spring application, the
// entity or the RowMapper's result) becomes one event of contract §1, routing key
// <infno>.<fixmedins_code>, persistent, application/json, message_id
// <infno>.<code>.<key>.v<version>, the row's version, Beijing times in the spec's format,
// decimals as text. Publishing is confirmed (what Spring's RabbitTemplate does with
// publisher-confirm-type: correlated and publisher-returns: true): a bounded outbox holds
// the unconfirmed messages by publish sequence number, and after a lost connection every
// unconfirmed one is published again, first and in order. Uses the RabbitMQ Java client
// only (Debian 12: librabbitmq-client-java 5.0), with its automatic recovery off: the
// outbox is what must be re-sent, and the example does that itself.
//
// Exit status: 0 when every row was confirmed, 1 when some were not or a row is invalid,
// 2 for usage errors.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import java.io.BufferedReader;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

public final class ElsPublisher {

    /** China has kept UTC+8 all year since 1991: a fixed offset is exact. */
    static final ZoneOffset BEIJING = ZoneOffset.ofHours(8);
    /** The spec's T: yyyy-MM-dd HH:mm:ss, Beijing time. */
    static final DateTimeFormatter SPEC_TIME = DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss");

    /** One row of the drug movement table: a stock-in (ELS7002) or a stock-out (ELS7003). */
    record DrugMovement(
            String direction, // "in" or "out"
            String fixmedinsCode,
            String lineId, // hosp_purc_mgt_detl: the row's primary key, stable across corrections
            long rowVersion, // grows with every change of the row
            String drugCode,
            String provPlafProdCode,
            String drugGenname,
            String dosform,
            String spec,
            String convrat,
            String pacunt,
            String prodentpName,
            String delventpName,
            String delventpCode,
            BigDecimal purcPric,
            BigDecimal quantity,
            OffsetDateTime movedAt, // with its zone
            boolean erFlag,
            String prodentpCode, // optional: null or ""
            String stroomName,
            String provPlafProdId,
            String provPlafPurcOrdDetId) { // "0" when not a platform order

        String infno() {
            return switch (direction) {
                case "in" -> "ELS7002";
                case "out" -> "ELS7003";
                default -> throw new IllegalArgumentException("direction must be in or out, got " + direction);
            };
        }

        String routingKey() {
            return infno() + "." + fixmedinsCode;
        }

        String messageId() {
            return infno() + "." + fixmedinsCode + "." + lineId + ".v" + rowVersion;
        }

        /** The event of contract §1, as JSON, with exactly the spec's field names in data. */
        String eventJson() {
            boolean in = direction.equals("in");
            Map<String, String> data = new LinkedHashMap<>();
            data.put("hosp_purc_mgt_detl", lineId);
            data.put("drug_code", drugCode);
            data.put("prov_plaf_prod_code", provPlafProdCode);
            data.put("drug_genname", drugGenname);
            data.put("dosform", dosform);
            data.put("spec", spec);
            data.put("convrat", convrat);
            data.put("pacunt", pacunt);
            data.put("prodentp_name", prodentpName);
            data.put("delventp_name", delventpName);
            data.put("delventp_code", delventpCode);
            data.put("purc_pric", specDecimal(purcPric, "purc_pric"));
            data.put(in ? "stoin_cnt" : "stoout_cnt", specDecimal(quantity, in ? "stoin_cnt" : "stoout_cnt"));
            data.put(in ? "stoin_time" : "stoout_time", movedAt.atZoneSameInstant(BEIJING).format(SPEC_TIME));
            data.put("er_flag", erFlag ? "1" : "0");
            putOptional(data, "prodentp_code", prodentpCode);
            putOptional(data, "stroom_name", stroomName);
            putOptional(data, "prov_plaf_prod_id", provPlafProdId);
            putOptional(data, "prov_plaf_purc_ord_det_id", provPlafPurcOrdDetId);
            if (in && !data.containsKey("prov_plaf_purc_ord_det_id")) {
                throw new IllegalArgumentException("prov_plaf_purc_ord_det_id is required for a stock-in (\"0\" when not a platform order)");
            }
            StringBuilder json = new StringBuilder("{\"infno\":").append(quote(infno()));
            json.append(",\"fixmedins_code\":").append(quote(fixmedinsCode));
            json.append(",\"version\":").append(rowVersion).append(",\"data\":{");
            String separator = "";
            for (Map.Entry<String, String> e : data.entrySet()) {
                json.append(separator).append(quote(e.getKey())).append(':').append(quote(e.getValue()));
                separator = ",";
            }
            return json.append("}}").toString();
        }

        private static void putOptional(Map<String, String> data, String field, String value) {
            if (value != null && !value.isBlank()) {
                data.put(field, value);
            }
        }

        /** From one row of the export, every value text (as a ResultSet or a CSV gives it). */
        static DrugMovement fromRecord(Map<String, String> r) {
            String moved = required(r, "moved_at");
            OffsetDateTime movedAt;
            try {
                movedAt = OffsetDateTime.parse(moved); // refuses a time without a zone
            } catch (RuntimeException e) {
                throw new IllegalArgumentException("moved_at: " + moved + ": a time with its zone is needed (e.g. 2026-11-25T09:30:00+08:00)");
            }
            return new DrugMovement(required(r, "direction"), required(r, "fixmedins_code"), required(r, "line_id"),
                    Long.parseLong(required(r, "row_version")), required(r, "drug_code"), required(r, "prov_plaf_prod_code"),
                    required(r, "drug_genname"), required(r, "dosform"), required(r, "spec"), required(r, "convrat"),
                    required(r, "pacunt"), required(r, "prodentp_name"), required(r, "delventp_name"),
                    required(r, "delventp_code"), new BigDecimal(required(r, "purc_pric")),
                    new BigDecimal(required(r, "quantity")), movedAt, "1".equals(r.get("er_flag")),
                    r.get("prodentp_code"), r.get("stroom_name"), r.get("prov_plaf_prod_id"),
                    r.get("prov_plaf_purc_ord_det_id"));
        }

        private static String required(Map<String, String> r, String column) {
            String v = r.get(column);
            if (v == null || v.isBlank()) {
                throw new IllegalArgumentException(column + " is missing");
            }
            return v.trim();
        }
    }

    /** A decimal as the spec's D: at most 12 digits, 4 after the point, never an exponent. */
    static String specDecimal(BigDecimal value, String field) {
        if (value.signum() < 0) {
            throw new IllegalArgumentException(field + ": " + value + " is negative");
        }
        BigDecimal v = value.stripTrailingZeros();
        if (v.scale() < 0) {
            v = v.setScale(0);
        }
        int wholeDigits = Math.max(v.precision() - v.scale(), 0);
        if (v.scale() > 4 || wholeDigits + v.scale() > 12) {
            throw new IllegalArgumentException(field + ": " + value.toPlainString() + " has more than 12 digits or more than 4 after the point");
        }
        return v.toPlainString();
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
                }
            }
        }
        return b.append('"').toString();
    }

    /** One message on its way: body and properties fixed once, so a re-send is identical. */
    static final class Outgoing {
        final String routingKey;
        final byte[] body;
        final String messageId;
        final java.util.Date created = new java.util.Date();
        int refusals;
        boolean returned;
        long dueNanos;

        Outgoing(DrugMovement m) {
            this.routingKey = m.routingKey();
            this.body = m.eventJson().getBytes(StandardCharsets.UTF_8);
            this.messageId = m.messageId();
        }

        AMQP.BasicProperties properties() {
            return new AMQP.BasicProperties.Builder()
                    .deliveryMode(2) // persistent
                    .contentType("application/json")
                    .contentEncoding("utf-8")
                    .messageId(messageId)
                    .timestamp(created)
                    .build();
        }
    }

    static final class PublishFailed extends Exception {
        private static final long serialVersionUID = 1L;

        PublishFailed(String message) {
            super(message);
        }
    }

    /**
     * Publishes with confirms, at most maxUnconfirmed in flight. A positive confirm removes a
     * message from the outbox; a negative one, or a return (mandatory: no queue bound), puts
     * it back to be sent again after a growing wait (six refusals stop the run); a lost
     * connection puts the whole outbox back, first and in order, and the publisher reconnects
     * with backoff for up to maxRetrySecs.
     */
    static final class ConfirmedPublisher {
        static final int MAX_REFUSALS = 6;
        final ConnectionFactory factory = new ConnectionFactory();
        final String exchange;
        final int maxUnconfirmed;
        final long maxRetryNanos;
        final long intervalNanos;
        final Object lock = new Object();
        final TreeMap<Long, Outgoing> outbox = new TreeMap<>();
        final Map<String, Outgoing> byId = new HashMap<>();
        final Deque<Outgoing> first = new ArrayDeque<>();
        int confirmed;
        int resent;
        int reconnects;
        String fatal;
        boolean lost;

        ConfirmedPublisher(String url, String exchange, int maxUnconfirmed, double maxRetrySecs, double rate, int heartbeatSecs)
                throws Exception {
            factory.setUri(url);
            // A link that goes silent without closing (a dead NAT entry, a failed-over firewall)
            // is noticed within about twice this, and the outbox is then sent again.
            factory.setRequestedHeartbeat(heartbeatSecs);
            factory.setAutomaticRecoveryEnabled(false); // the outbox is re-sent by us, after our own reconnect
            factory.setTopologyRecoveryEnabled(false);
            this.exchange = exchange;
            this.maxUnconfirmed = maxUnconfirmed;
            this.maxRetryNanos = (long) (maxRetrySecs * 1e9);
            this.intervalNanos = rate > 0 ? (long) (1e9 / rate) : 0;
        }

        void publish(List<Outgoing> messages) throws PublishFailed, InterruptedException {
            Iterator<Outgoing> source = messages.iterator();
            long lostSince = -1;
            long backoffMs = 500;
            while (true) {
                int confirmedBefore;
                synchronized (lock) {
                    confirmedBefore = confirmed;
                }
                try (Connection connection = factory.newConnection("els-publisher-example")) {
                    if (run(connection, source)) {
                        return;
                    }
                } catch (IOException | java.util.concurrent.TimeoutException | com.rabbitmq.client.ShutdownSignalException e) {
                    System.err.println("els-publisher: broker connection lost: " + e);
                }
                synchronized (lock) {
                    if (fatal != null) {
                        throw new PublishFailed(fatal);
                    }
                    // Everything unconfirmed goes out again, first and in order.
                    List<Outgoing> unconfirmed = new ArrayList<>(outbox.values());
                    outbox.clear();
                    for (int i = unconfirmed.size() - 1; i >= 0; i--) {
                        unconfirmed.get(i).returned = false;
                        first.addFirst(unconfirmed.get(i));
                    }
                    resent += unconfirmed.size();
                    long now = System.nanoTime();
                    if (confirmed > confirmedBefore || lostSince < 0) {
                        lostSince = now;
                        backoffMs = 500;
                    }
                    if (now - lostSince > maxRetryNanos) {
                        throw new PublishFailed("no broker connection for " + maxRetryNanos / 1_000_000_000L + " s; " + first.size() + " message(s) not confirmed");
                    }
                    System.err.println("els-publisher: " + first.size() + " unconfirmed message(s) will be published again; reconnecting in " + backoffMs + " ms");
                }
                Thread.sleep(backoffMs);
                backoffMs = Math.min(backoffMs * 2, 15_000);
                reconnects++;
            }
        }

        /** One connection's session: true when every message is confirmed. */
        private boolean run(Connection connection, Iterator<Outgoing> source) throws IOException, PublishFailed, InterruptedException {
            synchronized (lock) {
                lost = false;
            }
            connection.addShutdownListener(cause -> {
                synchronized (lock) {
                    lost = true;
                    lock.notifyAll();
                }
            });
            Channel channel = connection.createChannel();
            channel.confirmSelect();
            channel.addReturnListener(r -> {
                synchronized (lock) {
                    Outgoing m = byId.get(r.getProperties().getMessageId());
                    if (m != null) {
                        m.returned = true; // the confirm of the same message follows
                        System.err.println("els-publisher: returned by the broker (" + r.getReplyCode() + " " + r.getReplyText() + "): " + m.messageId);
                    }
                }
            });
            channel.addConfirmListener((tag, multiple) -> settle(tag, multiple, true), (tag, multiple) -> settle(tag, multiple, false));
            long nextAt = 0;
            while (true) {
                Outgoing next;
                synchronized (lock) {
                    while (true) {
                        if (fatal != null) {
                            throw new PublishFailed(fatal);
                        }
                        if (lost) {
                            throw new IOException("connection lost");
                        }
                        long now = System.nanoTime();
                        next = null;
                        long waitNanos = 100_000_000L;
                        if (outbox.size() < maxUnconfirmed && now >= nextAt) {
                            if (!first.isEmpty() && first.peekFirst().dueNanos <= now) {
                                next = first.pollFirst();
                            } else if (source.hasNext()) {
                                next = source.next();
                            } else if (first.isEmpty() && outbox.isEmpty()) {
                                return true;
                            } else if (!first.isEmpty()) {
                                waitNanos = Math.max(1, first.peekFirst().dueNanos - now);
                            }
                        } else if (now < nextAt) {
                            waitNanos = nextAt - now;
                        }
                        if (next != null) {
                            long tag = channel.getNextPublishSeqNo();
                            outbox.put(tag, next);
                            byId.put(next.messageId, next);
                            break;
                        }
                        lock.wait(Math.max(1, waitNanos / 1_000_000L));
                    }
                }
                channel.basicPublish(exchange, next.routingKey, true, next.properties(), next.body);
                nextAt = System.nanoTime() + intervalNanos;
            }
        }

        private void settle(long tag, boolean multiple, boolean positive) {
            synchronized (lock) {
                List<Long> tags = multiple ? new ArrayList<>(outbox.headMap(tag, true).keySet()) : List.of(tag);
                for (long t : tags) {
                    Outgoing m = outbox.remove(t);
                    if (m == null) {
                        continue;
                    }
                    if (positive && !m.returned) {
                        confirmed++;
                        byId.remove(m.messageId);
                        continue;
                    }
                    m.refusals++;
                    m.returned = false;
                    if (m.refusals >= MAX_REFUSALS) {
                        fatal = m.messageId + " was refused " + m.refusals + " times (no queue bound to " + exchange + "?)";
                        break;
                    }
                    m.dueNanos = System.nanoTime() + Math.min(500_000_000L << (m.refusals - 1), 15_000_000_000L);
                    first.addLast(m);
                    resent++;
                }
                lock.notifyAll();
            }
        }
    }

    /** The day's movements, in the order the warehouse system wrote them (a CSV export). */
    static List<DrugMovement> readMovements(Path path) throws IOException {
        List<DrugMovement> rows = new ArrayList<>();
        try (BufferedReader reader = Files.newBufferedReader(path, StandardCharsets.UTF_8)) {
            String header = reader.readLine();
            if (header == null) {
                return rows;
            }
            String[] columns = header.replace("\uFEFF", "").split(",", -1);
            String line;
            int number = 1;
            while ((line = reader.readLine()) != null) {
                number++;
                if (line.isBlank()) {
                    continue;
                }
                String[] cells = line.split(",", -1); // the example's export has no quoted commas
                if (cells.length != columns.length) {
                    throw new IllegalArgumentException(path + ":" + number + ": " + cells.length + " cells, the header has " + columns.length);
                }
                Map<String, String> record = new HashMap<>();
                for (int i = 0; i < columns.length; i++) {
                    record.put(columns[i].trim(), cells[i].trim());
                }
                try {
                    rows.add(DrugMovement.fromRecord(record));
                } catch (RuntimeException e) {
                    throw new IllegalArgumentException(path + ":" + number + ": " + e.getMessage());
                }
            }
        }
        return rows;
    }

    public static void main(String[] args) throws Exception {
        String url = null;
        String exchange = "els.events";
        int maxUnconfirmed = 256;
        double maxRetrySecs = 300;
        double rate = 0;
        int heartbeatSecs = 10;
        boolean print = false;
        String file = null;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--url" -> url = args[++i];
                case "--exchange" -> exchange = args[++i];
                case "--max-unconfirmed" -> maxUnconfirmed = Integer.parseInt(args[++i]);
                case "--max-retry-secs" -> maxRetrySecs = Double.parseDouble(args[++i]);
                case "--rate" -> rate = Double.parseDouble(args[++i]);
                case "--heartbeat-secs" -> heartbeatSecs = Integer.parseInt(args[++i]);
                case "--print" -> print = true;
                default -> file = args[i];
            }
        }
        if (file == null || (url == null && !print) || maxUnconfirmed < 1) {
            System.err.println("usage: ElsPublisher (--url AMQP_URL | --print) [--exchange E] [--max-unconfirmed N] [--max-retry-secs S] [--rate N] [--heartbeat-secs S] ROWS.csv");
            System.exit(2);
        }
        List<Outgoing> messages = new ArrayList<>();
        try {
            for (DrugMovement m : readMovements(Path.of(file))) {
                messages.add(new Outgoing(m)); // converted before publishing: refuse the export, not dead-letter it
            }
        } catch (IOException | IllegalArgumentException e) {
            System.err.println("els-publisher: " + e.getMessage());
            System.exit(1);
        }
        if (print) {
            for (Outgoing m : messages) {
                System.out.println(new String(m.body, StandardCharsets.UTF_8));
            }
            return;
        }
        ConfirmedPublisher publisher = new ConfirmedPublisher(url, exchange, maxUnconfirmed, maxRetrySecs, rate, heartbeatSecs);
        int status = 0;
        try {
            publisher.publish(messages);
        } catch (PublishFailed e) {
            System.err.println("els-publisher: " + e.getMessage());
            status = 1;
        }
        System.err.println("rows " + messages.size() + ", confirmed " + publisher.confirmed + ", published again " + publisher.resent
                + ", reconnects " + publisher.reconnects);
        System.exit(status == 0 && publisher.confirmed == messages.size() ? 0 : 1);
    }

    private ElsPublisher() {}
}
