import Foundation

/// The `Retry-After` header (RFC 9110 §10.2.3), which ACME servers send on rate limits, 503s and while an
/// authorization or order is still being processed (RFC 8555 §6.6, §7.5.1).
enum RetryAfter {
    /// The wait the header asks for: delay-seconds ("120") or an HTTP-date. A date in the past is a zero wait;
    /// anything unparseable is nil (the caller falls back to its own backoff).
    static func parse(_ value: String, now: Date = Date()) -> Duration? {
        let value = value.trimmingCharacters(in: .whitespaces)
        if !value.isEmpty, value.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) {
            // More digits than an Int holds is "a very long time" (68 years), not an error.
            return .seconds(Int(value) ?? Int(Int32.max))
        }
        guard let date = httpDate(value) else { return nil }
        let seconds = date.timeIntervalSince(now)
        return seconds <= 0 ? .zero : .milliseconds(Int64((seconds * 1000).rounded(.up)))
    }

    /// IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), and the obsolete RFC 850 and asctime forms recipients must accept.
    static func httpDate(_ value: String) -> Date? {
        for format in ["EEE, dd MMM yyyy HH:mm:ss 'GMT'", "EEEE, dd-MMM-yy HH:mm:ss 'GMT'", "EEE MMM d HH:mm:ss yyyy"] {
            // A formatter per call: DateFormatter is not Sendable and this runs once per throttled response.
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = format
            if let date = formatter.date(from: value.replacingOccurrences(of: "  ", with: " ")) { return date }
        }
        return nil
    }
}
