// Publishes a hospital's drug stock movements to els-bridge, the way a HIS/SPD should.
//
//   dotnet new console -n ElsPublisher && cd ElsPublisher
//   dotnet add package RabbitMQ.Client --version 6.8.1
//   cp ElsPublisher.cs Program.cs
//   dotnet run -- --url amqp://USER:PASSWORD@rabbitmq:5672/VHOST movements.csv
//   dotnet run -- --print movements.csv > events.jsonl && els-bridge validate events.jsonl
//
// The same rules as examples/publishers/java and examples/publishers/python (see README.md
// there and here): each row of the warehouse system's movement table (DrugMovement: in an
// ASP.NET / EF Core application, the entity or the Dapper row) becomes one event of
// contract §1, routing key <infno>.<fixmedins_code>, persistent, application/json,
// message_id <infno>.<code>.<key>.v<version>, the row's version, Beijing times in the
// spec's format, decimals as text. Publishing is confirmed: a bounded outbox holds the
// unconfirmed messages by publish sequence number (IModel.NextPublishSeqNo, settled by the
// BasicAcks / BasicNacks events), and after a lost connection every unconfirmed one is
// published again, first and in order. Uses RabbitMQ.Client 6.x only (NuGet
// RabbitMQ.Client 6.8.1, the synchronous IModel API), with its automatic recovery off: the
// outbox is what must be re-sent, and the example does that itself.
//
// Exit status: 0 when every row was confirmed, 1 when some were not or a row is invalid,
// 2 for usage errors.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using System.Threading;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using RabbitMQ.Client.Exceptions;

namespace ElsBridge.Examples
{
    /// <summary>One row of the drug movement table: a stock-in (ELS7002) or a stock-out (ELS7003).</summary>
    public sealed class DrugMovement
    {
        /// <summary>China has kept UTC+8 all year since 1991: a fixed offset is exact.</summary>
        static readonly TimeSpan Beijing = TimeSpan.FromHours(8);
        /// <summary>The spec's T: yyyy-MM-dd HH:mm:ss, Beijing time.</summary>
        const string SpecTime = "yyyy-MM-dd HH:mm:ss";
        /// <summary>ISO 8601 with its offset (Z or +08:00), as DateTimeOffset round-trips it.</summary>
        static readonly string[] TimeWithZone =
        {
            "yyyy-MM-dd'T'HH:mm:sszzz", "yyyy-MM-dd'T'HH:mm:ss.FFFFFFFzzz",
            "yyyy-MM-dd'T'HH:mm:ss'Z'", "yyyy-MM-dd'T'HH:mm:ss.FFFFFFF'Z'",
        };

        public string Direction { get; set; } // "in" or "out"
        public string FixmedinsCode { get; set; }
        public string LineId { get; set; } // hosp_purc_mgt_detl: the row's primary key, stable across corrections
        public long RowVersion { get; set; } // grows with every change of the row ([ConcurrencyCheck] / rowversion)
        public string DrugCode { get; set; }
        public string ProvPlafProdCode { get; set; }
        public string DrugGenname { get; set; }
        public string Dosform { get; set; }
        public string Spec { get; set; }
        public string Convrat { get; set; }
        public string Pacunt { get; set; }
        public string ProdentpName { get; set; }
        public string DelventpName { get; set; }
        public string DelventpCode { get; set; }
        public decimal PurcPric { get; set; }
        public decimal Quantity { get; set; }
        public DateTimeOffset MovedAt { get; set; } // with its offset, never a bare DateTime
        public bool ErFlag { get; set; }
        public string ProdentpCode { get; set; } // optional: null or ""
        public string StroomName { get; set; }
        public string ProvPlafProdId { get; set; }
        public string ProvPlafPurcOrdDetId { get; set; } // "0" when not a platform order

        public string Infno
        {
            get
            {
                switch (Direction)
                {
                    case "in": return "ELS7002";
                    case "out": return "ELS7003";
                    default: throw new FormatException("direction must be in or out, got " + Direction);
                }
            }
        }

        public string RoutingKey => Infno + "." + FixmedinsCode;

