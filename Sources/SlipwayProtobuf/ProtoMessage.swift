/// A protobuf message as a Swift value type, serialized through protobuf-c.
///
/// Generated types conform to this protocol; `serializedBytes()` and `init(serializedBytes:)`
/// round-trip through the protobuf-c runtime (`protobuf_c_message_pack` / `..._unpack`).
public protocol ProtoMessage: Sendable, Equatable {
    /// The fully qualified protobuf name, for example `grpc.health.v1.HealthCheckRequest`.
    static var protoMessageName: String { get }
    /// A message with every field at its default value.
    init()
    /// Decodes a message from its wire form; throws ``ProtoDecodingError`` on malformed input.
    init(serializedBuffer: UnsafeRawBufferPointer) throws(ProtoDecodingError)
    /// Encodes the message to its wire form.
    func serializedBytes() -> [UInt8]
}

extension ProtoMessage {
    /// Decodes a message from its wire form; throws ``ProtoDecodingError`` on malformed input.
    public init(serializedBytes bytes: some Collection<UInt8>) throws(ProtoDecodingError) {
        let array = Array(bytes)
        var result: Result<Self, ProtoDecodingError> = .failure(ProtoDecodingError(messageName: Self.protoMessageName, reason: "no bytes"))
        array.withUnsafeBytes { buffer in
            result = Result { () throws(ProtoDecodingError) in try Self(serializedBuffer: buffer) }
        }
        self = try result.get()
    }
}

/// A message could not be decoded from its wire form.
public struct ProtoDecodingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The message type that failed to decode.
    public var messageName: String
    /// What went wrong, for a person.
    public var reason: String

    public init(messageName: String, reason: String) {
        self.messageName = messageName
        self.reason = reason
    }

    public var description: String { "cannot decode \(messageName): \(reason)" }
}

/// One RPC method of a protobuf service, as generated from a `.proto` file.
public protocol ProtoMethod: Sendable {
    associatedtype Input: ProtoMessage
    associatedtype Output: ProtoMessage
    /// The fully qualified service name, for example `grpc.health.v1.Health`.
    static var serviceName: String { get }
    /// The method name, for example `Check`.
    static var methodName: String { get }
    /// Whether the client sends a stream of messages.
    static var clientStreaming: Bool { get }
    /// Whether the server sends a stream of messages.
    static var serverStreaming: Bool { get }
}

extension ProtoMethod {
    /// The HTTP/2 `:path` of the method: `/package.Service/Method`.
    public static var path: String { "/\(serviceName)/\(methodName)" }
}

/// A `.proto` file as compiled: its serialized `FileDescriptorProto`, for server reflection.
public struct ProtoFileDescriptor: Sendable {
    /// The file's path relative to `protos/`, e.g. `grpc/health/v1/health.proto`.
    public var name: String
    /// The files it imports, by the same kind of name.
    public var dependencies: [String]
    /// Fully qualified names of every message, enum and service the file declares (nested included).
    public var symbols: [String]
    /// The serialized `google.protobuf.FileDescriptorProto`.
    public var serializedDescriptor: [UInt8]

    public init(name: String, dependencies: [String], symbols: [String], serializedDescriptor: [UInt8]) {
        self.name = name
        self.dependencies = dependencies
        self.symbols = symbols
        self.serializedDescriptor = serializedDescriptor
    }
}
