/// The shapes of text the services accept from callers, in one place: a tenant's names end up in
/// DNS, nginx's configuration, git's command line and file paths, so each service holds them to
/// the same grammar (docs/limits.md). Each check answers true or false; the caller names the field.
public enum InputGrammar {
    /// 1-63 of a-z, 0-9 and '-', not starting or ending with '-' (RFC 1123, lower case).
    public static func isDNSLabel(_ label: String) -> Bool { isDNSLabel(Substring(label)) }

    public static func isDNSLabel(_ label: Substring) -> Bool {
        let bytes = label.utf8
        guard let first = bytes.first, let last = bytes.last, bytes.count <= 63 else { return false }
        return first != UInt8(ascii: "-") && last != UInt8(ascii: "-")
            && bytes.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == UInt8(ascii: "-") }
    }

    /// The platform's ids (environments, services, deployments, builds): 1-128 of A-Z, a-z, 0-9,
    /// '.', '_' and '-' — the logs service's rule for stream keys, so every id can name a stream.
    public static func isPlatformID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128
            && id.utf8.allSatisfy { ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 46 || $0 == 95 || $0 == 45 }
    }

    /// No whitespace or control character anywhere (URLs handed to git and put in logs).
    public static func hasNoSpaceOrControl(_ text: String) -> Bool {
        !text.unicodeScalars.contains { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7f }
    }

    /// A lowercase DNS name of at least two labels, at most 253 bytes; `*.` may start it when
    /// `wildcard` is true.
    public static func isDomainName(_ value: String, wildcard: Bool = false) -> Bool {
        var name = Substring(value)
        if wildcard, name.hasPrefix("*.") { name = name.dropFirst(2) }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        return value.utf8.count <= 253 && labels.count >= 2 && labels.allSatisfy(isDNSLabel)
    }

    /// A branch or tag name git accepts and no command line mistakes for an option
    /// (git-check-ref-format's rules): at most 255 bytes, no '-' first, no "..", "@{", "//", no
    /// component starting with '.' or ending with ".lock", none of space ~ ^ : ? * [ \ or control
    /// characters, no trailing '/' or '.'.
    public static func isGitRefName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 255, !name.hasPrefix("-"), !name.hasPrefix("/"), !name.hasSuffix("/"), !name.hasSuffix("."),
            !name.contains(".."), !name.contains("@{"), !name.contains("//"), name != "@"
        else { return false }
        guard !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f || " ~^:?*[\\".unicodeScalars.contains($0) }) else { return false }
        return name.split(separator: "/").allSatisfy { !$0.hasPrefix(".") && !$0.hasSuffix(".lock") }
    }

    /// A path inside a repository: relative, no ".." component, no control characters, at most
    /// `maxBytes`.
    public static func isRelativePath(_ path: String, maxBytes: Int = 1024) -> Bool {
        path.utf8.count <= maxBytes && !path.hasPrefix("/") && !path.split(separator: "/").contains("..")
            && !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f })
    }

    /// Text meant for people (names shown in lists and logs): no control characters, no Unicode
    /// format characters (bidirectional overrides would make one name read as another), no line or
    /// paragraph separators.
    public static func isDisplayText(_ text: String) -> Bool {
        !text.unicodeScalars.contains { scalar in
            scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value)
                || [.format, .lineSeparator, .paragraphSeparator].contains(scalar.properties.generalCategory)
        }
    }

    /// No NUL or other control character but tab (values handed to processes as arguments or
    /// environment, where NUL ends the string and newlines split log lines).
    public static func hasNoControlCharacters(_ text: String) -> Bool {
        !text.unicodeScalars.contains { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7f }
    }
}
