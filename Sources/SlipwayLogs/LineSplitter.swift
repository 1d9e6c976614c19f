/// Splits text longer than the line limit into parts at UTF-8 character boundaries: no line is
/// dropped, and the parts concatenate back to the original.
enum LineSplitter {
    static func split(_ text: String, maxBytes: Int) -> [String] {
        let utf8 = Array(text.utf8)
        guard utf8.count > maxBytes else { return [text] }
        var parts: [String] = []
        var start = 0
        while start < utf8.count {
            var end = min(start + maxBytes, utf8.count)
            // Do not cut inside a multi-byte character: continuation bytes are 10xxxxxx.
            while end < utf8.count && end > start && utf8[end] & 0xC0 == 0x80 { end -= 1 }
            if end == start { end = min(start + maxBytes, utf8.count) }
            parts.append(String(decoding: utf8[start..<end], as: UTF8.self))
            start = end
        }
        return parts
    }
}
