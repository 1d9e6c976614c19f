/// `grpc-timeout` header values: up to 8 digits and a unit (H, M, S, m, u, n).
enum GRPCTimeout {
    /// Parses a header value into nanoseconds; nil when malformed.
    static func parse(_ value: String) -> Int64? {
        let utf8 = Array(value.utf8)
        guard utf8.count >= 2, utf8.count <= 9, let unit = utf8.last else { return nil }
        var amount: Int64 = 0
        for c in utf8.dropLast() {
            guard c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") else { return nil }
            amount = amount * 10 + Int64(c - UInt8(ascii: "0"))
        }
        let nanos: Int64
        switch unit {
        case UInt8(ascii: "H"): nanos = 3_600_000_000_000
        case UInt8(ascii: "M"): nanos = 60_000_000_000
        case UInt8(ascii: "S"): nanos = 1_000_000_000
        case UInt8(ascii: "m"): nanos = 1_000_000
        case UInt8(ascii: "u"): nanos = 1_000
        case UInt8(ascii: "n"): nanos = 1
        default: return nil
        }
        let (product, overflow) = amount.multipliedReportingOverflow(by: nanos)
        return overflow ? Int64.max : product
    }

    /// Formats a duration for the header, choosing the finest unit that fits in 8 digits.
    static func format(nanoseconds: Int64) -> String {
        let nanos = max(nanoseconds, 1)
        let units: [(Int64, Character)] = [(1, "n"), (1_000, "u"), (1_000_000, "m"), (1_000_000_000, "S"), (60_000_000_000, "M"), (3_600_000_000_000, "H")]
        for (size, unit) in units {
            let amount = (nanos + size - 1) / size
            if amount < 100_000_000 { return "\(amount)\(unit)" }
        }
        return "99999999H"
    }
}
