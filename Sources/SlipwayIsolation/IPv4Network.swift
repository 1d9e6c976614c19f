/// An IPv4 network, `a.b.c.d/n`: the pool the environments' subnets come from, and each subnet.
public struct IPv4Network: Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
    /// The network address (host bits zero).
    public let address: UInt32
    public let prefixLength: Int

    /// What a pool of subnets (`--cluster-network-pool`, `--builder-network-pool`) must be.
    public static let poolRule = "an IPv4 network a.b.c.d/8 to /28"

    /// `text` as a pool of subnets: nil unless it follows ``poolRule``.
    public init?(pool text: String) {
        guard let network = IPv4Network(text), (8...28).contains(network.prefixLength) else { return nil }
        self = network
    }

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let length = Int(parts[1]), (0...32).contains(length),
              let address = Self.parse(String(parts[0])) else { return nil }
        self.init(address: address, prefixLength: length)
    }

    public init(address: UInt32, prefixLength: Int) {
        self.prefixLength = prefixLength
        self.address = address & Self.mask(prefixLength)
    }

    static func mask(_ length: Int) -> UInt32 { length == 0 ? 0 : UInt32.max << UInt32(32 - length) }

    /// Dotted quad to a number; nil unless exactly four numbers 0 to 255.
    public static func parse(_ text: String) -> UInt32? {
        let octets = text.split(separator: ".", omittingEmptySubsequences: false)
        guard octets.count == 4 else { return nil }
        var value: UInt32 = 0
        for octet in octets {
            guard !octet.isEmpty, octet.count <= 3, octet.allSatisfy(\.isASCII), let byte = UInt8(octet) else { return nil }
            value = value << 8 | UInt32(byte)
        }
        return value
    }

    public static func format(_ address: UInt32) -> String {
        "\(address >> 24).\(address >> 16 & 255).\(address >> 8 & 255).\(address & 255)"
    }

    public var description: String { "\(Self.format(address))/\(prefixLength)" }

    /// Addresses in it, network and broadcast included.
    public var size: UInt64 { 1 << UInt64(32 - prefixLength) }

    public func contains(_ other: UInt32) -> Bool { other & Self.mask(prefixLength) == address }

    public func overlaps(_ other: IPv4Network) -> Bool {
        let shorter = min(prefixLength, other.prefixLength)
        return address & Self.mask(shorter) == other.address & Self.mask(shorter)
    }

    /// The `index`th subnet of length `length` (nil past the end or when it is not longer).
    public func subnet(_ index: Int, length: Int) -> IPv4Network? {
        guard length >= prefixLength, length <= 32, index >= 0, UInt64(index) < (1 << UInt64(length - prefixLength)) else { return nil }
        let step: UInt64 = 1 << UInt64(32 - length)
        return IPv4Network(address: UInt32(UInt64(address) + UInt64(index) * step), prefixLength: length)
    }

    /// The `number`th address (0 is the network's own).
    public func host(_ number: UInt32) -> UInt32 { address + number }
}