        public string MessageId => Infno + "." + FixmedinsCode + "." + LineId + ".v" + RowVersion.ToString(CultureInfo.InvariantCulture);

        /// <summary>The event of contract §1, as JSON, with exactly the spec's field names in data.</summary>
        public string ToEventJson()
        {
            bool stockIn = Direction == "in";
            string infno = Infno;
            var data = new List<KeyValuePair<string, string>>
            {
                Field("hosp_purc_mgt_detl", LineId),
                Field("drug_code", DrugCode),
                Field("prov_plaf_prod_code", ProvPlafProdCode),
                Field("drug_genname", DrugGenname),
                Field("dosform", Dosform),
                Field("spec", Spec),
                Field("convrat", Convrat),
                Field("pacunt", Pacunt),
                Field("prodentp_name", ProdentpName),
                Field("delventp_name", DelventpName),
                Field("delventp_code", DelventpCode),
                Field("purc_pric", SpecDecimal(PurcPric, "purc_pric")),
                Field(stockIn ? "stoin_cnt" : "stoout_cnt", SpecDecimal(Quantity, stockIn ? "stoin_cnt" : "stoout_cnt")),
                Field(stockIn ? "stoin_time" : "stoout_time", MovedAt.ToOffset(Beijing).ToString(SpecTime, CultureInfo.InvariantCulture)),
                Field("er_flag", ErFlag ? "1" : "0"),
            };
            AddOptional(data, "prodentp_code", ProdentpCode);
            AddOptional(data, "stroom_name", StroomName);
            AddOptional(data, "prov_plaf_prod_id", ProvPlafProdId);
            AddOptional(data, "prov_plaf_purc_ord_det_id", ProvPlafPurcOrdDetId);
            if (stockIn && string.IsNullOrWhiteSpace(ProvPlafPurcOrdDetId))
            {
                throw new FormatException("prov_plaf_purc_ord_det_id is required for a stock-in (\"0\" when not a platform order)");
            }
            var json = new StringBuilder("{\"infno\":").Append(Quote(infno));
            json.Append(",\"fixmedins_code\":").Append(Quote(FixmedinsCode));
            json.Append(",\"version\":").Append(RowVersion.ToString(CultureInfo.InvariantCulture)).Append(",\"data\":{");
            json.Append(string.Join(",", data.Select(f => Quote(f.Key) + ":" + Quote(f.Value))));
            return json.Append("}}").ToString();
        }

        static KeyValuePair<string, string> Field(string name, string value) => new KeyValuePair<string, string>(name, value);

        static void AddOptional(List<KeyValuePair<string, string>> data, string name, string value)
        {
            if (!string.IsNullOrWhiteSpace(value))
            {
                data.Add(Field(name, value));
            }
        }

        /// <summary>From one row of the export, every value text (as an IDataReader or a CSV gives it).</summary>
        public static DrugMovement FromRecord(IDictionary<string, string> r)
        {
            string moved = Required(r, "moved_at");
            DateTimeOffset movedAt;
            // ParseExact with an offset in every format: a time without its zone is refused.
            if (!DateTimeOffset.TryParseExact(moved, TimeWithZone, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out movedAt))
            {
                throw new FormatException("moved_at: " + moved + ": a time with its zone is needed (e.g. 2026-11-25T09:30:00+08:00)");
            }
            return new DrugMovement
            {
                Direction = Required(r, "direction"),
                FixmedinsCode = Required(r, "fixmedins_code"),
                LineId = Required(r, "line_id"),
                RowVersion = long.Parse(Required(r, "row_version"), NumberStyles.Integer, CultureInfo.InvariantCulture),
                DrugCode = Required(r, "drug_code"),
                ProvPlafProdCode = Required(r, "prov_plaf_prod_code"),
                DrugGenname = Required(r, "drug_genname"),
                Dosform = Required(r, "dosform"),
                Spec = Required(r, "spec"),
                Convrat = Required(r, "convrat"),
                Pacunt = Required(r, "pacunt"),
                ProdentpName = Required(r, "prodentp_name"),
                DelventpName = Required(r, "delventp_name"),
                DelventpCode = Required(r, "delventp_code"),
                PurcPric = decimal.Parse(Required(r, "purc_pric"), NumberStyles.Float, CultureInfo.InvariantCulture),
                Quantity = decimal.Parse(Required(r, "quantity"), NumberStyles.Float, CultureInfo.InvariantCulture),
                MovedAt = movedAt,
                ErFlag = Optional(r, "er_flag") == "1",
                ProdentpCode = Optional(r, "prodentp_code"),
                StroomName = Optional(r, "stroom_name"),
                ProvPlafProdId = Optional(r, "prov_plaf_prod_id"),
                ProvPlafPurcOrdDetId = Optional(r, "prov_plaf_purc_ord_det_id"),
            };
        }

