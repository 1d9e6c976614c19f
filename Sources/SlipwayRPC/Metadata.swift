import SlipwayProtobuf

/// gRPC metadata: ordered key/value pairs; keys ending in `-bin` carry binary values (base64 on the wire).
public struct Metadata: Sendable, Hashable, ExpressibleByDictionaryLiteral, Sequence {
    public typealias Key = String
    public typealias Value = String

    /// The pairs in order; keys are lower-case.
    public private(set) var entries: [(key: String, value: MetadataValue)] = []

    public init() {}

    public init(dictionaryLiteral elements: (String, String)...) {
        for (key, value) in elements { add(key, value) }
    }

    /// Appends a text value.
    public mutating func add(_ key: String, _ value: String) {
        entries.append((key.lowercased(), .text(value)))
    }

    /// Appends a binary value; the key must end in `-bin`.
    public mutating func add(_ key: String, binary value: [UInt8]) {
        precondition(key.hasSuffix("-bin"), "binary metadata keys end in -bin")
        entries.append((key.lowercased(), .binary(value)))
    }

    /// The first text value of `key`.
    public subscript(_ key: String) -> String? {
        let key = key.lowercased()
        for entry in entries where entry.key == key {
            if case .text(let value) = entry.value { return value }
        }
        return nil
    }

    /// The first binary value of `key` (a `-bin` key).
    public func binary(_ key: String) -> [UInt8]? {
        let key = key.lowercased()
        for entry in entries where entry.key == key {
            if case .binary(let value) = entry.value { return value }
        }
        return nil
    }

    /// Every value of `key`.
    public func values(_ key: String) -> [MetadataValue] {
        let key = key.lowercased()
        return entries.filter { $0.key == key }.map(\.value)
    }

    public var isEmpty: Bool { entries.isEmpty }

    public func makeIterator() -> IndexingIterator<[(key: String, value: MetadataValue)]> { entries.makeIterator() }

    public static func == (lhs: Metadata, rhs: Metadata) -> Bool {
        lhs.entries.count == rhs.entries.count
            && zip(lhs.entries, rhs.entries).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    public func hash(into hasher: inout Hasher) {
        for entry in entries {
            hasher.combine(entry.key)
            hasher.combine(entry.value)
        }
    }

    /// Adds a header received on the wire; `-bin` values are base64-decoded.
    mutating func addWire(name: String, value: String) throws(RPCError) {
        if name.hasSuffix("-bin") {
            guard let bytes = Base64.decode(value) else {
                throw RPCError(.internal, "metadata \(name) is not valid base64")
            }
            entries.append((name, .binary(bytes)))
        } else {
            entries.append((name, .text(value)))
        }
    }

    /// The pairs as HTTP/2 header text; binary values base64-encoded.
    func wireHeaders() -> [(String, String)] {
        entries.map { entry in
            switch entry.value {
            case .text(let text): (entry.key, text)
            case .binary(let bytes): (entry.key, Base64.encode(bytes))
            }
        }
    }

    /// Whether a header name is reserved by the transport and not surfaced as metadata.
    static func isReserved(_ name: String) -> Bool {
        name.hasPrefix(":") || name == "content-type" || name == "te" || name == "grpc-timeout"
            || name == "grpc-encoding" || name == "grpc-accept-encoding" || name == "grpc-status"
            || name == "grpc-message" || name == "user-agent" || name == "content-length"
    }
}

/// One metadata value: text, or bytes for `-bin` keys.
public enum MetadataValue: Sendable, Hashable {
    case text(String)
    case binary([UInt8])
}
