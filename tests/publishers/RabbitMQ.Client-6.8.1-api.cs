// The part of RabbitMQ.Client 6.8.1's public API that examples/publishers/csharp/ElsPublisher.cs
// uses, with the signatures of the real assembly (projects/RabbitMQ.Client/client/api,
// events and exceptions at tag v6.8.1) and no implementation. tests/publishers.rs compiles
// the example against it with Mono's mcs, which type-checks every call the example makes
// into the client, and runs its --print mode: the events it writes are compared with the
// Java and Python examples' byte for byte. Publishing needs the real client (NuGet), which
// Debian does not package: Debian 12's libmono-rabbitmq4.0-cil is client 1.x, AMQP
// 0-8/0-9 only, without publisher confirms (see examples/publishers/csharp/README.md).
using System;
using System.IO;

namespace RabbitMQ.Client
{
    public sealed class ConnectionFactory
    {
        public Uri Uri { get; set; }
        public TimeSpan RequestedHeartbeat { get; set; }
        public bool AutomaticRecoveryEnabled { get; set; } = true;
        public bool TopologyRecoveryEnabled { get; set; } = true;
        public IConnection CreateConnection(string clientProvidedName) => throw Stub.Publishing();
    }

    public interface IConnection : IDisposable
    {
        event EventHandler<ShutdownEventArgs> ConnectionShutdown;
        IModel CreateModel();
    }

    public interface IModel : IDisposable
    {
        ulong NextPublishSeqNo { get; }
        ShutdownEventArgs CloseReason { get; }
        bool IsOpen { get; }
        event EventHandler<Events.BasicAckEventArgs> BasicAcks;
        event EventHandler<Events.BasicNackEventArgs> BasicNacks;
        event EventHandler<Events.BasicReturnEventArgs> BasicReturn;
        event EventHandler<ShutdownEventArgs> ModelShutdown;
        void BasicPublish(string exchange, string routingKey, bool mandatory, IBasicProperties basicProperties, ReadOnlyMemory<byte> body);
        void ConfirmSelect();
        IBasicProperties CreateBasicProperties();
    }

    public interface IBasicProperties
    {
        string ContentEncoding { get; set; }
        string ContentType { get; set; }
        byte DeliveryMode { get; set; }
        string MessageId { get; set; }
        bool Persistent { get; set; }
        AmqpTimestamp Timestamp { get; set; }
    }

    public struct AmqpTimestamp
    {
        public AmqpTimestamp(long unixTime) : this() { UnixTime = unixTime; }
        public long UnixTime { get; private set; }
    }

    public class ShutdownEventArgs : EventArgs
    {
        public ushort ReplyCode { get; private set; }
        public string ReplyText { get; private set; }
    }

    static class Stub
    {
        internal static Exception Publishing() =>
            new NotSupportedException("compiled against the API stub of tests/publishers: only --print works; build with NuGet RabbitMQ.Client 6.8.1 to publish");
    }
}

namespace RabbitMQ.Client.Events
{
    public class BasicAckEventArgs : EventArgs
    {
        public ulong DeliveryTag { get; set; }
        public bool Multiple { get; set; }
    }

    public class BasicNackEventArgs : EventArgs
    {
        public ulong DeliveryTag { get; set; }
        public bool Multiple { get; set; }
        public bool Requeue { get; set; }
    }

    public class BasicReturnEventArgs : EventArgs
    {
        public IBasicProperties BasicProperties { get; set; }
        public ReadOnlyMemory<byte> Body { get; set; }
        public string Exchange { get; set; }
        public ushort ReplyCode { get; set; }
        public string ReplyText { get; set; }
        public string RoutingKey { get; set; }
    }
}

namespace RabbitMQ.Client.Exceptions
{
    public abstract class RabbitMQClientException : Exception
    {
    }

    public class OperationInterruptedException : RabbitMQClientException
    {
    }

    public class AlreadyClosedException : OperationInterruptedException
    {
    }

    public class BrokerUnreachableException : IOException
    {
    }
}