        static string Required(IDictionary<string, string> r, string column)
        {
            string v = Optional(r, column);
            if (string.IsNullOrWhiteSpace(v))
            {
                throw new FormatException(column + " is missing");
            }
            return v.Trim();
        }

        static string Optional(IDictionary<string, string> r, string column)
        {
            string v;
            return r.TryGetValue(column, out v) ? v : null;
        }

        /// <summary>A decimal as the spec's D: at most 12 digits, 4 after the point, never an exponent.</summary>
        public static string SpecDecimal(decimal value, string field)
        {
            if (value < 0)
            {
                throw new FormatException(field + ": " + value.ToString(CultureInfo.InvariantCulture) + " is negative");
            }
            // Dividing by 1.000… keeps the value and drops the trailing zeros (12.3400 → 12.34).
            decimal v = value / 1.000000000000000000000000000000000m;
            int scale = (decimal.GetBits(v)[3] >> 16) & 0xFF;
            decimal whole = decimal.Truncate(v);
            int wholeDigits = whole == 0 ? 0 : whole.ToString(CultureInfo.InvariantCulture).Length;
            if (scale > 4 || wholeDigits + scale > 12)
            {
                throw new FormatException(field + ": " + value.ToString(CultureInfo.InvariantCulture) + " has more than 12 digits or more than 4 after the point");
            }
            return v.ToString(CultureInfo.InvariantCulture); // decimal never writes an exponent
        }

        static string Quote(string s)
        {
            var b = new StringBuilder("\"");
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': b.Append("\\\""); break;
                    case '\\': b.Append("\\\\"); break;
                    default:
                        if (c < 0x20)
                        {
                            b.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        }
                        else
                        {
                            b.Append(c);
                        }
                        break;
                }
            }
            return b.Append('"').ToString();
        }
    }

    /// <summary>One message on its way: body and properties fixed once, so a re-send is identical.</summary>
    sealed class Outgoing
    {
        public readonly string RoutingKey;
        public readonly byte[] Body;
        public readonly string MessageId;
        public readonly long CreatedUnixSeconds = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        public int Refusals;
        public bool Returned;
        public TimeSpan Due;

        public Outgoing(DrugMovement m)
        {
            RoutingKey = m.RoutingKey;
            Body = new UTF8Encoding(false).GetBytes(m.ToEventJson());
            MessageId = m.MessageId;
        }

        public IBasicProperties Properties(IModel channel)
        {
            IBasicProperties properties = channel.CreateBasicProperties();
            properties.Persistent = true; // delivery mode 2
            properties.ContentType = "application/json";
            properties.ContentEncoding = "utf-8";
            properties.MessageId = MessageId;
            properties.Timestamp = new AmqpTimestamp(CreatedUnixSeconds);
            return properties;
        }
    }

    sealed class PublishFailedException : Exception
    {
        public PublishFailedException(string message) : base(message) { }
    }

    /// <summary>The connection (or the channel) went away while messages were in flight.</summary>
    sealed class ConnectionLostException : Exception
    {
        public ConnectionLostException(string message) : base(message) { }
    }

    /// <summary>
    /// Publishes with confirms, at most maxUnconfirmed in flight. A positive confirm removes a
    /// message from the outbox; a negative one, or a return (mandatory: no queue bound), puts
    /// it back to be sent again after a growing wait (six refusals stop the run); a lost
    /// connection puts the whole outbox back, first and in order, and the publisher reconnects
    /// with backoff for up to maxRetry.
    /// </summary>
    sealed class ConfirmedPublisher
    {
        const int MaxRefusals = 6;
        static readonly Stopwatch Clock = Stopwatch.StartNew();

        readonly ConnectionFactory factory;
        readonly string exchange;
        readonly int maxUnconfirmed;
        readonly TimeSpan maxRetry;
        readonly TimeSpan interval;
        readonly object gate = new object();
        readonly SortedDictionary<ulong, Outgoing> outbox = new SortedDictionary<ulong, Outgoing>();
        readonly Dictionary<string, Outgoing> byId = new Dictionary<string, Outgoing>();
        readonly LinkedList<Outgoing> first = new LinkedList<Outgoing>();
        string fatal;
        bool lost;

        public int Confirmed { get; private set; }
        public int Resent { get; private set; }
        public int Reconnects { get; private set; }

        public ConfirmedPublisher(string url, string exchange, int maxUnconfirmed, double maxRetrySecs, double rate, int heartbeatSecs)
        {
            factory = new ConnectionFactory
            {
                Uri = new Uri(url),
                // A link that goes silent without closing (a dead NAT entry, a failed-over
                // firewall) is given up after some missed heartbeats (RabbitMQ.Client 6.x waits
                // for nine, 7.x for three), and the outbox is then sent again.
                RequestedHeartbeat = TimeSpan.FromSeconds(heartbeatSecs),
                AutomaticRecoveryEnabled = false, // the outbox is re-sent by us, after our own reconnect
                TopologyRecoveryEnabled = false,
            };
            this.exchange = exchange;
            this.maxUnconfirmed = maxUnconfirmed;
            maxRetry = TimeSpan.FromSeconds(maxRetrySecs);
            interval = rate > 0 ? TimeSpan.FromSeconds(1 / rate) : TimeSpan.Zero;
        }

        public void Publish(IEnumerable<Outgoing> messages)
        {
            using (IEnumerator<Outgoing> source = messages.GetEnumerator())
            {
                TimeSpan? lostSince = null;
                int backoffMs = 500;
                while (true)
                {
                    int confirmedBefore;
                    lock (gate)
                    {
                        confirmedBefore = Confirmed;
                    }
                    try
                    {
                        using (IConnection connection = factory.CreateConnection("els-publisher-example"))
                        {
                            if (Run(connection, source))
                            {
                                return;
                            }
                        }
                    }
                    catch (Exception e) when (e is BrokerUnreachableException || e is OperationInterruptedException
                                              || e is ConnectionLostException || e is IOException)
                    {
                        Console.Error.WriteLine("els-publisher: broker connection lost: " + e.Message);
                    }
                    lock (gate)
                    {
                        if (fatal != null)
                        {
                            throw new PublishFailedException(fatal);
                        }
                        // Everything unconfirmed goes out again, first and in order.
                        List<Outgoing> unconfirmed = outbox.Values.ToList();
                        outbox.Clear();
                        for (int i = unconfirmed.Count - 1; i >= 0; i--)
                        {
                            unconfirmed[i].Returned = false;
                            first.AddFirst(unconfirmed[i]);
                        }
                        Resent += unconfirmed.Count;
                        TimeSpan now = Clock.Elapsed;
                        if (Confirmed > confirmedBefore || lostSince == null)
                        {
                            lostSince = now;
                            backoffMs = 500;
                        }
                        if (now - lostSince.Value > maxRetry)
                        {
                            throw new PublishFailedException("no broker connection for " + (long)maxRetry.TotalSeconds + " s; " + first.Count + " message(s) not confirmed");
                        }
                        Console.Error.WriteLine("els-publisher: " + first.Count + " unconfirmed message(s) will be published again; reconnecting in " + backoffMs + " ms");
                    }
                    Thread.Sleep(backoffMs);
                    backoffMs = Math.Min(backoffMs * 2, 15000);
                    Reconnects++;
                }
            }
        }

        /// <summary>One connection's session: true when every message is confirmed.</summary>
        bool Run(IConnection connection, IEnumerator<Outgoing> source)
        {
            lock (gate)
            {
                lost = false;
            }
            EventHandler<ShutdownEventArgs> onShutdown = (sender, reason) =>
            {
                lock (gate)
                {
                    lost = true;
                    Monitor.PulseAll(gate);
                }
            };
            // Missed heartbeats, a broker restart, a closed socket: the connection shuts down;
            // a channel error (the exchange deleted): the channel alone.
            connection.ConnectionShutdown += onShutdown;
            IModel channel = connection.CreateModel();
            channel.ModelShutdown += onShutdown;
            channel.ConfirmSelect();
            channel.BasicReturn += (sender, r) =>
            {
                lock (gate)
                {
                    Outgoing m;
                    if (r.BasicProperties.MessageId != null && byId.TryGetValue(r.BasicProperties.MessageId, out m))
                    {
                        m.Returned = true; // the confirm of the same message follows
                        Console.Error.WriteLine("els-publisher: returned by the broker (" + r.ReplyCode + " " + r.ReplyText + "): " + m.MessageId);
                    }
                }
            };
            channel.BasicAcks += (sender, a) => Settle(a.DeliveryTag, a.Multiple, true);
            channel.BasicNacks += (sender, n) => Settle(n.DeliveryTag, n.Multiple, false);
            if (!channel.IsOpen)
            {
                throw new ConnectionLostException("channel closed: " + channel.CloseReason);
            }
            TimeSpan nextAt = TimeSpan.Zero;
            while (true)
            {
                Outgoing next;
                lock (gate)
                {
                    while (true)
                    {
                        if (fatal != null)
                        {
                            throw new PublishFailedException(fatal);
                        }
                        if (lost)
                        {
                            throw new ConnectionLostException("connection lost: " + channel.CloseReason);
                        }
                        TimeSpan now = Clock.Elapsed;
                        next = null;
                        TimeSpan wait = TimeSpan.FromMilliseconds(100);
                        if (outbox.Count < maxUnconfirmed && now >= nextAt)
                        {
                            if (first.Count > 0 && first.First.Value.Due <= now)
                            {
                                next = first.First.Value;
                                first.RemoveFirst();
                            }
                            else if (source.MoveNext())
                            {
                                next = source.Current;
                            }
                            else if (first.Count == 0 && outbox.Count == 0)
                            {
                                return true;
                            }
                            else if (first.Count > 0)
                            {
                                wait = first.First.Value.Due - now;
                            }
                        }
                        else if (now < nextAt)
                        {
                            wait = nextAt - now;
                        }
                        if (next != null)
                        {
                            outbox[channel.NextPublishSeqNo] = next;
                            byId[next.MessageId] = next;
                            break;
                        }
                        Monitor.Wait(gate, TimeSpan.FromMilliseconds(Math.Max(1, wait.TotalMilliseconds)));
                    }
                }
                channel.BasicPublish(exchange, next.RoutingKey, true, next.Properties(channel), next.Body);
                nextAt = Clock.Elapsed + interval;
            }
        }

        void Settle(ulong tag, bool multiple, bool positive)
        {
            lock (gate)
            {
                List<ulong> tags = multiple ? outbox.Keys.TakeWhile(t => t <= tag).ToList() : new List<ulong> { tag };
                foreach (ulong t in tags)
                {
                    Outgoing m;
                    if (!outbox.TryGetValue(t, out m))
                    {
                        continue;
                    }
                    outbox.Remove(t);
                    if (positive && !m.Returned)
                    {
                        Confirmed++;
                        byId.Remove(m.MessageId);
                        continue;
                    }
                    m.Refusals++;
                    m.Returned = false;
                    if (m.Refusals >= MaxRefusals)
                    {
                        fatal = m.MessageId + " was refused " + m.Refusals + " times (no queue bound to " + exchange + "?)";
                        break;
                    }
                    m.Due = Clock.Elapsed + TimeSpan.FromMilliseconds(Math.Min(500L << (m.Refusals - 1), 15000L));
                    first.AddLast(m);
                    Resent++;
                }
                Monitor.PulseAll(gate);
            }
        }
    }

    public static class ElsPublisher
    {
        /// <summary>The day's movements, in the order the warehouse system wrote them (a CSV export).</summary>
        static List<DrugMovement> ReadMovements(string path)
        {
            var rows = new List<DrugMovement>();
            using (var reader = new StreamReader(path, new UTF8Encoding(false)))
            {
                string header = reader.ReadLine();
                if (header == null)
                {
                    return rows;
                }
                string[] columns = header.Replace("\uFEFF", "").Split(',');
                string line;
                int number = 1;
                while ((line = reader.ReadLine()) != null)
                {
                    number++;
                    if (string.IsNullOrWhiteSpace(line))
                    {
                        continue;
                    }
                    string[] cells = line.Split(','); // the example's export has no quoted commas
                    if (cells.Length != columns.Length)
                    {
                        throw new FormatException(path + ":" + number + ": " + cells.Length + " cells, the header has " + columns.Length);
                    }
                    var record = new Dictionary<string, string>();
                    for (int i = 0; i < columns.Length; i++)
                    {
                        record[columns[i].Trim()] = cells[i].Trim();
                    }
                    try
                    {
                        rows.Add(DrugMovement.FromRecord(record));
                    }
                    catch (Exception e) when (e is FormatException || e is OverflowException)
                    {
                        throw new FormatException(path + ":" + number + ": " + e.Message);
                    }
                }
            }
            return rows;
        }

        public static int Main(string[] args)
        {
            string url = null;
            string exchange = "els.events";
            int maxUnconfirmed = 256;
            double maxRetrySecs = 300;
            double rate = 0;
            int heartbeatSecs = 10;
            bool print = false;
            string file = null;
            try
            {
                for (int i = 0; i < args.Length; i++)
                {
                    switch (args[i])
                    {
                        case "--url": url = args[++i]; break;
                        case "--exchange": exchange = args[++i]; break;
                        case "--max-unconfirmed": maxUnconfirmed = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                        case "--max-retry-secs": maxRetrySecs = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                        case "--rate": rate = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                        case "--heartbeat-secs": heartbeatSecs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                        case "--print": print = true; break;
                        default: file = args[i]; break;
                    }
                }
            }
            catch (Exception e) when (e is IndexOutOfRangeException || e is FormatException || e is OverflowException)
            {
                file = null;
            }
            if (file == null || (url == null && !print) || maxUnconfirmed < 1)
            {
                Console.Error.WriteLine("usage: ElsPublisher (--url AMQP_URL | --print) [--exchange E] [--max-unconfirmed N] [--max-retry-secs S] [--rate N] [--heartbeat-secs S] ROWS.csv");
                return 2;
            }
            var messages = new List<Outgoing>();
            try
            {
                foreach (DrugMovement m in ReadMovements(file))
                {
                    messages.Add(new Outgoing(m)); // converted before publishing: refuse the export, not dead-letter it
                }
            }
            catch (Exception e) when (e is IOException || e is FormatException || e is UnauthorizedAccessException)
            {
                Console.Error.WriteLine("els-publisher: " + e.Message);
                return 1;
            }
            if (print)
            {
                using (Stream stdout = Console.OpenStandardOutput())
                {
                    foreach (Outgoing m in messages)
                    {
                        stdout.Write(m.Body, 0, m.Body.Length);
                        stdout.WriteByte((byte)'\n');
                    }
                }
                return 0;
            }
            var publisher = new ConfirmedPublisher(url, exchange, maxUnconfirmed, maxRetrySecs, rate, heartbeatSecs);
            int status = 0;
            try
            {
                publisher.Publish(messages);
            }
            catch (PublishFailedException e)
            {
                Console.Error.WriteLine("els-publisher: " + e.Message);
                status = 1;
            }
            Console.Error.WriteLine("rows " + messages.Count + ", confirmed " + publisher.Confirmed + ", published again " + publisher.Resent
                                    + ", reconnects " + publisher.Reconnects);
            return status == 0 && publisher.Confirmed == messages.Count ? 0 : 1;
        }
    }
}
